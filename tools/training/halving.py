"""Verify a shortlist: train its top-K configurations with successive halving, keep the best.

Leave-one-dataset-out shows the meta-learner's *shortlist* is far more reliable than its
single pick (training its top 5 and keeping the best lands at normalised regret ~0.02), so
a user who grants a small budget should get that, not a search from scratch.

The algorithm is synchronous successive halving (Jamieson & Talwalkar, 2016) with two
rungs: every candidate is trained for a short first rung of ``r0`` epochs, then the better
half (``max(1, n // eta)``, Optuna's promotion rule) is trained for its full epochs. It runs
on the machinery ``metallmix search`` uses: one Optuna study in the same SQLite storage
(:func:`~metallmix.tools.training.search.open_study`; the candidates are *enqueued* with
``enqueue_trial``), the same trainer, the same execution backends
(:mod:`~metallmix.tools.training.distributed`: only the driver writes MLflow and the KB)
and per-epoch validation balanced accuracy reported to Optuna (``trial.report``).

Why not Optuna's ``SuccessiveHalvingPruner`` as the scheduler: it decides each trial's
promotion when *that* trial reaches a rung, against the trials that reached it before. Run
one after another, the first candidate is therefore always promoted and later ones only
compete with their predecessors, so "the better half continues" would not hold
(``tests/test_verify.py`` shows it on Optuna itself). Here every candidate finishes a rung
before anyone is promoted.

Each candidate trains under its full schedule (a cosine decays over all its epochs). Its
first-rung run pauses after ``r0`` epochs and saves a checkpoint
(:mod:`~metallmix.tools.training.checkpoint`); a promoted candidate *continues* from there
to its full epochs, exactly as an uninterrupted run would, so promotion costs only the
remaining epochs. Both are recorded runs whose records say what they are: the first rung a
low-fidelity snapshot (``epochs_run = r0 < epoch_budget``, which the meta-learner does not
learn final scores from), the continuation a complete run (its learning curve whole, its
cost the paused part plus the rest). A worker that cannot see the checkpoint (another
machine) trains the full run from scratch: same result, more time. Checkpoints live beside
the study (``verify-checkpoints/<study>/``) and are removed once the study is complete.

Every run is one Optuna trial (user attributes ``candidate_id`` and ``rung``). A killed
run is left RUNNING; the next invocation fails it and re-queues the same configuration
(``open_study``), so it is retried, and finished runs are never retrained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from metallmix.errors import ConfigError
from metallmix.tools import tracking
from metallmix.tools.datasets import Dataset, stratified_sample
from metallmix.tools.kb.records import RunRecord, Scalar
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Candidate
from metallmix.tools.meta.search_space import SearchSpace, hp_values
from metallmix.tools.training.distributed import TrialJob, TrialRunner
from metallmix.tools.training.runner import RunSpec
from metallmix.tools.training.search import OpenedStudy, StudySpec, distributions, open_study
from metallmix.tools.training.search import default_storage as search_storage
from metallmix.tools.training.settings import TrialSettings
from metallmix.tools.training.trainer import DEFAULTS

VERIFY_KIND = "verify"
VERIFY_EXPERIMENT = "metallmix-recommendations"  # beside the recommendation it nests under
PLAN_ATTR = "verify_plan"
ETA = 2
DEFAULT_FIRST_RUNG = 1
# A first rung is "predictive" when, within a dataset, runs ranked by their validation
# accuracy at that epoch rank about as they do at the end (mean Spearman over datasets).
MIN_RUNG_SPEARMAN = 0.7
MIN_CURVES_PER_DATASET = 4


# ----------------------------------------------------------------------------- the rung


class RungChoice(BaseModel):
    """The first rung's epochs and where that number came from."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(ge=1)
    source: str = Field(description="'kb-learning-curves', 'default' or 'given'")
    spearman: float | None = Field(default=None, description="mean within-dataset Spearman")
    datasets: int = Field(default=0, description="KB datasets whose curves were used")
    reason: str = ""


def _spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr  # heavy: SciPy loads only when a rung is chosen

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    rho = float(spearmanr(a, b).statistic)
    return rho if rho == rho else None  # NaN when a side is constant


def _curve(record: RunRecord) -> list[float]:
    balanced = getattr(record.outcomes, "balanced_learning_curve", None)
    return list(balanced) if balanced else list(record.outcomes.learning_curve)


def first_rung(records: Sequence[RunRecord], full_epochs: int, *, eta: int = ETA) -> RungChoice:
    """The shortest first rung whose ranking the KB's learning curves say is trustworthy.

    For each epoch ``e`` below ``full_epochs / eta`` (a first rung must save time), the
    Spearman correlation between validation accuracy at epoch ``e`` and the run's final
    (best) validation accuracy is computed within each KB dataset with enough complete
    curves, and averaged. The smallest ``e`` reaching :data:`MIN_RUNG_SPEARMAN` wins; with
    no usable curves the first rung is :data:`DEFAULT_FIRST_RUNG` epoch.
    """
    cap = max(1, full_epochs // eta)
    by_dataset: dict[str, list[list[float]]] = {}
    for record in records:
        curve = _curve(record)
        if record.status != "ok" or len(curve) < 2 or not record.outcomes.completed:
            continue  # a paused or multi-fidelity snapshot has no final value to rank by
        by_dataset.setdefault(record.dataset, []).append(curve)
    best_mean: tuple[int, float, int] | None = None
    for epoch in range(1, cap + 1):
        rhos = []
        for curves in by_dataset.values():
            usable = [c for c in curves if len(c) > epoch]
            if len(usable) < MIN_CURVES_PER_DATASET:
                continue
            rho = _spearman([c[epoch - 1] for c in usable], [max(c) for c in usable])
            if rho is not None:
                rhos.append(rho)
        if not rhos:
            continue
        mean = statistics.fmean(rhos)
        if best_mean is None or mean > best_mean[1]:
            best_mean = (epoch, mean, len(rhos))
        if mean >= MIN_RUNG_SPEARMAN:
            return RungChoice(
                epochs=epoch,
                source="kb-learning-curves",
                spearman=round(mean, 4),
                datasets=len(rhos),
                reason=(
                    f"in {len(rhos)} KB datasets, validation accuracy after {epoch} epoch(s) "
                    f"ranks runs like the final one (mean Spearman {mean:.2f} >= "
                    f"{MIN_RUNG_SPEARMAN})"
                ),
            )
    if best_mean is not None:
        epoch, mean, n = best_mean
        return RungChoice(
            epochs=epoch,
            source="kb-learning-curves",
            spearman=round(mean, 4),
            datasets=n,
            reason=(
                f"no epoch <= {cap} reaches Spearman {MIN_RUNG_SPEARMAN} in the KB's curves; "
                f"epoch {epoch} ranks best (mean Spearman {mean:.2f} over {n} datasets)"
            ),
        )
    return RungChoice(
        epochs=min(DEFAULT_FIRST_RUNG, cap),
        source="default",
        reason="the KB has no learning curves to choose from; first rung = 1 epoch",
    )


# ----------------------------------------------------------------------------- results


class RunResult(BaseModel):
    """One rung of one candidate: a recorded training run (or why there is none)."""

    model_config = ConfigDict(extra="forbid")

    rung: int
    epochs: int
    trial: int | None = None
    state: str = Field(description="done, failed or skipped-budget")
    value: float | None = Field(default=None, description="validation balanced accuracy")
    metric: str = "balanced_accuracy"
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    test_balanced_accuracy: float | None = None
    seconds: float | None = Field(default=None, description="wall time of the run")
    train_seconds: float | None = None
    mlflow_run_id: str | None = None
    record_id: str | None = None
    error: str | None = None


class CandidateResult(BaseModel):
    """A shortlisted candidate's path through the rungs."""

    model_config = ConfigDict(extra="forbid")

    candidate_id: str
    model: str
    hyperparameters: dict[str, Scalar]
    full_epochs: int
    predicted_accuracy: float | None = None
    zero_shot: bool = False
    status: str = Field(description="winner, finalist, pruned, failed or skipped-budget")
    runs: list[RunResult] = Field(default_factory=list)

    @property
    def final(self) -> RunResult | None:
        """The run at the candidate's full epochs, when it has one."""
        return next(
            (r for r in self.runs if r.epochs == self.full_epochs and r.state == "done"), None
        )

    @property
    def best_known(self) -> RunResult | None:
        """The run at the most epochs that finished."""
        done = [r for r in self.runs if r.state == "done"]
        return max(done, key=lambda r: r.epochs) if done else None


class VerifyResult(BaseModel):
    """What a verification found, what it cost and where everything is recorded."""

    model_config = ConfigDict(extra="forbid")

    study_name: str
    storage: str
    dataset: str
    first_rung: RungChoice
    eta: int
    candidates: list[CandidateResult]
    winner_id: str | None
    zero_shot_id: str
    winner_is_zero_shot: bool
    winner_value: float | None = None
    zero_shot_value: float | None = Field(
        default=None, description="the zero-shot pick's value at the most epochs it trained"
    )
    zero_shot_epochs: int | None = None
    metric: str = "balanced_accuracy"
    budget_seconds: float | None = None
    seconds_spent: float = Field(description="summed wall time of every run of the study")
    wall_seconds: float = Field(description="this invocation's wall time")
    stopped_by_budget: bool = False
    complete: bool = Field(description="every planned run finished, failed or was pruned")
    runs_this_time: int = 0
    runs_resumed: int = Field(default=0, description="finished runs found from earlier")
    retried: int = Field(default=0, description="killed runs re-queued on start-up")
    mlflow_run_id: str | None = None
    parent_run_id: str | None = None
    recovered: int = Field(
        default=0,
        description="runs found in the KB but not in the study (an interrupt "
        "between the two writes), completed from the KB instead of trained again",
    )
    tracking_error: str | None = Field(
        default=None, description="why the verification's summary is not in MLflow"
    )
    val_images: int | None = Field(
        default=None, description="validation images every run was scored on (after the cap)"
    )
    winner_margin: float | None = Field(
        default=None,
        description="half-width of the 95% band of the winner's validation value: the "
        "validation set's sampling noise (binomial per class), not a training-seed spread",
    )
    indistinct: list[str] = Field(
        default_factory=list,
        description="finalists whose value is within the noise of the winner's: on this "
        "validation set they cannot be told apart from it",
    )

    def candidate(self, candidate_id: str) -> CandidateResult | None:
        return next((c for c in self.candidates if c.candidate_id == candidate_id), None)

    @property
    def winner(self) -> CandidateResult | None:
        return self.candidate(self.winner_id) if self.winner_id else None

    def summary(self) -> str:
        """Two sentences: the verified winner against the zero-shot pick, and the cost."""
        spent = f"{self.seconds_spent:.0f} s of training"
        budget = f" (budget {self.budget_seconds:.0f} s)" if self.budget_seconds else ""
        winner = self.winner
        if winner is None:
            return f"no candidate finished a run; {spent}{budget}"
        best = winner.final or winner.best_known
        assert best is not None
        label = _metric_label(self.metric)
        head = (
            f"verified winner {winner.candidate_id} {winner.model}: val {label} "
            f"{_pct(best.value)} after {best.epochs} epoch(s)"
        )
        if self.winner_is_zero_shot:
            cmp = "; it is the zero-shot pick"
        else:
            zs = self.candidate(self.zero_shot_id)
            status = zs.status if zs is not None else "not verified"
            cmp = (
                f"; zero-shot pick {self.zero_shot_id} ({zs.model if zs else '?'}): "
                f"{_pct(self.zero_shot_value)} after {self.zero_shot_epochs or 0} epoch(s), "
                f"{status}"
            )
        stop = " - stopped by the budget" if self.stopped_by_budget else ""
        return f"{head}{cmp}{self._noise()}. {spent}{budget}{stop}."

    def _noise(self) -> str:
        """What the validation set can resolve: said whenever it is small or the call is close."""
        if self.winner_margin is None or self.val_images is None:
            return ""
        small = self.val_images < SMALL_VALIDATION
        if not small and not self.indistinct:
            return ""
        spread = f"{100 * self.winner_margin:.1f} points"
        note = f"; on {self.val_images} validation images the winner's value is ±{spread} (95%)"
        if self.indistinct:
            note += f", and {', '.join(self.indistinct)} cannot be told apart from it"
        return note


def _metric_label(metric: str) -> str:
    return "balanced accuracy" if metric == "balanced_accuracy" else "accuracy"


# Below this many validation images the summary always states the winner's noise (issue 29:
# a verification that chose by 20 images must not read as precise).
SMALL_VALIDATION = 100


def score_margin(value: float, class_counts: Sequence[int], metric: str) -> float:
    """Half-width of the 95% band of a validation score from the validation set's size alone.

    Binomial per class with each class's recall at ``value`` (balanced accuracy is the mean
    of the class recalls; plain accuracy one binomial over all images). Written here rather
    than bootstrapped because runs keep their scores, not their per-image predictions.
    """
    counts = [int(n) for n in class_counts if n > 0]
    if not counts:
        return 1.0
    v = min(max(value, 0.0), 1.0)
    if metric == "balanced_accuracy":
        se = math.sqrt(sum(v * (1 - v) / n for n in counts)) / len(counts)
    else:
        se = math.sqrt(v * (1 - v) / sum(counts))
    return 1.96 * se


def val_class_counts(dataset: Dataset, max_val_images: int | None, seed: int) -> list[int]:
    """Images per class of the validation set the runs are scored on (the cap applied as the
    runner applies it: a seeded stratified subsample)."""
    if "val" not in dataset.splits:
        return []
    labels = dataset.split("val").labels
    if max_val_images is not None and max_val_images < len(labels):
        labels = labels[stratified_sample(labels, max_val_images, seed)]
    return [int(c) for c in np.bincount(labels, minlength=dataset.n_classes)]


def _indistinct(
    results: Sequence[CandidateResult], winner: CandidateResult, counts: Sequence[int], metric: str
) -> tuple[float | None, list[str]]:
    """The winner's margin and the finalists within the noise of the difference (the two
    margins combined as independent: conservative, the runs share the validation images)."""
    best = winner.final or winner.best_known
    if best is None or best.value is None or not counts:
        return None, []
    margin = score_margin(best.value, counts, metric)
    close = []
    for c in results:
        run = c.final
        if c is winner or run is None or run.value is None:
            continue
        other = score_margin(run.value, counts, metric)
        if best.value - run.value <= math.sqrt(margin**2 + other**2):
            close.append(c.candidate_id)
    return margin, close


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


# ----------------------------------------------------------------------------- planning


def default_study_name(
    dataset_name: str, k: int, seed: int, *, fingerprint: dict[str, Any] | None = None
) -> str:
    """``verify-<dataset>-k<K>-s<seed>-<digest of what else identifies the command>``."""
    digest = hashlib.sha256(
        json.dumps(fingerprint or {}, sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    return f"verify-{dataset_name}-k{k}-s{seed}-{digest}"


def default_storage() -> Path:
    return search_storage()


def checkpoint_dir(storage: Path, study_name: str) -> Path:
    """Where a study's paused first-rung runs wait for promotion: beside its storage."""
    return Path(storage).parent / "verify-checkpoints" / study_name


def load_plan(storage: Path | None, study_name: str) -> dict[str, Any] | None:
    """The plan stored by an earlier invocation of ``study_name``, if any (no study made)."""
    import optuna  # heavy: Optuna loads only when a verification runs

    path = Path(storage) if storage is not None else default_storage()
    if not path.is_file():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{path.resolve()}"
    try:
        study = optuna.load_study(study_name=study_name, storage=url)
    except KeyError:
        return None
    plan = study.user_attrs.get(PLAN_ATTR)
    return dict(plan) if isinstance(plan, dict) else None


def select(candidates: Sequence[Candidate], k: int, zero_shot_id: str) -> list[Candidate]:
    """The zero-shot pick first, then the best-scored others, ``k`` in all, no duplicates."""
    if k < 1:
        raise ConfigError(f"--verify must be at least 1 candidate, got {k}")
    by_id = {c.candidate_id: c for c in candidates}
    if zero_shot_id not in by_id:
        raise ConfigError(
            f"the zero-shot pick {zero_shot_id!r} is not in the shortlist "
            f"({', '.join(by_id) or 'empty'})"
        )
    ordered = [
        by_id[zero_shot_id],
        *sorted((c for c in candidates if c.candidate_id != zero_shot_id), key=lambda c: -c.score),
    ]
    return distinct(ordered)[:k]


def distinct(candidates: Iterable[Candidate]) -> list[Candidate]:
    """``candidates`` in their order, each configuration (model + hyperparameters) once:
    training the same configuration twice would tell nothing new."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for cand in candidates:
        key = json.dumps([cand.model, hp_values(cand.hyperparameters)], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cand)
    return out


def _full_epochs(candidate: Candidate) -> int:
    return int(candidate.hyperparameters.epochs or DEFAULTS["epochs"])


def _params(candidate: Candidate, epochs: int) -> dict[str, Scalar]:
    values = hp_values(candidate.hyperparameters)
    values["epochs"] = epochs
    return {"model": candidate.model, **{k: v for k, v in values.items() if v is not None}}


def _plan_distributions(chosen: Sequence[Candidate], r0: int, space: SearchSpace) -> dict[str, Any]:
    """One distribution per parameter covering every planned run (Optuna wants one kind,
    and for categoricals the same choices, per name across a study): the space's, widened
    to the planned values it lacks; a categorical of the planned values for names it lacks.
    """
    from optuna.distributions import (  # heavy: Optuna loads only when a verification runs
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    values: dict[str, list[Any]] = {}
    for cand in chosen:
        for epochs in (min(r0, _full_epochs(cand)), _full_epochs(cand)):
            for name, value in _params(cand, epochs).items():
                if value not in values.setdefault(name, []):
                    values[name].append(value)
    base = distributions(space)
    out: dict[str, Any] = {}
    for name, planned in values.items():
        dist = base.get(name)
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in planned)
        if isinstance(dist, FloatDistribution) and numeric:
            low, high = min(dist.low, *planned), max(dist.high, *planned)
            out[name] = FloatDistribution(low, high, log=dist.log and low > 0)
        elif isinstance(dist, IntDistribution) and all(isinstance(v, int) for v in planned):
            out[name] = IntDistribution(min(dist.low, *planned), max(dist.high, *planned))
        elif isinstance(dist, CategoricalDistribution):
            extra = [v for v in planned if v not in dist.choices]
            out[name] = CategoricalDistribution([*dist.choices, *extra])
        else:
            out[name] = CategoricalDistribution(planned)
    return out


def _key(params: dict[str, Any]) -> str:
    """A comparable form of a parameter mapping (numbers as rounded floats)."""
    norm = {
        k: round(float(v), 10) if isinstance(v, int | float) and not isinstance(v, bool) else v
        for k, v in params.items()
    }
    return json.dumps(norm, sort_keys=True, default=str)


def _value(record: RunRecord) -> tuple[float, str]:
    """Validation balanced accuracy when the trainer reports it, else validation accuracy."""
    balanced = getattr(record.outcomes, "val_balanced_accuracy", None)
    if balanced is not None:
        return float(balanced), "balanced_accuracy"
    return float(record.outcomes.val_accuracy or 0.0), "accuracy"


# ----------------------------------------------------------------------------- running


def _tell_record(study: Any, trial: Any, record: RunRecord) -> None:
    """Complete ``trial`` with a recorded run: its value, curve and links to MLflow and KB.
    A diverged run is a failed trial (its reason kept): it has no score to rank by."""
    from optuna.trial import TrialState  # heavy: Optuna loads only when a verification runs

    if record.status != "ok":
        trial.set_user_attr("mlflow_run_id", record.provenance.mlflow_run_id)
        trial.set_user_attr("record_id", record.run_id)
        trial.set_user_attr("status", record.status)
        message = record.provenance.notes.get("message") or "non-finite loss"
        trial.set_user_attr("error", f"training {record.status}: {message}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        return
    value, metric = _value(record)
    out = record.outcomes
    for key, attr in (
        ("mlflow_run_id", record.provenance.mlflow_run_id),
        ("record_id", record.run_id),
        ("status", record.status),
        ("metric", metric),
        ("val_accuracy", out.val_accuracy),
        ("test_accuracy", out.test_accuracy),
        ("test_balanced_accuracy", out.balanced_accuracy),
        ("train_seconds", out.train_seconds),
    ):
        trial.set_user_attr(key, attr)
    for step, point in enumerate(_curve(record), start=1):
        trial.report(float(point), step)
    study.tell(trial, value)


def _orphans(kb: KnowledgeBase | None, study: Any, name: str) -> dict[tuple[str, int], RunRecord]:
    """Runs of study ``name`` that reached the KB but not the study, by (candidate, rung).

    The KB row is written first, then the study is told; an interrupt (Ctrl-C, SIGTERM, a
    kill) between the two leaves such a run. Training it again would store it twice, so the
    study is completed from the KB record instead: a run is then in both, never in one.
    """
    if kb is None:
        return {}
    known = {t.user_attrs.get("record_id") for t in study.get_trials(deepcopy=False)}
    found: dict[tuple[str, int], RunRecord] = {}
    for record in kb.iter_records():
        notes = record.provenance.notes
        if notes.get("metallmix.study") != name or record.run_id in known:
            continue
        cid, rung = notes.get("metallmix.candidate"), notes.get("metallmix.rung")
        if cid is None or rung is None:
            continue
        found.setdefault((str(cid), int(str(rung))), record)
    return found


OnRun = Callable[[str, int, RunResult], None]


class _Ledger:
    """The study's runs by (candidate, rung), rebuilt from Optuna on every start."""

    def __init__(self, study: Any) -> None:
        from optuna.trial import TrialState  # heavy: Optuna loads only when a verification runs

        self.done: dict[tuple[str, int], RunResult] = {}
        for trial in study.get_trials(deepcopy=False):
            cid, rung = trial.user_attrs.get("candidate_id"), trial.user_attrs.get("rung")
            if cid is None or rung is None:
                continue
            key = (str(cid), int(rung))
            if trial.state == TrialState.COMPLETE:
                self.done[key] = _run_from_trial(trial, "done")
            elif trial.state == TrialState.FAIL and "error" in trial.user_attrs:
                self.done[key] = _run_from_trial(trial, "failed")

    def seconds(self) -> float:
        return sum(r.seconds or 0.0 for r in self.done.values())


def _run_from_trial(trial: Any, state: str) -> RunResult:
    attrs = trial.user_attrs
    return RunResult(
        rung=int(attrs["rung"]),
        epochs=int(trial.params.get("epochs", attrs.get("epochs", 0))),
        trial=trial.number,
        state=state,
        value=trial.value if state == "done" else None,
        metric=str(attrs.get("metric", "balanced_accuracy")),
        val_accuracy=attrs.get("val_accuracy"),
        test_accuracy=attrs.get("test_accuracy"),
        test_balanced_accuracy=attrs.get("test_balanced_accuracy"),
        seconds=attrs.get("seconds"),
        train_seconds=attrs.get("train_seconds"),
        mlflow_run_id=attrs.get("mlflow_run_id"),
        record_id=attrs.get("record_id"),
        error=attrs.get("error"),
    )


class _Estimator:
    """Predicts a run's wall time from the runs measured so far (else the shortlist's)."""

    def __init__(self, plan: list[Candidate], ledger: _Ledger) -> None:
        self.plan = {c.candidate_id: c for c in plan}
        self.ledger = ledger

    def __call__(self, cid: str, epochs: int) -> float:
        own = [r for (c, _), r in self.ledger.done.items() if c == cid and r.state == "done"]
        measured = [r for r in self.ledger.done.values() if r.state == "done" and r.seconds]
        overhead = (
            statistics.median(max(0.0, (r.seconds or 0) - (r.train_seconds or 0)) for r in measured)
            if measured
            else 0.0
        )
        if own and own[0].train_seconds is not None:
            per_epoch = own[0].train_seconds / max(1, own[0].epochs)
            return per_epoch * epochs + overhead
        cand = self.plan[cid]
        if cand.predicted_seconds is None:
            return overhead
        predicted = cand.predicted_seconds * epochs / _full_epochs(cand)
        ratios = []
        for (c, _), r in self.ledger.done.items():
            other = self.plan.get(c)
            if other is None or other.predicted_seconds in (None, 0) or r.train_seconds is None:
                continue
            assert other.predicted_seconds is not None
            ratios.append(
                r.train_seconds / (other.predicted_seconds * r.epochs / _full_epochs(other))
            )
        scale = statistics.median(ratios) if ratios else 1.0
        return predicted * scale + overhead


@dataclass(frozen=True, kw_only=True)
class HalvingSpec(StudySpec):
    """A successive-halving study: the top ``k`` candidates, halving factor ``eta``, a first
    rung of ``first_rung_epochs`` (None: chosen from the KB's learning curves), at most
    ``budget_seconds`` of summed run time (None: no bound); the study's MLflow run nests
    under ``parent_run_id`` (a recommendation's run)."""

    k: int = 5
    eta: int = ETA
    first_rung_epochs: int | None = None
    budget_seconds: float | None = None
    parent_run_id: str | None = None
    experiment: str = VERIFY_EXPERIMENT


@dataclass(frozen=True)
class _Plan:
    """What a study trains, fixed by its first invocation."""

    chosen: list[Candidate]
    rung: RungChoice
    eta: int
    zero_shot_id: str

    @property
    def r0(self) -> int:
        return self.rung.epochs

    def jobs(self, rung: int, ids: Sequence[str]) -> list[tuple[str, int, int]]:
        """``(candidate, rung, epochs)`` for ``ids`` at ``rung`` (a first rung never trains
        past a candidate's own epochs; a second one only those with epochs left)."""
        by_id = {c.candidate_id: c for c in self.chosen}
        if rung == 0:
            return [(cid, 0, min(self.r0, _full_epochs(by_id[cid]))) for cid in ids]
        return [
            (cid, 1, _full_epochs(by_id[cid])) for cid in ids if _full_epochs(by_id[cid]) > self.r0
        ]


@dataclass
class _Tally:
    """What this invocation found and did, as the halving goes."""

    ledger: _Ledger
    retried: int
    recovered: int
    resumed: int = 0
    runs_now: int = 0
    stopped: bool = False
    skipped: dict[tuple[str, int], RunResult] = field(default_factory=dict)
    promoted: list[str] = field(default_factory=list)


def _stored_plan(
    opened: OpenedStudy,
    dataset_name: str,
    candidates: Sequence[Candidate],
    zero_shot_id: str,
    halving: HalvingSpec,
    kb_records: Sequence[RunRecord] | None,
    extra_plan: dict[str, Any] | None,
) -> _Plan:
    """The plan an earlier invocation stored in the study, else this one's, stored now."""
    study, client, verify_run = opened.study, opened.client, opened.parent_run_id
    plan = study.user_attrs.get(PLAN_ATTR)
    if plan is None:
        chosen = select(candidates, halving.k, zero_shot_id)
        max_full = max(_full_epochs(c) for c in chosen)
        if halving.first_rung_epochs is not None:
            if halving.first_rung_epochs < 1:
                raise ConfigError(
                    f"the first rung needs at least 1 epoch, got {halving.first_rung_epochs}"
                )
            rung = RungChoice(epochs=halving.first_rung_epochs, source="given", reason="given")
        else:
            rung = first_rung(kb_records or [], max_full, eta=halving.eta)
        plan = {
            "candidates": [c.model_dump(mode="json") for c in chosen],
            "zero_shot_id": zero_shot_id,
            "first_rung": rung.model_dump(mode="json"),
            "eta": halving.eta,
            "k": halving.k,
            "seed": halving.seed,
            "dataset": dataset_name,
            **(extra_plan or {}),
        }
        study.set_user_attr(PLAN_ATTR, plan)
        tags = {tracking.KIND_TAG: VERIFY_KIND, "metallmix.study": opened.name}
        if halving.parent_run_id:
            tags["mlflow.parentRunId"] = halving.parent_run_id
        for key, value in tags.items():
            client.set_tag(verify_run, key, value)
        client.log_param(verify_run, "first_rung_epochs", rung.epochs)
        client.log_param(verify_run, "first_rung_source", rung.source)
        client.log_param(verify_run, "candidates", ",".join(c.candidate_id for c in chosen))
        client.log_param(verify_run, "zero_shot_id", zero_shot_id)
    return _Plan(
        chosen=[Candidate.model_validate(c) for c in plan["candidates"]],
        rung=RungChoice.model_validate(plan["first_rung"]),
        eta=int(plan["eta"]),
        zero_shot_id=str(plan["zero_shot_id"]),
    )


def _reclaim(
    study: Any, name: str, plan: _Plan, dists: dict[str, Any], kb: KnowledgeBase | None
) -> tuple[dict[tuple[str, int], Any], int]:
    """Claim each killed run that ``open_study`` re-queued (a WAITING trial) for its
    ``(candidate, rung)``; one whose record reached the KB is completed from it instead.
    Returns the claimed trials and how many were completed from the KB."""
    from optuna.trial import TrialState  # heavy: Optuna loads only when a verification runs

    waiting: dict[tuple[str, int], Any] = {}
    table = {
        _key(_params(c, e)): (c.candidate_id, rg)
        for c in plan.chosen
        for rg, e in ((0, min(plan.r0, _full_epochs(c))), (1, _full_epochs(c)))
    }
    stale = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    orphans = _orphans(kb, study, name) if stale else {}
    recovered = 0
    for frozen in stale:
        fixed = dict(frozen.system_attrs.get("fixed_params", {}))
        match = table.get(_key(fixed))
        if match is None or match in waiting:
            trial = study.ask()  # pops the oldest waiting trial, which is this one
            trial.set_user_attr("note", "not a run of this verification plan")
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial = study.ask({n: dists[n] for n in fixed if n in dists})
        trial.set_user_attr("candidate_id", match[0])
        trial.set_user_attr("rung", match[1])
        orphan = orphans.pop(match, None)
        if orphan is not None:  # trained and stored before the interrupt: not again
            trial.set_user_attr("epochs", int(fixed.get("epochs", 0)))
            trial.set_user_attr("seconds", orphan.outcomes.train_seconds)
            trial.set_user_attr("note", "completed from its KB record after an interrupt")
            _tell_record(study, trial, orphan)
            recovered += 1
            continue
        waiting[match] = trial
    return waiting, recovered


def run_verify(
    dataset: Dataset,
    candidates: Sequence[Candidate],
    *,
    zero_shot_id: str,
    halving: HalvingSpec = HalvingSpec(),
    settings: TrialSettings = TrialSettings(),
    kb: KnowledgeBase | None = None,
    kb_records: Sequence[RunRecord] | None = None,
    extra_plan: dict[str, Any] | None = None,
    on_run: OnRun | None = None,
) -> VerifyResult:
    """Successive halving over the top-``halving.k`` candidates (the zero-shot pick always
    among them), each run trained under ``settings``.

    Resumable: the plan (candidates, rungs, plus ``extra_plan``) is stored in the study on
    the first call and a later call with the same ``study_name`` uses the stored plan,
    whatever ``candidates`` it is given, skipping every run already finished.
    ``halving.budget_seconds`` bounds the summed wall time of the study's runs (earlier
    invocations included): a run is started only when its estimated time still fits, so
    the budget stops the loop between runs, never inside one. ``kb_records`` give the
    learning curves the first rung is chosen from (ignored when
    ``halving.first_rung_epochs`` is given). ``on_run(candidate, rung, result)`` is called
    as each run ends.
    """
    budget_seconds = halving.budget_seconds
    if halving.eta < 2:
        raise ConfigError(f"eta (the halving factor) must be at least 2, got {halving.eta}")
    if budget_seconds is not None and budget_seconds <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {budget_seconds / 60:g}")
    if not settings.track:
        raise ConfigError(
            "successive halving records its study and runs in MLflow; it cannot run untracked"
        )
    wall_start = time.perf_counter()
    settings = settings.resolved()  # the store is checked before any study or run is made
    client = tracking.client(settings.uri)
    name = halving.study_name or default_study_name(dataset.name, halving.k, halving.seed)
    opened = open_study(
        dataset.name,
        sampler="random",
        seed=halving.seed,
        space=halving.space,
        storage=halving.storage,
        study_name=name,
        client=client,
        experiment=halving.experiment,
        extra_params={"k": halving.k, "eta": halving.eta, "method": "successive-halving"},
    )
    study, verify_run = opened.study, opened.parent_run_id
    assert verify_run is not None  # a tracked study always has its parent run

    plan = _stored_plan(
        opened, dataset.name, candidates, zero_shot_id, halving, kb_records, extra_plan
    )
    by_id = {c.candidate_id: c for c in plan.chosen}
    dists = _plan_distributions(plan.chosen, plan.r0, halving.space)
    from optuna.trial import TrialState  # heavy: Optuna loads only when a verification runs

    waiting, recovered = _reclaim(study, name, plan, dists, kb)
    ledger = _Ledger(study)
    tally = _Tally(ledger, retried=opened.resumed - recovered, recovered=recovered)
    tally.resumed = len(ledger.done)
    checkpoints = checkpoint_dir(opened.storage_path, name)
    estimate = _Estimator(plan.chosen, ledger)
    runner = TrialRunner(settings, kb=kb)
    width = runner.width()
    data = runner.ship(dataset)
    fatal: BaseException | None = None

    def run_rung(jobs: list[tuple[str, int, int]]) -> None:
        """Run ``(candidate, rung, epochs)`` jobs not yet done, as wide as the backend allows."""
        nonlocal fatal
        todo = [j for j in jobs if (j[0], j[1]) not in ledger.done]
        started: dict[int, tuple[float, str, int, int]] = {}

        def next_job() -> tuple[Any, TrialJob, Any] | None:
            while todo:
                cid, rg, epochs = todo.pop(0)
                full = _full_epochs(by_id[cid])
                ckpt = checkpoints / f"{cid}.pt"
                paused = ledger.done.get((cid, 0))
                restored = (
                    paused.epochs
                    if rg == 1 and paused is not None and paused.state == "done" and ckpt.is_file()
                    else 0
                )
                cost = estimate(cid, epochs - restored)
                pending = sum(s[0] for s in started.values())
                if (
                    budget_seconds is not None
                    and ledger.seconds() + pending + cost > budget_seconds
                ):
                    tally.stopped = True
                    tally.skipped[(cid, rg)] = RunResult(
                        rung=rg,
                        epochs=epochs,
                        state="skipped-budget",
                        error=(
                            f"estimated {cost:.0f} s would exceed the budget "
                            f"({ledger.seconds() + pending:.0f} of {budget_seconds:.0f} s used)"
                        ),
                    )
                    continue
                params = _params(by_id[cid], epochs)
                trial = waiting.pop((cid, rg), None)
                if trial is None:
                    study.enqueue_trial(
                        params, user_attrs={"candidate_id": cid, "rung": rg}, skip_if_exists=False
                    )
                    trial = study.ask({n: dists[n] for n in params})
                trial.set_user_attr("schedule_epochs", full)
                cand = by_id[cid]
                spec = RunSpec(
                    model=cand.model,
                    hp=cand.hyperparameters.model_copy(update={"epochs": full}),
                    seed=halving.seed,
                    experiment=halving.experiment,
                    parent_run_id=verify_run,
                    pretrained=by_id[cid].pretrained
                    or halving.space.is_pretrained(by_id[cid].model),
                    checkpoint=str(ckpt),
                    stop_after=epochs if epochs < full else None,
                    tags={
                        "metallmix.study": name,
                        "metallmix.trial": str(trial.number),
                        "metallmix.candidate": cid,
                        "metallmix.rung": str(rg),
                    },
                )
                started[trial.number] = (cost, cid, rg, epochs)
                return trial, runner.job(f"{name}#{trial.number}", spec), data
            return None

        try:
            for finished in runner.run(next_job, width):
                trial = finished.payload
                _, cid, rg, epochs = started.pop(trial.number)
                trial.set_user_attr("seconds", finished.seconds)
                trial.set_user_attr("epochs", epochs)
                if finished.record is None:
                    trial.set_user_attr("error", finished.failure[:1000])
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    _tell_record(study, trial, finished.record)
                frozen = study.get_trials(deepcopy=False)[trial.number]
                done = frozen.state == TrialState.COMPLETE
                result = _run_from_trial(frozen, "done" if done else "failed")
                ledger.done[(cid, rg)] = result
                tally.runs_now += 1
                if on_run is not None:
                    on_run(cid, rg, result)
        except Exception as exc:  # a bug: its run is left RUNNING, retried on the next start
            fatal = exc

    def run_rung_or_stop(jobs: list[tuple[str, int, int]]) -> None:
        """Ctrl-C / SIGTERM: the run in training is KILLED by the trainer, left RUNNING in
        the study (re-queued by the next start), and the verification's run is KILLED."""
        try:
            run_rung(jobs)
        except KeyboardInterrupt:
            with contextlib.suppress(Exception):
                client.set_terminated(verify_run, status="KILLED")
            raise

    # Rung 0: every candidate, r0 epochs (its full epochs when those are fewer).
    rung0 = plan.jobs(0, [c.candidate_id for c in plan.chosen])
    run_rung_or_stop(rung0)
    scored = [
        (ledger.done[(cid, 0)].value or 0.0, -i, cid)
        for i, (cid, _, _) in enumerate(rung0)
        if (cid, 0) in ledger.done and ledger.done[(cid, 0)].state == "done"
    ]
    n_promote = max(1, len(plan.chosen) // plan.eta)
    tally.promoted = [cid for _, _, cid in sorted(scored, reverse=True)[:n_promote]]
    if fatal is None:
        run_rung_or_stop(plan.jobs(1, tally.promoted))
    for trial in waiting.values():  # re-queued runs no longer needed (budget, promotion)
        trial.set_user_attr("note", "re-queued run not needed")
        study.tell(trial, state=TrialState.FAIL)
    if fatal is not None:
        client.set_terminated(verify_run, status="FAILED")
        raise fatal

    result = _result(
        opened,
        dataset.name,
        plan,
        tally,
        halving=halving,
        wall=time.perf_counter() - wall_start,
        val_counts=val_class_counts(dataset, settings.max_val_images, halving.seed),
    )
    try:  # the answer is known: a tracking failure is reported, never raised
        _log_summary(client, verify_run, result)
        client.set_terminated(verify_run, status="FINISHED")
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        result = result.model_copy(update={"tracking_error": tracking.redact_text(problem)})
    if result.complete:  # nothing left to continue; an unfinished study keeps them
        shutil.rmtree(checkpoints, ignore_errors=True)
        with contextlib.suppress(OSError):  # the shared folder, once no study uses it
            checkpoints.parent.rmdir()
    return result


def _result(
    opened: OpenedStudy,
    dataset: str,
    plan: _Plan,
    tally: _Tally,
    *,
    halving: HalvingSpec,
    wall: float,
    val_counts: Sequence[int] = (),
) -> VerifyResult:
    chosen, zero_shot_id, ledger = plan.chosen, plan.zero_shot_id, tally.ledger
    skipped, promoted = tally.skipped, tally.promoted
    results: list[CandidateResult] = []
    for cand in chosen:
        cid = cand.candidate_id
        runs = [
            ledger.done.get((cid, rg)) or skipped[(cid, rg)]
            for rg in (0, 1)
            if (cid, rg) in ledger.done or (cid, rg) in skipped
        ]
        results.append(
            CandidateResult(
                candidate_id=cid,
                model=cand.model,
                hyperparameters=hp_values(cand.hyperparameters),
                full_epochs=_full_epochs(cand),
                predicted_accuracy=cand.predicted_accuracy,
                zero_shot=cid == zero_shot_id,
                status="",
                runs=sorted(runs, key=lambda r: r.rung),
            )
        )
    finals = [(c.final.value or 0.0, -i, c) for i, c in enumerate(results) if c.final is not None]
    if finals:
        winner: CandidateResult | None = max(finals, key=lambda t: (t[0], t[1]))[2]
    else:  # no full run finished (budget): the best first-rung result, flagged by its epochs
        partial = [
            ((c.best_known.value or 0.0) if c.best_known else -1.0, -i, c)
            for i, c in enumerate(results)
            if c.best_known is not None
        ]
        winner = max(partial, key=lambda t: (t[0], t[1]))[2] if partial else None
    for c in results:
        states = {r.state for r in c.runs}
        if winner is not None and c.candidate_id == winner.candidate_id:
            c.status = "winner"
        elif c.final is not None and c.candidate_id in promoted:
            c.status = "finalist"
        elif "failed" in states:
            c.status = "failed"
        elif "skipped-budget" in states:
            c.status = "skipped-budget"
        elif c.final is not None:  # trained fully at the first rung, not among the best half
            c.status = "pruned"
        else:
            c.status = "pruned" if c.runs else "skipped-budget"
    zs = next(c for c in results if c.candidate_id == zero_shot_id)
    zs_best = zs.final or zs.best_known
    win_best = (winner.final or winner.best_known) if winner is not None else None
    metrics = {r.metric for c in results for r in c.runs if r.state == "done"}
    metric = "accuracy" if metrics == {"accuracy"} else "balanced_accuracy"
    margin, close = _indistinct(results, winner, val_counts, metric) if winner else (None, [])
    complete = (
        not skipped
        and all(c.status != "skipped-budget" for c in results)
        and all(
            (cid, 1) in ledger.done
            for cid in promoted
            if _full_epochs(next(x for x in chosen if x.candidate_id == cid)) > plan.r0
        )
    )
    return VerifyResult(
        study_name=opened.name,
        storage=str(opened.storage_path),
        dataset=dataset,
        first_rung=plan.rung,
        eta=plan.eta,
        candidates=results,
        winner_id=winner.candidate_id if winner is not None else None,
        zero_shot_id=zero_shot_id,
        winner_is_zero_shot=winner is not None and winner.candidate_id == zero_shot_id,
        winner_value=win_best.value if win_best is not None else None,
        zero_shot_value=zs_best.value if zs_best is not None else None,
        zero_shot_epochs=zs_best.epochs if zs_best is not None else None,
        metric=metric,
        budget_seconds=halving.budget_seconds,
        seconds_spent=ledger.seconds(),
        wall_seconds=wall,
        stopped_by_budget=tally.stopped,
        complete=complete,
        runs_this_time=tally.runs_now,
        runs_resumed=tally.resumed,
        retried=tally.retried,
        recovered=tally.recovered,
        mlflow_run_id=opened.parent_run_id,
        parent_run_id=halving.parent_run_id,
        val_images=sum(val_counts) or None,
        winner_margin=margin,
        indistinct=close,
    )


def _log_summary(client: Any, run_id: str, result: VerifyResult) -> None:
    """The verdict on the verification's MLflow run: metrics plus ``verify.json``."""
    from mlflow.entities import Metric  # heavy: MLflow loads only when a run is logged

    now = int(time.time() * 1000)
    values = {
        "seconds_spent": result.seconds_spent,
        "wall_seconds": result.wall_seconds,
        "winner_value": result.winner_value,
        "winner_margin": result.winner_margin,
        "val_images": result.val_images,
        "zero_shot_value": result.zero_shot_value,
        "winner_is_zero_shot": float(result.winner_is_zero_shot),
        "stopped_by_budget": float(result.stopped_by_budget),
        "runs": float(sum(len(c.runs) for c in result.candidates)),
    }
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v is not None],
    )
    if result.winner_id:
        client.set_tag(run_id, "metallmix.winner", result.winner_id)
    with tempfile.TemporaryDirectory(prefix="metallmix-verify-") as tmp:
        path = Path(tmp) / "verify.json"
        path.write_text(result.model_dump_json(indent=2))
        client.log_artifact(run_id, str(path))


__all__ = [
    "CandidateResult",
    "HalvingSpec",
    "RunResult",
    "RungChoice",
    "VerifyResult",
    "default_study_name",
    "distinct",
    "first_rung",
    "load_plan",
    "run_verify",
    "score_margin",
    "select",
]
