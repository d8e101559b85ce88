"""One compute regime's part of a knowledge base (see :mod:`metallmix.tools.kb.regime`).

Apart from the regime rules themselves so that the store can count runs per regime without
importing the views built on top of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import cast

from metallmix.errors import KnowledgeBaseError
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.regime import (
    REGIME_DESCRIPTION,
    REGIMES,
    Regime,
    check_regime,
    counts_by_regime,
    default_compute,
    regime_of,
    regime_of_space,
)
from metallmix.tools.kb.store import AddResult, KnowledgeBase


class RegimeView(KnowledgeBase):
    """The runs of one regime of another KB, read-only.

    The records are read once, when the view is made: a recommendation reads the KB several
    times and must see one content (the meta-learner and the retrieval index are cached by
    that content's hash).
    """

    def __init__(
        self, kb: KnowledgeBase, regime: Regime, records: Iterable[RunRecord] | None = None
    ) -> None:
        self.kb = kb
        self.regime = regime
        source = kb.iter_records() if records is None else records
        self._records = [r for r in source if regime_of(r) == regime]

    @property
    def location(self) -> str:
        return f"{self.kb.location} [{self.regime} runs]"

    def layers(self) -> list[str]:
        return self.kb.layers()

    def add(self, records: Iterable[RunRecord]) -> AddResult:
        raise KnowledgeBaseError(
            f"{self.location} is a read-only view of one compute regime; add runs to "
            f"{self.kb.location} itself"
        )

    def iter_records(self) -> Iterator[RunRecord]:
        return iter(self._records)

    def run_ids(self) -> set[str]:
        return {r.run_id for r in self._records}


def resolve_regime(
    kb: KnowledgeBase,
    compute: str | None = None,
    space: str | None = None,
    records: Iterable[RunRecord] | None = None,
) -> Regime:
    """The regime a recommendation uses: ``compute`` if given, else the regime of the named
    ``space``, else this machine's (:func:`default_compute`).

    An explicit choice the KB has no run for is an error. The machine's default falls back
    to the regime the KB does hold (a KB of Quick-Tune runs still answers on a laptop).
    """
    counts = counts_by_regime(kb.iter_records() if records is None else records)
    explicit = compute is not None or (space is not None and regime_of_space(space) is not None)
    if compute is not None:
        regime = check_regime(compute)
    elif space is not None and regime_of_space(space) is not None:
        regime = cast(Regime, regime_of_space(space))
    else:
        regime = default_compute()
    if counts[regime] == 0:
        held = [r for r in REGIMES if counts[r]]
        if explicit or not held:
            have = ", ".join(f"{counts[r]} {r}" for r in held) or "no runs"
            other = f"; pass --compute {held[0]}" if held else ""
            raise KnowledgeBaseError(
                f"the knowledge base {kb.location} holds no run of the {regime} regime "
                f"({REGIME_DESCRIPTION[regime]}); it has {have}{other}, or import {regime} "
                "runs (`metallmix kb import-quicktune` for gpu, `metallmix kb build` for cpu)"
            )
        regime = held[0]
    return regime


def regime_kb(
    kb: KnowledgeBase, regime: Regime, records: Iterable[RunRecord] | None = None
) -> KnowledgeBase:
    """``kb`` itself when all its runs are of ``regime``, else a :class:`RegimeView`
    (``records``: the KB's records when already read)."""
    every = list(kb.iter_records() if records is None else records)
    view = RegimeView(kb, regime, every)
    return kb if len(view.run_ids()) == len(every) else view
