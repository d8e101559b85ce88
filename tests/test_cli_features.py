"""``metallmix features``: JSON and table output, cards, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metallmix.cli import main
from metallmix.tools.metafeatures import MetaFeatures


@pytest.fixture
def toy_npz(tmp_path: Path) -> Path:
    path = tmp_path / "toy.npz"
    labels = np.array([0] * 6 + [1] * 3 + [2])
    np.savez(path, train_images=np.full((10, 5, 7), 51, np.uint8), train_labels=labels)
    (tmp_path / "toy.json").write_text(json.dumps({"modality": "fundus"}))
    return path


def test_json_output_parses(toy_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", str(toy_npz), "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    mf = MetaFeatures.model_validate(doc["meta_features"])
    assert doc["dataset"] == "toy" and doc["format"] == "npz"
    assert doc["splits"] == {"train": 7, "val": 1, "test": 2}
    assert mf.n_images == 7 and mf.n_classes == 3
    assert mf.modality == "fundus"
    assert (mf.resolution_h, mf.resolution_w) == (5.0, 7.0)
    assert mf.pixel_mean == pytest.approx(0.2)


def test_modality_option_and_table(toy_npz: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", str(toy_npz), "--modality", "OCT"]) == 0
    out = capsys.readouterr().out
    assert "Meta-features of toy" in out
    assert "OCT" in out and "training images" in out


def test_card_out_then_card_in(
    toy_npz: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = tmp_path / "cards" / "toy.card.json"
    assert main(["features", str(toy_npz), "--card-out", str(card), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert json.loads(card.read_text())["train_counts"] == {"0": 4, "1": 2, "2": 1}

    assert main(["features", str(card), "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["format"] == "card"
    assert second["meta_features"] == first["meta_features"]


def test_bad_path_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["features", str(tmp_path / "missing.npz"), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "missing.npz: no such file or directory" in lines[0]


def test_console_script_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "labels.npz"
    np.savez(bad, train_images=np.zeros((2, 3, 3), np.uint8), train_labels=np.array([0, -4]))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from metallmix.cli import main; sys.exit(main())",
            "features",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is negative" in proc.stderr


@pytest.mark.data
def test_breastmnist_json(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["features", str(shared_data / "medical" / "breastmnist.npz"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta_features"]["n_images"] == 546
    assert doc["source_info"]["commit"] == "b7f638d33cc9e6dc1a0de213b243598105837d5f"
