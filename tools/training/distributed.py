"""Drive KB builds and Optuna searches on an execution backend (in-process, pool or Ray).

One rule keeps a cluster run as safe as a local one: **only the driver writes**. Workers
train and hand back a :class:`TrialOutcome`; the driver appends the record to the KB (one
transaction, idempotent on run id) and, unless the workers could reach the MLflow server
themselves, replays the worker's recorded MLflow calls into the tracking store. A worker
that dies mid-trial therefore leaves nothing behind: the driver retries the trial on
another worker (``max_retries``) or reports it failed, and the next build picks it up again
because its trial key is not in the KB.

Datasets are materialised in memory and shipped once per task through the backend's object
store (``ray.put``), so workers on other machines need neither the files nor a shared disk.
Searches keep Optuna's ask/tell on the driver: the study stays in one storage, and the
sampler (TPE) sees every told result before the next ask.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from metallmix import config
from metallmix.errors import ConfigError, MetaLLMiXError
from metallmix.tools.datasets.base import Dataset, ImageHeader, ImageReadError, ImageSource
from metallmix.tools.kb.records import Hyperparameters, RunRecord, Scalar
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, SearchSpace
from metallmix.tools.metafeatures import MetaFeatures
from metallmix.tools.training import tracking
from metallmix.tools.training.backends import ExecutionBackend, Resources, WorkerLostError
from metallmix.tools.training.build import (
    BUILD_EXPERIMENT,
    TRIAL_KEY_TAG,
    BuildEvent,
    TaskCache,
    Trial,
    done_keys,
)
from metallmix.tools.training.search import SEARCH_EXPERIMENT, SearchResult, TrialSummary

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
# MLflow relay: a worker records its calls, the driver replays them into the real store.


class MlflowRecorder:
    """Stands in for ``MlflowClient`` on a worker that cannot reach the tracking store.

    Implements exactly the calls :func:`run_trial` makes; artifacts are read into memory at
    call time because the worker's temporary folder is gone by the time the driver replays.
    The run id is a placeholder, swapped for the real one everywhere during replay.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.placeholder = f"relay{uuid.uuid4().hex}"
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def get_experiment_by_name(self, name: str) -> Any:
        return SimpleNamespace(experiment_id=f"relay-experiment:{name}", name=name)

    def create_run(
        self, experiment_id: str, tags: dict[str, str] | None = None, run_name: str | None = None
    ) -> Any:
        now = int(time.time() * 1000)
        self.calls.append(
            (
                "create_run",
                (experiment_id,),
                {"start_time": now, "tags": dict(tags or {}), "run_name": run_name},
            )
        )
        return SimpleNamespace(info=SimpleNamespace(run_id=self.placeholder))

    def log_batch(self, run_id: str, **kwargs: Any) -> None:
        self.calls.append(("log_batch", (), kwargs))

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.calls.append(("set_tag", (key, value), {}))

    def log_artifacts(self, run_id: str, local_dir: str) -> None:
        root = Path(local_dir)
        files = {
            str(path.relative_to(root)): path.read_bytes()
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }
        self.calls.append(("log_artifacts", (files,), {}))

    def set_terminated(self, run_id: str, status: str | None = None) -> None:
        self.calls.append(("set_terminated", (), {"status": status, "end_time": _now_ms()}))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _swap(value: Any, old: str, new: str) -> Any:
    """``value`` with the placeholder run id replaced, through MLflow entities and containers."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_swap(v, old, new) for v in value)
    from mlflow.entities import Param, RunTag

    if isinstance(value, RunTag):
        return RunTag(value.key, _swap(value.value, old, new))
    if isinstance(value, Param):
        return Param(value.key, _swap(value.value, old, new))
    return value


def replay(
    calls: Sequence[tuple[str, tuple[Any, ...], dict[str, Any]]], client: Any, placeholder: str
) -> str:
    """Re-issue a recorded run against ``client``; returns the real MLflow run id.

    ``placeholder`` (the recorder's run id) is replaced by the real id in every tag, param
    and JSON artifact, so the record inside the run names the run it lives in.
    """
    if not calls or calls[0][0] != "create_run":
        raise ValueError("a recorded MLflow run must start with create_run")
    _, (experiment,), kwargs = calls[0]
    name = str(experiment).removeprefix("relay-experiment:")
    run = client.create_run(tracking.experiment_id(client, name), **kwargs)
    real = str(run.info.run_id)
    for method, args, kw in calls[1:]:
        args, kw = _swap(args, placeholder, real), _swap(kw, placeholder, real)
        if method == "log_artifacts":
            (files,) = args
            with tempfile.TemporaryDirectory(prefix="metallmix-relay-") as tmp:
                for rel, payload in files.items():
                    target = Path(tmp) / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if rel.endswith(".json"):
                        payload = payload.replace(placeholder.encode(), real.encode())
                    target.write_bytes(payload)
                client.log_artifacts(real, tmp)
        else:
            getattr(client, method)(real, *args, **kw)
    return real


def rebind(record: RunRecord, old: str, new: str, tracking_uri: str) -> RunRecord:
    """The record as if it had been logged directly to run ``new`` of ``tracking_uri``."""
    provenance = record.provenance.model_copy(
        update={"mlflow_run_id": new, "tracking_uri": tracking_uri}
    )
    return record.model_copy(
        update={"run_id": record.run_id.replace(old, new), "provenance": provenance}
    )


# ---------------------------------------------------------------------------------------
# The worker side: one trial, no KB, MLflow direct (server) or recorded.


@dataclass(frozen=True)
class TrialJob:
    """Everything a worker needs for one trial, besides the shipped dataset."""

    key: str
    model: str
    hp: Hyperparameters
    seed: int
    experiment: str
    tracking_uri: str
    direct: bool
    threads: int | None = 1
    max_train_images: int | None = None
    max_val_images: int | None = None
    source_resolution: int | None = None
    dataset_group: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    pretrained: bool = False


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


def execute_trial(job: TrialJob, data: tuple[Dataset, MetaFeatures | None]) -> TrialOutcome:
    """Train one configuration on a worker; never touches the KB.

    Errors a user can cause (a model that cannot run at a size, ...) come back as the
    outcome's ``error``; anything else is a bug and propagates to the driver.
    """
    from metallmix.tools.training.runner import run_trial

    dataset, mf = data
    started = time.perf_counter()
    recorder = None if job.direct else MlflowRecorder(job.tracking_uri)
    record: RunRecord | None = None
    error: str | None = None
    try:
        record = run_trial(
            dataset,
            job.model,
            job.hp,
            seed=job.seed,
            kb=None,
            experiment=job.experiment,
            parent_run_id=job.parent_run_id,
            max_train_images=job.max_train_images,
            threads=job.threads,
            dataset_group=job.dataset_group,
            source_resolution=job.source_resolution,
            max_val_images=job.max_val_images,
            meta_features=mf,
            tracking_uri=job.tracking_uri,
            tags=job.tags,
            mlflow_client=recorder,
            pretrained=job.pretrained,
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


TrialFn = Callable[[TrialJob, Any], TrialOutcome]


def is_server(tracking_uri: str) -> bool:
    """Workers log to the tracking store themselves only when it is an MLflow server."""
    return tracking_uri.startswith(("http://", "https://"))


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
class _InFlight:
    payload: Any
    attempt: int


class _Dispatcher:
    """Keeps up to ``slots`` tasks in flight and retries those whose worker died."""

    def __init__(
        self,
        backend: ExecutionBackend,
        fn: Callable[..., Any],
        resources: Resources,
        max_retries: int,
    ) -> None:
        if max_retries < 0:
            raise ConfigError(f"--max-retries cannot be negative, got {max_retries}")
        self.backend = backend
        self.fn = fn
        self.resources = resources
        self.max_retries = max_retries
        self.inflight: dict[Any, _InFlight] = {}

    def submit(self, payload: Any, *args: Any, attempt: int = 0) -> None:
        handle = self.backend.submit(self.fn, *args, resources=self.resources)
        self.inflight[handle] = _InFlight((payload, args), attempt)

    def next(self) -> tuple[Any, Any, BaseException | None, int]:
        """One finished task: ``(payload, result, error, attempts)``; retries silently."""
        while True:
            handle = self.backend.wait(list(self.inflight))[0]
            entry = self.inflight.pop(handle)
            payload, args = entry.payload
            try:
                return payload, self.backend.result(handle), None, entry.attempt + 1
            except WorkerLostError as exc:
                if entry.attempt < self.max_retries:
                    self.submit(payload, *args, attempt=entry.attempt + 1)
                    continue
                return payload, None, exc, entry.attempt + 1
            except Exception as exc:
                return payload, None, exc, entry.attempt + 1


# ---------------------------------------------------------------------------------------
# KB build.


def run_build(
    kb: KnowledgeBase,
    trials: list[Trial],
    sources: dict[str, Path],
    *,
    backend: ExecutionBackend,
    threads: int | None = 1,
    max_val_images: int | None = 200,
    experiment: str = BUILD_EXPERIMENT,
    resources: Resources | None = None,
    max_retries: int = 2,
    tracking_uri: str | None = None,
    on_trial: Callable[[BuildEvent], None] | None = None,
    trial_fn: TrialFn = execute_trial,
) -> Iterator[BuildEvent]:
    """Run every trial not yet in ``kb`` on ``backend``; yields one event per finished trial.

    Events come in completion order. A trial whose worker died ``max_retries + 1`` times is
    reported with an error and left out of the KB, so re-running the build retries it.
    A bug in a worker stops new submissions; trials in flight are still committed, then the
    error is raised.
    """
    uri = tracking_uri or config.tracking_uri()
    resources = resources or Resources(num_cpus=float(threads or 1))
    done = done_keys(kb)
    todo: list[Trial] = []
    for trial in trials:
        if trial.key not in done:
            done.add(trial.key)
            todo.append(trial)
    cache = TaskCache(sources)
    shipped: dict[str, Any] = {}
    committer = _Committer(kb, uri)
    direct = is_server(uri) or not backend.remote
    dispatcher = _Dispatcher(backend, trial_fn, resources, max_retries)
    slots = backend.slots(resources)
    queue = deque(todo)
    finished = 0
    fatal: BaseException | None = None
    while queue or dispatcher.inflight:
        while queue and fatal is None and len(dispatcher.inflight) < slots:
            trial = queue.popleft()
            name = trial.task.name
            if name not in shipped:
                ds, mf = cache.task(trial.task)
                shipped[name] = backend.put((materialize(ds) if backend.remote else ds, mf))
            job = TrialJob(
                key=trial.key,
                model=trial.model,
                hp=trial.hp,
                seed=trial.seed,
                experiment=experiment,
                tracking_uri=uri,
                direct=direct,
                threads=threads,
                max_val_images=max_val_images,
                source_resolution=trial.task.resolution,
                dataset_group=trial.task.source,
                tags={TRIAL_KEY_TAG: trial.key, "metallmix.task": name},
                pretrained=trial.pretrained,
            )
            dispatcher.submit(trial, job, shipped[name])
        if not dispatcher.inflight:
            break
        trial, outcome, exc, attempts = dispatcher.next()
        if exc is not None and not isinstance(exc, WorkerLostError):
            fatal = fatal or exc
            continue
        finished += 1
        record: RunRecord | None = None
        if exc is not None:
            error: str | None = f"worker lost on all {attempts} attempt(s): {exc}"
        else:
            record = committer.commit(outcome)
            error = outcome.error
        event = BuildEvent(trial, record, error, finished, len(todo))
        if on_trial is not None:
            on_trial(event)
        yield event
    if fatal is not None:
        raise fatal


# ---------------------------------------------------------------------------------------
# Optuna search: ask/tell on the driver, trials on the workers.


def run_search_distributed(
    dataset: Dataset,
    *,
    backend: ExecutionBackend,
    sampler: str,
    trials: int,
    seed: int = 0,
    space: SearchSpace = CPU_ZOO_SPACE,
    storage: Path | None = None,
    study_name: str | None = None,
    kb: KnowledgeBase | None = None,
    experiment: str = SEARCH_EXPERIMENT,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    threads: int | None = None,
    tracking_uri: str | None = None,
    on_trial: Callable[[TrialSummary], None] | None = None,
    resources: Resources | None = None,
    max_retries: int = 2,
    parallel: int | None = None,
    trial_fn: TrialFn = execute_trial,
) -> SearchResult:
    """:func:`run_search` with trials on ``backend``; the study stays in one storage.

    ``parallel`` trials are asked ahead and run at once (default: what the backend holds);
    with ``parallel=1`` the sequence of trials is exactly the local search's. A trial whose
    worker died on every attempt is told FAIL with the reason and counts against the budget.
    """
    from optuna.trial import TrialState

    from metallmix.tools.meta.search_space import make_hyperparameters
    from metallmix.tools.training.search import (
        _counted,
        _summary,
        open_study,
        search_result,
        tell_record,
    )

    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}")
    uri = tracking_uri or config.tracking_uri()
    opened = open_study(
        dataset.name,
        sampler=sampler,
        seed=seed,
        space=space,
        storage=storage,
        study_name=study_name,
        client=tracking.client(uri),
        experiment=experiment,
        extra_params={"backend": backend.name},
    )
    study, name, dists = opened.study, opened.name, opened.distributions
    parent, client = opened.parent_run_id, opened.client

    resources = resources or Resources(num_cpus=float(threads or 1))
    width = parallel or backend.slots(resources)
    data = backend.put((materialize(dataset) if backend.remote else dataset, None))
    committer = _Committer(kb, uri)
    direct = is_server(uri) or not backend.remote
    dispatcher = _Dispatcher(backend, trial_fn, resources, max_retries)
    started: dict[int, float] = {}
    fatal: BaseException | None = None

    def budget_used() -> int:
        return sum(_counted(t) for t in study.get_trials(deepcopy=False))

    while True:
        while (
            fatal is None
            and len(dispatcher.inflight) < width
            and budget_used() + len(dispatcher.inflight) < trials
        ):
            trial = study.ask(dists)
            params: dict[str, Scalar] = dict(trial.params)
            model = str(params.pop("model"))
            started[trial.number] = time.perf_counter()
            try:
                hp = make_hyperparameters(space.project(model, params))
            except MetaLLMiXError as exc:
                trial.set_user_attr("error", str(exc)[:1000])
                trial.set_user_attr("seconds", 0.0)
                study.tell(trial, state=TrialState.FAIL)
                _notify(on_trial, study, trial.number, _summary)
                continue
            job = TrialJob(
                key=f"{name}#{trial.number}",
                model=model,
                hp=hp,
                seed=seed + trial.number,
                experiment=experiment,
                tracking_uri=uri,
                direct=direct,
                threads=threads,
                max_train_images=max_train_images,
                max_val_images=max_val_images,
                parent_run_id=parent,
                tags={"metallmix.study": name, "metallmix.trial": str(trial.number)},
                pretrained=space.is_pretrained(model),
            )
            dispatcher.submit(trial, job, data)
        if not dispatcher.inflight:
            break
        trial, outcome, failure, attempts = dispatcher.next()
        seconds = time.perf_counter() - started.pop(trial.number)
        if failure is not None and not isinstance(failure, WorkerLostError):
            # A bug, not a trial result: left RUNNING, so a resumed search re-runs it.
            fatal = fatal or failure
            continue
        record = committer.commit(outcome) if failure is None else None
        if record is None:
            reason = (
                outcome.error if failure is None else f"worker lost on all {attempts} attempt(s)"
            )
            trial.set_user_attr("error", str(reason)[:1000])
            trial.set_user_attr("seconds", seconds)
            study.tell(trial, state=TrialState.FAIL)
        else:
            tell_record(study, trial, record, seconds)
        _notify(on_trial, study, trial.number, _summary)
    if fatal is not None:
        client.set_terminated(parent, status="FAILED")
        raise fatal
    client.set_terminated(parent, status="FINISHED")

    return search_result(opened, sampler=sampler, trials=trials)


def _notify(
    on_trial: Callable[[TrialSummary], None] | None,
    study: Any,
    number: int,
    summary: Callable[[Any], TrialSummary],
) -> None:
    if on_trial is not None:
        on_trial(summary(study.get_trials(deepcopy=False)[number]))


__all__ = [
    "MemoryImages",
    "MlflowRecorder",
    "TrialJob",
    "TrialOutcome",
    "execute_trial",
    "is_server",
    "materialize",
    "replay",
    "run_build",
    "run_search_distributed",
]
