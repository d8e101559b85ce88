"""Progress lines for the Python API: a recommendation or a validation takes minutes, and
silence for minutes reads as a hang.

Plain lines on stderr (not a redrawn bar) so they survive notebooks, logs and pipes; stdout
stays the caller's. ``recommend(progress=False)`` / ``validate(progress=False)`` turn them
off; the CLI draws its own display and turns them off too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

NODE_TEXT = {
    "features": "meta-features computed",
    "retrieve": "similar past runs retrieved",
    "shortlist": "candidates scored by the meta-learner",
    "explain": "evidence written",
    "recommender": "LLM answered",
    "judge": "judge done",
    "fallback": "fallback built",
    "record": "recorded in MLflow",
}


def _write(stream: TextIO | None, text: str) -> None:
    out = stream if stream is not None else sys.stderr
    print(f"[metallmix] {text}", file=out, flush=True)


def node_printer(
    on_node: Callable[[str], None] | None, stream: TextIO | None = None
) -> Callable[[str], None]:
    """An ``on_node`` hook that prints each finished node with its time, then calls
    ``on_node`` (the caller's own hook) if given."""
    last = [time.perf_counter()]

    def hook(node: str) -> None:
        now = time.perf_counter()
        _write(stream, f"{node}: {NODE_TEXT.get(node, 'done')} ({now - last[0]:.1f} s)")
        last[0] = now
        if on_node is not None:
            on_node(node)

    return hook


def epoch_printer(epochs: int | None, stream: TextIO | None = None) -> Callable[[Any], None]:
    """A trainer ``progress`` callback: one line per finished epoch."""

    def hook(stats: Any) -> None:
        total = f"/{epochs}" if epochs else ""
        val = getattr(stats, "val_accuracy", None)
        val_text = f", val accuracy {val:.3f}" if isinstance(val, float) else ""
        _write(
            stream,
            f"epoch {stats.epoch}{total}: train loss {stats.train_loss:.4f}{val_text} "
            f"({stats.seconds:.1f} s)",
        )

    return hook
