"""Where trials run: in this process, in a small local process pool, or on a Ray cluster.

The drivers (the KB build, the search and the verification, through
:class:`metallmix.tools.training.distributed.TrialRunner`) only ever submit a picklable
function with its arguments, wait for one to finish and collect its result, so the same KB
build or search runs unchanged on one laptop or on hundreds of Ray workers. A backend never
retries by itself: a worker that dies surfaces as :class:`WorkerLostError` and the driver
decides (retry or mark failed), which keeps attempt counting identical everywhere.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from metallmix.errors import ConfigError, MetaLLMiXError

BACKENDS = ("local", "ray")


class WorkerLostError(MetaLLMiXError):
    """A worker died (killed, out of memory, node lost) while running a task."""


@dataclass(frozen=True)
class Resources:
    """What one task needs from the scheduler; ``num_gpus`` may be fractional on Ray."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.num_cpus <= 0:
            raise ConfigError(f"a trial needs a positive number of CPUs, got {self.num_cpus}")
        if self.num_gpus < 0:
            raise ConfigError(f"GPUs per trial cannot be negative, got {self.num_gpus}")


class ExecutionBackend(ABC):
    """Runs picklable functions somewhere and hands their results back to the driver."""

    name: str = "abstract"
    #: Workers may live on other machines: they cannot see the driver's files or a local
    #: (SQLite / file) MLflow store, so datasets must be shipped and MLflow calls relayed.
    remote: bool = False

    @property
    def in_process(self) -> bool:
        """Tasks run in the driver's own process, one at a time, as they are submitted."""
        return False

    @abstractmethod
    def slots(self, resources: Resources) -> int:
        """How many tasks needing ``resources`` are worth keeping in flight at once."""

    def put(self, value: Any) -> Any:
        """Ship ``value`` once; the returned handle is passed to tasks in its place."""
        return value

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any, resources: Resources) -> Any:
        """Start ``fn(*args)``; returns an opaque handle for :meth:`wait` / :meth:`result`."""

    @abstractmethod
    def wait(self, handles: Sequence[Any]) -> list[Any]:
        """Block until at least one of ``handles`` is finished; return the finished ones."""

    @abstractmethod
    def result(self, handle: Any) -> Any:
        """The task's return value; its own exception re-raised; WorkerLostError if it died."""

    def close(self) -> None:
        """Release workers (a Ray instance this backend started is shut down)."""
        return None

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> ExecutionBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Done:
    """An in-process task that already ran: its value or its exception."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error


class LocalBackend(ExecutionBackend):
    """The default: trials run in this process (``workers=0``) or a spawned process pool.

    Pool workers share the driver's files, so nothing is shipped and they may log to a
    local MLflow store themselves. A pool whose worker dies is broken as a whole: every task
    in flight reports :class:`WorkerLostError` and a fresh pool serves later submissions.
    """

    name = "local"
    remote = False

    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ConfigError(f"--workers cannot be negative, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def in_process(self) -> bool:
        return self.workers == 0 and not self.remote

    def describe(self) -> str:
        return "local (in-process)" if self.workers == 0 else f"local ({self.workers} processes)"

    def slots(self, resources: Resources) -> int:
        return max(1, self.workers)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: torch and SQLite handles do not survive a fork reliably.
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    def submit(self, fn: Callable[..., Any], *args: Any, resources: Resources) -> Any:
        if self.workers == 0:
            try:
                return _Done(value=fn(*args))
            except Exception as exc:
                return _Done(error=exc)
        try:
            return self._executor().submit(fn, *args)
        except BrokenProcessPool:
            self._drop_pool()
            return self._executor().submit(fn, *args)

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        done = [h for h in handles if isinstance(h, _Done)]
        if done:
            return done
        finished, _ = futures_wait(list(handles), return_when=FIRST_COMPLETED)
        return [h for h in handles if h in finished]

    def result(self, handle: Any) -> Any:
        if isinstance(handle, _Done):
            if handle.error is not None:
                raise handle.error
            return handle.value
        future: Future[Any] = handle
        try:
            return future.result()
        except BrokenProcessPool as exc:
            self._drop_pool()
            raise WorkerLostError(f"a local worker process died: {exc}") from exc

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayBackend(ExecutionBackend):
    """Trials as Ray tasks with their CPU/GPU needs; datasets travel once via ``ray.put``.

    ``address=None`` starts a private Ray instance in this process (``num_cpus`` caps it);
    ``"auto"`` joins the cluster started on this machine with ``ray start --head``;
    ``"ray://host:10001"`` connects through Ray Client. When Ray is already initialised
    (a notebook, a test session) that connection is reused and left open on close.
    """

    name = "ray"
    remote = True

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        max_in_flight: int | None = None,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray  # optional extra: only --backend ray needs it
        except ImportError:
            raise ConfigError(
                "--backend ray needs Ray: pip install 'metallmix[ray]' (or pip install ray)"
            ) from None
        self._ray = ray
        self.address = address
        self.max_in_flight = max_in_flight
        self._owns = False
        self._remotes: dict[Callable[..., Any], Any] = {}
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                # "local" starts a private instance even when `ray start` left a cluster
                # behind, where None would join it and refuse num_cpus.
                "address": address or "local",
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = num_cpus
            if runtime_env is not None:
                kwargs["runtime_env"] = runtime_env
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigError(
                    f"no Ray cluster reachable at {address!r} ({exc}); start one with "
                    "`ray start --head` or drop --address to run a private instance"
                ) from exc
            self._owns = True

    def describe(self) -> str:
        cpus = self._ray.cluster_resources().get("CPU", 0)
        nodes = len([n for n in self._ray.nodes() if n.get("Alive")])
        return f"ray ({nodes} node(s), {cpus:g} CPUs, address={self.address or 'private'})"

    def slots(self, resources: Resources) -> int:
        total = self._ray.cluster_resources()
        fits = int(total.get("CPU", 1) // resources.num_cpus)
        if resources.num_gpus > 0:
            fits = min(fits, int(total.get("GPU", 0) // resources.num_gpus))
            if fits == 0:
                raise ConfigError(
                    f"the Ray cluster has no GPU for trials needing {resources.num_gpus} GPU"
                )
        # One extra task per slot keeps workers busy while the driver commits a result.
        fits = max(1, fits) * 2
        return min(fits, self.max_in_flight) if self.max_in_flight else fits

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def submit(self, fn: Callable[..., Any], *args: Any, resources: Resources) -> Any:
        # Plain functions become remote functions once; other callables (partials, bound
        # methods) travel as the first argument of a trampoline task.
        plain = inspect.isfunction(fn)
        target = fn if plain else _invoke
        remote = self._remotes.get(target)
        if remote is None:
            remote = self._remotes[target] = self._ray.remote(target)
        options = remote.options(
            num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_retries=0
        )
        return options.remote(*args) if plain else options.remote(fn, *args)

    def wait(self, handles: Sequence[Any]) -> list[Any]:
        ready, _ = self._ray.wait(list(handles), num_returns=1)
        return list(ready)

    def result(self, handle: Any) -> Any:
        from ray import exceptions as rex  # optional extra, as ray

        lost = (
            rex.WorkerCrashedError,
            rex.NodeDiedError,
            rex.OutOfMemoryError,
            rex.ObjectLostError,
            rex.LocalRayletDiedError,
        )
        try:
            return self._ray.get(handle)
        except lost as exc:
            raise WorkerLostError(f"a Ray worker died: {type(exc).__name__}") from exc
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def close(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns = False


def _invoke(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def make_backend(
    name: str = "local",
    *,
    address: str | None = None,
    workers: int | None = None,
) -> ExecutionBackend:
    """A backend from CLI words: ``local`` (``workers`` processes, 0 = in-process) or ``ray``.

    For Ray, ``workers`` caps the private instance's CPUs (and tasks in flight on a cluster).
    """
    if name == "local":
        if address:
            raise ConfigError("--address is for --backend ray; drop it or add --backend ray")
        return LocalBackend(workers or 0)
    if name == "ray":
        address = address or os.environ.get("RAY_ADDRESS") or None
        return RayBackend(
            address,
            num_cpus=workers if address is None else None,
            max_in_flight=workers if address is not None else None,
        )
    raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")


__all__ = [
    "BACKENDS",
    "ExecutionBackend",
    "LocalBackend",
    "RayBackend",
    "Resources",
    "WorkerLostError",
    "make_backend",
]
