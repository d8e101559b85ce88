"""A scripted stand-in for :class:`metallmix.agents.runtime.llm.LocalLLM`, for unit tests only.

It replays the answers a test lists, in order, and records every call, so graph and node
tests can exercise retries, malformed output and judge rejections in milliseconds. Every
test using it has a ``@pytest.mark.real`` twin that runs the real model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from metallmix.agents.runtime.llm import parse_json_output

M = TypeVar("M", bound=BaseModel)

Scripted = str | BaseModel | Exception


@dataclass
class Call:
    """One call the code under test made: what it sent and how."""

    method: str  # "chat" or "chat_json"
    messages: list[dict[str, str]]
    schema: type[BaseModel] | None
    kwargs: dict[str, Any] = field(default_factory=dict)


class ScriptedLLM:
    """Implements :class:`~metallmix.agents.runtime.llm.ChatLLM` by replaying ``responses``.

    A ``str`` is returned as the model's text (``chat_json`` validates it against the schema,
    raising LLMOutputError exactly like the real model); a pydantic object is serialised to
    JSON first; an exception is raised. Running out of responses is a test bug and says so.
    """

    def __init__(
        self,
        responses: list[Scripted],
        *,
        name: str = "scripted",
        sha256: str = "0" * 64,
    ) -> None:
        self.name = name
        self.sha256 = sha256
        self.responses = list(responses)
        self.calls: list[Call] = []
        self.last_raw = ""
        self.last_usage: dict[str, float] = {}

    @property
    def remaining(self) -> int:
        return len(self.responses)

    def _next(self, method: str, messages: list[dict[str, str]], schema: Any, **kw: Any) -> str:
        self.calls.append(Call(method, [dict(m) for m in messages], schema, kw))
        if not self.responses:
            raise AssertionError(
                f"ScriptedLLM ran out of responses at call {len(self.calls)} ({method}): "
                "script one more answer in the test"
            )
        item = self.responses.pop(0)
        if isinstance(item, Exception):
            raise item
        raw = item.model_dump_json() if isinstance(item, BaseModel) else str(item)
        self.last_raw = raw
        prompt_chars = sum(len(m.get("content", "")) for m in messages)
        # Rough token counts (4 characters a token) so callers can log usage fields.
        self.last_usage = {
            "prompt_tokens": float(prompt_chars // 4),
            "completion_tokens": float(len(raw) // 4),
            "seconds": 0.0,
        }
        return raw

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> str:
        return self._next(
            "chat", messages, None, max_tokens=max_tokens, temperature=temperature, seed=seed
        )

    def chat_json(
        self,
        messages: list[dict[str, str]],
        schema: type[M],
        *,
        max_tokens: int = 768,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> M:
        raw = self._next(
            "chat_json",
            messages,
            schema,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
        )
        return parse_json_output(raw, schema)


class FaultyEngine:
    """A stand-in engine for the LLM's child process (:mod:`metallmix.agents.runtime.worker`),
    for isolation tests only: it answers ``answer`` after ``delay`` seconds, or kills its own
    process with ``crash`` (a signal name such as ``SIGSEGV``) on call number ``crash_on``,
    like a native fault in llama.cpp would. The real twin kills the real model's child."""

    def __init__(
        self,
        *,
        answer: str = "ok",
        delay: float = 0.0,
        crash: str | None = None,
        crash_on: int = 1,
        load_delay: float = 0.0,
        **_: Any,
    ) -> None:
        import time

        time.sleep(load_delay)
        self.answer, self.delay, self.crash, self.crash_on = answer, delay, crash, crash_on
        self.calls = 0
        self.last_usage: dict[str, float] = {}
        self.load_seconds = load_delay
        self.info = {"engine": "FaultyEngine"}

    def complete(
        self,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> tuple[str, str]:
        import os
        import signal
        import time

        self.calls += 1
        if self.crash and self.calls >= self.crash_on:
            os.kill(os.getpid(), getattr(signal, self.crash))
        time.sleep(self.delay)
        self.last_usage = {"completion_tokens": 1.0, "seconds": self.delay}
        return self.answer, "stop"
