"""``metallmix recommend DATA --verify K``: the zero-shot answer, then the verified one.

The LLM is scripted (its answers are rejected, so the zero-shot pick is the templated
fallback: the meta-learner's top candidate; the real LLM has its own twins in
``test_recommend_real.py``); the shortlist, the training and MLflow are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cases import TOY_MF
from test_train_trainer import write_npz

from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.cli import main
from metallmix.tools.kb.store import SQLiteKnowledgeBase


@pytest.mark.slow
def test_recommend_verify_trains_the_shortlist_and_resumes(
    kb: Path, scripted: ScriptedLLM, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.tools import tracking

    data = write_npz(tmp_path, "toy")
    before = len(SQLiteKnowledgeBase(kb))
    argv = ["recommend", str(data), "--kb", str(kb), "--verify", "2", "--threads", "1", "--json"]
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    ver = doc["verification"]
    assert doc["fallback"] and ver["zero_shot_id"] == doc["candidate_id"] == "c1"
    assert ver["candidates"][0]["candidate_id"] == "c1"
    assert len(ver["candidates"]) == 2 and ver["winner_id"] in {"c1", "c2"}
    runs = [r for c in ver["candidates"] for r in c["runs"]]
    assert all(r["rung"] in (0, 1) for r in runs) and len(runs) in (2, 3)
    assert "verify: c1 rung 0" in out.err
    done = [r for r in runs if r["state"] == "done"]
    # The closed loop: every finished run is in the KB, under the recommendation in MLflow.
    assert len(SQLiteKnowledgeBase(kb)) == before + len(done)
    client = tracking.client()
    verify_run = client.get_run(ver["mlflow_run_id"])
    assert verify_run.data.tags["mlflow.parentRunId"] == doc["mlflow_run_id"]
    for r in done:
        run = client.get_run(r["mlflow_run_id"])
        assert run.data.tags["mlflow.parentRunId"] == ver["mlflow_run_id"]
    rec_run = client.get_run(doc["mlflow_run_id"])
    assert rec_run.data.tags["metallmix.verify_run_id"] == ver["mlflow_run_id"]
    assert scripted.remaining == 0

    # The same command again: no LLM call (none is left), nothing retrained.
    code = main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    again = json.loads(out.out)["verification"]
    assert again["runs_this_time"] == 0 and again["runs_resumed"] == len(runs)
    assert again["winner_id"] == ver["winner_id"]
    assert len(SQLiteKnowledgeBase(kb)) == before + len(done)
    # Readable output names the winner and the zero-shot pick.
    assert main([*argv[:-1]]) == 0
    text = capsys.readouterr().out
    assert "verified winner" in text and "verification" in text


def test_verify_needs_a_dataset(kb: Path, scripted: ScriptedLLM) -> None:
    import metallmix
    from metallmix.errors import ConfigError

    mf = TOY_MF
    with pytest.raises(ConfigError, match="dataset path"):
        metallmix.recommend(mf, verify=2, kb=kb)
