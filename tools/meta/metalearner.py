"""The meta-learner: XGBoost models that predict accuracy and cost of an unseen configuration.

Raw accuracy mixes "how hard is this dataset" with "how good is this configuration", and a
recommender only needs the second. So the model that *ranks* candidates is trained on one of
the registered targets (``targets.py``: raw, normalized, rank, percentile; compared by the
leave-one-dataset-out benchmark, see ``bench/results``), or on an ensemble of them.

Whatever ranks, the *numbers* shown to people come from a plain accuracy regressor (the
predicted accuracy, fraction) and an interval, plus a cost regressor on log seconds. The
interval is normalised split-conformal regression (crepes' ``ConformalRegressor``): a
quantile regressor's 10/50/90th percentiles give each candidate a centre and a difficulty
(half the 10-90 spread), and the conformity scores |y - median| / difficulty come from
quantile models refitted without whole dataset groups, so the 80% is calibrated on
*unseen datasets* and a candidate the quantile model is unsure of gets a wider interval.
Everything is saved in XGBoost's JSON format with a JSON sidecar, never pickled, and cached
per KB content hash so a KB that did not change is never refitted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, overload

import numpy as np
import pandas as pd
import xgboost as xgb
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metallmix import config
from metallmix.atomic import atomic_dir
from metallmix.errors import KnowledgeBaseError, ModelUnavailableError
from metallmix.progress import WaitReporter
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import KnowledgeBase, kb_content_hash
from metallmix.tools.meta.encoding import ENCODING_VERSION, FeatureEncoder
from metallmix.tools.meta.level import LEVEL_VERSION, LandmarkLevel, chance_of
from metallmix.tools.meta.targets import (
    BLIND_PREFIX,
    ENSEMBLE,
    Target,
    get_target,
    member_names,
    objective_names,
    target_column,
    target_names,
)

if TYPE_CHECKING:
    from crepes import ConformalRegressor as ConformalRegressorLike

# An objective is a registered target's name (tools/meta/targets.py) or "ensemble"; it is
# checked against the registry when a MetaLearnerConfig is built.
Objective = str


class _RegistryNames(Sequence[str]):
    """A live, read-only view of registry names: ``in``, iteration and ``join`` see targets
    registered after import (the CLI's choices and LODO's rows follow the registry)."""

    def __init__(self, names: Callable[[], tuple[str, ...]]) -> None:
        self._names = names

    def __len__(self) -> int:
        return len(self._names())

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __contains__(self, value: object) -> bool:
        return value in self._names()

    def __repr__(self) -> str:
        return repr(self._names())


# Every valid objective (the targets, then "ensemble") and the single targets.
OBJECTIVES: Sequence[str] = _RegistryNames(objective_names)
SINGLE_OBJECTIVES: Sequence[str] = _RegistryNames(target_names)
# The product's pick rule, chosen by the LODO benchmark over seeds 0-2 on Quick-Tune and on
# the shipped KB (README "Meta-learner"; bench/results/lodo_*). One XGBoost's top-1 pick is
# noise-dominated: with a dozen training datasets the winning target, tree depth or seed flips
# from run to run and single picks can land on a configuration that barely learned. So the
# default ranks candidates by the mean within-pool percentile of a *diverse* ensemble: two
# per-dataset targets (normalised and percentile) x with and without meta-features x five
# tree settings x two seeds (40 boosters). The dataset-blind ('co-') half shrinks the pick
# toward what is good everywhere; the meta-feature half moves it where the data says so.
# Averaging over tree settings is what removed the catastrophic picks (max regret 0.99 ->
# 0.28 on Quick-Tune); bagging seeds alone did not.
DEFAULT_OBJECTIVE: Objective = ENSEMBLE
DEFAULT_MEMBERS: tuple[str, ...] = ("normalized", "percentile", "co-normalized", "co-percentile")
DEFAULT_BAGS = 2


class TreeSetting(BaseModel):
    """One ensemble member's tree shape; unset fields inherit :class:`MetaLearnerConfig`'s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]+$")
    max_depth: int = Field(ge=1)
    min_child_weight: float | None = Field(default=None, ge=0)
    subsample: float | None = Field(default=None, gt=0, le=1)
    colsample_bytree: float | None = Field(default=None, gt=0, le=1)


DEFAULT_TREE_SETTINGS: tuple[TreeSetting, ...] = (
    TreeSetting(name="d5", max_depth=5),
    TreeSetting(name="d3", max_depth=3, min_child_weight=5),
    TreeSetting(name="d2", max_depth=2),
    TreeSetting(name="d4s", max_depth=4, subsample=0.5, colsample_bytree=0.5),
    TreeSetting(name="d6", max_depth=6, min_child_weight=3),
)
MIN_TRAINING_ROWS = 8
# Weight of a capped run (a validation that trained on a subsample, see kb.records.Fidelity)
# in every fit: it is learnt as the small dataset it measured, with its noisier validation
# score counting half as much as a full run's.
CAPPED_RUN_WEIGHT = 0.5
MIN_COST_ROWS = 8
# Target coverage of the 10-90% interval, and the held-out folds that calibrate it.
INTERVAL_COVERAGE = 0.8
CONFORMAL_FOLDS = 4
# Warm start after a small KB change (a validation): trees appended per booster, how many
# new runs allow it, and how many warm starts in a row before a full refit.
WARM_ROUNDS = 30
WARM_MAX_NEW_RUNS = 20
WARM_MAX_CHAIN = 5
# Floor of a candidate's difficulty (half its 10-90% quantile spread): a quantile model
# that collapses to a point must not make the normalised interval collapse with it.
SIGMA_FLOOR = 0.02
INTERVAL_METHOD = (
    "split-conformal (crepes ConformalRegressor): centre = predicted median, calibrated on "
    f"quantile models refitted without {CONFORMAL_FOLDS} blocks of dataset groups; width "
    "constant or normalised by half the quantile model's 10-90% spread, whichever is "
    "narrower on the calibration runs"
)
# How the conformal band's width is set (interval_calibration["scale"]): one width for every
# candidate, or each candidate's difficulty times one factor.
CONSTANT, NORMALISED = "constant", "normalised"


class MetaLearnerConfig(BaseModel):
    """Hyperparameters of the meta-learner itself; small on purpose (2 shared CPU cores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    objective: Objective = DEFAULT_OBJECTIVE
    n_estimators: int = Field(default=300, ge=1)
    max_depth: int = Field(default=5, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    min_child_weight: float = Field(default=1.0, ge=0)
    quantiles: tuple[float, float] = (0.1, 0.9)
    # One XGBoost thread. On these small matrices a second thread gains little when the
    # machine is idle and costs minutes when it is not: OpenMP threads spin while they wait
    # for a core. Fitting the shipped KB's CPU-regime learner (555 runs, 47 boosters) at load
    # 3.2 on 2 cores took 8.5 s with 1 thread and 13.5 s with 2; under `nice -n 10` at the
    # same load, 9.1 s with 1 and over 150 s with 2 (a user's recommend took 336 s to fit).
    # The boosters are the same whatever the thread count (hist is deterministic).
    nthread: int = Field(default=1, ge=1)
    seed: int = 0
    with_uncertainty: bool = True
    with_cost: bool = True
    use_meta_features: bool = Field(
        default=True, description="False: the dataset-blind 'config-only' baseline"
    )
    landmark_level: bool = Field(
        default=True,
        description="anchor the accuracy and interval models on the landmarks' level line "
        "(level.py); only with meta-features",
    )
    members: tuple[str, ...] = Field(
        default=DEFAULT_MEMBERS,
        description="ensemble members: a single objective, 'co-' prefixed = without meta-features",
    )
    bags: int = Field(default=DEFAULT_BAGS, ge=1, description="seeds per ensemble member")
    tree_settings: tuple[TreeSetting, ...] = Field(
        default=DEFAULT_TREE_SETTINGS,
        min_length=1,
        description="tree shapes each ensemble member is fitted with (ensemble only)",
    )

    @field_validator("objective")
    @classmethod
    def _registered_objective(cls, value: str) -> str:
        """An objective names a registered target or the ensemble (targets.py)."""
        if value not in objective_names():
            raise ValueError(f"objective {value!r}: choose from {', '.join(objective_names())}")
        return value

    @model_validator(mode="after")
    def _distinct_tree_settings(self) -> MetaLearnerConfig:
        """Members are named after their tree setting, so two settings cannot share a name."""
        names = [t.name for t in self.tree_settings]
        if len(set(names)) != len(names):
            raise ValueError(f"tree settings need distinct names, got {names}")
        return self

    def xgb_params(self, objective: str, setting: TreeSetting | None = None) -> dict[str, object]:
        """XGBoost parameters; ``setting`` overrides the tree shape of one ensemble member."""
        shape: dict[str, object] = {
            "max_depth": self.max_depth,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
        }
        if setting is not None:
            shape.update(setting.model_dump(exclude={"name"}, exclude_none=True))
        return {
            "objective": objective,
            "tree_method": "hist",
            "eta": self.learning_rate,
            **shape,
            "nthread": self.nthread,
            "seed": self.seed,
            "verbosity": 0,
        }

    def tree_setting(self, name: str) -> TreeSetting | None:
        """The named tree setting (``None`` for the config's own shape)."""
        return next((t for t in self.tree_settings if t.name == name), None)


@dataclass(frozen=True)
class Prediction:
    """Per-row predictions; accuracies are fractions, seconds may be NaN (no cost model)."""

    score: np.ndarray
    accuracy: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seconds: np.ndarray


def completed_mask(frame: pd.DataFrame) -> np.ndarray:
    """True for runs that trained their whole epoch budget (or have no budget recorded).

    A run stopped early by a multi-fidelity search (Quick-Tune stops most after a few
    epochs) is a low-fidelity snapshot, not a final performance: it must not be learnt or
    scored as one.
    """
    if "out_epoch_budget" not in frame or "out_epochs_run" not in frame:
        return np.ones(len(frame), dtype=bool)
    budget = pd.to_numeric(frame["out_epoch_budget"], errors="coerce").to_numpy(dtype=float)
    ran = pd.to_numeric(frame["out_epochs_run"], errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        return np.isnan(budget) | np.isnan(ran) | (ran >= budget)


def training_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows the meta-learner learns from: completed runs (status ok, whole epoch budget)
    with a validation score."""
    target = target_column(frame)
    if frame.empty or target not in frame:
        return frame.iloc[0:0]
    ok = (frame["status"] == "ok") & frame[target].notna() & completed_mask(frame)
    return frame.loc[ok].reset_index(drop=True)


def run_weights(frame: pd.DataFrame) -> np.ndarray:
    """Per-row fit weight: 1 for a full-fidelity run, :data:`CAPPED_RUN_WEIGHT` for a capped
    one (``fidelity_full`` False)."""
    if "fidelity_full" not in frame:
        return np.ones(len(frame))
    full = frame["fidelity_full"].map(lambda v: v is not False).to_numpy(dtype=bool)
    return np.where(full, 1.0, CAPPED_RUN_WEIGHT)


def within_pool_percentile(values: np.ndarray) -> np.ndarray:
    """Percentile (0, 1] of each value among ``values``; ties share their mean rank."""
    from scipy.stats import rankdata

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return values
    return np.asarray(rankdata(values), dtype=float) / values.size


def score_members(cfg: MetaLearnerConfig) -> tuple[str, ...]:
    """The ranking models this configuration fits ('' when the accuracy model ranks).

    Ensemble members are named ``<target>@<tree setting>#<bag>``, e.g. ``co-normalized@d3#1``.
    """
    if cfg.objective != ENSEMBLE:
        return ("",) if get_target(cfg.objective).is_accuracy else (cfg.objective,)
    names = [t.name for t in cfg.tree_settings]  # distinct: checked by the config
    # without meta-features every member is blind already; a repeated member is another
    # seed of it (a bag): 'normalized' twice -> normalized@d5#0 .. #3
    members = [m if cfg.use_meta_features else m.removeprefix(BLIND_PREFIX) for m in cfg.members]
    out: list[str] = []
    seen: dict[str, int] = {}
    for m in members:
        if m.removeprefix(BLIND_PREFIX) not in member_names():
            raise ValueError(
                f"ensemble member {m!r}: choose from {', '.join(member_names())} "
                f"(optionally prefixed {BLIND_PREFIX!r})"
            )
        for setting in names:
            key = f"{m}@{setting}"
            for _ in range(cfg.bags):
                out.append(f"{key}#{seen.get(key, 0)}")
                seen[key] = seen.get(key, 0) + 1
    return tuple(out)


def parse_member(member: str) -> tuple[str, str | None, int]:
    """``'co-normalized@d3#1'`` -> ``('co-normalized', 'd3', 1)``; single objectives have no
    setting and bag 0."""
    head, _, bag = member.partition("#")
    name, _, setting = head.partition("@")
    return name, setting or None, int(bag or 0)


class MetaLearner:
    """Fitted encoder + boosters. Build with :meth:`fit`, :meth:`load` or :func:`fit_or_load`."""

    def __init__(
        self,
        encoder: FeatureEncoder,
        cfg: MetaLearnerConfig,
        accuracy: xgb.Booster,
        *,
        scores: dict[str, xgb.Booster] | None = None,
        quantile: xgb.Booster | None = None,
        cost: xgb.Booster | None = None,
        info: dict[str, object] | None = None,
    ) -> None:
        self.encoder = encoder
        self.config = cfg
        self.accuracy_booster = accuracy
        self.score_boosters: dict[str, xgb.Booster] = dict(scores or {})
        self.quantile_booster = quantile
        self.cost_booster = cost
        self.info: dict[str, object] = dict(info or {})
        self._conformal: ConformalRegressorLike | None = None

    @property
    def blind_columns(self) -> np.ndarray:
        """Indices of the encoded columns a 'co-' member sees (no meta-feature nor landmark
        column: both describe the dataset)."""
        return np.array(
            [i for i, c in enumerate(self.encoder.columns) if not c.startswith(("mf_", "lm_"))],
            dtype=int,
        )

    # ---------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        data: pd.DataFrame | Iterable[RunRecord],
        cfg: MetaLearnerConfig | None = None,
        *,
        on_booster: Callable[[int], None] | None = None,
    ) -> MetaLearner:
        """Fit on KB rows (a ``records_to_frame`` frame or records); completed runs only.
        ``on_booster(n)`` is called as boosters finish (:func:`booster_count` in all)."""
        cfg = cfg or MetaLearnerConfig()
        tick = on_booster or (lambda n: None)
        frame = data if isinstance(data, pd.DataFrame) else records_to_frame(data)
        rows = training_rows(frame)
        if "run_id" in rows:  # one canonical order: the same KB content gives the same learner
            # however its store happens to return the runs (XGBoost's row subsampling and the
            # encoder's category order both follow row order)
            rows = rows.sort_values("run_id", kind="stable").reset_index(drop=True)
        if len(rows) < MIN_TRAINING_ROWS:
            raise KnowledgeBaseError(
                f"the knowledge base has {len(rows)} usable runs (status ok, completed, with a "
                f"validation accuracy); the meta-learner needs at least {MIN_TRAINING_ROWS}. "
                "Import runs with `metallmix kb import-quicktune`, or train some with "
                "`metallmix validate` or `metallmix kb build`"
            )
        encoder = FeatureEncoder.fit(rows, meta_features=cfg.use_meta_features)
        x = encoder.transform(rows)
        acc = rows[target_column(rows)].to_numpy(dtype=float)
        weight = run_weights(rows)
        n_rounds = cfg.n_estimators
        learner = cls(encoder, cfg, xgb.Booster())
        blind = learner.blind_columns
        level = fit_level(rows, acc, cfg)
        margin = level.margin(rows) if level is not None else None

        def train(
            params: dict[str, object],
            label: np.ndarray,
            cols: np.ndarray | None = None,
            base: np.ndarray | None = None,
        ) -> xgb.Booster:
            dm = margin_matrix(x if cols is None else x[:, cols], base, label=label, weight=weight)
            booster = xgb.train(params, dm, num_boost_round=n_rounds)
            tick(1)
            return booster

        accuracy = train(cfg.xgb_params("reg:squarederror"), acc, base=margin)
        scores: dict[str, xgb.Booster] = {}
        labels: dict[str, np.ndarray] = {}  # each target's label, computed once per fit

        def label_of(target: Target) -> np.ndarray:
            if target.name not in labels:
                labels[target.name] = target.label(rows)
            return labels[target.name]

        for member in score_members(cfg):
            if not member:
                continue
            name, setting, bag = parse_member(member)
            target = get_target(name)
            cols = blind if name.startswith(BLIND_PREFIX) else None
            params = cfg.xgb_params(
                target.xgb_objective, cfg.tree_setting(setting) if setting else None
            )
            params["seed"] = cfg.seed + 1000 * bag
            if (
                target.is_accuracy
                and cols is None
                and margin is None
                and params == cfg.xgb_params("reg:squarederror")
            ):
                scores[member] = accuracy  # the very same fit: reuse it
                tick(1)
            elif target.grouped:  # ranking: one query group per dataset, no per-run weight
                order = np.argsort(rows["dataset"].to_numpy(), kind="stable")
                codes = pd.factorize(rows["dataset"].to_numpy()[order])[0]
                xs = x[order] if cols is None else x[order][:, cols]
                dm = xgb.DMatrix(xs, label=label_of(target)[order], qid=codes)
                scores[member] = xgb.train(params, dm, num_boost_round=n_rounds)
                tick(1)
            else:
                scores[member] = train(params, label_of(target), cols)
        quantile: xgb.Booster | None = None
        calibration: dict[str, list[float] | str] = {}
        if cfg.with_uncertainty:
            params = quantile_params(cfg)
            quantile = train(params, acc, base=_quantile_margin(margin))
            residuals, sigmas = conformal_calibration(
                x, acc, rows["dataset_group"].to_numpy(), params, cfg, rows=rows
            )
            calibration = {
                "residuals": [round(float(v), 5) for v in residuals],
                "sigmas": [round(float(v), 5) for v in sigmas],
                "scale": conformal_scale(residuals, sigmas),
            }
            tick(CONFORMAL_FOLDS)
        cost: xgb.Booster | None = None
        seconds = rows.get("out_train_seconds")
        if cfg.with_cost and seconds is not None:
            sec = pd.to_numeric(seconds, errors="coerce").to_numpy(dtype=float)
            has = np.isfinite(sec) & (sec > 0)
            if has.sum() >= MIN_COST_ROWS:
                dm = xgb.DMatrix(x[has], label=np.log(sec[has]), missing=np.nan)
                cost = xgb.train(cfg.xgb_params("reg:squarederror"), dm, num_boost_round=n_rounds)
        tick(1)
        info: dict[str, object] = {
            "n_rows": len(rows),
            "n_capped_runs": int((weight < 1).sum()),
            "n_partial_runs_ignored": int(
                ((frame["status"] == "ok") & ~completed_mask(frame)).sum()
                if "status" in frame
                else 0
            ),
            "datasets": sorted(rows["dataset"].unique().tolist()),
            "dataset_groups": sorted(rows["dataset_group"].unique().tolist()),
            "run_ids_hash": _hash_strings(rows["run_id"].astype(str)),
            "run_ids": rows["run_id"].astype(str).tolist(),
            "fit": "full",
            "warm_chain": 0,
            "accuracy_median": float(np.median(acc)),
            "interval_method": INTERVAL_METHOD if calibration else "none",
            "interval_calibration": calibration,
            "score_members": sorted(scores),
            "landmark_level": level.model_dump(mode="json") if level is not None else None,
        }
        learner.accuracy_booster = accuracy
        learner.score_boosters = scores
        learner.quantile_booster = quantile
        learner.cost_booster = cost
        learner.info = info
        return learner

    # ---------------------------------------------------------------- prediction
    def matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return self.encoder.transform(frame)

    @property
    def level(self) -> LandmarkLevel | None:
        """The landmarks' level line the accuracy and interval models start from (None: no
        anchor, e.g. a KB without landmarks or the dataset-blind baseline)."""
        stored = self.info.get("landmark_level")
        return LandmarkLevel.model_validate(stored) if isinstance(stored, dict) else None

    def margin(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Each row's level anchor (see :mod:`level`), or None without one."""
        level = self.level
        return level.margin(frame) if level is not None else None

    def accuracy_matrix(
        self, frame: pd.DataFrame, *, quantile: bool = False, x: np.ndarray | None = None
    ) -> xgb.DMatrix:
        """The DMatrix the accuracy (or, with ``quantile``, the interval) model reads: the
        encoded rows (``x`` when the caller has encoded them already) plus their level
        anchor as base margin."""
        margin = self.margin(frame)
        return margin_matrix(
            self.matrix(frame) if x is None else x,
            _quantile_margin(margin) if quantile else margin,
        )

    def member_scores(
        self, frame: pd.DataFrame, x: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Raw predictions of every ranking member (``{}`` when the accuracy model ranks);
        ``x``: the rows already encoded."""
        x = self.matrix(frame) if x is None else x
        blind = self.blind_columns
        out: dict[str, np.ndarray] = {}
        for name, booster in sorted(self.score_boosters.items()):
            cols = x[:, blind] if name.startswith("co-") else x
            out[name] = np.asarray(booster.predict(xgb.DMatrix(cols, missing=np.nan)), float)
        return out

    def predict(self, frame: pd.DataFrame) -> Prediction:
        """Predictions for candidate rows (columns as :func:`encoding.candidate_row`).

        With the ensemble objective the score is *relative to the rows passed together*:
        the mean within-pool percentile of the members' predictions.
        """
        x = self.matrix(frame)  # encoded once for every model below
        dm = xgb.DMatrix(x, missing=np.nan)
        acc = self.accuracy_booster.predict(self.accuracy_matrix(frame, x=x)).astype(float)
        members = self.member_scores(frame, x)
        if not members:
            score = acc
        elif self.config.objective == ENSEMBLE:
            score = np.mean([within_pool_percentile(v) for v in members.values()], axis=0)
        else:
            score = next(iter(members.values()))
        if self.quantile_booster is not None:
            qdm = self.accuracy_matrix(frame, quantile=True, x=x)
            q = np.asarray(self.quantile_booster.predict(qdm), dtype=float).reshape(len(acc), -1)
            low, high = self.interval(q)
            low, high = np.minimum(low, acc), np.maximum(high, acc)
            low = np.maximum(low, np.minimum(chance_level(frame), acc))
        else:
            low, high = acc.copy(), acc.copy()
        if self.cost_booster is not None:
            seconds = np.exp(self.cost_booster.predict(dm).astype(float))
        else:
            seconds = np.full(len(acc), np.nan)
        return Prediction(
            score=np.asarray(score, dtype=float),
            accuracy=np.clip(acc, 0.0, 1.0),
            low=np.clip(low, 0.0, 1.0),
            high=np.clip(high, 0.0, 1.0),
            seconds=seconds,
        )

    def warm_start(self, data: pd.DataFrame) -> MetaLearner | None:
        """This learner grown onto ``data`` by appending trees, or None when it must be refit.

        After one validation the KB differs by a run or two: refitting 40 boosters from
        scratch took a minute (issue 26). Instead every booster continues boosting for
        :data:`WARM_ROUNDS` rounds on the whole new training set (the new runs' residuals
        are what those trees fit), with the same encoder and the conformal calibration of
        the last full fit. Only when the old runs are all still there, at most
        :data:`WARM_MAX_NEW_RUNS` are new, no ranking member uses the pairwise objective and
        fewer than :data:`WARM_MAX_CHAIN` warm starts are chained; else None (refit).
        """
        old_ids = self.info.get("run_ids")
        chain = int(self.info.get("warm_chain") or 0)  # type: ignore[call-overload]
        rows = training_rows(data)
        if "run_id" not in rows or not isinstance(old_ids, list) or chain >= WARM_MAX_CHAIN:
            return None
        rows = rows.sort_values("run_id", kind="stable").reset_index(drop=True)
        ids = set(rows["run_id"].astype(str))
        new = ids - set(old_ids)
        if not set(old_ids) <= ids or not new or len(new) > WARM_MAX_NEW_RUNS:
            return None
        cfg = self.config
        if any(not get_target(parse_member(m)[0]).warm_startable for m in self.score_boosters):
            return None
        x = self.encoder.transform(rows)
        acc = rows[target_column(rows)].to_numpy(dtype=float)
        weight = run_weights(rows)
        blind = self.blind_columns
        margin = self.margin(rows)  # the last full fit's line: the trees were grown on it

        def grow(
            booster: xgb.Booster,
            params: dict[str, object],
            label: np.ndarray,
            cols: bool,
            base: np.ndarray | None = None,
        ) -> xgb.Booster:
            dm = margin_matrix(x[:, blind] if cols else x, base, label=label, weight=weight)
            return xgb.train(params, dm, num_boost_round=WARM_ROUNDS, xgb_model=booster)

        accuracy = grow(
            self.accuracy_booster, cfg.xgb_params("reg:squarederror"), acc, False, margin
        )
        labels: dict[str, np.ndarray] = {}
        scores: dict[str, xgb.Booster] = {}
        for member, booster in self.score_boosters.items():
            if booster is self.accuracy_booster:
                scores[member] = accuracy
                continue
            name, setting, bag = parse_member(member)
            target = get_target(name)
            params = cfg.xgb_params(
                target.xgb_objective, cfg.tree_setting(setting) if setting else None
            )
            params["seed"] = cfg.seed + 1000 * bag
            if target.name not in labels:
                labels[target.name] = target.label(rows)
            scores[member] = grow(
                booster, params, labels[target.name], name.startswith(BLIND_PREFIX)
            )
        quantile = None
        if self.quantile_booster is not None:
            quantile = grow(
                self.quantile_booster, quantile_params(cfg), acc, False, _quantile_margin(margin)
            )
        cost = self.cost_booster
        seconds = rows.get("out_train_seconds")
        if cost is not None and seconds is not None:
            sec = pd.to_numeric(seconds, errors="coerce").to_numpy(dtype=float)
            has = np.isfinite(sec) & (sec > 0)
            dm = xgb.DMatrix(x[has], label=np.log(sec[has]), missing=np.nan)
            cost = xgb.train(cfg.xgb_params("reg:squarederror"), dm, WARM_ROUNDS, xgb_model=cost)
        info = dict(self.info)
        info.update(
            {
                "n_rows": len(rows),
                "n_capped_runs": int((weight < 1).sum()),
                "datasets": sorted(rows["dataset"].unique().tolist()),
                "dataset_groups": sorted(rows["dataset_group"].unique().tolist()),
                "run_ids_hash": _hash_strings(rows["run_id"].astype(str)),
                "run_ids": rows["run_id"].astype(str).tolist(),
                "fit": (
                    f"warm start: {WARM_ROUNDS} trees appended to each booster for "
                    f"{len(new)} new run{'s' if len(new) != 1 else ''} (interval calibration "
                    "of the last full fit)"
                ),
                "warm_chain": chain + 1,
                "warm_from_kb_hash": self.info.get("kb_hash"),
            }
        )
        return MetaLearner(
            self.encoder,
            cfg,
            accuracy,
            scores=scores,
            quantile=quantile,
            cost=cost,
            info=info,
        )

    def interval(self, quantiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated 10-90% interval from the quantile model's (rows x 3) predictions.

        Without a calibration (a learner fitted on a single dataset group) it is the raw
        quantile band, which is over-confident on unseen datasets; LODO measures by how much.
        """
        centre, sigma = quantile_centre_and_sigma(quantiles)
        stored = self.info.get("interval_calibration")
        calibration: dict[str, object] = stored if isinstance(stored, dict) else {}
        residuals = np.asarray(calibration.get("residuals", []), dtype=float)
        if residuals.size == 0:
            return quantiles[:, 0], quantiles[:, -1]
        normalised = calibration.get("scale", NORMALISED) == NORMALISED
        if self._conformal is None:
            from crepes import ConformalRegressor

            self._conformal = ConformalRegressor()
            sigmas = np.asarray(calibration.get("sigmas", []), dtype=float)
            self._conformal.fit(residuals, sigmas=sigmas if normalised else None)
        band = self._conformal.predict_int(
            centre,
            sigmas=sigma if normalised else None,
            confidence=INTERVAL_COVERAGE,
            y_min=0.0,
            y_max=1.0,
        )
        return np.asarray(band[:, 0], dtype=float), np.asarray(band[:, 1], dtype=float)

    def contributions(self, frame: pd.DataFrame) -> tuple[np.ndarray, float]:
        """TreeSHAP values of the accuracy model (rows x encoded columns) and the base value.

        XGBoost's own TreeSHAP (``pred_contribs``: Lundberg et al.'s path-dependent
        algorithm, the same values ``shap.TreeExplainer`` gives for a booster, checked in
        tests/test_metalearner.py) saves the ``shap`` import and explainer set-up, about
        1-2 s of every recommendation.
        """
        dm = self.accuracy_matrix(frame)
        out = np.asarray(self.accuracy_booster.predict(dm, pred_contribs=True), dtype=float)
        return out[:, :-1], float(out[0, -1]) if len(out) else 0.0

    @property
    def version(self) -> str:
        return f"xgb-{self.config.objective}-e{ENCODING_VERSION}-s{self.config.seed}"

    # ---------------------------------------------------------------- persistence
    def save(self, directory: Path) -> Path:
        """Write boosters (XGBoost JSON) and a JSON sidecar atomically into ``directory``."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            boosters: dict[str, xgb.Booster | None] = {
                "accuracy": self.accuracy_booster,
                "quantile": self.quantile_booster,
                "cost": self.cost_booster,
                **{f"score-{k}": b for k, b in self.score_boosters.items()},
            }
            for name, booster in boosters.items():
                if booster is not None:
                    booster.save_model(str(tmp / f"{_file_name(name)}.json"))
            sidecar = {
                "format": "metallmix-metalearner",
                "encoding_version": ENCODING_VERSION,
                "config": self.config.model_dump(mode="json"),
                "encoder": self.encoder.model_dump(mode="json"),
                "boosters": sorted(k for k, b in boosters.items() if b is not None),
                "info": self.info,
            }
            (tmp / "metalearner.json").write_text(json.dumps(sidecar, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> MetaLearner:
        directory = Path(directory)
        sidecar_path = directory / "metalearner.json"
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"cannot read the meta-learner sidecar {sidecar_path}: {exc}; delete the folder "
                "to refit"
            ) from exc
        if sidecar.get("encoding_version") != ENCODING_VERSION:
            raise ModelUnavailableError(
                f"meta-learner in {directory} uses encoding v{sidecar.get('encoding_version')}, "
                f"this version needs v{ENCODING_VERSION}; delete the folder to refit"
            )
        boosters: dict[str, xgb.Booster] = {}
        for name in sidecar["boosters"]:
            booster = xgb.Booster()
            booster.load_model(str(directory / f"{_file_name(name)}.json"))
            booster.set_param({"nthread": int(sidecar["config"].get("nthread", 1))})
            boosters[name] = booster
        return cls(
            FeatureEncoder.model_validate(sidecar["encoder"]),
            MetaLearnerConfig.model_validate(sidecar["config"]),
            boosters["accuracy"],
            scores={k[len("score-") :]: b for k, b in boosters.items() if k.startswith("score-")},
            quantile=boosters.get("quantile"),
            cost=boosters.get("cost"),
            info=sidecar.get("info", {}),
        )


def _file_name(booster: str) -> str:
    """'score-co-rank@d3#0' -> 'score-co-rank-d3-0' (no '#' or '@' in file names)."""
    return booster.replace("#", "-").replace("@", "-")


def quantile_params(cfg: MetaLearnerConfig) -> dict[str, object]:
    """XGBoost parameters of the interval's quantile model: low, median and high quantile."""
    params = cfg.xgb_params("reg:quantileerror")
    params["quantile_alpha"] = [cfg.quantiles[0], 0.5, cfg.quantiles[-1]]
    return params


def quantile_centre_and_sigma(quantiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre, difficulty) of quantile predictions (rows x 3: low, median, high)."""
    q = np.asarray(quantiles, dtype=float)
    centre = q[:, 1] if q.shape[1] >= 3 else q.mean(axis=1)
    sigma = np.maximum(np.abs(q[:, -1] - q[:, 0]) / 2.0, 0.0) + SIGMA_FLOOR
    return centre, sigma


def conformal_calibration(
    x: np.ndarray,
    acc: np.ndarray,
    groups: np.ndarray,
    params: dict[str, object],
    cfg: MetaLearnerConfig,
    *,
    rows: pd.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals and difficulties of *unseen-dataset* runs, what the conformal step needs.

    The quantile model is refitted without one block of dataset groups at a time and
    predicts the held-out block: residual y - median, difficulty half the 10-90 spread. A
    quantile model scored on its own training datasets is over-confident (LODO: ~42%
    coverage for a nominal 80%); these held-out scores are what makes the 80% hold.
    With ``rows`` (the frame behind ``x``) the level line is refitted without the held-out
    block too, so no held-out dataset's own scores place its anchor.
    Empty arrays when there is a single dataset group (nothing to hold out).
    """
    unique = np.unique(groups)
    if len(unique) < 2:
        return np.zeros(0), np.zeros(0)
    folds = min(CONFORMAL_FOLDS, len(unique))
    rng = np.random.default_rng(cfg.seed)
    block = {g: i % folds for i, g in enumerate(rng.permutation(unique))}
    fold_of = np.array([block[g] for g in groups])
    residuals: list[np.ndarray] = []
    sigmas: list[np.ndarray] = []
    for k in range(folds):
        held = fold_of == k
        level = fit_level(rows.loc[~held], acc[~held], cfg) if rows is not None else None
        train_margin = test_margin = None
        if level is not None and rows is not None:
            train_margin = _quantile_margin(level.margin(rows.loc[~held]))
            test_margin = _quantile_margin(level.margin(rows.loc[held]))
        dm = margin_matrix(x[~held], train_margin, label=acc[~held])
        test = margin_matrix(x[held], test_margin)
        booster = xgb.train(params, dm, num_boost_round=cfg.n_estimators)
        q = np.asarray(booster.predict(test), dtype=float)
        centre, sigma = quantile_centre_and_sigma(q.reshape(int(held.sum()), -1))
        residuals.append(acc[held] - centre)
        sigmas.append(sigma)
    return np.concatenate(residuals), np.concatenate(sigmas)


def chance_level(frame: pd.DataFrame) -> np.ndarray:
    """1 / classes per row (0 where unknown): the balanced accuracy of a model that always
    answers one class. An interval's lower end below it carries no information (0.4% of the
    shipped KB's own runs, none of the Quick-Tune runs, score more than 2 points under it),
    so :meth:`MetaLearner.predict` floors the lower end there (never above the prediction)."""
    chance = chance_of(frame)
    return np.where(np.isfinite(chance) & (chance > 0), chance, 0.0)


def fit_level(rows: pd.DataFrame, acc: np.ndarray, cfg: MetaLearnerConfig) -> LandmarkLevel | None:
    """The landmarks' level line for these training rows, or None when the config turns it
    off, the learner is dataset-blind, or too few tasks have landmarks."""
    if not (cfg.landmark_level and cfg.use_meta_features):
        return None
    return LandmarkLevel.fit(rows, acc)


def margin_matrix(x: np.ndarray, margin: np.ndarray | None, **kwargs: object) -> xgb.DMatrix:
    """``xgb.DMatrix(x, missing=NaN, **kwargs)`` with ``margin`` (the level anchor) as its
    base margin when there is one: how every fit and prediction of an anchored model reads
    its rows."""
    dm = xgb.DMatrix(x, missing=np.nan, **kwargs)
    if margin is not None:
        dm.set_base_margin(margin)
    return dm


def _quantile_margin(margin: np.ndarray | None) -> np.ndarray | None:
    """The level anchor for the quantile model: one column per quantile (low, median, high)."""
    return None if margin is None else np.repeat(np.asarray(margin)[:, None], 3, axis=1)


def conformal_scale(residuals: np.ndarray, sigmas: np.ndarray) -> str:
    """:data:`CONSTANT` or :data:`NORMALISED`: the conformal width that is narrower on the
    calibration runs, both at the same nominal coverage.

    Normalising by the quantile model's spread helps only where that spread tracks the
    error. On the shipped KB's own runs, once the level line took the dataset's level out
    (level.py), it no longer did: LODO, CPU regime, seed 0, mean width 0.309 normalised and
    0.255 constant at 78% and 77% coverage; on the Quick-Tune runs normalised stays ahead
    (0.662 against 0.680). Choosing on the calibration runs, which are themselves scored on
    held-out dataset groups, lets each learner take the one its KB supports.
    """
    r = np.abs(np.asarray(residuals, dtype=float))
    s = np.asarray(sigmas, dtype=float)
    if r.size == 0 or s.size != r.size:
        return NORMALISED
    constant = conformal_quantile(r)
    normalised = conformal_quantile(r / s) * float(np.mean(s))
    return CONSTANT if constant < normalised else NORMALISED


def conformal_quantile(scores: np.ndarray, coverage: float = INTERVAL_COVERAGE) -> float:
    """The finite-sample conformal quantile of the scores, floored at 0 (widen only)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    if scores.size == 0:
        return 0.0
    k = min(scores.size, int(np.ceil((scores.size + 1) * coverage)))
    return max(0.0, float(scores[k - 1]))


def _hash_strings(values: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for value in sorted(values):
        digest.update(value.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _config_tag(cfg: MetaLearnerConfig, exclude: Iterable[str] = ()) -> str:
    parts = cfg.model_dump(mode="json", exclude={"seed"})
    tag_src = json.dumps(
        {"cfg": parts, "exclude": sorted(exclude), "level": LEVEL_VERSION}, sort_keys=True
    )
    return hashlib.sha256(tag_src.encode()).hexdigest()[:8]


def cache_key(kb_hash: str, cfg: MetaLearnerConfig, exclude: Iterable[str] = ()) -> str:
    """``<kb_hash>-<encoding_version>-<seed>`` (+ a short tag when not the default fit)."""
    return f"{kb_hash}-{ENCODING_VERSION}-{cfg.seed}-{_config_tag(cfg, exclude)}"


def latest_pointer(root: Path, cfg: MetaLearnerConfig, exclude: Iterable[str] = ()) -> Path:
    """The file naming the last learner fitted with this configuration (any KB content):
    what a warm start grows from."""
    return root / f"latest-{ENCODING_VERSION}-{cfg.seed}-{_config_tag(cfg, exclude)}.json"


def _previous(root: Path, cfg: MetaLearnerConfig, exclude: Iterable[str]) -> MetaLearner | None:
    try:
        name = json.loads(latest_pointer(root, cfg, exclude).read_text())["directory"]
        return MetaLearner.load(root / str(name))
    except (OSError, ValueError, KeyError, TypeError, ModelUnavailableError):
        return None


# A rough prior for the first line, before any booster has finished (a whole first
# recommendation took 31.6 s on an idle 2-core box, issue 25); the next lines extrapolate
# from the boosters done. Measured here at load 19: 856 s for the 2,833-run shipped KB,
# which the later lines tracked (their estimate settled after a dozen boosters).
FIT_SECONDS_PER_1K_RUNS = 9.0


def booster_count(cfg: MetaLearnerConfig) -> int:
    """Boosters a fit trains (what its progress counts): accuracy, the score members that
    need their own fit, the quantile model and its conformal folds, the cost model."""
    own = sum(1 for member in score_members(cfg) if member)
    return 1 + own + (1 + CONFORMAL_FOLDS if cfg.with_uncertainty else 0) + 1


def fit_or_load(
    kb: KnowledgeBase,
    cfg: MetaLearnerConfig | None = None,
    *,
    exclude_datasets: Iterable[str] | None = None,
    cache: Path | None = None,
    records: list[RunRecord] | None = None,
    kb_hash: str | None = None,
    warm: bool = True,
) -> MetaLearner:
    """The meta-learner for the KB's current content: loaded from cache or fitted and cached.

    ``exclude_datasets`` drops whole datasets (and their dataset groups) from training, e.g.
    to recommend for a dataset that is itself in the KB without peeking at its runs.
    ``records`` and ``kb_hash`` (the KB's content and its hash, when already read) spare a
    read and a hash of the KB. ``warm``: when the KB only grew by a few runs since the last
    fit of this configuration, grow that learner (:meth:`MetaLearner.warm_start`, seconds)
    instead of refitting (a minute); ``info["fit"]`` says which learner answered.
    """
    cfg = cfg or MetaLearnerConfig()
    excluded = set(exclude_datasets or ())
    all_records = records if records is not None else list(kb.iter_records())
    kb_hash = kb_hash or kb_content_hash(all_records)
    root = (cache or config.cache_dir()) / "metalearner"
    directory = root / cache_key(kb_hash, cfg, excluded)
    if (directory / "metalearner.json").is_file():
        try:
            learner = MetaLearner.load(directory)
            learner.info["kb_hash"] = kb_hash
            learner.info["cached"] = True
            return learner
        except ModelUnavailableError:
            pass  # stale or damaged cache: refit below
    kept = [r for r in all_records if r.dataset not in excluded and r.dataset_group not in excluded]
    previous = _previous(root, cfg, excluded) if warm else None
    grown = previous.warm_start(records_to_frame(kept)) if previous is not None else None
    if grown is not None:
        grown.info["kb_hash"] = kb_hash
        grown.info["excluded"] = sorted(excluded)
        grown.save(directory)
        _point_at(root, cfg, excluded, directory)
        grown.info["cached"] = False
        return grown
    # Minutes on a busy machine, seconds on an idle one: say what it is and how far it got.
    report = WaitReporter(
        f"fitting the meta-learner on {len(kept)} KB runs (once per KB content, then cached)",
        booster_count(cfg),
        unit="boosters",
        estimate_s=FIT_SECONDS_PER_1K_RUNS * max(1, len(kept)) / 1000,
    )
    learner = MetaLearner.fit(records_to_frame(kept), cfg, on_booster=report.advance)
    report.finish()
    learner.info["kb_hash"] = kb_hash
    learner.info["excluded"] = sorted(excluded)
    learner.save(directory)
    _point_at(root, cfg, excluded, directory)
    learner.info["cached"] = False
    return learner


def _point_at(root: Path, cfg: MetaLearnerConfig, exclude: Iterable[str], directory: Path) -> None:
    from metallmix.atomic import write_text

    write_text(latest_pointer(root, cfg, exclude), json.dumps({"directory": directory.name}))
