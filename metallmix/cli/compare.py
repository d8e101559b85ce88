"""``metallmix bench compare``: zero-shot, RS, TPE, best-default and MetaLLMiX+verify@K.

Attaches to :data:`metallmix.cli.bench.bench_app`; the work is in
:mod:`metallmix.benchmarks.compare`, the report in :mod:`metallmix.benchmarks.compare_report`.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from metallmix.cli.bench import bench_app
from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.errors import ConfigError
from metallmix.tools.datasets import load_dataset
from metallmix.tools.training.backends import make_backend


def _ints(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give comma-separated integers, e.g. 28,32") from None


def _names(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [v.strip() for v in text.split(",") if v.strip()]


@bench_app.command("compare")
def compare(
    data: list[Path] = typer.Option(
        ..., "--data", help="Dataset to compare on (repeat for several)."
    ),
    budget: int = typer.Option(10, "--budget", min=1, help="Trials per RS / TPE search."),
    seeds: int = typer.Option(3, "--seeds", min=1, help="Number of seeds."),
    first_seed: int = typer.Option(0, "--seed", help="First seed (seeds are consecutive)."),
    llm: str = typer.Option(None, "--llm", help="LLM name, profile (fast, default) or .gguf."),
    kb: Path = typer.Option(
        None, "--kb", help="KB .sqlite (default: METALLMIX_KB or the shipped KB); snapshotted."
    ),
    epoch_cap: int = typer.Option(5, "--epochs-max", min=1, help="Epoch cap for every run."),
    models: str = typer.Option(None, "--models", help="Comma-separated subset of the CPU zoo."),
    image_sizes: str = typer.Option(None, "--image-sizes", help="Subset of 28,32,48,64."),
    max_train_images: int = typer.Option(
        None, "--max-train-images", min=10, help="Seeded stratified training subsample."
    ),
    max_val_images: int = typer.Option(200, "--max-val-images", min=10),
    threads: int = typer.Option(None, "--threads", min=1, help="torch threads per run."),
    verify: int = typer.Option(
        5, "--verify", min=1, help="Candidates MetaLLMiX+verify trains (successive halving)."
    ),
    modality: str = typer.Option(None, "--modality"),
    out: Path = typer.Option(Path("bench/results"), "--out", help="Folder for md/json/png."),
    name: str = typer.Option(
        None, "--name", help="Base name of the results (default: compare_<datasets>)."
    ),
    state: Path = typer.Option(
        None, "--state", help="State folder for resumption (default: <out>/<name>.state)."
    ),
    backend_name: str = typer.Option(
        "local", "--backend", help="Where RS/TPE search trials run: local or ray."
    ),
    address: str = typer.Option(
        None, "--address", help="Ray cluster: auto or ray://host:10001 (default: private)."
    ),
    workers: int = typer.Option(
        0, "--workers", min=0, help="local: worker processes; ray: CPUs of a private instance."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Head-to-head on real training; resumable (re-run the same command to continue)."""
    # Imported here: the benchmark pulls in torch, MLflow and the LLM runtime, which
    # `metallmix --help` and every other verb must not pay for.
    from metallmix.benchmarks.compare import (
        CompareSettings,
        finish_mlflow,
        n_pieces,
        run_compare,
    )
    from metallmix.benchmarks.compare_report import markdown_table, write_results

    settings = CompareSettings(
        budget=budget,
        seeds=list(range(first_seed, first_seed + seeds)),
        epoch_cap=epoch_cap,
        models=_names(models),
        image_sizes=_ints(image_sizes, "--image-sizes"),
        max_train_images=max_train_images,
        max_val_images=max_val_images,
        threads=threads,
        verify=verify,
    )
    for path in data:  # fail on a bad dataset before any progress output
        load_dataset(path, modality=modality)
    base = name or "compare_" + "+".join(Path(d).stem for d in data)
    state_dir = state or out / f"{base}.state"
    backend = None
    if backend_name != "local" or workers or address:
        backend = make_backend(backend_name, address=address, workers=workers or None)
        stderr.print(f"search trials on {backend.describe()}")
    with progress("comparison pieces", total=n_pieces(settings, len(data))) as advance:

        def on_piece(key: str, value: dict[str, object]) -> None:
            advance(1)
            suffix = " (resumed)" if value.get("resumed") else ""
            stderr.log(f"{key}{suffix}")

        report = run_compare(
            [str(d) for d in data],
            settings,
            state_dir=state_dir,
            kb=kb,
            llm=llm,
            modality=modality,
            on_piece=on_piece,
            backend=backend,
        )
    if backend is not None:
        backend.close()
    paths = write_results(report, out, base)
    finish_mlflow(report, paths)
    stderr.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    payload = {**report, "files": {k: str(v) for k, v in paths.items()}}

    def render(console: Console) -> None:
        console.print(markdown_table(report), soft_wrap=True, markup=False, highlight=False)

    emit(payload, as_json, render)


def register(app: typer.Typer) -> None:
    """Nothing to add: the command is on ``bench_app``, which ``bench`` registers."""
