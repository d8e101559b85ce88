"""Trials on an execution backend: the worker's function and the driver's one dispatch loop.

The KB build, the Optuna search and the verification all hand their trials to a
:class:`TrialRunner`, whatever the backend (this process, a process pool, Ray), so there is
one loop that keeps tasks in flight, retries lost workers and commits results.

One rule keeps a cluster run as safe as a local one: **only the driver writes**. Workers
train and hand back a :class:`TrialOutcome`; the driver appends the record to the KB (one
transaction, idempotent on run id) and, unless the workers could reach the MLflow server
themselves, replays the worker's recorded MLflow calls into the tracking store
(:mod:`metallmix.tools.training.relay`). A worker that dies mid-trial therefore leaves
nothing behind: the driver retries the trial on another worker (``max_retries``) or reports
it failed, and the next build picks it up again because its trial key is not in the KB.
In the driver's own process (``LocalBackend(workers=0)``) the trial is a plain recorded
run: it writes the KB itself and shares the caller's feature cache and progress callback.

Datasets are materialised in memory and shipped once per task through the backend's object
store (``ray.put``), so workers on other machines need neither the files nor a shared disk.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metallmix.errors import MetaLLMiXError
from metallmix.tools import tracking
from metallmix.tools.datasets.base import Dataset, ImageHeader, ImageReadError, ImageSource
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.tools.training.backends import (
    LocalBackend,
    Resources,
    WorkerLostError,
)
from metallmix.tools.training.relay import MlflowRecorder, is_server, rebind, replay
from metallmix.tools.training.runner import RunSpec, run_trial
from metallmix.tools.training.settings import TrialSettings

# ---------------------------------------------------------------------------------------
# Datasets in memory, so they can travel through an object store.


class MemoryImages(ImageSource):
    """Decoded images (or their read errors) held in memory, with the original headers."""

    def __init__(
        self,
        images: list[np.ndarray | ImageReadError],
        headers: list[ImageHeader | ImageReadError],
        descriptions: list[str],
    ) -> None:
        self.images = images
        self.headers = headers
        self.descriptions = descriptions

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return self.descriptions[index]

    def iter_headers(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, ImageHeader | ImageReadError]]:
        for index in indices:
            yield index, self.headers[index]

    def iter_pixels(
        self, indices: Sequence[int]
    ) -> Iterator[tuple[int, np.ndarray | ImageReadError]]:
        for index in sorted({int(i) for i in indices}):
            yield index, self.images[index]


def materialize(dataset: Dataset) -> Dataset:
    """The same dataset with every referenced image decoded into memory.

    Indices are renumbered monotonically, so images stream in the same order as from the
    original source and training sees byte-identical arrays in the same order.
    """
    by_source: dict[int, ImageSource] = {}
    wanted: dict[int, set[int]] = {}
    for split in dataset.splits.values():
        key = id(split.source)
        by_source[key] = split.source
        wanted.setdefault(key, set()).update(int(i) for i in split.indices)
    new_sources: dict[int, tuple[MemoryImages, np.ndarray]] = {}
    for key, source in by_source.items():
        order = np.array(sorted(wanted[key]), dtype=np.int64)
        headers = dict(source.iter_headers(order.tolist()))
        pixels = dict(source.iter_pixels(order.tolist()))
        memory = MemoryImages(
            [pixels.get(int(i), ImageReadError(source.describe(int(i)))) for i in order],
            [headers.get(int(i), ImageReadError(source.describe(int(i)))) for i in order],
            [source.describe(int(i)) for i in order],
        )
        new_sources[key] = (memory, order)
    splits = {}
    for name, split in dataset.splits.items():
        memory, order = new_sources[id(split.source)]
        splits[name] = dataclasses.replace(
            split, source=memory, indices=np.searchsorted(order, split.indices), skipped=[]
        )
    return dataclasses.replace(dataset, splits=splits)


# ---------------------------------------------------------------------------------------
# The worker side: one trial, no KB (unless in the driver's process), MLflow direct or recorded.


@dataclass(frozen=True, kw_only=True)
class TrialJob(RunSpec):
    """Everything a worker needs for one trial, besides the shipped dataset: the run, its
    key, whether the worker logs to MLflow itself (``direct``) and the worker's settings."""

    key: str
    direct: bool
    settings: TrialSettings = field(default_factory=TrialSettings)


@dataclass
class TrialOutcome:
    """What a worker returns: the record (or the user-facing error) and its MLflow calls."""

    key: str
    record: RunRecord | None
    error: str | None
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] | None
    placeholder: str | None
    seconds: float
    worker: str


def execute_trial(
    job: TrialJob,
    data: tuple[Dataset, MetaFeatures | None],
    *,
    kb: KnowledgeBase | None = None,
    settings: TrialSettings | None = None,
) -> TrialOutcome:
    """Train one configuration on a worker.

    Errors a user can cause (a model that cannot run at a size, ...) come back as the
    outcome's ``error``; anything else is a bug and propagates to the driver. ``kb`` and
    ``settings`` (the driver's, with its feature cache and progress callback; default the
    job's own) are only passed in the driver's own process.
    """
    dataset, mf = data
    settings = settings or job.settings
    started = time.perf_counter()
    recorder = None if job.direct or not settings.track else MlflowRecorder(settings.uri)
    record: RunRecord | None = None
    error: str | None = None
    try:
        record = run_trial(
            dataset, job, kb=kb, settings=settings, meta_features=mf, mlflow_client=recorder
        )
    except MetaLLMiXError as exc:
        error = str(exc)
    return TrialOutcome(
        key=job.key,
        record=record,
        error=error,
        calls=recorder.calls if recorder is not None else None,
        placeholder=recorder.placeholder if recorder is not None else None,
        seconds=time.perf_counter() - started,
        worker=f"{socket.gethostname()}:{os.getpid()}",
    )


#: ``fn(job, data) -> TrialOutcome``; a replacement (tests) runs as given on every backend.
TrialFn = Callable[..., TrialOutcome]


# ---------------------------------------------------------------------------------------
# The driver side: one dispatch loop for every kind of run.


class _Committer:
    """The driver's single writer: MLflow replay first, then the KB row."""

    def __init__(self, kb: KnowledgeBase | None, tracking_uri: str) -> None:
        self.kb = kb
        self.tracking_uri = tracking_uri
        self._client: Any = None

    def commit(self, outcome: TrialOutcome) -> RunRecord | None:
        record = outcome.record
        if outcome.calls and outcome.placeholder:
            if self._client is None:
                self._client = tracking.client(self.tracking_uri)
            real = replay(outcome.calls, self._client, outcome.placeholder)
            if record is not None:
                record = rebind(record, outcome.placeholder, real, self.tracking_uri)
        if record is not None and self.kb is not None:
            self.kb.add([record])
        return record


@dataclass
class Finished:
    """One trial that ended: its record, or why not (a user-facing error, a lost worker)."""

    payload: Any
    record: RunRecord | None
    error: str | None
    lost: WorkerLostError | None
    attempts: int
    seconds: float

    @property
    def failure(self) -> str:
        """Why there is no record: the trial's own error, or the lost worker."""
        if self.lost is not None:
            return f"worker lost on all {self.attempts} attempt(s)"
        return str(self.error)


@dataclass
class _InFlight:
    payload: Any
    job: TrialJob
    data: Any
    attempt: int
    started: float


#: What a driver hands the runner for the next trial: ``(payload, job, shipped data)``,
#: or ``None`` when it has nothing to start now.
NextJob = Callable[[], tuple[Any, TrialJob, Any] | None]


class TrialRunner:
    """Keeps trials in flight on a backend, retries lost workers, commits: the one place a
    build, a search and successive halving turn :class:`TrialSettings` into running trials.

    ``settings.backend=None`` runs the trials in this process; ``settings.resources``
    default to ``settings.threads`` CPUs per trial. ``settings`` should be
    :meth:`~TrialSettings.resolved` (one tracking store for every trial).

    A bug in a worker (any exception but :class:`WorkerLostError`) stops new submissions;
    trials in flight are still committed, then the error is raised.
    """

    def __init__(self, settings: TrialSettings, *, kb: KnowledgeBase | None) -> None:
        backend = settings.backend or LocalBackend(0)
        self.settings = settings
        self.backend = backend
        self.tracking_uri = settings.uri
        self.resources = settings.resources or Resources(num_cpus=float(settings.threads or 1))
        self.max_retries = settings.max_retries
        self.direct = is_server(self.tracking_uri) or not backend.remote
        # In this process the default trial is a plain recorded run: it writes the KB
        # itself (keeping a result whose MLflow logging failed) and shares the caches.
        bound = settings.trial_fn is None and backend.in_process
        self.fn: TrialFn = (
            functools.partial(execute_trial, kb=kb, settings=settings)
            if bound
            else settings.trial_fn or execute_trial
        )
        self._committer = _Committer(None if bound else kb, self.tracking_uri)
        self._inflight: dict[Any, _InFlight] = {}
        self._worker_settings = settings.for_worker()

    def job(self, key: str, spec: RunSpec) -> TrialJob:
        """The job that trains ``spec`` under this runner's settings, known as ``key``."""
        fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(RunSpec)}
        return TrialJob(**fields, key=key, direct=self.direct, settings=self._worker_settings)

    def width(self) -> int:
        """Trials in flight at once: ``settings.parallel``, else what the backend holds."""
        return self.settings.parallel or self.slots()

    def slots(self) -> int:
        """How many trials the backend can usefully run at once."""
        return self.backend.slots(self.resources)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def ship(self, dataset: Dataset, meta_features: MetaFeatures | None = None) -> Any:
        """The dataset put once into the backend (decoded in memory for remote workers)."""
        data = materialize(dataset) if self.backend.remote else dataset
        return self.backend.put((data, meta_features))

    def _submit(self, entry: _InFlight) -> None:
        handle = self.backend.submit(self.fn, entry.job, entry.data, resources=self.resources)
        self._inflight[handle] = entry

    def run(self, next_job: NextJob, width: int) -> Iterator[Finished]:
        """Start trials from ``next_job`` while fewer than ``width`` run; yield each that ends.

        Results come in completion order; a trial whose worker died ``max_retries + 1``
        times ends with ``lost`` set and no record.
        """
        fatal: BaseException | None = None
        while True:
            while fatal is None and len(self._inflight) < width:
                item = next_job()
                if item is None:
                    break
                payload, job, data = item
                self._submit(_InFlight(payload, job, data, 0, time.perf_counter()))
            if not self._inflight:
                break
            handle = self.backend.wait(list(self._inflight))[0]
            entry = self._inflight.pop(handle)
            attempts = entry.attempt + 1
            try:
                outcome: TrialOutcome = self.backend.result(handle)
            except WorkerLostError as exc:
                if entry.attempt < self.max_retries:
                    self._submit(dataclasses.replace(entry, attempt=attempts))
                    continue
                seconds = time.perf_counter() - entry.started
                yield Finished(entry.payload, None, None, exc, attempts, seconds)
                continue
            except Exception as exc:
                fatal = fatal or exc  # a bug, not a trial result
                continue
            seconds = time.perf_counter() - entry.started
            record = self._committer.commit(outcome)
            yield Finished(entry.payload, record, outcome.error, None, attempts, seconds)
        if fatal is not None:
            raise fatal


__all__ = [
    "Finished",
    "MemoryImages",
    "TrialFn",
    "TrialJob",
    "TrialOutcome",
    "TrialRunner",
    "execute_trial",
    "materialize",
]
