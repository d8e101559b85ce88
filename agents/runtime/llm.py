"""The local LLM behind the recommender and the judge: llama.cpp on the CPU, no cloud.

Nodes code against :class:`ChatLLM`, so unit tests can swap in
:class:`metallmix.agents.runtime.fake.ScriptedLLM` while production uses :class:`LocalLLM`
inside a child process (:class:`~metallmix.agents.runtime.isolated.IsolatedLLM`), so that a
native fault in llama.cpp never takes the caller's answer down. Weights are resolved,
sha256-verified and their GGUF header checked (:mod:`metallmix.agents.runtime.gguf`) before
llama.cpp sees them; loaded models are cached per process so a second recommendation is warm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metallmix.agents.runtime.chat import (
    ChatLLM,
    CompletionChat,
    LLMOutputError,
    check_messages,
    parse_json_output,
    schema_for,
)
from metallmix.atomic import read_recorded, write_recorded
from metallmix.errors import MetaLLMiXError, ModelUnavailableError

__all__ = [
    "ChatLLM",
    "LLMOutputError",
    "LocalLLM",
    "check_messages",
    "load_llm",
    "parse_json_output",
    "schema_for",
    "unload_all",
]

if TYPE_CHECKING:
    from metallmix.agents.runtime.weights import ResolvedWeights


DEFAULT_THREADS = 2
# llama.cpp keeps the KV state of earlier prompts here, so the judge re-reading the
# recommender's context (same system prompt, same facts) skips most of the prompt eval.
PROMPT_CACHE_BYTES = 512 << 20


def build_info() -> str:
    """What the installed llama.cpp was compiled with (``llama_print_system_info``), e.g.
    ``CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | ...``."""
    import llama_cpp

    return str(llama_cpp.llama_print_system_info().decode("utf-8", "replace"))


def compiled_features(info: str) -> set[str]:
    """The instruction sets a build uses, from :func:`build_info`'s text."""
    found = set()
    for part in info.replace("\n", "|").split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if name and value.strip() == "1":
            found.add(name)
    return found


# Instruction sets a build may use -> the /proc/cpuinfo flag the CPU must show for them.
_CPU_FLAGS = {
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AVX_VNNI": "avx_vnni",
    "AMX_INT8": "amx_int8",
}


def missing_cpu_features(info: str, cpuinfo: str | None = None) -> list[str]:
    """Instruction sets the build uses that this CPU lacks (empty off Linux/x86, where
    ``/proc/cpuinfo`` has no x86 flags line)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    if not flags:
        return []
    used = compiled_features(info)
    return sorted(f for f in used if f in _CPU_FLAGS and _CPU_FLAGS[f] not in flags)


def use_extra_buffers(info: str) -> bool:
    """Whether llama.cpp may place weights in its extra buffer types (weight repacking).

    On a build with AMX kernels (a native build on Sapphire Rapids or newer) the AMX buffer
    type is one of them, and it crashes in ``ggml_backend_amx_mul_mat``; there they are off.
    Elsewhere they are on: they hold the repacked weights that make AVX2/NEON matmuls
    faster. ``METALLMIX_LLM_EXTRA_BUFTS=0/1`` overrides.
    """
    value = os.environ.get("METALLMIX_LLM_EXTRA_BUFTS", "").strip().lower()
    if value in {"0", "off", "false", "no"}:
        return False
    if value in {"1", "on", "true", "yes"}:
        return True
    return not any(f.startswith("AMX") for f in compiled_features(info))


@contextlib.contextmanager
def _model_params(use_extra_bufts: bool) -> Any:
    """llama-cpp-python builds its model parameters inside ``Llama.__init__`` from
    ``llama_model_default_params`` and has no argument for ``use_extra_bufts``; this sets it
    on the defaults for the duration of one load (the child loads one model at a time)."""
    import llama_cpp.llama_cpp as lib

    stock = lib.llama_model_default_params

    def params() -> Any:
        found = stock()
        found.use_extra_bufts = use_extra_bufts
        return found

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = stock


def thread_setting() -> int | None:
    """``METALLMIX_LLM_THREADS``: a positive integer, or ``auto``/unset for :func:`auto_threads`."""
    value = os.environ.get("METALLMIX_LLM_THREADS", "").strip().lower()
    if value in {"", "auto"}:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise MetaLLMiXError(
            f"METALLMIX_LLM_THREADS={value!r} is not a positive integer or 'auto': "
            "set it to e.g. 2, or unset it"
        )
    return threads


def _runnable_others() -> float:
    """Tasks competing for the CPU right now, not counting this one (Linux run queue)."""
    try:
        samples = []
        for _ in range(5):
            with open("/proc/loadavg") as fh:
                running = int(fh.read().split()[3].split("/")[0])
            samples.append(running - 1)
            time.sleep(0.002)
        return float(sorted(samples)[len(samples) // 2])
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def auto_threads(max_threads: int = DEFAULT_THREADS) -> int:
    """As many threads as there are idle cores, from 1 to ``max_threads``.

    llama.cpp's threads meet at spin barriers after every operation, so one preempted
    thread stalls the rest: measured on 2 busy cores (run queue ~10), 2 threads decoded the
    0.5B model at 0.8 tok/s against 7.5 tok/s with 1 thread. On an idle box 2 threads win.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    idle = cores - _runnable_others()
    return max(1, min(max_threads, cores, int(idle + 0.5)))


def default_threads() -> int:
    """The thread count a call would use now: the configured one, else :func:`auto_threads`."""
    return thread_setting() or auto_threads()


class LocalLLM(CompletionChat):
    """A verified GGUF loaded into llama.cpp; implements :class:`ChatLLM`.

    Calls are serialised with a lock because a llama.cpp context is not thread-safe and
    LangGraph may run nodes from worker threads.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        sha256: str,
        threads: int | None = None,
        n_ctx: int = 4096,
        seed: int = 0,
    ) -> None:
        try:
            from llama_cpp import Llama, LlamaRAMCache
        except ImportError as exc:
            raise ModelUnavailableError(
                "llama-cpp-python is not installed: pip install 'metallmix[llm]' "
                "(builds llama.cpp from source, 11-28 minutes on 2 cores)"
            ) from exc
        self.name = name
        self.sha256 = sha256
        self.path = Path(path)
        # None: choose per call from the idle cores (see auto_threads); an int pins it.
        self.threads = threads
        self._n_threads = threads or auto_threads()
        self.n_ctx = n_ctx
        self.seed = seed
        self.last_raw = ""
        self.last_usage: dict[str, float] = {}
        self._lock = threading.Lock()
        started = time.perf_counter()
        system = build_info()
        missing = missing_cpu_features(system)
        if missing:
            raise ModelUnavailableError(
                f"the installed llama.cpp uses {', '.join(missing)}, which this CPU lacks: "
                "rebuild it for this machine with `make install NATIVE=1` (or "
                "scripts/build_llama.sh --native)"
            )
        self.extra_buffers = use_extra_buffers(system)
        self.info = {"build": system.strip(), "extra_buffers": self.extra_buffers}
        try:
            with _model_params(self.extra_buffers):
                self._llama = Llama(
                    model_path=str(self.path),
                    n_ctx=n_ctx,
                    n_threads=self._n_threads,
                    n_threads_batch=self._n_threads,
                    seed=seed,
                    verbose=False,
                )
        except ValueError as exc:  # llama.cpp reports unreadable files as ValueError
            raise ModelUnavailableError(
                f"llama.cpp could not load {self.path}: {exc}; "
                "check the file with `metallmix llm check`"
            ) from exc
        self._prefix = _CanonicalPrefix(self._llama)
        _lean_states(self._llama, self._prefix)
        self._llama.set_cache(_prompt_cache(self._prefix, PROMPT_CACHE_BYTES, LlamaRAMCache))
        self._formatter = _chat_formatter(self._llama)
        self._fixed = _FixedPrefixes(self)
        self.fast_grammar = True
        _install_fast_grammar(self)
        self.load_seconds = time.perf_counter() - started

    def __repr__(self) -> str:
        threads = self.threads or "auto"
        return f"LocalLLM(name={self.name!r}, threads={threads}, n_ctx={self.n_ctx})"

    def complete(
        self,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int,
    ) -> tuple[str, str]:
        """One chat completion; records the raw text and prompt/generation timings."""
        check_messages(messages)
        import llama_cpp

        with self._lock:
            ctx = self._llama.ctx
            if self.threads is None:
                wanted = auto_threads()
                if wanted != self._n_threads:
                    llama_cpp.llama_set_n_threads(ctx, wanted, wanted)
                    self._n_threads = wanted
            started = time.perf_counter()
            prefix_source, prefix_tokens = self._fixed.restore(messages)
            prefix_seconds = time.perf_counter() - started
            llama_cpp.llama_perf_context_reset(ctx)
            self._prefix.begin()
            try:
                response: Any = self._llama.create_chat_completion(
                    messages=messages,  # type: ignore[arg-type]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    response_format=response_format,  # type: ignore[arg-type]
                )
            except ValueError as exc:
                if "exceed context window" not in str(exc):
                    raise
                raise MetaLLMiXError(
                    f"the prompt does not fit the LLM's context ({exc}): shorten it (fewer "
                    f"candidates or facts) or load the model with a larger n_ctx than {self.n_ctx}"
                ) from exc
            seconds = time.perf_counter() - started
            perf = llama_cpp.llama_perf_context(ctx)
        choice = response["choices"][0]
        text = choice["message"].get("content") or ""
        usage = response.get("usage") or {}
        self.last_raw = text
        self.last_usage = {
            "prompt_tokens": float(usage.get("prompt_tokens", 0)),
            "completion_tokens": float(usage.get("completion_tokens", 0)),
            "seconds": seconds,
            # What llama.cpp actually evaluated: fewer prompt tokens than sent on a cache hit.
            "prompt_eval_tokens": float(perf.n_p_eval),
            "prompt_eval_seconds": perf.t_p_eval_ms / 1000.0,
            "gen_tokens": float(perf.n_eval),
            "gen_seconds": perf.t_eval_ms / 1000.0,
            "threads": float(self._n_threads),
            # The fixed system prompt's KV state: "disk"/"ram" = loaded, "computed" = evaluated
            # (and saved), "context" = still in place, "none" = no fixed prefix.
            "fixed_prefix_tokens": float(prefix_tokens),
            "fixed_prefix_loaded": float(prefix_source in {"disk", "ram", "context"}),
            "fixed_prefix_seconds": prefix_seconds,
        }
        return text, str(choice.get("finish_reason") or "")


PREFIX_BLOCK = 64


class _CanonicalPrefix:
    """Evaluate every prompt the same way, whatever the cache holds, so answers are reproducible.

    llama.cpp's numbers depend slightly on how tokens are batched, and greedy decoding turns a
    tiny logit difference into a different answer: with stock prefix reuse the 1.5B model
    wrote a different recommendation for the same prompt cold (one 502-token batch) and warm
    (last token re-evaluated alone). Here a prompt is always evaluated in blocks aligned to
    absolute positions (``PREFIX_BLOCK`` tokens), its last token alone, and cached KV is
    reused only up to a block boundary inside the previous prompt (never generated tokens).
    """

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self._stock_eval = llama.eval
        self._stock_load_state = llama.load_state
        self.canonical = 0  # KV positions [0, canonical) were evaluated canonically
        self._prompt_pending = False
        # Instance attributes shadow the methods llama-cpp-python calls internally.
        setattr(llama, "eval", self.eval)  # noqa: B010
        setattr(llama, "load_state", self.load_state)  # noqa: B010

    def begin(self) -> None:
        """The next eval is a completion's prompt (generation steps follow)."""
        self._prompt_pending = True

    def eval(self, tokens: Any) -> None:
        if not self._prompt_pending:
            self._stock_eval(tokens)
            return
        self._prompt_pending = False
        llama = self._llama
        n_past = int(llama.n_tokens)
        start = (min(n_past, self.canonical) // PREFIX_BLOCK) * PREFIX_BLOCK
        full = [int(t) for t in llama.input_ids[start:n_past]] + [int(t) for t in tokens]
        llama.n_tokens = start  # stock eval drops the KV cache from n_tokens on
        last = start + len(full) - 1
        pos = start
        while pos < last:
            stop = min(last, (pos // PREFIX_BLOCK + 1) * PREFIX_BLOCK)
            self._stock_eval(full[pos - start : stop - start])
            pos = stop
        self._stock_eval(full[-1:])
        self.canonical = last

    def load_state(self, state: Any) -> None:
        self._stock_load_state(state)
        self.canonical = int(getattr(state, "metallmix_canonical", 0))


def _prompt_cache(prefix: _CanonicalPrefix, capacity: int, base: type) -> Any:
    """llama.cpp's RAM prompt cache, remembering how much of each saved state is canonical."""

    class PromptCache(base):
        def __setitem__(self, key: Any, value: Any) -> None:
            value.metallmix_canonical = prefix.canonical
            super().__setitem__(key, value)

    return PromptCache(capacity_bytes=capacity)


def _lean_states(llama: Any, prefix: _CanonicalPrefix) -> None:
    """Saved states without the logits matrix: llama-cpp-python copies its whole
    ``n_batch x n_vocab`` score array (311 MB for Qwen) into every saved state although
    sampling reads logits from the context; with ``logits_all`` off nothing reads it back."""
    import numpy as np
    from llama_cpp.llama import LlamaState

    stock_save = llama.save_state

    def save_state() -> Any:
        full = stock_save.__func__
        scores = llama.scores
        llama.scores = np.zeros((0, scores.shape[1]), dtype=scores.dtype)
        try:
            state = full(llama)
        finally:
            llama.scores = scores
        return state

    def load_state(state: Any) -> None:
        if isinstance(state, LlamaState) and state.scores.shape[0] == 0:
            _set_state(llama, state.input_ids, int(state.n_tokens), state.llama_state)
            prefix.canonical = int(getattr(state, "metallmix_canonical", 0))
            return
        prefix.load_state(state)

    setattr(llama, "save_state", save_state)  # noqa: B010
    setattr(llama, "load_state", load_state)  # noqa: B010


def _set_state(llama: Any, input_ids: Any, n_tokens: int, data: bytes) -> None:
    """Put a saved KV state (and its tokens) into the context."""
    import ctypes

    import llama_cpp

    size = len(data)
    buffer = (ctypes.c_uint8 * size).from_buffer_copy(data)
    if llama_cpp.llama_state_set_data(llama._ctx.ctx, buffer, size) != size:
        raise MetaLLMiXError("llama.cpp refused a saved prompt state; delete the state cache")
    llama.input_ids[:n_tokens] = input_ids[:n_tokens]
    llama.input_ids[n_tokens:] = -1  # no stale tokens may look like a cached prefix
    llama.n_tokens = n_tokens
    llama._requires_eval = True


def _get_state(llama: Any) -> bytes:
    import ctypes

    import llama_cpp

    ctx = llama._ctx.ctx
    size = llama_cpp.llama_state_get_size(ctx)
    buffer = (ctypes.c_uint8 * int(size))()
    written = llama_cpp.llama_state_get_data(ctx, buffer, size)
    return bytes(buffer)[: int(written)]


def _chat_formatter(llama: Any) -> Any:
    """The chat template llama-cpp-python formats prompts with, to find where the fixed
    system prompt ends in tokens (None when the GGUF carries no template)."""
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    eos = llama._model.token_get_text(eos_id) if eos_id != -1 else ""
    bos = llama._model.token_get_text(bos_id) if bos_id != -1 else ""
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)


class _FixedPrefixes:
    """The KV state of each fixed system prompt, computed once and kept on disk.

    A recommendation from the shell starts a new process, so llama.cpp's RAM prompt cache
    is empty every time and the system prompt (rules and a worked example, ~700 tokens)
    would be re-evaluated. Its state is instead saved under
    ``$METALLMIX_HOME/cache/llm/state/`` (keyed by the model's sha256, the exact tokens and
    the llama.cpp version) the first time and loaded (milliseconds) after that. The prefix
    is evaluated in the same aligned blocks as a cold prompt (see :class:`_CanonicalPrefix`)
    and cut at a block boundary, so answers are the same with and without the saved state.
    llama.cpp's state reader is native code that trusts its input, so a file is loaded only
    when the folder's manifest holds its sha256 from when we wrote it and nobody but this
    user can write the file, the manifest or the folder (:func:`metallmix.atomic.read_recorded`);
    anything else is recomputed and overwritten.
    """

    def __init__(self, llm: LocalLLM) -> None:
        self._llm = llm
        self._ram: dict[str, bytes] = {}

    def _tokens(self, messages: list[dict[str, str]]) -> list[int]:
        llama = self._llm._llama
        result = self._llm._formatter(messages=messages)
        return list(
            llama.tokenize(
                result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
            )
        )

    def fixed(self, messages: list[dict[str, str]]) -> list[int]:
        """Tokens of the system message shared by every prompt that starts with it, cut at
        a block boundary (empty when there is no system message or template)."""
        if self._llm._formatter is None or len(messages) < 2 or messages[0]["role"] != "system":
            return []
        full = self._tokens(messages)
        alone = self._tokens(messages[:1])
        common = 0
        for a, b in zip(full, alone, strict=False):
            if a != b:
                break
            common += 1
        n = (min(common, len(full) - 1) // PREFIX_BLOCK) * PREFIX_BLOCK
        return full[:n]

    def path(self, tokens: list[int]) -> Path:
        import hashlib

        import llama_cpp

        from metallmix import config

        digest = hashlib.sha256(
            f"{self._llm.sha256}|{self._llm.n_ctx}|{PREFIX_BLOCK}|{llama_cpp.__version__}|"
            f"{','.join(map(str, tokens))}".encode()
        ).hexdigest()[:32]
        return config.cache_dir() / "llm" / "state" / f"{digest}.bin"

    def restore(self, messages: list[dict[str, str]]) -> tuple[str, int]:
        """Make the context start with the fixed prefix's KV; returns where it came from."""
        tokens = self.fixed(messages)
        if not tokens:
            return "none", 0
        llama, prefix = self._llm._llama, self._llm._prefix
        n = len(tokens)
        if (
            llama.n_tokens >= n
            and prefix.canonical >= n
            and [int(t) for t in llama.input_ids[:n]] == tokens
        ):
            return "context", n
        path = self.path(tokens)
        source = "ram"
        data = self._ram.get(path.name)
        if data is None:
            source = "disk"
            # Only a file we wrote, unchanged since (its sha256 in our manifest, nobody else
            # able to write it): llama.cpp's state reader is native code and trusts its input.
            data, refused = read_recorded(path)
            if refused is not None and path.exists():
                logging.getLogger(__name__).warning(
                    "saved prompt state not used (%s); recomputing it", refused
                )
        if data is not None:
            import numpy as np

            try:
                _set_state(llama, np.asarray(tokens, dtype=np.intc), n, data)
                prefix.canonical = n
                self._ram[path.name] = data
                return source, n
            except MetaLLMiXError:
                path.unlink(missing_ok=True)
        llama.reset()
        llama.input_ids[:] = -1  # no stale tokens may look like a cached prefix
        for start in range(0, n, PREFIX_BLOCK):  # the blocks a cold prompt is evaluated in
            prefix._stock_eval(tokens[start : start + PREFIX_BLOCK])
        prefix.canonical = n
        data = _get_state(llama)
        self._ram[path.name] = data
        _write_atomic(path, data)
        return "computed", n


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with its sha256 in the folder's manifest (see
    :func:`metallmix.atomic.read_recorded`); a read-only cache only costs the saving, never
    the answer."""
    with contextlib.suppress(OSError):
        write_recorded(path, data)


class _GreedyGrammarSampler:
    """Greedy decoding under a grammar, checking the grammar on the best token first.

    llama-cpp-python's chain runs the grammar over the whole vocabulary (152k tokens for
    Qwen) at every step, about 30 ms a token here. Greedy decoding only needs to know whether
    the most likely token is allowed; only when it is not is the grammar applied to the whole
    vocabulary. The chosen token is the same as the stock chain's (penalties, grammar,
    greedy), so answers do not change; a test compares the two on real models.
    """

    def __init__(self, llama: Any, grammar: Any, penalty_last_n: int, repeat: float) -> None:
        import llama_cpp
        import numpy as np

        self._lib = llama_cpp
        self._n_vocab = llama.n_vocab()
        self._penalties = llama_cpp.llama_sampler_init_penalties(
            self._n_vocab, penalty_last_n, repeat, 0.0, 0.0
        )
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            llama_cpp.llama_sampler_free(self._penalties)
            raise MetaLLMiXError("llama.cpp rejected the JSON grammar built from the schema")
        self._buffer = (llama_cpp.llama_token_data * self._n_vocab)()
        self._view = np.frombuffer(
            self._buffer,
            dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]),
        )
        self._ids = np.arange(self._n_vocab, dtype=np.int32)
        self._one = (llama_cpp.llama_token_data * 1)()

    def _array(self, data: Any, size: int) -> Any:
        import ctypes

        lib = self._lib
        return lib.llama_token_data_array(
            data=ctypes.cast(data, lib.llama_token_data_p), size=size, selected=-1, sorted=False
        )

    def sample(self, ctx: Any, idx: int = -1) -> int:
        import ctypes

        import numpy as np

        lib = self._lib
        logits = np.ctypeslib.as_array(
            lib.llama_get_logits_ith(ctx.ctx, idx), shape=(self._n_vocab,)
        )
        view = self._view
        view["id"] = self._ids
        view["logit"] = logits
        view["p"] = 0.0
        everything = self._array(self._buffer, self._n_vocab)
        lib.llama_sampler_apply(self._penalties, ctypes.byref(everything))
        best = int(np.argmax(view["logit"]))
        self._one[0] = lib.llama_token_data(int(view["id"][best]), float(view["logit"][best]), 0.0)
        single = self._array(self._one, 1)
        lib.llama_sampler_apply(self._grammar, ctypes.byref(single))
        if not np.isfinite(self._one[0].logit):  # not allowed here: constrain everything
            lib.llama_sampler_apply(self._grammar, ctypes.byref(everything))
            best = int(np.argmax(view["logit"]))
        token = int(view["id"][best])
        lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._penalties, token)
        return token

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._grammar, token)
        self._lib.llama_sampler_accept(self._penalties, token)

    def reset(self) -> None:
        self._lib.llama_sampler_reset(self._grammar)
        self._lib.llama_sampler_reset(self._penalties)

    def close(self) -> None:
        for attr in ("_grammar", "_penalties"):
            sampler = getattr(self, attr, None)
            if sampler:
                self._lib.llama_sampler_free(sampler)
                setattr(self, attr, None)

    def __del__(self) -> None:
        self.close()


def _install_fast_grammar(llm: LocalLLM) -> None:
    """Route greedy grammar-constrained sampling through :class:`_GreedyGrammarSampler`."""
    llama = llm._llama
    stock = llama._init_sampler

    def init_sampler(**kw: Any) -> Any:
        plain_greedy = (
            kw.get("grammar") is not None
            and kw.get("temp") == 0.0
            and kw.get("logits_processor") is None
            and not kw.get("frequency_penalty")
            and not kw.get("presence_penalty")
        )
        if llm.fast_grammar and plain_greedy:
            return _GreedyGrammarSampler(
                llama, kw["grammar"], llama.last_n_tokens_size, kw.get("repeat_penalty", 1.0)
            )
        return stock(**kw)

    setattr(llama, "_init_sampler", init_sampler)  # noqa: B010


_LOADED: dict[tuple[str, int | None, int, bool], ChatLLM] = {}
_LOADED_LOCK = threading.Lock()


def isolation_setting() -> bool:
    """``METALLMIX_LLM_ISOLATION``: ``process`` (default) runs llama.cpp in a child process;
    ``none`` runs it in this process (faster to debug, but a native crash takes it down)."""
    value = os.environ.get("METALLMIX_LLM_ISOLATION", "process").strip().lower()
    if value not in {"process", "none"}:
        raise MetaLLMiXError(f"METALLMIX_LLM_ISOLATION={value!r} is not 'process' or 'none'")
    return value == "process"


def load_llm(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    threads: int | None = None,
    n_ctx: int = 4096,
    seed: int = 0,
    allow_download: bool | None = None,
    isolated: bool | None = None,
) -> Any:
    """A loaded, verified local LLM; reused within the process per (file, threads, n_ctx).

    ``threads`` None means ``METALLMIX_LLM_THREADS``, else "auto": each call uses as many
    threads (at most 2) as there are idle cores, because llama.cpp slows down by an order of
    magnitude when its threads compete with other processes for the cores.

    ``name_or_path``: a registry name (``qwen2.5-coder-1.5b``), a profile (``default``,
    ``fast``), a ``.gguf`` path, or None for ``METALLMIX_LLM`` / the bundled default.

    ``isolated`` (default: ``METALLMIX_LLM_ISOLATION``, i.e. yes) runs the model in a child
    process (:class:`~metallmix.agents.runtime.isolated.IsolatedLLM`) with bounded waits;
    ``False`` gives the in-process :class:`LocalLLM`. The GGUF header is checked first
    either way, so a corrupt file fails in seconds with a specific error.
    """
    from metallmix.agents.runtime.weights import resolve_weights

    weights: ResolvedWeights = resolve_weights(name_or_path, allow_download=allow_download)
    isolate = isolation_setting() if isolated is None else isolated
    setting = threads or thread_setting()
    key = (str(weights.path.resolve()), setting, n_ctx, isolate)
    with _LOADED_LOCK:
        llm = _LOADED.get(key)
        if llm is None:
            if isolate:
                from metallmix.agents.runtime.isolated import IsolatedLLM

                kwargs = {"name": weights.name, "sha256": weights.sha256, "threads": setting}
                llm = IsolatedLLM(
                    weights.path,
                    name=weights.name,
                    sha256=weights.sha256,
                    engine_kwargs={
                        "path": str(weights.path),
                        **kwargs,
                        "n_ctx": n_ctx,
                        "seed": seed,
                    },
                )
            else:
                llm = LocalLLM(
                    weights.path,
                    name=weights.name,
                    sha256=weights.sha256,
                    threads=setting,
                    n_ctx=n_ctx,
                    seed=seed,
                )
            _LOADED[key] = llm
    return llm


def unload_all() -> None:
    """Drop the process-wide model cache (frees memory, ends LLM child processes; used by
    benchmarks for cold loads)."""
    with _LOADED_LOCK:
        for llm in _LOADED.values():
            if isinstance(llm, LocalLLM):
                llm._llama.close()
            else:
                close = getattr(llm, "close", None)
                if close is not None:
                    close()
        _LOADED.clear()
