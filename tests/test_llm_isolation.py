"""The LLM runs in a child process: its crash, hang or bad weights cost the LLM's part of an
answer, never the answer (issue: `make demo` segfaulted on AMX Xeons and lost the shortlist).

Fake-backed tests drive the real child process and protocol with a stand-in engine
(:class:`~metallmix.agents.runtime.fake.FaultyEngine`) that crashes or sleeps on demand;
their real twins kill the real llama.cpp child with SIGSEGV mid-decode.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gguf_files import tiny_gguf

from metallmix.agents.runtime.isolated import IsolatedLLM, LLMProcessError
from metallmix.cli import main
from metallmix.errors import MetaLLMiXError, ModelUnavailableError

ENGINE = "metallmix.agents.runtime.fake:FaultyEngine"
HELLO = [{"role": "user", "content": "hello"}]


def faulty(**kwargs: Any) -> IsolatedLLM:
    timeout = kwargs.pop("timeout", None)
    return IsolatedLLM(
        Path("fake.gguf"),
        name="faulty",
        sha256="",
        engine=ENGINE,
        engine_kwargs=kwargs,
        timeout=timeout,
    )


def kill_when_busy(llm: Any, sig: signal.Signals = signal.SIGSEGV, after: float = 0.3) -> None:
    """From another thread: wait until ``llm`` is inside a call, then send ``sig`` to its
    child, as a native fault in the middle of a decode would end it."""

    def run() -> None:
        deadline = time.monotonic() + 600
        while not llm.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(after)
        if llm.pid is not None:
            os.kill(llm.pid, sig)

    threading.Thread(target=run, daemon=True).start()


def test_child_answers_and_stays_warm() -> None:
    llm = faulty(answer="ready")
    pid = llm.pid
    assert llm.chat(HELLO) == "ready" and llm.chat(HELLO) == "ready"
    assert llm.pid == pid and llm.starts == 1  # one process serves every call
    llm.close()
    assert llm.pid is None


def test_segfault_mid_call_is_reported_with_its_signal_and_the_child_restarts() -> None:
    llm = faulty(answer="ready", crash="SIGSEGV", crash_on=2)
    assert llm.chat(HELLO) == "ready"
    with pytest.raises(LLMProcessError, match="died with signal SIGSEGV while answering") as info:
        llm.chat(HELLO)
    assert info.value.reason == "signal SIGSEGV"
    assert llm.chat(HELLO) == "ready" and llm.starts == 2  # a new child, warm again
    llm.close()


def test_hung_llm_costs_at_most_the_timeout() -> None:
    llm = faulty(delay=60, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(LLMProcessError, match=r"did not finish answering within 1 s") as info:
        llm.chat(HELLO)
    assert info.value.reason == "timeout"
    assert time.monotonic() - started < 30  # bounded by the timeout, not by the 60 s sleep
    assert llm.pid is None  # the hung child was stopped


def test_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METALLMIX_LLM_TIMEOUT", "2.5")
    assert faulty().timeout == 2.5
    monkeypatch.setenv("METALLMIX_LLM_TIMEOUT", "soon")
    with pytest.raises(MetaLLMiXError, match="METALLMIX_LLM_TIMEOUT='soon'"):
        faulty()


def test_engine_errors_cross_the_boundary_as_errors() -> None:
    llm = faulty()
    with pytest.raises(MetaLLMiXError, match="message 0"):
        llm.chat([{"role": "robot", "content": "hi"}])  # checked before anything is sent
    with pytest.raises(ModelUnavailableError, match="could not load"):
        IsolatedLLM(
            Path("x.gguf"), name="x", sha256="", engine="metallmix.agents.runtime.fake:Nope"
        )


# --- the answer survives -----------------------------------------------------------------------


@pytest.fixture
def crashing(monkeypatch: pytest.MonkeyPatch) -> IsolatedLLM:
    """Every model load returns one child-process LLM that segfaults on its first call."""
    llm = faulty(crash="SIGSEGV")
    monkeypatch.setattr("metallmix.agents.runtime.llm.load_llm", lambda *a, **k: llm)
    return llm


def _check_fallback_and_run(doc: dict[str, Any]) -> None:
    from metallmix.tools import tracking

    assert doc["fallback"] is True
    assert "SIGSEGV" in doc["llm_error"]
    assert doc["candidate_id"] and doc["model"] and doc["explanation"]
    run = tracking.client().get_run(doc["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert "SIGSEGV" in run.data.tags["metallmix.llm_error"]
    assert "the LLM failed" in run.data.tags["metallmix.verdict"]


def test_cli_gives_the_answer_when_the_llm_segfaults(
    kb: Path, crashing: IsolatedLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.cli.recommend import example_card

    code = main(["recommend", str(example_card("chest-xray")), "--kb", str(kb), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    _check_fallback_and_run(json.loads(out.out))


def test_readable_output_says_why_the_answer_is_templated(
    kb: Path, crashing: IsolatedLLM, capsys: pytest.CaptureFixture[str]
) -> None:
    from metallmix.cli.recommend import example_card

    assert main(["recommend", str(example_card("chest-xray")), "--kb", str(kb)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the LLM failed" in out and "SIGSEGV" in out


def test_api_answer_survives_a_hung_llm(kb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import metallmix
    from metallmix.cli.recommend import example_card

    llm = faulty(delay=60, timeout=1.0)
    rec = metallmix.recommend(example_card("chest-xray"), llm=llm, kb=kb, progress=False)
    assert rec.fallback and rec.llm_error is not None and "did not finish" in rec.llm_error


# --- bad weights fail fast ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: tiny_gguf(200_000)[:-5000], "truncated"),
        (lambda: b"GGUF" + os.urandom(100_000), "not a usable GGUF model"),
        (lambda: b"PK\x03\x04" + b"\0" * 1000, "not a GGUF file"),
        (lambda: tiny_gguf(50_000, tokenizer=False), "without a tokenizer"),
    ],
    ids=["truncated", "random-after-magic", "zip", "no-tokenizer"],
)
def test_corrupt_gguf_is_refused_before_any_work(
    make: Any, match: str, kb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metallmix
    from metallmix.cli.recommend import example_card
    from metallmix.graphs import nodes

    bad = tmp_path / "model.gguf"
    bad.write_bytes(make())
    ran: list[str] = []
    monkeypatch.setattr(nodes, "compute_meta_features", lambda *a, **k: ran.append("features"))
    with pytest.raises(ModelUnavailableError, match=match):
        metallmix.recommend(example_card("chest-xray"), llm=str(bad), kb=kb, progress=False)
    assert ran == []  # nothing was computed before the refusal


# --- real twins ---------------------------------------------------------------------------------


@pytest.fixture
def real_fast() -> Any:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    from metallmix.agents.runtime.llm import load_llm

    try:
        return load_llm("fast")
    except ModelUnavailableError as exc:
        pytest.skip(f"the fast model is not installed: {exc}")


@pytest.mark.real
def test_real_llm_killed_mid_decode_restarts_and_answers_again(real_fast: Any) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 200, comma separated."}]
    kill_when_busy(real_fast, after=0.5)
    with pytest.raises(LLMProcessError, match="SIGSEGV"):
        real_fast.chat(messages, max_tokens=400)
    assert real_fast.chat([{"role": "user", "content": "Say yes."}], max_tokens=4).strip()


@pytest.mark.real
@pytest.mark.slow
def test_real_recommendation_survives_a_segfault_mid_decode(kb: Path, real_fast: Any) -> None:
    import metallmix
    from metallmix.cli.recommend import example_card

    kill_when_busy(real_fast, after=1.0)
    rec = metallmix.recommend(example_card("chest-xray"), llm=real_fast, kb=kb, progress=False)
    _check_fallback_and_run(rec.model_dump(mode="json"))
