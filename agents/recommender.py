"""The recommender agent: the LLM picks a shortlisted candidate, cites, and connects.

The meta-learner decides what is plausible; the LLM chooses among its scored shortlist by
``candidate_id``, names the SHAP facts and past runs that support the choice by their short
ids (a grammar built per request allows only this request's ids, so a citation cannot be
invented or attached to the wrong candidate) and writes a short rationale in words. Code
renders every number and the confidence. With ``choose="top1"`` the LLM is offered only the
meta-learner's top candidate and explains it. When the LLM fails twice,
:func:`fallback_recommendation` gives the top candidate with a templated explanation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from metallmix.agents.evidence import (
    MAX_CHOICES,
    MAX_RATIONALE_CHARS,
    Evidence,
    answer_schema,
    best_candidate,
    citations,
    confidence_for,
    example_rationale,
    ranked_candidates,
    render_evidence,
    render_explanation,
    run_score,
    to_choice,
    top_facts,
)
from metallmix.agents.runtime.llm import ChatLLM, LLMOutputError
from metallmix.agents.schemas import LLMChoice, Recommendation
from metallmix.prompts import load_prompt, render_prompt
from metallmix.tools.meta.contracts import (
    Candidate,
    ShapFact,
    Shortlist,
    SimilarRun,
    ood_note,
)

Choose = Literal["llm", "top1"]
# JSON scaffolding of the answer (~40 tokens) plus the rationale at worst one token a
# character: the grammar closes the string at MAX_RATIONALE_CHARS, so the answer can never be
# cut off at max_tokens.
MAX_TOKENS = 64 + MAX_RATIONALE_CHARS
RETRY_TEMPERATURE = 0.7


@dataclass
class Exchange:
    """One LLM call: what was sent and what came back, for MLflow artifacts."""

    node: str
    attempt: int
    messages: list[dict[str, str]]
    raw: str
    usage: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "attempt": self.attempt,
            "messages": self.messages,
            "raw": self.raw,
            "usage": self.usage,
            "error": self.error,
        }


def evidence_for(dataset: str, shortlist: Shortlist, choose: Choose = "llm") -> Evidence:
    """What the recommender sees: the top MAX_CHOICES candidates, or only the top one."""
    ranked = ranked_candidates(shortlist)
    return render_evidence(
        dataset, shortlist, candidates=ranked[: 1 if choose == "top1" else MAX_CHOICES]
    )


def recommender_messages(ev: Evidence, critique: str | None = None) -> list[dict[str, str]]:
    """The fixed system prompt (its llama.cpp state is cached on disk) + this request's
    evidence; on a retry, the judge's critique is appended."""
    retry = ""
    if critique:  # on a line of its own after the task
        retry = "\n" + render_prompt("recommender_retry", critique=critique).rstrip("\n")
    task = (
        "Explain why the candidate suits this dataset."
        if len(ev.candidates) == 1
        else "Choose one candidate and explain why it suits this dataset."
    )
    first = ev.candidates[0]
    example = (
        f'A rationale that is true of {first.candidate_id} here: "{example_rationale(ev, first)}" '
        "Write your own words in this spirit; for another candidate, use its facts."
    )
    user = render_prompt(
        "recommender_user", evidence=ev.text, example=example, task=task, critique=retry
    )
    return [
        {"role": "system", "content": load_prompt("recommender").strip()},
        {"role": "user", "content": user.strip()},
    ]


@dataclass(frozen=True)
class AnswerOrigin:
    """How an answer came about: the LLM that wrote it, its seed, the attempt it passed on and
    whether it is the templated fallback. Every answer carries the four together, so they
    travel as one value rather than four keywords."""

    llm: str
    seed: int
    attempts: int
    fallback: bool = False


def from_candidate(
    candidate: Candidate,
    *,
    dataset: str,
    shortlist: Shortlist,
    facts: list[ShapFact],
    runs: list[SimilarRun],
    rationale: str,
    origin: AnswerOrigin,
    shown_runs: list[SimilarRun] | None = None,
) -> Recommendation:
    """A recommendation whose numbers and confidence are the candidate's and the evidence's,
    rendered by code; only ``rationale`` is the LLM's."""
    confidence = confidence_for(candidate, shown_runs if shown_runs is not None else runs)
    if shortlist.ood:  # outside what the KB covers: never more than low confidence
        confidence = "low"
    explanation = render_explanation(
        candidate,
        facts,
        runs,
        rationale,
        confidence,
        metric=shortlist.metric,
        missing_own_runs=not any(r.model == candidate.model for r in shortlist.similar_runs),
    )
    if shortlist.ood:
        explanation += (
            f" Out of the knowledge base's range ({ood_note(shortlist.ood_reasons)}): "
            "the interval is widened and confidence is low."
        )
    return Recommendation(
        dataset=dataset,
        candidate_id=candidate.candidate_id,
        model=candidate.model,
        pretrained=candidate.pretrained,
        hyperparameters=candidate.hyperparameters,
        expected_accuracy=candidate.predicted_accuracy,
        accuracy_low=candidate.accuracy_low,
        accuracy_high=candidate.accuracy_high,
        expected_train_seconds=candidate.predicted_seconds,
        confidence=confidence,
        explanation=explanation,
        rationale=rationale.strip(),
        cited_runs=[r.run_id for r in runs] or list(dict.fromkeys(citations(explanation))),
        cited_facts=[f.sentence for f in facts],
        fallback=origin.fallback,
        attempts=origin.attempts,
        meta_features=shortlist.meta_features,
        llm=origin.llm,
        seed=origin.seed,
        ood=shortlist.ood,
        ood_reasons=list(shortlist.ood_reasons),
        metric=shortlist.metric,
        metric_note=shortlist.metric_note,
        compute=shortlist.regime,
        rank_basis=shortlist.rank_basis,
    )


def from_choice(
    ev: Evidence, choice: LLMChoice, *, attempts: int, llm: str, seed: int
) -> Recommendation | str:
    """The recommendation for a validated answer, or why the answer cannot be used (only
    reachable without the grammar, e.g. a scripted answer: ids outside this request)."""
    candidate = next((c for c in ev.candidates if c.candidate_id == choice.candidate_id), None)
    if candidate is None:
        ids = ", ".join(c.candidate_id for c in ev.candidates)
        return f"candidate_id {choice.candidate_id!r} is not in the shortlist ({ids})"
    own = set(ev.facts_of(candidate.candidate_id))
    wrong = [f for f in choice.facts if f not in own]
    unknown_runs = [r for r in choice.runs if r not in ev.runs]
    if wrong or unknown_runs:
        return (
            f"cited ids that are not {candidate.candidate_id}'s facts or listed runs: "
            + ", ".join(wrong + unknown_runs)
        )
    return from_candidate(
        candidate,
        dataset=ev.name,
        shortlist=ev.shortlist,
        facts=[ev.facts[f] for f in dict.fromkeys(choice.facts)],
        runs=[run for r in dict.fromkeys(choice.runs) for run in ev.cited(r)],
        rationale=choice.rationale,
        origin=AnswerOrigin(llm=llm, seed=seed, attempts=attempts),
        shown_runs=list(ev.runs.values()),
    )


@dataclass
class Draft:
    """The recommender's outcome for one attempt: a recommendation or why there is none."""

    recommendation: Recommendation | None
    exchange: Exchange
    error: str | None = None


def recommend_once(
    llm: ChatLLM,
    ev: Evidence,
    *,
    attempt: int,
    critique: str | None = None,
    seed: int = 0,
    max_tokens: int = MAX_TOKENS,
) -> Draft:
    """One recommender attempt over ``ev`` (:func:`evidence_for`). An unusable answer is
    returned as ``error``, not raised: the judge turns it into a critique and the graph
    decides whether to retry."""
    messages = recommender_messages(ev, critique)
    try:
        answer = llm.chat_json(
            messages,
            answer_schema(ev),
            max_tokens=max_tokens,
            # A rejected greedy answer tends to come back word for word (seen with the 0.5B
            # model), so a retry samples, seeded: reproducible, but not a repeat.
            temperature=0.0 if attempt == 1 else RETRY_TEMPERATURE,
            seed=seed + attempt - 1,
        )
    except LLMOutputError as exc:
        exchange = Exchange("recommender", attempt, messages, exc.raw, dict(llm.last_usage))
        exchange.error = str(exc)
        # The critique goes back into the prompt: say what to fix, never echo the bad text.
        if "cut off" in str(exc):
            reason = "the answer was too long and was cut off: write 1 or 2 short sentences"
        else:
            reason = "the answer was not valid JSON with candidate_id, facts, runs and rationale"
        return Draft(None, exchange, reason)
    exchange = Exchange("recommender", attempt, messages, llm.last_raw, dict(llm.last_usage))
    rec = from_choice(ev, to_choice(answer), attempts=attempt, llm=llm.name, seed=seed)
    if isinstance(rec, str):
        exchange.error = rec
        return Draft(None, exchange, rec)
    return Draft(rec, exchange)


def fallback_recommendation(
    dataset: str,
    shortlist: Shortlist,
    *,
    attempts: int,
    llm: str,
    seed: int,
    llm_error: str | None = None,
) -> Recommendation:
    """The top-scored candidate, its largest SHAP facts and the closest strong past run,
    rendered by the same code as an LLM answer, with a templated rationale. ``llm_error``:
    the LLM failed outright (crash, timeout) rather than being rejected by the judge."""
    top = best_candidate(shortlist)
    ev = evidence_for(dataset, shortlist, "top1")
    runs = list(ev.runs.values())
    # the candidate's own model's runs come first in the evidence: cite the best of those
    own = [r for r in runs if r.model == top.model and run_score(r)[0] is not None]
    scored = own or [r for r in runs if run_score(r)[0] is not None]
    best = max(scored, key=lambda r: run_score(r)[0] or 0.0) if scored else None
    short = next((rid for rid, r in ev.runs.items() if r is best), None)
    cited = ev.cited(short) if short else (ev.cited("r1") if ev.runs else [])
    why = "the LLM failed" if llm_error else "the LLM's answers were rejected"
    rec = from_candidate(
        top,
        dataset=dataset,
        shortlist=shortlist,
        facts=top_facts(shortlist, top.candidate_id, 2),
        runs=cited,
        rationale=(
            f"This explanation is templated because {why}: this is "
            "the candidate the meta-learner ranks first in the shortlist"
        ),
        origin=AnswerOrigin(llm=llm, seed=seed, attempts=attempts, fallback=True),
        shown_runs=runs,
    )
    return rec.model_copy(update={"llm_error": llm_error}) if llm_error else rec
