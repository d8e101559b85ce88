"""The landmarks' level line (tools/meta/level.py): the anchor of the accuracy and interval
models. Issue 26: a held-out dataset harder than every training one must be predicted near
its own level, not at the easiest training level the trees saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.meta.encoding import candidates_frame
from metallmix.tools.meta.explain import grouped_contributions, waterfall
from metallmix.tools.meta.level import LEVEL_GROUP, MIN_LEVEL_TASKS, LandmarkLevel
from metallmix.tools.meta.metalearner import (
    CONSTANT,
    NORMALISED,
    MetaLearner,
    MetaLearnerConfig,
    conformal_scale,
)
from metallmix.tools.meta.search_space import make_hyperparameters

SMALL = {"n_estimators": 40, "nthread": 1, "with_cost": False}


def _records(n_datasets: int, *, with_landmarks: int | None = None) -> list[RunRecord]:
    """Datasets whose accuracy level is 0.2 + 0.7 x their best-backbone landmark; the first
    ``with_landmarks`` (default all) carry landmarks, the rest none (as Quick-Tune)."""
    records = synthetic_records(n_datasets, 12, seed=5)
    names = sorted({r.dataset for r in records})
    limit = len(names) if with_landmarks is None else with_landmarks
    out = []
    for r in records:
        i = names.index(r.dataset)
        lm = 0.3 + 0.6 * i / max(1, len(names) - 1)
        level = 0.2 + 0.7 * lm
        score = float(np.clip(level + (r.score or 0.0) * 0.1 - 0.05, 0.0, 1.0))
        landmarks = {"efficientnet_lite0": lm, "pixels": lm - 0.1} if i < limit else None
        mf = r.meta_features.model_copy(update={"landmarks": landmarks})
        outcomes = r.outcomes.model_copy(
            update={"val_accuracy": score, "val_balanced_accuracy": score}
        )
        out.append(r.model_copy(update={"meta_features": mf, "outcomes": outcomes}))
    return out


def _label(frame: pd.DataFrame) -> np.ndarray:
    return frame["out_score"].to_numpy(dtype=float)


def test_the_line_recovers_the_level_and_leaves_rows_without_landmarks_at_the_fallback() -> None:
    frame = records_to_frame(_records(12, with_landmarks=10))
    level = LandmarkLevel.fit(frame, _label(frame))
    assert level is not None and level.n_tasks == 10
    margin = level.margin(frame)
    has = frame["lm_backbone_best"].notna().to_numpy()
    truth = 0.2 + 0.7 * frame["lm_backbone_best"].to_numpy(dtype=float)
    assert np.abs(margin[has] - truth[has]).max() < 0.03
    # without landmarks: the chance line (a class count is all a card or Quick-Tune row has)
    assert level.chance_line is not None
    chance = 1.0 / frame["mf_n_classes"].to_numpy(dtype=float)
    by_chance = level.chance_line[0] + level.chance_line[1] * chance
    np.testing.assert_allclose(margin[~has], np.clip(by_chance[~has], 0, 1))
    no_count = frame.loc[~has].drop(columns=["mf_n_classes"])
    assert np.all(level.margin(no_count) == level.fallback)  # nothing at all: one constant
    rest = frame.loc[~has, "out_score"].to_numpy(dtype=float)
    assert level.fallback == round(float(np.median(rest)), 6)
    # one dataset, one margin: every candidate of a dataset starts from the same level, so
    # the anchor moves the level and the interval, never the candidates' order
    per_dataset = pd.Series(margin).groupby(frame["dataset"].to_numpy()).nunique()
    assert (per_dataset == 1).all()
    assert LandmarkLevel.model_validate(level.model_dump(mode="json")) == level


def test_too_few_tasks_with_landmarks_give_no_anchor() -> None:
    frame = records_to_frame(_records(12, with_landmarks=MIN_LEVEL_TASKS - 1))
    assert LandmarkLevel.fit(frame, _label(frame)) is None
    cfg = MetaLearnerConfig(objective="raw", **SMALL)
    assert MetaLearner.fit(frame, cfg).level is None


def test_a_harder_unseen_dataset_is_predicted_near_its_own_level() -> None:
    records = _records(12)
    hardest = min({r.dataset for r in records})  # index 0: the lowest landmark and level
    train = records_to_frame([r for r in records if r.dataset != hardest])
    held = next(r for r in records if r.dataset == hardest)
    configs = [("resnet18", make_hyperparameters({"lr": 1e-3, "batch_size": 64}))]
    frame = candidates_frame(held.meta_features, configs)
    truth = 0.2 + 0.7 * 0.3
    anchored = MetaLearner.fit(train, MetaLearnerConfig(objective="raw", **SMALL))
    plain = MetaLearner.fit(
        train, MetaLearnerConfig(objective="raw", landmark_level=False, **SMALL)
    )
    assert anchored.level is not None and plain.level is None
    error_anchored = abs(float(anchored.predict(frame).accuracy[0]) - truth)
    error_plain = abs(float(plain.predict(frame).accuracy[0]) - truth)
    assert error_anchored < 0.06 < error_plain  # trees alone stop at the nearest level seen
    # the dataset-blind baseline cannot see landmarks, so it has no anchor either
    blind = MetaLearner.fit(train, MetaLearnerConfig(use_meta_features=False, **SMALL))
    assert blind.level is None


def test_the_anchor_survives_save_load_and_a_warm_start(tmp_path: Path) -> None:
    records = _records(12)
    frame = records_to_frame(records[:-1])
    learner = MetaLearner.fit(frame, MetaLearnerConfig(objective="raw", **SMALL))
    probe = records_to_frame(records[:5])
    before = learner.predict(probe)
    loaded = MetaLearner.load(learner.save(tmp_path / "m"))
    after = loaded.predict(probe)
    np.testing.assert_allclose(before.accuracy, after.accuracy, atol=1e-6)
    np.testing.assert_allclose(before.high, after.high, atol=1e-6)
    grown = loaded.warm_start(records_to_frame(records))
    assert grown is not None and grown.level == learner.level
    assert np.isfinite(grown.predict(probe).accuracy).all()


def test_the_explanation_reports_the_level_as_its_own_step() -> None:
    records = _records(12)
    learner = MetaLearner.fit(records_to_frame(records), MetaLearnerConfig(**SMALL))
    assert learner.level is not None
    configs = [("resnet18", make_hyperparameters({"lr": 1e-3, "batch_size": 64}))]
    frame = candidates_frame(records[0].meta_features, configs)
    table, base = grouped_contributions(learner, frame)
    predicted = float(learner.predict(frame).accuracy[0]) * 100
    assert LEVEL_GROUP in table.columns
    assert abs(base + float(table.iloc[0].sum()) - predicted) < 1e-3
    # the base is the KB's, not this dataset's level: the same for a far easier dataset
    easy = candidates_frame(records[-1].meta_features, configs)
    assert abs(grouped_contributions(learner, easy)[1] - base) < 1e-3  # float32 trees
    drawn = waterfall(learner, frame, top_k=40)
    assert any(label.startswith("landmark level 0.") for label in drawn.labels)


def test_the_conformal_width_is_the_one_narrower_on_the_calibration_runs() -> None:
    rng = np.random.default_rng(0)
    sigmas = rng.uniform(0.02, 0.3, 400)
    # errors that scale with the difficulty: normalising pays
    assert conformal_scale(rng.normal(0, 1, 400) * sigmas, sigmas) == NORMALISED
    # errors blind to it (the level line took out what the spread tracked): one width
    assert conformal_scale(rng.normal(0, 0.1, 400), sigmas) == CONSTANT
    assert conformal_scale(np.zeros(0), np.zeros(0)) == NORMALISED  # nothing to choose on


def test_the_lower_end_is_never_below_chance() -> None:
    records = _records(12)
    learner = MetaLearner.fit(records_to_frame(records), MetaLearnerConfig(**SMALL))
    configs = [("resnet18", make_hyperparameters({"lr": 1e-3, "batch_size": 64}))]
    hard = records[0].meta_features.model_copy(update={"n_classes": 3, "landmarks": None})
    frame = candidates_frame(hard, configs)
    # a conformal band reaching 0 (what a wide band on a hard dataset does)
    learner.interval = lambda q: (np.zeros(len(q)), np.ones(len(q)))  # type: ignore[method-assign]
    prediction = learner.predict(frame)
    floor = min(1 / 3, float(prediction.accuracy[0]))
    assert prediction.low[0] == pytest.approx(floor)
    assert prediction.low[0] <= prediction.accuracy[0] <= prediction.high[0]


def test_an_out_of_range_interval_is_widened_but_not_below_chance() -> None:
    from metallmix.tools.meta.shortlist import widen_for_ood

    assert widen_for_ood(0.3, 0.6) == pytest.approx((0.0, 0.9))
    assert widen_for_ood(0.3, 0.6, floor=1 / 7) == pytest.approx((1 / 7, 0.9))
