"""Progress lines for the Python API: a recommendation or a validation takes minutes, and
silence for minutes reads as a hang.

Plain lines on stderr (not a redrawn bar) so they survive notebooks, logs and pipes; stdout
stays the caller's. ``recommend(progress=False)`` / ``validate(progress=False)`` turn them
off; the CLI draws its own display and turns them off too.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

from metallmix.node_names import NodeName

NODE_TEXT: dict[str, str] = {
    NodeName.FEATURES: "meta-features computed",
    NodeName.RETRIEVE: "similar past runs retrieved",
    NodeName.SHORTLIST: "candidates scored by the meta-learner",
    NodeName.EVIDENCE: "evidence written",
    NodeName.RECOMMENDER: "LLM answered",
    NodeName.JUDGE: "judge done",
    NodeName.FALLBACK: "fallback built",
    NodeName.RECORD: "recorded in MLflow",
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


def step_line(text: str, stream: TextIO | None = None) -> None:
    """One line for a step inside a node (the landmarks' scores and cost), unless progress
    lines are off (``recommend(progress=False)``)."""
    if WAIT_LINES.get() is not False:
        _write(stream, text)


# --- long waits inside a step (a meta-learner fit): "what, how far, about how long" ------

#: Whether wait lines print: None (not decided: print), True (the CLI asks for them beside
#: its own display), False (``recommend(progress=False)``: silent).
WAIT_LINES: ContextVar[bool | None] = ContextVar("metallmix_wait_lines", default=None)
WAIT_EVERY_S = 2.0  # a silent wait longer than this reads as a hang


@contextmanager
def wait_lines(enabled: bool) -> Iterator[None]:
    """Turn wait lines on or off for the block (unless an outer caller already decided)."""
    token = WAIT_LINES.set(enabled) if WAIT_LINES.get() is None or enabled else None
    try:
        yield
    finally:
        if token is not None:
            WAIT_LINES.reset(token)


class WaitReporter:
    """Lines for one long step of ``total`` parts: the first at once (what, how many, a
    rough estimate when one is known), then at most one every :data:`WAIT_EVERY_S` seconds
    with the parts done and the time left extrapolated from the parts so far.

    ``announce=False`` is for a step that is usually quick (meta-features of a small
    dataset): nothing is printed unless it is still running after :data:`WAIT_EVERY_S`."""

    def __init__(
        self,
        what: str,
        total: int,
        *,
        unit: str = "parts",
        estimate_s: float | None = None,
        stream: TextIO | None = None,
        announce: bool = True,
    ) -> None:
        self.what, self.total, self.unit, self.stream = what, max(1, total), unit, stream
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.enabled = WAIT_LINES.get() is not False
        self.spoke = False
        if self.enabled and announce:
            guess = f", about {estimate_s:.0f} s" if estimate_s else ""
            _write(stream, f"{what}: {self.total} {unit}{guess} ...")
            self.spoke = True

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if not self.enabled or now - self.last < WAIT_EVERY_S or self.done >= self.total:
            return
        self.spoke = True
        self.last = now
        left = (now - self.start) / self.done * (self.total - self.done)
        _write(
            self.stream,
            f"{self.what}: {self.done}/{self.total} {self.unit}, about {left:.0f} s left",
        )

    def finish(self) -> None:
        if self.enabled and self.spoke and time.perf_counter() - self.start >= WAIT_EVERY_S:
            _write(self.stream, f"{self.what}: done ({time.perf_counter() - self.start:.1f} s)")


@contextmanager
def waiting(
    what: str, *, estimate_s: float | None = None, stream: TextIO | None = None
) -> Iterator[None]:
    """Lines for a step that cannot count its parts (reading the KB, building an index,
    waiting for the LLM to load): nothing if it ends within :data:`WAIT_EVERY_S`, else a
    line every :data:`WAIT_EVERY_S` with the time so far (and left, given an estimate),
    written by a helper thread while the step blocks, and one when it is done."""
    if WAIT_LINES.get() is False:
        yield
        return
    stop = threading.Event()
    start = time.perf_counter()

    def beat() -> None:
        while not stop.wait(WAIT_EVERY_S):
            elapsed = time.perf_counter() - start
            left = ""
            if estimate_s:
                left = (
                    f", about {estimate_s - elapsed:.0f} s left"
                    if elapsed < estimate_s
                    else f", longer than the usual {estimate_s:.0f} s (a busy machine?)"
                )
            _write(stream, f"{what}: {elapsed:.0f} s so far{left}")

    helper = threading.Thread(target=beat, name="metallmix-wait", daemon=True)
    helper.start()
    try:
        yield
    finally:
        stop.set()
        helper.join()
        elapsed = time.perf_counter() - start
        if elapsed >= WAIT_EVERY_S:
            _write(stream, f"{what}: done ({elapsed:.1f} s)")
