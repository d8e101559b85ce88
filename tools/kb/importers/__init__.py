"""Knowledge-base importers: one module per source, found by name.

An importer turns some outside history of training runs into :class:`RunRecord` rows whose
``source`` is the importer's :attr:`Importer.name`. Each module of this package defines one
:class:`Importer` subclass decorated with :func:`register_importer`; the module is found
by :func:`metallmix.tools.kb.sources.discover`, which also makes its name a valid record
source. Nothing else needs editing to add a source: the CLI's ``kb import-from NAME
LOCATION`` and :func:`run_import` (the path every ``kb import-*`` verb takes) reach it
through :func:`get_importer`. See docs/architecture.md, "How to add a KB importer".

Built in: ``quicktune`` (the public Quick-Tune meta-dataset), ``mlflow`` (an MLflow
tracking store), ``csv`` (a hand-made table in the export's layout); ``own`` runs come from
this package's trainer and have no importer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import ClassVar

from metallmix.errors import ConfigError
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.sources import discover, register_source, unregister_source
from metallmix.tools.kb.store import AddResult, KnowledgeBase

# progress(description, total) -> a context yielding advance(n): the CLI passes its bar
Progress = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]


@dataclass
class Imported:
    """What an importer read: the records and what its summary reports."""

    records: list[RunRecord]
    label: str  # names what was imported in the summary line, e.g. "Quick-Tune extended"
    details: dict[str, object] = field(default_factory=dict)  # extra summary fields
    notes: list[str] = field(default_factory=list)  # lines for the user (runs skipped, ...)


@dataclass(frozen=True)
class ImportResult:
    """What :func:`run_import` did: the KB's answer, what was read, and where it went."""

    added: AddResult
    imported: Imported
    kb: str  # the store's location


class Importer(ABC):
    """One source of past runs. Subclasses set :attr:`name` and :attr:`description` and
    implement :meth:`read`; options come through the constructor (keyword arguments, each
    settable as ``--option key=value`` from ``kb import-from``)."""

    name: ClassVar[str]  # the source its records carry
    description: ClassVar[str]  # one line: what the location is

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> Importer:
        """The importer configured from text options (``kb import-from --option k=v``)."""
        try:
            return cls(**options)
        except TypeError as exc:
            raise ConfigError(f"importer {cls.name!r}: {exc}") from exc

    def check(self, location: str) -> None:
        """Fail fast, before the KB is opened: a mistyped location must not leave an empty
        KB file behind. Default: nothing to check."""
        return None

    def reading(self, location: str) -> tuple[str, int | None] | None:
        """Description and total of the read's progress bar (None: the read is quick)."""
        return None

    @abstractmethod
    def read(self, location: str, on_record: Callable[[int], None]) -> Imported:
        """Every record at ``location`` (pure: writes nothing); ``on_record(n)`` ticks."""


_IMPORTERS: dict[str, type[Importer]] = {}


def register_importer(cls: type[Importer]) -> type[Importer]:
    """Class decorator: make ``cls`` the importer of source ``cls.name``."""
    if cls.name in _IMPORTERS and _IMPORTERS[cls.name] is not cls:
        raise ConfigError(f"an importer for source {cls.name!r} is already registered")
    register_source(cls.name, cls.description)
    _IMPORTERS[cls.name] = cls
    return cls


def unregister_importer(name: str) -> None:
    """Remove an importer and its source name (tests of a toy importer clean up with this)."""
    _IMPORTERS.pop(name, None)
    unregister_source(name)


def get_importer(name: str) -> type[Importer]:
    """The importer class of source ``name``."""
    discover()
    if name not in _IMPORTERS:
        raise ConfigError(
            f"no importer for source {name!r}: one of {', '.join(_IMPORTERS) or '(none)'}"
        )
    return _IMPORTERS[name]


def _no_progress(
    description: str, total: int | None
) -> AbstractContextManager[Callable[[int], None]]:
    from contextlib import contextmanager

    @contextmanager
    def ticks() -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    return ticks()


def run_import(
    importer: Importer,
    location: str,
    open_store: Callable[[], KnowledgeBase],
    progress: Progress = _no_progress,
    notify: Callable[[str], None] = lambda line: None,
) -> ImportResult:
    """Check, open the KB, read, add in one transaction: the path of every ``kb import*``.

    ``open_store`` is called after :meth:`Importer.check` (a bad location creates no KB)
    and before the read (a locked or read-only KB fails before a long read).
    """
    importer.check(location)
    store = open_store()
    bar = importer.reading(location)
    if bar is None:
        imported = importer.read(location, lambda n: None)
    else:
        with progress(*bar) as advance:
            imported = importer.read(location, advance)
    for line in imported.notes:
        notify(line)
    count = len(imported.records)
    with progress(f"writing {count} runs to {store.location}", count) as advance:
        added = store.add(imported.records)  # one transaction: a failure leaves the KB as it was
        advance(count)
    return ImportResult(added, imported, store.location)
