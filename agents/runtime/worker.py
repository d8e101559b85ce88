"""The LLM's own process: ``python -m metallmix.agents.runtime.worker``.

llama.cpp is native code: a CPU it was not built for, a bad kernel (ggml's AMX path on
Sapphire Rapids) or a corrupt file ends in a segmentation fault or a hang, and in the
process that holds the user's answer that costs the answer. So the model is loaded and run
here, in a child process driven by :class:`metallmix.agents.runtime.isolated.IsolatedLLM`
over JSON lines on stdin/stdout (no pickles cross the boundary). The child stays alive and
warm across a process's recommendations.

Protocol, one JSON object a line:

* ``{"op": "load", "factory": "module:callable", "kwargs": {...}}`` builds the engine,
  answered by ``{"ok": true, "info": {...}}``;
* ``{"op": "complete", "messages": [...], "response_format": ..., "max_tokens": N,
  "temperature": T, "seed": S}`` answered by ``{"ok": true, "text": ..., "finish": ...,
  "usage": {...}}``;
* any failure is ``{"ok": false, "error": {"type": ..., "message": ...}}``.

The protocol runs on a private copy of stdout; file descriptor 1 is pointed at stderr, so
nothing native code prints can corrupt it. The child ignores SIGINT (the parent decides
what Ctrl-C means and ends the child) and exits when its parent goes away.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Protocol


class Engine(Protocol):
    """What the child needs of an engine (:class:`~metallmix.agents.runtime.llm.LocalLLM`)."""

    last_usage: dict[str, float]
    load_seconds: float

    def complete(
        self,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> tuple[str, str]: ...


def _factory(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module.startswith("metallmix.") or not attr:
        raise ValueError(f"engine factory {spec!r} is not a metallmix 'module:callable'")
    return getattr(importlib.import_module(module), attr)


def _watch_parent(parent: int) -> None:
    """Exit when the parent dies (it may be SIGKILLed and never close our stdin)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _error(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}


def serve(requests: Any, reply: Any) -> None:
    """Answer requests (an iterable of lines) until EOF; ``reply`` writes one line."""
    engine: Engine | None = None
    for line in requests:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.get("op")
            if op == "load":
                started = time.perf_counter()
                engine = _factory(request["factory"])(**request.get("kwargs", {}))
                info = dict(getattr(engine, "info", {}) or {})
                info["load_seconds"] = float(
                    getattr(engine, "load_seconds", time.perf_counter() - started)
                )
                answer: dict[str, Any] = {"ok": True, "info": info}
            elif op == "complete":
                if engine is None:
                    raise RuntimeError("no model loaded: send a load request first")
                text, finish = engine.complete(
                    request["messages"],
                    request.get("response_format"),
                    int(request["max_tokens"]),
                    float(request["temperature"]),
                    int(request["seed"]),
                )
                answer = {"ok": True, "text": text, "finish": finish, "usage": engine.last_usage}
            elif op == "ping":
                answer = {"ok": True, "pid": os.getpid()}
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # reported to the parent, which raises it there
            answer = _error(exc)
        reply(json.dumps(answer))


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # whatever native code prints goes to stderr
    sys.stdout = sys.stderr
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()

    def reply(text: str) -> None:
        protocol.write(text + "\n")
        protocol.flush()

    serve(sys.stdin, reply)


if __name__ == "__main__":
    main()
