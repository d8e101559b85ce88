"""How trials are trained and recorded, whatever drives them: one value, passed whole.

A KB build, an Optuna search, successive halving and a single validation all train runs
the same way: under the same caps (training subsample, validation images), thread count
and tracking target, on an execution backend with its resources and retries. Those used
to travel as eight to ten keyword arguments through every function on the way to the
trainer; :class:`TrialSettings` is that list, frozen, so a new setting is one field here
and the drivers only pass it on.

Part of it only means something in the driver's process (the backend, a replacement trial
function, the feature cache, the progress callback); :meth:`TrialSettings.for_worker` is
what a worker receives with each job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metallmix import config
from metallmix.errors import ConfigError
from metallmix.tools import tracking
from metallmix.tools.training.backends import ExecutionBackend, Resources
from metallmix.tools.training.trainer import EpochStats, FeatureCache


@dataclass(frozen=True)
class TrialSettings:
    """Caps, threads, tracking and execution shared by every trial of one command.

    ``max_train_images`` trains on a seeded stratified subsample; ``max_val_images`` caps the
    validation split; ``threads`` are torch's (None: torch's default). ``tracking_uri``
    (None: ``MLFLOW_TRACKING_URI`` / the workspace store) is where runs are recorded, and
    ``track=False`` records nothing in MLflow (the KB still gets the runs).
    ``backend`` (None: this process, one trial after the other) runs the trials with
    ``resources`` each (default: ``threads`` CPUs); a trial whose worker died is re-run
    ``max_retries`` times; ``parallel`` bounds the trials in flight (default: what the
    backend holds). ``trial_fn`` replaces the worker function (tests),
    ``feature_cache`` shares frozen-backbone features between the driver's own trials and
    ``progress`` is called after each epoch of a trial trained in this process.
    """

    max_train_images: int | None = None
    max_val_images: int | None = None
    threads: int | None = None
    tracking_uri: str | None = None
    track: bool = True
    backend: ExecutionBackend | None = None
    resources: Resources | None = None
    max_retries: int = 2
    parallel: int | None = None
    trial_fn: Callable[..., Any] | None = None  # fn(job, data) -> distributed.TrialOutcome
    feature_cache: FeatureCache | None = None
    progress: Callable[[EpochStats], None] | None = None

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries cannot be negative, got {self.max_retries}")
        if self.parallel is not None and self.parallel < 1:
            raise ConfigError(f"--parallel must be at least 1, got {self.parallel}")

    @property
    def uri(self) -> str:
        """The tracking URI the runs go to (the configured one when none is set)."""
        return self.tracking_uri or config.tracking_uri()

    def replace(self, **changes: Any) -> TrialSettings:
        """A copy with ``changes`` (the settings are frozen)."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> TrialSettings:
        """The same settings with the tracking URI fixed now, so every trial uses one store;
        with tracking on, the store is checked writable first (before any study or run)."""
        uri = self.uri
        if self.track:
            tracking.check_writable_store(uri)
        return self.replace(tracking_uri=uri)

    def for_worker(self) -> TrialSettings:
        """What travels with a job: the caps, threads and tracking, none of the driver's
        live objects (a backend, a cache, a callback cannot cross to another process)."""
        return TrialSettings(
            max_train_images=self.max_train_images,
            max_val_images=self.max_val_images,
            threads=self.threads,
            tracking_uri=self.tracking_uri,
            track=self.track,
        )


__all__ = ["TrialSettings"]
