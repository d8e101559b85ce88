"""The recommendation's metric and baselines, and the compute regime (cpu / gpu).

Metric: chance level and majority-class accuracy come from the class counts (an imbalanced
card), the JSON carries them beside the prediction, and a prediction that does not clear
its baseline is flagged. Regime: ``compute`` picks the search space and the part of the KB
the meta-learner and retrieval see; ``kb info`` counts per regime. The LLM is scripted here;
the real-LLM twin is ``test_recommend_cli.py::test_real_demo_subprocess``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.agents.schemas import LLMChoice, Recommendation
from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import main
from metallmix.errors import ConfigError, KnowledgeBaseError
from metallmix.tools.kb.records import Hyperparameters, Outcomes, RunRecord
from metallmix.tools.kb.regime import check_regime, counts_by_regime, regime_of
from metallmix.tools.kb.regime_view import RegimeView, resolve_regime
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta import metric
from metallmix.tools.meta.search_space import (
    CPU_ZOO_MODELS,
    CPU_ZOO_SPACE,
    QUICKTUNE_MODELS,
    QUICKTUNE_SPACE,
)
from metallmix.tools.metafeatures import MetaFeatures, meta_features_from_counts

# The bundled ISIC 2018 card's counts: NV holds 6,705 of 10,015 images.
ISIC = meta_features_from_counts(
    [1113, 6705, 514, 327, 1099, 115, 142], resolution_h=450, resolution_w=600, channels=3
)


def quicktune_like(n_datasets: int, runs: int, seed: int) -> list[RunRecord]:
    """Synthetic runs in the Quick-Tune space, stored under source 'quicktune'."""
    out = []
    for r in synthetic_records(n_datasets, runs, seed=seed, space=QUICKTUNE_SPACE):
        out.append(
            r.model_copy(
                update={
                    "run_id": r.run_id.replace("synthetic:", "qt:"),
                    "source": "quicktune",
                    "dataset": "qt-" + r.dataset,
                    "dataset_group": "qt-" + r.dataset_group,
                }
            )
        )
    return out


@pytest.fixture
def mixed_kb(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.sqlite"
    cpu = [r.model_copy(update={"source": "own"}) for r in synthetic_records(4, 20, seed=2)]
    SQLiteKnowledgeBase(path).add(cpu + quicktune_like(4, 20, seed=3))
    return path


# ---------------------------------------------------------------- metric and baselines


def test_chance_and_majority_of_an_imbalanced_card() -> None:
    assert metric.chance_level(ISIC) == pytest.approx(1 / 7)
    assert metric.majority_accuracy(ISIC) == pytest.approx(6705 / 10015)  # 0.6695
    balanced = meta_features_from_counts([50, 50, 50], resolution_h=8, resolution_w=8, channels=1)
    assert metric.majority_accuracy(balanced) == pytest.approx(1 / 3)
    unknown = MetaFeatures(
        n_images=900,
        n_classes=3,
        resolution_h=128,
        resolution_w=128,
        channels=3,
        class_size_mean=300,
        images_per_class=300,
    )
    assert metric.majority_accuracy(unknown) is None  # Quick-Tune: no class counts


def rec(score: float, low: float, high: float, metric_name: str, **extra: Any) -> Recommendation:
    return Recommendation(
        dataset="ISIC",
        candidate_id="c1",
        model="resnet18",
        pretrained=False,
        hyperparameters=Hyperparameters(lr=1e-3),
        expected_accuracy=score,
        accuracy_low=low,
        accuracy_high=high,
        confidence="medium",
        explanation="-",
        meta_features=ISIC,
        metric=metric_name,
        **extra,
    )


def test_recommendation_carries_metric_score_and_baselines() -> None:
    r = rec(0.71, 0.60, 0.78, "balanced_accuracy", compute="gpu")
    doc = json.loads(r.model_dump_json())
    assert doc["metric"] == "balanced_accuracy" and doc["compute"] == "gpu"
    assert (doc["expected_score"], doc["score_low"], doc["score_high"]) == (0.71, 0.60, 0.78)
    assert doc["expected_accuracy"] == 0.71  # the old key stays
    assert doc["chance_level"] == pytest.approx(1 / 7)
    assert doc["majority_accuracy"] == pytest.approx(0.6695, abs=1e-4)
    assert doc["baseline_warning"] is None  # 71% balanced accuracy is far above 14% chance
    line = r.summary()
    assert "expected balanced accuracy 71.0% [60.0%, 78.0%]" in line
    assert "chance 14.3%" in line and "majority class 66.9%" in line
    assert Recommendation.model_validate(doc) == r  # the JSON round-trips


def test_accuracy_below_the_majority_class_is_flagged() -> None:
    # the ISIC demo: "expected accuracy 48.3%" while NV alone scores 67%
    r = rec(0.483, 0.40, 0.55, "accuracy")
    assert r.baseline_warning and "below the majority class (66.9%)" in r.baseline_warning
    # balanced accuracy is compared with chance, and a low interval end is flagged too
    near = rec(0.17, 0.12, 0.25, "balanced_accuracy")
    assert near.baseline_warning and "within 5 points of chance (14.3%)" in near.baseline_warning
    low = rec(0.40, 0.10, 0.55, "balanced_accuracy")
    assert low.baseline_warning and "lower end (10.0%)" in low.baseline_warning


def test_target_metric_names_what_stands_in() -> None:
    assert metric.target_metric([]) == ("accuracy", None)
    assert metric.target_metric(["accuracy"] * 3) == ("accuracy", None)
    name, note = metric.target_metric(["accuracy_for_balanced"] * 5)
    assert name == "balanced_accuracy" and note == metric.STAND_IN_NOTE
    name, note = metric.target_metric(["balanced_accuracy"] * 3 + ["accuracy"])
    assert name == "balanced_accuracy" and note and "1 of 4 runs record only accuracy" in note


def test_quicktune_accuracy_stands_in_for_balanced_accuracy() -> None:
    qt = quicktune_like(1, 3, seed=0)[0]
    assert qt.score == qt.outcomes.val_accuracy and qt.score_metric == "accuracy_for_balanced"
    own = synthetic_records(1, 1, seed=0)[0].model_copy(update={"source": "own"})
    assert own.score_metric == "accuracy"
    if "val_balanced_accuracy" in Outcomes.model_fields:  # added by the trainer's issue
        scored = own.model_copy(
            update={"outcomes": Outcomes(val_accuracy=0.9, val_balanced_accuracy=0.6)}
        )
        assert scored.score == 0.6 and scored.score_metric == "balanced_accuracy"


# ---------------------------------------------------------------- regimes


def test_regime_of_each_source(mixed_kb: Path) -> None:
    records = list(SQLiteKnowledgeBase(mixed_kb).iter_records())
    assert counts_by_regime(records) == {"cpu": 80, "gpu": 80}
    assert all(regime_of(r) == ("gpu" if r.source == "quicktune" else "cpu") for r in records)
    csv_qt = synthetic_records(1, 2, seed=1, space=QUICKTUNE_SPACE)[0]  # source csv
    assert regime_of(csv_qt) == "gpu"
    noted = csv_qt.model_copy(
        update={"provenance": csv_qt.provenance.model_copy(update={"notes": {"regime": "cpu"}})}
    )
    assert regime_of(noted) == "cpu"
    with pytest.raises(ConfigError, match="choose one of cpu, gpu"):
        check_regime("tpu")


def test_resolve_regime_explicit_default_and_fallback(
    mixed_kb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = SQLiteKnowledgeBase(mixed_kb)
    assert resolve_regime(kb, "gpu") == "gpu" and resolve_regime(kb, "cpu") == "cpu"
    assert resolve_regime(kb, space="quicktune") == "gpu"
    monkeypatch.setattr("metallmix.tools.kb.regime_view.default_compute", lambda: "gpu")
    assert resolve_regime(kb) == "gpu"
    cpu_only = SQLiteKnowledgeBase(tmp_path / "cpu.sqlite")
    cpu_only.add(synthetic_records(2, 5, seed=0))
    assert resolve_regime(cpu_only) == "cpu"  # the machine's default falls back
    with pytest.raises(KnowledgeBaseError, match=r"no run of the gpu regime.*--compute cpu"):
        resolve_regime(cpu_only, "gpu")  # an explicit choice does not
    view = RegimeView(kb, "gpu")
    assert len(view) == 80 and {r.source for r in view.iter_records()} == {"quicktune"}
    with pytest.raises(KnowledgeBaseError, match="read-only view"):
        view.add([])


@pytest.mark.parametrize(
    ("compute", "models", "source"),
    [("cpu", CPU_ZOO_MODELS, "own"), ("gpu", QUICKTUNE_MODELS, "quicktune")],
)
def test_shortlist_node_uses_the_regimes_space_and_runs(
    mixed_kb: Path, compute: str, models: list[str], source: str
) -> None:
    from langgraph.runtime import Runtime

    from metallmix.graphs import nodes
    from metallmix.graphs.configuration import Context
    from metallmix.graphs.resources import RunResources
    from metallmix.graphs.state import RecommendationState

    kb = SQLiteKnowledgeBase(mixed_kb)
    resources = RunResources(kb, None)
    runtime = Runtime(context=Context(compute=compute, track=False, resources=resources))
    state = RecommendationState(meta_features=ISIC, dataset_name="ISIC")
    found = nodes.retrieve(state, runtime)  # the shortlist scores what retrieval found
    state = state.model_copy(update={k: v for k, v in found.items() if k != "timings"})
    shortlist = nodes.shortlist(state, runtime)["shortlist"]
    assert shortlist.regime == compute
    assert shortlist.candidates and all(c.model in models for c in shortlist.candidates)
    space = CPU_ZOO_SPACE if compute == "cpu" else QUICKTUNE_SPACE
    assert all(c.pretrained == space.is_pretrained(c.model) for c in shortlist.candidates)
    by_id = {r.run_id: r for r in kb.iter_records()}
    assert {by_id[s.run_id].source for s in shortlist.similar_runs} == {source}
    retrieved = nodes.retrieve(state, runtime)["similar_runs"]
    assert {by_id[s.run_id].source for s in retrieved} == {source}
    expected = "balanced_accuracy" if compute == "gpu" else "accuracy"
    assert shortlist.metric == expected


def test_recommend_json_has_metric_fields_per_regime(
    mixed_kb: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = LLMChoice(candidate_id="c1", facts=["f1"], runs=["r1"], rationale="It reaches 99.9%.")
    llm = ScriptedLLM([bad, bad])  # rejected twice: the templated fallback
    monkeypatch.setattr("metallmix.agents.runtime.llm.load_llm", lambda *a, **k: llm)
    from metallmix.cli.recommend import example_card

    card = str(example_card("isic2018"))
    code = main(["recommend", card, "--kb", str(mixed_kb), "--compute", "gpu", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert doc["compute"] == "gpu" and doc["model"] in QUICKTUNE_MODELS and doc["pretrained"]
    assert doc["metric"] == "balanced_accuracy" and doc["metric_note"] == metric.STAND_IN_NOTE
    assert doc["expected_score"] == doc["expected_accuracy"]
    assert doc["score_low"] <= doc["expected_score"] <= doc["score_high"]
    assert doc["chance_level"] == pytest.approx(1 / 7)
    assert doc["majority_accuracy"] == pytest.approx(6705 / 10015)
    assert main(["recommend", card, "--kb", str(mixed_kb), "--compute", "tpu"]) == 2


def test_kb_info_counts_per_regime(mixed_kb: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kb", "info", "--kb", str(mixed_kb), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"] == 160 and doc["by_source"] == {"own": 80, "quicktune": 80}
    assert doc["by_regime"] == {"cpu": 80, "gpu": 80}
    assert doc["by_regime_source"] == {"cpu": {"own": 80}, "gpu": {"quicktune": 80}}
    assert len(doc["by_dataset"]) == 8
    assert main(["kb", "info", "--kb", str(mixed_kb)]) == 0
    assert "by compute regime" in capsys.readouterr().out


def test_default_compute_skips_torch_without_an_nvidia_driver() -> None:
    """The machine's regime is known without the ~2 s torch import when no driver exists."""
    from metallmix.tools.kb.regime import nvidia_driver_present

    if nvidia_driver_present():
        pytest.skip("this machine has an NVIDIA driver: torch must be asked")
    code = (
        "import sys; from metallmix.tools.kb.regime import default_compute; "
        "print(default_compute(), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["cpu", "False"]


def test_default_compute_asks_torch_where_a_driver_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from metallmix.tools.kb import regime

    monkeypatch.setattr(regime, "nvidia_driver_present", lambda: True)
    regime.default_compute.cache_clear()
    try:
        expected = "gpu" if torch.cuda.is_available() else "cpu"
        assert regime.default_compute() == expected
    finally:
        regime.default_compute.cache_clear()
