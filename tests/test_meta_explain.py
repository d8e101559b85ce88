"""SHAP facts: signs and sizes match a planted effect, one-hots are grouped back, plots render."""

from __future__ import annotations

from pathlib import Path

import pytest

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.meta.encoding import candidates_frame
from metallmix.tools.meta.explain import (
    facts_for_rows,
    format_value,
    global_importance,
    grouped_contributions,
    plot_bar,
    plot_waterfall,
)
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig
from metallmix.tools.meta.search_space import make_hyperparameters


@pytest.fixture(scope="module")
def learner_and_frame():  # type: ignore[no-untyped-def]
    records = synthetic_records(4, 40, seed=2, noise=0.005)
    frame = records_to_frame(records)
    learner = MetaLearner.fit(
        frame, MetaLearnerConfig(n_estimators=80, max_depth=4, with_cost=False)
    )
    return learner, frame, records


def _frame(records, lr: float, optimizer: str = "adamw"):  # type: ignore[no-untyped-def]
    hp = make_hyperparameters({"lr": lr, "optimizer": optimizer, "batch_size": 64})
    return candidates_frame(records[0].meta_features, [("resnet10t", hp)])


def test_lr_fact_has_the_planted_sign_and_reference(learner_and_frame) -> None:  # type: ignore[no-untyped-def]
    learner, _, records = learner_and_frame
    good = facts_for_rows(learner, _frame(records, 1e-3), ["good"], top_k=3)
    bad = facts_for_rows(learner, _frame(records, 3e-2), ["bad"], top_k=3)
    lr_good = next(f for f in good if f.feature == "lr")
    lr_bad = next(f for f in bad if f.feature == "lr")
    assert lr_good.effect_points > 1.0  # planted: the optimum is worth several points
    assert lr_bad.effect_points < -1.0
    assert lr_good.reference is not None
    assert "instead of the KB median" in lr_good.sentence
    assert f"{lr_good.effect_points:+.1f} pts predicted" in lr_good.sentence
    assert lr_bad.sentence.startswith("lr 0.03 ")


def test_contributions_add_up_to_the_prediction(learner_and_frame) -> None:  # type: ignore[no-untyped-def]
    learner, frame, _ = learner_and_frame
    rows = frame.head(20)
    table, base = grouped_contributions(learner, rows)
    predicted = learner.predict(rows)
    # TreeSHAP is exact: base + contributions = raw model output (before clipping)
    total = (base + table.sum(axis=1).to_numpy()) / 100.0
    inside = (predicted.accuracy > 0.001) & (predicted.accuracy < 0.999)
    assert total[inside] == pytest.approx(predicted.accuracy[inside], abs=1e-4)
    assert "optimizer" in table.columns and not any("=" in c for c in table.columns)


def test_global_importance_ranks_the_planted_feature_high(learner_and_frame) -> None:  # type: ignore[no-untyped-def]
    learner, frame, _ = learner_and_frame
    importance = global_importance(learner, frame)
    hyper = [g for g in importance.index if g not in {"n_images", "n_classes"}]
    assert "lr" in hyper[:2]


def test_plots_are_written(learner_and_frame, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    learner, frame, records = learner_and_frame
    bar = plot_bar(global_importance(learner, frame.head(50)), tmp_path / "bar.png")
    wf = plot_waterfall(learner, _frame(records, 1e-3), tmp_path / "wf.png")
    for path in (bar, wf):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_format_value() -> None:
    assert format_value(3e-4) == "3.0e-4"
    assert format_value(0.01) == "0.01"
    assert format_value(64) == "64"
    assert format_value(None) == "unknown"
    assert format_value(True) == "yes"
