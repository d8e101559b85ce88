"""The ChatLLM contract: the scripted fake and, as its ``real`` twins, llama.cpp models.

The real tests assemble the bundled GGUFs from the installed weight packages once per
session into a temporary cache, then load them with llama.cpp on the CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.agents.runtime.llm import ChatLLM, LLMOutputError, load_llm
from metallmix.agents.runtime.registry import get_spec
from metallmix.errors import MetaLLMiXError

QUESTION = [
    {"role": "system", "content": "You answer arithmetic questions in JSON."},
    {"role": "user", "content": "Is 7 a prime number? Give a reason of at most six words."},
]


class Answer(BaseModel):
    is_prime: bool
    reason: str = Field(max_length=200)


# --- scripted fake --------------------------------------------------------------------------


def test_scripted_chat_json_returns_the_scripted_object() -> None:
    llm = ScriptedLLM(['{"is_prime": true, "reason": "only divisors 1 and 7"}'])
    assert isinstance(llm, ChatLLM)
    answer = llm.chat_json(QUESTION, Answer, max_tokens=64)
    assert answer == Answer(is_prime=True, reason="only divisors 1 and 7")
    assert json.loads(llm.last_raw)["is_prime"] is True
    assert llm.last_usage["completion_tokens"] > 0
    assert llm.calls[0].schema is Answer and llm.calls[0].kwargs["max_tokens"] == 64


def test_scripted_invalid_answer_raises_llm_output_error_with_raw() -> None:
    llm = ScriptedLLM(['{"is_prime": "maybe"', Answer(is_prime=False, reason="x")])
    with pytest.raises(LLMOutputError, match="not a valid Answer") as info:
        llm.chat_json(QUESTION, Answer)
    assert info.value.raw == '{"is_prime": "maybe"'
    assert isinstance(info.value, MetaLLMiXError)
    assert llm.chat_json(QUESTION, Answer).is_prime is False  # pydantic objects serialised


def test_scripted_exceptions_plain_text_and_exhaustion() -> None:
    llm = ScriptedLLM([RuntimeError("llama died"), "plain text"])
    with pytest.raises(RuntimeError, match="llama died"):
        llm.chat(QUESTION)
    assert llm.chat(QUESTION) == "plain text"
    with pytest.raises(AssertionError, match="ran out of responses at call 3"):
        llm.chat(QUESTION)


# --- real models (twins of the tests above) --------------------------------------------------


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One assembled copy of the bundled weights per test session, shared by test modules."""
    path = tmp_path_factory.getbasetemp() / "llm-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def real(weights_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    monkeypatch.setenv("METALLMIX_CACHE", str(weights_cache))
    for var in ("METALLMIX_LLM", "METALLMIX_LLM_PATH", "METALLMIX_LLM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_fast_chat_json_returns_valid_object() -> None:
    llm = load_llm("fast")
    assert isinstance(llm, ChatLLM)
    assert (llm.name, llm.sha256) == ("qwen2.5-coder-0.5b", get_spec("fast").sha256)
    answer = llm.chat_json(QUESTION, Answer, max_tokens=48)
    assert isinstance(answer, Answer)
    assert Answer.model_validate_json(llm.last_raw) == answer
    assert llm.last_usage["prompt_tokens"] > 10
    assert 0 < llm.last_usage["completion_tokens"] <= 48
    assert llm.last_usage["seconds"] > 0


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_fast_is_deterministic_and_stays_loaded() -> None:
    llm = load_llm("fast")
    first = llm.chat_json(QUESTION, Answer, max_tokens=48, seed=3)
    raw = llm.last_raw
    assert load_llm("qwen2.5-coder-0.5b") is llm
    assert llm.chat_json(QUESTION, Answer, max_tokens=48, seed=3) == first
    assert llm.last_raw == raw


def _facts(tag: str) -> list[dict[str, str]]:
    """A prompt of a few hundred tokens, long enough for several cached prefix blocks."""
    facts = " ".join(
        f"Model {name} reached {70 + i}% accuracy on dataset {tag}-{i}."
        for i, name in enumerate(["resnet18", "efficientnet_b0", "convnext_atto", "vit_tiny"] * 3)
    )
    return [
        {"role": "system", "content": "You summarise experiment logs in one sentence."},
        {"role": "user", "content": f"Log {tag}: {facts} Which model is best?"},
    ]


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_answer_does_not_depend_on_what_the_cache_holds() -> None:
    from metallmix.agents.runtime.llm import LocalLLM

    shared = load_llm("fast")
    fresh = LocalLLM(shared.path, name=shared.name, sha256=shared.sha256)
    cold = fresh.chat(_facts("A"), max_tokens=12)
    assert shared.chat(_facts("A"), max_tokens=12) == cold
    assert shared.chat(_facts("A"), max_tokens=12) == cold  # prompt served from the cache
    assert shared.last_usage["prompt_eval_tokens"] < shared.last_usage["prompt_tokens"] / 2
    shared.chat(_facts("B"), max_tokens=12)
    assert shared.chat(_facts("A"), max_tokens=12) == cold  # restored from the RAM cache
    assert shared.last_usage["prompt_eval_tokens"] < shared.last_usage["prompt_tokens"] / 2


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_cut_off_answer_raises_llm_output_error_with_raw() -> None:
    llm = load_llm("fast")
    with pytest.raises(LLMOutputError, match="raise max_tokens") as info:
        llm.chat_json(QUESTION, Answer, max_tokens=4)
    assert info.value.raw.startswith("{")
    assert info.value.raw == llm.last_raw


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_plain_chat_and_bad_messages() -> None:
    llm = load_llm("fast")
    text = llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert isinstance(text, str) and text.strip()
    with pytest.raises(MetaLLMiXError, match="message 0"):
        llm.chat([{"role": "robot", "content": "hi"}])


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_default_model_chat_json() -> None:
    llm = load_llm()
    assert llm.name == "qwen2.5-coder-1.5b"
    answer = llm.chat_json(QUESTION, Answer, max_tokens=48)
    assert isinstance(answer, Answer)
    assert answer.reason.strip()
    assert llm.last_usage["completion_tokens"] <= 48


# --- thread selection -------------------------------------------------------------------------


def test_auto_threads_follow_idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from metallmix.agents.runtime import llm as llm_module

    monkeypatch.setattr(llm_module.os, "sched_getaffinity", lambda _pid: {0, 1})
    for others, expected in ((0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (12.0, 1)):
        monkeypatch.setattr(llm_module, "_runnable_others", lambda o=others: o)
        assert llm_module.auto_threads() == expected, others
    monkeypatch.setattr(llm_module.os, "sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setattr(llm_module, "_runnable_others", lambda: 0.0)
    assert llm_module.auto_threads() == 2  # capped: more threads do not help a 1.5B model
    assert llm_module.auto_threads(max_threads=8) == 8


def test_thread_setting_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from metallmix.agents.runtime.llm import thread_setting

    monkeypatch.delenv("METALLMIX_LLM_THREADS", raising=False)
    assert thread_setting() is None
    monkeypatch.setenv("METALLMIX_LLM_THREADS", "auto")
    assert thread_setting() is None
    monkeypatch.setenv("METALLMIX_LLM_THREADS", "3")
    assert thread_setting() == 3
    monkeypatch.setenv("METALLMIX_LLM_THREADS", "two")
    with pytest.raises(MetaLLMiXError, match="METALLMIX_LLM_THREADS='two'"):
        thread_setting()


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_answer_does_not_depend_on_thread_count() -> None:
    messages = [{"role": "user", "content": "Name two CNN architectures, comma separated."}]
    one = load_llm("fast", threads=1)
    two = load_llm("fast", threads=2)
    assert one is not two and one.path == two.path
    assert one.chat(messages, max_tokens=8) == two.chat(messages, max_tokens=8)
    assert (one.last_usage["threads"], two.last_usage["threads"]) == (1.0, 2.0)


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_fast_grammar_sampling_gives_the_stock_answer() -> None:
    llm = load_llm("fast", isolated=False)  # the engine itself: its sampler is switched here
    raws = []
    for fast in (True, False):
        llm.fast_grammar = fast
        try:
            llm.chat_json(QUESTION, Answer, max_tokens=40, seed=5)
            raws.append(llm.last_raw)
        finally:
            llm.fast_grammar = True
    assert raws[0] == raws[1]


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_prompt_longer_than_context_is_a_clear_error() -> None:
    llm = load_llm("fast", n_ctx=128)
    long = [{"role": "user", "content": "chest x-ray " * 200}]
    with pytest.raises(MetaLLMiXError, match=r"does not fit the LLM's context.*n_ctx than 128"):
        llm.chat(long, max_tokens=4)
