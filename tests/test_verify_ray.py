"""Verification on Ray: runs train on workers, the driver writes MLflow and the KB, a worker
that dies on every attempt is reported as a failed candidate, and the numbers equal the
local backend's (same seeds, one thread)."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_train_trainer import write_npz
from test_verify import cand

from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.training.backends import RayBackend
from metallmix.tools.training.distributed import TrialJob, TrialOutcome, execute_trial
from metallmix.tools.training.halving import HalvingSpec, run_verify
from metallmix.tools.training.settings import TrialSettings

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.real, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_backend() -> Iterator[RayBackend]:
    # Test helpers travel by value: Ray workers cannot import modules from tests/.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        # No more tasks than CPUs: a task queued behind a dying one on the same leased
        # worker would be lost with it, which is Ray's behaviour, not what is tested here.
        yield RayBackend(max_in_flight=2)
    finally:
        ray.shutdown()


def dies_on(key: str, job: TrialJob, data: object) -> TrialOutcome:
    """Kills its worker whenever it is given the run ``key``."""
    if job.key == key:
        os._exit(1)
    return execute_trial(job, data)


def test_ray_verify_reports_a_lost_run_and_equals_local(
    ray_backend: RayBackend, tmp_path: Path
) -> None:
    data = load_dataset(write_npz(tmp_path, "toy"))
    three = [cand(1, lr=0.01, epochs=2), cand(2, lr=0.003, epochs=2), cand(3, lr=0.001, epochs=2)]
    spec = HalvingSpec(k=3, first_rung_epochs=1)
    one_thread = TrialSettings(threads=1)
    kb = SQLiteKnowledgeBase(tmp_path / "ray.sqlite")
    result = run_verify(
        data,
        three,
        zero_shot_id="c1",
        halving=dataclasses.replace(spec, storage=tmp_path / "ray-studies.sqlite", study_name="rv"),
        settings=one_thread.replace(
            backend=ray_backend,
            max_retries=1,
            trial_fn=functools.partial(dies_on, "rv#1"),  # c2's first-rung run, every attempt
        ),
        kb=kb,
    )
    c2 = result.candidate("c2")
    assert c2 is not None and c2.status == "failed"
    assert "worker lost on all 2 attempt(s)" in (c2.runs[0].error or "")
    done = [r for c in result.candidates for r in c.runs if r.state == "done"]
    states = [(c.candidate_id, [(r.state, r.error) for r in c.runs]) for c in result.candidates]
    assert len(done) == 3, states  # c1, c3 first rung + one finalist
    assert len(kb) == 3  # every finished run, no partial row
    client = tracking.client()
    for run in done:  # replayed by the driver, nested under the verification's run
        mlflow_run = client.get_run(run.mlflow_run_id)
        assert mlflow_run.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
        assert mlflow_run.info.status == "FINISHED"

    local = run_verify(
        data,
        three,
        zero_shot_id="c1",
        halving=dataclasses.replace(spec, storage=tmp_path / "local.sqlite", study_name="lv"),
        settings=one_thread,
    )
    for cid in ("c1", "c3"):  # first-rung values: the same runs on both backends
        on_ray, here = result.candidate(cid), local.candidate(cid)
        assert on_ray is not None and here is not None
        assert on_ray.runs[0].value == here.runs[0].value
