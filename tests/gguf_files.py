"""Small, structurally valid GGUF files for tests: a header llama.cpp would accept (an
architecture, a tokenizer, one F32 tensor) followed by deterministic data bytes."""

from __future__ import annotations

import hashlib
import struct

ALIGNMENT = 32


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def tiny_gguf(
    n: int = 300_000,
    seed: int = 1,
    *,
    architecture: str | None = "llama",
    tokenizer: bool = True,
    version: int = 3,
) -> bytes:
    """About ``n`` bytes of GGUF (rounded to whole F32 elements); ``seed`` varies the data."""
    kv = []
    if architecture is not None:
        kv.append(_string("general.architecture") + struct.pack("<I", 8) + _string(architecture))
    if tokenizer:
        kv.append(_string("tokenizer.ggml.model") + struct.pack("<I", 8) + _string("gpt2"))
        tokens = b"".join(_string(t) for t in ("<s>", "</s>", "a", "b"))
        kv.append(_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 4) + tokens)
    header_without_tensor = struct.pack("<4sIQQ", b"GGUF", version, 1, len(kv)) + b"".join(kv)
    tensor_head = _string("token_embd.weight") + struct.pack("<I", 1)
    tensor_tail = struct.pack("<IQ", 0, 0)  # type F32, offset 0
    fixed = len(header_without_tensor) + len(tensor_head) + 8 + len(tensor_tail)
    data_offset = -(-fixed // ALIGNMENT) * ALIGNMENT
    elements = max(1, (n - data_offset) // 4)
    header = header_without_tensor + tensor_head + struct.pack("<Q", elements) + tensor_tail
    header += b"\0" * (data_offset - len(header))
    block = hashlib.sha256(str(seed).encode()).digest()
    data = (block * (elements * 4 // len(block) + 1))[: elements * 4]
    return header + data
