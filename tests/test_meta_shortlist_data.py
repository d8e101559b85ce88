"""``metallmix meta shortlist`` takes what ``recommend`` takes: a dataset path or a card
(issue 14), besides ``--features FILE.json`` and ``--like DATASET``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import main
from metallmix.cli.recommend import example_card
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.metafeatures import compute_meta_features


@pytest.fixture
def kb_args(tmp_path: Path) -> list[str]:
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(synthetic_records(4, 12, seed=10))
    return ["--kb", str(kb.path)]


def _shortlist(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    assert main(["meta", "shortlist", *args, "--n", "2", "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


@pytest.mark.slow
def test_shortlist_of_a_card_and_of_a_dataset(
    kb_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = example_card("isic2018")
    from_card = _shortlist([str(card), *kb_args], capsys)
    assert from_card["meta_features"] == json.loads(compute_meta_features(card).model_dump_json())
    assert len(from_card["candidates"]) == 2

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    labels = np.arange(30) % 3
    np.savez(
        npz, train_images=rng.integers(0, 255, (30, 12, 12), dtype=np.uint8), train_labels=labels
    )
    from_npz = _shortlist([str(npz), "--modality", "CT", *kb_args], capsys)
    assert from_npz["meta_features"]["n_classes"] == 3
    assert from_npz["meta_features"]["modality"] == "CT"

    mf_json = tmp_path / "mf.json"
    mf_json.write_text(compute_meta_features(card).model_dump_json())
    assert (
        _shortlist([str(mf_json), *kb_args], capsys)["meta_features"] == from_card["meta_features"]
    )


def test_shortlist_input_errors(
    kb_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["meta", "shortlist", str(tmp_path / "typo.npz"), *kb_args]) == 2
    assert "no such file" in capsys.readouterr().err
    card = str(example_card("isic2018"))
    assert main(["meta", "shortlist", card, "--like", "synth01", *kb_args]) == 2
    assert "not two" in capsys.readouterr().err
