"""LODO: no held-out row ever reaches training, metrics are right, the CLI writes its files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metallmix.benchmarks import lodo
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import main
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.metalearner import MetaLearner

# synth00 and synth01 are derived tasks of one origin: they must be held out together.
GROUPS = {"synth00": "origin", "synth01": "origin"}


def _reject_nan(name: str) -> float:
    raise AssertionError(f"--json printed {name}, which is not JSON")


def _records():  # type: ignore[no-untyped-def]
    return synthetic_records(4, 12, seed=8, groups=GROUPS)


def test_folds_hold_out_whole_groups() -> None:
    records = _records()
    seen = []
    for group, train, test in lodo.folds(records):
        seen.append(group)
        assert {r.dataset_group for r in test} == {group}
        assert not {r.run_id for r in train} & {r.run_id for r in test}
        assert group not in {r.dataset_group for r in train}
        if group == "origin":
            assert {r.dataset for r in test} == {"synth00", "synth01"}
            assert not {"synth00", "synth01"} & {r.dataset for r in train}
    assert sorted(seen) == ["origin", "synth02", "synth03"]


def test_leak_guard_raises() -> None:
    records = _records()
    test = [r for r in records if r.dataset_group == "origin"]
    train = [r for r in records if r.dataset_group != "origin"] + test[:1]
    with pytest.raises(lodo.LeakError, match="held-out group 'origin'"):
        lodo.assert_no_leak("origin", train, test)


def test_learners_never_see_the_held_out_group(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted: list[set[str]] = []
    original = MetaLearner.fit.__func__  # type: ignore[attr-defined]

    def spy(cls, data, cfg=None):  # type: ignore[no-untyped-def]
        learner = original(cls, data, cfg)
        fitted.append(set(data["dataset_group"]))
        return learner

    monkeypatch.setattr(MetaLearner, "fit", classmethod(spy))
    result = lodo.run_lodo(
        _records(),
        lodo.LodoSpec(objectives=("raw",), n_estimators=20, max_depth=3, config_only=False),
    )
    assert [f["group"] for f in result.folds] == ["origin", "synth02", "synth03"]
    # two fits per fold: the ranking learner and the interval learner (calibrated in-fold)
    assert len(fitted) == 2 * len(result.folds)
    for i, fold in enumerate(result.folds):
        for groups in fitted[2 * i : 2 * i + 2]:
            assert fold["group"] not in groups
            assert fold["train_groups"] == sorted(groups)


def test_metrics() -> None:
    true = np.array([0.2, 0.9, 0.5, 0.4])
    assert lodo.regret_and_rank(true, 1) == (0.0, 1.0)
    assert lodo.regret_and_rank(true, 0) == (1.0, 4.0)
    regret, rank = lodo.regret_and_rank(true, 2)
    assert regret == pytest.approx(0.4 / 0.7) and rank == 2.0
    # best-of-1 is the plain average; best-of-n always finds the best
    r1, k1 = lodo.expected_best_of(true, 1)
    assert r1 == pytest.approx(np.mean((0.9 - true) / 0.7)) and k1 == pytest.approx(2.5)
    assert lodo.expected_best_of(true, 4) == (pytest.approx(0.0), pytest.approx(1.0))
    # exact expectation agrees with brute force over all pairs
    from itertools import combinations

    pairs = [max(true[list(c)]) for c in combinations(range(4), 2)]
    brute = np.mean([(0.9 - p) / 0.7 for p in pairs])
    assert lodo.expected_best_of(true, 2)[0] == pytest.approx(brute)


def test_cli_on_a_sqlite_kb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "own.sqlite")
    kb.add(_records())
    out = tmp_path / "results"
    code = main(
        ["bench", "lodo", "--kb", str(kb.path), "--out", str(out), "--trees", "20", "--json"]
    )
    assert code == 0
    payload = json.loads(capsys.readouterr().out, parse_constant=_reject_nan)
    methods = {row["method"] for row in payload["summary"]}
    assert {"metalearner-ensemble", "config-only", "random", "best-default"} <= methods
    assert "nearest-dataset" in methods and "metalearner-raw" not in methods
    rows = {row["method"]: row for row in payload["summary"]}
    # keeping the best of the top 5 can never be worse than the top 1
    assert rows["metalearner-ensemble-top5"]["regret"] <= rows["metalearner-ensemble"]["regret"]
    # what scripts need: the product's pick rule and every per-dataset row
    assert payload["default_method"] == "metalearner-ensemble"
    per_row = payload["rows"]
    assert {"dataset", "method", "regret", "rank"} == set(per_row[0])
    assert {r["method"] for r in per_row} == methods
    assert 0.0 <= payload["interval"]["coverage"] <= 1.0
    # coverage and width, overall and per compute regime
    assert payload["interval"]["cpu_mean_width"] >= 0.0
    assert payload["interval"]["cpu_n_runs"] == payload["interval"]["n_runs"]
    assert {p.name for p in out.iterdir()} == {
        "lodo_own.md",
        "lodo_own.json",
        "lodo_own.png",
        "lodo_own.log",
    }
    # the progress reached the log file too, one line per fold, with an estimate
    log = (out / "lodo_own.log").read_text().splitlines()
    assert "3 folds" in log[0] and log[-1].split(" ", 2)[2].startswith("done in")
    fold_lines = [line for line in log if " fold " in line]
    assert [line.split(" fold ")[1].split(" (")[0] for line in fold_lines] == [
        "1 of 3",
        "2 of 3",
        "3 of 3",
    ]
    assert all("elapsed" in line and "left" in line for line in fold_lines)
    assert payload["files"]["log"] == str(out / "lodo_own.log")
    table = (out / "lodo_own.md").read_text()
    assert "| random-best-of-10 |" in table and "synth02" in table
    assert "| regime | runs | coverage | mean width |" in table and "| cpu |" in table
    random_row = next(r for r in payload["summary"] if r["method"] == "random")
    assert 0.0 < random_row["regret"] < 1.0


def test_cli_rejects_a_missing_kb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "lodo", "--kb", str(tmp_path / "nope.sqlite")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_objectives_subset_and_bad_objective(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = SQLiteKnowledgeBase(tmp_path / "own.sqlite")
    kb.add(_records())
    args = ["bench", "lodo", "--kb", str(kb.path), "--out", str(tmp_path), "--trees", "10"]
    assert main([*args, "--objectives", "raw,ensemble", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out, parse_constant=_reject_nan)
    methods = {r["method"] for r in payload["rows"]}
    assert {"metalearner-raw", "metalearner-ensemble", "config-only"} <= methods
    assert "metalearner-normalized" not in methods
    assert main([*args, "--objectives", "bogus"]) == 2
    assert "--objectives 'bogus'" in capsys.readouterr().err


def test_scores_against_completed_runs_only() -> None:
    """A partial run is neither a candidate nor the ground truth, however high its score."""
    records = _records()
    held = [r for r in records if r.dataset == "synth02"]
    snapshot = held[0].model_copy(
        update={
            "run_id": "snapshot",
            "outcomes": held[0].outcomes.model_copy(
                update={"val_accuracy": 1.0, "epochs_run": 1, "epoch_budget": 50}
            ),
        }
    )
    result = lodo.run_lodo([*records, snapshot], lodo.LodoSpec(n_estimators=10, max_depth=3))
    assert result.n_partial_runs == 1
    rows = [r for r in result.rows if r.dataset == "synth02"]
    assert rows and all(r.n_configs == len(held) for r in rows)
    assert all(r.best_accuracy == max(h.outcomes.val_accuracy or 0 for h in held) for r in rows)


def test_ground_truth_is_the_score_the_product_optimises() -> None:
    """Runs that recorded validation balanced accuracy are scored by it (the medical metric
    the meta-learner learns), not by plain accuracy, which favours the majority class."""
    records = _records()
    rng = np.random.default_rng(3)
    balanced = [
        r.model_copy(
            update={
                "outcomes": r.outcomes.model_copy(
                    update={"val_balanced_accuracy": float(rng.uniform(0.2, 0.9))}
                )
            }
        )
        for r in records
    ]
    result = lodo.run_lodo(balanced, lodo.LodoSpec(n_estimators=10, max_depth=3, intervals=False))
    for dataset in {"synth02", "synth03"}:
        held = [r for r in balanced if r.dataset == dataset]
        rows = [r for r in result.rows if r.dataset == dataset]
        assert rows and all(row.best_accuracy == max(h.score or 0 for h in held) for row in rows)
        assert max(h.score or 0 for h in held) != max(h.outcomes.val_accuracy or 0 for h in held)


def test_each_regime_learns_from_its_own_runs_as_the_product_does() -> None:
    """A KB mixing CPU runs and Quick-Tune (GPU) runs: a held-out CPU group is predicted by a
    learner fitted on CPU runs only (one meta-learner per regime), unless told otherwise."""
    cpu = _records()
    gpu = [
        r.model_copy(
            update={
                "run_id": f"qt-{r.run_id}",
                "source": "quicktune",
                "dataset": f"qt-{r.dataset}",
                "dataset_group": f"qt-{r.dataset}",
            }
        )
        for r in synthetic_records(3, 12, seed=9)
    ]
    per = lodo.run_lodo(
        [*cpu, *gpu], lodo.LodoSpec(objectives=("raw",), n_estimators=10, max_depth=3)
    )
    gpu_groups = {r.dataset_group for r in gpu}
    for fold in per.folds:
        train_groups = set(fold["train_groups"])  # type: ignore[arg-type]
        if fold["group"] in gpu_groups:
            assert train_groups <= gpu_groups
        else:
            assert not train_groups & gpu_groups
    one = lodo.run_lodo(
        [*cpu, *gpu],
        lodo.LodoSpec(objectives=("raw",), n_estimators=10, max_depth=3, per_regime=False),
    )
    assert any(set(f["train_groups"]) & gpu_groups for f in one.folds if f["group"] == "origin")  # type: ignore[arg-type]
    # The only group of a regime has nobody to learn from: skipped and said so.
    lone = [r for r in gpu if r.dataset_group == gpu[0].dataset_group]
    alone = lodo.run_lodo(
        [*cpu, *lone], lodo.LodoSpec(objectives=("raw",), n_estimators=10, max_depth=3)
    )
    skipped = [f for f in alone.folds if "skipped" in f]
    assert [f["group"] for f in skipped] == [lone[0].dataset_group]


def test_parallel_folds_give_the_serial_figures() -> None:
    """Folds fitted in 2 worker processes (one XGBoost thread each) score exactly as the
    serial run with 2 threads per fit: same rows, intervals and fold records."""
    spec = lodo.LodoSpec(objectives=("raw",), n_estimators=10, max_depth=3, seed=3)
    finished: list[str] = []
    serial = lodo.run_lodo(_records(), spec, n_jobs=1, nthread=2)
    parallel = lodo.run_lodo(_records(), spec, n_jobs=2, on_fold=finished.append)
    assert (parallel.n_jobs, parallel.nthread) == (2, 1)
    assert sorted(finished) == ["origin", "synth02", "synth03"]
    assert [r.model_dump() for r in parallel.rows] == [r.model_dump() for r in serial.rows]
    assert parallel.interval == serial.interval and parallel.folds == serial.folds
    # the shortlist rules are scored beside the plain top 5
    summary = parallel.summary()
    for rule in ("top5", "portfolio5", "portfolio5-all", "family5"):
        assert f"metalearner-raw-{rule}" in summary.index
        # the best of 5 trained can never be worse than the single pick
        assert (
            summary.loc[f"metalearner-raw-{rule}", "regret"]
            <= summary.loc["metalearner-raw", "regret"]
        )
    with pytest.raises(ValueError, match="n_jobs must be at least 1"):
        lodo.run_lodo(_records(), n_jobs=0)
