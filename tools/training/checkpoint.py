"""Pause a training run after some epochs and continue it later, exactly.

Why: successive halving (``recommend --verify``) trains every shortlisted candidate for a
short first rung and lets the better half *continue* to its full epochs. Without a
checkpoint a promoted candidate would retrain its first-rung epochs from scratch; with one
it picks up where it paused, and the continued run equals an uninterrupted one (same
weights, optimiser and schedule state, same random streams), so the first rung costs
nothing extra for the candidates that go on.

A paused run trains under its *full* schedule (a cosine decays over all of ``epochs``) and
stops after ``stop_after`` epochs: it is a low-fidelity snapshot of the full
configuration, recorded as such in the KB (``epochs_run < epoch_budget``), not a complete
short run.

The file is ours (written by :func:`save`, read by :func:`load`), so it is read with
``torch.load(weights_only=False)``; it is only ever looked up under a folder the caller
chose. A file written for another configuration or other data is ignored (the run starts
from scratch), never continued.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metallmix.atomic import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    """Where a run keeps its paused state, and after which epoch it pauses.

    ``stop_after=None``: continue from ``path`` when it holds this run's state, then train
    to the end. ``stop_after=N``: also pause after epoch ``N`` (when ``N`` is before the
    last epoch) and save the state there; a run that ends earlier (early stopping,
    divergence) saves its final state, so a continuation returns at once.
    """

    path: Path
    stop_after: int | None = None

    def __post_init__(self) -> None:
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"stop_after must be at least 1 epoch, got {self.stop_after}")


def fingerprint(config: dict[str, Any], train_y: np.ndarray, train_shape: tuple[int, ...]) -> str:
    """What must match for a checkpoint to be continued: the configuration (thread count
    aside: it does not change what is trained) and the training data's labels and shape."""
    settings = {k: v for k, v in config.items() if k != "threads"}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(train_y, dtype=np.int64).tobytes())
    digest.update(repr(tuple(train_shape)).encode())
    return digest.hexdigest()


def save(path: Path, state: dict[str, Any], *, key: str) -> None:
    """Write ``state`` atomically (a reader never sees half a checkpoint)."""
    import torch  # heavy: torch loads only when something trains

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"format": FORMAT, "fingerprint": key, **state}, tmp)


def load(path: Path, *, key: str) -> dict[str, Any] | None:
    """The state saved at ``path`` for this run, or ``None`` (absent, unreadable, another
    run's: each logged, and the run then starts from scratch)."""
    import torch  # heavy: torch loads only when something trains

    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # a truncated or foreign file: train from scratch instead
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        log.warning("ignoring checkpoint %s: unknown format; training from scratch", path)
        return None
    if state.get("fingerprint") != key:
        log.warning(
            "ignoring checkpoint %s: written for another configuration or other data; "
            "training from scratch",
            path,
        )
        return None
    return state


__all__ = ["Checkpoint", "fingerprint", "load", "save"]
