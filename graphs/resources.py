"""The LLM and KB a run uses: the one place a name, a path or a live object becomes one.

The API, ``recommend(verify=K)``, the graph's nodes and the benchmarks all resolve their
``llm=`` / ``kb=`` arguments here, so "an object passed in wins over a name; a name is
loaded or opened" means the same everywhere. Loading a GGUF takes seconds, so the API starts
it on a worker thread (:func:`load_llm_in_background`) while features and shortlist run, and
the node that first needs the model waits for it (:func:`resolve_llm`).
One recommendation reads its KB once (:func:`run_kb`, in the ``retrieve`` node): the later
nodes find that snapshot again by its content hash, which the state carries.
"""

from __future__ import annotations

import os
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
from metallmix.graphs.configuration import Configuration
from metallmix.progress import waiting
from metallmix.tools.kb.regime import REGIME_SPACE, Regime
from metallmix.tools.kb.regime_view import regime_kb, resolve_regime
from metallmix.tools.kb.snapshot import KBSnapshot
from metallmix.tools.kb.store import KnowledgeBase, open_kb
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig, fit_or_load
from metallmix.tools.meta.search_space import SPACES, SearchSpace, get_space

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


def get_llm(cfg: Configuration) -> ChatLLM:
    """The graph run's model: the live object (or background load) the API passed, else
    the configured name."""
    return resolve_llm(cfg.llm_instance if cfg.llm_instance is not None else cfg.llm, cfg.seed)


def get_kb(cfg: Configuration) -> KnowledgeBase:
    """The graph run's KB, opened read-only when only named."""
    return resolve_kb(cfg.kb_instance if cfg.kb_instance is not None else cfg.kb)


def regime_kb_for(cfg: Configuration, kb: KnowledgeBase) -> tuple[Regime, KnowledgeBase]:
    """The compute regime of this run (see :func:`resolve_regime`) and its part of ``kb``."""
    records = list(kb.iter_records())
    regime = resolve_regime(kb, cfg.compute, cfg.space, records)
    return regime, regime_kb(kb, regime, records)


def space_for(
    cfg: Configuration, regime: Regime | None = None, models: Iterable[str] = ()
) -> SearchSpace | None:
    """The one rule for the search space a run proposes from and is judged against: the
    configured space, else the compute regime's, else the shipped space most of ``models``
    belong to (None when no shipped space holds any of them)."""
    if cfg.space:
        return get_space(cfg.space)
    if regime is not None:
        return get_space(REGIME_SPACE[regime])
    counts = Counter(models)
    best: SearchSpace | None = None
    best_count = 0
    for space in SPACES.values():
        count = sum(n for m, n in counts.items() if m in space.models)
        if count > best_count:
            best, best_count = space, count
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


_KEEP = 4  # snapshots (and meta-learners) kept per process: a few KBs or regimes in turn
_RUN_KBS: OrderedDict[str, RunKB] = OrderedDict()
# The last whole read of each store (location -> snapshot): what the answer saw, for callers
# after the graph (the KB-change notice) that would otherwise read the store a second time.
_WHOLE: OrderedDict[str, KBSnapshot] = OrderedDict()
_LEARNERS: OrderedDict[tuple[str, int], MetaLearner] = OrderedDict()


def run_kb(cfg: Configuration, kb_hash: str | None = None, *, whole: bool = False) -> RunKB:
    """The snapshot with content hash ``kb_hash`` when this process holds it, else the
    configured KB read now (once), restricted to the run's compute regime (``whole``: not
    restricted, for a shortlist scored on the whole KB)."""
    if kb_hash is not None and kb_hash in _RUN_KBS:
        _RUN_KBS.move_to_end(kb_hash)
        return _RUN_KBS[kb_hash]
    kb = get_kb(cfg)
    everything = KBSnapshot.of(kb)  # the one read of the store
    _WHOLE[everything.location] = everything
    _WHOLE.move_to_end(everything.location)
    while len(_WHOLE) > _KEEP:
        _WHOLE.popitem(last=False)
    require_runs(everything)
    regime = resolve_regime(everything, cfg.compute, cfg.space, everything.runs)
    view = everything if whole else regime_kb(everything, regime, everything.runs)
    snapshot = (
        everything
        if view is everything
        else KBSnapshot(view.iter_records(), view.location, view.layers())
    )
    found = RunKB(regime, snapshot)
    _RUN_KBS[found.kb_hash] = found
    while len(_RUN_KBS) > _KEEP:
        _RUN_KBS.popitem(last=False)
    return found


def last_read(location: str) -> KBSnapshot | None:
    """The store at ``location`` as this process's last recommendation read it, if any."""
    return _WHOLE.get(location)


def learner_for(run: RunKB, seed: int) -> MetaLearner:
    """The meta-learner of ``run``'s snapshot (fitted or loaded once per process)."""
    key = (run.kb_hash, seed)
    if key not in _LEARNERS:
        snapshot = run.snapshot
        _LEARNERS[key] = fit_or_load(
            snapshot, MetaLearnerConfig(seed=seed), records=snapshot.runs, kb_hash=run.kb_hash
        )
        while len(_LEARNERS) > _KEEP:
            _LEARNERS.popitem(last=False)
    return _LEARNERS[key]
