"""The names a run record's ``source`` may take: derived from the registered importers.

A record says where it came from (``RunRecord.source``). That used to be a closed Literal in
``records.py``, so a new knowledge-base source meant editing the record type too. Now the
valid names are the ``own`` runs this package trains plus one name per importer in
``tools/kb/importers/`` (each module there registers its importer, see
``importers/__init__.py``); records validate against :func:`source_names`.

The importer modules are found by name, not imported here: an importer imports
``records.py``, which imports this module, so the discovery is deferred to the first
validation (plugin loading, the way entry points work) and this module imports nothing of
the knowledge base.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading

from metallmix.errors import ConfigError

OWN = "own"
IMPORTERS_PACKAGE = "metallmix.tools.kb.importers"

_SOURCES: dict[str, str] = {
    OWN: "runs this installation trained (metallmix validate, kb build, recommend --verify)"
}
_discovered = False
_lock = threading.RLock()


def register_source(name: str, description: str) -> None:
    """Make ``name`` a valid ``RunRecord.source``; registering the same name twice with
    another description is refused (two importers would share their records)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"source name {name!r}: letters, digits, '-' and '_' only")
    known = _SOURCES.get(name)
    if known is not None and known != description:
        raise ConfigError(f"source {name!r} is already registered ({known})")
    _SOURCES[name] = description


def unregister_source(name: str) -> None:
    """Remove a registered source (tests that register a toy importer clean up with this)."""
    if name != OWN:
        _SOURCES.pop(name, None)


def discover() -> None:
    """Import every module of the importers package once (each registers its importer).

    Under a lock, and marked done only when all are imported: a thread validating a record
    meanwhile waits instead of seeing half the names. Re-entry from the importing thread
    (an importer module that validates a record at import) finds the modules in progress.
    """
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        package = importlib.import_module(IMPORTERS_PACKAGE)
        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not module.name.startswith("_"):
                importlib.import_module(f"{IMPORTERS_PACKAGE}.{module.name}")
        _discovered = True


def source_names() -> tuple[str, ...]:
    """Every valid source name: ``own``, then the importers' in registration order."""
    discover()
    return tuple(_SOURCES)


def check_source(name: str) -> str:
    """``name`` when it is registered, else a ValueError naming the valid ones."""
    if name not in _SOURCES:
        discover()
    if name not in _SOURCES:
        raise ValueError(
            f"unknown source {name!r}: one of {', '.join(source_names())} (a new source is "
            "an importer module in tools/kb/importers/)"
        )
    return name
