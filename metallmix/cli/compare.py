"""``metallmix bench compare``: zero-shot, RS/TPE/GP, best-default, and verify@K against
RS+SH@K and best-default+SH@K.

Attaches to :data:`metallmix.cli.bench.bench_app`; the work is in
:mod:`metallmix.benchmarks.compare`, the report in :mod:`metallmix.benchmarks.compare_report`.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
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
        None, "--data", help="Dataset to compare on (repeat for several)."
    ),
    data_dir: Path = typer.Option(
        None,
        "--data-dir",
        help="Folder of datasets (.npz / .csv with their .json cards, image folders): "
        "every one is compared; any folder, e.g. data we have never seen.",
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Budget 10, 1 seed, ≤3 epochs, ≤300 train / 150 val images, 1 thread, no LLM "
        "(options given explicitly win).",
    ),
    budget: int = typer.Option(None, "--budget", min=1, help="Trials per search (default 10)."),
    seeds: int = typer.Option(
        None, "--seeds", min=1, help="Number of seeds (default 3; --quick: 1)."
    ),
    first_seed: int = typer.Option(0, "--seed", help="First seed (seeds are consecutive)."),
    llm: str = typer.Option(None, "--llm", help="LLM name, profile (fast, default) or .gguf."),
    no_llm: bool = typer.Option(
        False,
        "--no-llm",
        help="Pick the zero-shot configuration without the LLM (it only explains the top "
        "candidate, so no configuration changes); no LLM time is spent.",
    ),
    methods: str = typer.Option(
        None,
        "--methods",
        help="Comma-separated subset of: metallmix, random, tpe, gp, best-default, "
        "metallmix+verify, random+sh, best-default+sh (default: all).",
    ),
    kb: Path = typer.Option(
        None, "--kb", help="KB .sqlite (default: METALLMIX_KB or the shipped KB); snapshotted."
    ),
    epoch_cap: int = typer.Option(
        None, "--epochs-max", min=1, help="Epoch cap for every run (default 5)."
    ),
    models: str = typer.Option(None, "--models", help="Comma-separated subset of the CPU zoo."),
    image_sizes: str = typer.Option(None, "--image-sizes", help="Subset of 28,32,48,64."),
    max_train_images: int = typer.Option(
        None, "--max-train-images", min=10, help="Seeded stratified training subsample."
    ),
    max_val_images: int = typer.Option(None, "--max-val-images", min=10, help="(default 200)"),
    threads: int = typer.Option(None, "--threads", min=1, help="torch threads per run."),
    verify: int = typer.Option(
        5, "--verify", min=1, help="K: candidates each successive halving trains."
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
        "local", "--backend", help="Where search trials and halving runs go: local or ray."
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
        datasets_in,
        finish_mlflow,
        n_pieces,
        resolve_settings,
        run_compare,
    )
    from metallmix.benchmarks.compare_report import markdown_table, write_results
    from metallmix.tools import tracking

    wall = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    code = tracking.code_version()  # the code that starts the run (HEAD may move meanwhile)
    paths_in = list(data or [])
    if data_dir is not None:
        paths_in += datasets_in(data_dir)
    if not paths_in:
        raise ConfigError("give the datasets to compare: --data PATH (repeatable) or --data-dir")
    if llm is not None and no_llm:
        raise ConfigError("--llm and --no-llm contradict each other; give one")

    settings = resolve_settings(
        quick=quick,
        first_seed=first_seed,
        methods=_names(methods) or [] if methods is not None else None,
        budget=budget,
        n_seeds=seeds,
        epoch_cap=epoch_cap,
        max_train_images=max_train_images,
        max_val_images=max_val_images,
        threads=threads,
        models=_names(models),
        image_sizes=_ints(image_sizes, "--image-sizes"),
        verify=verify,
    )
    use_llm = not no_llm and not (quick and llm is None)
    for path in paths_in:  # fail on a bad dataset before any progress output
        load_dataset(path, modality=modality)
    base = name or "compare_" + "+".join(Path(d).stem for d in paths_in)
    state_dir = state or out / f"{base}.state"
    backend = None
    if backend_name != "local" or workers or address:
        backend = make_backend(backend_name, address=address, workers=workers or None)
        stderr.print(f"search trials on {backend.describe()}")
    if not use_llm:
        stderr.print("zero-shot pick without the LLM (the top-scored candidate, as it explains)")
    with progress("comparison pieces", total=n_pieces(settings, len(paths_in))) as advance:

        def on_piece(key: str, value: dict[str, object]) -> None:
            advance(1)
            suffix = " (resumed)" if value.get("resumed") else ""
            stderr.log(f"{key}{suffix}")

        report = run_compare(
            [str(d) for d in paths_in],
            settings,
            state_dir=state_dir,
            kb=kb,
            llm=llm,
            modality=modality,
            on_piece=on_piece,
            backend=backend,
            use_llm=use_llm,
        )
    if backend is not None:
        backend.close()
    report["run"] = {  # what a quoted figure needs: the command, the code, the machine
        "command": shlex.join(["metallmix", *sys.argv[1:]]),
        "code_version": code,
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "load_start": load_start,
        "load_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "quick": quick,
        "llm": use_llm,
    }
    paths = write_results(report, out, base)
    finish_mlflow(report, paths)
    stderr.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    payload = {**report, "files": {k: str(v) for k, v in paths.items()}}

    def render(console: Console) -> None:
        console.print(markdown_table(report), soft_wrap=True, markup=False, highlight=False)

    emit(payload, as_json, render)


def register(app: typer.Typer) -> None:
    """Nothing to add: the command is on ``bench_app``, which ``bench`` registers."""
