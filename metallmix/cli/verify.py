"""``metallmix recommend DATA --verify K``: the zero-shot answer, then a verified one.

What a verification adds to :mod:`metallmix.cli.recommend`'s display: a line per training
run while it works, and the table of candidates and rungs at the end. The command itself is
``recommend``'s (one progress display, one call to :func:`metallmix.recommend`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metallmix.cli.output import stderr

if TYPE_CHECKING:  # annotations only: the CLI starts without the training code
    from metallmix.tools.training.halving import RunResult


def run_printer(advance: Callable[[int], None]) -> Callable[[str, int, RunResult], None]:
    """The ``on_run`` hook of a verification: one stderr line per finished training run."""

    def on_run(cid: str, rung: int, run: RunResult) -> None:
        value = "—" if run.value is None else f"{100 * run.value:.1f}%"
        stderr.print(
            f"  verify: {cid} rung {rung} ({run.epochs} epoch(s)) {run.state}: "
            f"val {value} in {run.seconds or 0:.1f} s"
        )
        advance(1)

    return on_run


def render_verification(result: Any, console: Console) -> None:
    """One row per candidate: its rungs, values and fate; then the verdict and the cost."""
    table = Table(
        title=f"verification: successive halving (first rung {result.first_rung.epochs}"
        f" epoch(s), {result.first_rung.source})"
    )
    for column in ("candidate", "model", "first rung", "full", "test acc", "status"):
        table.add_column(column)
    for cand in result.candidates:
        cells = []
        for rung in (0, 1):
            run = next((r for r in cand.runs if r.rung == rung), None)
            if run is None or run.value is None:
                cells.append("—" if run is None else run.state)
            else:
                cells.append(f"{100 * run.value:.1f}% ({run.epochs} ep)")
        final = cand.final or cand.best_known
        test = (
            "—"
            if final is None or final.test_accuracy is None
            else (f"{100 * final.test_accuracy:.1f}%")
        )
        mark = " (zero-shot)" if cand.zero_shot else ""
        table.add_row(cand.candidate_id + mark, cand.model, *cells, test, cand.status)
    console.print(table)
    console.print(escape(result.summary()))
    console.print(
        f"study {result.study_name} in {result.storage}; MLflow run {result.mlflow_run_id} "
        f"(nested under the recommendation's run); {result.runs_this_time} run(s) now, "
        f"{result.runs_resumed} from earlier"
    )
