"""``metallmix bench compare`` end to end on a tiny generated dataset (budget 2, one seed).

Real trainer, real Optuna, real MLflow, real meta-learner; the LLM is scripted in the unit
tests (it can only fail, so the graph's deterministic fallback picks the top candidate) and
the real fast model runs in the ``real`` twin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.benchmarks.compare import (
    EXPERIMENT,
    METHODS,
    CompareSettings,
    check_no_leak,
    holdout_kb,
    run_compare,
)
from metallmix.benchmarks.lodo import LeakError
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import main
from metallmix.errors import ConfigError
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.store import SQLiteKnowledgeBase

SETTINGS = CompareSettings(
    budget=2,
    seeds=[0],
    epoch_cap=1,
    models=["lcnet_050", "resnet10t"],
    image_sizes=[28],
    max_val_images=20,
    threads=1,
    n_candidates=3,
    verify=3,
)
# metallmix, best-default, RS, TPE and GP trials, and three halvings (verify, RS+SH,
# best-default+SH) of 3 candidates each at 1 epoch (with a 1-epoch cap the first rung is
# already every candidate's full run)
# The settings a stored comparison state carries, as the report tests build it by hand.
REPORT_SETTINGS: dict[str, Any] = {
    "seeds": [0],
    "budget": 10,
    "verify": 5,
    "epoch_cap": 5,
    "max_train_images": None,
    "max_val_images": None,
    "models": None,
    "image_sizes": None,
    "threads": None,
}
N_TRAININGS = 1 + 1 + 2 + 2 + 2 + 3 + 3 + 3


def make_npz(path: Path, seed: int = 0) -> Path:
    """2 classes x 40 training images of 16x16, separable by brightness."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat([0, 1], n)
        base = np.where(labels[:, None, None] == 0, 60, 190)
        images = np.clip(base + rng.normal(0, 25, (2 * n, 16, 16)), 0, 255).astype(np.uint8)
        return images, labels.astype(np.int64)

    arrays: dict[str, np.ndarray] = {}
    for name, n in (("train", 40), ("val", 10), ("test", 10)):
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = split(n)
    np.savez(path, **arrays)
    return path


def planted(name: str, n: int) -> list[RunRecord]:
    """Runs of the compared dataset (and a derived task) that must never reach the KB."""
    base = synthetic_records(1, n, seed=7, space=SETTINGS.space())
    out = []
    for i, r in enumerate(base):
        dataset = name if i % 2 == 0 else f"{name}/n20"
        out.append(
            r.model_copy(update={"run_id": f"leak-{i}", "dataset": dataset, "dataset_group": name})
        )
    return out


def make_kb(path: Path, dataset: str = "tiny") -> Path:
    records = synthetic_records(4, 12, seed=0, space=SETTINGS.space()) + planted(dataset, 4)
    SQLiteKnowledgeBase(path).add(records)
    return path


def bad_llm(n: int = 8) -> ScriptedLLM:
    """Answers nothing usable: the graph falls back to the top-scored candidate."""
    return ScriptedLLM(["this is not JSON"] * n)


def training_runs() -> list[Any]:
    from metallmix.tools import tracking

    client = tracking.client()
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get(tracking.KIND_TAG) == tracking.TRAINING_KIND]


def check_report(report: dict[str, Any], dataset: str = "tiny") -> None:
    assert report["complete"] is True
    entry = report["datasets"][dataset]
    leak = entry["leak_check"]
    assert leak["passed"] and leak["violations"] == 0
    assert leak["removed_runs"] == 4 and leak["kept_runs"] == 48
    assert sorted(leak["removed_datasets"]) == [dataset, f"{dataset}/n20"]
    assert set(entry["methods"]) == set(METHODS)
    for method, row in entry["methods"].items():
        assert row["seeds_done"] == 1, method
        assert 0.0 <= row["test_accuracy_mean"] <= 1.0
        assert row["config_seconds"] is not None and row["config_seconds"] >= 0
        assert row["train_seconds_mean"] > 0
        (run,) = row["per_seed"]
        epochs = run["hyperparameters"].get("epochs")
        assert epochs is not None and epochs <= SETTINGS.epoch_cap, method  # same epoch cap
    assert entry["best"] and set(entry["best"]) <= set(entry["within_1pt"])
    for method in ("random", "tpe", "gp"):
        (search,) = entry["methods"][method]["per_seed"]
        assert search["trials_done"] == 2
        assert search["search_seconds"] > 0
    (verified,) = entry["methods"]["metallmix+verify"]["per_seed"]
    assert verified["runs"] == 3 and verified["first_rung_epochs"] == 1
    assert verified["config_seconds"] >= verified["verify_seconds"] > 0
    assert verified["model"] in SETTINGS.models  # type: ignore[operator]
    # The halving baselines: the same halving (run_verify's studies), K and first rung.
    for method, prefix in (("random+sh", "r"), ("best-default+sh", "d")):
        (halved,) = entry["methods"][method]["per_seed"]
        assert halved["runs"] == 3 and halved["first_rung_epochs"] == verified["first_rung_epochs"]
        assert halved["first_rung_from"] == "metallmix+verify"
        assert [c["candidate_id"] for c in halved["candidates"]] == [
            f"{prefix}1",
            f"{prefix}2",
            f"{prefix}3",
        ]
        assert halved["cold_seconds"] == halved["warm_seconds"] >= halved["verify_seconds"] > 0
        assert halved["test_balanced_accuracy"] is not None
    # Cold includes fitting the meta-learner from an empty cache; warm has it cached.
    zero = entry["methods"]["metallmix"]
    assert zero["cold_seconds"] > zero["warm_seconds"] > 0
    ver = entry["methods"]["metallmix+verify"]
    assert ver["cold_seconds"] - ver["warm_seconds"] == pytest.approx(
        zero["cold_seconds"] - zero["warm_seconds"]
    )
    assert set(entry["verify_vs_halving"]) == {"random+sh", "best-default+sh"}
    vs = entry["verify_vs_rs"]
    assert vs["balanced_at_least_rs"] in (True, False) and vs["rs_at_k_seconds"] is None  # RS@2
    for method in ("metallmix", "best-default"):
        (run,) = entry["methods"][method]["per_seed"]
        assert run["hyperparameters"]["epochs"] <= 1
        assert run["model"] in SETTINGS.models  # type: ignore[operator]
    overall = report["overall"]
    assert overall["metallmix"]["config_speedup_vs_metallmix"] == pytest.approx(1.0)
    assert sum(o["best"] for o in overall.values()) >= 1


def test_holdout_kb_removes_dataset_and_derived_tasks(tmp_path: Path) -> None:
    records = synthetic_records(3, 5, seed=1) + planted("tiny", 4)
    check = holdout_kb(records, {"tiny"}, tmp_path / "kb.sqlite")
    assert check.removed_runs == 4 and check.kept_runs == 15 and check.passed
    kept = SQLiteKnowledgeBase(tmp_path / "kb.sqlite", read_only=True)
    assert not any(r.dataset_group == "tiny" for r in kept.iter_records())
    # A KB that still holds the dataset fails the check, naming the run.
    leaky = SQLiteKnowledgeBase(tmp_path / "leaky.sqlite")
    leaky.add(records)
    with pytest.raises(LeakError, match="leak-0"):
        check_no_leak(leaky, {"tiny"})


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="vit_huge"):
        CompareSettings(models=["vit_huge"]).space()
    with pytest.raises(ConfigError, match="image"):
        CompareSettings(image_sizes=[17]).space()
    space = CompareSettings(epoch_cap=2).space()
    assert space.params["epochs"].high == 2  # type: ignore[union-attr]


@pytest.mark.slow
def test_compare_resumes_after_interruption(tmp_path: Path) -> None:
    data = make_npz(tmp_path / "tiny.npz")
    kb = make_kb(tmp_path / "kb.sqlite")
    state = tmp_path / "state"

    class Stop(Exception):
        pass

    seen: list[str] = []

    def stop_after_first_training(key: str, value: dict[str, Any]) -> None:
        seen.append(key)
        if key == "tiny/metallmix/s0":
            raise Stop

    llm = bad_llm()
    with pytest.raises(Stop):
        run_compare(
            [data], SETTINGS, state_dir=state, kb=kb, llm=llm, on_piece=stop_after_first_training
        )
    assert len(training_runs()) == 1
    first = json.loads((state / "state.json").read_text())["pieces"]["tiny/metallmix/s0"]
    assert llm.calls, "the recommendation used the LLM"

    # Resume: nothing finished is redone; an LLM call now would raise (no responses left).
    resumed: list[str] = []
    report = run_compare(
        [data],
        SETTINGS,
        state_dir=state,
        kb=kb,
        llm=ScriptedLLM([]),
        on_piece=lambda k, v: resumed.append(k) if v.get("resumed") else None,
    )
    check_report(report)
    assert "tiny/metallmix/recommendation" in resumed and "tiny/metallmix/s0" in resumed
    load = report["load"]  # every piece keeps the machine load it ran under
    assert load["pieces_with_load"] == load["pieces"] > 0 and load["min"] >= 0
    runs = training_runs()
    assert len(runs) == N_TRAININGS
    again = report["datasets"]["tiny"]["methods"]["metallmix"]["per_seed"][0]
    assert again["mlflow_run_id"] == first["mlflow_run_id"]

    # RS+SH halves the configurations the RS study drew first with the same seed.
    import optuna

    storage = f"sqlite:///{state / 'optuna.sqlite'}"
    rs = optuna.load_study(study_name="tiny-random-s0", storage=storage)
    plan = optuna.load_study(study_name="tiny-random-sh-s0", storage=storage).user_attrs
    halved = plan["verify_plan"]["candidates"]
    for trial, cand in zip(rs.trials, halved, strict=False):
        assert trial.params["model"] == cand["model"]
        assert trial.params["lr"] == pytest.approx(cand["hyperparameters"]["lr"])
    assert len(rs.trials) == 2 and len(halved) == 3

    # A third run retrains nothing and reports the same numbers.
    third = run_compare([data], SETTINGS, state_dir=state, kb=kb, llm=ScriptedLLM([]))
    assert len(training_runs()) == N_TRAININGS
    assert third["datasets"]["tiny"]["methods"] == report["datasets"]["tiny"]["methods"]

    # Everything nests under one parent run.
    from metallmix.tools import tracking

    client = tracking.client()
    parent = report["mlflow_parent_run_id"]
    exp = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    names = {r.info.run_name for r in children}
    assert {
        "tiny:metallmix",
        "tiny:best-default",
        "tiny:metallmix+verify",
        "tiny:random+sh",
        "tiny:best-default+sh",
    } <= names
    assert sum(n.startswith("search:") for n in names) == 3  # RS, TPE, GP

    # Other settings on the same state are refused, not silently mixed.
    other = SETTINGS.model_copy(update={"budget": 3})
    with pytest.raises(ConfigError, match="other settings"):
        run_compare([data], other, state_dir=state, kb=kb, llm=ScriptedLLM([]))


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    data = make_npz(tmp_path / "tiny.npz")
    kb = make_kb(tmp_path / "kb.sqlite")
    return [
        "bench",
        "compare",
        "--data",
        str(data),
        "--budget",
        "2",
        "--seeds",
        "1",
        "--kb",
        str(kb),
        "--epochs-max",
        "1",
        "--models",
        "lcnet_050,resnet10t",
        "--image-sizes",
        "28",
        "--max-val-images",
        "20",
        "--threads",
        "1",
        "--verify",
        "3",
        "--out",
        str(tmp_path / "results"),
        "--json",
        *extra,
    ]


def _check_cli(tmp_path: Path, out: str) -> dict[str, Any]:
    report = json.loads(out)
    results = tmp_path / "results"
    for suffix in ("md", "json", "png"):
        assert (results / f"compare_tiny.{suffix}").is_file()
    table = (results / "compare_tiny.md").read_text()
    assert "| tiny | MetaLLMiX (zero-shot) |" in table and "No-leak check" in table
    assert "4 of 52 KB runs removed" in table
    from metallmix.tools import tracking

    parent = tracking.client().get_run(report["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert "tiny.metallmix.test_accuracy_mean" in parent.data.metrics
    assert "tiny.metallmix-verify.test_accuracy_mean" in parent.data.metrics
    assert "| tiny | MetaLLMiX+verify@3 |" in table
    return report


@pytest.mark.slow
def test_cli_compare_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import metallmix.agents.runtime.llm as llm_module

    monkeypatch.setattr(llm_module, "load_llm", lambda *a, **k: bad_llm())
    assert main(_cli(tmp_path)) == 0
    report = _check_cli(tmp_path, capsys.readouterr().out)
    check_report(report)
    rec = report["datasets"]["tiny"]["methods"]["metallmix"]
    assert rec["fallback"] is True  # the scripted LLM never answered usefully
    assert rec["llm_seconds"] is not None and rec["llm_seconds"] > 0  # apart from cold/warm
    assert len(training_runs()) == N_TRAININGS


@pytest.mark.slow
def test_cli_compare_new_data_folder_without_llm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hidden-data protocol: datasets from any folder (here a fresh one, with a card
    beside the images; nothing under ../shared), and the zero-shot pick without the LLM,
    which is never loaded: the pick is the shortlist's top-scored candidate."""
    import metallmix.agents.runtime.llm as llm_module

    def no_llm(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("--no-llm loaded an LLM")

    monkeypatch.setattr(llm_module, "load_llm", no_llm)
    (tmp_path / "work").mkdir()
    args = _cli(tmp_path / "work")
    folder = tmp_path / "hidden"
    folder.mkdir()
    make_npz(folder / "tiny.npz")
    (folder / "tiny.json").write_text(
        json.dumps({"name": "tiny", "modality": "toy X-ray", "class_names": ["dark", "bright"]})
    )
    (folder / ".DS_Store").write_text("")  # skipped, as are cards and result folders
    (folder / "compare_tiny.state").mkdir()
    at = args.index("--data")
    args[at : at + 2] = ["--data-dir", str(folder), "--no-llm"]
    assert main(args) == 0
    report = _check_cli(tmp_path / "work", capsys.readouterr().out)
    check_report(report)
    rec = report["datasets"]["tiny"]["methods"]["metallmix"]
    assert rec["llm"] is None and rec["llm_seconds"] is None
    candidates = report["datasets"]["tiny"]["methods"]["metallmix+verify"]["per_seed"]
    assert candidates[0]["study"] == "tiny-verify-s0"
    table = (tmp_path / "work" / "results" / "compare_tiny.md").read_text()
    assert "(not run: `--no-llm`)" in table and "RS+SH@3" in table
    assert report["run"]["llm"] is False and report["run"]["wall_seconds"] > 0
    assert len(training_runs()) == N_TRAININGS


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "compare", "--data", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.npz" in err


@pytest.mark.real
@pytest.mark.slow
def test_cli_compare_real_fast_llm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same command with the real 0.5B model choosing and explaining."""
    assert main(_cli(tmp_path, "--llm", "fast")) == 0
    report = _check_cli(tmp_path, capsys.readouterr().out)
    check_report(report)
    rec = report["datasets"]["tiny"]["methods"]["metallmix"]
    assert rec["llm"] == "qwen2.5-coder-0.5b"
    assert len(training_runs()) == N_TRAININGS


def test_state_from_before_verify_resumes(tmp_path: Path) -> None:
    """A state written before the verify setting existed resumes with its default (5)."""
    from metallmix.benchmarks.compare import CompareState

    current = SETTINGS.model_copy(update={"verify": 5})
    old = current.model_dump(mode="json")
    old.pop("verify")
    old.pop("methods")  # nor the method list (issue 28): it resumes with every method
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"settings": old, "datasets": [], "runs": {}, "pieces": {}}))
    state = CompareState(path, current, ["tiny"])
    assert state.data["settings"]["verify"] == 5
    assert state.data["settings"]["methods"] == list(METHODS)
    with pytest.raises(ConfigError, match="other settings"):
        CompareState(path, current.model_copy(update={"verify": 3}), ["tiny"])


def test_verify_against_random_search_uses_the_first_k_trials() -> None:
    from metallmix.benchmarks.compare_report import _verify_vs_rs

    trials = [{"seconds": 10.0 * (i + 1)} for i in range(10)]  # 10, 20, ... 100 s
    methods = {
        "random": {"per_seed": [{"trials": trials}], "test_balanced_accuracy_mean": 0.70},
        "metallmix+verify": {"config_seconds": 140.0, "test_balanced_accuracy_mean": 0.72},
    }
    vs = _verify_vs_rs(methods, 5)
    assert vs["rs_at_k_seconds"] == 150.0  # 10 + 20 + 30 + 40 + 50
    assert vs["balanced_at_least_rs"] is True and vs["time_at_most_rs_at_k"] is True
    methods["metallmix+verify"]["config_seconds"] = 151.0
    assert _verify_vs_rs(methods, 5)["time_at_most_rs_at_k"] is False


def test_majority_class_floor_and_zero_shot_bar(tmp_path: Path) -> None:
    """The majority-class row (balanced accuracy 1/k, accuracy = its test share) and issue
    12's bar (zero-shot within 1 pt of RS's balanced accuracy, in < 1/10 of its time) are
    computed, not copied: ranking is by balanced accuracy, where plain accuracy differs."""
    from metallmix.benchmarks.compare import majority_baseline
    from metallmix.benchmarks.compare_report import build_report, markdown_table
    from metallmix.tools.datasets import load_dataset

    rng = np.random.default_rng(0)
    labels = {
        s: np.array([0] * n0 + [1] * n1)
        for s, n0, n1 in (("train", 30, 10), ("val", 6, 2), ("test", 12, 4))
    }
    arrays = {
        f"{s}_images": rng.integers(0, 255, (len(y), 8, 8), dtype=np.uint8)
        for s, y in labels.items()
    }
    np.savez(tmp_path / "imb.npz", **arrays, **{f"{s}_labels": y for s, y in labels.items()})
    floor = majority_baseline(load_dataset(tmp_path / "imb.npz"))
    assert floor["label"] == 0 and floor["test_accuracy"] == pytest.approx(0.75)
    assert floor["test_balanced_accuracy"] == pytest.approx(0.5)

    def run(acc: float, bal: float, **extra: Any) -> dict[str, Any]:
        return {"test_accuracy": acc, "test_balanced_accuracy": bal, **extra}

    pieces = {
        "d/metallmix/recommendation": {"seconds": 40.0, "shortlist_seconds": 2.0, "model": "m"},
        "d/metallmix/s0": run(0.70, 0.74),
        "d/random/s0": run(0.80, 0.745, search_seconds=300.0, model="r", trials=[]),
        "d/tpe/s0": run(0.80, 0.60, search_seconds=300.0, model="t"),
        "d/best-default/config": {"seconds": 0.1, "model": "b"},
        "d/best-default/s0": run(0.76, 0.55),
        "d/metallmix+verify/s0": run(0.72, 0.70, config_seconds=50.0, model="v"),
    }
    for i, key in enumerate(k for k in pieces if k != "d/tpe/s0"):  # one piece from an old state
        pieces[key] |= {"load_average": 1.0 + i, "cpus": 2}
    state = {
        "pieces": pieces,
        "settings": dict(REPORT_SETTINGS),
    }
    report = build_report(state, ["d"], {"d": floor})
    entry = report["datasets"]["d"]
    assert entry["ranked_by"] == "test_balanced_accuracy_mean"
    assert entry["best"] == ["random"] and "metallmix" in entry["within_1pt"]  # not by accuracy
    bar = entry["zero_shot_vs_rs"]
    assert bar["within_1pt_of_rs"] is True
    assert bar["pick_under_tenth"] is True and bar["answer_under_tenth"] is False
    table = markdown_table(report)
    assert "| d | majority class | 50.0 | 75.0 |" in table
    assert report["load"] == {
        "min": 1.0,
        "median": 3.5,
        "max": 6.0,
        "pieces_with_load": 6,
        "pieces": 7,
        "cpus": [2],
    }
    assert "median 3.50, range 1.00-6.00, on 2 CPUs; 1 pieces have no record." in table


def test_best_defaults_are_the_k_best_distinct_configurations() -> None:
    """best-default+SH@K's candidates: distinct configurations, best mean score first, the
    first being best-default's own pick; no meta-features involved."""
    from metallmix.benchmarks.lodo import _config_key, best_default, best_defaults

    records = synthetic_records(4, 12, seed=0, space=SETTINGS.space())
    top = best_defaults(records, 3)
    assert len(top) == 3 and top[0].run_id == best_default(records).run_id
    assert len({_config_key(r) for r in top}) == 3
    assert [r.run_id for r in best_defaults(records, 2)] == [r.run_id for r in top[:2]]
    assert len(best_defaults(records[:2], 5)) <= 2  # fewer when the KB holds fewer


def test_quick_settings_and_explicit_options() -> None:
    from metallmix.benchmarks.compare import FULL, QUICK, resolve_settings

    quick = resolve_settings(quick=True)
    assert quick.budget == 10 and quick.seeds == [0] and quick.epoch_cap == QUICK["epoch_cap"]
    assert quick.max_train_images == 300 and quick.max_val_images == 150 and quick.threads == 1
    assert quick.methods == list(METHODS)
    full = resolve_settings(quick=False)
    assert len(full.seeds) == FULL["n_seeds"] and full.max_train_images is None
    given = resolve_settings(quick=True, budget=4, n_seeds=2, first_seed=5, threads=None)
    assert given.budget == 4 and given.seeds == [5, 6] and given.threads == 1  # given wins
    few = resolve_settings(quick=True, methods=["metallmix", "random"])
    assert few.checked_methods() == ["metallmix", "random"]
    with pytest.raises(ConfigError, match="unknown hyperband"):
        resolve_settings(methods=["metallmix", "hyperband"])
    with pytest.raises(ConfigError, match="must include metallmix"):
        resolve_settings(methods=["random"])
    with pytest.raises(ConfigError, match="first rung from metallmix\\+verify"):
        resolve_settings(methods=["metallmix", "random+sh"])


def test_quick_uses_one_local_worker_per_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # --quick trains on one thread per run: in-process it would leave a core idle.
    from metallmix.cli.compare import CompareBackend

    monkeypatch.setattr("os.cpu_count", lambda: 3)
    quick = CompareBackend().open(quick=True)
    assert quick is not None and quick.workers == 3 and not quick.in_process
    assert CompareBackend().open() is None  # without --quick: in-process, as before
    assert CompareBackend(workers=1).open(quick=True).workers == 1  # given wins


def test_datasets_in_a_folder(tmp_path: Path) -> None:
    from metallmix.benchmarks.compare import datasets_in

    make_npz(tmp_path / "b.npz")
    (tmp_path / "b.json").write_text("{}")  # its card: read by the loader, not a dataset
    (tmp_path / "a.csv").write_text("path,label\n")
    (tmp_path / "c").mkdir()  # an image folder
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / ".hidden.npz").write_text("")
    (tmp_path / "compare_b.state").mkdir()
    assert [p.name for p in datasets_in(tmp_path)] == ["a.csv", "b.npz", "c"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no dataset in it"):
        datasets_in(empty)
    with pytest.raises(ConfigError, match="not a folder"):
        datasets_in(tmp_path / "b.npz")


def test_report_times_and_halving_comparison() -> None:
    """Cold, warm and LLM times per method, and verify@K against RS+SH@K and
    best-default+SH@K, are computed from the pieces (an old state keeps its five methods)."""
    from metallmix.benchmarks.compare_report import LEGACY_METHODS, build_report, markdown_table

    def run(bal: float, **extra: Any) -> dict[str, Any]:
        return {"test_accuracy": bal, "test_balanced_accuracy": bal, **extra}

    rec = {
        "seconds": 30.0,
        "shortlist_seconds": 22.0,
        "cold_seconds": 22.0,
        "warm_seconds": 2.0,
        "llm_total_seconds": 15.0,
        "model": "m",
    }
    halving = {"first_rung_epochs": 1, "verify_seconds": 100.0}
    pieces = {
        "d/metallmix/recommendation": rec,
        "d/metallmix/s0": run(0.70),
        "d/random/s0": run(0.60, search_seconds=300.0, trials=[]),
        "d/tpe/s0": run(0.62, search_seconds=290.0),
        "d/gp/s0": run(0.61, search_seconds=310.0),
        "d/best-default/config": {"seconds": 0.1, "model": "b"},
        "d/best-default/s0": run(0.55),
        "d/metallmix+verify/s0": run(
            0.75, **halving, config_seconds=122.0, cold_seconds=122.0, warm_seconds=102.0
        ),
        "d/random+sh/s0": run(0.72, **halving, config_seconds=101.0, cold_seconds=101.0),
        "d/best-default+sh/s0": run(0.78, **halving, config_seconds=100.5, cold_seconds=100.5),
    }
    for key in ("d/random+sh/s0", "d/best-default+sh/s0"):
        pieces[key]["warm_seconds"] = pieces[key]["cold_seconds"]
    settings = {**REPORT_SETTINGS, "methods": list(METHODS)}
    report = build_report({"pieces": pieces, "settings": settings}, ["d"])
    methods = report["datasets"]["d"]["methods"]
    assert (
        methods["metallmix"]["cold_seconds"] == 22.0 and methods["metallmix"]["warm_seconds"] == 2.0
    )
    assert methods["metallmix"]["llm_seconds"] == 15.0 and methods["random"]["llm_seconds"] is None
    assert methods["tpe"]["cold_seconds"] == methods["tpe"]["warm_seconds"] == 290.0
    vs = report["datasets"]["d"]["verify_vs_halving"]
    assert vs["random+sh"]["gap_points"] == pytest.approx(3.0) and vs["random+sh"]["at_least"]
    assert vs["random+sh"]["no_more_time_cold"] is False  # 122 s against 101 s
    assert vs["random+sh"]["no_more_time_warm"] is False  # 102 s against 101 s
    assert vs["best-default+sh"]["gap_points"] == pytest.approx(-3.0)
    assert vs["best-default+sh"]["at_least"] is False
    table = markdown_table(report)
    assert "| d | RS+SH@5 | 72.0 ± 0.0 | 72.0 ± 0.0 | 101.0 | 101.0 | — |" in table
    assert "| d | MetaLLMiX (zero-shot) | 70.0 ± 0.0 | 70.0 ± 0.0 | 22.0 | 2.0 | 15.0 |" in table
    assert "against RS+SH@5" in table and "at least as good on 1 of 1" in table
    assert "TPE and GP draw 3 random trials" in table
    # A state from before issue 28 (no method list) reports its five methods.
    old = {k: v for k, v in settings.items() if k != "methods"}
    legacy = build_report({"pieces": pieces, "settings": old}, ["d"])
    assert list(legacy["datasets"]["d"]["methods"]) == list(LEGACY_METHODS)


def test_a_resumed_compare_whose_tracking_store_lost_its_runs_opens_new_ones(
    tmp_path: Path,
) -> None:
    """The state file travels (a comparison resumed on another machine, or after mlruns/
    was wiped): its finished pieces stay, its stale MLflow ids are replaced, not fatal."""
    from metallmix.benchmarks.compare import CompareState, _Run

    state = CompareState(tmp_path / "state.json", SETTINGS, ["tiny"])
    state.data["parent_run_id"] = "0123456789abcdef0123456789abcdef"  # not in this store
    state.data["runs"] = {"tiny/metallmix": "fedcba9876543210fedcba9876543210"}
    state.put("tiny/best-default/config", {"config": "kept"})
    run = _Run(state, tmp_path, None, None)
    parent = run.parent("tiny")
    assert parent != "0123456789abcdef0123456789abcdef"
    assert run.client.get_run(parent).info.status == "RUNNING"
    child = run.child("tiny/metallmix", parent, "tiny:metallmix")
    assert child != "fedcba9876543210fedcba9876543210"
    assert run.client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert state.get("tiny/best-default/config") == {"config": "kept"}
    # and a second resume keeps the new ids
    again = _Run(CompareState(tmp_path / "state.json", SETTINGS, ["tiny"]), tmp_path, None, None)
    assert again.parent("tiny") == parent
    assert again.child("tiny/metallmix", parent, "tiny:metallmix") == child


def test_the_benchmarks_recommendations_leave_the_users_last_answer_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from metallmix.benchmarks.compare import keep_last_answer
    from metallmix.kb_changes import last_answer_path

    monkeypatch.setenv("METALLMIX_HOME", str(tmp_path / "home"))
    path = last_answer_path()
    with keep_last_answer():  # none before: none after
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"kb": "/tmp/leak-free-copy.sqlite"}')
    assert not path.exists()
    path.write_text('{"kb": "mine"}')
    with keep_last_answer():
        path.write_text('{"kb": "/tmp/leak-free-copy.sqlite"}')
    assert path.read_text() == '{"kb": "mine"}'


def test_states_of_a_split_comparison_merge(tmp_path: Path) -> None:
    from metallmix.benchmarks.compare import CompareState, merge_states

    def state(name: str, datasets: list[str], settings: CompareSettings = SETTINGS) -> Path:
        folder = tmp_path / f"{name}.state"
        folder.mkdir()
        s = CompareState(folder / "state.json", settings, datasets)
        for d in datasets:
            s.put(f"{d}/random/s0", {"test_balanced_accuracy": 0.7, "dataset": d})
        return folder

    main_state, knee = state("six", ["a", "b"]), state("knee", ["c"])
    assert merge_states(main_state, [knee], SETTINGS) == ["c/random/s0"]
    merged = json.loads((main_state / "state.json").read_text())
    assert merged["datasets"] == ["a", "b", "c"] and "c/random/s0" in merged["pieces"]
    assert merge_states(main_state, [knee], SETTINGS) == []  # again: nothing new, nothing refused

    before = (main_state / "state.json").read_bytes()
    other = state("other", ["c"], SETTINGS.model_copy(update={"budget": SETTINGS.budget + 1}))
    with pytest.raises(ConfigError, match="other settings"):
        merge_states(main_state, [other], SETTINGS)
    clash = state("clash", ["a"])
    CompareState(clash / "state.json", SETTINGS, ["a"]).put("a/random/s0", {"x": 1})
    with pytest.raises(ConfigError, match="'a/random/s0' is in both"):
        merge_states(main_state, [clash], SETTINGS)
    assert (main_state / "state.json").read_bytes() == before  # a refusal writes nothing
    with pytest.raises(ConfigError, match=r"no state\.json"):
        merge_states(main_state, [tmp_path / "nowhere"], SETTINGS)
    fresh = tmp_path / "fresh.state"  # a new comparison made of finished ones
    added = merge_states(fresh, [main_state, knee], SETTINGS)
    assert sorted(added) == [f"{d}/random/s0" for d in "abc"]
    assert json.loads((fresh / "state.json").read_text())["settings"] == merged["settings"]
    # a new state has the whole layout: the comparison resumes from it
    assert CompareState(fresh / "state.json", SETTINGS, []).data["runs"] == {}
