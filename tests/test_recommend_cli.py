"""``metallmix recommend`` and ``metallmix demo``: JSON and readable output, one-line errors.

The fake-backed tests replace the model loader with a scripted LLM whose answers are always
rejected, so the output is the deterministic fallback on a real (synthetic-KB) shortlist;
the real twin runs ``metallmix demo`` as a subprocess with the 0.5B model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.cli import main


def test_recommend_json_is_one_document(
    kb: Path, scripted: ScriptedLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.cli.recommend import example_card

    code = main(["recommend", str(example_card("chest-xray")), "--kb", str(kb), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert doc["fallback"] is True and doc["attempts"] == 2 and doc["candidate_id"] == "c1"
    assert doc["meta_features"]["n_images"] == 5216 and doc["mlflow_run_id"]
    assert "done: record" in out.err  # progress goes to stderr
    assert scripted.remaining == 0
    from metallmix.tools import tracking

    client = tracking.client()
    shap = {a.path for a in client.list_artifacts(doc["mlflow_run_id"], "shap")}
    assert shap == {"shap/waterfall_c1.png", "shap/global_bar.png"}
    assert "metallmix.shap_plot_error" not in client.get_run(doc["mlflow_run_id"]).data.tags


def test_demo_renders_explanation_and_where_to_look(
    kb: Path, scripted: ScriptedLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--kb", str(kb)])
    out = capsys.readouterr().out
    assert code == 0
    assert "Recommendation for ISIC 2018" in out
    assert "why" in out and "templated" in out
    assert "fallback" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    flat = re.sub(r"[\s│]+", " ", out)  # undo the panel's line wrapping
    assert "[run synthetic:" in flat  # the cited run id survives rich markup


def test_cli_exports_traces_synchronously_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from metallmix.cli import SYNC_TRACE_EXPORT

    name = SYNC_TRACE_EXPORT[0]
    monkeypatch.delenv(name, raising=False)
    assert main(["--version"]) == 0
    assert os.environ[name] == "false"
    monkeypatch.setenv(name, "true")  # the user's own choice wins
    assert main(["--version"]) == 0
    assert os.environ[name] == "true"


def test_missing_dataset_exits_2_with_one_line(
    kb: Path, scripted: ScriptedLLM, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["recommend", str(tmp_path / "absent.npz"), "--kb", str(kb), "--json"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "absent.npz" in err[-1]


def test_unknown_example_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--example", "nope"]) == 2
    assert "choose one of isic2018, chest-xray" in capsys.readouterr().err


def test_empty_kb_exits_2(
    scripted: ScriptedLLM, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    SQLiteKnowledgeBase(tmp_path / "empty.sqlite")  # a KB file with no runs
    assert main(["demo", "--kb", str(tmp_path / "empty.sqlite")]) == 2
    assert "is empty" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.slow
def test_real_demo_subprocess(kb: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    user = Path(os.environ.get("METALLMIX_CACHE") or Path.home() / ".metallmix" / "cache")
    env = {**os.environ, "METALLMIX_LLM": "fast"}
    if (user / "llm").is_dir():
        env["METALLMIX_CACHE"] = str(user)
    result = subprocess.run(
        [sys.executable, "-m", "metallmix", "demo", "--kb", str(kb), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    assert doc["llm"] == "qwen2.5-coder-0.5b" and doc["judge"]["passed"]
    assert doc["dataset"].startswith("ISIC 2018") and doc["mlflow_run_id"]
    # the metric and the card's baselines beside the prediction; the other regime's preview
    assert doc["metric"] == "accuracy" and doc["expected_score"] == doc["expected_accuracy"]
    assert doc["chance_level"] == pytest.approx(1 / 7)
    assert doc["majority_accuracy"] == pytest.approx(6705 / 10015)
    assert doc["compute"] == "cpu"  # the synthetic KB holds CPU-regime runs only
    majority = doc["majority_accuracy"]
    near = doc["expected_score"] < majority + 0.05 or doc["score_low"] <= majority
    assert (doc["baseline_warning"] is not None) == near
    assert [o["compute"] for o in doc["other_regimes"]] == ["gpu"]
    assert "no gpu run" in doc["other_regimes"][0]["unavailable"]  # synthetic KB: CPU runs only


def test_out_of_range_advice_wraps_instead_of_being_cropped() -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from metallmix.cli.recommend import ood_panel

    rec = SimpleNamespace(
        dataset="tiny",
        compute="cpu",
        ood_reasons=["n_images 8 is outside the KB's range 200-5,778 (0.04x the KB's smallest)"],
    )
    console = Console(width=60, record=True)
    console.print(ood_panel(rec))
    text = " ".join(line.strip("│ ").strip() for line in console.export_text().splitlines())
    assert "0.04x the KB's smallest" in text  # the reason, whole
    assert "--verify 3" in text and "the next answer says what changed" in text
