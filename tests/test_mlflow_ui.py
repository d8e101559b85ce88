"""The MLflow UI shows a recommendation: a real ``mlflow server`` serves the run back.

A recommendation is logged to a fresh SQLite store (scripted LLM: this test is about what
the server shows; the real model's run is checked in ``test_recommend_real.py``), then
``mlflow server`` is started on loopback and the run, its metrics and its artifacts are
read back over the REST API the UI itself uses.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow_server import get, serve_mlflow  # type: ignore[import-not-found]


def get_json(url: str, **query: str) -> Any:
    return json.loads(get(f"{url}?{urllib.parse.urlencode(query)}"))


@pytest.fixture
def recommendation_run() -> str:
    from test_graph_unit import GOOD, SCORES, make_shortlist  # type: ignore[import-not-found]

    import metallmix
    from metallmix.agents.runtime.fake import ScriptedLLM

    rec = metallmix.recommend(
        None, llm=ScriptedLLM([GOOD, SCORES]), shortlist=make_shortlist(), name="breast"
    )
    assert rec.mlflow_run_id
    return rec.mlflow_run_id


@pytest.fixture
def server(tmp_path: Path, recommendation_run: str) -> Iterator[str]:
    with serve_mlflow(tmp_path / "mlflow-server.log", timeout=120) as url:
        yield url


@pytest.mark.slow
def test_server_shows_the_recommendation_run(server: str, recommendation_run: str) -> None:
    api = f"{server}/api/2.0/mlflow"
    experiments = get_json(
        f"{api}/experiments/get-by-name", experiment_name="metallmix-recommendations"
    )
    exp_id = experiments["experiment"]["experiment_id"]

    run = get_json(f"{api}/runs/get", run_id=recommendation_run)["run"]
    assert run["info"]["experiment_id"] == exp_id and run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["llm"] == "scripted" and params["dataset"] == "breast"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["attempts"] == 1 and metrics["fallback"] == 0 and metrics["judge_format"] == 4

    listed = get_json(f"{api}/artifacts/list", run_id=recommendation_run)
    names = {f["path"] for f in listed["files"]}
    assert {"recommendation.json", "explanation.md", "shortlist.md", "judge", "llm"} <= names

    # The UI fetches artifact contents through this endpoint.
    body = get(
        f"{server}/get-artifact?"
        + urllib.parse.urlencode({"path": "recommendation.json", "run_uuid": recommendation_run})
    )
    assert json.loads(body)["candidate_id"] == "c1"
    explanation = get(
        f"{server}/get-artifact?"
        + urllib.parse.urlencode({"path": "explanation.md", "run_uuid": recommendation_run})
    ).decode()
    assert "resnet18" in explanation and "[run own-breast-07]" in explanation

    request = urllib.request.Request(
        f"{api}/runs/search",
        data=json.dumps({"experiment_ids": [exp_id]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        found = json.loads(response.read())
    assert recommendation_run in {r["info"]["run_id"] for r in found["runs"]}
