"""The LLM and KB a graph run uses, resolved from its configuration and cached per process.

Loading a GGUF takes seconds and opening the KB reads every record, so a warm second
recommendation must not redo either; objects passed in by the Python API win over names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future

from metallmix.agents.runtime.llm import ChatLLM
from metallmix.graphs.configuration import Configuration
from metallmix.tools.kb.regime import REGIME_SPACE, Regime
from metallmix.tools.kb.regime_view import regime_kb, resolve_regime
from metallmix.tools.kb.store import KnowledgeBase, open_kb
from metallmix.tools.meta.search_space import SPACES, SearchSpace, get_space


def get_llm(cfg: Configuration) -> ChatLLM:
    """The configured model; a Future (the API loads the model in the background while
    features and shortlist run) is waited for here, where the LLM is first needed."""
    if cfg.llm_instance is not None:
        if isinstance(cfg.llm_instance, Future):
            return cfg.llm_instance.result()
        return cfg.llm_instance
    from metallmix.agents.runtime.llm import load_llm

    return load_llm(cfg.llm, seed=cfg.seed)


def get_kb(cfg: Configuration) -> KnowledgeBase:
    if cfg.kb_instance is not None:
        return cfg.kb_instance
    return open_kb(cfg.kb, read_only=True)


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
