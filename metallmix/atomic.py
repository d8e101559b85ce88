"""Write files and folders so that a reader never sees half of one: temp beside it, then rename.

State files, KB exports, dataset cards, benchmark results, model caches and saved indexes
are read by other processes (a resumed run, the API, a second build) while they may be
rewritten. Everything is written under a temporary name in the target's own folder (same
file system, so the rename is atomic) and renamed onto the target only once complete; a
crash or an error leaves the previous version in place and no temp file behind.

Part of the bottom layer (beside :mod:`metallmix.errors` and :mod:`metallmix.config`):
it imports nothing from the project, so every layer may use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temp file beside ``path`` to write; renamed onto ``path`` if the block succeeds.

    ``suffix`` keeps the extension that writers infer a format from (``.png``, ``.npz``).
    The file gets the permissions a plain ``open`` would give (not ``mkstemp``'s 0600).
    On any error, the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A fresh temp folder beside ``path`` to fill; it replaces ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, flushed to disk before the rename."""
    return write_bytes(path, text.encode(encoding))


__all__ = ["atomic_dir", "atomic_path", "write_bytes", "write_text"]
