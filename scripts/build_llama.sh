#!/usr/bin/env bash
# Build llama-cpp-python once as a wheel that runs on any CPU of this architecture, cache it,
# and install it into the given Python (default: python3).
#
#   bash scripts/build_llama.sh [PYTHON]            # portable build (the default)
#   NATIVE=1 bash scripts/build_llama.sh [PYTHON]   # tuned to this machine's CPU only
#   DRY_RUN=1 [ARCH=aarch64] bash scripts/build_llama.sh  # print flavour and CMAKE_ARGS only
#
# Why: built with its defaults, llama.cpp compiles for the build machine's newest
# instructions (GGML_NATIVE). On a CPU with AMX (Sapphire Rapids and newer Xeons) that turns
# on ggml's AMX kernels, which crash in ggml_backend_amx_mul_mat; a wheel built on one
# machine and used on an older one dies of SIGILL. The portable build fixes the instruction
# sets instead:
#   x86-64:  AVX, AVX2, FMA, F16C, BMI2 (x86-64-v3: Intel Haswell / AMD Zen and newer);
#            no AVX-512, no AMX;
#   aarch64: the compiler's baseline (armv8-a), no x86 flags.
# The wheel is cached under ${XDG_CACHE_HOME:-~/.cache}/metallmix/wheels, keyed by version and
# flavour (and, for native builds, by this CPU's flags), so a rebuild of the venv takes
# seconds. pip's own wheel cache is bypassed: it keys wheels by source, not by build flags,
# and would hand back a wheel built with other flags.
set -euo pipefail
PY=${1:-python3}
VERSION=0.3.36  # keep equal to the `llm` extra in pyproject.toml
NATIVE=${NATIVE:-${METALLMIX_LLM_NATIVE:-0}}
arch=${ARCH:-$(uname -m)}
if [ "$NATIVE" = "1" ]; then
  cpu=$( (grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -a) | sha256sum | cut -c1-12)
  flavour="native-$arch-$cpu"
  cmake_args="-DGGML_NATIVE=ON"
else
  case "$arch" in
    x86_64|amd64)
      flavour="x86-64-v3"
      cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
      cmake_args="$cmake_args -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF"
      cmake_args="$cmake_args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
      ;;
    *)
      flavour="baseline-$arch"
      cmake_args="-DGGML_NATIVE=OFF"
      ;;
  esac
fi
if [ "${DRY_RUN:-0}" = "1" ]; then
  echo "flavour=$flavour"
  echo "CMAKE_ARGS=$cmake_args"
  exit 0
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/metallmix/wheels/llama-cpp-python-$VERSION-$flavour"
wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION ($flavour; CMAKE_ARGS=$cmake_args)," \
       "5-28 minutes on 2 cores; cached in $cache" >&2
  tmp="$cache.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PY" -m pip wheel --no-deps --no-cache-dir --progress-bar off -w "$tmp" \
    "llama-cpp-python==$VERSION"
  rm -rf "$cache" && mv "$tmp" "$cache"
  wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
fi
echo "installing $wheel" >&2
"$PY" -m pip install --no-deps --force-reinstall --quiet "$wheel"
"$PY" -m pip install --quiet "$wheel"  # its dependencies (numpy, jinja2, diskcache, ...)
"$PY" - <<'PY'
import llama_cpp

print("llama.cpp build:", llama_cpp.llama_print_system_info().decode().strip())
PY
