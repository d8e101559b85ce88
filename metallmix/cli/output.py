"""Shared output conventions of every CLI verb.

``--json`` prints exactly one JSON document on stdout; everything else (logs, progress,
tables) goes to stderr or, without ``--json``, is rendered for people on stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stdout = Console()
stderr = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout.")


def llm_choice(value: str | None) -> str | None:
    """``--llm``: a registered name or profile, or an existing .gguf file; anything else is a
    usage error (exit 2) before any work, not a templated fallback after the whole graph.
    The check is weight resolution's own (``check_request``), so the two never disagree;
    missing or damaged weights of a *valid* choice still fall back at run time."""
    if value is None:
        return None
    from metallmix.agents.runtime.weights import check_request
    from metallmix.errors import ModelUnavailableError

    try:
        check_request(value)
    except ModelUnavailableError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--llm'") from exc
    return value


def emit(result: Any, as_json: bool, render: Callable[[Console], None] | None = None) -> None:
    """Print ``result`` as JSON, or call ``render`` for a human-readable view."""
    if as_json or render is None:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        render(stdout)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance
