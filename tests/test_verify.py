"""Verifying a shortlist with successive halving: promotion, budget, resumption, records.

The scheduling tests use a fake worker (values from a table, no training) so that which
candidate is better is known in advance; their real twin,
``test_real_verify_nests_every_run_and_appends_to_the_kb``, trains tiny models for real.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from cases import TOY_MF
from test_train_trainer import write_npz

from metallmix.errors import ConfigError
from metallmix.tools import tracking
from metallmix.tools.datasets import load_dataset
from metallmix.tools.kb.records import Hyperparameters, Outcomes, Provenance, RunRecord
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.contracts import Candidate
from metallmix.tools.training.distributed import TrialJob, TrialOutcome
from metallmix.tools.training.halving import (
    HalvingSpec,
    first_rung,
    run_verify,
    score_margin,
    select,
)
from metallmix.tools.training.settings import TrialSettings

MF = TOY_MF


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data"))


@pytest.fixture
def fake() -> TrialSettings:
    """Every scheduling test's trial settings: the fake worker below, no real training."""
    return TrialSettings(trial_fn=fake_trial)


def halving(tmp_path: Path, name: str, **changes: Any) -> HalvingSpec:
    """The tests' study: five candidates, a one-epoch first rung, stored in ``tmp_path``."""
    spec = HalvingSpec(
        k=5, first_rung_epochs=1, storage=tmp_path / "studies.sqlite", study_name=name
    )
    return dataclasses.replace(spec, **changes)


def cand(
    i: int,
    *,
    lr: float,
    epochs: int = 4,
    model: str = "lcnet_050",
    score: float = 0.0,
    seconds: float | None = None,
) -> Candidate:
    hp = Hyperparameters(
        lr=lr,
        epochs=epochs,
        image_size=16,
        batch_size=16,
        optimizer="adamw",
        scheduler="none",
        augmentation="none",
    )
    return Candidate(
        candidate_id=f"c{i}",
        model=model,
        hyperparameters=hp,
        predicted_accuracy=0.5,
        accuracy_low=0.4,
        accuracy_high=0.6,
        predicted_seconds=seconds,
        score=score,
        origin="sampled",
    )


# Value of a configuration (keyed by lr) after 1 epoch and after its full 4 epochs. c1, the
# zero-shot pick, is the worst after one epoch; c3 is best after 1 epoch but not at the end.
TABLE = {
    0.001: (0.50, 0.60),
    0.002: (0.90, 0.80),
    0.003: (0.95, 0.70),
    0.004: (0.80, 0.99),
    0.005: (0.60, 0.97),
}
FIVE = [cand(i + 1, lr=lr, score=1 - i / 10) for i, lr in enumerate(TABLE)]


def fake_trial(job: TrialJob, data: object, *, sleep_per_epoch: float = 0.0) -> TrialOutcome:
    """A 'trained' run whose validation accuracy comes from TABLE (a first rung pauses the
    full schedule after ``stop_after`` epochs)."""
    epochs = int(job.stop_after or job.hp.epochs or 0)
    first, final = TABLE[float(job.hp.lr or 0)]
    if sleep_per_epoch:
        time.sleep(sleep_per_epoch * epochs)
    value = first if epochs == 1 else final
    record = RunRecord(
        run_id=f"fake-{job.key}",
        source="own",
        provenance=Provenance(notes=dict(job.tags)),
        dataset="toy",
        meta_features=MF,
        model=job.model,
        hyperparameters=job.hp,
        outcomes=Outcomes(
            val_accuracy=value,
            train_seconds=sleep_per_epoch * epochs,
            epochs_run=epochs,
            learning_curve=[value] * epochs,
        ),
        status="ok",
        seed=job.seed,
    )
    return TrialOutcome(job.key, record, None, None, None, sleep_per_epoch * epochs, "fake")


def slow_trial(job: TrialJob, data: object) -> TrialOutcome:
    return fake_trial(job, data, sleep_per_epoch=0.2)


def trials_by_rung(storage: Path, name: str) -> dict[int, list[str]]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")
    out: dict[int, list[str]] = {}
    for t in study.get_trials():
        if t.state.name == "COMPLETE":
            out.setdefault(int(t.user_attrs["rung"]), []).append(str(t.user_attrs["candidate_id"]))
    return out


def test_successive_halving_promotes_the_better_half(
    toy: Path, tmp_path: Path, fake: TrialSettings
) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    storage = tmp_path / "studies.sqlite"
    spec = halving(tmp_path, "v")
    result = run_verify(
        load_dataset(toy), FIVE, zero_shot_id="c1", halving=spec, settings=fake, kb=kb
    )
    rungs = trials_by_rung(storage, "v")
    assert sorted(rungs[0]) == ["c1", "c2", "c3", "c4", "c5"]  # everyone ran the first rung
    # 5 // 2 = 2 promoted: the two best after one epoch (c3 0.95, c2 0.90), not the rest.
    assert sorted(rungs[1]) == ["c2", "c3"]
    assert result.winner_id == "c2" and result.winner_value == pytest.approx(0.80)
    status = {c.candidate_id: c.status for c in result.candidates}
    assert status == {
        "c1": "pruned",
        "c2": "winner",
        "c3": "finalist",
        "c4": "pruned",
        "c5": "pruned",
    }
    assert not result.winner_is_zero_shot and result.zero_shot_value == pytest.approx(0.50)
    assert result.zero_shot_epochs == 1 and result.complete and not result.stopped_by_budget
    assert result.metric == "accuracy"  # the fake reports no balanced accuracy
    assert len(kb) == 7  # every run joined the KB (the closed loop)
    assert "c2" in result.summary() and "c1" in result.summary()
    # 24 validation images cannot separate 0.80 from 0.70: the summary says so (issue 29).
    assert result.val_images == 24
    assert result.winner_margin == pytest.approx(1.96 * math.sqrt(0.8 * 0.2 / 24))
    assert result.indistinct == ["c3"]
    assert "on 24 validation images" in result.summary()
    assert "c3 cannot be told apart from it" in result.summary()
    # Per-epoch values are reported to Optuna as intermediate values.
    study = optuna.load_study(study_name="v", storage=f"sqlite:///{storage}")
    full = [t for t in study.get_trials() if t.user_attrs.get("rung") == 1]
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in full)


def test_the_first_rung_pauses_the_full_schedule_and_promotion_continues_it(
    toy: Path, tmp_path: Path, fake: TrialSettings
) -> None:
    jobs: list[TrialJob] = []

    def seen(job: TrialJob, data: object) -> TrialOutcome:
        jobs.append(job)
        return fake_trial(job, data)

    spec = halving(tmp_path, "p")
    run_verify(
        load_dataset(toy),
        FIVE,
        zero_shot_id="c1",
        halving=spec,
        settings=fake.replace(trial_fn=seen),
    )
    rung0 = {j.tags["metallmix.candidate"]: j for j in jobs if j.tags["metallmix.rung"] == "0"}
    rung1 = {j.tags["metallmix.candidate"]: j for j in jobs if j.tags["metallmix.rung"] == "1"}
    # Every run trains the candidate's own schedule (4 epochs); the first rung pauses at 1.
    assert all(j.hp.epochs == 4 and j.stop_after == 1 for j in rung0.values())
    # A promoted candidate continues from its own first-rung checkpoint, to the end.
    assert sorted(rung1) == ["c2", "c3"]
    for cid, job in rung1.items():
        assert job.stop_after is None and job.checkpoint == rung0[cid].checkpoint
    assert len({j.checkpoint for j in rung0.values()}) == 5
    assert Path(str(rung0["c1"].checkpoint)).parent == tmp_path / "verify-checkpoints" / "p"


def test_optunas_pruner_alone_would_promote_the_first_trial() -> None:
    """Why verify schedules rungs itself: Optuna's SuccessiveHalvingPruner, with trials run
    one after another, compares a trial only with those before it, so the first (here the
    worst) is always promoted."""
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    )
    continued = []
    for first, _ in TABLE.values():
        trial = study.ask()
        trial.report(first, 1)
        continued.append(not trial.should_prune())
        study.tell(trial, first)
    assert continued[0]  # 0.50, the worst first-rung value, would continue to full epochs


def test_budget_stops_cleanly_and_more_budget_continues(
    toy: Path, tmp_path: Path, fake: TrialSettings
) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    storage = tmp_path / "studies.sqlite"
    slow = fake.replace(trial_fn=slow_trial)
    # The first rung costs ~5 x 0.2 s; a promoted run ~0.8 s more: it does not fit in 1.5 s.
    spec = halving(tmp_path, "b", budget_seconds=1.5)
    result = run_verify(
        load_dataset(toy), FIVE, zero_shot_id="c1", halving=spec, settings=slow, kb=kb
    )
    assert result.stopped_by_budget and not result.complete
    assert result.seconds_spent <= 1.5
    assert trials_by_rung(storage, "b") == {0: ["c1", "c2", "c3", "c4", "c5"]}
    assert {c.candidate_id: c.status for c in result.candidates}["c3"] == "winner"
    assert [r.state for r in result.candidate("c2").runs] == ["done", "skipped-budget"]  # type: ignore[union-attr]
    study = optuna.load_study(study_name="b", storage=f"sqlite:///{storage}")
    assert not [t for t in study.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    run = tracking.client().get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["stopped_by_budget"] == 1.0
    # The same call with a larger budget runs only the two promoted full runs.
    more_time = dataclasses.replace(spec, budget_seconds=30)
    more = run_verify(
        load_dataset(toy), FIVE, zero_shot_id="c1", halving=more_time, settings=slow, kb=kb
    )
    assert more.runs_resumed == 5 and more.runs_this_time == 2 and more.complete
    assert more.winner_id == "c2" and len(kb) == 7


def test_resumption_retries_the_killed_run_and_retrains_nothing(
    toy: Path, tmp_path: Path, fake: TrialSettings
) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    storage = tmp_path / "studies.sqlite"
    calls = {"n": 0}

    def killed_third(job: TrialJob, data: object) -> TrialOutcome:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third run
        return fake_trial(job, data)

    spec = halving(tmp_path, "r")
    with pytest.raises(KeyboardInterrupt):
        killed = fake.replace(trial_fn=killed_third)
        run_verify(load_dataset(toy), FIVE, zero_shot_id="c1", halving=spec, settings=killed, kb=kb)
    assert len(kb) == 2
    # A later call gets another shortlist (the KB grew): the stored plan wins.
    other = [cand(9, lr=0.009)]
    result = run_verify(
        load_dataset(toy), other, zero_shot_id="c1", halving=spec, settings=fake, kb=kb
    )
    assert result.retried == 1 and result.runs_resumed == 2 and result.runs_this_time == 5
    assert result.winner_id == "c2" and len(kb) == 7
    rungs = trials_by_rung(storage, "r")
    assert sorted(rungs[0]) == ["c1", "c2", "c3", "c4", "c5"]  # each exactly once
    again = run_verify(
        load_dataset(toy), FIVE, zero_shot_id="c1", halving=spec, settings=fake, kb=kb
    )
    assert again.runs_this_time == 0 and again.runs_resumed == 7 and len(kb) == 7


def test_select_and_bad_settings(toy: Path, tmp_path: Path) -> None:
    dup = cand(6, lr=0.002, score=0.85)  # same configuration as c2, scored lower
    picked = select([*FIVE, dup], 4, "c4")
    assert [c.candidate_id for c in picked] == ["c4", "c1", "c2", "c3"]
    with pytest.raises(ConfigError, match="not in the shortlist"):
        select(FIVE, 3, "c9")
    with pytest.raises(ConfigError, match="at least 1"):
        select(FIVE, 0, "c1")
    with pytest.raises(ConfigError, match="budget"):
        run_verify(
            load_dataset(toy),
            FIVE,
            zero_shot_id="c1",
            halving=halving(tmp_path, "s", budget_seconds=0),
        )
    with pytest.raises(ConfigError, match="untracked"):
        run_verify(
            load_dataset(toy),
            FIVE,
            zero_shot_id="c1",
            halving=halving(tmp_path, "s"),
            settings=TrialSettings(track=False),
        )


def _record(dataset: str, curve: list[float]) -> RunRecord:
    return RunRecord(
        run_id=f"r-{dataset}-{len(curve)}-{curve[0]}-{curve[-1]}",
        source="own",
        provenance=Provenance(),
        dataset=dataset,
        meta_features=MF,
        model="lcnet_050",
        hyperparameters=Hyperparameters(epochs=len(curve)),
        outcomes=Outcomes(val_accuracy=max(curve), learning_curve=curve),
        status="ok",
    )


def test_first_rung_comes_from_the_kbs_learning_curves() -> None:
    # Epoch 1 ranks runs in reverse of the final ranking; epoch 2 ranks them like it.
    records = [
        _record(ds, [0.3 - 0.05 * i, 0.5 + 0.1 * i, 0.6 + 0.1 * i, 0.6 + 0.1 * i])
        for ds in ("a", "b")
        for i in range(5)
    ]
    choice = first_rung(records, 4)
    assert choice.epochs == 2 and choice.source == "kb-learning-curves"
    assert choice.spearman == pytest.approx(1.0) and choice.datasets == 2
    # When epoch 1 already ranks like the end, the first rung is 1 epoch.
    early = [
        _record(ds, [0.3 + 0.1 * i, 0.4 + 0.1 * i, 0.5 + 0.1 * i]) for ds in "ab" for i in range(5)
    ]
    assert first_rung(early, 4).epochs == 1
    assert first_rung([], 4).source == "default" and first_rung([], 4).epochs == 1


@pytest.mark.real
def test_real_verify_nests_every_run_and_appends_to_the_kb(toy: Path, tmp_path: Path) -> None:
    """Real twin: tiny real training, every run an MLflow run under the verification's run,
    itself under the recommendation's run, and a KB record naming that MLflow run."""
    from metallmix.graphs import recording as rec_tracking

    parent = rec_tracking.start_run(run_name="toy")
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    three = [
        cand(1, lr=0.01, epochs=2),
        cand(2, lr=0.003, epochs=2, model="resnet10t"),
        cand(3, lr=0.001, epochs=2),
    ]
    spec = halving(tmp_path, "real", k=3, parent_run_id=parent)
    one_thread = TrialSettings(threads=1)
    result = run_verify(
        load_dataset(toy), three, zero_shot_id="c1", halving=spec, settings=one_thread, kb=kb
    )
    assert result.complete and result.winner_id is not None
    runs = [r for c in result.candidates for r in c.runs]
    assert len(runs) == 4 and all(r.state == "done" for r in runs)  # 3 first-rung + 1 full
    first = {c.candidate_id: c.runs[0].value for c in result.candidates}
    promoted = [c.candidate_id for c in result.candidates if len(c.runs) == 2]
    assert promoted == [max(first, key=lambda c: (first[c], -int(c[1:])))]
    client = tracking.client()
    verify_run = client.get_run(result.mlflow_run_id)
    assert verify_run.data.tags["mlflow.parentRunId"] == parent
    assert verify_run.data.tags[tracking.KIND_TAG] == "verify"
    children = client.search_runs(
        [verify_run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'",
    )
    assert {r.info.run_id for r in children} == {r.mlflow_run_id for r in runs}
    assert all(r.data.tags["metallmix.kind"] == "training-run" for r in children)
    records = {r.provenance.mlflow_run_id: r for r in kb.iter_records()}
    assert set(records) == {r.mlflow_run_id for r in runs}
    for r in runs:  # each run is its candidate's configuration, trained r.epochs of 2
        record = records[r.mlflow_run_id]
        assert record.hyperparameters.epochs == 2 and record.outcomes.epochs_run == r.epochs
        # the first rung is a paused snapshot (not learnt as a final score), the rest complete
        assert record.outcomes.completed == (r.epochs == 2)
    final = next(records[c.runs[1].mlflow_run_id] for c in result.candidates if len(c.runs) == 2)
    assert final.provenance.notes["resumed_epochs"] == 1  # continued, not retrained
    assert len(final.outcomes.learning_curve) == 2  # the whole curve, paused part included
    assert not (tmp_path / "verify-checkpoints").exists()  # complete: removed
    # Resumed: nothing is retrained.
    again = run_verify(
        load_dataset(toy), three, zero_shot_id="c1", halving=spec, settings=one_thread, kb=kb
    )
    assert again.runs_this_time == 0 and len(kb) == 4 and again.winner_id == result.winner_id


def test_score_margin_is_the_validation_sets_binomial_noise() -> None:
    """Balanced accuracy: the mean of per-class binomials; more images, a narrower band."""
    assert score_margin(0.5, [10, 10], "balanced_accuracy") == pytest.approx(
        1.96 * math.sqrt(0.25 / 10 + 0.25 / 10) / 2
    )
    small = score_margin(0.8, [15, 5], "balanced_accuracy")
    large = score_margin(0.8, [1500, 500], "balanced_accuracy")
    assert large < 0.03 < 0.2 < small
    assert score_margin(0.8, [15, 5], "accuracy") == pytest.approx(1.96 * math.sqrt(0.16 / 20))
    assert score_margin(0.8, [], "accuracy") == 1.0  # no images: no information
    assert score_margin(1.0, [10, 10], "balanced_accuracy") == 0.0
