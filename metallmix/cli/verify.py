"""``metallmix recommend DATA --verify K``: the zero-shot answer, then a verified one.

Kept apart from :mod:`metallmix.cli.recommend` so the shared command only gains options;
the work is :func:`metallmix.verify.recommend_verified`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metallmix.cli.output import progress, stderr


def run_verified(
    path: Path,
    *,
    modality: str | None,
    llm: str | None,
    kb: Path | None,
    seed: int,
    no_judge_llm: bool,
    k: int,
    budget_minutes: float | None,
    backend: str,
    address: str | None,
    workers: int,
    threads: int | None,
    max_train_images: int | None,
    study: str | None,
) -> Any:
    """Recommend, then verify, with progress on stderr (nodes, then one line per run)."""
    from metallmix.tools.training.backends import make_backend
    from metallmix.tools.training.verify import RunResult
    from metallmix.verify import recommend_verified

    engine = make_backend(backend, address=address, workers=workers or None)
    try:
        with progress("recommending + verifying", total=None) as advance:

            def on_node(node: str) -> None:
                stderr.print(f"  done: {node}")
                advance(1)

            def on_run(cid: str, rung: int, run: RunResult) -> None:
                value = "—" if run.value is None else f"{100 * run.value:.1f}%"
                stderr.print(
                    f"  verify: {cid} rung {rung} ({run.epochs} epoch(s)) {run.state}: "
                    f"val {value} in {run.seconds or 0:.1f} s"
                )
                advance(1)

            return recommend_verified(
                path,
                k=k,
                budget_minutes=budget_minutes,
                modality=modality,
                llm=llm,
                kb=kb,
                seed=seed,
                judge_with_llm=not no_judge_llm,
                on_node=on_node,
                backend=engine,
                study=study,
                max_train_images=max_train_images,
                threads=threads,
                on_run=on_run,
            )
    finally:
        engine.close()


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
