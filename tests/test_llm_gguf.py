"""GGUF header checks (metallmix.agents.runtime.gguf): specific errors, bounded work."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from gguf_files import tiny_gguf

from metallmix.agents.runtime.gguf import GGML_TYPES, inspect_gguf
from metallmix.errors import ModelUnavailableError


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_whole_file_passes_and_is_described(tmp_path: Path) -> None:
    info = inspect_gguf(write(tmp_path, tiny_gguf(10_000)))
    assert (info.version, info.n_tensors, info.architecture) == (3, 1, "llama")
    assert info.data_end == info.data_bytes  # the one tensor fills the data section


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d[:-1], "truncated"),
        (lambda d: d[:40], "past the end of the file"),
        (lambda d: d[:4] + struct.pack("<I", 1) + d[8:], "GGUF version 1"),
        (lambda d: d[:4] + struct.pack(">I", 3) + d[8:], "big-endian"),
        (lambda d: d[:8] + struct.pack("<Q", 1 << 40) + d[16:], "claims 1,099,511,627,776 tensors"),
        (lambda d: d[:16] + struct.pack("<Q", 1 << 40) + d[24:], "metadata entries"),
        (lambda d: b"ggml" + d[4:], "not a GGUF file"),
        (lambda d: b"", "not a GGUF file"),
    ],
    ids=["short-data", "short-header", "v1", "big-endian", "tensors", "kv", "magic", "empty"],
)
def test_damage_is_named(tmp_path: Path, mutate: object, match: str) -> None:
    data = mutate(tiny_gguf(10_000))  # type: ignore[operator]
    with pytest.raises(ModelUnavailableError, match=match):
        inspect_gguf(write(tmp_path, data))


def test_non_language_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="without a tokenizer"):
        inspect_gguf(write(tmp_path, tiny_gguf(10_000, tokenizer=False)))
    with pytest.raises(ModelUnavailableError, match=r"no general\.architecture"):
        inspect_gguf(write(tmp_path, tiny_gguf(10_000, architecture=None)))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="cannot read LLM weights"):
        inspect_gguf(tmp_path / "absent.gguf")


@pytest.mark.real
def test_real_bundled_models_pass_and_fill_their_files() -> None:
    from metallmix.agents.runtime.weights import resolve_weights

    for name in ("fast", "default"):
        try:
            path = resolve_weights(name).path
        except ModelUnavailableError as exc:
            pytest.skip(f"{name} weights not installed: {exc}")
        info = inspect_gguf(path)
        assert info.architecture == "qwen2"
        assert info.data_end == info.data_bytes


@pytest.mark.real
def test_real_type_table_matches_the_built_ggml() -> None:
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.*"))
    if not libs:
        pytest.skip("this llama-cpp-python build ships no separate libggml-base")
    lib = ctypes.CDLL(str(libs[0]))
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_blck_size.restype = ctypes.c_int64
    for type_id, (_name, block, size) in GGML_TYPES.items():
        assert (lib.ggml_blck_size(type_id), lib.ggml_type_size(type_id)) == (block, size), type_id
