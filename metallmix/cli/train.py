"""``metallmix validate``, ``metallmix search`` and ``metallmix kb build``: real training runs.

All three record every run in MLflow and (unless ``--no-kb``) append it to the knowledge
base; torch and timm are imported only when a command runs, so ``metallmix --help`` stays
fast on machines without the ``train`` extra.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from metallmix.cli.groups import options_from
from metallmix.cli.kb import kb_app
from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.errors import EXIT_NOT_RECORDED, ConfigError
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.records import Hyperparameters, RunRecord
from metallmix.tools.kb.store import KnowledgeBase, open_kb
from metallmix.tools.meta.search_space import get_space, make_hyperparameters
from metallmix.tools.training.backends import Resources, make_backend
from metallmix.tools.training.runner import RunSpec, run_trial
from metallmix.tools.training.search import SAMPLERS, SearchSpec, run_search
from metallmix.tools.training.settings import TrialSettings
from metallmix.tools.training.trainer import FeatureCache

KB_HELP = "Knowledge-base file to append to (default: METALLMIX_KB or workspace)."
NoTrackOption = typer.Option(
    False,
    "--no-track",
    help="Record nothing in MLflow (the KB still gets the run unless --no-kb). Without it, "
    "a failure to record in MLflow still prints the result and exits 3.",
)
ThreadsOption = typer.Option(None, "--threads", min=1, help="torch threads (default: torch's).")
MaxTrainOption = typer.Option(
    None, "--max-train-images", min=2, help="Train on a seeded stratified subsample of N images."
)


@dataclass(frozen=True, kw_only=True)
class KbOptions:
    """``--kb`` / ``--no-kb``: the knowledge base the runs join, or none."""

    kb: Annotated[
        Path | None,
        typer.Option("--kb", help=KB_HELP),
    ] = None
    no_kb: Annotated[
        bool, typer.Option("--no-kb", help="Record in MLflow only, not in the KB.")
    ] = False

    def open(self) -> KnowledgeBase | None:
        return None if self.no_kb else open_kb(self.kb)


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """Where trials run (``--backend``, ``--address``, ``--workers``) and what each asks."""

    backend_name: Annotated[
        str,
        typer.Option(
            "--backend", help="Where trials run: local (this machine) or ray (a Ray cluster)."
        ),
    ] = "local"
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="Ray cluster: auto (started with `ray start --head`) or ray://host:10001; "
            "default RAY_ADDRESS, else a private Ray instance.",
        ),
    ] = None
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="local: worker processes (0 = in this process); ray: CPUs of a private "
            "instance, or the most trials in flight on a cluster (0 = as many as fit).",
        ),
    ] = 0
    gpus_per_trial: Annotated[
        float, typer.Option("--gpus-per-trial", min=0.0, help="GPUs each Ray task asks for.")
    ] = 0.0
    max_retries: Annotated[
        int,
        typer.Option(
            "--max-retries",
            min=0,
            help="Re-runs of a trial whose worker died before it is failed.",
        ),
    ] = 2

    def settings(self, threads: int | None, **given: Any) -> TrialSettings:
        """Trial settings on the chosen backend; the plain in-process path (no backend, the
        defaults) when it is local with neither workers nor an address."""
        if self.backend_name == "local" and not self.workers and not self.address:
            return TrialSettings(threads=threads, **given)
        backend = make_backend(
            self.backend_name, address=self.address, workers=self.workers or None
        )
        stderr.print(f"backend: {backend.describe()}")
        return TrialSettings(
            threads=threads,
            backend=backend,
            max_retries=self.max_retries,
            resources=Resources(num_cpus=float(threads or 1), num_gpus=self.gpus_per_trial),
            **given,
        )


def read_config(path: Path, model: str | None = None) -> tuple[str, Hyperparameters]:
    """Model and hyperparameters from a JSON file.

    Accepted shapes: ``{"model": ..., "hyperparameters": {...}}`` (also what a
    recommendation or a KB record carries), the same under ``"recommendation"``, or a flat
    ``{"model": ..., "lr": ..., ...}``; ``--model`` overrides the file's model.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object with 'model'")
    if isinstance(data.get("recommendation"), dict):
        data = data["recommendation"]
    chosen = model or data.get("model")
    if not isinstance(chosen, str) or not chosen:
        raise ConfigError(f'config file {path} names no model; add "model" or pass --model')
    hp_raw = data.get("hyperparameters")
    if hp_raw is None:
        hp_raw = {k: v for k, v in data.items() if k not in {"model", "pretrained", "seed"}}
    if not isinstance(hp_raw, dict):
        raise ConfigError(f"'hyperparameters' in {path} must be an object")
    extra = hp_raw.pop("extra", None) or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"'hyperparameters.extra' in {path} must be an object")
    try:
        return chosen, make_hyperparameters({**extra, **hp_raw})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _config_pretrained(path: Path) -> bool:
    """The ``pretrained`` flag a config (or a recommendation JSON) carries; False if none."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and isinstance(data.get("recommendation"), dict):
        data = data["recommendation"]
    return isinstance(data, dict) and data.get("pretrained") is True


def _record_summary(record: RunRecord) -> dict[str, Any]:
    out = record.outcomes
    return {
        "run_id": record.run_id,
        "mlflow_run_id": record.provenance.mlflow_run_id,
        "dataset": record.dataset,
        "model": record.model,
        "status": record.status,
        "val_accuracy": out.val_accuracy,
        "test_accuracy": out.test_accuracy,
        "macro_f1": out.macro_f1,
        "balanced_accuracy": out.balanced_accuracy,
        "val_balanced_accuracy": out.val_balanced_accuracy,
        "test_balanced_accuracy": out.test_balanced_accuracy,
        "val_macro_f1": out.val_macro_f1,
        "macro_auc": out.macro_auc,
        "train_seconds": out.train_seconds,
        "seconds_per_epoch": out.seconds_per_epoch,
        "epochs_run": out.epochs_run,
    }


@dataclass(frozen=True, kw_only=True)
class ValidateRun:
    """What ``validate`` trains: the config's model (or ``--model``), its seed, and a
    pretrained or scratch start (or local weights)."""

    config_file: Annotated[
        Path, typer.Option("--config", help="JSON with model + hyperparameters.")
    ]
    model: Annotated[str | None, typer.Option("--model", help="Override the config's model.")] = (
        None
    )
    seed: Annotated[int, typer.Option("--seed")] = 0
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--scratch",
            help="Start from pretrained weights (offline for efficientnet_lite0/1/2, else "
            "timm's hub). Default: the config's 'pretrained' (a recommendation's), else scratch.",
        ),
    ] = None
    weights: Annotated[Path | None, typer.Option("--weights", help="Local state-dict file.")] = None


@options_from("run", ValidateRun)
@options_from("store", KbOptions)
def validate_command(
    *,
    data: Path = typer.Option(..., "--data", help="Dataset (.npz, CSV manifest or folder)."),
    run: ValidateRun,  # expanded into its options
    modality: str | None = typer.Option(None, "--modality"),
    parent_run_id: str | None = typer.Option(
        None, "--parent-run-id", help="Nest under this MLflow run (a recommendation)."
    ),
    experiment: str = typer.Option("metallmix-validation", "--experiment"),
    max_train_images: int | None = MaxTrainOption,
    threads: int | None = ThreadsOption,
    store: KbOptions,  # expanded into its options
    no_track: bool = NoTrackOption,
    as_json: bool = JsonOption,
) -> None:
    """Train one configuration, log it to MLflow and append it to the knowledge base.

    Exit 3: the result is printed but recording it in MLflow failed (the last line says why).
    """
    if no_track and parent_run_id:
        raise typer.BadParameter(
            "nests the run under an MLflow run, which --no-track does not create; drop one",
            param_hint="'--parent-run-id'",
        )
    chosen, hp = read_config(run.config_file, run.model)
    pretrained = run.pretrained
    if pretrained is None:
        pretrained = _config_pretrained(run.config_file)
    dataset = load_dataset(data, modality=modality, seed=run.seed)
    kb = store.open()
    epochs = hp.epochs or 5
    stderr.print(f"validating {chosen} on {dataset.name} ({len(dataset.split('train'))} train)")
    with progress(f"training {chosen}", epochs) as advance:
        spec = RunSpec(
            model=chosen,
            hp=hp,
            seed=run.seed,
            experiment=experiment,
            parent_run_id=parent_run_id,
            pretrained=pretrained,
            weights=run.weights,
        )
        settings = TrialSettings(
            max_train_images=max_train_images,
            threads=threads,
            progress=lambda stats: advance(1),
            track=not no_track,
        )
        record = run_trial(dataset, spec, kb=kb, settings=settings)
    result = _record_summary(record)
    result["kb"] = kb.location if kb is not None else None

    def render(console: Console) -> None:
        table = Table(title=f"validation run {record.provenance.mlflow_run_id or record.run_id}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in result.items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            table.add_row(key, shown)
        console.print(table)

    emit(result, as_json, render)
    finish_line(record)


def finish_line(record: RunRecord) -> None:
    """After the result is out: one line and a non-zero exit when the run diverged (exit 1:
    recorded as ``diverged``, never learned from as a score) or was not recorded in MLflow
    (exit 3: the result is kept in the KB or as JSON, the line says where)."""
    if record.status != "ok":
        message = record.provenance.notes.get("message") or "non-finite loss"
        stderr.print(
            escape(
                f"error: training {record.status} ({message}); recorded as status "
                f"'{record.status}' (the meta-learner never learns a score from it): lower the "
                "learning rate or check the data"
            ),
            soft_wrap=True,
        )
        raise typer.Exit(1)
    problem = record.provenance.notes.get("mlflow_logging_error")
    if problem:
        stderr.print(
            escape(f"error: result given but not recorded in MLflow: {problem}"), soft_wrap=True
        )
        raise typer.Exit(EXIT_NOT_RECORDED)


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """The study ``search`` runs or resumes: sampler, trial budget, seed, space, storage."""

    sampler: Annotated[
        str,
        typer.Option(
            "--sampler", help="random | tpe | gp (TPE and GP model after max(3, trials//4))"
        ),
    ] = "tpe"
    trials: Annotated[int, typer.Option("--trials", min=1, help="Trials to reach (resumes).")]
    seed: Annotated[int, typer.Option("--seed")] = 0
    space: Annotated[str, typer.Option("--space", help="Search space name.")] = "cpu-zoo"
    storage: Annotated[
        Path | None,
        typer.Option(
            "--storage", help="Optuna SQLite file (default: $METALLMIX_HOME/studies.sqlite)."
        ),
    ] = None
    study: Annotated[str | None, typer.Option("--study", help="Study name (default derived).")] = (
        None
    )

    def spec(self) -> SearchSpec:
        if self.sampler not in SAMPLERS:
            raise ConfigError(
                f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"
            )
        return SearchSpec(
            sampler=self.sampler,
            trials=self.trials,
            seed=self.seed,
            space=get_space(self.space),
            storage=self.storage,
            study_name=self.study,
        )


@dataclass(frozen=True, kw_only=True)
class SearchBackendOptions(BackendOptions):
    """The backend options plus ``--parallel``: trials asked ahead (with a backend only)."""

    parallel: Annotated[
        int | None,
        typer.Option(
            "--parallel", min=1, help="Trials asked ahead and run at once (backend only)."
        ),
    ] = None

    def settings(self, threads: int | None, **given: Any) -> TrialSettings:
        settings = super().settings(threads, **given)
        return settings if settings.backend is None else settings.replace(parallel=self.parallel)


@options_from("options", SearchOptions)
@options_from("store", KbOptions)
@options_from("execution", SearchBackendOptions)
def search_command(
    *,
    data: Path = typer.Option(..., "--data", help="Dataset (.npz, CSV manifest or folder)."),
    options: SearchOptions,  # expanded into its options
    modality: str | None = typer.Option(None, "--modality"),
    max_train_images: int | None = MaxTrainOption,
    max_val_images: int | None = typer.Option(None, "--max-val-images", min=2),
    threads: int | None = ThreadsOption,
    store: KbOptions,  # expanded into its options
    execution: SearchBackendOptions,  # expanded into its options
    no_track: bool = NoTrackOption,
    as_json: bool = JsonOption,
) -> None:
    """Random-search or TPE baseline: an Optuna study, one MLflow run per trial, resumable.

    Exit 3: the study is complete but MLflow failed to record some trials (the last line
    says how many and why; their results are in the study and the KB).
    """
    search = options.spec()
    dataset = load_dataset(data, modality=modality, seed=options.seed)
    settings = execution.settings(
        threads,
        max_train_images=max_train_images,
        max_val_images=max_val_images,
        track=not no_track,
    )
    with progress(f"{search.sampler} search on {dataset.name}", search.trials) as advance:
        result = run_search(
            dataset,
            search,
            kb=store.open(),
            on_trial=lambda summary: advance(1),
            settings=settings,
        )
    if settings.backend is not None:
        settings.backend.close()

    def render(console: Console) -> None:
        table = Table(title=f"study {result.study_name} ({result.sampler})")
        for column in ("#", "state", "model", "val acc", "seconds"):
            table.add_column(column)
        for t in result.trials:
            table.add_row(
                str(t.number),
                t.status or t.state,
                t.model or "",
                f"{t.value:.4f}" if t.value is not None else "-",
                f"{t.seconds:.1f}" if t.seconds is not None else "-",
            )
        console.print(table)
        console.print(
            f"best: {result.best_model} val_accuracy={result.best_value} "
            f"(MLflow run {result.best_run_id}); storage {result.storage}"
        )

    emit(result.to_dict(), as_json, render)
    not_recorded([t.tracking_error for t in result.trials], "trial")


def not_recorded(problems: list[str | None], what: str) -> None:
    """After the result is out: one line and exit 3 when MLflow failed to record runs that
    trained (their results are kept in the KB / study)."""
    found = [p for p in problems if p]
    if found:
        stderr.print(
            escape(
                f"error: result given but {len(found)} {what}(s) not recorded in MLflow: {found[0]}"
            ),
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_NOT_RECORDED)


BUILD_KINDS = ("all", "pretrained", "scratch", "full")


@dataclass(frozen=True, kw_only=True)
class BuildPlan:
    """Which trials the learning plan holds per task, and of which kind."""

    configs_per_task: Annotated[
        int, typer.Option("--configs-per-task", min=0, help="From-scratch configurations per task.")
    ] = 4
    probes_per_task: Annotated[
        int,
        typer.Option(
            "--probes-per-task", min=0, help="Pretrained EfficientNet-Lite linear probes per task."
        ),
    ] = 9
    last_stages_per_task: Annotated[
        int,
        typer.Option(
            "--last-stages-per-task", min=0, help="Last-stages fine-tunes per small task."
        ),
    ] = 1
    full_per_task: Annotated[
        int,
        typer.Option(
            "--full-per-task", min=0, help="Full fine-tunes of EfficientNet-Lite per small task."
        ),
    ] = 2
    kind: Annotated[
        str,
        typer.Option(
            "--kind", help="Run only 'pretrained', 'scratch' or 'full' (full fine-tunes) trials."
        ),
    ] = "all"

    def trials(self, tasks: list[Any], seed: int) -> list[Any]:
        """The plan's trials for ``tasks``, only those of ``kind``."""
        from metallmix.tools.training.build import learning_plan  # start-up: pandas

        if self.kind not in BUILD_KINDS:
            raise ConfigError(f"--kind must be one of {', '.join(BUILD_KINDS)}, got {self.kind!r}")
        trials = learning_plan(
            tasks,
            scratch_per_task=self.configs_per_task,
            probes_per_task=self.probes_per_task,
            last_stages_per_task=self.last_stages_per_task,
            full_per_task=self.full_per_task,
            seed=seed,
        )
        if self.kind == "full":
            return [t for t in trials if t.hp.extra.get("finetune") == "full"]
        if self.kind != "all":
            return [t for t in trials if t.pretrained == (self.kind == "pretrained")]
        return trials


@dataclass(frozen=True, kw_only=True)
class BuildShare:
    """How this process runs its share of the plan: threads, shard, order, how many, and
    the validation cap."""

    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads per run.")] = 1
    shard: Annotated[str, typer.Option("--shard", help="i/n: run every n-th trial from i.")] = "0/1"
    reverse: Annotated[
        bool,
        typer.Option("--reverse", help="Run the plan from its end (a 2nd process on the same KB)."),
    ] = False
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Stop after N trials.")] = None
    max_val_images: Annotated[
        int | None,
        typer.Option("--max-val-images", min=2, help="Cap on validation images (default: all)."),
    ] = None

    def index_count(self) -> tuple[int, int]:
        try:
            index, count = (int(p) for p in self.shard.split("/"))
        except ValueError:
            raise ConfigError(
                f"--shard must look like i/n (e.g. 0/2), got {self.shard!r}"
            ) from None
        return index, count

    def todo(self, trials: list[Any], done: set[str]) -> tuple[list[Any], int]:
        """This shard's trials not yet done (in the chosen order, at most ``limit``), and
        how many of the shard's are done already."""
        index, count = self.index_count()
        mine = [t for i, t in enumerate(trials) if i % count == index]
        todo = [t for t in mine if t.key not in done]
        n_done = len(mine) - len(todo)
        if self.reverse:
            todo.reverse()
        if self.limit is not None:
            todo = todo[: self.limit]
        return todo, n_done


@options_from("plan", BuildPlan)
@options_from("share", BuildShare)
@options_from("execution", BackendOptions)
def build_command(
    *,
    datasets: list[Path] = typer.Option(
        ..., "--datasets", help="Source datasets (repeat, or a shell glob after one flag)."
    ),
    extra: list[Path] = typer.Argument(None, help="More dataset files (from a shell glob)."),
    plan: BuildPlan,  # expanded into its options
    feature_cache: Path | None = typer.Option(
        None, "--feature-cache", help="Folder keeping frozen-backbone features across runs."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the sampled configurations."),
    share: BuildShare,  # expanded into its options
    kb: Path | None = typer.Option(None, "--kb", help=KB_HELP),
    execution: BackendOptions,  # expanded into its options
    no_track: bool = typer.Option(
        False,
        "--no-track",
        help="Record the runs in the KB only, nothing in MLflow. Without it, a failure to "
        "record in MLflow keeps the run in the KB and exits 3.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Build a KB from real runs on the datasets and derived tasks (resumable by trial key)."""
    # start-up time: pandas loads only for this verb
    from metallmix.tools.training.build import build, default_tasks_for, done_keys, resolve_sources

    index, count = share.index_count()
    sources = resolve_sources([*datasets, *(extra or [])])
    tasks = default_tasks_for(sources)
    trials = plan.trials(tasks, seed)
    store = open_kb(kb)
    todo, n_done = share.todo(trials, done_keys(store))
    kind = plan.kind
    stderr.print(
        f"{len(tasks)} tasks, {len(trials)} {'' if kind == 'all' else kind + ' '}trials; "
        f"shard {index}/{count}: {n_done} done, {len(todo)} to run -> "
        f"{store.location}"
    )
    counts = {"ok": 0, "diverged": 0, "failed": 0}
    errors: list[str] = []
    untracked: list[str | None] = []
    settings = execution.settings(
        share.threads,
        max_val_images=share.max_val_images,
        feature_cache=FeatureCache(feature_cache),
        track=not no_track,
    )
    with progress("kb build", len(todo)) as advance:
        for event in build(store, todo, sources, settings=settings):
            if event.record is not None:
                counts[event.record.status] = counts.get(event.record.status, 0) + 1
                problem = event.record.provenance.notes.get("mlflow_logging_error")
                untracked.append(str(problem) if problem else None)
                out = event.record.outcomes
                shown = " ".join(
                    f"{name}={'-' if v is None else f'{v:.3f}'}"
                    for name, v in (
                        ("val_bal", out.val_balanced_accuracy),
                        ("test_bal", out.test_balanced_accuracy),
                    )
                )
                finetune = event.record.hyperparameters.extra.get("finetune")
                stderr.print(
                    f"[{event.done}/{event.total}] {event.trial.task.name} "
                    f"{event.trial.model}{'/' + str(finetune) if finetune else ''} "
                    f"{event.record.status} {shown} {out.train_seconds or 0:.1f}s"
                )
            else:
                counts["failed"] += 1
                errors.append(f"{event.trial.task.name} {event.trial.model}: {event.error}")
                stderr.print(f"[{event.done}/{event.total}] failed: {errors[-1]}")
            advance(1)
    if settings.backend is not None:
        settings.backend.close()
    summary = store.info()
    result = {
        "tasks": [t.name for t in tasks],
        "trials_planned": len(trials),
        "ran": sum(counts.values()),
        "by_status_this_run": counts,
        "errors": errors,
        "kb": summary.to_dict(),
    }

    def render(console: Console) -> None:
        console.print(
            f"ran {result['ran']} trials ({counts}); KB {summary.location} now holds "
            f"{summary.total} runs over {len(summary.by_dataset)} tasks"
        )

    emit(result, as_json, render)
    not_recorded(untracked, "run")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
    app.command("search")(search_command)
    kb_app.command("build")(build_command)
