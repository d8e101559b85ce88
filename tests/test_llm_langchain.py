"""The LangChain view of the local LLM: scripted fake and real twins."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from metallmix.agents.runtime.fake import ScriptedLLM
from metallmix.agents.runtime.langchain_adapter import (
    as_langchain,
    chat_llama_cpp,
    to_chat_messages,
)
from metallmix.errors import MetaLLMiXError, ModelUnavailableError

MESSAGES = [SystemMessage("Answer in one word."), HumanMessage("Colour of the sky?")]


def test_messages_are_converted_by_role() -> None:
    converted = to_chat_messages([*MESSAGES, AIMessage("Blue."), HumanMessage("Sure?")])
    assert [m["role"] for m in converted] == ["system", "user", "assistant", "user"]
    assert converted[1]["content"] == "Colour of the sky?"
    with pytest.raises(MetaLLMiXError, match="message 0 is a ToolMessage"):
        to_chat_messages([ToolMessage("x", tool_call_id="1")])


def test_scripted_model_behind_langchain_interface() -> None:
    fake = ScriptedLLM(["Blue."])
    reply = as_langchain(fake, max_tokens=7).invoke(MESSAGES)
    assert isinstance(reply, AIMessage) and reply.content == "Blue."
    assert reply.response_metadata["model_name"] == "scripted"
    assert fake.calls[0].messages[0] == {"role": "system", "content": "Answer in one word."}
    assert fake.calls[0].kwargs["max_tokens"] == 7


@pytest.fixture
def real(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install metallmix[llm])")
    cache = tmp_path_factory.getbasetemp() / "llm-cache"  # shared with test_llm_chat
    monkeypatch.setenv("METALLMIX_CACHE", str(cache))
    for var in ("METALLMIX_LLM", "METALLMIX_LLM_PATH"):
        monkeypatch.delenv(var, raising=False)
    yield cache


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_model_behind_langchain_interface() -> None:
    from metallmix.agents.runtime.llm import load_llm

    llm = load_llm("fast")
    reply = as_langchain(llm, max_tokens=6).invoke(MESSAGES)
    assert isinstance(reply.content, str) and reply.content.strip()
    assert reply.usage_metadata is not None
    assert 0 < reply.usage_metadata["output_tokens"] <= 6
    assert reply.response_metadata["sha256"] == llm.sha256


def test_chat_llama_cpp_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """langchain-community is the optional extra metallmix[langchain]: without it the one
    function that needs it fails with what to install, not an ImportError traceback."""
    monkeypatch.setitem(sys.modules, "langchain_community.chat_models", None)
    with pytest.raises(ModelUnavailableError, match=r"metallmix\[langchain\]"):
        chat_llama_cpp("fast")


@pytest.mark.real
@pytest.mark.usefixtures("real")
def test_real_chat_llama_cpp_on_verified_weights() -> None:
    pytest.importorskip("langchain_community", reason="the langchain extra")
    model = chat_llama_cpp("fast", max_tokens=6, threads=1)
    reply = model.invoke(MESSAGES)
    assert isinstance(reply.content, str) and reply.content.strip()
