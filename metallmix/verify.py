"""Zero-shot now, verified with a small budget: ``recommend(..., verify=K)``.

The zero-shot answer comes first (shortlist, LLM, judge, in seconds to minutes); then the
top-K shortlisted configurations, the zero-shot pick always among them, are trained with
successive halving (:mod:`metallmix.tools.training.halving`) within the budget. The result
is the zero-shot :class:`~metallmix.agents.schemas.Recommendation` plus a ``verification``
naming the verified winner, how the zero-shot pick fared and the time spent. Every run is
an MLflow run nested (through the verification's run) under the recommendation's run and
joins the KB.

Re-running the same call continues: the Optuna study (named from the dataset, K, the seed
and the settings) stores the zero-shot recommendation and the plan, so a resumed call
neither asks the LLM again nor retrains a finished run; it only runs what is missing.

:meth:`metallmix.Session.verify` runs the steps: :func:`plan_verification`, the shortlist
(:func:`verify_shortlist`), the session's own zero-shot answer, :func:`run_verification`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from metallmix.agents.schemas import Recommendation
from metallmix.errors import ConfigError
from metallmix.graphs.resources import KbSpec, LlmSpec, resolve_kb
from metallmix.progress import step_line
from metallmix.tools import tracking
from metallmix.tools.datasets import Dataset, load_dataset
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Candidate, Shortlist
from metallmix.tools.meta.landmarks import attach_landmarks
from metallmix.tools.meta.portfolio import VERIFY_RULE, Rule, check_rule
from metallmix.tools.meta.search_space import get_space
from metallmix.tools.meta.shortlist import (
    FACTS_PER_CANDIDATE,
    ShortlistOptions,
    regime_shortlist,
)
from metallmix.tools.metafeatures import compute_meta_features
from metallmix.tools.training.backends import ExecutionBackend, make_backend
from metallmix.tools.training.halving import (
    HalvingSpec,
    RunResult,
    VerifyResult,
    default_study_name,
    distinct,
    load_plan,
    run_verify,
    select,
)
from metallmix.tools.training.settings import TrialSettings

__all__ = ["VerifiedRecommendation", "VerifyOptions"]


class VerifiedRecommendation(Recommendation):
    """The zero-shot recommendation (inherited fields) and what training its shortlist found.

    ``model``/``hyperparameters`` stay the zero-shot pick's; the verified winner is
    ``verification.winner`` (also :attr:`verified_model` / :attr:`verified_hyperparameters`).
    """

    model_config = ConfigDict(extra="forbid")

    verification: VerifyResult

    @property
    def verified_model(self) -> str | None:
        winner = self.verification.winner
        return winner.model if winner is not None else None

    @property
    def verified_hyperparameters(self) -> dict[str, Any] | None:
        winner = self.verification.winner
        return dict(winner.hyperparameters) if winner is not None else None

    def summary(self) -> str:
        return f"zero-shot: {super().summary()}\nverified: {self.verification.summary()}"


def _spec(value: Any) -> str:
    if value is None or isinstance(value, str | os.PathLike):
        return str(value)
    return type(value).__name__


def _top(shortlist: Shortlist) -> str:
    """The best-scored candidate's id (any member will do to count distinct ones)."""
    return (
        max(shortlist.candidates, key=lambda c: c.score).candidate_id
        if shortlist.candidates
        else ""
    )


def hedge_first(candidates: list[Candidate], zero_shot_id: str, k: int) -> list[Candidate]:
    """The ``k`` to train under a hedging rule: the zero-shot pick, then the shortlist in the
    order the rule chose it (distinct configurations). Handing exactly these to
    successive halving keeps its score re-sort from undoing the hedge."""
    ordered = [c for c in candidates if c.candidate_id == zero_shot_id] + [
        c for c in candidates if c.candidate_id != zero_shot_id
    ]
    return distinct(ordered)[:k]


@dataclass(frozen=True)
class VerifyOptions:
    """How ``recommend(..., verify=K)`` trains: the budget (minutes of summed training,
    earlier invocations of the same study included), the backend (``"local"``, ``"ray"`` or
    an ExecutionBackend), the Optuna study and its storage, the training caps, the rung
    schedule, a per-run hook and the shortlist's hedging rule."""

    budget_minutes: float | None = None
    backend: Any | None = None
    study: str | None = None
    storage: Path | None = None
    max_train_images: int | None = None
    max_val_images: int | None = 200
    threads: int | None = None
    first_rung_epochs: int | None = None
    on_run: Callable[[str, int, RunResult], None] | None = None
    shortlist_rule: str = VERIFY_RULE


@dataclass
class VerifyPlan:
    """What a verification starts from: the dataset, the writable store and its snapshot
    (read once: the shortlist, the zero-shot answer and the trials' KB priors see one
    content), the study and, when the same call ran before, its stored zero-shot answer."""

    dataset: Dataset
    store: KnowledgeBase
    snapshot: KBSnapshot
    rule: Rule
    settings: dict[str, Any]
    study_name: str
    stored: Recommendation | None


def plan_verification(
    data: str | os.PathLike[str],
    k: int,
    options: VerifyOptions,
    *,
    kb: KbSpec,
    llm: LlmSpec,
    seed: int,
    space: str | None,
    modality: str | None,
) -> VerifyPlan:
    """Check the request, load the dataset, read the KB and find the study (``llm`` only
    names the model in the study's fingerprint)."""
    if k < 1:
        raise ConfigError(f"--verify must be at least 1 candidate, got {k}")
    if options.budget_minutes is not None and options.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {options.budget_minutes}")
    rule = check_rule(options.shortlist_rule)
    path = Path(data).expanduser()
    if path.suffix.lower() == ".json":  # how compute_meta_features tells a card
        raise ConfigError(
            f"--verify trains the candidates on the images, and {path} is a dataset card "
            "(meta-features only, no images); give the dataset itself (.npz, image folder "
            "or CSV manifest), or drop --verify for a zero-shot answer from the card"
        )
    dataset = load_dataset(path, modality=modality, seed=seed)
    store = resolve_kb(kb, read_only=False)  # verified runs join the KB
    snapshot = KBSnapshot.of(store)
    settings = {
        "data": str(path.resolve()),
        "kb": _spec(kb if not isinstance(kb, KnowledgeBase) else store.location),
        "llm": _spec(llm),
        "space": space,
        "max_train_images": options.max_train_images,
        "max_val_images": options.max_val_images,
        "first_rung_epochs": options.first_rung_epochs,
        **({"shortlist_rule": rule} if rule != "top" else {}),  # old studies keep their names
    }
    study_name = options.study or default_study_name(dataset.name, k, seed, fingerprint=settings)
    plan = load_plan(options.storage, study_name)
    stored = None
    if plan is not None and "recommendation" in plan:
        stored = Recommendation.model_validate(plan["recommendation"])
    return VerifyPlan(dataset, store, snapshot, rule, settings, study_name, stored)


def verify_shortlist(
    plan: VerifyPlan,
    data: str | os.PathLike[str],
    k: int,
    *,
    n_candidates: int,
    seed: int,
    space: str | None,
    modality: str | None,
) -> Shortlist:
    """The shortlist to verify: verification trains here, with the CPU trainer, so it is
    learnt from the CPU-regime runs (and carries the SHAP facts the zero-shot answer cites)."""
    mf = compute_meta_features(Path(data).expanduser(), modality=modality)
    mf, _, measured = attach_landmarks(mf, plan.dataset)  # the zero-shot answer reads them
    step_line(measured)
    return regime_shortlist(
        mf,
        plan.snapshot,
        "cpu",
        n=max(n_candidates, k),
        seed=seed,
        space=get_space(space) if space else None,
        options=ShortlistOptions(rule=plan.rule, facts_per_candidate=FACTS_PER_CANDIDATE),
    )


def check_k(shortlist: Shortlist, k: int) -> None:
    """``k`` must not exceed the distinct configurations the shortlist holds."""
    found = shortlist.candidates
    distinct = len(select(found, len(found), _top(shortlist))) if found else 0
    if k > distinct:
        raise ConfigError(
            f"--verify {k} asks for more candidates than there are: the shortlist holds "
            f"{distinct} distinct configuration(s) for this dataset and search space; "
            f"use --verify {distinct} or fewer"
        )


def to_train(plan: VerifyPlan, shortlist: Shortlist, zero_shot_id: str, k: int) -> list[Candidate]:
    """The candidates handed to successive halving: the shortlist, or under a hedging rule
    the hedge as chosen (not re-sorted by score)."""
    candidates = list(shortlist.candidates)
    if plan.rule != "top":
        candidates = hedge_first(candidates, zero_shot_id, k)
    return candidates


def run_verification(
    plan: VerifyPlan,
    rec: Recommendation,
    candidates: list[Candidate],
    *,
    k: int,
    seed: int,
    options: VerifyOptions,
) -> VerifiedRecommendation:
    """Successive halving over ``candidates`` (none: the stored plan's) with the zero-shot
    answer ``rec``; the verdict is logged on the recommendation's run too."""
    backend = options.backend
    owned = backend is None or isinstance(backend, str)
    engine: ExecutionBackend = (
        make_backend(backend or "local") if owned else backend  # type: ignore[assignment]
    )
    budget = options.budget_minutes
    try:
        result = run_verify(
            plan.dataset,
            candidates,
            zero_shot_id=rec.candidate_id,
            halving=HalvingSpec(
                k=k,
                seed=seed,
                budget_seconds=budget * 60 if budget is not None else None,
                first_rung_epochs=options.first_rung_epochs,
                storage=options.storage,
                study_name=plan.study_name,
                parent_run_id=rec.mlflow_run_id,
            ),
            settings=TrialSettings(
                max_train_images=options.max_train_images,
                max_val_images=options.max_val_images,
                threads=options.threads,
                backend=engine,
            ),
            kb=plan.store,
            kb_records=plan.snapshot.runs,
            extra_plan={
                "recommendation": rec.model_dump(mode="json"),
                "settings": plan.settings,
            },
            on_run=options.on_run,
        )
    finally:
        if owned:
            engine.close()
    problem = rec.tracking_error or result.tracking_error
    if rec.mlflow_run_id:
        try:  # the verified answer is known: tracking must not cost it
            _log_on_recommendation(rec.mlflow_run_id, result)
        except Exception as exc:
            problem = problem or tracking.redact_text(
                f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            )
    fields = {**rec.model_dump(), "tracking_error": problem}
    return VerifiedRecommendation(**fields, verification=result)


def _log_on_recommendation(run_id: str, result: VerifyResult) -> None:
    """The verdict on the recommendation's own run, so one run shows both answers."""
    from mlflow.entities import Metric, RunTag  # heavy; only once a verification finished

    now = int(time.time() * 1000)
    values = {
        "verified_value": result.winner_value,
        "verified_zero_shot_value": result.zero_shot_value,
        "verify_seconds": result.seconds_spent,
        "verified_winner_is_zero_shot": float(result.winner_is_zero_shot),
    }
    tags = {"metallmix.verify_run_id": result.mlflow_run_id or ""}
    if result.winner_id:
        tags["metallmix.verified_winner"] = result.winner_id
    tracking.client().log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if v is not None],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
