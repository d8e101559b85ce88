"""What a ranking model learns: the registry of meta-learner targets.

Raw accuracy mixes "how hard is this dataset" with "how good is this configuration", and a
recommender only needs the second, so the model that *ranks* candidates may learn another
label. Each label is a :class:`Target`: a name, the function that turns KB rows into the
label, and how XGBoost fits it. The meta-learner (``metalearner.py``) reads targets only
through :func:`get_target` / :func:`target_names`, so adding one is one call to
:func:`register_target` (see docs/architecture.md, "How to add a meta-learner target").

Built in (compared by the leave-one-dataset-out benchmark, ``bench/results``):

- ``raw``: validation score as is (the accuracy model itself ranks);
- ``normalized``: score min-max scaled within each training dataset;
- ``rank``: XGBoost's pairwise ranking objective, one query group per dataset;
- ``percentile``: score as its percentile within its dataset.

``ensemble`` (:data:`ENSEMBLE`) is not a target but the objective that averages the
within-pool percentiles of several target members; it is always a valid objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metallmix.errors import ConfigError

ENSEMBLE = "ensemble"
# a 'co-' member is the same target fitted without meta-feature columns (dataset-blind)
BLIND_PREFIX = "co-"


@dataclass(frozen=True)
class Target:
    """One label a ranking model can learn.

    ``label(rows)`` gets the meta-learner's training rows (a ``records_to_frame`` frame of
    completed runs, one canonical order) and returns one float per row.
    """

    name: str
    label: Callable[[pd.DataFrame], np.ndarray]
    description: str
    # XGBoost objective; "rank:*" objectives are fitted with one query group per dataset
    # (and no per-run weight: XGBoost's ranking weights are per group)
    xgb_objective: str = "reg:squarederror"
    # the label is the accuracy model's own: a single-target learner ranks by its accuracy
    # model, and an ensemble member with the accuracy model's settings reuses that booster
    is_accuracy: bool = False
    # may be an ensemble member (plain or 'co-' prefixed)
    ensemble_member: bool = True
    # a fitted booster may be grown by appending trees after a small KB change
    warm_startable: bool = True

    @property
    def grouped(self) -> bool:
        """Fitted with one query group per dataset (a ranking objective)."""
        return self.xgb_objective.startswith("rank:")


_TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    """Make ``target`` a valid objective and ensemble member name; returns it."""
    if target.name in _TARGETS or target.name == ENSEMBLE:
        raise ConfigError(f"meta-learner target {target.name!r} is already registered")
    if (
        not target.name
        or target.name.startswith(BLIND_PREFIX)
        or any(c in target.name for c in "@#")
    ):
        raise ConfigError(
            f"meta-learner target name {target.name!r}: non-empty, no {BLIND_PREFIX!r} prefix, "
            "no '@' or '#' (they build ensemble member names)"
        )
    _TARGETS[target.name] = target
    return target


def unregister_target(name: str) -> None:
    """Remove a registered target (tests that register a toy one clean up with this)."""
    _TARGETS.pop(name, None)


def target_names() -> tuple[str, ...]:
    """Registered targets, in registration order (the built-ins first)."""
    return tuple(_TARGETS)


def objective_names() -> tuple[str, ...]:
    """Every valid ``MetaLearnerConfig.objective``: the targets, then ``ensemble``."""
    return (*_TARGETS, ENSEMBLE)


def member_names() -> tuple[str, ...]:
    """Targets an ensemble may use as members."""
    return tuple(n for n, t in _TARGETS.items() if t.ensemble_member)


def get_target(name: str) -> Target:
    """The registered target ``name`` (a ``'co-'`` prefix is ignored)."""
    target = _TARGETS.get(name.removeprefix(BLIND_PREFIX))
    if target is None:
        raise ConfigError(
            f"unknown meta-learner target {name!r}: choose from {', '.join(_TARGETS)}"
        )
    return target


def target_column(frame: pd.DataFrame) -> str:
    """``out_score`` (validation balanced accuracy where recorded, see ``kb.frame``), or
    ``out_val_accuracy`` for frames built without it."""
    return "out_score" if "out_score" in frame else "out_val_accuracy"


def raw_target(frame: pd.DataFrame) -> np.ndarray:
    """The validation score as is."""
    return frame[target_column(frame)].to_numpy(dtype=float)


def normalized_target(frame: pd.DataFrame) -> np.ndarray:
    """Score min-max scaled within each dataset (0 worst, 1 best; 0.5 when constant)."""
    acc = frame[target_column(frame)].astype(float)
    grouped = acc.groupby(frame["dataset"])
    low, high = grouped.transform("min"), grouped.transform("max")
    span = (high - low).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(span > 0, (acc.to_numpy() - low.to_numpy()) / span, 0.5)
    return norm


def percentile_target(frame: pd.DataFrame) -> np.ndarray:
    """Score as its percentile within the dataset (robust to one catastrophic run)."""
    acc = frame[target_column(frame)].astype(float)
    return acc.groupby(frame["dataset"]).rank(pct=True).to_numpy(dtype=float)


register_target(Target("raw", raw_target, "validation score as is", is_accuracy=True))
register_target(Target("normalized", normalized_target, "score min-max scaled within each dataset"))
register_target(
    Target(
        "rank",
        normalized_target,
        "pairwise ranking within each dataset (query group = dataset)",
        xgb_objective="rank:pairwise",
        # pairwise trees appended on a grown query set are not what a refit gives
        warm_startable=False,
    )
)
register_target(
    Target("percentile", percentile_target, "score as its percentile within each dataset")
)
