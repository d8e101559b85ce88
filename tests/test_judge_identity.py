"""The judge rejects explanations that name the wrong pick, metric or run (issue 24).

A breastmnist-like shortlist where the meta-learner's first candidate (c1,
``efficientnet_lite0``) is predicted *lower* than c2 (``efficientnet_lite2``), the metric is
balanced accuracy and two past runs are near-duplicates: the situation in which the 0.5B
writer explained the wrong model and the judge passed it. One test per planted error type
(every form the benchmark's planter knows, over many seeds), hand-written variants for the
general case (any model name, metric word, field), and false-alarm tests on correct texts.
Pure code, no LLM.
"""

from __future__ import annotations

import random

import pytest
from cases import BREAST_MF

from metallmix.agents.evidence import example_rationale, render_evidence, whole_sentences
from metallmix.agents.judge import hard_checks
from metallmix.agents.recommender import (
    AnswerOrigin,
    evidence_for,
    fallback_recommendation,
    from_candidate,
)
from metallmix.agents.schemas import Recommendation
from metallmix.benchmarks.judge_plants import PLANT_TYPES, PLANTERS, Case, correct_cases
from metallmix.prompts import load_prompt
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.meta.contracts import Candidate, ShapFact, Shortlist, SimilarRun
from metallmix.tools.meta.search_space import SPACES

HP0 = Hyperparameters(
    lr=0.000799,
    batch_size=128,
    optimizer="sgd",
    epochs=29,
    augmentation="none",
    image_size=128,
    extra={"finetune": "linear_probe"},
)
HP2 = HP0.model_copy(update={"image_size": 64, "lr": 0.00719, "extra": {"finetune": "full"}})
RUN_A = "own-aaaa0000aaaa0000aaaa0000aaaa0000"
RUN_B = "own-bbbb1111bbbb1111bbbb1111bbbb1111"
RUN_C = "own-cccc2222cccc2222cccc2222cccc2222"
RUN_D = "own-dddd3333dddd3333dddd3333dddd3333"


def shortlist() -> Shortlist:
    def cand(cid: str, model: str, hp: Hyperparameters, pred: float, score: float) -> Candidate:
        return Candidate(
            candidate_id=cid,
            model=model,
            pretrained=True,
            hyperparameters=hp,
            predicted_accuracy=pred,
            accuracy_low=pred - 0.35,
            accuracy_high=min(1.0, pred + 0.2),
            predicted_seconds=28.0 if cid == "c1" else 9.0,
            score=score,
            origin="sampled",
        )

    cands = [
        cand("c1", "efficientnet_lite0", HP0, 0.819, 0.98),
        cand("c2", "efficientnet_lite2", HP2, 0.881, 0.977),
        cand("c3", "convnext_atto", HP0.model_copy(update={"extra": {}}), 0.765, 0.84),
    ]
    cands[2] = cands[2].model_copy(update={"pretrained": False})
    facts = [
        ShapFact(
            candidate_id="c1",
            feature="image_size",
            value="128",
            reference="64",
            effect_points=2.6,
            sentence="image_size 128 instead of the KB median 64: +2.6 pts predicted",
        ),
        ShapFact(
            candidate_id="c1",
            feature="finetune",
            value="linear_probe",
            reference="linear_probe",
            effect_points=0.9,
            sentence="finetune linear_probe (same as the most common KB choice): +0.9 pts "
            "predicted",
        ),
        ShapFact(
            candidate_id="c2",
            feature="model",
            value="efficientnet_lite2",
            reference="efficientnet_lite0",
            effect_points=3.3,
            sentence="model efficientnet_lite2 instead of the most common KB choice "
            "efficientnet_lite0: +3.3 pts predicted",
        ),
    ]

    def run(rid: str, model: str, hp: Hyperparameters, acc: float, bal: float) -> SimilarRun:
        return SimilarRun(
            run_id=rid,
            dataset="breastmnist",
            similarity=1.0,
            model=model,
            hyperparameters=hp,
            val_accuracy=acc,
            val_balanced_accuracy=bal,
        )

    runs = [
        run(RUN_A, "efficientnet_lite2", HP2, 0.859, 0.904),
        run(RUN_B, "efficientnet_lite2", HP2, 0.859, 0.904),  # near-duplicate of RUN_A
        run(RUN_C, "efficientnet_lite1", HP0, 0.833, 0.801),
        run(RUN_D, "efficientnet_lite0", HP0, 0.821, 0.787),
    ]
    return Shortlist(
        meta_features=BREAST_MF,
        candidates=cands,
        facts=facts,
        similar_runs=runs,
        metric="balanced_accuracy",
        rank_basis="ranked by the meta-learner's expected rank",
    )


def failed(rec: Recommendation, sl: Shortlist) -> dict[str, bool]:
    checks, _ = hard_checks(rec, sl, known_run_ids={r.run_id for r in sl.similar_runs})
    return {k: v for k, v in checks.items() if not v}


def pick(sl: Shortlist, rationale: str, candidate: str = "c1", runs: int = 1) -> Recommendation:
    chosen = sl.candidate(candidate)
    assert chosen is not None
    ev = render_evidence("breastmnist", sl, candidates=[chosen])
    return from_candidate(
        chosen,
        dataset="breastmnist",
        shortlist=sl,
        facts=sl.facts_for(candidate)[:2],
        runs=[r for rid in list(ev.runs)[:runs] for r in ev.cited(rid)],
        rationale=rationale,
        origin=AnswerOrigin(llm="scripted", seed=0, attempts=1),
        shown_runs=list(ev.runs.values()),
    )


def with_text(rec: Recommendation, text: str) -> Recommendation:
    return rec.model_copy(update={"explanation": text})


# ----------------------------------------------------------------- the issue's case
def test_the_breastmnist_answer_of_the_issue_is_rejected_and_the_fallback_names_the_pick() -> None:
    sl = shortlist()
    rec = pick(
        sl, "efficientnet_lite2 is the top-ranked candidate for this breast ultrasound dataset"
    )
    bad = failed(rec, sl)
    assert "names_the_pick" in bad
    fallback = fallback_recommendation("breastmnist", sl, attempts=2, llm="x", seed=0)
    assert fallback.model == "efficientnet_lite0" and not failed(fallback, sl)
    assert "efficientnet_lite0" in fallback.explanation


# ----------------------------------------------------------------- one test per plant type
@pytest.mark.parametrize("plant", PLANT_TYPES)
def test_every_form_of_each_planted_error_is_caught(plant: str) -> None:
    sl = shortlist()
    rng = random.Random(0)
    bases = correct_cases("breastmnist", sl, rng, per_candidate=4)
    caught, total = 0, 0
    for seed in range(12):
        for base in bases:
            planted = PLANTERS[plant](base, random.Random(seed))
            if planted is None:
                continue
            total += 1
            rejected = bool(failed(planted.recommendation, sl))
            caught += rejected
            assert rejected, (planted.how, planted.recommendation.explanation)
    assert total > 0 and caught == total


def test_correct_explanations_raise_no_alarm() -> None:
    sl = shortlist()
    for seed in range(5):
        for case in correct_cases("breastmnist", sl, random.Random(seed), per_candidate=4):
            assert not failed(case.recommendation, sl), case.recommendation.explanation


@pytest.mark.parametrize(
    "words",
    [
        "It is ranked ahead of c2 (efficientnet_lite2) by the meta-learner",
        "Unlike convnext_atto, it starts from pretrained weights",
        "A linear probe on the pretrained features suits so few training images",
        "We recommend efficientnet_lite0 on 128 px inputs with a batch size of 128",
        "EfficientNet-Lite0 suits small grey ultrasound images",
        "This pretrained network suits a small breast ultrasound dataset",
    ],
)
def test_true_free_words_pass(words: str) -> None:
    sl = shortlist()
    assert not failed(pick(sl, words), sl)


# ----------------------------------------------------------------- the general case
@pytest.mark.parametrize(
    ("words", "check"),
    [
        # another model as the pick: shortlisted, in a search space, or any timm-like name
        ("efficientnet_lite2 is the best choice here", "names_the_pick"),
        ("We recommend resnet50 for these images", "names_the_pick"),
        ("The chosen backbone, ViT-B_16, suits these images", "names_the_pick"),
        ("Our pick is swinv2_base_window12to24_192to384_22kft1k", "names_the_pick"),
        ("convnext_tiny is recommended for this dataset", "names_the_pick"),
        # another candidate id, or one that does not exist
        ("c3 is the recommendation", "names_the_pick"),
        ("Candidate c7 suits this dataset", "names_the_pick"),
        # the pick's fields: finetune mode, start, image size, learning rate, epochs
        ("Full fine-tuning adapts the whole network", "names_the_pick"),
        ("It is trained from scratch on these images", "names_the_pick"),
        ("It runs on 64 px inputs", "names_the_pick"),
        ("It uses an image size of 96", "names_the_pick"),
        ("Its learning rate of 0.00719 suits it", "names_the_pick"),
        ("It trains for 15 epochs", "names_the_pick"),
        ("The optimizer adamw helps it", "claims_true"),
        # false comparisons on the basis the sentence names
        ("It has a higher predicted balanced accuracy than c2", "names_the_pick"),
        ("The meta-learner ranks it behind efficientnet_lite2", "names_the_pick"),
        # 'top' next to a number that ranks it lower
        ("It is the top candidate at 81.9% predicted", "names_the_pick"),
        # placeholders copied from a prompt
        ("<model> suits this dataset", "no_placeholder"),
        # invented run ids, bare or short
        ("See run own-0123456789abcdef0123456789abcdef", "runs_described"),
        ("Run r9 agrees", "runs_described"),
        # certainty on a wide interval
        ("This is a high-confidence recommendation", "confidence_consistent"),
    ],
)
def test_wrong_words_are_caught(words: str, check: str) -> None:
    sl = shortlist()
    assert check in failed(pick(sl, words), sl)


@pytest.mark.parametrize(
    ("text_from", "text_to"),
    [
        ("predicted validation balanced accuracy of", "predicted validation accuracy of"),
        ("predicted validation balanced accuracy of", "predicted validation F1 score of"),
        ("predicted validation balanced accuracy of", "predicted test balanced accuracy of"),
        ("validation balanced accuracy (dataset", "validation accuracy (dataset"),
        ("validation balanced accuracy (dataset", "AUC (dataset"),
    ],
)
def test_metric_words_must_match_the_number(text_from: str, text_to: str) -> None:
    sl = shortlist()
    rec = pick(sl, "This pretrained configuration suits a small dataset")
    assert text_from in rec.explanation
    bad = with_text(rec, rec.explanation.replace(text_from, text_to, 1))
    assert "metric_words" in failed(bad, sl)


def test_a_run_described_by_another_runs_model_dataset_or_number_is_caught() -> None:
    sl = shortlist()
    rec = pick(sl, "This pretrained configuration suits a small dataset")
    text = rec.explanation
    for wrong in (
        text.replace("efficientnet_lite0 on breastmnist", "efficientnet_lite2 on breastmnist", 1),
        text.replace("on breastmnist reached", "on pneumoniamnist_mod reached", 1),
        text + " efficientnet_lite0 itself reached 90.4% validation balanced accuracy on "
        "breastmnist.",
    ):
        assert wrong != text
        assert failed(with_text(rec, wrong), sl), wrong


# ----------------------------------------------------------------- evidence
def test_evidence_puts_own_model_runs_first_and_collapses_near_duplicates() -> None:
    sl = shortlist()
    ev = evidence_for("breastmnist", sl, "top1")
    first = ev.runs["r1"]
    assert first.model == "efficientnet_lite0"  # the chosen model's run first
    dup = next(rid for rid, r in ev.runs.items() if r.run_id in (RUN_A, RUN_B))
    assert len(ev.cited(dup)) == 2 and "(2 runs, same configuration and score)" in ev.text
    assert "validation balanced accuracy 90.4%" in ev.text  # the run's own metric
    assert "Predicted balanced accuracy" in ev.text and "ranked by" in ev.text
    c2 = sl.candidate("c2")
    assert c2 is not None
    rec = from_candidate(
        c2,
        dataset="breastmnist",
        shortlist=sl,
        facts=sl.facts_for("c2"),
        runs=ev.cited(dup),
        rationale="This pretrained configuration suits a small dataset",
        origin=AnswerOrigin(llm="x", seed=0, attempts=1),
    )
    assert "Two past runs" in rec.explanation and rec.explanation.count("reached") == 1
    assert not failed(rec, sl)


def test_evidence_says_when_the_chosen_model_has_no_past_run() -> None:
    sl = shortlist()
    sl = sl.model_copy(
        update={"similar_runs": [r for r in sl.similar_runs if r.model != "efficientnet_lite0"]}
    )
    ev = evidence_for("breastmnist", sl, "top1")
    assert "No past run of efficientnet_lite0 on a similar dataset" in ev.text
    rec = fallback_recommendation("breastmnist", sl, attempts=2, llm="x", seed=0)
    assert "No past run of efficientnet_lite0" in rec.explanation and not failed(rec, sl)


# ----------------------------------------------------------------- the prompt
def test_the_prompt_has_no_model_or_dataset_a_writer_could_paste() -> None:
    system = load_prompt("recommender")
    models = {m for space in SPACES.values() for m in space.models}
    assert not [m for m in models if m in system]
    for noun in ("mnist", "dermoscopy", "skin-lesions", "resnet", "efficientnet"):
        assert noun not in system.lower()
    assert "<" in system  # placeholders, which the judge rejects in output


def test_case_dataclass_keeps_the_plant_type() -> None:
    sl = shortlist()
    base = correct_cases("breastmnist", sl, random.Random(0), per_candidate=1)[0]
    assert isinstance(base, Case) and base.plant is None


def test_the_cli_says_what_ranks_the_shortlist() -> None:
    from metallmix.cli.recommend import rank_basis_line

    line = rank_basis_line(shortlist())
    assert "ranked by the meta-learner's expected rank" in line
    assert "predicted validation balanced accuracy shown" in line
    rec = fallback_recommendation("breastmnist", shortlist(), attempts=2, llm="x", seed=0)
    assert rec.rank_basis.startswith("ranked by")


# ----------------------------------------------------------------- example and readability
def test_the_prompts_example_is_true_of_its_candidate_and_digit_free() -> None:
    """The example shown to the writer is built from this request's evidence: pasted as it
    is, it passes every code check, and it carries no digit to misattribute."""
    sl = shortlist()
    ev = render_evidence("breastmnist", sl)
    for c in ev.candidates:
        words = example_rationale(ev, c)
        assert not any(ch.isdigit() for ch in words), words
        assert not failed(pick(sl, words, candidate=c.candidate_id), sl), words
    c1 = sl.candidate("c1")
    assert c1 is not None
    assert "larger image size than usual helps" in example_rationale(ev, c1)
    # a different request gets a different example: nothing fixed a writer could paste
    flipped = sl.model_copy(
        update={
            "facts": [
                f.model_copy(update={"value": "32", "effect_points": -1.5})
                if f.feature == "image_size"
                else f
                for f in sl.facts
            ]
        }
    )
    assert "smaller image size than usual hurts" in example_rationale(
        render_evidence("breastmnist", flipped), c1
    )


@pytest.mark.parametrize(
    "words",
    [
        "The breastmnist dataset has a median resolution of .basicConfig(",
        "The image size of.",
        "The candidate c  ertains a smaller image size (f  ert",
        "Suits it.",
        "A pretrained start helps {placeholder} here",
    ],
)
def test_unreadable_words_are_rejected(words: str) -> None:
    sl = shortlist()
    assert "rationale_readable" in failed(pick(sl, words), sl)


def test_a_rationale_cut_off_by_the_length_bound_keeps_its_whole_sentences() -> None:
    assert whole_sentences("A pretrained start suits small data. It") == (
        "A pretrained start suits small data."
    )
    assert whole_sentences("No full stop at all here") == "No full stop at all here"
    assert whole_sentences("Ends well. Twice well!") == "Ends well. Twice well!"
