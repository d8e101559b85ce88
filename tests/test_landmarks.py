"""Landmarks (issue 29): cheap scores of a dataset's own images that the meta-learner reads.

What must hold: the scores are deterministic for a seed and balanced accuracies in [0, 1];
they tell an easy dataset from a hard one; datasets without images (cards) carry them as
missing and the learner accepts the NaN columns; ``kb landmarks`` rewrites the KB in one
transaction, so a failure half-way leaves it as it was.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import app
from metallmix.errors import DatasetError
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta import landmarks as L
from metallmix.tools.meta.encoding import candidates_frame
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig
from metallmix.tools.meta.search_space import make_hyperparameters
from metallmix.tools.metafeatures import MetaFeatures, compute_meta_features

SMALL = {"n_estimators": 30, "max_depth": 3}


def _write_npz(path: Path, *, separable: bool, n: int = 60, seed: int = 0) -> Path:
    """A tiny grey dataset: class 1 brighter than class 0 when ``separable``, else noise."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, size in (("train", n), ("val", 12), ("test", 12)):
        labels = np.arange(size) % 2
        images = rng.integers(0, 120, size=(size, 20, 20), dtype=np.int64)
        if separable:
            images = images + 120 * labels[:, None, None]
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    np.savez(path, **arrays)
    return path


def test_probe_score_is_a_balanced_accuracy_that_tells_easy_from_hard() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    easy = rng.normal(size=(120, 30)) + 3.0 * np.eye(3)[labels] @ rng.normal(size=(3, 30))
    hard = rng.normal(size=(120, 30))
    a, b = L.loo_probe_score(easy, labels), L.loo_probe_score(hard, labels)
    assert 0.0 <= b < 0.6 < 0.9 < a <= 1.0
    assert L.loo_probe_score(easy, labels) == a  # deterministic
    with pytest.raises(DatasetError):
        L.loo_probe_score(easy[:3], labels[:3])


def test_balanced_accuracy_weights_classes_equally() -> None:
    labels = np.array([0] * 9 + [1])
    assert L.balanced_accuracy(labels, np.zeros(10, dtype=int)) == 0.5


def test_landmarks_are_deterministic_scores_in_unit_range(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    data = load_dataset(_write_npz(tmp_path / "easy.npz", separable=True))
    models = ["efficientnet_lite0"]
    first = L.compute_landmarks(data, seed=1, models=models, cache=None)
    again = L.compute_landmarks(data, seed=1, models=models)
    assert first.values == again.values
    assert set(first.values) | set(first.skipped) == {L.PIXELS, *models}
    assert all(0.0 <= v <= 1.0 for v in first.values.values())
    assert first.values[L.PIXELS] > 0.9  # the brightness gap is plain in raw pixels
    hard = load_dataset(_write_npz(tmp_path / "hard.npz", separable=False))
    assert L.compute_landmarks(hard, seed=1, models=[]).values[L.PIXELS] < 0.8


def test_a_card_has_no_landmarks_and_its_columns_are_missing(tmp_path: Path) -> None:
    card = tmp_path / "card.json"
    card.write_text(
        '{"name": "c", "class_names": ["a", "b"], "train_counts": {"a": 50, "b": 40}, '
        '"image_height": 28, "image_width": 28, "channels": 1}'
    )
    mf = compute_meta_features(card)
    assert mf.landmarks is None
    columns = L.landmark_columns(mf.landmarks, "efficientnet_lite0", True)
    assert set(columns) == set(L.LANDMARK_COLUMNS)
    assert all(math.isnan(v) for v in columns.values())


def test_a_candidate_reads_its_own_backbone_or_the_pixel_landmark() -> None:
    lm = {L.PIXELS: 0.6, "efficientnet_lite0": 0.8, "efficientnet_lite1": 0.7}
    own = L.landmark_columns(lm, "efficientnet_lite1", True)
    assert own == {"lm_candidate": 0.7, "lm_pixels": 0.6, "lm_backbone_best": 0.8}
    assert L.landmark_columns(lm, "resnet18", False)["lm_candidate"] == 0.6
    assert math.isnan(L.landmark_columns(lm, "efficientnet_lite2", True)["lm_candidate"])


def test_meta_features_refuse_a_landmark_that_is_not_a_score() -> None:
    base = synthetic_records(1, 1)[0].meta_features
    with pytest.raises(ValueError, match="landmark"):
        MetaFeatures.model_validate({**base.model_dump(), "landmarks": {"pixels": 1.5}})
    assert "landmarks" not in base.numeric()  # retrieval's vector is unchanged


def test_learner_reads_landmarks_and_accepts_them_missing() -> None:
    records = synthetic_records(4, 20, seed=3)
    # half the datasets have landmarks whose pixel score tracks their accuracy; the rest
    # (as Quick-Tune rows) have none
    for i, r in enumerate(records):
        if r.dataset in {"synth00", "synth01"}:
            mf = r.meta_features.model_copy(update={"landmarks": {"pixels": 0.5 + 0.1 * i % 5}})
            records[i] = r.model_copy(update={"meta_features": mf})
    frame = records_to_frame(records)
    assert frame["lm_pixels"].isna().sum() == 40
    learner = MetaLearner.fit(frame, MetaLearnerConfig(**SMALL))
    assert set(L.LANDMARK_COLUMNS) <= set(learner.encoder.columns)
    configs = [("resnet18", make_hyperparameters({"lr": 1e-3, "batch_size": 64}))]
    for landmarks in (None, {"pixels": 0.9, "efficientnet_lite0": 0.95}):
        mf = records[0].meta_features.model_copy(update={"landmarks": landmarks})
        prediction = learner.predict(candidates_frame(mf, configs))
        assert np.isfinite(prediction.accuracy).all()
    # a KB without any landmark (Quick-Tune) encodes as before landmarks existed
    plain = MetaLearner.fit(
        records_to_frame(synthetic_records(4, 20, seed=3)), MetaLearnerConfig(**SMALL)
    )
    assert not [c for c in plain.encoder.columns if c.startswith("lm_")]
    blind = MetaLearner.fit(frame, MetaLearnerConfig(use_meta_features=False, **SMALL))
    assert not [c for c in blind.encoder.columns if c.startswith("lm_")]
    assert all(not learner.encoder.columns[i].startswith("lm_") for i in learner.blind_columns)


def test_task_names_parse_as_the_build_writes_them() -> None:
    task = L.TaskName.parse("knee_oa_kl/c0+4/n300/r28")
    assert task == L.TaskName("knee_oa_kl", [0, 4], 300, 28)
    assert L.TaskName.parse("breastmnist") == L.TaskName("breastmnist")
    assert L.TaskName.parse("ACT_40/x") is None


def _kb_with_tasks(tmp_path: Path) -> tuple[Path, Path]:
    """A KB with runs on 'tiny', 'tiny/n30' (images in data/) and 'other' (no images)."""
    data = tmp_path / "data"
    data.mkdir()
    _write_npz(data / "tiny.npz", separable=True)
    records = synthetic_records(3, 4, seed=1)
    names = {"synth00": "tiny", "synth01": "tiny/n30", "synth02": "other"}
    records = [
        r.model_copy(update={"dataset": names[r.dataset], "dataset_group": names[r.dataset]})
        for r in records
    ]
    path = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(path).add(records)
    return path, data


def _no_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the pixel landmark (seconds saved; the backbones have their own test above)."""
    real = L.compute_landmarks

    def pixels_only(*args: object, **kwargs: object) -> L.LandmarkResult:
        return real(*args, **{**kwargs, "models": []})  # type: ignore[arg-type]

    monkeypatch.setattr(L, "compute_landmarks", pixels_only)


def test_kb_command_sets_landmarks_where_images_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = _kb_with_tasks(tmp_path)
    _no_backbones(monkeypatch)
    result = CliRunner().invoke(
        app, ["kb", "landmarks", "--data-dir", str(data), "--kb", str(path), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "landmarks 2/2 tiny/n30" in result.output
    assert "landmarks missing (no images)" in result.output
    by_task = {r.dataset: r.meta_features.landmarks for r in SQLiteKnowledgeBase(path).records()}
    assert by_task["other"] is None
    assert by_task["tiny"] is not None and 0.0 <= by_task["tiny"]["pixels"] <= 1.0
    assert by_task["tiny/n30"] is not None


def test_kb_command_failing_half_way_leaves_the_kb_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, data = _kb_with_tasks(tmp_path)
    before = path.read_bytes()
    hash_before = SQLiteKnowledgeBase(path).content_hash()
    calls: list[str] = []
    real = L.compute_landmarks

    def second_fails(dataset, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(dataset.name)
        if len(calls) == 2:
            raise RuntimeError("killed half-way")
        return real(dataset, **{**kwargs, "models": []})

    monkeypatch.setattr(L, "compute_landmarks", second_fails)
    result = CliRunner().invoke(
        app, ["kb", "landmarks", "--data-dir", str(data), "--kb", str(path)]
    )
    assert result.exit_code != 0 and len(calls) == 2
    assert SQLiteKnowledgeBase(path).content_hash() == hash_before
    assert all(r.meta_features.landmarks is None for r in SQLiteKnowledgeBase(path).records())
    del before  # the file may be checkpointed by SQLite; its content is what must not change


def test_replace_writes_all_or_nothing(tmp_path: Path) -> None:
    path, _ = _kb_with_tasks(tmp_path)
    store = SQLiteKnowledgeBase(path)
    records = store.records()
    hash_before = store.content_hash()
    changed = [
        r.model_copy(
            update={
                "meta_features": r.meta_features.model_copy(update={"landmarks": {"pixels": 0.7}})
            }
        )
        for r in records
    ]
    ghost = changed[0].model_copy(update={"run_id": "not-in-the-kb"})
    with pytest.raises(Exception, match="not in"):
        store.replace([*changed, ghost])
    assert store.content_hash() == hash_before
    assert store.replace(changed) == len(records)
    assert all(r.meta_features.landmarks == {"pixels": 0.7} for r in store.records())


def test_the_features_node_measures_images_and_says_a_card_has_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.graphs import nodes
    from metallmix.graphs.state import RecommendationState

    _no_backbones(monkeypatch)
    npz = _write_npz(tmp_path / "tiny.npz", separable=True)
    reads: list[object] = []

    def counted_load(*args: object, **kwargs: object) -> object:
        reads.append(args[0])
        return load_dataset(*args, **kwargs)  # type: ignore[arg-type]

    from metallmix.tools import metafeatures

    monkeypatch.setattr(nodes, "load_dataset", counted_load)
    monkeypatch.setattr(metafeatures, "load_dataset", counted_load)
    update = nodes.features(RecommendationState(data=str(npz)), None)  # type: ignore[arg-type]
    assert len(reads) == 1  # one read of the user's data serves meta-features and landmarks
    assert (
        update["meta_features"]
        == L.attach_landmarks(compute_meta_features(npz), load_dataset(npz))[0]
    )
    assert update["meta_features"].landmarks[L.PIXELS] > 0.9
    assert update["landmarks_seconds"] > 0 and update["landmarks_note"].startswith("landmarks: ")
    assert "landmarks: pixels" in capsys.readouterr().err  # the progress step, with seconds
    card = tmp_path / "card.json"
    card.write_text(
        '{"name": "c", "class_names": ["a", "b"], "train_counts": {"a": 50, "b": 40}, '
        '"image_height": 28, "image_width": 28, "channels": 1}'
    )
    update = nodes.features(RecommendationState(data=str(card)), None)  # type: ignore[arg-type]
    assert update["meta_features"].landmarks is None
    assert update["landmarks_note"] == L.MISSING_NO_IMAGES == "landmarks missing (no images)"
    assert update["landmarks_seconds"] is None
    assert "landmarks missing (no images)" in capsys.readouterr().err


def test_the_recommendation_run_records_the_landmarks_and_their_cost() -> None:
    from metallmix.graphs import recording
    from metallmix.graphs.configuration import Context
    from metallmix.graphs.state import RecommendationState

    state = RecommendationState(landmarks_note="landmarks: pixels 0.70", landmarks_seconds=2.5)
    assert ("landmarks_seconds", 2.5, 0) in recording._metrics(state)
    assert recording._params(state, Context())["landmarks"] == "landmarks: pixels 0.70"
    card = RecommendationState(landmarks_note=L.MISSING_NO_IMAGES)
    assert not [m for m in recording._metrics(card) if m[0] == "landmarks_seconds"]
