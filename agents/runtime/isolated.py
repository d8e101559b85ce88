"""A local LLM in a child process: a crash, a hang or runaway memory in llama.cpp costs the
LLM's part of an answer, never the answer.

:class:`IsolatedLLM` implements :class:`~metallmix.agents.runtime.llm.ChatLLM` by sending
each completion to :mod:`metallmix.agents.runtime.worker` and waiting for it with a bound.
When the child dies (a signal such as SIGSEGV, or an exit) or does not answer in time, the
call raises :class:`LLMProcessError` with the reason; the graph then gives the
deterministic answer flagged as a fallback, with ``llm_error`` set. The child is started
again on the next call, so a long-lived process recovers; while it lives, it stays warm
(model loaded, prompt caches filled) across recommendations.

Why a child process and not llama-cpp-python's bundled HTTP server: the server would need
its own web stack, a free port and a second copy of the reproducibility and speed work in
:class:`~metallmix.agents.runtime.llm.LocalLLM` (canonical prompt batching, saved prompt
states, the greedy grammar sampler). A pipe to a child that runs that same class keeps all
of it and adds only the boundary.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from metallmix.agents.runtime.chat import CompletionChat, check_messages
from metallmix.errors import MetaLLMiXError, ModelUnavailableError

DEFAULT_LOAD_TIMEOUT = 180.0
DEFAULT_CALL_TIMEOUT = 600.0
ENGINE = "metallmix.agents.runtime.llm:LocalLLM"


class LLMProcessError(MetaLLMiXError):
    """The LLM's process died or did not answer in time; ``reason`` says which."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _seconds_from_env(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise MetaLLMiXError(f"{name}={value!r} is not a positive number of seconds")
    return seconds


def call_timeout() -> float:
    """``METALLMIX_LLM_TIMEOUT``: seconds one completion may take (default 600)."""
    return _seconds_from_env("METALLMIX_LLM_TIMEOUT", DEFAULT_CALL_TIMEOUT)


def load_timeout() -> float:
    """``METALLMIX_LLM_LOAD_TIMEOUT``: seconds loading the model may take (default 180)."""
    return _seconds_from_env("METALLMIX_LLM_LOAD_TIMEOUT", DEFAULT_LOAD_TIMEOUT)


_CHILDREN: weakref.WeakSet[IsolatedLLM] = weakref.WeakSet()


@atexit.register
def _stop_children() -> None:
    for llm in list(_CHILDREN):
        llm.close()


class IsolatedLLM(CompletionChat):
    """A :class:`ChatLLM` whose engine runs in a child process (see the module docstring).

    ``engine`` names the class the child builds (``module:callable`` inside ``metallmix``)
    and ``engine_kwargs`` its arguments; the default is the real llama.cpp engine.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        sha256: str,
        engine: str = ENGINE,
        engine_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        start_timeout: float | None = None,
    ) -> None:
        self.name = name
        self.sha256 = sha256
        self.path = Path(path)
        self.engine = engine
        self.engine_kwargs = dict(engine_kwargs or {})
        self.timeout = timeout if timeout is not None else call_timeout()
        self.start_timeout = start_timeout if start_timeout is not None else load_timeout()
        self.last_raw = ""
        self.last_usage: dict[str, float] = {}
        self.load_seconds = 0.0
        self.info: dict[str, Any] = {}
        self.busy = False
        self.starts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        _CHILDREN.add(self)
        with self._lock:
            self._start()

    def __repr__(self) -> str:
        return f"IsolatedLLM(name={self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # --- the child's life ----------------------------------------------------------------------

    def _start(self) -> None:
        started = time.perf_counter()
        self._lines = queue.Queue()
        self._stderr.clear()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "metallmix.agents.runtime.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=env,
            start_new_session=True,  # Ctrl-C reaches the parent, which ends the child
        )
        self.starts += 1
        proc = self._proc
        threading.Thread(
            target=self._pump, args=(proc.stdout, self._lines), daemon=True, name="llm-out"
        ).start()
        threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True).start()
        answer = self._request(
            {"op": "load", "factory": self.engine, "kwargs": self.engine_kwargs},
            self.start_timeout,
            "loading",
        )
        self.info = dict(answer.get("info") or {})
        self.load_seconds = time.perf_counter() - started

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)  # EOF: the child is gone

    def _drain(self, stream: Any) -> None:
        for line in stream:
            self._stderr.append(line.rstrip())

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()

    def close(self) -> None:
        """End the child (the next call starts a new one)."""
        self._stop()

    def _death(self, doing: str) -> LLMProcessError:
        proc = self._proc
        code = proc.wait(timeout=5) if proc is not None else None
        if code is not None and code < 0:
            try:
                reason = f"signal {signal.Signals(-code).name}"
            except ValueError:
                reason = f"signal {-code}"
        else:
            reason = f"exit {code}"
        tail = " | ".join(line for line in list(self._stderr)[-3:] if line.strip())
        self._stop()
        return LLMProcessError(
            f"the LLM process ({self.name}) died with {reason} while {doing}"
            + (f"; its last words: {tail[-300:]}" if tail else ""),
            reason,
        )

    def _request(self, request: dict[str, Any], timeout: float, doing: str) -> dict[str, Any]:
        """Send one request and wait for its answer, at most ``timeout`` seconds."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        deadline = time.monotonic() + timeout
        self.busy = True
        try:
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                raise self._death(doing) from None
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stop()
                    raise LLMProcessError(
                        f"the LLM ({self.name}) did not finish {doing} within {timeout:g} s "
                        "and was stopped (raise METALLMIX_LLM_TIMEOUT or "
                        "METALLMIX_LLM_LOAD_TIMEOUT on a slow or busy machine)",
                        "timeout",
                    )
                try:
                    line = self._lines.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if line is None:
                    raise self._death(doing)
                try:
                    answer: dict[str, Any] = json.loads(line)
                except ValueError:
                    self._stderr.append(line.rstrip())  # not ours: keep it for the report
                    continue
                break
        except BaseException:
            if not isinstance(sys.exc_info()[1], LLMProcessError):
                self._stop()  # interrupted mid-request: the child's state is unknown
            raise
        finally:
            self.busy = False
        if not answer.get("ok"):
            error = answer.get("error") or {}
            kind, message = str(error.get("type", "")), str(error.get("message", ""))
            if doing == "loading":
                self._stop()
                raise ModelUnavailableError(
                    f"llama.cpp could not load {self.path}: {message}; check the file with "
                    "`metallmix llm check`"
                )
            if kind in {"MetaLLMiXError", "ModelUnavailableError"}:
                raise MetaLLMiXError(message)
            raise LLMProcessError(f"the LLM ({self.name}) failed: {kind}: {message}", "error")
        return answer

    # --- ChatLLM ---------------------------------------------------------------------------

    def complete(
        self,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> tuple[str, str]:
        """One completion in the child: (text, finish reason)."""
        check_messages(messages)
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._stop()
                self._start()
            answer = self._request(
                {
                    "op": "complete",
                    "messages": messages,
                    "response_format": response_format,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "seed": seed,
                },
                self.timeout,
                "answering",
            )
        self.last_raw = str(answer.get("text") or "")
        self.last_usage = {k: float(v) for k, v in (answer.get("usage") or {}).items()}
        return self.last_raw, str(answer.get("finish") or "")
