"""The recommender agent: the LLM picks a shortlisted candidate and explains it.

The meta-learner decides what is plausible; the LLM only chooses among its scored shortlist
(by ``candidate_id``) and writes confidence and explanation. Everything numeric in the
resulting :class:`Recommendation` is copied from the chosen candidate by code. When the LLM
fails twice, :func:`fallback_recommendation` gives the top candidate with a templated,
fully grounded explanation instead of nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from metallmix.agents.evidence import (
    Evidence,
    best_candidate,
    best_run,
    citations,
    pct,
    render_evidence,
    seconds,
)
from metallmix.agents.llm import ChatLLM, LLMOutputError
from metallmix.agents.schemas import Confidence, LLMChoice, Recommendation
from metallmix.prompts import load_prompt, render_prompt
from metallmix.tools.meta.contracts import Candidate, Shortlist

MAX_TOKENS = 320


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


def recommender_messages(
    dataset: str, shortlist: Shortlist, critique: str | None = None
) -> list[dict[str, str]]:
    """System rules + the evidence; on a retry, the judge's critique is appended."""
    ev: Evidence = render_evidence(dataset, shortlist)
    retry = ""
    if critique:
        retry = (
            "\nYour previous answer was rejected by the reviewer: "
            f"{critique}\nAnswer again, fixing exactly these problems."
        )
    user = render_prompt(
        "recommender_user",
        dataset=ev.dataset,
        candidates=ev.candidates,
        facts=ev.facts,
        similar=ev.similar,
        best_candidate=ev.best_candidate,
        best_run=ev.best_run,
        critique=retry,
    )
    return [
        {"role": "system", "content": load_prompt("recommender").strip()},
        {"role": "user", "content": user.strip()},
    ]


def from_candidate(
    candidate: Candidate,
    *,
    dataset: str,
    shortlist: Shortlist,
    confidence: Confidence,
    explanation: str,
    attempts: int,
    llm: str,
    seed: int,
    fallback: bool = False,
) -> Recommendation:
    """A recommendation whose hard fields are the candidate's, never the LLM's."""
    known = {r.run_id for r in shortlist.similar_runs}
    cited = [r for r in dict.fromkeys(citations(explanation)) if r in known]
    cited += [r for r in known if r in explanation and r not in cited]
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
        explanation=explanation.strip(),
        cited_runs=cited,
        fallback=fallback,
        attempts=attempts,
        meta_features=shortlist.meta_features,
        llm=llm,
        seed=seed,
    )


@dataclass
class Draft:
    """The recommender's outcome for one attempt: a recommendation or why there is none."""

    recommendation: Recommendation | None
    exchange: Exchange
    error: str | None = None


def recommend_once(
    llm: ChatLLM,
    dataset: str,
    shortlist: Shortlist,
    *,
    attempt: int,
    critique: str | None = None,
    seed: int = 0,
    max_tokens: int = MAX_TOKENS,
) -> Draft:
    """One recommender attempt. An unusable answer is returned as ``error``, not raised:
    the judge turns it into a critique and the graph decides whether to retry."""
    messages = recommender_messages(dataset, shortlist, critique)
    try:
        choice = llm.chat_json(
            messages, LLMChoice, max_tokens=max_tokens, temperature=0.0, seed=seed + attempt - 1
        )
    except LLMOutputError as exc:
        exchange = Exchange("recommender", attempt, messages, exc.raw, dict(llm.last_usage))
        exchange.error = str(exc)
        # The critique goes back into the prompt: say what to fix, never echo the bad text.
        if "cut off" in str(exc):
            reason = "the answer was too long and was cut off: write 2 to 4 short sentences"
        else:
            reason = "the answer was not valid JSON with candidate_id, confidence and explanation"
        return Draft(None, exchange, reason)
    exchange = Exchange("recommender", attempt, messages, llm.last_raw, dict(llm.last_usage))
    candidate = shortlist.candidate(choice.candidate_id.strip())
    if candidate is None:
        ids = ", ".join(c.candidate_id for c in shortlist.candidates)
        error = f"candidate_id {choice.candidate_id!r} is not in the shortlist ({ids})"
        exchange.error = error
        return Draft(None, exchange, error)
    rec = from_candidate(
        candidate,
        dataset=dataset,
        shortlist=shortlist,
        confidence=choice.confidence,
        explanation=choice.explanation,
        attempts=attempt,
        llm=llm.name,
        seed=seed,
    )
    return Draft(rec, exchange)


def fallback_recommendation(
    dataset: str, shortlist: Shortlist, *, attempts: int, llm: str, seed: int
) -> Recommendation:
    """The top-scored candidate with a templated explanation built only from evidence."""
    top = best_candidate(shortlist)
    width = top.accuracy_high - top.accuracy_low
    confidence: Confidence = "high" if width <= 0.05 else "medium" if width <= 0.15 else "low"
    parts = [
        f"{top.model} ({top.candidate_id}) has the best meta-learner score of the shortlist, "
        f"with a predicted validation accuracy of {pct(top.predicted_accuracy)} "
        f"(interval {pct(top.accuracy_low)} to {pct(top.accuracy_high)}) and an expected "
        f"training time of {seconds(top.predicted_seconds)}."
    ]
    facts = sorted(shortlist.facts_for(top.candidate_id), key=lambda f: -abs(f.effect_points))
    if facts:
        parts.append(
            "Main SHAP effects: "
            + "; ".join(f"{f.feature}={f.value} ({f.effect_points:+.1f} pp)" for f in facts[:2])
            + "."
        )
    run = best_run(shortlist)
    if run is not None:
        parts.append(
            f"The closest strong past run is [run {run.run_id}] ({run.model} on {run.dataset}, "
            f"{pct(run.val_accuracy)} validation accuracy)."
        )
    parts.append("This explanation is templated because the LLM's answers were rejected twice.")
    return from_candidate(
        top,
        dataset=dataset,
        shortlist=shortlist,
        confidence=confidence,
        explanation=" ".join(parts),
        attempts=attempts,
        llm=llm,
        seed=seed,
        fallback=True,
    )
