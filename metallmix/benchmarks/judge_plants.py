"""Explanations with one planted error each, built from real shortlists (issue 24).

The judge's code checks are benchmarked on what a writer could get wrong, not only on what
the bundled LLMs happened to write. Each case starts from a *correct* explanation rendered
by the product's own code (:func:`metallmix.agents.recommender.from_candidate`) from a real
shortlist and its evidence, with a rationale drawn from a pool of true sentences (some of
which name other candidates as explicit contrasts), then plants exactly one error:

- ``wrong_model``: another model named as the pick;
- ``wrong_candidate``: another candidate id named as the pick;
- ``number_wrong_thing``: a number credited to the wrong thing;
- ``wrong_metric_word``: a metric word that is not the number's metric;
- ``invented_run_id``: a run id that is not in the evidence;
- ``high_confidence_wide``: "high confidence" on a wide interval;
- ``duplicated_citation``: the same run (or a near-duplicate) cited twice.

Seeded: the same shortlists and seed give the same cases. The correct explanations measure
false alarms.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from metallmix.agents.evidence import (
    Evidence,
    is_narrow,
    metric_words,
    pct,
    render_evidence,
    run_score,
    run_sentence,
)
from metallmix.agents.identity import model_key
from metallmix.agents.judge import hard_checks
from metallmix.agents.recommender import AnswerOrigin, from_candidate
from metallmix.agents.schemas import Recommendation
from metallmix.tools.meta.contracts import Candidate, Shortlist, SimilarRun
from metallmix.tools.meta.search_space import SPACES

PLANT_TYPES = (
    "wrong_model",
    "wrong_candidate",
    "number_wrong_thing",
    "wrong_metric_word",
    "invented_run_id",
    "high_confidence_wide",
    "duplicated_citation",
)


@dataclass
class Case:
    """One explanation to judge: correct (``plant`` None) or with one planted error."""

    name: str
    plant: str | None
    recommendation: Recommendation
    shortlist: Shortlist
    evidence: Evidence
    how: str = ""


def _modality(shortlist: Shortlist) -> str:
    return shortlist.meta_features.modality or "image"


def true_rationales(chosen: Candidate, shortlist: Shortlist) -> list[str]:
    """Sentences that are true of ``chosen`` in ``shortlist``: the correct texts' pool."""
    mf = shortlist.meta_features
    others = [c for c in shortlist.candidates if c is not chosen]
    start = "pretrained" if chosen.pretrained else "trained from scratch"
    out = [
        f"This {start} configuration suits a {_modality(shortlist)} dataset with "
        f"{'few' if mf.n_images < 2000 else 'many'} training images",
        "Its SHAP facts show which settings drive the prediction, and past runs on similar "
        "datasets give context",
        f"{chosen.model} is the configuration recommended here for this dataset",
    ]
    below = [c for c in others if c.score < chosen.score]
    if below:
        o = below[0]
        out.append(
            f"The meta-learner ranks {chosen.model} ahead of {o.candidate_id} ({o.model}) "
            "for datasets like this one"
        )
    lower = [c for c in others if c.predicted_accuracy < chosen.predicted_accuracy]
    if lower:
        o = lower[-1]
        out.append(f"Unlike {o.model}, it keeps a higher predicted score on datasets like this")
    size = chosen.hyperparameters.image_size
    mode = chosen.hyperparameters.extra.get("finetune")
    if size:
        out.append(f"We recommend {chosen.model} on {size} px inputs for this dataset")
    if mode == "linear_probe":
        out.append("A linear probe on the pretrained features keeps training cheap")
    elif mode == "full":
        out.append("Full fine-tuning adapts the whole pretrained network to these images")
    return out


def correct_cases(
    name: str, shortlist: Shortlist, rng: random.Random, *, per_candidate: int = 3
) -> list[Case]:
    """Correct explanations for the top candidate (and the second, as an LLM pick would
    be), each with a different true rationale, facts and runs."""
    cases: list[Case] = []
    ranked = sorted(shortlist.candidates, key=lambda c: -c.score)
    for chosen in ranked[:2]:
        ev = render_evidence(name, shortlist, candidates=[chosen])
        pool = true_rationales(chosen, shortlist)
        facts = [ev.facts[f] for f in ev.facts_of(chosen.candidate_id)]
        run_ids = list(ev.runs)
        for k in range(per_candidate):
            rationale = ". ".join(rng.sample(pool, k=min(len(pool), 1 + k % 2)))
            cited_ids = run_ids[: 1 + (k % 2)] if run_ids else []
            rec = from_candidate(
                chosen,
                dataset=name,
                shortlist=shortlist,
                facts=facts[: 1 + (k % 2)],
                runs=[r for rid in cited_ids for r in ev.cited(rid)],
                rationale=rationale,
                origin=AnswerOrigin(llm="plants", seed=0, attempts=1),
                shown_runs=list(ev.runs.values()),
            )
            cases.append(Case(f"{name}:{chosen.candidate_id}:{k}", None, rec, shortlist, ev))
    return cases


def _with_text(case: Case, text: str, plant: str, how: str, **update: object) -> Case:
    rec = case.recommendation.model_copy(update={"explanation": text, **update})
    return Case(case.name + f":{plant}", plant, rec, case.shortlist, case.evidence, how)


def _chosen(case: Case) -> Candidate:
    cand = case.shortlist.candidate(case.recommendation.candidate_id)
    assert cand is not None
    return cand


def _other_models(case: Case, rng: random.Random) -> list[str]:
    chosen = _chosen(case).model
    shortlisted = [c.model for c in case.shortlist.candidates if c.model != chosen]
    zoo = sorted({m for s in SPACES.values() for m in s.models} - {chosen})
    outside = ["resnet50", "densenet121", "vit_small_patch16_224", "convnext_tiny"]
    pool = [*shortlisted, rng.choice(zoo), rng.choice(outside)]
    return [m for m in pool if model_key(m) != model_key(chosen)]


def plant_wrong_model(case: Case, rng: random.Random) -> Case | None:
    chosen = _chosen(case)
    other = rng.choice(_other_models(case, rng))
    text = case.recommendation.explanation
    forms: list[Callable[[], tuple[str, str]]] = [
        lambda: (
            text.replace(f"{chosen.model} (", f"{other} (", 1),
            "the rendered model name replaced",
        ),
        lambda: (f"{other} is the top-ranked candidate for this dataset. {text}", "pick named"),
        lambda: (
            f"We recommend {other} for this {_modality(case.shortlist)} dataset. {text}",
            "pick named",
        ),
        lambda: (
            text.replace(". ", f". The chosen model, {other}, suits these images. ", 1),
            "pick named mid-text",
        ),
    ]
    new, how = rng.choice(forms)()
    return _with_text(case, new, "wrong_model", how) if new != text else None


def plant_wrong_candidate(case: Case, rng: random.Random) -> Case | None:
    chosen = _chosen(case)
    others = [c for c in case.shortlist.candidates if c is not chosen]
    if not others:
        return None
    o = rng.choice(others)
    text = case.recommendation.explanation
    forms = [
        f"Candidate {o.candidate_id} is the recommendation. {text}",
        f"{o.candidate_id} is the best choice for this dataset. {text}",
        f"The pick is {o.candidate_id} ({chosen.model}). {text}",
        text.replace(". ", f". We chose {o.candidate_id} for this dataset. ", 1),
    ]
    return _with_text(case, rng.choice(forms), "wrong_candidate", f"{o.candidate_id} named")


def plant_number_wrong_thing(case: Case, rng: random.Random) -> Case | None:
    chosen = _chosen(case)
    text = case.recommendation.explanation
    options: list[tuple[str, str]] = []
    others = [
        c
        for c in case.shortlist.candidates
        if c is not chosen and pct(c.predicted_accuracy) != pct(chosen.predicted_accuracy)
    ]
    if others:
        o = rng.choice(others)
        options.append(
            (
                text.replace(
                    f"of {pct(chosen.predicted_accuracy)}", f"of {pct(o.predicted_accuracy)}", 1
                ),
                f"{o.candidate_id}'s prediction credited to {chosen.model}",
            )
        )
    own_results = {
        (r.dataset, pct(v))
        for r in case.shortlist.similar_runs
        if r.model == chosen.model
        for v in (r.val_accuracy, r.val_balanced_accuracy, r.test_accuracy)
    }
    foreign = [
        r
        for r in case.shortlist.similar_runs
        if r.model != chosen.model
        and run_score(r)[0] is not None
        and (r.dataset, pct(run_score(r)[0])) not in own_results  # else the plant is true
    ]
    if foreign:
        r = rng.choice(foreign)
        value, metric = run_score(r)
        options.append(
            (
                f"{text} {chosen.model} itself reached {pct(value)} validation "
                f"{metric_words(metric)} on {r.dataset}.",
                f"run {r.run_id}'s ({r.model}) score credited to {chosen.model}",
            )
        )
    facts = [f for f in case.shortlist.facts_for(chosen.candidate_id) if f.sentence in text]
    hp_names = ["learning rate", "batch size", "weight decay", "dropout", "epochs"]
    if facts:
        f = rng.choice(facts)
        wrong = next((h for h in hp_names if h.replace(" ", "_") not in (f.feature, "lr")), "")
        if f.feature != "lr" or wrong != "learning rate":
            options.append(
                (
                    f"{text} The {wrong} adds {f.effect_points:+.1f} pts to the prediction.",
                    f"the SHAP effect of {f.feature} credited to {wrong}",
                )
            )
    if not options:
        return None
    new, how = rng.choice(options)
    return _with_text(case, new, "number_wrong_thing", how) if new != text else None


def plant_wrong_metric_word(case: Case, rng: random.Random) -> Case | None:
    text = case.recommendation.explanation
    metric = metric_words(case.shortlist.metric)
    options: list[tuple[str, str]] = []
    predicted = f"predicted validation {metric} of"
    if predicted in text:
        for wrong in ("accuracy", "balanced accuracy", "F1 score", "AUC"):
            if wrong != metric:
                options.append(
                    (text.replace(predicted, f"predicted validation {wrong} of", 1), wrong)
                )
    m = re.search(r"validation (balanced accuracy|accuracy)( each)? \(dataset similarity", text)
    if m and _metrics_differ(case, text[: m.start()]):
        wrong = "accuracy" if m.group(1) == "balanced accuracy" else "balanced accuracy"
        options.append((text[: m.start(1)] + wrong + text[m.end(1) :], f"run metric as {wrong}"))
    if not options:
        return None
    new, how = rng.choice(options)
    return _with_text(case, new, "wrong_metric_word", how)


def _metrics_differ(case: Case, before: str) -> bool:
    """The last cited run's accuracy and balanced accuracy differ as written (else either
    word is true of the number and nothing is planted)."""
    ids = re.findall(r"\[run ([^\]]+)\]", before)
    run = next((r for r in case.shortlist.similar_runs if ids and r.run_id == ids[-1]), None)
    if run is None:
        return False
    return pct(run.val_accuracy) != pct(run.val_balanced_accuracy)


def plant_invented_run_id(case: Case, rng: random.Random) -> Case | None:
    text = case.recommendation.explanation
    fake = "own-" + "".join(rng.choice("0123456789abcdef") for _ in range(32))
    cited = re.findall(r"\[run ([^\]]+)\]", text)
    options = [
        (f"{text} Another past run [run {fake}] supports it.", "extra bracketed id"),
        (f"{text} See also run {fake}.", "bare id"),
        (f"{text} Run r{len(case.shortlist.similar_runs) + rng.randint(1, 5)} agrees.", "short id"),
    ]
    if cited:
        options.append((text.replace(cited[0], fake, 1), "cited id replaced"))
    new, how = rng.choice(options)
    return _with_text(case, new, "invented_run_id", how)


def plant_high_confidence(case: Case, rng: random.Random) -> Case | None:
    chosen = _chosen(case)
    if is_narrow(chosen):
        return None
    text = case.recommendation.explanation
    conf = case.recommendation.confidence
    options = [
        (text.replace(f"; {conf} confidence)", "; high confidence)", 1), "label replaced"),
        (f"We have high confidence in this prediction. {text}", "sentence added"),
        (f"{text} The prediction is highly confident.", "sentence added"),
        (f"{text} This is a high-confidence recommendation.", "hyphenated"),
    ]
    new, how = rng.choice([o for o in options if o[0] != text])
    return _with_text(case, new, "high_confidence_wide", how)


def plant_duplicated_citation(case: Case, rng: random.Random) -> Case | None:
    text = case.recommendation.explanation
    sentences = re.findall(
        r"(?:Past run|\w+ past runs) (?:\[run [^\]]+\] ?)+:[^.]*\.\d[^.]*\.[^)]*\)\.", text
    )
    runs = {r.run_id: r for r in case.shortlist.similar_runs}
    options: list[tuple[str, str]] = []
    if sentences:
        options.append((f"{text} {sentences[0]}", "the same citation repeated"))
    cited = [runs[r] for r in re.findall(r"\[run ([^\]]+)\]", text) if r in runs]
    for r in cited:
        dup = next(
            (x for x in case.shortlist.similar_runs if x.run_id != r.run_id and _same_result(x, r)),
            None,
        )
        if dup is not None and dup.run_id not in text:
            options.append((f"{text} {run_sentence(dup)}", "a near-duplicate cited separately"))
    if not options and cited:
        options.append((f"{text} {run_sentence(cited[0])}", "the same run cited again"))
    if not options:
        return None
    new, how = rng.choice(options)
    return _with_text(case, new, "duplicated_citation", how)


def _same_result(a: SimilarRun, b: SimilarRun) -> bool:
    return (
        a.model == b.model
        and a.dataset == b.dataset
        and a.hyperparameters == b.hyperparameters
        and run_score(a) == run_score(b)
    )


PLANTERS: dict[str, Callable[[Case, random.Random], Case | None]] = {
    "wrong_model": plant_wrong_model,
    "wrong_candidate": plant_wrong_candidate,
    "number_wrong_thing": plant_number_wrong_thing,
    "wrong_metric_word": plant_wrong_metric_word,
    "invented_run_id": plant_invented_run_id,
    "high_confidence_wide": plant_high_confidence,
    "duplicated_citation": plant_duplicated_citation,
}


def build_cases(
    shortlists: list[tuple[str, Shortlist]], seed: int = 0, per_candidate: int = 3
) -> list[Case]:
    """Correct cases for every shortlist and one planted case per (correct case, type)."""
    rng = random.Random(seed)
    out: list[Case] = []
    for name, shortlist in shortlists:
        for case in correct_cases(name, shortlist, rng, per_candidate=per_candidate):
            out.append(case)
            for planter in PLANTERS.values():
                planted = planter(case, rng)
                if planted is not None:
                    out.append(planted)
    return out


def judge_case(case: Case) -> tuple[bool, list[str]]:
    """(rejected?, failures) by the judge's code checks alone."""
    known = {r.run_id for r in case.shortlist.similar_runs}
    _, failures = hard_checks(
        case.recommendation, case.shortlist, known_run_ids=known, evidence=case.evidence
    )
    return bool(failures), failures


def score_cases(cases: list[Case]) -> dict[str, object]:
    """Catch rate per planted type and the false-alarm rate on the correct explanations."""
    per: dict[str, list[bool]] = {t: [] for t in PLANT_TYPES}
    alarms: list[bool] = []
    missed: list[dict[str, str]] = []
    false_alarms: list[dict[str, object]] = []
    for case in cases:
        rejected, failures = judge_case(case)
        if case.plant is None:
            alarms.append(rejected)
            if rejected:
                false_alarms.append(
                    {
                        "case": case.name,
                        "text": case.recommendation.explanation,
                        "failures": failures,
                    }
                )
        else:
            per[case.plant].append(rejected)
            if not rejected:
                missed.append(
                    {"case": case.name, "how": case.how, "text": case.recommendation.explanation}
                )
    return {
        "catch_rate": {t: (round(sum(v) / len(v), 3) if v else None) for t, v in per.items()},
        "n_planted": {t: len(v) for t, v in per.items()},
        "n_correct": len(alarms),
        "false_alarm_rate": round(sum(alarms) / len(alarms), 3) if alarms else None,
        "missed": missed[:20],
        "false_alarms": false_alarms[:20],
    }
