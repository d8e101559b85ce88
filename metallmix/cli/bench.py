"""``metallmix bench ...``: benchmarks that print their figures and write ``bench/results/``.

Other benchmark verbs attach to :data:`bench_app` from their own modules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TextIO

import typer
from rich.console import Console

from metallmix import config
from metallmix.cli.groups import options_from
from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.errors import ConfigError

bench_app = typer.Typer(help="Benchmarks (leave-one-dataset-out, ...).", no_args_is_help=True)


class FoldLog:
    """Progress lines (fold k of n, elapsed, estimate) appended to a file as folds finish,
    so a run in the background or over ssh can be followed with ``tail -f``."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._file: TextIO | None = None

    def __enter__(self) -> FoldLog:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--log {self.path}: cannot write there ({exc.strerror})") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, text: str) -> None:
        assert self._file is not None, "FoldLog used outside its with-block"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._file.write(f"{stamp} {text}\n")
        self._file.flush()

    def fold_done(self, group: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done * (self.total - self.done)
        self.write(
            f"fold {self.done} of {self.total} ({group}) done: elapsed {elapsed:.0f} s, "
            f"about {left:.0f} s left"
        )


def _default_quicktune() -> Path:
    return config.shared_data_dir() / "quicktune" / "extended"


def _results_name(spec: str) -> str:
    path = Path(spec.removeprefix("sqlite:///"))
    if path.is_dir():
        return "lodo_quicktune"
    return f"lodo_{path.stem}"


@dataclass(frozen=True, kw_only=True)
class LodoLearnerOptions:
    """What the LODO meta-learners are: seed, objectives, trees, depth, one or per-regime."""

    seed: Annotated[int, typer.Option("--seed")] = 0
    objectives: Annotated[
        str,
        typer.Option(
            "--objectives",
            help="Comma-separated meta-learner objectives to score (raw, normalized, rank, "
            "percentile, ensemble; ensemble is the product's pick rule). config-only always runs.",
        ),
    ] = "ensemble"
    n_estimators: Annotated[
        int, typer.Option("--trees", min=1, help="XGBoost trees per model.")
    ] = 300
    max_depth: Annotated[int, typer.Option("--depth", min=1, help="XGBoost tree depth.")] = 5
    one_learner: Annotated[
        bool,
        typer.Option(
            "--one-learner",
            help="Fit one meta-learner on every compute regime's runs (the product fits one per "
            "regime, and so does LODO by default).",
        ),
    ] = False


@bench_app.command("lodo")
@options_from("learner", LodoLearnerOptions)
def lodo(
    *,
    kb: str = typer.Option(
        None,
        "--kb",
        help="KB .sqlite file or Quick-Tune version folder "
        "(default: ../shared/data/quicktune/extended).",
    ),
    out: Path = typer.Option(Path("bench/results"), "--out", help="Folder for md/json/png."),
    name: str = typer.Option(
        None, "--name", help="Base name of the result files (default: lodo_<kb name>)."
    ),
    learner: LodoLearnerOptions,  # expanded into its options
    jobs: int = typer.Option(
        None,
        "--jobs",
        min=1,
        help="Folds fitted at once, in worker processes (default: one per CPU; the figures "
        "are the same for any value).",
    ),
    log: Path = typer.Option(
        None,
        "--log",
        help="Also write the progress (fold k of n, elapsed, estimate) to this file "
        "(default: <out>/<name>.log).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Leave-one-dataset-out on completed runs: the product's pick vs config-only and baselines."""
    # Imported here: xgboost, pandas and scipy must not slow down `metallmix --help`.
    from metallmix.benchmarks.lodo import (
        LodoSpec,
        load_kb_records,
        markdown_table,
        run_lodo,
        write_results,
    )
    from metallmix.tools.meta.metalearner import OBJECTIVES, Objective

    seed, objectives = learner.seed, learner.objectives
    chosen = [o.strip() for o in objectives.split(",") if o.strip()]
    unknown = [o for o in chosen if o not in OBJECTIVES]
    if unknown or not chosen:
        raise ConfigError(
            f"--objectives {objectives!r}: choose one or more of {', '.join(OBJECTIVES)}"
        )
    chosen_objectives: list[Objective] = [o for o in OBJECTIVES if o in chosen]

    spec = kb or str(_default_quicktune())
    records, label = load_kb_records(spec)
    base = name or _results_name(spec)
    log_path = log or out / f"{base}.log"
    groups = sorted({r.dataset_group for r in records})
    with (
        progress("LODO folds", total=len(groups)) as advance,
        FoldLog(log_path, len(groups)) as fold_log,
    ):
        fold_log.write(f"LODO on {label}: {len(groups)} folds, seed {seed}, jobs {jobs or 'auto'}")

        def on_fold(group: str) -> None:
            advance(1)
            fold_log.fold_done(group)

        lodo_spec = LodoSpec(
            objectives=chosen_objectives,
            seed=seed,
            n_estimators=learner.n_estimators,
            max_depth=learner.max_depth,
            per_regime=not learner.one_learner,
        )
        result = run_lodo(records, lodo_spec, kb_label=label, on_fold=on_fold, n_jobs=jobs)
        fold_log.write(f"done in {result.seconds:.0f} s ({result.n_jobs} folds at once)")
    paths = write_results(result, out, base)
    stderr.print(f"wrote {', '.join(str(p) for p in paths.values())} (progress log {log_path})")
    summary = result.summary().reset_index()
    summary = summary.astype(object).where(summary.notna(), None)  # NaN is not JSON
    payload = {
        "kb": label,
        "seed": result.seed,
        "seconds": result.seconds,
        "load_average": result.load_average,
        "default_method": result.default_method,
        "per_regime": not learner.one_learner,
        "n_runs": result.n_runs,
        "n_partial_runs_ignored": result.n_partial_runs,
        "summary": summary.to_dict(orient="records"),
        "interval": result.interval,
        "rows": [
            {"dataset": r.dataset, "method": r.method, "regret": r.regret, "rank": r.rank}
            for r in result.rows
        ],
        "files": {**{k: str(v) for k, v in paths.items()}, "log": str(log_path)},
    }

    def render(console: Console) -> None:
        typer.echo(markdown_table(result))  # plain text: rich would re-wrap the table

    emit(payload, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
