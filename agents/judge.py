"""The judge: hard checks in code decide, an LLM verdict grades and explains.

A small model cannot be trusted to catch a wrong number, so pass/fail is decided by code:
schema, search space, the candidate really being shortlisted, every number in the
explanation being one of the evidence numbers (within the rounding it was written with),
cited runs existing and no field missing. The LLM then scores format, accuracy and
completeness (the paper's three criteria) and its critique, joined with the failed checks,
is what the recommender sees on its second attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from metallmix.agents.evidence import (
    citations,
    dataset_line,
    evidence_values,
    grounded,
    identifiers,
    numbers_in,
    pct,
    render_evidence,
    scrub,
)
from metallmix.agents.llm import ChatLLM, LLMOutputError
from metallmix.agents.recommender import Exchange
from metallmix.agents.schemas import JudgeScores, JudgeVerdict, Recommendation
from metallmix.prompts import load_prompt, render_prompt
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.search_space import SPACES, SearchSpace

MIN_EXPLANATION_CHARS = 40
MAX_TOKENS = 120


def infer_space(shortlist: Shortlist, name: str | None = None) -> SearchSpace | None:
    """The space named, else the shipped space holding every shortlisted model, else None."""
    if name:
        from metallmix.tools.meta.search_space import get_space

        return get_space(name)
    models = {c.model for c in shortlist.candidates}
    for space in SPACES.values():
        if models <= set(space.models):
            return space
    return None


def hard_checks(
    rec: Recommendation,
    shortlist: Shortlist,
    *,
    known_run_ids: set[str] | None = None,
    space: SearchSpace | None = None,
) -> tuple[dict[str, bool], list[str]]:
    """Every code check by name, and a message per failure (empty when all pass)."""
    checks: dict[str, bool] = {}
    failures: list[str] = []

    def check(name: str, ok: bool, message: str) -> None:
        checks[name] = ok
        if not ok:
            failures.append(message)

    cand = shortlist.candidate(rec.candidate_id)
    check(
        "shortlisted",
        cand is not None,
        f"candidate_id {rec.candidate_id!r} is not in the shortlist",
    )
    if cand is not None:
        same = (
            cand.model == rec.model
            and cand.pretrained == rec.pretrained
            and cand.hyperparameters == rec.hyperparameters
        )
        check("matches_candidate", same, f"model/hyperparameters differ from {cand.candidate_id}")
        inside = (
            cand.accuracy_low - 1e-9 <= rec.expected_accuracy <= cand.accuracy_high + 1e-9
            and abs(rec.accuracy_low - cand.accuracy_low) < 1e-9
            and abs(rec.accuracy_high - cand.accuracy_high) < 1e-9
        )
        check(
            "within_interval",
            inside,
            f"expected accuracy {pct(rec.expected_accuracy)} is not within the candidate's "
            f"interval {pct(cand.accuracy_low)} to {pct(cand.accuracy_high)}",
        )
    if space is not None:
        problems = space.violations(rec.model, rec.hyperparameters)
        check("in_search_space", not problems, "outside the search space: " + "; ".join(problems))

    text = rec.explanation.strip()
    check(
        "explanation_present",
        len(text) >= MIN_EXPLANATION_CHARS,
        f"the explanation is missing or shorter than {MIN_EXPLANATION_CHARS} characters",
    )
    missing = [
        name
        for name in ("model", "candidate_id", "confidence")
        if not str(getattr(rec, name) or "").strip()
    ]
    check("no_missing_field", not missing, f"missing fields: {', '.join(missing)}")

    ev = render_evidence(rec.dataset, shortlist)
    allowed = evidence_values(ev, shortlist)
    scrubbed = scrub(text, [*identifiers(shortlist), *(known_run_ids or ())])
    written = numbers_in(scrubbed)
    ungrounded = [n.text for n in written if not grounded(n, allowed)]
    check(
        "numbers_grounded",
        not ungrounded,
        "these numbers in the explanation are not in the evidence: "
        + ", ".join(ungrounded[:6])
        + " (use only the numbers given, e.g. the predicted accuracy and interval)",
    )
    if cand is not None:
        states_accuracy = any(
            grounded(n, [cand.predicted_accuracy]) and n.value > 1 for n in written
        )
        check(
            "states_expected_accuracy",
            states_accuracy,
            f"the explanation does not state the predicted accuracy {pct(cand.predicted_accuracy)}",
        )
    if cand is not None and shortlist.facts_for(cand.candidate_id):
        lowered = text.lower()
        facts = shortlist.facts_for(cand.candidate_id)
        # Naming the model is not citing why it scores well: a model fact counts through its
        # effect in points; any other fact through its feature or value.
        cited_fact = any(
            _mentions(lowered, f.feature) or _mentions(lowered, f.value)
            for f in facts
            if f.feature != "model"
        ) or any(
            grounded(n, [f.effect_points]) and abs(f.effect_points) >= 0.1
            for f in facts
            for n in written
        )
        check(
            "cites_shap_fact",
            cited_fact,
            "the explanation cites none of the candidate's SHAP facts; name at least one "
            "(e.g. its learning rate or batch size and the points it adds)",
        )
    if shortlist.similar_runs:
        check(
            "cites_similar_run",
            bool(rec.cited_runs),
            "the explanation cites no similar past run; cite one as [run RUN_ID]",
        )
    valid_ids = {r.run_id for r in shortlist.similar_runs} | (known_run_ids or set())
    unknown = [r for r in citations(text) if r not in valid_ids]
    check(
        "citations_exist",
        not unknown,
        f"cited runs that do not exist: {', '.join(unknown)} (cite ids from 'Similar past runs')",
    )
    return checks, failures


def _mentions(text: str, term: str) -> bool:
    """``term`` (a feature like ``batch_size`` or a value like ``adamw``) appears in ``text``;
    underscores may be written as spaces, ``lr`` as "learning rate"."""
    term = term.lower().strip()
    if not term:
        return False
    variants = {term, term.replace("_", " ")}
    if term == "lr":
        variants |= {"learning rate", "learning-rate"}
    return any(re.search(rf"(?<![\w]){re.escape(v)}(?![\w])", text) for v in variants)


def judge_evidence(rec: Recommendation, shortlist: Shortlist) -> str:
    """Only what the answer is about (the chosen candidate, its SHAP facts, the runs it
    cites): a short prompt keeps the judge fast on a small CPU."""
    from metallmix.agents.evidence import candidate_line, fact_lines, run_line

    lines = [dataset_line(rec.dataset, shortlist)]
    cand = shortlist.candidate(rec.candidate_id)
    if cand is not None:
        lines.append(candidate_line(cand, keys=None))
        lines += fact_lines(shortlist, cand.candidate_id, 4)
    cited = [r for r in shortlist.similar_runs if r.run_id in rec.cited_runs]
    lines += [run_line(r) for r in cited or shortlist.similar_runs[:2]]
    return "\n".join(lines)


def judge_messages(rec: Recommendation, shortlist: Shortlist, checks: str) -> list[dict[str, str]]:
    user = render_prompt(
        "judge_user",
        evidence=judge_evidence(rec, shortlist),
        candidate_id=rec.candidate_id,
        model=rec.model,
        confidence=rec.confidence,
        explanation=rec.explanation,
        checks=checks,
    )
    return [
        {"role": "system", "content": load_prompt("judge").strip()},
        {"role": "user", "content": user.strip()},
    ]


@dataclass
class Judgement:
    verdict: JudgeVerdict
    exchange: Exchange | None


def judge(
    llm: ChatLLM | None,
    rec: Recommendation | None,
    shortlist: Shortlist,
    *,
    attempt: int,
    draft_error: str | None = None,
    known_run_ids: set[str] | None = None,
    space: SearchSpace | None = None,
    seed: int = 0,
    max_tokens: int = MAX_TOKENS,
) -> Judgement:
    """Judge one attempt. Without a recommendation (unusable LLM answer) it fails at once."""
    if rec is None:
        reason = draft_error or "the recommender produced no recommendation"
        verdict = JudgeVerdict(
            attempt=attempt,
            passed=False,
            failures=[reason],
            checks={"schema": False},
            critique=reason,
        )
        return Judgement(verdict, None)
    checks, failures = hard_checks(rec, shortlist, known_run_ids=known_run_ids, space=space)
    checks = {"schema": True, **checks}
    scores: JudgeScores | None = None
    llm_error: str | None = None
    exchange: Exchange | None = None
    if llm is not None:
        summary = "all passed" if not failures else "; ".join(failures)
        messages = judge_messages(rec, shortlist, summary)
        try:
            scores = llm.chat_json(
                messages, JudgeScores, max_tokens=max_tokens, temperature=0.0, seed=seed
            )
            exchange = Exchange("judge", attempt, messages, llm.last_raw, dict(llm.last_usage))
        except LLMOutputError as exc:
            llm_error = str(exc)
            exchange = Exchange("judge", attempt, messages, exc.raw, dict(llm.last_usage))
            exchange.error = llm_error
    critique_parts = list(failures)
    if failures and scores is not None and scores.critique.strip():
        critique_parts.append(scores.critique.strip())
    verdict = JudgeVerdict(
        attempt=attempt,
        passed=not failures,
        failures=failures,
        checks=checks,
        scores=scores,
        llm_error=llm_error,
        critique=" ".join(f"({i + 1}) {p}" for i, p in enumerate(critique_parts)),
    )
    return Judgement(verdict, exchange)
