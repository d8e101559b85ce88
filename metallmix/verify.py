"""Zero-shot now, verified with a small budget: ``recommend(..., verify=K)``.

The zero-shot answer comes first (shortlist, LLM, judge, in seconds to minutes); then the
top-K shortlisted configurations, the zero-shot pick always among them, are trained with
successive halving (:mod:`metallmix.tools.training.verify`) within the budget. The result
is the zero-shot :class:`~metallmix.agents.schemas.Recommendation` plus a ``verification``
naming the verified winner, how the zero-shot pick fared and the time spent. Every run is
an MLflow run nested (through the verification's run) under the recommendation's run and
joins the KB.

Re-running the same call continues: the Optuna study (named from the dataset, K, the seed
and the settings) stores the zero-shot recommendation and the plan, so a resumed call
neither asks the LLM again nor retrains a finished run; it only runs what is missing.

The zero-shot answer itself comes from the caller (:func:`metallmix.recommend` passes a
``zero_shot`` function), so this module never imports the API that imports it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import ConfigDict

from metallmix.agents.schemas import Recommendation
from metallmix.errors import ConfigError
from metallmix.graphs.resources import KbSpec, LlmSpec, resolve_kb
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import KnowledgeBase
from metallmix.tools.meta.contracts import Candidate, Shortlist
from metallmix.tools.meta.portfolio import VERIFY_RULE, check_rule
from metallmix.tools.meta.search_space import get_space, hp_values
from metallmix.tools.meta.shortlist import (
    FACTS_PER_CANDIDATE,
    ShortlistOptions,
    regime_shortlist,
)
from metallmix.tools.metafeatures import compute_meta_features
from metallmix.tools.training.backends import ExecutionBackend, make_backend
from metallmix.tools.training.verify import (
    RunResult,
    VerifyResult,
    default_study_name,
    load_plan,
    run_verify,
    select,
)

__all__ = ["VerifiedRecommendation", "ZeroShot", "recommend_verified"]

# The zero-shot recommendation for a shortlist, from the caller: ``zero_shot(shortlist,
# kb, dataset_name)`` runs the graph on that shortlist with that (writable) KB.
ZeroShot: TypeAlias = Callable[[Shortlist, KnowledgeBase, str], Recommendation]


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
    out: list[Candidate] = []
    seen: set[str] = set()
    for c in ordered:
        key = json.dumps([c.model, hp_values(c.hyperparameters)], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out[:k]


def recommend_verified(
    data: str | os.PathLike[str],
    zero_shot: ZeroShot,
    *,
    k: int,
    budget_minutes: float | None = None,
    modality: str | None = None,
    llm: LlmSpec = None,
    kb: KbSpec = None,
    seed: int = 0,
    shortlist: Shortlist | None = None,
    space: str | None = None,
    n_candidates: int = 5,
    backend: Any | None = None,
    study: str | None = None,
    storage: Path | None = None,
    max_train_images: int | None = None,
    max_val_images: int | None = 200,
    threads: int | None = None,
    first_rung_epochs: int | None = None,
    on_run: Callable[[str, int, RunResult], None] | None = None,
    shortlist_rule: str = VERIFY_RULE,
) -> VerifiedRecommendation:
    """``zero_shot`` on the CPU-regime shortlist, then successive halving over its top-``k``
    candidates (called by :func:`metallmix.recommend` with ``verify=k``).

    ``llm`` only names the model in the study's fingerprint (``zero_shot`` loads it);
    ``budget_minutes`` bounds the summed training time (earlier invocations of the same
    study included); ``backend`` is ``"local"``, ``"ray"`` or an ExecutionBackend.
    """
    if k < 1:
        raise ConfigError(f"--verify must be at least 1 candidate, got {k}")
    if budget_minutes is not None and budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes must be positive, got {budget_minutes}")
    rule = check_rule(shortlist_rule)
    path = Path(data).expanduser()
    if path.suffix.lower() == ".json":  # how compute_meta_features tells a card
        raise ConfigError(
            f"--verify trains the candidates on the images, and {path} is a dataset card "
            "(meta-features only, no images); give the dataset itself (.npz, image folder "
            "or CSV manifest), or drop --verify for a zero-shot answer from the card"
        )
    dataset = load_dataset(path, modality=modality, seed=seed)
    store = resolve_kb(kb, read_only=False)  # verified runs join the KB
    # Read once: the shortlist, the zero-shot answer and the trials' KB priors see one content.
    snapshot = KBSnapshot.of(store)
    settings = {
        "data": str(path.resolve()),
        "kb": _spec(kb if not isinstance(kb, KnowledgeBase) else store.location),
        "llm": _spec(llm),
        "space": space,
        "max_train_images": max_train_images,
        "max_val_images": max_val_images,
        "first_rung_epochs": first_rung_epochs,
        **({"shortlist_rule": rule} if rule != "top" else {}),  # old studies keep their names
    }
    study_name = study or default_study_name(dataset.name, k, seed, fingerprint=settings)
    plan = load_plan(storage, study_name)
    if plan is not None and "recommendation" in plan:
        rec = Recommendation.model_validate(plan["recommendation"])
        candidates = []  # the stored plan's candidates are used
    else:
        if shortlist is None:
            # Verification trains here, with the CPU trainer: learn from CPU-regime runs.
            shortlist = regime_shortlist(
                compute_meta_features(path, modality=modality),
                snapshot,
                "cpu",
                n=max(n_candidates, k),
                seed=seed,
                space=get_space(space) if space else None,
                options=ShortlistOptions(rule=rule, facts_per_candidate=FACTS_PER_CANDIDATE),
            )
        found = shortlist.candidates
        distinct = len(select(found, len(found), _top(shortlist))) if found else 0
        if k > distinct:
            raise ConfigError(
                f"--verify {k} asks for more candidates than there are: the shortlist holds "
                f"{distinct} distinct configuration(s) for this dataset and search space; "
                f"use --verify {distinct} or fewer"
            )
        rec = zero_shot(shortlist, snapshot, dataset.name)
        candidates = list(shortlist.candidates)
        if rule != "top":  # train the hedge as chosen, not re-sorted by score
            candidates = hedge_first(candidates, rec.candidate_id, k)
    owned = backend is None or isinstance(backend, str)
    engine: ExecutionBackend = (
        make_backend(backend or "local") if owned else backend  # type: ignore[assignment]
    )
    try:
        result = run_verify(
            dataset,
            candidates,
            zero_shot_id=rec.candidate_id,
            k=k,
            seed=seed,
            budget_seconds=budget_minutes * 60 if budget_minutes is not None else None,
            first_rung_epochs=first_rung_epochs,
            kb_records=snapshot.runs,
            storage=storage,
            study_name=study_name,
            kb=store,
            parent_run_id=rec.mlflow_run_id,
            max_train_images=max_train_images,
            max_val_images=max_val_images,
            threads=threads,
            backend=engine,
            extra_plan={"recommendation": rec.model_dump(mode="json"), "settings": settings},
            on_run=on_run,
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
