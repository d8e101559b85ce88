"""Random-search and TPE baselines: an Optuna study over the same space and trainer.

These are what a zero-shot recommendation is measured against, so they use exactly the
search space the recommender draws from and exactly the recorded trainer (one MLflow run per
trial, nested under one parent run per study). The study lives in SQLite: a search killed
mid-trial resumes where it stopped, re-running the interrupted configuration first so the
sequence of trials is the one an uninterrupted search would have produced.
Only one process should drive a given study at a time (a running trial found on start-up is
taken to be an interrupted one).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metallmix import config
from metallmix.errors import ConfigError, MetaLLMiXError
from metallmix.tools import tracking
from metallmix.tools.datasets import Dataset
from metallmix.tools.kb.records import Hyperparameters, RunRecord, Scalar
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.search_space import (
    CPU_ZOO_SPACE,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    make_hyperparameters,
)
from metallmix.tools.training.distributed import TrialJob, TrialRunner
from metallmix.tools.training.runner import RunSpec
from metallmix.tools.training.settings import TrialSettings

SAMPLERS = ("random", "tpe", "gp")
# Model-based samplers (TPE, GP) draw their first ``n_startup_trials`` at random; Optuna's
# default (10) would make TPE@10 a random search. A quarter of the budget, at least 3 (the
# fewest points a density or GP model is worth fitting on), leaves the model most trials.
MIN_STARTUP_TRIALS = 3
SEARCH_EXPERIMENT = "metallmix-search"
_PARENT_ATTR = "mlflow_parent_run_id"


def distributions(space: SearchSpace) -> dict[str, Any]:
    """Optuna distributions for ``space``: the model is one more categorical parameter."""
    from optuna.distributions import (  # heavy: Optuna loads only when a search runs
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {"model": CategoricalDistribution(list(space.models))}
    for name, param in space.union_params().items():
        if isinstance(param, FloatRange):
            out[name] = FloatDistribution(param.low, param.high, log=param.log)
        elif isinstance(param, IntRange):
            out[name] = IntDistribution(param.low, param.high)
        elif isinstance(param, Choice):
            out[name] = CategoricalDistribution(list(param.values))
    return out


def startup_trials(budget: int | None) -> int:
    """Random trials a model-based sampler draws before its model acts:
    ``max(3, budget // 4)`` (3 at budget 10, so 7 trials are TPE's or the GP's own);
    Optuna's default of 10 when the budget is unknown."""
    if budget is None:
        return 10
    return max(MIN_STARTUP_TRIALS, budget // 4)


def _sampler(name: str, seed: int, budget: int | None = None) -> Any:
    """The Optuna sampler ``name`` with ``seed``; model-based ones start modelling after
    :func:`startup_trials` of ``budget`` (the same random first draws as ``random``)."""
    import optuna  # heavy: Optuna loads only when a search runs

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(budget))
    if name == "gp":  # Gaussian-process BO (needs torch and SciPy, both dependencies already)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(budget))
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def model_based(sampler: str) -> bool:
    """Whether the sampler's next draw depends on the results so far (run one at a time)."""
    return sampler in ("tpe", "gp")


def random_configs(space: SearchSpace, n: int, seed: int) -> list[tuple[int, str, Hyperparameters]]:
    """The first ``n`` valid configurations a random search with ``seed`` draws, as
    ``(trial number, model, hyperparameters)``: the same sampler, distributions and order as
    :func:`run_search`, so they are exactly that study's first trials (a draw the space
    rejects is skipped, as the search fails it). Nothing is trained or stored."""
    import optuna  # heavy: Optuna loads only when a search runs

    if n < 1:
        raise ConfigError(f"need at least 1 random configuration, got {n}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=_sampler("random", seed), direction="maximize")
    dists = distributions(space)
    out: list[tuple[int, str, Hyperparameters]] = []
    for number in range(100 * n):  # a space that rejects everything must not loop forever
        params: dict[str, Scalar] = dict(study.ask(dists).params)
        model = str(params.pop("model"))
        try:
            hp = make_hyperparameters(space.project(model, params))
        except MetaLLMiXError:
            continue
        out.append((number, model, hp))
        if len(out) == n:
            return out
    raise ConfigError(
        f"space {space.name}: only {len(out)} of {100 * n} random draws were valid configurations"
    )


def default_storage() -> Path:
    return config.home_dir() / "studies.sqlite"


@dataclass
class TrialSummary:
    number: int
    state: str
    value: float | None
    model: str | None
    params: dict[str, Scalar]
    mlflow_run_id: str | None = None
    status: str | None = None
    error: str | None = None
    seconds: float | None = None
    # the run trained and is in the KB, but MLflow failed to record (part of) it
    tracking_error: str | None = None


@dataclass
class SearchResult:
    study_name: str
    storage: str
    sampler: str
    trials_target: int
    trials_done: int
    resumed: int
    best_value: float | None
    best_model: str | None
    best_params: dict[str, Scalar]
    best_run_id: str | None
    parent_run_id: str | None
    trials: list[TrialSummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counted(trial: Any) -> bool:
    """Trials that used up budget: finished, or failed with a recorded error."""
    from optuna.trial import TrialState  # heavy: Optuna loads only when a search runs

    return trial.state == TrialState.COMPLETE or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )


def _summary(trial: Any) -> TrialSummary:
    params = dict(trial.params)
    return TrialSummary(
        number=trial.number,
        state=trial.state.name,
        value=trial.value if trial.values else None,
        model=params.pop("model", None),
        params=params,
        mlflow_run_id=trial.user_attrs.get("mlflow_run_id"),
        status=trial.user_attrs.get("status"),
        error=trial.user_attrs.get("error"),
        seconds=trial.user_attrs.get("seconds"),
        tracking_error=trial.user_attrs.get("tracking_error"),
    )


@dataclass
class OpenedStudy:
    """An Optuna study ready to ask from, with its MLflow parent run (re)opened."""

    study: Any
    name: str
    storage_path: Path
    distributions: dict[str, Any]
    resumed: int
    parent_run_id: str | None  # None: an untracked search (no MLflow client)
    client: Any


def open_study(
    dataset_name: str,
    *,
    sampler: str,
    seed: int,
    space: SearchSpace,
    storage: Path | None,
    study_name: str | None,
    client: Any,
    experiment: str,
    extra_params: dict[str, Any] | None = None,
    budget: int | None = None,
) -> OpenedStudy:
    """Create or resume a study; shared by the local and the distributed search.

    Trials left RUNNING by an interrupted search are failed and re-queued with the same
    parameters, so a resumed search retries what was cut off instead of skipping it.
    ``budget`` (the study's trials) sets a model-based sampler's random start-up.
    """
    import optuna  # heavy: Optuna loads only when a search runs
    from optuna.trial import TrialState  # heavy: Optuna loads only when a search runs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_path = Path(storage) if storage is not None else default_storage()
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    name = study_name or f"{dataset_name}-{sampler}-s{seed}"
    study = optuna.create_study(
        study_name=name,
        storage=f"sqlite:///{storage_path.resolve()}",
        sampler=_sampler(sampler, seed, budget),
        direction="maximize",
        load_if_exists=True,
    )
    existing_sampler = study.user_attrs.get("sampler")
    if existing_sampler is not None and existing_sampler != sampler:
        raise ConfigError(
            f"study {name!r} in {storage_path} was run with sampler {existing_sampler!r}, "
            f"not {sampler!r}; pick another --study name"
        )
    study.set_user_attr("sampler", sampler)
    study.set_user_attr("space", space.name)

    resumed = 0
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(stale.params), skip_if_exists=False)
        resumed += 1

    parent = study.user_attrs.get(_PARENT_ATTR)
    if client is None:  # untracked (--no-track): no parent run, none re-opened
        parent = None
    elif parent is None:
        parent = client.create_run(
            tracking.experiment_id(client, experiment),
            tags={tracking.KIND_TAG: tracking.SEARCH_KIND, "metallmix.study": name},
            run_name=f"search:{name}",
        ).info.run_id
        values: dict[str, Any] = {
            "dataset": dataset_name,
            "sampler": sampler,
            "seed": seed,
            "space": space.name,
            "storage": str(storage_path),
            "study": name,
        }
        if model_based(sampler):
            values["n_startup_trials"] = startup_trials(budget)
        values.update(extra_params or {})
        client.log_batch(parent, params=_params(values))
        study.set_user_attr(_PARENT_ATTR, parent)
    else:
        client.update_run(parent, status="RUNNING")
    return OpenedStudy(study, name, storage_path, distributions(space), resumed, parent, client)


def tell_record(study: Any, trial: Any, record: RunRecord, seconds: float) -> None:
    """Report a finished run to Optuna, keeping the links back to MLflow and the KB."""
    trial.set_user_attr("mlflow_run_id", record.provenance.mlflow_run_id)
    trial.set_user_attr("record_id", record.run_id)
    trial.set_user_attr("status", record.status)
    trial.set_user_attr("seconds", seconds)
    problem = record.provenance.notes.get("mlflow_logging_error")
    if problem:
        trial.set_user_attr("tracking_error", str(problem)[:500])
    study.tell(trial, record.outcomes.val_accuracy or 0.0)


def search_result(opened: OpenedStudy, *, sampler: str, trials: int) -> SearchResult:
    """Summarise a study (local or distributed) once its budget is used."""
    from optuna.trial import TrialState  # heavy: Optuna loads only when a search runs

    all_trials = opened.study.get_trials(deepcopy=False)
    completed = [t for t in all_trials if t.state == TrialState.COMPLETE]
    best = max(completed, key=lambda t: t.value or 0.0) if completed else None
    best_params = dict(best.params) if best is not None else {}
    best_model = best_params.pop("model", None)
    return SearchResult(
        study_name=opened.name,
        storage=str(opened.storage_path),
        sampler=sampler,
        trials_target=trials,
        trials_done=sum(_counted(t) for t in all_trials),
        resumed=opened.resumed,
        best_value=best.value if best is not None else None,
        best_model=best_model,
        best_params=best_params,
        best_run_id=best.user_attrs.get("mlflow_run_id") if best is not None else None,
        parent_run_id=opened.parent_run_id,
        trials=[_summary(t) for t in all_trials],
    )


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """An Optuna study: its seed and space, where it is stored, which MLflow experiment
    holds its runs. ``study_name`` None derives one from the dataset and the settings."""

    seed: int = 0
    space: SearchSpace = CPU_ZOO_SPACE
    storage: Path | None = None
    study_name: str | None = None
    experiment: str = SEARCH_EXPERIMENT


@dataclass(frozen=True, kw_only=True)
class SearchSpec(StudySpec):
    """A search: ``sampler`` (random, tpe or gp) until ``trials`` trials used the budget."""

    sampler: str
    trials: int


def run_search(
    dataset: Dataset,
    search: SearchSpec,
    *,
    kb: KnowledgeBase | None = None,
    on_trial: Callable[[TrialSummary], None] | None = None,
    settings: TrialSettings = TrialSettings(),
) -> SearchResult:
    """Run (or resume) an Optuna study until ``search.trials`` trials have used up the budget.

    The objective is the validation accuracy of the recorded run; a diverged run scores its
    best validation accuracy before diverging (0 when it never finished an epoch). A
    configuration the trainer rejects (e.g. a model that cannot run at that image size) is
    a failed trial that still counts, as it would for any practitioner.

    Optuna's ask/tell stays here, in one storage; the trials run on ``settings.backend``
    (default: this process, one after the other, with ``settings.progress`` called after
    each epoch). ``settings.parallel`` trials are asked ahead and run at once (default: what
    the backend holds); with ``parallel=1`` the sequence of trials is exactly the in-process
    one, since the sampler (TPE) sees every told result before the next ask. A trial whose
    worker died on every attempt is told FAIL with the reason and counts against the budget.
    ``settings.track=False`` records the trials in the study and the KB, nothing in MLflow.
    """
    from optuna.trial import TrialState  # heavy: Optuna loads only when a search runs

    trials, space, experiment = search.trials, search.space, search.experiment
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    settings = settings.resolved()  # the store is checked before any study or run is made
    opened = open_study(
        dataset.name,
        sampler=search.sampler,
        seed=search.seed,
        space=space,
        storage=search.storage,
        study_name=search.study_name,
        client=tracking.client(settings.uri) if settings.track else None,
        experiment=experiment,
        # the plain in-process search logs the parameters it always did
        extra_params={"backend": settings.backend.name} if settings.backend is not None else None,
        budget=trials,
    )
    study, name, dists = opened.study, opened.name, opened.distributions
    parent, client = opened.parent_run_id, opened.client
    runner = TrialRunner(settings, kb=kb)
    width = runner.width()
    data = runner.ship(dataset)

    def budget_used() -> int:
        return sum(_counted(t) for t in study.get_trials(deepcopy=False))

    def next_job() -> tuple[Any, TrialJob, Any] | None:
        while budget_used() + runner.in_flight < trials:
            trial = study.ask(dists)
            params: dict[str, Scalar] = dict(trial.params)
            model = str(params.pop("model"))
            started = time.perf_counter()
            try:
                hp = make_hyperparameters(space.project(model, params))
            except MetaLLMiXError as exc:
                trial.set_user_attr("error", str(exc)[:1000])
                trial.set_user_attr("seconds", time.perf_counter() - started)
                study.tell(trial, state=TrialState.FAIL)
                _notify(on_trial, study, trial.number)
                continue
            spec = RunSpec(
                model=model,
                hp=hp,
                seed=search.seed + trial.number,
                experiment=experiment,
                parent_run_id=parent,
                tags={"metallmix.study": name, "metallmix.trial": str(trial.number)},
                pretrained=space.is_pretrained(model),
            )
            job = runner.job(f"{name}#{trial.number}", spec)
            return trial, job, data
        return None

    try:
        for finished in runner.run(next_job, width):
            trial = finished.payload
            if finished.record is None:
                trial.set_user_attr("error", finished.failure[:1000])
                trial.set_user_attr("seconds", finished.seconds)
                study.tell(trial, state=TrialState.FAIL)
            else:
                tell_record(study, trial, finished.record, finished.seconds)
            _notify(on_trial, study, trial.number)
    except Exception:
        # A bug, not a trial result: its trial is left RUNNING, so a resumed search re-runs it.
        if parent is not None:
            client.set_terminated(parent, status="FAILED")
        raise
    if parent is not None:
        _close_parent(client, parent)

    return search_result(opened, sampler=search.sampler, trials=trials)


def _close_parent(client: Any, parent: str) -> None:
    """The search's parent run FINISHED; the trials are told and in the KB by now, so a
    store that fails here is logged, never raised (it would cost the search's result)."""
    try:
        client.set_terminated(parent, status="FINISHED")
    except Exception as exc:
        import logging

        logging.getLogger(__name__).warning(
            "could not close the search's MLflow run %s: %s",
            parent,
            tracking.redact_text(str(exc)),
        )


def _notify(on_trial: Callable[[TrialSummary], None] | None, study: Any, number: int) -> None:
    if on_trial is not None:
        on_trial(_summary(study.get_trials(deepcopy=False)[number]))


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param  # heavy: MLflow loads only when a run is logged

    return [Param(k, str(v)) for k, v in values.items()]
