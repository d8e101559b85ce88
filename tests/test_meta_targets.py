"""The meta-learner target registry: a new target is one ``register_target`` call.

Why: adding a target used to mean five scattered edits in metalearner.py (a Literal, two
tuples, a function, an elif). This test adds a toy target from here only and fits, predicts,
saves and loads with it, alone and as an ensemble member, so the extension point stays open.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.errors import ConfigError
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.meta.metalearner import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    SINGLE_OBJECTIVES,
    MetaLearner,
    MetaLearnerConfig,
    score_members,
)
from metallmix.tools.meta.targets import (
    Target,
    get_target,
    register_target,
    target_column,
    unregister_target,
)

SMALL = {"n_estimators": 40, "max_depth": 3, "with_uncertainty": False, "with_cost": False}


def top_half(frame: pd.DataFrame) -> np.ndarray:
    """1 for a run at or above its dataset's median score, else 0: a deliberately coarse
    label, so the toy learner's ranking differs from the built-in targets'."""
    score = frame[target_column(frame)].astype(float)
    median = score.groupby(frame["dataset"]).transform("median")
    return (score >= median).to_numpy(dtype=float)


@pytest.fixture()
def toy() -> Iterator[Target]:
    target = register_target(Target("tophalf", top_half, "at or above the dataset median"))
    yield target
    unregister_target(target.name)


@pytest.fixture(scope="module")
def records() -> list[RunRecord]:
    return synthetic_records(4, 24, seed=2)


def test_builtins_and_the_default_are_registered() -> None:
    assert tuple(SINGLE_OBJECTIVES) == ("raw", "normalized", "rank", "percentile")
    assert tuple(OBJECTIVES) == (*SINGLE_OBJECTIVES, "ensemble")
    assert DEFAULT_OBJECTIVE == "ensemble" and MetaLearnerConfig().objective == "ensemble"
    assert get_target("co-rank").grouped and get_target("raw").is_accuracy


def test_an_unknown_objective_is_refused() -> None:
    with pytest.raises(ValueError, match="tophalf"):
        MetaLearnerConfig(objective="tophalf")
    with pytest.raises(ValueError, match="ensemble member 'tophalf'"):
        score_members(MetaLearnerConfig(members=("tophalf",)))


def test_a_name_cannot_be_registered_twice(toy: Target) -> None:
    with pytest.raises(ConfigError, match="already registered"):
        register_target(Target("tophalf", top_half, "again"))
    with pytest.raises(ConfigError, match="prefix"):
        register_target(Target("co-x", top_half, "a blind name"))


def test_a_toy_target_fits_predicts_and_round_trips(
    toy: Target, records: list[RunRecord], tmp_path: Path
) -> None:
    assert "tophalf" in OBJECTIVES and "tophalf" in SINGLE_OBJECTIVES
    frame = records_to_frame(records)
    learner = MetaLearner.fit(frame, MetaLearnerConfig(objective="tophalf", **SMALL))
    assert list(learner.score_boosters) == ["tophalf"]
    pred = learner.predict(frame)
    # the ranking model learnt the toy label: the runs it scores higher are the top halves
    label = top_half(frame)
    assert pred.score[label == 1].mean() > pred.score[label == 0].mean() + 0.3
    normalized = MetaLearner.fit(frame, MetaLearnerConfig(objective="normalized", **SMALL))
    assert not np.array_equal(pred.score, normalized.predict(frame).score)
    again = MetaLearner.load(learner.save(tmp_path / "ml"))
    np.testing.assert_allclose(again.predict(frame).score, pred.score, rtol=1e-6)


def test_a_toy_target_is_an_ensemble_member(toy: Target, records: list[RunRecord]) -> None:
    frame = records_to_frame(records)
    cfg = MetaLearnerConfig(members=("tophalf", "co-tophalf", "normalized"), bags=1, **SMALL)
    learner = MetaLearner.fit(frame, cfg)
    names = {m.partition("@")[0] for m in learner.score_boosters}
    assert names == {"tophalf", "co-tophalf", "normalized"}
    score = learner.predict(frame).score
    assert np.all((score > 0) & (score <= 1))  # mean within-pool percentile
