"""``metallmix validate`` and ``metallmix search`` end to end on a generated dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train_trainer import write_npz

from metallmix.cli import main
from metallmix.cli.train import read_config
from metallmix.errors import ConfigError
from metallmix.tools.kb.store import SQLiteKnowledgeBase


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npz(tmp_path_factory.mktemp("data"))


def _config(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(payload))
    return path


def test_validate_trains_logs_and_appends(
    toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(
        tmp_path,
        {"model": "lcnet_050", "hyperparameters": {"lr": 0.003, "epochs": 1, "image_size": 16}},
    )
    kb_path = tmp_path / "kb.sqlite"
    code = main(
        [
            *("validate", "--data", str(toy), "--config", str(cfg), "--kb", str(kb_path)),
            *("--threads", "1", "--seed", "3", "--json"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["model"] == "lcnet_050" and result["status"] == "ok"
    assert 0 <= result["val_accuracy"] <= 1 and result["epochs_run"] == 1
    kb = SQLiteKnowledgeBase(kb_path)
    assert kb.run_ids() == {result["run_id"]}
    record = kb.get(result["run_id"])
    assert record is not None and record.seed == 3
    assert record.provenance.mlflow_run_id == result["mlflow_run_id"]


def test_validate_bad_config_is_one_line_error(
    toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path, {"hyperparameters": {"lr": 0.01}})
    assert main(["validate", "--data", str(toy), "--config", str(cfg), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "names no model" in err and "\n" not in err
    missing = tmp_path / "nope.json"
    assert main(["validate", "--data", str(toy), "--config", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_read_config_shapes(tmp_path: Path) -> None:
    flat = _config(tmp_path, {"model": "resnet10t", "lr": 0.01, "mixup": 0.2})
    model, hp = read_config(flat)
    assert model == "resnet10t" and hp.lr == 0.01 and hp.extra == {"mixup": 0.2}
    nested = _config(
        tmp_path,
        {"recommendation": {"model": "lcnet_050", "hyperparameters": {"epochs": 2}}},
    )
    assert read_config(nested, model="resnet18")[0] == "resnet18"
    assert read_config(nested)[1].epochs == 2
    bad = _config(tmp_path, {"model": "x", "hyperparameters": {"lr": -1}})
    with pytest.raises(ConfigError, match=r"cfg\.json"):
        read_config(bad)


def test_search_cli_json(toy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["search", "--data", str(toy), "--sampler", "random", "--trials", "1"]
    args += ["--storage", str(tmp_path / "s.sqlite"), "--max-train-images", "20"]
    args += ["--max-val-images", "10", "--threads", "1", "--no-kb", "--json"]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["trials_done"] == 1 and result["sampler"] == "random"
    assert len(result["trials"]) == 1
    assert main([*args[:4], "grid", *args[5:]]) == 2
    assert "--sampler" in capsys.readouterr().err


def test_a_recommendations_pretrained_flag_is_the_default(tmp_path: Path) -> None:
    from metallmix.cli.train import _config_pretrained

    rec = {"model": "efficientnet_lite0", "pretrained": True, "hyperparameters": {}}
    assert _config_pretrained(_config(tmp_path, {"recommendation": rec}))
    assert _config_pretrained(_config(tmp_path, rec))
    assert not _config_pretrained(_config(tmp_path, {"model": "lcnet_050"}))
