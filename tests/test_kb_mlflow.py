"""MLflow importer against a real local MLflow (sqlite) store built by the test."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_kb_tabular import make_record

from metallmix.cli import main
from metallmix.errors import ImportFormatError, KnowledgeBaseError
from metallmix.tools.kb.mlflow_import import (
    KIND_TAG,
    RECORD_ARTIFACT,
    TRAINING_RUN,
    import_mlflow,
    scan_mlflow,
)
from metallmix.tools.kb.store import SQLiteKnowledgeBase


@dataclass
class Store:
    uri: str
    logged_run: str  # mlflow run id of the run with the record artifact
    foreign_run: str  # run reconstructed from params/metrics
    empty_run: str  # run with nothing usable


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("validation", artifact_location=str(root / "artifacts"))

    logged = client.create_run(exp, tags={KIND_TAG: TRAINING_RUN}).info.run_id
    record = make_record("own:logged-1")
    client.log_text(logged, record.model_dump_json(), RECORD_ARTIFACT)
    client.log_param(logged, "dataset", record.dataset)
    client.set_terminated(logged)

    foreign = client.create_run(exp).info.run_id
    params = {
        "dataset": "chest-xray",
        "model": "convnext_tiny",
        "pretrained": "True",
        "seed": "3",
        "hp.lr": "0.0003",
        "hp.batch_size": "64",
        "hp.optimizer": "adamw",
        "hp.mixup": "0.2",
        "hp.amp": "True",
        "hp.scheduler": "None",
        "mf.n_images": "5000",
        "mf.n_classes": "2",
        "mf.resolution_h": "224",
        "mf.resolution_w": "224",
        "mf.channels": "1",
        "mf.class_size_mean": "2500",
        "mf.images_per_class": "2500",
        "mf.modality": "x-ray",
    }
    for key, value in params.items():
        client.log_param(foreign, key, value)
    for step, value in enumerate([0.6, 0.7, 0.75]):
        client.log_metric(foreign, "val_accuracy", value, step=step)
    for step, value in enumerate([0.5, 0.65, 0.7]):
        client.log_metric(foreign, "val_balanced_accuracy", value, step=step)
    client.log_metric(foreign, "macro_auc", 0.8)
    client.log_metric(foreign, "train_seconds", 42.0)
    client.set_terminated(foreign)

    empty = client.create_run(exp).info.run_id
    client.log_param(empty, "notes", "an unrelated run")
    client.set_terminated(empty)

    other = client.create_experiment("other", artifact_location=str(root / "other"))
    client.set_terminated(client.create_run(other).info.run_id)

    broken = client.create_experiment("broken", artifact_location=str(root / "broken"))
    bad = client.create_run(broken, tags={KIND_TAG: TRAINING_RUN}).info.run_id
    client.log_text(bad, '{"run_id": "x"}', RECORD_ARTIFACT)
    client.set_terminated(bad)
    yield Store(uri=uri, logged_run=logged, foreign_run=foreign, empty_run=empty)


def test_reads_artifacts_and_reconstructs(store: Store) -> None:
    scan = scan_mlflow(store.uri, ["validation"])
    by_id = {r.provenance.mlflow_run_id: r for r in scan.records}
    assert set(by_id) == {store.logged_run, store.foreign_run}
    assert scan.skipped and scan.skipped[0][0] == store.empty_run
    assert "missing dataset, model" in scan.skipped[0][1]

    logged = by_id[store.logged_run]
    original = make_record("own:logged-1")
    assert logged.source == "mlflow"  # a foreign store (not this installation's)
    assert logged.provenance.tracking_uri == store.uri
    assert logged.provenance.notes == original.provenance.notes
    assert logged.hyperparameters == original.hyperparameters
    assert logged.outcomes == original.outcomes
    assert logged.run_id == original.run_id

    rebuilt = by_id[store.foreign_run]
    assert rebuilt.run_id == f"mlflow:{store.foreign_run}" and rebuilt.source == "mlflow"
    assert (rebuilt.dataset, rebuilt.model, rebuilt.pretrained, rebuilt.seed) == (
        "chest-xray",
        "convnext_tiny",
        True,
        3,
    )
    hp = rebuilt.hyperparameters
    assert (hp.lr, hp.batch_size, hp.optimizer, hp.scheduler) == (0.0003, 64, "adamw", None)
    assert hp.extra == {"mixup": 0.2, "amp": True}
    assert rebuilt.meta_features.n_images == 5000 and rebuilt.meta_features.modality == "x-ray"
    assert rebuilt.outcomes.val_accuracy == pytest.approx(0.75)
    assert rebuilt.outcomes.learning_curve == pytest.approx([0.6, 0.7, 0.75])
    assert rebuilt.outcomes.val_balanced_accuracy == pytest.approx(0.7)
    assert rebuilt.outcomes.balanced_learning_curve == pytest.approx([0.5, 0.65, 0.7])
    assert rebuilt.outcomes.macro_auc == pytest.approx(0.8)
    assert rebuilt.outcomes.train_seconds == 42.0


def test_own_store_keeps_source(store: Store) -> None:
    scan = scan_mlflow(store.uri, ["validation"], own_tracking_uri=store.uri)
    logged = next(r for r in scan.records if r.provenance.mlflow_run_id == store.logged_run)
    assert logged.source == "own"
    # The same file spelled differently (relative path) is still this installation's store.
    relative = "sqlite:///" + os.path.relpath(store.uri[len("sqlite:///") :])
    again = scan_mlflow(relative, ["validation"], own_tracking_uri=store.uri)
    assert {r.source for r in again.records if r.run_id == logged.run_id} == {"own"}


def test_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ImportFormatError, match=r"experiment\(s\) nope not found.*validation"):
        import_mlflow(store.uri, ["nope"])
    with pytest.raises(ImportFormatError, match=r"artifact metallmix/run_record.json is not a"):
        import_mlflow(store.uri, ["broken"])
    with pytest.raises(KnowledgeBaseError, match="does not exist"):
        import_mlflow(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()  # no empty store created by the attempt
    kb = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(kb).add([make_record("own:1")])
    with pytest.raises(KnowledgeBaseError, match="is not an MLflow tracking store"):
        import_mlflow(f"sqlite:///{kb}")
    with sqlite3.connect(kb) as conn:  # MLflow did not add its tables to the KB file
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert tables == {"meta", "runs"}


def test_cli_import_mlflow(store: Store, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    kb = tmp_path / "kb.sqlite"
    args = ["kb", "import-mlflow", "--tracking-uri", store.uri, "--experiment", "validation"]
    assert main([*args, "--kb", str(kb), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["inserted"], summary["skipped"], summary["not_importable"]) == (2, 0, 1)
    assert main([*args, "--kb", str(kb), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    assert len(SQLiteKnowledgeBase(kb)) == 2
    # A broken experiment aborts before writing anything.
    fresh = tmp_path / "fresh.sqlite"
    bad = ["kb", "import-mlflow", "--tracking-uri", store.uri, "--experiment", "broken"]
    assert main([*bad, "--kb", str(fresh)]) == 2
    assert "error: MLflow run" in capsys.readouterr().err
    assert len(SQLiteKnowledgeBase(fresh)) == 0


@pytest.mark.real
@pytest.mark.slow
def test_contract_with_the_real_trainer(tmp_path: Path) -> None:
    """A run logged by the real trainer (run_trial) comes back as the record it returned,
    both from the artifact and, reconstructed, from its params and metrics alone."""
    import numpy as np
    from mlflow.tracking import MlflowClient

    from metallmix.tools.datasets import load_dataset
    from metallmix.tools.kb.mlflow_import import _reconstruct
    from metallmix.tools.kb.records import Hyperparameters
    from metallmix.tools.training.runner import RunSpec, run_trial
    from metallmix.tools.training.settings import TrialSettings

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 60, size=(n, 16, 16)).astype(np.uint8)
        images[labels == 1, :8, :8] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.int64)
    np.savez(tmp_path / "toy.npz", **arrays)
    (tmp_path / "toy.json").write_text(
        json.dumps({"modality": "synthetic", "class_names": ["a", "b"]})
    )

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    hp = Hyperparameters(epochs=2, image_size=16, batch_size=16, lr=3e-3)
    record = run_trial(
        load_dataset(tmp_path / "toy.npz"),
        RunSpec(model="lcnet_050", hp=hp),
        kb=None,
        settings=TrialSettings(tracking_uri=uri, threads=1),
    )
    imported = import_mlflow(uri)
    assert len(imported) == 1
    back = imported[0]
    assert back.run_id == record.run_id
    assert back.provenance.tracking_uri == uri and back.provenance.mlflow_run_id
    same = {"provenance", "source"}
    assert back.model_dump(exclude=same) == record.model_dump(exclude=same)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(back.provenance.mlflow_run_id)
    rebuilt = _reconstruct(run, client, uri)
    assert not isinstance(rebuilt, str), rebuilt
    assert (rebuilt.dataset, rebuilt.model) == (record.dataset, record.model)
    assert rebuilt.meta_features == record.meta_features
    assert rebuilt.hyperparameters == record.hyperparameters
    assert rebuilt.outcomes.val_accuracy == pytest.approx(record.outcomes.val_accuracy)
