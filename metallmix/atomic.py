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
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(
    path: str | Path, *, suffix: str = ".tmp", mode: int | None = None
) -> Iterator[Path]:
    """A fresh temp file beside ``path`` to write; renamed onto ``path`` if the block succeeds.

    ``suffix`` keeps the extension that writers infer a format from (``.png``, ``.npz``).
    The file gets the permissions a plain ``open`` would give (not ``mkstemp``'s 0600),
    or ``mode`` when given. On any error, the temp file is removed and ``path`` is left as
    it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
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


def write_bytes(path: str | Path, data: bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    path = Path(path)
    with atomic_path(path, mode=mode) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return path


def write_text(
    path: str | Path, text: str, *, encoding: str = "utf-8", mode: int | None = None
) -> Path:
    """Write ``text`` to ``path`` atomically, flushed to disk before the rename."""
    return write_bytes(path, text.encode(encoding), mode=mode)


# --- files we read back only if we wrote them ---------------------------------------------
#
# A cache file read back into native code (llama.cpp's saved prompt state) must not be one
# another process planted. Each such file's sha256 is kept in ``manifest.json`` in its
# folder, written atomically by :func:`write_recorded` only; :func:`read_recorded` returns
# the bytes only when the manifest vouches for them and the file, the manifest and the
# folder are owned by this user and writable by nobody else (so another account, or a
# shared folder, cannot plant or swap either). A process running as this same user is
# inside the trust boundary anyway: it could as well edit the installed code.

MANIFEST = "manifest.json"


def untrusted(path: Path) -> str | None:
    """Why ``path`` could have been written by someone else (None: it could not)."""
    try:
        st = path.lstat()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if st.st_uid != os.geteuid():
        return f"{path} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _manifest(folder: Path) -> dict[str, str]:
    import json

    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def write_recorded(path: str | Path, data: bytes) -> Path:
    """Write ``data`` (mode 0600; a new folder 0700) and record its sha256 in the folder's
    manifest, under a lock so that two processes saving at once both keep their entry."""
    import fcntl
    import json

    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_bytes(path, data, mode=0o600)
    with open(folder / f".{MANIFEST}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _manifest(folder)
        entries[path.name] = _sha256(data)
        write_bytes(folder / MANIFEST, json.dumps(entries, indent=1).encode(), mode=0o600)
    return path


def read_recorded(path: str | Path) -> tuple[bytes | None, str | None]:
    """``(data, None)`` when :func:`write_recorded` wrote ``path`` and nobody changed it
    since; ``(None, why)`` otherwise (missing, planted, swapped, changed). Nothing but the
    bytes and the manifest's JSON is read, so a refused file runs nothing."""
    path = Path(path)
    if not path.exists():
        return None, f"{path} does not exist"
    folder = path.parent
    for item in (folder, folder / MANIFEST, path):
        reason = untrusted(item)
        if reason is not None:
            return None, reason
    expected = _manifest(folder).get(path.name)
    if expected is None:
        return None, f"{path} is not in {folder / MANIFEST} (not written by MetaLLMiX)"
    data = path.read_bytes()
    if _sha256(data) != expected:
        return None, f"{path} does not match the sha256 recorded when it was written"
    return data, None


__all__ = [
    "atomic_dir",
    "atomic_path",
    "read_recorded",
    "untrusted",
    "write_bytes",
    "write_recorded",
    "write_text",
]
