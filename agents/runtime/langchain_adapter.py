"""LangChain chat-model views of the local LLM, for LangGraph Studio and LangChain tooling.

The graph itself calls :class:`~metallmix.agents.runtime.llm.ChatLLM` directly; this module exists
so code that expects a LangChain ``BaseChatModel`` can use the same verified, already-loaded
model. ``langchain-community`` (whose ``ChatLlamaCpp`` is being sunset) is imported only here,
so replacing it later touches one file; it is the optional extra ``metallmix[langchain]``,
and :func:`chat_llama_cpp` says so when it is missing.
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from metallmix.agents.runtime.llm import ChatLLM
from metallmix.errors import MetaLLMiXError, ModelUnavailableError

_ROLES: tuple[tuple[type[BaseMessage], str], ...] = (
    (SystemMessage, "system"),
    (HumanMessage, "user"),
    (AIMessage, "assistant"),
)


def to_chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the role/content dicts :class:`ChatLLM` takes."""
    converted = []
    for i, message in enumerate(messages):
        role = next((r for kind, r in _ROLES if isinstance(message, kind)), None)
        if role is None or not isinstance(message.content, str):
            raise MetaLLMiXError(
                f"message {i} is a {type(message).__name__} with {type(message.content).__name__} "
                "content: the local LLM takes system, human and AI messages with text content"
            )
        converted.append({"role": role, "content": message.content})
    return converted


class ChatMetaLLMiX(BaseChatModel):
    """A ``BaseChatModel`` over any :class:`ChatLLM` (the loaded local model or a fake)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any  # a ChatLLM; Any because pydantic cannot validate a Protocol
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0

    @property
    def _llm_type(self) -> str:
        return "metallmix-local"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"name": self.llm.name, "sha256": self.llm.sha256, "seed": self.seed}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if stop:
            raise MetaLLMiXError("stop sequences are not supported by the local LLM adapter")
        llm: ChatLLM = self.llm
        text = llm.chat(
            to_chat_messages(messages),
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            seed=int(kwargs.get("seed", self.seed)),
        )
        usage = llm.last_usage
        prompt, completion = (
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
        )
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": prompt,
                "output_tokens": completion,
                "total_tokens": prompt + completion,
            },
            response_metadata={"model_name": llm.name, "sha256": llm.sha256},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def as_langchain(llm: ChatLLM, **kwargs: Any) -> ChatMetaLLMiX:
    """Wrap a loaded model (no second copy in memory) as a LangChain chat model."""
    return ChatMetaLLMiX(llm=llm, **kwargs)


def chat_llama_cpp(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    n_ctx: int = 4096,
    seed: int = 0,
    max_tokens: int = 512,
) -> Any:
    """langchain-community's ``ChatLlamaCpp`` on the same sha256-verified weights.

    It loads its own llama.cpp copy of the model; prefer :func:`as_langchain` in-process.
    """
    import warnings

    with warnings.catch_warnings():  # the sunset is known; this module is the only user
        warnings.filterwarnings("ignore", "`langchain-community` is being sunset")
        try:  # an optional extra: the product never needs it
            from langchain_community.chat_models import ChatLlamaCpp
        except ImportError as exc:
            raise ModelUnavailableError(
                "chat_llama_cpp needs langchain-community: pip install 'metallmix[langchain]' "
                "(or use as_langchain(load_llm(...)), which needs nothing more)"
            ) from exc

    from metallmix.agents.runtime.llm import default_threads
    from metallmix.agents.runtime.weights import resolve_weights

    weights = resolve_weights(name_or_path)
    return ChatLlamaCpp(
        model_path=str(weights.path),
        n_ctx=n_ctx,
        n_threads=threads or default_threads(),
        n_batch=512,  # its default of 8 makes prompt evaluation several times slower
        seed=seed,
        temperature=0.0,
        max_tokens=max_tokens,
        streaming=False,
        verbose=False,
    )
