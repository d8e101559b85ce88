"""run_trial: one real training run, its MLflow run (importer contract) and its KB row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_trainer import write_npz

from metallmix.errors import ConfigError
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.training.runner import RECORD_ARTIFACT, RunSpec, run_trial
from metallmix.tools.training.settings import TrialSettings

HP = Hyperparameters(lr=3e-3, epochs=1, image_size=16, batch_size=32, augmentation="light")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module: creating a store costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_run_is_logged_and_appended(toy: Path, tracking_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    epochs: list[int] = []
    record = run_trial(
        load_dataset(toy),
        RunSpec(model="lcnet_050", hp=HP, seed=7),
        kb=kb,
        settings=TrialSettings(
            threads=1, tracking_uri=tracking_uri, progress=lambda s: epochs.append(s.epoch)
        ),
    )
    assert epochs == [1]
    # The KB row is the returned record.
    assert kb.run_ids() == {record.run_id}
    stored = kb.get(record.run_id)
    assert stored is not None and stored.model_dump() == record.model_dump()
    assert record.source == "own" and record.status == "ok" and record.seed == 7
    assert record.dataset == "toy" and record.dataset_group == "toy"
    assert record.meta_features.n_images == 64 and record.meta_features.n_classes == 2
    assert record.meta_features.modality == "synthetic X-ray"
    assert record.hyperparameters.lr == 3e-3 and record.hyperparameters.epochs == 1
    out = record.outcomes
    assert out.val_accuracy is not None and 0 <= out.val_accuracy <= 1
    assert out.test_accuracy is not None and out.macro_f1 is not None
    assert out.epochs_run == 1 and len(out.learning_curve) == 1
    prov = record.provenance
    assert prov.dataset_source_repo == "example/toy-data"
    assert prov.dataset_source_commit == "0123456789abcdef"
    assert prov.code_version and prov.code_version.startswith("0.")
    assert prov.mlflow_run_id and record.run_id == f"own-{prov.mlflow_run_id}"

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(prov.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.KIND_TAG] == tracking.TRAINING_KIND
    assert run.data.tags["metallmix.status"] == "ok"
    params = run.data.params
    assert params["dataset"] == "toy" and params["model"] == "lcnet_050"
    assert params["pretrained"] == "False" and params["seed"] == "7"
    assert params["code_version"] == prov.code_version
    assert params["hp.lr"] == "0.003" and params["hp.image_size"] == "16"
    assert params["mf.n_images"] == "64" and params["mf.modality"] == "synthetic X-ray"
    metrics = run.data.metrics
    for key in (
        "val_accuracy",
        "test_accuracy",
        "macro_f1",
        "balanced_accuracy",
        "val_balanced_accuracy",
        "test_balanced_accuracy",
        "val_macro_f1",
        "macro_auc",
    ):
        assert metrics[key] == pytest.approx(getattr(out, key))
    assert out.test_balanced_accuracy == out.balanced_accuracy
    assert out.val_balanced_accuracy is not None and out.macro_auc is not None
    assert out.balanced_learning_curve == [out.val_balanced_accuracy]  # 1 epoch: the best
    assert record.hyperparameters.extra["class_weighting"] == "none"
    assert metrics["train_seconds"] == pytest.approx(out.train_seconds)
    assert "seconds_per_epoch" in metrics and "train_loss" in metrics
    history = client.get_metric_history(prov.mlflow_run_id, "train_loss")
    assert [m.step for m in history] == [1]
    names = {a.path for a in client.list_artifacts(prov.mlflow_run_id)}
    assert {"config.json", "learning_curve.png", "confusion_matrix.png", "metallmix"} <= names
    local = Path(client.download_artifacts(prov.mlflow_run_id, RECORD_ARTIFACT, str(tmp_path)))
    assert RunRecord.model_validate_json(local.read_text()) == record
    cfg = Path(client.download_artifacts(prov.mlflow_run_id, "config.json", str(tmp_path)))
    assert json.loads(cfg.read_text())["train_config"]["model"] == "lcnet_050"


def test_kb_importer_reads_what_we_log(toy: Path, tmp_path: Path) -> None:
    """The contract with the KB's MLflow importer: a logged run comes back unchanged."""
    mlflow_import = pytest.importorskip("metallmix.tools.kb.mlflow_import")
    uri = f"sqlite:///{tmp_path / 'own.db'}"
    record = run_trial(
        load_dataset(toy),
        RunSpec(model="lcnet_050", hp=HP),
        kb=None,
        settings=TrialSettings(threads=1, tracking_uri=uri),
    )
    imported = mlflow_import.import_mlflow(uri)
    assert [r.run_id for r in imported] == [record.run_id]
    assert imported[0].outcomes == record.outcomes
    assert imported[0].meta_features == record.meta_features


def test_nested_subsample_and_no_kb(toy: Path, tracking_uri: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = tracking.experiment_id(client, "metallmix-recommendations")
    parent = client.create_run(exp).info.run_id
    record = run_trial(
        load_dataset(toy),
        RunSpec(model="lcnet_050", hp=HP, parent_run_id=parent),
        kb=None,
        settings=TrialSettings(max_train_images=30, threads=1, tracking_uri=tracking_uri),
    )
    run = client.get_run(record.provenance.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    # The record describes what was trained on: the 30-image subsample.
    assert record.meta_features.n_images == 30
    assert record.dataset.startswith("toy-") and record.dataset_group == "toy"
    assert record.provenance.notes["n_train"] == 30
    # ... and says it is a capped run: learnt only as what it is (issue 26)
    fidelity = record.fidelity
    assert not fidelity.full and fidelity.train_images == 30 and fidelity.max_train_images == 30
    assert fidelity.full_train_images is not None and fidelity.full_train_images > 30
    assert fidelity.threads == 1 and fidelity.epochs == HP.epochs
    assert fidelity.describe().startswith(f"capped: 30 of {fidelity.full_train_images}")


def test_diverged_run_is_recorded(toy: Path, tracking_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    hp = Hyperparameters(lr=1e6, optimizer="sgd", epochs=2, image_size=16, batch_size=32)
    record = run_trial(
        load_dataset(toy),
        RunSpec(model="resnet10t", hp=hp),
        kb=kb,
        settings=TrialSettings(threads=1, tracking_uri=tracking_uri),
    )
    assert record.status == "diverged"
    assert kb.records(status="diverged") == [record]
    assert record.fidelity.full  # no cap: a full-fidelity run
    run = MlflowClient(tracking_uri=tracking_uri).get_run(record.provenance.mlflow_run_id)
    assert run.data.tags["metallmix.status"] == "diverged"
    assert run.info.status == "FINISHED"


def test_failure_marks_mlflow_run_and_leaves_kb(
    toy: Path, tracking_uri: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    with pytest.raises(ConfigError, match="image_size"):
        run_trial(
            load_dataset(toy),
            RunSpec(model="convnext_atto", hp=HP, experiment="failing"),
            kb=kb,
            settings=TrialSettings(threads=1, tracking_uri=tracking_uri),
        )
    assert len(kb) == 0
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("failing")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "image_size" in runs[0].data.tags["metallmix.error"]


def test_artifact_root_is_beside_the_database(tmp_path: Path) -> None:
    root = tracking.artifact_root(f"sqlite:///{tmp_path / 'x' / 'mlflow.db'}")
    assert root == (tmp_path / "x" / "artifacts").as_uri()
    assert tracking.artifact_root(
        "sqlite:///mlruns/mlflow.db",
    ).endswith("mlruns/artifacts")


@pytest.mark.data
def test_real_dataset_run(shared_data: Path, tracking_uri: str) -> None:
    """A capped run on BreastMNIST with the sidecar's real provenance."""
    ds = load_dataset(shared_data / "medical" / "breastmnist.npz")
    record = run_trial(
        ds,
        RunSpec(
            model="resnet10t", hp=Hyperparameters(lr=1e-3, epochs=1, image_size=28, batch_size=64)
        ),
        kb=None,
        settings=TrialSettings(max_train_images=120, threads=1, tracking_uri=tracking_uri),
    )
    assert record.status == "ok"
    assert record.provenance.dataset_source_repo == "KamalJain777/AMLS_25_26_SN24205421"
    assert record.meta_features.n_images == 120 and record.meta_features.resolution_h == 28
