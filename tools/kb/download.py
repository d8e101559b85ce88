"""Fetch and unpack the public Quick-Tune meta-dataset archive, for users who are online.

The archive (``qt_metadataset.zip``, linked from the Quick-Tune README) holds one folder per
version (``micro``, ``mini``, ``extended``) in the layout :mod:`.quicktune` reads. The
download streams to a temp file while hashing; the archive is unpacked into a temp folder
beside the destination and the version folder is moved into place with one rename, so an
interrupted download or extraction never leaves a half-written dataset behind. Upstream
publishes no checksum and none could be verified for this release, so the hash is an
explicit parameter (``--sha256``): verified when the caller gives it, always reported so
that it can be pinned, and the result says whether it was checked. Before anything is
unpacked the archive's entries are counted and their total size and expansion ratio capped,
so a small zip bomb cannot fill the disk before the layout check.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from metallmix import config
from metallmix.errors import ImportFormatError, KnowledgeBaseError
from metallmix.tools.kb.quicktune import QUICKTUNE_VERSIONS, TABLE, read_quicktune

# From the README of the Quick-Tune code release (github.com/rapanti/quicktune).
QUICKTUNE_ARCHIVE_URL = (
    "https://rewind.tf.uni-freiburg.de/index.php/s/oMxC5sfrkA53ESo/download/qt_metadataset.zip"
)
# Upstream publishes no checksum and we have not verified one, so none is pinned (never a
# guessed value): pass ``--sha256`` to check a download; pin here once one is verified.
QUICKTUNE_ARCHIVE_SHA256: str | None = None
# Unpacking limits: the real archive holds a few hundred CSV/JSON files of a few MB each.
MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 4 << 30  # 4 GiB unpacked
MAX_RATIO = 200  # unpacked / archive size; text compresses ~10x, a zip bomb ~1000x
CHUNK = 1 << 20
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DownloadResult:
    """Where the version folder landed and what was fetched."""

    path: Path
    version: str
    sha256: str | None
    bytes: int
    reused: bool


def default_dest() -> Path:
    return config.cache_dir() / "quicktune"


def _open(url: str) -> tuple[object, int | None]:
    """A readable stream for an http(s)/file URL or a local path, and its size if known."""
    local = Path(url).expanduser()
    if "://" not in url:
        if not local.is_file():
            raise KnowledgeBaseError(f"archive {local} does not exist")
        return local.open("rb"), local.stat().st_size
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise KnowledgeBaseError(
            f"cannot download {url}: {reason}. If this machine is offline, fetch the archive "
            "elsewhere and pass --url file:///path/to/qt_metadataset.zip (or a plain path), "
            "or unpack it and run `metallmix kb import-quicktune <folder>/<version>`"
        ) from exc
    length = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    return response, int(length) if length and length.isdigit() else None


def fetch(
    url: str,
    target: Path,
    sha256: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_size: Callable[[int | None], None] | None = None,
) -> tuple[str, int]:
    """Stream ``url`` into ``target`` (which the caller cleans up); returns (sha256, bytes)."""
    stream, size = _open(url)
    if on_size is not None:
        on_size(size)
    digest = hashlib.sha256()
    total = 0
    try:
        with target.open("wb") as out:
            while True:
                chunk = stream.read(CHUNK)  # type: ignore[attr-defined]
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                total += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
    except OSError as exc:
        raise KnowledgeBaseError(f"download of {url} interrupted: {exc}") from exc
    finally:
        stream.close()  # type: ignore[attr-defined]
    got = digest.hexdigest()
    if sha256 is not None and got.lower() != sha256.strip().lower():
        raise KnowledgeBaseError(
            f"{url}: sha256 {got} does not match the expected {sha256}; the archive is "
            "corrupt or has changed upstream, do not import it"
        )
    return got, total


def _safe_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise ImportFormatError(f"{archive}: member {name!r} would unpack outside the folder")


def _check_sizes(archive: Path, sizes: list[int]) -> None:
    """Refuse archives whose entries are too many or expand too far, before unpacking."""
    if len(sizes) > MAX_ENTRIES:
        raise ImportFormatError(
            f"{archive}: {len(sizes)} entries, more than the {MAX_ENTRIES} a Quick-Tune "
            "archive can hold; refusing to unpack it"
        )
    total = sum(sizes)
    packed = max(archive.stat().st_size, 1)
    if total > MAX_TOTAL_BYTES or total > MAX_RATIO * packed:
        raise ImportFormatError(
            f"{archive}: expands to {total} bytes ({total / packed:.0f}x its {packed} bytes); "
            f"limits are {MAX_TOTAL_BYTES} bytes and {MAX_RATIO}x, so it is not a Quick-Tune "
            "archive (a zip bomb?); refusing to unpack it"
        )


def extract(archive: Path, into: Path) -> None:
    """Unpack a .zip or tar archive, refusing members that escape ``into`` and archives
    that are too large unpacked (zipfile never yields more than an entry's declared size)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _safe_member(info.filename, archive)
            _check_sizes(archive, [info.file_size for info in infos])
            zf.extractall(into)
        return
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _safe_member(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise ImportFormatError(
                        f"{archive}: member {member.name!r} is a link or device; refusing it"
                    )
            _check_sizes(archive, [member.size for member in members])
            tf.extractall(into, filter="data")
        return
    raise ImportFormatError(f"{archive} is neither a zip nor a tar archive")


def find_version(tree: Path, version: str) -> Path:
    """The unpacked folder named ``version`` that holds a table.csv."""
    matches = sorted(p.parent for p in tree.rglob(TABLE) if p.parent.name == version)
    if matches:
        return matches[0]
    found = sorted({p.parent.name for p in tree.rglob(TABLE)})
    raise ImportFormatError(
        f"the archive has no Quick-Tune version {version!r}"
        + (f"; it holds: {', '.join(found)}" if found else " (no table.csv at all)")
    )


def download_quicktune(
    version: str = "extended",
    dest: Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    *,
    force: bool = False,
    on_bytes: Callable[[int], None] | None = None,
    on_size: Callable[[int | None], None] | None = None,
) -> DownloadResult:
    """Download (or reuse) ``<dest>/<version>``, checked with the Quick-Tune importer."""
    if not version or "/" in version or version in {".", ".."}:
        raise KnowledgeBaseError(
            f"invalid version {version!r}; one of {', '.join(QUICKTUNE_VERSIONS)}"
        )
    dest = Path(dest).expanduser() if dest is not None else default_dest()
    final = dest / version
    if final.is_dir() and not force:
        try:
            read_quicktune(final)
            return DownloadResult(final, version, None, 0, reused=True)
        except ImportFormatError:
            pass  # damaged copy: fetch again and replace it
    source = url or QUICKTUNE_ARCHIVE_URL
    expected = sha256 if sha256 is not None else (None if url else QUICKTUNE_ARCHIVE_SHA256)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KnowledgeBaseError(f"cannot create {dest}: {exc}") from exc
    work = Path(tempfile.mkdtemp(prefix=".quicktune-", dir=dest))
    try:
        archive = work / "archive"
        digest, size = fetch(source, archive, expected, on_bytes, on_size)
        unpacked = work / "unpacked"
        unpacked.mkdir()
        try:
            extract(archive, unpacked)
            folder = find_version(unpacked, version)
            read_quicktune(folder)  # the whole layout validates before it is put in place
        except (KnowledgeBaseError, zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            # Name the user's archive, not the temp copy that is deleted on the way out.
            text = str(exc).replace(str(unpacked) + os.sep, f"{source}: ")
            text = text.replace(str(unpacked), source).replace(str(archive), source)
            kind = type(exc) if isinstance(exc, KnowledgeBaseError) else ImportFormatError
            if kind is ImportFormatError and not isinstance(exc, KnowledgeBaseError):
                text = f"{source} is a damaged archive ({text}); download it again"
            raise kind(text) from exc
        if final.exists():
            trash = work / "previous"
            os.replace(final, trash)
        os.replace(folder, final)
        return DownloadResult(final, version, digest, size, reused=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
