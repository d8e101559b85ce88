"""``metallmix.validate``: the recommended configuration is trained for real, its MLflow run
nests under the recommendation's run, and the outcome joins the KB (the KB grows with use).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import metallmix
from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.agents.runtime.llm import LLMOutputError
from metallmix.tools import tracking
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.contracts import Candidate, Shortlist
from metallmix.tools.metafeatures import MetaFeatures


def _tiny_npz(path: Path) -> Path:
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, size=(n, 16, 16), dtype=np.uint8)
        images[labels == 1, 4:12, 4:12] = 220  # a bright square marks class 1
        return images, labels.astype(np.int64)

    arrays = {}
    for name, n in (("train", 40), ("val", 12), ("test", 12)):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split(n)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _shortlist() -> Shortlist:
    mf = MetaFeatures(
        n_images=40,
        n_classes=2,
        imbalance_ratio=1.0,
        resolution_h=16,
        resolution_w=16,
        channels=1,
        class_size_mean=20,
        images_per_class=20,
    )
    hp = Hyperparameters(
        lr=0.01,
        batch_size=16,
        optimizer="adamw",
        weight_decay=1e-4,
        epochs=1,
        scheduler="none",
        augmentation="none",
        image_size=32,
        label_smoothing=0.0,
        dropout=0.0,
    )
    candidate = Candidate(
        candidate_id="c1",
        model="lcnet_050",
        hyperparameters=hp,
        predicted_accuracy=0.7,
        accuracy_low=0.6,
        accuracy_high=0.8,
        predicted_seconds=3.0,
        score=0.7,
        origin="sampled",
    )
    return Shortlist(meta_features=mf, candidates=[candidate], kb_hash="tiny")


def test_validate_nests_under_the_recommendation_and_grows_the_kb(tmp_path: Path) -> None:
    data = _tiny_npz(tmp_path / "tiny.npz")
    llm = ScriptedLLM([LLMOutputError("not JSON", "x"), LLMOutputError("not JSON", "x")])
    rec = metallmix.recommend(
        None, llm=llm, shortlist=_shortlist(), name="tiny", judge_with_llm=False, track=True
    )
    assert rec.fallback and rec.model == "lcnet_050" and rec.mlflow_run_id

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    record = metallmix.validate(rec, data, kb=kb, threads=1)

    assert record.status == "ok" and record.source == "own"
    core = {"extra"}  # the trainer records its own settings (early-stopping patience) in extra
    assert record.model == "lcnet_050"
    assert record.hyperparameters.model_dump(exclude=core) == rec.hyperparameters.model_dump(
        exclude=core
    )
    assert record.run_id in kb and len(kb) == 1
    client = tracking.client()
    child = client.get_run(record.provenance.mlflow_run_id)
    assert child.data.tags["mlflow.parentRunId"] == rec.mlflow_run_id
    parent = client.get_run(rec.mlflow_run_id)
    # in the recommendation's metric (balanced accuracy), not plain accuracy
    assert parent.data.metrics["validated_score"] == record.score
    assert record.score == record.outcomes.val_balanced_accuracy
    assert parent.data.tags["metallmix.validated_metric"] == "balanced_accuracy"
    assert "validated_accuracy" not in parent.data.metrics
    # nested for real: MLflow shows a child under its parent only within one experiment
    assert child.info.experiment_id == parent.info.experiment_id
    assert rec.mlflow_run_id in child.data.tags["mlflow.note.content"]  # link back
    assert parent.data.tags["metallmix.validation_run_id"] == child.info.run_id
