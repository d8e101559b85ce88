"""Check a GGUF file's header before llama.cpp sees it: fail in milliseconds, not minutes.

llama.cpp trusts the header it reads. A truncated download, a file of random bytes behind
the right magic, or a GGUF that is not a language model (a vision projector, an embedding
table) can make it allocate, spin or crash for minutes: a corrupt ``.gguf`` passed with
``--llm`` kept a recommendation busy at full CPU for over 6 minutes. :func:`inspect_gguf`
walks the header the way llama.cpp does (magic, version, metadata, tensor table), with a
bound on every count and length, and checks that every tensor's bytes lie inside the file.

Why not the ``gguf`` package from llama.cpp's repository: its reader memory-maps the whole
file and builds a numpy view per tensor and per metadata field, and raises whatever numpy
raises on a short file; here each failure must say what is wrong and where, within a
bounded amount of work. The type sizes below are ggml's (``ggml_blck_size`` /
``ggml_type_size``); a real-library test compares them with the built ``libggml``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metallmix.errors import ModelUnavailableError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # llama.cpp reads v2 and v3; v1 has been unsupported since 2023
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# Bounds no real model comes near; a header beyond them is corrupt, not large.
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_ARRAY = 1 << 24
MAX_STRING = 1 << 24
MAX_HEADER_BYTES = 1 << 30

# ggml type id -> (elements per block, bytes per block), from ggml's type traits.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4),
    1: ("f16", 1, 2),
    2: ("q4_0", 32, 18),
    3: ("q4_1", 32, 20),
    6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24),
    8: ("q8_0", 32, 34),
    9: ("q8_1", 32, 36),
    10: ("q2_K", 256, 84),
    11: ("q3_K", 256, 110),
    12: ("q4_K", 256, 144),
    13: ("q5_K", 256, 176),
    14: ("q6_K", 256, 210),
    15: ("q8_K", 256, 292),
    16: ("iq2_xxs", 256, 66),
    17: ("iq2_xs", 256, 74),
    18: ("iq3_xxs", 256, 98),
    19: ("iq1_s", 256, 50),
    20: ("iq4_nl", 32, 18),
    21: ("iq3_s", 256, 110),
    22: ("iq2_s", 256, 82),
    23: ("iq4_xs", 256, 136),
    24: ("i8", 1, 1),
    25: ("i16", 1, 2),
    26: ("i32", 1, 4),
    27: ("i64", 1, 8),
    28: ("f64", 1, 8),
    29: ("iq1_m", 256, 56),
    30: ("bf16", 1, 2),
    34: ("tq1_0", 256, 54),
    35: ("tq2_0", 256, 66),
    39: ("mxfp4", 32, 17),
    40: ("nvfp4", 64, 36),
    41: ("q1_0", 128, 18),
    42: ("q2_0", 64, 18),
}

# GGUF metadata value types -> struct format of a scalar (strings and arrays are special).
_SCALARS = {
    0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"
}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFInfo:
    """What the header says: enough to name the model and to know the file is whole."""

    path: Path
    version: int
    n_tensors: int
    metadata: dict[str, Any] = field(repr=False)
    data_offset: int
    data_bytes: int
    data_end: int  # the furthest byte of the data section a tensor needs (<= data_bytes)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class _Reader:
    """Bounded little-endian reads over the header bytes, each failure naming its field."""

    def __init__(self, fh: Any, size: int, path: Path) -> None:
        self.fh, self.size, self.path, self.pos = fh, size, path, 0

    def fail(self, what: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"{self.path} is not a usable GGUF model: {what} (at byte {self.pos:,} of "
            f"{self.size:,}); the file is corrupt, truncated or not a llama.cpp model: "
            "download it again or give another .gguf"
        )

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > min(self.size, MAX_HEADER_BYTES):
            raise self.fail(f"{what} runs past the end of the file")
        data = self.fh.read(n)
        if len(data) != n:
            raise self.fail(f"{what} could not be read")
        self.pos += n
        return bytes(data)

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("Q", f"length of {what}")
        if n > MAX_STRING:
            raise self.fail(f"{what} claims {n:,} bytes")
        raw = self.take(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8") from exc

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth == 0:
            etype = self.unpack("I", f"element type of {what}")
            count = self.unpack("Q", f"length of {what}")
            if count > MAX_ARRAY:
                raise self.fail(f"{what} claims {count:,} elements")
            if etype in _SCALARS:  # skip fixed-size elements without decoding them
                self.take(count * struct.calcsize(_SCALARS[etype]), what)
                return count
            if etype != _STRING:
                raise self.fail(f"{what} has elements of unknown type {etype}")
            for _ in range(count):
                n = self.unpack("Q", f"an element length of {what}")
                if n > MAX_STRING:
                    raise self.fail(f"an element of {what} claims {n:,} bytes")
                self.take(n, what)
            return count
        raise self.fail(f"{what} has unknown value type {vtype}")


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Parse and check ``path``'s GGUF header; raises :class:`ModelUnavailableError` saying
    what is wrong. Reads only the header (megabytes at most), never the tensor data."""
    path = Path(path).expanduser()
    try:
        size = path.stat().st_size
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ModelUnavailableError(f"cannot read LLM weights {path}: {exc.strerror}") from exc
    with fh:
        r = _Reader(fh, size, path)
        magic = fh.read(4)
        r.pos = len(magic)
        if magic != MAGIC:
            raise ModelUnavailableError(
                f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): "
                "give a llama.cpp .gguf model file"
            )
        version = r.unpack("I", "version")
        if version not in SUPPORTED_VERSIONS:
            swapped = struct.unpack(">I", struct.pack("<I", version))[0]
            why = (
                "a big-endian GGUF, which this llama.cpp build cannot read"
                if swapped in SUPPORTED_VERSIONS
                else f"GGUF version {version}; this llama.cpp reads versions 2 and 3"
            )
            raise r.fail(why)
        n_tensors = r.unpack("Q", "tensor count")
        n_kv = r.unpack("Q", "metadata count")
        if n_tensors == 0 or n_tensors > MAX_TENSORS:
            raise r.fail(f"it claims {n_tensors:,} tensors")
        if n_kv > MAX_KV:
            raise r.fail(f"it claims {n_kv:,} metadata entries")
        metadata: dict[str, Any] = {}
        for i in range(n_kv):
            key = r.string(f"metadata key {i}")
            vtype = r.unpack("I", f"type of metadata {key!r}")
            metadata[key] = r.value(vtype, f"metadata {key!r}")
        tensors: list[tuple[str, int, int, int]] = []  # name, type, elements, offset
        for i in range(n_tensors):
            name = r.string(f"name of tensor {i}")
            n_dims = r.unpack("I", f"dimension count of tensor {name!r}")
            if not 1 <= n_dims <= MAX_DIMS:
                raise r.fail(f"tensor {name!r} has {n_dims} dimensions")
            elements = 1
            for d in range(n_dims):
                dim = r.unpack("Q", f"dimension {d} of tensor {name!r}")
                if dim == 0 or dim > 1 << 40:
                    raise r.fail(f"tensor {name!r} has a dimension of {dim:,}")
                elements *= dim
            ttype = r.unpack("I", f"type of tensor {name!r}")
            offset = r.unpack("Q", f"offset of tensor {name!r}")
            tensors.append((name, ttype, elements, offset))
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise r.fail(f"general.alignment is {alignment!r}, not a power of two")
        data_offset = -(-r.pos // alignment) * alignment
    data_bytes = size - data_offset
    data_end = 0
    for name, ttype, elements, offset in tensors:
        if ttype not in GGML_TYPES:
            raise r.fail(f"tensor {name!r} has ggml type {ttype}, unknown to this llama.cpp")
        type_name, block, type_size = GGML_TYPES[ttype]
        if elements % block:
            raise r.fail(
                f"tensor {name!r} ({type_name}) has {elements:,} elements, not whole blocks"
            )
        end = offset + elements // block * type_size
        if offset % alignment or end > data_bytes:
            raise r.fail(
                f"tensor {name!r} needs bytes {offset:,}-{end:,} of the data section but the "
                f"file holds {max(data_bytes, 0):,}: the file is truncated"
            )
        data_end = max(data_end, end)
    info = GGUFInfo(path, version, len(tensors), metadata, data_offset, data_bytes, data_end)
    if not info.architecture:
        raise r.fail("it names no general.architecture")
    if "tokenizer.ggml.model" not in metadata:
        raise ModelUnavailableError(
            f"{path} is a GGUF of a {info.architecture!r} model without a tokenizer, so it "
            "cannot write text (a vision projector or an embedding table?): give a chat "
            "language model's .gguf"
        )
    return info
