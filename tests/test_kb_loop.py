"""The validation loop, made explicit (issue 26): capped runs carry their fidelity and weigh
less, the next answer states what the KB learnt, intervals never reach past the evidence,
and resolution is read as the pipeline sees it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from cases import BREAST_MF

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.kb_changes import Answer, note_answer, read_last
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.records import Fidelity, Hyperparameters, Provenance, RunRecord
from metallmix.tools.meta.contracts import SimilarRun
from metallmix.tools.meta.encoding import FeatureEncoder, seen_resolution
from metallmix.tools.meta.metalearner import CAPPED_RUN_WEIGHT, run_weights
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE, QUICKTUNE_SPACE
from metallmix.tools.meta.shortlist import (
    EVIDENCE_MIN_RUNS,
    EVIDENCE_SLACK,
    Retrieved,
    evidence_ceiling,
    kb_coverage,
)

MF = BREAST_MF  # the breast-ultrasound example's meta-features (tests/cases.py)


def _run(run_id: str, score: float, *, dataset: str = "breastmnist", capped: bool = False,
         minutes: int = 0) -> RunRecord:  # fmt: skip
    fidelity = Fidelity(
        full=not capped,
        train_images=150 if capped else 546,
        full_train_images=546,
        max_train_images=150 if capped else None,
        epochs=5,
        threads=2,
    )
    return RunRecord(
        run_id=run_id,
        source="own",
        dataset=dataset,
        meta_features=MF,
        model="lcnet_050",
        hyperparameters=Hyperparameters(lr=1e-3, epochs=5, image_size=28),
        outcomes={"val_accuracy": score, "val_balanced_accuracy": score},  # type: ignore[arg-type]
        provenance=Provenance(notes=fidelity.notes()),
        created_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
    )


# ------------------------------------------------------------------ fidelity
def test_capped_run_records_its_fidelity_and_weighs_less() -> None:
    capped = _run("own-capped", 0.73, capped=True)
    assert not capped.fidelity.full
    assert capped.fidelity.describe() == "capped: 150 of 546 training images, 5 epochs, 2 threads"
    # a record from before fidelity existed (no notes) is full, and the KB hash input is
    # unchanged for it: fidelity lives in provenance.notes
    old = capped.model_copy(update={"provenance": Provenance()})
    assert old.fidelity == Fidelity() and old.fidelity.full
    frame = records_to_frame([capped, _run("own-full", 0.8), old])
    assert frame["fidelity_full"].tolist() == [False, True, True]
    assert run_weights(frame).tolist() == [CAPPED_RUN_WEIGHT, 1.0, 1.0]
    assert run_weights(pd.DataFrame({"x": [1, 2]})).tolist() == [1.0, 1.0]


# ------------------------------------------------------------------ KB-change notice
def test_next_answer_states_the_new_run_and_how_the_answer_moved(tmp_path: Path) -> None:
    path = tmp_path / "last_answer.json"
    kb = [_run(f"own-{i}", 0.7 + i / 100, minutes=i) for i in range(5)]
    first = Answer(dataset="breastmnist.npz", model="efficientnet_lite0", expected_score=0.819)
    assert note_answer(kb, "bundled.sqlite", first, path=path) == ""  # first answer: no news
    assert json.loads(path.read_text())["run_ids"] == sorted(r.run_id for r in kb)

    # same KB, same answer: nothing to say
    assert note_answer(kb, "bundled.sqlite", first, path=path) == ""

    validated = _run("own-validated", 0.733, dataset="breastmnist-n150s0", capped=True, minutes=9)
    second = Answer(dataset="breastmnist.npz", model="efficientnet_lite2", expected_score=0.882)
    notice = note_answer([*kb, validated], "workspace over bundled", second, path=path)
    assert notice.startswith("1 new run since your last answer: lcnet_050 on breastmnist-n150s0")
    assert "balanced accuracy 73.3% (capped: 150 of 546 training images" in notice
    assert "The KB is now read from workspace over bundled (last answer: bundled.sqlite)" in notice
    assert "Answer changed: efficientnet_lite0 81.9% -> efficientnet_lite2 88.2%." in notice
    last = read_last(path)
    assert last is not None and "own-validated" in last.run_ids and last.kb.startswith("work")


def test_a_damaged_last_answer_costs_only_the_notice(tmp_path: Path) -> None:
    path = tmp_path / "last_answer.json"
    path.write_text("{not json")
    assert note_answer([_run("own-1", 0.7)], "kb", Answer(), path=path) == ""
    assert read_last(path) is not None  # rewritten


# ------------------------------------------------------------------ evidence ceiling
def _similar(dataset: str, similarity: float) -> SimilarRun:
    return SimilarRun(
        run_id=f"{dataset}-x",
        dataset=dataset,
        similarity=similarity,
        model="lcnet_050",
        hyperparameters=Hyperparameters(),
    )


def test_interval_never_past_the_evidence_of_a_near_identical_dataset() -> None:
    runs = [_run(f"own-{i}", s) for i, s in enumerate([0.70, 0.80, 0.86, 0.75, 0.81])]
    found = Retrieved(shown=[_similar("breastmnist", 1.0)], neighbours=[])
    ceiling = evidence_ceiling(found, runs)
    assert ceiling is not None
    assert ceiling[0] == 0.86 + EVIDENCE_SLACK and "best of 5 KB runs" in ceiling[1]


def test_evidence_ceiling_only_on_strong_evidence() -> None:
    runs = [_run(f"own-{i}", 0.8) for i in range(EVIDENCE_MIN_RUNS)]
    # merely similar datasets (what LODO's held-out datasets have) never clip
    assert evidence_ceiling(Retrieved([_similar("breastmnist", 0.9)], []), runs) is None
    # too few runs
    few = runs[: EVIDENCE_MIN_RUNS - 1]
    assert evidence_ceiling(Retrieved([_similar("breastmnist", 1.0)], []), few) is None
    # capped runs are not evidence of the full dataset
    capped = [_run(f"own-c{i}", 0.8, capped=True) for i in range(EVIDENCE_MIN_RUNS)]
    assert evidence_ceiling(Retrieved([_similar("breastmnist", 1.0)], []), capped) is None


# ------------------------------------------------------------------ resolution as seen
def test_the_learner_reads_the_resolution_a_run_trains_at() -> None:
    records = synthetic_records(3, 10, seed=0)
    frame = records_to_frame(records)
    encoder = FeatureEncoder.fit(frame)
    col = encoder.columns.index("mf_resolution_h")
    big = frame.assign(mf_resolution_h=600.0, hp_image_size=64)
    small = frame.assign(mf_resolution_h=64.0, hp_image_size=64)
    assert np.array_equal(encoder.transform(big)[:, col], encoder.transform(small)[:, col])
    assert seen_resolution(np.array([600.0, 14.0]), np.array([64.0, 64.0])).tolist() == [64, 14]


def test_range_check_ignores_resolution_no_run_would_see() -> None:
    kb = [_run(f"own-{i}", 0.8) for i in range(3)]
    photo = MF.model_copy(update={"resolution_h": 450.0, "resolution_w": 600.0})
    ood, reasons = kb_coverage(photo, kb, train_sizes=CPU_ZOO_SPACE.image_sizes())
    assert not any("resolution" in r for r in reasons), reasons
    # a resolution below anything the KB's runs saw *is* a reason, and it says how far
    gpu_kb = [
        r.model_copy(update={"hyperparameters": Hyperparameters(image_size=128)})
        for r in [
            _run(f"q-{i}", 0.8).model_copy(
                update={"meta_features": MF.model_copy(update={"resolution_h": 128.0})}
            )
            for i in range(3)
        ]
    ]
    ood, reasons = kb_coverage(MF, gpu_kb, train_sizes=QUICKTUNE_SPACE.image_sizes())
    assert ood and any(r.startswith("resolution_h 28") and "0.22x" in r for r in reasons)


# ------------------------------------------------------------------ refit in seconds
def test_one_new_run_warm_starts_the_learner(tmp_path: Path) -> None:
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.meta.encoding import candidates_frame
    from metallmix.tools.meta.metalearner import WARM_ROUNDS, MetaLearnerConfig, fit_or_load

    records = synthetic_records(4, 20, seed=3)
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(records[:-1])
    cfg = MetaLearnerConfig(n_estimators=80, max_depth=3, bags=1)
    full = fit_or_load(kb, cfg, cache=tmp_path)
    assert full.info["fit"] == "full" and not full.info["cached"]

    kb.add(records[-1:])  # one validation run
    grown = fit_or_load(kb, cfg, cache=tmp_path)
    assert str(grown.info["fit"]).startswith(f"warm start: {WARM_ROUNDS} trees appended")
    assert "1 new run" in str(grown.info["fit"]) and grown.info["warm_chain"] == 1
    assert grown.info["kb_hash"] != full.info["kb_hash"]
    assert records[-1].run_id in grown.info["run_ids"]  # type: ignore[operator]
    # less work than a refit: WARM_ROUNDS trees per booster instead of n_estimators (the
    # wall-clock saving is a benchmark's figure, python bench/kb_refit.py, not a test's)
    assert cfg.n_estimators > WARM_ROUNDS
    # the grown learner is cached like any other, and predicts with the same columns
    again = fit_or_load(kb, cfg, cache=tmp_path)
    assert again.info["cached"] and str(again.info["fit"]).startswith("warm start")
    frame = candidates_frame(
        records[0].meta_features, [(r.model, r.hyperparameters) for r in records[:5]]
    )
    pred = again.predict(frame)
    assert np.all((pred.low <= pred.accuracy) & (pred.accuracy <= pred.high))

    # a run that left the KB is not a small growth: full refit
    fresh = SQLiteKnowledgeBase(tmp_path / "other.sqlite")
    fresh.add(records[1:])
    assert fit_or_load(fresh, cfg, cache=tmp_path).info["fit"] == "full"
