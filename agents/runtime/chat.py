"""What every chat model here offers (:class:`ChatLLM`) and the checks shared by all of them.

The in-process engine (:class:`~metallmix.agents.runtime.llm.LocalLLM`), its child-process
proxy (:class:`~metallmix.agents.runtime.isolated.IsolatedLLM`) and the scripted test
double validate prompts and answers with these same functions, so they fail the same way.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from metallmix.errors import MetaLLMiXError

M = TypeVar("M", bound=BaseModel)


class LLMOutputError(MetaLLMiXError):
    """The model answered, but not with what was asked (invalid JSON, wrong fields, cut off).

    ``raw`` keeps the model's text so it can be logged to MLflow and shown to the user.
    """

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@runtime_checkable
class ChatLLM(Protocol):
    """What an agent node needs from a language model."""

    name: str
    sha256: str
    last_raw: str
    last_usage: dict[str, float]

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str: ...

    def chat_json(
        self,
        messages: list[dict[str, str]],
        schema: type[M],
        *,
        max_tokens: int = 768,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> M: ...


def parse_json_output(raw: str, schema: type[M], *, truncated: bool = False) -> M:
    """Validate the model's text against ``schema``; LLMOutputError carries the raw text.

    Shared by the real and the scripted model so both fail the same way on the same text.
    """
    snippet = raw if len(raw) <= 300 else raw[:300] + "..."
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        hint = " (the answer hit max_tokens and was cut off: raise max_tokens)" if truncated else ""
        raise LLMOutputError(
            f"the LLM's answer is not a valid {schema.__name__}{hint}: "
            f"{where}: {first.get('msg', exc)}; raw answer: {snippet!r}",
            raw,
        ) from exc


def schema_for(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema llama.cpp turns into a grammar, so output is valid JSON by construction."""
    return schema.model_json_schema()


def check_messages(messages: list[dict[str, str]]) -> None:
    """Catch malformed prompts here, with a message, rather than deep inside llama.cpp."""
    if not messages:
        raise MetaLLMiXError("no messages given to the LLM: pass at least one user message")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in {"system", "user", "assistant"} or not isinstance(content, str):
            raise MetaLLMiXError(
                f"message {i} is {json.dumps(message)[:120]}: each message needs a role "
                "(system, user or assistant) and a string content"
            )


class CompletionChat:
    """``chat`` and ``chat_json`` written once over a ``complete`` method, for every engine
    that implements :class:`ChatLLM` by one raw completion call (the in-process
    :class:`~metallmix.agents.runtime.llm.LocalLLM` and its child-process proxy)."""

    def complete(
        self,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> tuple[str, str]:
        """One completion: (text, finish reason)."""
        raise NotImplementedError

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str:
        text, _ = self.complete(messages, None, max_tokens, temperature, seed)
        return text

    def chat_json(
        self,
        messages: list[dict[str, str]],
        schema: type[M],
        *,
        max_tokens: int = 768,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> M:
        response_format = {"type": "json_object", "schema": schema_for(schema)}
        text, finish = self.complete(messages, response_format, max_tokens, temperature, seed)
        return parse_json_output(text, schema, truncated=finish == "length")
