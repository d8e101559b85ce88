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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from metallmix.cli.bench import bench_app
from metallmix.cli.groups import options_from
from metallmix.cli.output import JsonOption, emit, llm_choice, progress, stderr
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


@dataclass(frozen=True, kw_only=True)
class CompareData:
    """The datasets compared: given one by one and/or every one in a folder."""

    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Dataset to compare on (repeat for several)."),
    ] = None
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Folder of datasets (.npz / .csv with their .json cards, image folders): "
            "every one is compared; any folder, e.g. data we have never seen.",
        ),
    ] = None

    def paths(self) -> list[Path]:
        from metallmix.benchmarks.compare import datasets_in  # heavy: torch, MLflow, LLM

        found = list(self.data or [])
        if self.data_dir is not None:
            found += datasets_in(self.data_dir)
        if not found:
            raise ConfigError(
                "give the datasets to compare: --data PATH (repeatable) or --data-dir"
            )
        return found


@dataclass(frozen=True, kw_only=True)
class CompareSize:
    """How big the comparison is: ``--quick``, trials per search, seeds."""

    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Budget 10, 1 seed, ≤3 epochs, ≤300 train / 150 val images, 1 thread per "
            "run, one worker per CPU, no LLM (options given explicitly win).",
        ),
    ] = False
    budget: Annotated[
        int | None, typer.Option("--budget", min=1, help="Trials per search (default 10).")
    ] = None
    seeds: Annotated[
        int | None,
        typer.Option("--seeds", min=1, help="Number of seeds (default 3; --quick: 1)."),
    ] = None
    first_seed: Annotated[
        int, typer.Option("--seed", help="First seed (seeds are consecutive).")
    ] = 0


@dataclass(frozen=True, kw_only=True)
class CompareLlm:
    """The LLM of the zero-shot pick, or none."""

    llm: Annotated[
        str | None,
        typer.Option(
            "--llm", callback=llm_choice, help="LLM name, profile (fast, default) or .gguf."
        ),
    ] = None
    no_llm: Annotated[
        bool,
        typer.Option(
            "--no-llm",
            help="Pick the zero-shot configuration without the LLM (it only explains the top "
            "candidate, so no configuration changes); no LLM time is spent.",
        ),
    ] = False

    def use(self, quick: bool) -> bool:
        if self.llm is not None and self.no_llm:
            raise ConfigError("--llm and --no-llm contradict each other; give one")
        return not self.no_llm and not (quick and self.llm is None)


@dataclass(frozen=True, kw_only=True)
class CompareCaps:
    """What every run may cost (epochs, models, sizes, images, threads) and K."""

    epoch_cap: Annotated[
        int | None,
        typer.Option("--epochs-max", min=1, help="Epoch cap for every run (default 5)."),
    ] = None
    models: Annotated[
        str | None, typer.Option("--models", help="Comma-separated subset of the CPU zoo.")
    ] = None
    image_sizes: Annotated[
        str | None, typer.Option("--image-sizes", help="Subset of 28,32,48,64.")
    ] = None
    max_train_images: Annotated[
        int | None,
        typer.Option("--max-train-images", min=10, help="Seeded stratified training subsample."),
    ] = None
    max_val_images: Annotated[
        int | None, typer.Option("--max-val-images", min=10, help="(default 200)")
    ] = None
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch threads per run.")
    ] = None
    verify: Annotated[
        int, typer.Option("--verify", min=1, help="K: candidates each successive halving trains.")
    ] = 5


@dataclass(frozen=True, kw_only=True)
class CompareOutput:
    """Where the results and the resumable state go."""

    out: Annotated[Path, typer.Option("--out", help="Folder for md/json/png.")] = Path(
        "bench/results"
    )
    name: Annotated[
        str | None,
        typer.Option("--name", help="Base name of the results (default: compare_<datasets>)."),
    ] = None
    state: Annotated[
        Path | None,
        typer.Option("--state", help="State folder for resumption (default: <out>/<name>.state)."),
    ] = None
    merge_from: Annotated[
        list[Path] | None,
        typer.Option(
            "--merge-from",
            help="State folder of another comparison with the same settings (repeatable): "
            "its finished pieces join this one's before it runs, e.g. datasets split over "
            "processes or machines.",
        ),
    ] = None


@dataclass(frozen=True, kw_only=True)
class CompareBackend:
    """Where search trials and halving runs go."""

    backend_name: Annotated[
        str,
        typer.Option("--backend", help="Where search trials and halving runs go: local or ray."),
    ] = "local"
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster: auto or ray://host:10001 (default: private)."),
    ] = None
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=0, help="local: worker processes; ray: CPUs of a private instance."
        ),
    ] = 0

    def open(self, quick: bool = False) -> Any:
        """The backend, or None for the plain in-process path. ``--quick`` without
        ``--workers`` uses one local worker per CPU: its runs train on one thread each, so
        in-process it would leave every core but one idle."""
        in_process = self.backend_name == "local" and not self.workers and not self.address
        if in_process and quick:
            return replace(self, workers=os.cpu_count() or 1).open()
        if in_process:
            return None
        backend = make_backend(
            self.backend_name, address=self.address, workers=self.workers or None
        )
        stderr.print(f"search trials on {backend.describe()}")
        return backend


@bench_app.command("compare")
@options_from("datasets", CompareData)
@options_from("size", CompareSize)
@options_from("llms", CompareLlm)
@options_from("caps", CompareCaps)
@options_from("output", CompareOutput)
@options_from("execution", CompareBackend)
def compare(
    *,
    datasets: CompareData,  # expanded into its options
    size: CompareSize,  # expanded into its options
    llms: CompareLlm,  # expanded into its options
    methods: str = typer.Option(
        None,
        "--methods",
        help="Comma-separated subset of: metallmix, random, tpe, gp, best-default, "
        "metallmix+verify, random+sh, best-default+sh (default: all).",
    ),
    kb: Path = typer.Option(
        None, "--kb", help="KB .sqlite (default: METALLMIX_KB or the shipped KB); snapshotted."
    ),
    caps: CompareCaps,  # expanded into its options
    modality: str = typer.Option(None, "--modality"),
    output: CompareOutput,  # expanded into its options
    execution: CompareBackend,  # expanded into its options
    as_json: bool = JsonOption,
) -> None:
    """Head-to-head on real training; resumable (re-run the same command to continue)."""
    # Imported here: the benchmark pulls in torch, MLflow and the LLM runtime, which
    # `metallmix --help` and every other verb must not pay for.
    from metallmix.benchmarks.compare import finish_mlflow, n_pieces, resolve_settings, run_compare
    from metallmix.benchmarks.compare_report import markdown_table, write_results
    from metallmix.tools import tracking

    wall = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    code = tracking.code_version()  # the code that starts the run (HEAD may move meanwhile)
    paths_in = datasets.paths()
    quick = size.quick
    use_llm = llms.use(quick)
    settings = resolve_settings(
        quick=quick,
        first_seed=size.first_seed,
        methods=_names(methods) or [] if methods is not None else None,
        budget=size.budget,
        n_seeds=size.seeds,
        epoch_cap=caps.epoch_cap,
        max_train_images=caps.max_train_images,
        max_val_images=caps.max_val_images,
        threads=caps.threads,
        models=_names(caps.models),
        image_sizes=_ints(caps.image_sizes, "--image-sizes"),
        verify=caps.verify,
    )
    for path in paths_in:  # fail on a bad dataset before any progress output
        load_dataset(path, modality=modality)
    base = output.name or "compare_" + "+".join(Path(d).stem for d in paths_in)
    state_dir = output.state or output.out / f"{base}.state"
    if output.merge_from:
        from metallmix.benchmarks.compare import merge_states

        added = merge_states(state_dir, output.merge_from, settings)
        stderr.print(f"merged {len(added)} finished pieces into {state_dir}")
    backend = execution.open(quick)
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
            llm=llms.llm,
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
    paths = write_results(report, output.out, base)
    finish_mlflow(report, paths)
    stderr.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    payload = {**report, "files": {k: str(v) for k, v in paths.items()}}

    def render(console: Console) -> None:
        console.print(markdown_table(report), soft_wrap=True, markup=False, highlight=False)

    emit(payload, as_json, render)


def register(app: typer.Typer) -> None:
    """Nothing to add: the command is on ``bench_app``, which ``bench`` registers."""
