"""LangGraph Studio: ``langgraph dev`` serves the graph from ``langgraph.json`` and runs it.

Starts the dev server on loopback as a subprocess, then drives the graph through
``langgraph_sdk`` exactly as Studio does, checking the streamed node updates. The graph runs
for real (synthetic KB, real XGBoost/SHAP/FAISS, the real 0.5B model with the judge's LLM
turned off to keep the run short).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metallmix import config

ROOT = Path(__file__).resolve().parent.parent
MF = {
    "n_images": 5216,
    "n_classes": 2,
    "imbalance_ratio": 2.89,
    "resolution_h": 64,
    "resolution_w": 64,
    "channels": 1,
    "class_size_mean": 2608,
    "modality": "chest X-ray",
    "images_per_class": 2608,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_langgraph_json_points_at_the_compiled_graph() -> None:
    spec = json.loads((ROOT / "langgraph.json").read_text())
    path, _, attr = spec["graphs"]["metallmix"].partition(":")
    assert (ROOT / path).is_file()
    from metallmix.graphs import graph as module

    assert Path(module.__file__).resolve() == (ROOT / path).resolve()
    compiled = getattr(module, attr)
    assert {"recommender", "judge", "fallback", "record"} <= set(compiled.get_graph().nodes)


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[str]:
    exe = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which(
        "langgraph"
    )
    if exe is None:
        pytest.skip("langgraph CLI not installed (pip install 'metallmix[studio]')")
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    from metallmix.tools.kb.store import SQLiteKnowledgeBase
    from metallmix.tools.meta.synthetic import synthetic_records

    kb = tmp_path / "kb.sqlite"
    SQLiteKnowledgeBase(kb).add(synthetic_records(5, 20, seed=1))
    port = free_port()
    env = {
        **os.environ,
        "METALLMIX_KB": str(kb),
        "METALLMIX_LLM": "fast",
        "METALLMIX_CACHE": str(_weights_cache()),
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "studio.log").open("w")
    proc = subprocess.Popen(
        [exe, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ok(url, proc, tmp_path / "studio.log")
        yield url
        log.flush()
        if "Traceback" in (tmp_path / "studio.log").read_text():  # shown when a test fails
            print((tmp_path / "studio.log").read_text()[-6000:])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _weights_cache() -> Path:
    """The user's LLM cache when it holds the weights (assembling them again takes minutes)."""
    user = Path(os.environ.get("METALLMIX_CACHE") or Path.home() / ".metallmix" / "cache")
    return user if (user / "llm").is_dir() else config.cache_dir()


def _wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"langgraph dev exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ok", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"langgraph dev did not answer in {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.mark.real
@pytest.mark.slow
def test_studio_streams_every_node_of_a_real_run(studio: str) -> None:
    from langgraph_sdk import get_client

    async def run() -> tuple[list[str], dict]:
        client = get_client(url=studio)
        assistants = await client.assistants.search(graph_id="metallmix")
        assert assistants, "langgraph dev did not register the 'metallmix' graph"
        thread = await client.threads.create()
        nodes: list[str] = []
        final: dict = {}
        async for part in client.runs.stream(
            thread["thread_id"],
            "metallmix",
            input={"meta_features": MF, "dataset_name": "kermany-like"},
            config={"configurable": {"judge_with_llm": False, "seed": 0}},
            stream_mode=["updates", "values"],
        ):
            if part.event == "updates":
                nodes += list(part.data)
            elif part.event == "values":
                final = part.data
            elif part.event == "error":
                raise AssertionError(f"graph run failed in the server: {part.data}; see log")
        return nodes, final

    nodes, final = asyncio.run(run())
    assert nodes[:5] == ["features", "retrieve", "shortlist", "explain", "recommender"]
    assert nodes[-1] == "record" and "judge" in nodes
    rec = final["recommendation"]
    assert rec["candidate_id"] in {c["candidate_id"] for c in final["shortlist"]["candidates"]}
    assert rec["llm"] == "qwen2.5-coder-0.5b"
    assert final["mlflow_run_id"], "the Studio run was not recorded in MLflow"
