"""The llama.cpp build runs on any CPU of its architecture (issue: a native build crashed in
ggml's AMX kernels on Sapphire Rapids). The configuration is tested, not just this machine:
the build script's flags for each architecture, the installed build's instruction sets, and
the load-time switch that keeps the AMX buffer type off wherever AMX was compiled in."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from metallmix.agents.runtime import llm as llm_module
from metallmix.agents.runtime.llm import compiled_features, missing_cpu_features, use_extra_buffers

ROOT = Path(__file__).resolve().parents[1]
PORTABLE_X86 = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"}
AMX_BUILD = (
    "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | REPACK = 1 |"
)
PORTABLE_BUILD = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 |"


def dry_run(**env: str) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build_llama.sh")],
        env={**os.environ, "DRY_RUN": "1", "NATIVE": "0", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_portable_x86_build_fixes_its_instruction_sets() -> None:
    args = dry_run(ARCH="x86_64")["CMAKE_ARGS"]
    assert "-DGGML_NATIVE=OFF" in args
    for flag in ("AVX", "AVX2", "FMA", "F16C", "BMI2"):
        assert f"-DGGML_{flag}=ON" in args
    for flag in ("AVX512", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"-DGGML_{flag}=OFF" in args


def test_arm_build_carries_no_x86_flags() -> None:
    found = dry_run(ARCH="aarch64")
    assert found["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"
    assert found["flavour"] == "baseline-aarch64"


def test_native_build_is_opt_in_and_keyed_by_cpu() -> None:
    found = dry_run(NATIVE="1", ARCH="x86_64")
    assert found["CMAKE_ARGS"] == "-DGGML_NATIVE=ON"
    assert found["flavour"].startswith("native-x86_64-")


def test_build_features_are_read_from_system_info() -> None:
    assert compiled_features(PORTABLE_BUILD) == PORTABLE_X86
    assert "AMX_INT8" in compiled_features(AMX_BUILD)
    assert "AVX512" not in compiled_features("CPU : AVX512 = 0 | AVX2 = 1 |")


def test_extra_buffer_types_are_off_exactly_where_amx_was_compiled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METALLMIX_LLM_EXTRA_BUFTS", raising=False)
    assert use_extra_buffers(AMX_BUILD) is False
    assert use_extra_buffers(PORTABLE_BUILD) is True
    monkeypatch.setenv("METALLMIX_LLM_EXTRA_BUFTS", "0")
    assert use_extra_buffers(PORTABLE_BUILD) is False
    monkeypatch.setenv("METALLMIX_LLM_EXTRA_BUFTS", "1")
    assert use_extra_buffers(AMX_BUILD) is True


def test_missing_instruction_sets_are_named() -> None:
    old_cpu = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx\n"
    assert missing_cpu_features(PORTABLE_BUILD, old_cpu) == ["AVX2", "BMI2", "F16C", "FMA"]
    new_cpu = "flags\t\t: avx avx2 fma f16c bmi2 ssse3\n"
    assert missing_cpu_features(PORTABLE_BUILD, new_cpu) == []
    assert missing_cpu_features(AMX_BUILD, new_cpu) == ["AMX_INT8", "AVX512"]
    assert missing_cpu_features(PORTABLE_BUILD, "Features\t: fp asimd\n") == []  # ARM: no check


def test_a_cpu_without_the_builds_instructions_gets_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    monkeypatch.setattr(llm_module, "missing_cpu_features", lambda info: ["AVX2"])
    from metallmix.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match=r"uses AVX2, which this CPU lacks.*NATIVE=1"):
        llm_module.LocalLLM(Path("never-read.gguf"), name="x", sha256="")


@pytest.mark.real
def test_real_installed_build_is_portable() -> None:
    """CI installs through scripts/build_llama.sh: its build must not depend on the build
    machine's newest instructions (skipped for a deliberate native build)."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    if os.environ.get("METALLMIX_LLM_NATIVE") == "1":
        pytest.skip("METALLMIX_LLM_NATIVE=1: a native build was asked for")
    features = compiled_features(llm_module.build_info())
    assert not any(f.startswith(("AMX", "AVX512", "AVX_VNNI")) for f in features), features
    if os.uname().machine in {"x86_64", "amd64"}:
        assert features & {"SSE3", "AVX", "AVX2", "FMA"} and features <= PORTABLE_X86 | {
            "LLAMAFILE",
            "OPENMP",
            "REPACK",
        }


@pytest.mark.real
def test_real_model_loads_with_extra_buffer_types_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch the AMX machines rely on really reaches llama.cpp and still generates."""
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
    from metallmix.agents.runtime.weights import resolve_weights

    monkeypatch.setenv("METALLMIX_LLM_EXTRA_BUFTS", "0")
    weights = resolve_weights("fast")
    llm = llm_module.LocalLLM(weights.path, name=weights.name, sha256=weights.sha256)
    try:
        assert llm.extra_buffers is False
        assert llm._llama.model_params.use_extra_bufts is False
        assert llm.chat([{"role": "user", "content": "Say yes."}], max_tokens=3).strip()
    finally:
        llm._llama.close()
