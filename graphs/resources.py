"""The LLM and KB a run uses: the one place a name, a path or a live object becomes one.

The API, ``recommend(verify=K)``, the graph's nodes and the benchmarks all resolve their
``llm=`` / ``kb=`` arguments here, so "an object passed in wins over a name; a name is
loaded or opened" means the same everywhere. Loading a GGUF takes seconds, so the API starts
it on a worker thread (:func:`load_llm_in_background`) while features and shortlist run, and
the node that first needs the model waits for it (:func:`resolve_llm`).

:class:`RunResources` is what one graph run uses, handed to the nodes in the run's context
(:class:`~metallmix.graphs.configuration.Context`): the KB, read once (in the ``retrieve``
node) and hashed, its compute regime's view, the meta-learners fitted on it (a
:class:`Learners` a :class:`metallmix.Session` keeps across its answers) and the LLM handle.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from metallmix.agents.runtime import llm as runtime_llm
from metallmix.agents.runtime.llm import ChatLLM
from metallmix.agents.runtime.weights import resolve_weights
from metallmix.errors import KnowledgeBaseError
from metallmix.progress import waiting
from metallmix.tools.kb.regime import REGIME_SPACE, Regime
from metallmix.tools.kb.regime_view import regime_kb, resolve_regime
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import KnowledgeBase, open_kb
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig, fit_or_load
from metallmix.tools.meta.search_space import SPACES, SearchSpace, get_space
from metallmix.tools.tracking import TracedRun

# What callers may pass as ``llm=``: a registry name, a profile ('fast', 'default'), a
# .gguf path, a loaded model, or None (METALLMIX_LLM or the bundled default).
LlmSpec: TypeAlias = str | os.PathLike[str] | ChatLLM | None
# What callers may pass as ``kb=``: a .sqlite path, an open store, or None (METALLMIX_KB
# or the workspace store layered over the shipped KB).
KbSpec: TypeAlias = str | os.PathLike[str] | KnowledgeBase | None


def resolve_llm(llm: LlmSpec | Future[ChatLLM], seed: int = 0) -> ChatLLM:
    """The model ``llm`` names, loaded now; a loaded model as it is; a Future (a background
    load) waited for, which is where its loading error is raised."""
    if isinstance(llm, Future):
        if llm.done():
            return llm.result()
        with waiting("waiting for the LLM to finish loading"):  # a cold load: seconds to minutes
            return llm.result()
    if llm is None or isinstance(llm, str | os.PathLike):
        with waiting(f"loading the LLM {llm or '(default)'}"):
            return runtime_llm.load_llm(llm, seed=seed)  # via the module: fakes patch it there
    return llm


_LOADER: ThreadPoolExecutor | None = None


def load_llm_in_background(llm: LlmSpec, seed: int = 0) -> ChatLLM | Future[ChatLLM]:
    """A loaded model as it is; a name or path loaded into llama.cpp on a worker thread
    (pass the Future on; :func:`resolve_llm` waits for it). A ``.gguf`` path the user names
    is checked at once (exists, GGUF header whole, hashed), before any other work, so a
    corrupt or foreign file fails in seconds with a specific error."""
    if llm is not None and not isinstance(llm, str | os.PathLike):
        return llm
    if llm is not None and (str(llm).endswith(".gguf") or Path(llm).expanduser().is_file()):
        resolve_weights(llm)  # the "not found" / header / hash errors, before the shortlist
    global _LOADER
    if _LOADER is None:
        _LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metallmix-llm")
    return _LOADER.submit(runtime_llm.load_llm, llm, seed=seed)


def resolve_kb(kb: KbSpec, *, read_only: bool = True) -> KnowledgeBase:
    """An open store as it is, else :func:`open_kb` on the path (or the default KB);
    ``read_only=False`` only for callers that add runs (validation, verification)."""
    if isinstance(kb, KnowledgeBase):
        return kb
    return open_kb(kb, read_only=read_only)


def space_for(
    space: str | None, regime: Regime | None = None, models: Iterable[str] = ()
) -> SearchSpace | None:
    """The one rule for the search space a run proposes from and is judged against: the
    named ``space``, else the compute regime's, else the shipped space most of ``models``
    belong to (None when no shipped space holds any of them)."""
    if space:
        return get_space(space)
    if regime is not None:
        return get_space(REGIME_SPACE[regime])
    counts = Counter(models)
    best: SearchSpace | None = None
    best_count = 0
    for candidate in SPACES.values():
        count = sum(n for m, n in counts.items() if m in candidate.models)
        if count > best_count:
            best, best_count = candidate, count
    return best


def require_runs(kb: KnowledgeBase) -> None:
    if not kb.run_ids():
        raise KnowledgeBaseError(
            f"the knowledge base {kb.location} is empty: nothing to learn from. Import runs "
            "(`metallmix kb import-quicktune PATH`, `metallmix kb import FILE`) or point "
            "METALLMIX_KB / --kb at a filled store"
        )


@dataclass(frozen=True)
class RunKB:
    """The KB one recommendation reads: its compute regime's runs, read and hashed once."""

    regime: Regime
    snapshot: KBSnapshot

    @property
    def kb_hash(self) -> str:
        return self.snapshot.content_hash()


class Learners:
    """Fitted meta-learners by (content hash, seed), the few most recent: a session keeps
    one across its answers, so a KB whose content did not change is not loaded again."""

    KEEP = 4  # a few KBs or regimes in turn

    def __init__(self) -> None:
        self._fitted: OrderedDict[tuple[str, int], MetaLearner] = OrderedDict()
        self._lock = threading.Lock()  # served runs may share one from worker threads

    def get(self, run: RunKB, seed: int) -> MetaLearner:
        """The meta-learner of ``run``'s snapshot, fitted or loaded (disk cache) once."""
        key = (run.kb_hash, seed)
        with self._lock:
            if key in self._fitted:
                self._fitted.move_to_end(key)
                return self._fitted[key]
        snapshot = run.snapshot
        learner = fit_or_load(
            snapshot, MetaLearnerConfig(seed=seed), records=snapshot.runs, kb_hash=run.kb_hash
        )
        with self._lock:
            self._fitted[key] = learner
            while len(self._fitted) > self.KEEP:
                self._fitted.popitem(last=False)
        return learner


class RunResources:
    """The live objects of one graph run, resolved once and shared by its nodes.

    ``kb`` is read on the first :meth:`read` (the ``retrieve`` node; a snapshot given here is
    not read again), so every node sees one content; ``llm`` is a loaded model, a background
    load (:func:`load_llm_in_background`) or a name loaded when a node first needs it.
    ``trace`` is the MLflow run and root span the caller opened (each node's span is a
    child of that root; the ``record`` node logs into that run).
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        llm: LlmSpec | Future[ChatLLM],
        *,
        learners: Learners | None = None,
        trace: TracedRun | None = None,
    ) -> None:
        self.kb = kb
        self.learners = learners or Learners()
        self.trace = trace
        self._llm = llm
        self._snapshot: KBSnapshot | None = kb if isinstance(kb, KBSnapshot) else None
        self._views: dict[tuple[str | None, str | None, bool], RunKB] = {}
        self._lock = threading.Lock()

    @classmethod
    def named(cls, kb: str | None, llm: str | None) -> RunResources:
        """From plain names (LangGraph Studio's form): the KB opened read-only, the LLM
        loaded when a node first needs it."""
        return cls(resolve_kb(kb), llm)

    @property
    def mlflow_run_id(self) -> str | None:
        """The run the caller opened (the ``record`` node logs into it), if any."""
        return self.trace.run_id if self.trace is not None else None

    @property
    def snapshot(self) -> KBSnapshot | None:
        """The KB as this run read it; None before the first read."""
        return self._snapshot

    def read(self) -> KBSnapshot:
        """The whole KB, read and checked on the first call only."""
        with self._lock:
            if self._snapshot is None:
                self._snapshot = KBSnapshot.of(self.kb)  # the one read of the store
            snapshot = self._snapshot
        require_runs(snapshot)
        return snapshot

    def run_kb(self, compute: str | None, space: str | None, *, whole: bool = False) -> RunKB:
        """The run's compute regime (:func:`resolve_regime`) and that regime's part of the KB
        (``whole``: not restricted, for a shortlist scored on the whole KB)."""
        everything = self.read()
        key = (compute, space, whole)
        if key not in self._views:
            regime = resolve_regime(everything, compute, space, everything.runs)
            view = everything if whole else regime_kb(everything, regime, everything.runs)
            snapshot = (
                everything
                if view is everything
                else KBSnapshot(view.iter_records(), view.location, view.layers())
            )
            self._views[key] = RunKB(regime, snapshot)
        return self._views[key]

    def learner(self, run: RunKB, seed: int) -> MetaLearner:
        """The meta-learner of ``run``'s snapshot."""
        return self.learners.get(run, seed)

    def llm(self, seed: int = 0) -> ChatLLM:
        """The run's model, waited for or loaded on first use (its loading error raised
        here, in the node that needs it)."""
        loaded = resolve_llm(self._llm, seed)
        self._llm = loaded
        return loaded
