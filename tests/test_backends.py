"""Execution backends without Ray: local in-process and pool, MLflow relay, dataset shipping.

The Ray twins of these checks live in ``test_backends_ray.py``.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from test_kb_build import TINY
from test_train_trainer import write_npz

from metallmix.cli import main
from metallmix.errors import ConfigError
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.training.backends import (
    LocalBackend,
    Resources,
    WorkerLostError,
    make_backend,
)
from metallmix.tools.training.build import (
    BUILD_SETTINGS,
    TRIAL_KEY_TAG,
    TaskSpec,
    Trial,
    build,
    plan,
    resolve_sources,
)
from metallmix.tools.training.distributed import (
    TrialJob,
    TrialOutcome,
    execute_trial,
    materialize,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_npz(folder, "toy")
    write_npz(folder, "quad", classes=4, seed=2)
    return folder


def tiny_plan(data_dir: Path) -> tuple[list[Trial], dict[str, Path]]:
    sources = resolve_sources([data_dir / "toy.npz", data_dir / "quad.npz"])
    tasks = [TaskSpec(source="toy"), TaskSpec(source="quad", classes=[1, 3], resolution=12)]
    return plan(tasks, 2, space=TINY), sources


def by_key(kb: SQLiteKnowledgeBase) -> dict[str, tuple[str, dict[str, object], float | None]]:
    out = {}
    for record in kb.iter_records():
        key = record.provenance.notes[TRIAL_KEY_TAG]
        assert isinstance(key, str)
        out[key] = (
            record.model,
            record.hyperparameters.model_dump(mode="json"),
            record.outcomes.val_accuracy,
        )
    return out


def test_materialized_dataset_trains_on_identical_arrays(data_dir: Path) -> None:
    ds = load_dataset(data_dir / "quad.npz").subset(classes=[0, 2], train_limit=20, seed=0)
    mem = pickle.loads(pickle.dumps(materialize(ds)))  # what crosses the object store
    assert mem.name == ds.name and mem.class_names == ds.class_names
    for name in ds.splits:
        a_x, a_y = ds.split(name).load_arrays(size=12, seed=3)
        b_x, b_y = mem.split(name).load_arrays(size=12, seed=3)
        assert np.array_equal(a_x, b_x) and np.array_equal(a_y, b_y)
    assert mem.split("train").source.describe(0).startswith(str(data_dir / "quad.npz"))


def test_relayed_mlflow_run_matches_a_direct_one(data_dir: Path, tmp_path: Path) -> None:
    """A worker without the tracking store records; the driver replays into the real run."""
    trials, sources = tiny_plan(data_dir)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")

    class Remote(LocalBackend):
        remote = True  # behave like Ray: ship materialised data, relay MLflow calls

    events = list(build(kb, trials[:2], sources, settings=BUILD_SETTINGS.replace(backend=Remote())))
    assert [e.error for e in events] == [None, None]
    client = tracking.client()
    for record in kb.iter_records():
        run_id = record.provenance.mlflow_run_id
        assert run_id and record.run_id == f"own-{run_id}"
        assert record.provenance.tracking_uri == client.tracking_uri
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["metallmix.record_id"] == record.run_id
        assert run.data.tags[TRIAL_KEY_TAG] == record.provenance.notes[TRIAL_KEY_TAG]
        assert run.data.params["model"] == record.model
        assert run.data.metrics["val_accuracy"] == pytest.approx(record.outcomes.val_accuracy)
        history = client.get_metric_history(run_id, "val_accuracy")
        assert len(history) == record.outcomes.epochs_run + 1  # per epoch + the final value
        folder = Path(client.download_artifacts(run_id, "metallmix", str(tmp_path / run_id)))
        stored = (folder / "run_record.json").read_text()
        assert f'"own-{run_id}"' in stored and not re.search("relay[0-9a-f]{32}", stored)


def test_local_backend_equals_the_plain_build(data_dir: Path, tmp_path: Path) -> None:
    trials, sources = tiny_plan(data_dir)
    trials = trials[:2]  # one per task
    plain = SQLiteKnowledgeBase(tmp_path / "plain.sqlite")
    list(build(plain, trials, sources))
    local = SQLiteKnowledgeBase(tmp_path / "local.sqlite")
    events = list(
        build(local, trials, sources, settings=BUILD_SETTINGS.replace(backend=LocalBackend()))
    )
    assert len(events) == len(trials) and all(e.record is not None for e in events)
    assert by_key(local) == by_key(plain)
    assert (
        list(build(local, trials, sources, settings=BUILD_SETTINGS.replace(backend=LocalBackend())))
        == []
    )  # resumable


def crash_once(job: TrialJob, data: object) -> TrialOutcome:
    """Kills its worker process on the first attempt of each trial (a marker file remembers)."""
    marker = Path(os.environ["METALLMIX_TEST_MARKERS"]) / job.key
    if not marker.exists():
        marker.touch()
        os._exit(1)
    return execute_trial(job, data)  # type: ignore[arg-type]


def test_pool_worker_death_is_retried_without_partial_rows(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials, sources = tiny_plan(data_dir)
    trial = trials[1]
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("METALLMIX_TEST_MARKERS", str(markers))  # spawned workers inherit it
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    with LocalBackend(workers=1) as backend:
        events = list(
            build(
                kb,
                [trial],
                sources,
                settings=BUILD_SETTINGS.replace(
                    backend=backend, max_retries=1, trial_fn=crash_once
                ),
            )
        )
    assert (markers / trial.key).exists()  # the first worker really died
    assert [(e.trial.key, e.error) for e in events] == [(trial.key, None)]
    assert len(kb) == 1 and set(by_key(kb)) == {trial.key}


def test_backend_choice_and_resources_are_checked() -> None:
    with pytest.raises(ConfigError, match="--backend must be one of"):
        make_backend("spark")
    with pytest.raises(ConfigError, match="--address is for --backend ray"):
        make_backend("local", address="auto")
    with pytest.raises(ConfigError, match="positive number of CPUs"):
        Resources(num_cpus=0)
    with pytest.raises(ConfigError, match="negative"):
        LocalBackend(workers=-1)
    backend = LocalBackend()
    handle = backend.submit(_boom, resources=Resources())
    with pytest.raises(ZeroDivisionError):
        backend.result(backend.wait([handle])[0])
    assert issubclass(WorkerLostError, Exception)


def _boom() -> float:
    return 1 / 0


def test_cli_build_with_local_backend(data_dir: Path, tmp_path: Path) -> None:
    kb = tmp_path / "kb.sqlite"
    args = ["kb", "build", "--datasets", str(data_dir / "toy.npz"), "--configs-per-task", "1"]
    code = main([*args, "--kb", str(kb), "--backend", "local", "--limit", "1", "--json"])
    assert code == 0
    assert len(SQLiteKnowledgeBase(kb)) == 1
    assert main([*args, "--kb", str(kb), "--backend", "spark"]) == 2
