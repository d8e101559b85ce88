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

Nothing in a checkpoint is unpickled as code. Checkpoint folders can be shared
(``bench compare --state DIR``) or planted (``$METALLMIX_HOME/verify-checkpoints/``), so a
checkpoint is two files: ``<name>.pt`` holds only tensors, numbers, strings and containers
(read with ``torch.load(weights_only=True)``, whose unpickler builds nothing else; numpy
arrays and the trainer's dataclasses are encoded as tensors and tagged dicts, and rebuilt
from an allow-list), and ``<name>.json`` holds the format, the run's fingerprint and the
``.pt`` file's sha256. The JSON is read first: a missing or foreign header, another run's
fingerprint or bytes that do not hash to the header's digest are ignored (the run starts
from scratch) before torch reads a byte of the ``.pt`` file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metallmix.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

FORMAT = 2  # 1: one pickled file (never read now)


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


def header_path(path: Path) -> Path:
    """The JSON header beside a checkpoint's tensors."""
    return Path(path).with_suffix(".json")


def _encode(value: Any) -> Any:
    """``value`` as a tree ``torch.load(weights_only=True)`` can read back."""
    import torch  # heavy: torch loads only when something trains

    if isinstance(value, np.ndarray):
        return {
            "__ndarray__": torch.from_numpy(
                value.astype(np.int64) if value.dtype.kind in "ui" else np.array(value)
            ),
            "dtype": str(value.dtype),
        }
    if isinstance(value, np.generic):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__dataclass__": type(value).__name__, "fields": fields}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    return value


def _decode(value: Any, classes: Mapping[str, type]) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return value["__ndarray__"].numpy().astype(value["dtype"])
        if "__dataclass__" in value:
            cls = classes.get(str(value["__dataclass__"]))
            if cls is None:
                raise ValueError(f"unexpected type {value['__dataclass__']!r} in checkpoint")
            return cls(**{k: _decode(v, classes) for k, v in value["fields"].items()})
        return {k: _decode(v, classes) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, classes) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v, classes) for v in value)
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(path: Path, state: dict[str, Any], *, key: str) -> None:
    """Write ``state`` (tensors, numpy arrays, dataclasses, plain data) atomically: the
    tensors first, then the header that vouches for them (a reader never sees half a
    checkpoint, nor a header for other bytes)."""
    import torch  # heavy: torch loads only when something trains

    path = Path(path)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(_encode(state), tmp)
        digest = _sha256(tmp)
    header = {"format": FORMAT, "fingerprint": key, "sha256": digest}
    write_text(header_path(path), json.dumps(header, sort_keys=True))


def load(
    path: Path, *, key: str, classes: Mapping[str, type] | None = None
) -> dict[str, Any] | None:
    """The state saved at ``path`` for this run, or ``None`` (absent, unreadable, another
    run's, tampered: each logged, and the run then starts from scratch). ``classes`` are
    the dataclasses the state may hold, by name (nothing else is rebuilt)."""
    import torch  # heavy: torch loads only when something trains

    path = Path(path)
    if not path.is_file():
        return None
    try:
        header = json.loads(header_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning(
            "ignoring checkpoint %s: no readable header (%s); training from scratch", path, exc
        )
        return None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        log.warning("ignoring checkpoint %s: unknown format; training from scratch", path)
        return None
    if header.get("fingerprint") != key:
        log.warning(
            "ignoring checkpoint %s: written for another configuration or other data; "
            "training from scratch",
            path,
        )
        return None
    if _sha256(path) != header.get("sha256"):
        log.warning(
            "ignoring checkpoint %s: its bytes do not match its header's sha256 (changed or "
            "replaced since it was saved); training from scratch",
            path,
        )
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
        state = _decode(state, classes or {})
    except Exception as exc:  # not a tensors-only file: train from scratch instead
        log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring checkpoint %s: not a state mapping; training from scratch", path)
        return None
    return state


def remove(path: Path) -> None:
    """Delete a checkpoint and its header."""
    Path(path).unlink(missing_ok=True)
    header_path(path).unlink(missing_ok=True)


__all__ = ["Checkpoint", "fingerprint", "header_path", "load", "remove", "save"]
