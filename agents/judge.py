"""The judge: hard checks in code decide, an LLM verdict grades and explains.

A small model cannot be trusted to catch a wrong number, so pass/fail is decided by code:
schema, search space, the candidate really being shortlisted, every number in the
explanation being an evidence number (within the rounding it was written with) *and
belonging to what it is written next to* (:mod:`metallmix.agents.attribution`), certainty
words agreeing with the confidence and the interval, cited facts being the candidate's own
and cited runs existing. With the per-request grammar and code-rendered numbers the
structural checks pass by construction; what is left to check is the LLM's words.

The LLM then scores format, accuracy and completeness (the paper's three criteria). Its
grading is itself a check: an answer that fails the code checks is not graded (its critique
is already known), a grading that fails to parse is retried once and then fails the verdict.
A missing grade is never a pass. The scores themselves are recorded, not gating: on the
benchmark the 0.5B judge gave format 1/5 to answers whose every check held (and 5/5/5 to
others while its critique said they were wrong), so a score gate only added noise.
"""

from __future__ import annotations

from dataclasses import dataclass

from metallmix.agents.attribution import claim_problems, confidence_problems, misattributions
from metallmix.agents.evidence import (
    MAX_SIMILAR,
    Evidence,
    candidate_line,
    citations,
    dataset_line,
    evidence_values,
    fact_lines,
    grounded,
    identifiers,
    numbers_in,
    pct,
    render_evidence,
    run_line,
    scrub,
)
from metallmix.agents.identity import (
    identity_problems,
    metric_problems,
    placeholder_problems,
    readable_problems,
    run_problems,
    top_by_number_problems,
)
from metallmix.agents.recommender import Exchange
from metallmix.agents.runtime.llm import ChatLLM, LLMOutputError
from metallmix.agents.schemas import MAX_CRITIQUE_CHARS, JudgeScores, JudgeVerdict, Recommendation
from metallmix.prompts import load_prompt, render_prompt
from metallmix.tools.meta.contracts import Shortlist
from metallmix.tools.meta.search_space import SearchSpace

MIN_EXPLANATION_CHARS = 40
# ~30 tokens of JSON around the critique, which the grammar bounds to MAX_CRITIQUE_CHARS
# characters (at worst one token each): a grading can never be cut off.
MAX_TOKENS = 48 + MAX_CRITIQUE_CHARS
GRADING_TRIES = 2


def hard_checks(
    rec: Recommendation,
    shortlist: Shortlist,
    *,
    known_run_ids: set[str] | None = None,
    space: SearchSpace | None = None,
    evidence: Evidence | None = None,
) -> tuple[dict[str, bool], list[str]]:
    """Every code check by name, and a message per failure (empty when all pass).

    ``evidence`` is what the recommender was shown (the graph's state); without it, the
    whole shortlist's evidence is rendered here."""
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

    ev = evidence if evidence is not None else render_evidence(rec.dataset, shortlist)
    allowed = evidence_values(ev, shortlist)
    ids = [*identifiers(shortlist), *(known_run_ids or ())]
    written = numbers_in(scrub(text, ids))
    ungrounded = [n.text for n in written if not grounded(n, allowed)]
    check(
        "numbers_grounded",
        not ungrounded,
        "these numbers in the explanation are not in the evidence: "
        + ", ".join(ungrounded[:6])
        + " (write no numbers: code adds the evidence's numbers)",
    )
    wrong = misattributions(text, shortlist, list(known_run_ids or ()))
    check(
        "numbers_attributed",
        not wrong,
        "numbers credited to the wrong thing: " + "; ".join(wrong[:4]),
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
        shown = shortlist.similar_runs[:MAX_SIMILAR]
        cited = [r for r in shortlist.similar_runs if r.run_id in rec.cited_runs]
        words = confidence_problems(text, cand, rec.confidence, shown, cited)
        check(
            "confidence_consistent",
            not words,
            "certainty words contradict the evidence: " + "; ".join(words[:4]),
        )
        claims = claim_problems(text, cand, shortlist, cited)
        check("claims_true", not claims, "untrue claims: " + "; ".join(claims[:4]))
        names = identity_problems(text, cand, shortlist, dataset=rec.dataset)
        names += top_by_number_problems(text, cand, shortlist)
        check("names_the_pick", not names, "wrong identity: " + "; ".join(names[:4]))
    if cand is not None and shortlist.facts_for(cand.candidate_id):
        own = {f.sentence for f in shortlist.facts_for(cand.candidate_id)}
        foreign = [f for f in rec.cited_facts if f not in own]
        check(
            "cites_shap_fact",
            bool(rec.cited_facts) and not foreign,
            "cite 1 or 2 of the chosen candidate's own SHAP facts by id"
            + (f" (not another candidate's: {foreign[0]!r})" if foreign else ""),
        )
    if shortlist.similar_runs:
        check(
            "cites_similar_run",
            bool(rec.cited_runs),
            "the explanation cites no similar past run; cite one by its id (r1, r2, ...)",
        )
    metrics = metric_problems(text, shortlist)
    check("metric_words", not metrics, "wrong metric words: " + "; ".join(metrics[:4]))
    described = run_problems(text, shortlist, known_run_ids=known_run_ids)
    check("runs_described", not described, "past runs: " + "; ".join(described[:4]))
    placeholders = placeholder_problems(text)
    check("no_placeholder", not placeholders, "; ".join(placeholders[:2]))
    unreadable = readable_problems(rec.rationale) if not rec.fallback else []
    check("rationale_readable", not unreadable, "; ".join(unreadable[:2]))
    valid_ids = {r.run_id for r in shortlist.similar_runs} | (known_run_ids or set())
    unknown = [r for r in [*citations(text), *rec.cited_runs] if r not in valid_ids]
    check(
        "citations_exist",
        not unknown,
        f"cited runs that do not exist: {', '.join(dict.fromkeys(unknown))}",
    )
    return checks, failures


def judge_evidence(rec: Recommendation, shortlist: Shortlist) -> str:
    """Only what the answer is about (the chosen candidate, its SHAP facts, the runs it
    cites): a short prompt keeps the judge fast on a small CPU."""
    lines = [dataset_line(rec.dataset, shortlist)]
    cand = shortlist.candidate(rec.candidate_id)
    if cand is not None:
        lines.append(candidate_line(cand))
        lines += fact_lines(shortlist, cand.candidate_id, 3)
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
    exchanges: list[Exchange]

    @property
    def exchange(self) -> Exchange | None:
        """The last LLM call of this judgement (None when the LLM was not asked)."""
        return self.exchanges[-1] if self.exchanges else None


def judge(
    llm: ChatLLM | None,
    rec: Recommendation | None,
    shortlist: Shortlist,
    *,
    attempt: int,
    draft_error: str | None = None,
    known_run_ids: set[str] | None = None,
    space: SearchSpace | None = None,
    evidence: Evidence | None = None,
    seed: int = 0,
    max_tokens: int = MAX_TOKENS,
) -> Judgement:
    """Judge one attempt. Without a recommendation (unusable LLM answer) it fails at once;
    an answer failing the code checks is not sent to the LLM (the failures are the critique)."""
    if rec is None:
        reason = draft_error or "the recommender produced no recommendation"
        verdict = JudgeVerdict(
            attempt=attempt,
            passed=False,
            failures=[reason],
            checks={"schema": False},
            critique=reason,
        )
        return Judgement(verdict, [])
    checks, failures = hard_checks(
        rec, shortlist, known_run_ids=known_run_ids, space=space, evidence=evidence
    )
    checks = {"schema": True, **checks}
    scores: JudgeScores | None = None
    llm_error: str | None = None
    graded: bool | None = None
    exchanges: list[Exchange] = []
    if llm is not None and not failures:
        messages = judge_messages(rec, shortlist, "all passed")
        for _ in range(GRADING_TRIES):
            try:
                scores = llm.chat_json(
                    messages, JudgeScores, max_tokens=max_tokens, temperature=0.0, seed=seed
                )
                exchanges.append(
                    Exchange("judge", attempt, messages, llm.last_raw, dict(llm.last_usage))
                )
                llm_error = None
                break
            except LLMOutputError as exc:
                llm_error = str(exc)
                exchange = Exchange("judge", attempt, messages, exc.raw, dict(llm.last_usage))
                exchange.error = llm_error
                exchanges.append(exchange)
        graded = scores is not None
        checks["llm_graded"] = graded
        if scores is None:
            failures.append(f"the LLM judge's grading failed twice: {llm_error}")
    critique_parts = list(failures)
    verdict = JudgeVerdict(
        attempt=attempt,
        passed=not failures,
        failures=failures,
        checks=checks,
        scores=scores,
        llm_error=llm_error,
        llm_graded=graded,
        llm_attempts=len(exchanges),
        critique=" ".join(f"({i + 1}) {p}" for i, p in enumerate(critique_parts)),
    )
    return Judgement(verdict, exchanges)
