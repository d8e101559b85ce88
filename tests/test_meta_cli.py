"""``metallmix meta ...`` on a small KB: JSON on stdout, clear errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import main
from metallmix.tools.kb.store import SQLiteKnowledgeBase


@pytest.fixture
def kb_path(tmp_path: Path) -> Path:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(synthetic_records(4, 12, seed=10))
    return kb.path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_meta_commands(kb_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb = ["--kb", str(kb_path)]
    fitted = _run(["meta", "fit", *kb, "--json"], capsys)
    assert fitted["n_rows"] == 48 and fitted["cached"] is False
    assert _run(["meta", "fit", *kb, "--json"], capsys)["cached"] is True
    pred = _run(
        [
            "meta",
            "predict",
            *kb,
            "--like",
            "synth01",
            "--model",
            "resnet18",
            "--hp",
            "lr=0.001",
            "--hp",
            "optimizer=adamw",
            "--json",
        ],
        capsys,
    )
    assert 0 <= pred["predicted_accuracy"] <= 1 and pred["facts"]
    similar = _run(["meta", "similar", *kb, "--like", "synth01", "--k", "2", "--json"], capsys)
    assert [d["dataset"] for d in similar["datasets"]] and all(
        d["dataset"] != "synth01" for d in similar["datasets"]
    )
    features = tmp_path / "mf.json"
    record = next(SQLiteKnowledgeBase(kb_path).iter_records())
    features.write_text(record.meta_features.model_dump_json())
    plots = tmp_path / "plots"
    short = _run(
        [
            "meta",
            "shortlist",
            *kb,
            "--features",
            str(features),
            "--n",
            "2",
            "--plots",
            str(plots),
            "--json",
        ],
        capsys,
    )
    assert len(short["candidates"]) == 2 and short["facts"]
    assert (plots / "shap_global_bar.png").is_file()
    assert (plots / "shap_waterfall_c1.png").is_file()


def test_meta_errors(kb_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kb = ["--kb", str(kb_path)]
    assert main(["meta", "similar", *kb, "--like", "nope"]) == 2
    assert "no such dataset" in capsys.readouterr().err
    assert main(["meta", "predict", *kb, "--like", "synth01", "--model", "x", "--hp", "lr"]) == 2
    assert "name=value" in capsys.readouterr().err
    assert main(["meta", "similar", *kb]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["meta", "shortlist", *kb, "--like", "synth01", "--space", "gpu"]) == 2
    assert "unknown search space" in capsys.readouterr().err
