"""KB build and TPE search on a real local Ray instance: killed workers, resume, equality.

One Ray instance (2 CPUs, no dashboard) serves the whole module; Ray's worker start-up is
the slow part, so the trials themselves are 1-epoch lcnet_050 runs on 16-pixel images.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_backends import by_key, tiny_plan
from test_search import TINY as TINY_SEARCH
from test_train_trainer import write_npz

from metallmix.cli import main
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.training.backends import RayBackend
from metallmix.tools.training.build import BUILD_EXPERIMENT, BUILD_SETTINGS, TRIAL_KEY_TAG, build
from metallmix.tools.training.distributed import (
    TrialJob,
    TrialOutcome,
    execute_trial,
)
from metallmix.tools.training.search import SearchSpec, run_search
from metallmix.tools.training.settings import TrialSettings

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_backend() -> Iterator[RayBackend]:
    # Test helpers travel by value: Ray workers cannot import modules from tests/.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        backend = RayBackend()  # joins the running instance, leaves it open on close
        assert backend.remote and not backend._owns
        yield backend
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_npz(folder, "toy")
    write_npz(folder, "quad", classes=4, seed=2)
    return folder


def crashing(policy: dict[str, str], markers: Path, job: TrialJob, data: object) -> TrialOutcome:
    """Kills the worker process: ``always``, or ``once`` (first attempt, a marker remembers)."""
    mode = policy.get(job.key)
    marker = markers / job.key
    if mode == "always" or (mode == "once" and not marker.exists()):
        marker.touch()
        os._exit(1)
    return execute_trial(job, data)  # type: ignore[arg-type]


def test_ray_build_survives_killed_workers_and_equals_local(
    ray_backend: RayBackend, data_dir: Path, tmp_path: Path
) -> None:
    trials, sources = tiny_plan(data_dir)
    local = SQLiteKnowledgeBase(tmp_path / "local.sqlite")
    list(build(local, trials, sources))

    markers = tmp_path / "markers"
    markers.mkdir()
    policy = {trials[0].key: "once", trials[1].key: "always"}
    kb = SQLiteKnowledgeBase(tmp_path / "ray.sqlite")
    events = list(
        build(
            kb,
            trials,
            sources,
            settings=BUILD_SETTINGS.replace(
                backend=ray_backend,
                max_retries=1,
                trial_fn=functools.partial(crashing, policy, markers),
            ),
        )
    )
    assert (markers / trials[0].key).exists() and (markers / trials[1].key).exists()
    assert sorted(e.trial.key for e in events) == sorted(t.key for t in trials)
    lost = [e for e in events if e.record is None]
    assert [e.trial.key for e in lost] == [trials[1].key]  # died on both attempts
    assert "worker lost on all 2 attempt(s)" in (lost[0].error or "")
    assert set(by_key(kb)) == {t.key for t in trials} - {trials[1].key}  # no partial row

    # The build resumes: only the failed trial runs again, and now it completes.
    again = list(build(kb, trials, sources, settings=BUILD_SETTINGS.replace(backend=ray_backend)))
    assert [e.trial.key for e in again] == [trials[1].key] and again[0].record is not None
    assert (
        list(build(kb, trials, sources, settings=BUILD_SETTINGS.replace(backend=ray_backend))) == []
    )

    records = kb.records()
    keys = Counter(r.provenance.notes[TRIAL_KEY_TAG] for r in records)
    assert len(records) == len(trials) and set(keys.values()) == {1}  # complete, no dupes
    # Same seeds, same configurations, same accuracies as the local backend.
    assert by_key(kb) == by_key(local)

    # The driver replayed every Ray run into the tracking store, FINISHED, with its history.
    client = tracking.client()
    for record in records:
        run = client.get_run(record.provenance.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.data.tags["metallmix.record_id"] == (
            record.run_id
        )
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 1
    exp = client.get_experiment_by_name(BUILD_EXPERIMENT)
    assert len(client.search_runs([exp.experiment_id])) == 2 * len(trials)  # local + Ray


def test_ray_tpe_search_matches_the_local_search(
    ray_backend: RayBackend, data_dir: Path, tmp_path: Path
) -> None:
    dataset = load_dataset(data_dir / "toy.npz")
    search = SearchSpec(sampler="tpe", trials=3, seed=5, space=TINY_SEARCH)
    one_thread = TrialSettings(threads=1)
    here = dataclasses.replace(search, storage=tmp_path / "local.sqlite")
    local = run_search(dataset, here, settings=one_thread)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    remote = run_search(
        dataset,
        dataclasses.replace(search, storage=tmp_path / "ray.sqlite"),
        kb=kb,
        settings=one_thread.replace(backend=ray_backend, parallel=1),
    )
    assert remote.trials_done == 3 and len(kb) == 3
    assert [(t.state, t.model, t.params, t.value) for t in remote.trials] == [
        (t.state, t.model, t.params, t.value) for t in local.trials
    ]
    client = tracking.client()
    for summary in remote.trials:
        run = client.get_run(summary.mlflow_run_id)
        assert run.data.tags["mlflow.parentRunId"] == remote.parent_run_id
    import optuna

    study = optuna.load_study(
        study_name=remote.study_name, storage=f"sqlite:///{tmp_path / 'ray.sqlite'}"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3


def test_cli_kb_build_on_ray(ray_backend: RayBackend, data_dir: Path, tmp_path: Path) -> None:
    kb = tmp_path / "kb.sqlite"
    code = main(
        [
            "kb",
            "build",
            "--datasets",
            str(data_dir / "toy.npz"),
            "--configs-per-task",
            "1",
            "--kb",
            str(kb),
            "--backend",
            "ray",
            "--limit",
            "1",
            "--json",
        ]
    )
    assert code == 0
    assert len(SQLiteKnowledgeBase(kb)) == 1
    assert ray.is_initialized()  # the CLI reused the running instance and left it up


def test_bench_compare_runs_its_searches_on_ray(ray_backend: RayBackend, tmp_path: Path) -> None:
    from test_bench_compare import N_TRAININGS, SETTINGS, bad_llm, check_report, make_kb, make_npz
    from test_bench_compare import training_runs as compare_runs

    from metallmix.benchmarks.compare import run_compare

    data = make_npz(tmp_path / "tiny.npz")
    kb = make_kb(tmp_path / "kb.sqlite")
    report = run_compare(
        [data], SETTINGS, state_dir=tmp_path / "state", kb=kb, llm=bad_llm(), backend=ray_backend
    )
    check_report(report)
    runs = compare_runs()  # search trials came back through the driver's MLflow relay
    assert len(runs) == N_TRAININGS
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on loopback over this test's SQLite store."""
    from mlflow_server import serve_mlflow  # type: ignore[import-not-found]

    with serve_mlflow(tmp_path / "mlflow-server.log", timeout=120) as url:
        yield url


def logs_directly(job: TrialJob, data: object) -> TrialOutcome:
    """execute_trial, checking the worker logged to the server itself (nothing to relay)."""
    outcome = execute_trial(job, data)  # type: ignore[arg-type]
    if not job.direct or outcome.calls is not None:
        raise AssertionError("a worker with an MLflow server must log to it directly")
    return outcome


def test_ray_workers_log_to_an_mlflow_server_themselves(
    ray_backend: RayBackend, data_dir: Path, tmp_path: Path, mlflow_server: str
) -> None:
    trials, sources = tiny_plan(data_dir)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    events = list(
        build(
            kb,
            trials[:2],
            sources,
            settings=BUILD_SETTINGS.replace(
                backend=ray_backend, tracking_uri=mlflow_server, trial_fn=logs_directly
            ),
        )
    )
    assert [e.error for e in events] == [None, None] and len(kb) == 2
    client = tracking.client(mlflow_server)
    for record in kb.iter_records():
        assert record.provenance.tracking_uri == mlflow_server
        run = client.get_run(record.provenance.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["metallmix.record_id"] == record.run_id
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
