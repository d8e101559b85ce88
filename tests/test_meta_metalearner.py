"""Meta-learner: learns a planted effect, handles unknown models and NaNs, is deterministic,
saves/loads exactly, and refits only when the KB content changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.encoding import ENCODING_VERSION, FeatureEncoder, candidates_frame
from metallmix.tools.meta.metalearner import (
    OBJECTIVES,
    MetaLearner,
    MetaLearnerConfig,
    fit_or_load,
)
from metallmix.tools.meta.search_space import make_hyperparameters
from metallmix.tools.meta.targets import normalized_target

SMALL = {"n_estimators": 60, "max_depth": 4}


@pytest.fixture(scope="module")
def records():  # type: ignore[no-untyped-def]
    return synthetic_records(5, 30, seed=1)


def test_learns_the_planted_lr_optimum(records) -> None:  # type: ignore[no-untyped-def]
    learner = MetaLearner.fit(records, MetaLearnerConfig(**SMALL))
    mf = records[0].meta_features
    configs = [
        ("resnet18", make_hyperparameters({"lr": lr, "batch_size": 64, "optimizer": "adamw"}))
        for lr in (1e-4, 1e-3, 2.5e-2)
    ]
    pred = learner.predict(candidates_frame(mf, configs))
    assert pred.accuracy[1] > pred.accuracy[0] + 0.03
    assert pred.accuracy[1] > pred.accuracy[2] + 0.03
    assert np.all(pred.low <= pred.accuracy) and np.all(pred.accuracy <= pred.high)
    assert np.all(np.isfinite(pred.seconds)) and np.all(pred.seconds > 0)


def test_unknown_model_and_missing_values_are_predicted(records) -> None:  # type: ignore[no-untyped-def]
    learner = MetaLearner.fit(records, MetaLearnerConfig(**SMALL))
    mf = records[0].meta_features.model_copy(update={"imbalance_ratio": None})
    configs = [("totally_new_net_b9", make_hyperparameters({"optimizer": "lion"}))]
    pred = learner.predict(candidates_frame(mf, configs))
    assert np.isfinite(pred.accuracy[0]) and 0 <= pred.accuracy[0] <= 1
    columns = learner.encoder.columns
    row = learner.encoder.transform(candidates_frame(mf, configs))[0]
    assert row[columns.index("model=__other__")] == 1.0
    assert row[columns.index("hp_optimizer=__other__")] == 1.0
    assert np.isnan(row[columns.index("mf_imbalance_ratio")])


def test_fit_is_deterministic_for_a_seed(records) -> None:  # type: ignore[no-untyped-def]
    frame = records_to_frame(records)
    cfg = MetaLearnerConfig(seed=3, **SMALL)
    a = MetaLearner.fit(frame, cfg).predict(frame)
    b = MetaLearner.fit(frame, cfg).predict(frame)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.high, b.high)


def test_fit_does_not_depend_on_the_order_runs_are_read(records) -> None:  # type: ignore[no-untyped-def]
    """The same KB content gives the same learner whatever order its store returns the runs
    in (XGBoost's row subsampling and the encoder's categories would follow row order)."""
    cfg = MetaLearnerConfig(seed=3, **SMALL)
    frame = records_to_frame(records)
    a = MetaLearner.fit(records, cfg).predict(frame)
    b = MetaLearner.fit(list(reversed(records)), cfg).predict(frame)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.high, b.high)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_save_load_round_trip(records, tmp_path: Path, objective: str) -> None:  # type: ignore[no-untyped-def]
    frame = records_to_frame(records)
    learner = MetaLearner.fit(frame, MetaLearnerConfig(objective=objective, **SMALL))
    directory = learner.save(tmp_path / "ml")
    assert sorted(p.name for p in directory.iterdir() if p.suffix == ".json")
    assert not list(directory.glob("*.pkl"))
    again = MetaLearner.load(directory)
    p, q = learner.predict(frame), again.predict(frame)
    np.testing.assert_allclose(p.score, q.score, rtol=1e-6)
    np.testing.assert_allclose(p.accuracy, q.accuracy, rtol=1e-6)
    np.testing.assert_allclose(p.seconds, q.seconds, rtol=1e-6)
    assert again.encoder == learner.encoder and again.version == learner.version


def test_normalized_target_is_per_dataset(records) -> None:  # type: ignore[no-untyped-def]
    frame = records_to_frame(records)
    norm = normalized_target(frame)
    for _, idx in frame.groupby("dataset").groups.items():
        values = norm[np.asarray(idx)]
        assert values.min() == pytest.approx(0.0) and values.max() == pytest.approx(1.0)


def test_encoder_round_trips_and_groups_one_hots(records) -> None:  # type: ignore[no-untyped-def]
    frame = records_to_frame(records)
    enc = FeatureEncoder.fit(frame)
    assert enc.version == ENCODING_VERSION
    again = FeatureEncoder.model_validate_json(enc.model_dump_json())
    np.testing.assert_array_equal(enc.transform(frame), again.transform(frame))
    groups = dict(zip(enc.columns, enc.groups, strict=True))
    assert groups["hp_optimizer=adamw"] == "optimizer"
    assert groups["model=resnet18"] == "model" and groups["model_params_m"] == "model"
    assert groups["hp_lr"] == "lr"


def test_cache_is_reused_until_the_kb_changes(records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(records[:120])
    cfg = MetaLearnerConfig(**SMALL)
    first = fit_or_load(kb, cfg)
    assert first.info["cached"] is False
    second = fit_or_load(kb, cfg)
    assert second.info["cached"] is True and second.info["kb_hash"] == first.info["kb_hash"]
    kb.add(records[120:])
    third = fit_or_load(kb, cfg)
    assert third.info["cached"] is False and third.info["kb_hash"] != first.info["kb_hash"]
    assert third.info["n_rows"] == len(records)


def test_exclusion_hides_a_dataset_from_training(records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(records)
    learner = fit_or_load(kb, MetaLearnerConfig(**SMALL), exclude_datasets={"synth00"})
    assert "synth00" not in learner.info["datasets"]  # type: ignore[operator]
    assert learner.info["n_rows"] == sum(1 for r in records if r.dataset != "synth00")


def test_too_small_kb_is_a_clear_error(records) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KnowledgeBaseError, match="at least"):
        MetaLearner.fit(records[:3])


def test_config_only_cannot_see_meta_features(records) -> None:  # type: ignore[no-untyped-def]
    frame = records_to_frame(records)
    blind = MetaLearner.fit(frame, MetaLearnerConfig(use_meta_features=False, **SMALL))
    assert not [c for c in blind.encoder.columns if c.startswith("mf_")]
    assert blind.encoder.meta_features is False
    configs = [
        ("resnet18", make_hyperparameters({"lr": lr, "batch_size": 64, "optimizer": "adamw"}))
        for lr in (1e-4, 1e-3, 2.5e-2)
    ]
    small = records[0].meta_features
    other = small.model_copy(
        update={"n_images": 99_999, "n_classes": 500, "modality": "something else"}
    )
    a = blind.predict(candidates_frame(small, configs))
    b = blind.predict(candidates_frame(other, configs))
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    # the default learner does see them: its accuracy moves with the dataset
    seeing = MetaLearner.fit(frame, MetaLearnerConfig(**SMALL))
    assert any(c.startswith("mf_") for c in seeing.encoder.columns)
    # the ensemble's 'co-' members see the same blind columns
    assert all(not seeing.encoder.columns[i].startswith("mf_") for i in seeing.blind_columns)


def test_partial_runs_are_not_learnt(records) -> None:  # type: ignore[no-untyped-def]
    """A run stopped before its epoch budget is a low-fidelity snapshot, not a final score."""
    from metallmix.tools.meta.metalearner import training_rows

    partial = [
        r.model_copy(
            update={
                "run_id": f"{r.run_id}-partial",
                "outcomes": r.outcomes.model_copy(update={"epochs_run": 2, "epoch_budget": 50}),
            }
        )
        for r in records[:10]
    ]
    done = records[10].model_copy(
        update={
            "outcomes": records[10].outcomes.model_copy(
                update={"epochs_run": 50, "epoch_budget": 50}
            )
        }
    )
    rows = training_rows(records_to_frame([*records[11:], done, *partial]))
    assert not rows["run_id"].str.endswith("-partial").any()
    assert done.run_id in set(rows["run_id"]) and len(rows) == len(records) - 10
    learner = MetaLearner.fit([*records, *partial], MetaLearnerConfig(**SMALL))
    assert learner.info["n_rows"] == len(records) and learner.info["n_partial_runs_ignored"] == 10


def test_conformal_quantile_widens_only() -> None:
    from metallmix.tools.meta.metalearner import conformal_quantile

    assert conformal_quantile(np.array([-0.2, -0.1, -0.05])) == 0.0  # never narrows
    scores = np.linspace(0.0, 0.09, 10)
    assert conformal_quantile(scores) == pytest.approx(0.08)  # ceil(11 * 0.8) = 9th value


def test_contributions_are_the_shap_libraries_tree_shap(records) -> None:  # type: ignore[no-untyped-def]
    """XGBoost's built-in TreeSHAP (used for speed) equals shap.TreeExplainer's values,
    and the values add up to the prediction (SHAP's local accuracy). shap is a test
    dependency only (the dev extra): the product uses XGBoost's TreeSHAP."""
    shap = pytest.importorskip("shap", reason="shap comes with the dev extra")

    learner = MetaLearner.fit(records, MetaLearnerConfig(**SMALL))
    frame = records_to_frame(records[:12])
    values, base = learner.contributions(frame)
    explainer = shap.TreeExplainer(learner.accuracy_booster)
    expected = np.asarray(explainer.shap_values(learner.matrix(frame)), dtype=float)
    assert values.shape == expected.shape == (12, len(learner.encoder.columns))
    np.testing.assert_allclose(values, expected, atol=1e-5)
    assert base == pytest.approx(float(np.ravel(explainer.expected_value)[0]), abs=1e-5)
    raw = learner.accuracy_booster.predict(xgb.DMatrix(learner.matrix(frame), missing=np.nan))
    np.testing.assert_allclose(values.sum(axis=1) + base, raw, atol=1e-4)


def test_default_ensemble_is_diverse_members_settings_and_bags() -> None:
    """The product's pick rule: targets x (with, without meta-features) x tree settings x bags."""
    from metallmix.tools.meta.metalearner import parse_member, score_members

    cfg = MetaLearnerConfig()
    members = score_members(cfg)
    assert len(members) == len(cfg.members) * len(cfg.tree_settings) * cfg.bags
    assert len(set(members)) == len(members)
    assert parse_member("co-normalized@d3#1") == ("co-normalized", "d3", 1)
    assert parse_member("rank") == ("rank", None, 0)
    shapes = {cfg.xgb_params("reg:squarederror", t)["max_depth"] for t in cfg.tree_settings}
    assert len(shapes) > 1  # not one tree shape copied
    # the dataset-blind twin has exactly as many members (fair compute), none 'co-'-named
    blind = score_members(cfg.model_copy(update={"use_meta_features": False}))
    assert len(blind) == len(members) and not any(m.startswith("co-") for m in blind)
    with pytest.raises(ValueError, match="distinct names"):
        MetaLearnerConfig(tree_settings=cfg.tree_settings[:1] * 2)


def test_tree_setting_overrides_only_what_it_sets() -> None:
    from metallmix.tools.meta.metalearner import TreeSetting

    cfg = MetaLearnerConfig(subsample=0.7)
    own = cfg.xgb_params("reg:squarederror")
    deep = cfg.xgb_params("reg:squarederror", TreeSetting(name="x", max_depth=9))
    assert deep["max_depth"] == 9 and deep["subsample"] == 0.7 == own["subsample"]
    thin = cfg.xgb_params("reg:squarederror", TreeSetting(name="y", max_depth=2, subsample=0.5))
    assert thin["subsample"] == 0.5


def test_ensemble_members_round_trip_through_save(records, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every member booster (names with '@' and '#') is saved and loaded back, same scores."""
    from metallmix.tools.meta.metalearner import TreeSetting

    cfg = MetaLearnerConfig(
        n_estimators=20,
        bags=2,
        tree_settings=(TreeSetting(name="a", max_depth=2), TreeSetting(name="b", max_depth=4)),
    )
    learner = MetaLearner.fit(records, cfg)
    assert len(learner.score_boosters) == len(cfg.members) * 2 * 2
    loaded = MetaLearner.load(learner.save(tmp_path / "m"))
    frame = records_to_frame(records[:12])
    np.testing.assert_allclose(loaded.predict(frame).score, learner.predict(frame).score)
    members = learner.member_scores(frame)
    # seeds differ between bags: the two bags of one member are different fits
    assert not np.array_equal(members["normalized@b#0"], members["normalized@b#1"])


def test_a_fit_says_what_it_does_how_far_and_how_long(
    kb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold fit can take minutes on a busy machine: it announces itself with the boosters
    to fit and an estimate, then reports progress; a cached load and ``wait_lines(False)``
    (``recommend(progress=False)``) print nothing."""
    from metallmix import progress
    from metallmix.tools.meta.metalearner import booster_count, fit_or_load

    monkeypatch.setattr(progress, "WAIT_EVERY_S", 0.0)
    store = SQLiteKnowledgeBase(kb, read_only=True)
    cfg = MetaLearnerConfig(**SMALL)  # a few boosters: the lines, not the ensemble, matter
    fit_or_load(store, cfg, cache=tmp_path / "cache")
    lines = [line for line in capsys.readouterr().err.splitlines() if "meta-learner" in line]
    assert lines[0].startswith("[metallmix] fitting the meta-learner on 80 KB runs")
    assert f"{booster_count(cfg)} boosters, about" in lines[0]
    assert any("boosters, about" in line and "s left" in line for line in lines[1:])
    fit_or_load(store, cfg, cache=tmp_path / "cache")  # cached: no wait, no line
    assert "meta-learner" not in capsys.readouterr().err
    with progress.wait_lines(False):
        fit_or_load(store, cfg, cache=tmp_path / "other")
    assert "meta-learner" not in capsys.readouterr().err
