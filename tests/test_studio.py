"""LangGraph Studio: ``langgraph dev`` serves the graph from ``langgraph.json`` and runs it.

The dev server is started as a subprocess **from another folder** (``--config
<repo>/langgraph.json``, as a user with the repository elsewhere would) and driven through
``langgraph_sdk`` exactly as Studio does: the schemas Studio draws its forms from, a run
whose dataset path is mistyped (its specific message must reach the stream), and a real run
(synthetic KB, real XGBoost/SHAP/FAISS, the real 0.5B model with the judge's LLM turned off
to keep it short).
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
from typing import Any

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


def test_langgraph_json_names_the_installed_module() -> None:
    """A module path, not a file path: it resolves from any folder, not only the repo root."""
    import importlib

    spec = json.loads((ROOT / "langgraph.json").read_text())
    module_name, _, attr = spec["graphs"]["metallmix"].partition(":")
    assert "/" not in module_name and not module_name.endswith(".py")
    compiled = getattr(importlib.import_module(module_name), attr)
    assert {"recommender", "judge", "fallback", "record"} <= set(compiled.get_graph().nodes)


def _weights_cache() -> Path:
    """The user's LLM cache when it holds the weights (assembling them again takes minutes)."""
    user = Path(os.environ.get("METALLMIX_CACHE") or Path.home() / ".metallmix" / "cache")
    return user if (user / "llm").is_dir() else config.cache_dir()


SERVER: dict[str, str] = {}  # what the studio fixture's server was started with


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which(
        "langgraph"
    )
    if exe is None:
        pytest.skip("langgraph CLI not installed (pip install 'metallmix[studio]')")
    from metallmix.benchmarks.synthetic import synthetic_records
    from metallmix.tools.kb.store import SQLiteKnowledgeBase

    elsewhere = tmp_path_factory.mktemp("elsewhere")  # not the repository: the point
    kb = elsewhere / "kb.sqlite"
    SQLiteKnowledgeBase(kb).add(synthetic_records(5, 20, seed=1))
    port = free_port()
    env = {
        **os.environ,
        "METALLMIX_HOME": str(elsewhere / "home"),
        "METALLMIX_KB": str(kb),
        "METALLMIX_LLM": "fast",
        "METALLMIX_CACHE": str(_weights_cache()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere / 'mlflow.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    SERVER["tracking_uri"] = env["MLFLOW_TRACKING_URI"]
    log_path = elsewhere / "studio.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            exe,
            "dev",
            "--config",
            str(ROOT / "langgraph.json"),
            "--no-browser",
            "--no-reload",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=elsewhere,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ok(url, proc, log_path)
        yield url
        log.flush()
        if "Traceback" in log_path.read_text():  # shown when a test fails
            print(log_path.read_text()[-6000:])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
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


async def _assistant(client: Any) -> str:
    assistants = await client.assistants.search(graph_id="metallmix")
    assert assistants, "langgraph dev did not register the 'metallmix' graph"
    return str(assistants[0]["assistant_id"])


@pytest.mark.slow
def test_studio_shows_short_forms_for_input_and_configuration(studio: str) -> None:
    from langgraph_sdk import get_client

    async def schemas() -> dict[str, Any]:
        client = get_client(url=studio)
        return dict(await client.assistants.get_schemas(await _assistant(client)))

    got = asyncio.run(schemas())
    for key in ("config_schema", "context_schema"):
        props = set((got.get(key) or {}).get("properties") or {})
        assert {"llm", "kb", "seed", "n_candidates", "compute", "choose"} <= props, (
            f"{key}: {props}"
        )
    inputs = set(got["input_schema"]["properties"])
    assert len(inputs) <= 4 and {"data", "meta_features", "modality"} <= inputs, inputs
    assert "recommendation" in got["output_schema"]["properties"]


@pytest.mark.slow
def test_a_bad_dataset_path_streams_its_own_message(studio: str, tmp_path: Path) -> None:
    from langgraph_sdk import get_client

    missing = tmp_path / "no-such-dataset.npz"

    async def run() -> list[Any]:
        client = get_client(url=studio)
        thread = await client.threads.create()
        errors = []
        async for part in client.runs.stream(
            thread["thread_id"],
            await _assistant(client),
            input={"data": str(missing)},
            stream_mode=["updates"],
        ):
            if part.event == "error":
                errors.append(part.data)
        return errors

    errors = asyncio.run(run())
    assert errors, "a missing dataset did not fail the run"
    text = json.dumps(errors)
    assert "no-such-dataset.npz" in text and "no such file" in text, text
    assert "internal error" not in text


@pytest.mark.real
@pytest.mark.slow
def test_studio_streams_every_node_of_a_real_run(studio: str) -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    from langgraph_sdk import get_client

    async def run() -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        client = get_client(url=studio)
        thread = await client.threads.create()
        nodes: list[str] = []
        updates: dict[str, Any] = {}
        final: dict[str, Any] = {}
        async for part in client.runs.stream(
            thread["thread_id"],
            await _assistant(client),
            input={"meta_features": MF, "dataset_name": "kermany-like"},
            context={"judge_with_llm": False, "seed": 0},
            stream_mode=["updates", "values"],
        ):
            if part.event == "updates":
                nodes += list(part.data)
                for update in part.data.values():
                    updates.update(update or {})
            elif part.event == "values":
                final = part.data
            elif part.event == "error":
                raise AssertionError(f"graph run failed in the server: {part.data}; see log")
        return nodes, updates, final

    nodes, updates, final = asyncio.run(run())
    assert nodes[:5] == ["features", "retrieve", "shortlist", "evidence", "recommender"]
    assert nodes[-1] == "record" and "judge" in nodes
    rec = final["recommendation"]
    # the served stream carries the output schema's channels; the shortlist is internal state
    shortlist = updates.get("shortlist") or final.get("shortlist")
    if shortlist:
        assert rec["candidate_id"] in {c["candidate_id"] for c in shortlist["candidates"]}
    else:
        assert rec["candidate_id"].startswith("c") and rec["candidate_id"][1:].isdigit()
    assert rec["llm"] == "qwen2.5-coder-0.5b"
    assert final["mlflow_run_id"], "the Studio run was not recorded in MLflow"
    # the same trace spans as an API run, linked to that run (graphs/tracing.py)
    from mlflow import MlflowClient

    client = MlflowClient(SERVER["tracking_uri"])
    run = client.get_run(final["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    traces = client.search_traces(locations=[run.info.experiment_id], run_id=run.info.run_id)
    assert len(traces) == 1, "the Studio run left no MLflow trace"
    names = {s.name for s in traces[0].data.spans}
    expected = {"recommend", "features", "retrieve", "shortlist", "evidence", "recommender_1"}
    assert expected | {"judge_1", "record"} <= names


def _form_page(schemas: dict[str, Any], error: str) -> str:
    """The forms Studio draws from the served schemas, as a plain page (Studio itself is a
    hosted web app this offline test cannot load)."""
    import html

    def rows(schema: dict[str, Any]) -> str:
        out = []
        for name, prop in (schema.get("properties") or {}).items():
            kinds = [p.get("type", "object") for p in prop.get("anyOf", [prop])]
            kind = " | ".join(str(k) for k in kinds if k != "null")
            out.append(
                f"<tr><td><b>{html.escape(name)}</b></td><td>{html.escape(kind)}</td>"
                f"<td>{html.escape(str(prop.get('default', '')))}</td>"
                f"<td>{html.escape(prop.get('description', ''))}</td></tr>"
            )
        return "".join(out)

    head = "<tr><th>field</th><th>type</th><th>default</th><th>description</th></tr>"
    style = (
        "body{font-family:sans-serif;margin:16px;color:#1f2933}"
        "table{border-collapse:collapse;font-size:13px;margin-bottom:14px}"
        "td,th{border:1px solid #d5dbe1;padding:3px 8px;text-align:left}th{background:#f3f5f7}"
        "h2{font-size:15px;margin:12px 0 4px}.err{background:#fdecec;border:1px solid #e0a0a0;"
        "padding:8px;font-family:monospace;font-size:12px}"
    )
    return (
        f"<html><head><style>{style}</style></head><body>"
        "<h1 style='font-size:18px'>langgraph dev: graph 'metallmix' as Studio receives it</h1>"
        f"<h2>Input (input_schema)</h2><table>{head}{rows(schemas['input_schema'])}</table>"
        f"<h2>Configuration (context_schema)</h2><table>{head}"
        f"{rows(schemas['context_schema'])}</table>"
        f"<h2>Output (output_schema)</h2><table>{head}{rows(schemas['output_schema'])}</table>"
        f"<h2>Streamed error of a run with a mistyped path</h2><div class='err'>"
        f"{html.escape(error)}</div></body></html>"
    )


@pytest.mark.slow
def test_studio_forms_render_in_a_browser(studio: str, tmp_path: Path) -> None:
    """The served schemas and error, drawn in headless Chromium (README's Studio picture)."""
    from langgraph_sdk import get_client
    from test_mlflow_browser import chromium_path, screenshot  # type: ignore[import-not-found]

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Python playwright missing: pip install 'metallmix[dev]'")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium found: apt-get install -y chromium (or set METALLMIX_CHROMIUM)")

    async def fetch() -> tuple[dict[str, Any], str]:
        client = get_client(url=studio)
        assistant = await _assistant(client)
        schemas = dict(await client.assistants.get_schemas(assistant))
        thread = await client.threads.create()
        error = ""
        async for part in client.runs.stream(
            thread["thread_id"], assistant, input={"data": "/data/typo.npz"}
        ):
            if part.event == "error":
                error = f"{part.data.get('error')}: {part.data.get('message')}"
        return schemas, error

    schemas, error = asyncio.run(fetch())
    page_path = tmp_path / "studio-forms.html"
    page_path.write_text(_form_page(schemas, error))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(page_path.as_uri())
            text = page.inner_text("body")
            for field in ("data", "meta_features", "modality", "llm", "kb", "seed"):
                assert field in text
            assert "/data/typo.npz: no such file" in text
            page.set_viewport_size(
                {"width": 1100, "height": page.evaluate("document.body.scrollHeight") + 20}
            )
            screenshot(page, "studio-forms.png")
        finally:
            browser.close()
