"""``metallmix kb ...``: inspect and grow the knowledge base."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metallmix.cli.output import JsonOption, emit
from metallmix.tools.kb.store import open_kb

kb_app = typer.Typer(help="Inspect and grow the knowledge base.", no_args_is_help=True)

KbOption = typer.Option(
    None, "--kb", help="Knowledge-base file (default: METALLMIX_KB or the layered default)."
)


@kb_app.command("info")
def info(kb: Path | None = KbOption, as_json: bool = JsonOption) -> None:
    """Counts of runs per source and dataset."""
    store = open_kb(kb)
    summary = store.info()

    def render(console: Console) -> None:
        console.print(f"[bold]Knowledge base[/bold] {summary.location}")
        console.print(f"total runs: {summary.total}  (schema v{summary.schema_version})")
        for title, counts in (
            ("source", summary.by_source),
            ("status", summary.by_status),
            ("dataset", summary.by_dataset),
        ):
            table = Table(title=f"by {title}")
            table.add_column(title)
            table.add_column("runs", justify="right")
            for key, value in counts.items():
                table.add_row(key, str(value))
            console.print(table)

    emit(summary.to_dict(), as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(kb_app, name="kb")
