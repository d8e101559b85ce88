"""Compute regimes: which part of the knowledge base and which search space fit the user.

The KB holds runs of two regimes that answer different questions. Our own runs train small
timm models (from scratch, or pretrained EfficientNet-Lite) on a couple of CPU cores; the
public Quick-Tune runs fine-tune 24 large pretrained timm models at 128 px on a GPU. A user
on a laptop must not be told to fine-tune VOLO-D5, and a GPU user would waste the hardware
on a CPU-zoo model, so a recommendation learns only from the runs of the user's regime and
proposes only from that regime's search space.

A record's regime is stored in ``provenance.notes["regime"]`` when the importer knew it;
otherwise it is derived: Quick-Tune runs are ``gpu``, our own trainer's runs ``cpu``, and
runs of other sources follow their model (a Quick-Tune model outside the CPU zoo is ``gpu``).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, cast

from metallmix.errors import ConfigError
from metallmix.tools.kb.records import RunRecord

Regime = Literal["cpu", "gpu"]
REGIMES: tuple[Regime, ...] = ("cpu", "gpu")
# The shipped search space of each regime (names of metallmix.tools.meta.search_space.SPACES).
REGIME_SPACE: dict[Regime, str] = {"cpu": "cpu-zoo", "gpu": "quicktune"}
REGIME_DESCRIPTION: dict[Regime, str] = {
    "cpu": "train a small timm model on a CPU (our own runs)",
    "gpu": "fine-tune a pretrained timm model on a GPU (public Quick-Tune runs)",
}


def check_regime(value: str) -> Regime:
    """``value`` as a :data:`Regime`, or a :class:`ConfigError` naming the choices."""
    normalized = value.strip().lower()
    if normalized not in REGIMES:
        raise ConfigError(f"unknown compute regime {value!r}; choose one of {', '.join(REGIMES)}")
    return cast(Regime, normalized)


def nvidia_driver_present() -> bool:
    """Whether this machine exposes an NVIDIA driver at all (device nodes or the proc entry).

    ``torch.cuda.is_available()`` is False without one, so on such machines the answer is
    known without importing torch: that import costs about 2 s of a recommendation's latency.
    """
    return Path("/proc/driver/nvidia").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


@functools.cache
def default_compute() -> Regime:
    """``gpu`` when torch sees a CUDA device, else ``cpu`` (also when torch is missing).

    Asked once per process; torch is imported only where an NVIDIA driver is present.
    """
    if not nvidia_driver_present():
        return "cpu"
    try:
        import torch  # heavy: only on machines that may have a GPU
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def regime_of(record: RunRecord) -> Regime:
    """The regime a run belongs to (stored note first, else derived from source and model)."""
    note = record.provenance.notes.get("regime")
    if isinstance(note, str) and note in REGIMES:
        return cast(Regime, note)
    if record.source == "quicktune":
        return "gpu"
    if record.source == "own":
        return "cpu"
    # at call time: search_space imports kb.records, whose package (kb/__init__) imports this
    from metallmix.tools.meta.search_space import CPU_ZOO_MODELS, QUICKTUNE_MODELS

    if record.model in QUICKTUNE_MODELS and record.model not in CPU_ZOO_MODELS:
        return "gpu"
    return "cpu"


def regime_of_space(space_name: str) -> Regime | None:
    """The regime whose shipped space is ``space_name`` (None for an unknown name)."""
    return next((r for r, name in REGIME_SPACE.items() if name == space_name), None)


def counts_by_regime(records: Iterable[RunRecord]) -> dict[str, int]:
    """Runs per regime, every regime listed (0 when absent)."""
    counts = Counter(regime_of(r) for r in records)
    return {regime: counts.get(regime, 0) for regime in REGIMES}


def counts_by_source_and_regime(records: Iterable[RunRecord]) -> dict[str, dict[str, int]]:
    """``{regime: {source: runs}}``, sources sorted; regimes without runs are left out."""
    nested: dict[str, Counter[str]] = {}
    for record in records:
        nested.setdefault(regime_of(record), Counter())[record.source] += 1
    return {r: dict(sorted(nested[r].items())) for r in REGIMES if r in nested}
