"""`ggufpair tune` end to end from the command line: short names resolved from a models folder, the pair's
defect fixed by the no-copy route before any launch, a short search, profile, script and llama-swap entry."""

from __future__ import annotations

import tomllib

import pytest

from ggufpair.cli.main import main
from ggufpair.state import state_dir
from tests.integration.variants import set_scalar

pytestmark = pytest.mark.integration


def test_tune_command(tmp_path, monkeypatch, gemma_f16, gemma_q4, model_copy, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "target-f16.gguf").symlink_to(gemma_f16)
    draft = model_copy(gemma_q4, "cli-draft.gguf")
    set_scalar(draft, "tokenizer.ggml.add_bos_token", False)
    (folder / "draft-q4.gguf").symlink_to(draft)
    monkeypatch.setenv("GGUFPAIR_MODEL_DIRS", str(folder))
    monkeypatch.chdir(tmp_path)
    code = main(["tune", "--target", "270M F16", "--draft", "270M Q4_K_M", "--lengths", "2,4", "--kv", "f16",
                 "--draft-kv", "f16", "--tokens", "16", "--repeats", "1", "--categories", "chat", "--ctx", "1024",
                 "--threads", "2", "--format", "llama-swap"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "needs a fix" in out and "override-kv" in out
    assert "recommendation" in out and "memory: predicted" in out
    (profile,) = state_dir("profiles").glob("*.toml")
    data = tomllib.loads(profile.read_text())
    assert data["measurements"]["fix"].startswith("fixed by override: tokenizer.ggml.add_bos_token=bool:true")
    assert len(data["measurements"]["points"]) == 3  # baseline, n_max 4, n_max 2
    assert data["measurements"]["recommended"]["measured_memory_bytes"] > 0
    assert profile.with_suffix(".sh").exists() and profile.with_suffix(".llama-swap.yaml").exists()
    assert "${PORT}" in profile.with_suffix(".llama-swap.yaml").read_text()


def test_tune_without_draft_suggests_and_ambiguous_names_list_candidates(tmp_path, monkeypatch, gemma_f16, gemma_q4,
                                                                          capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.gguf").symlink_to(gemma_f16)
    (folder / "b.gguf").symlink_to(gemma_q4)
    monkeypatch.setenv("GGUFPAIR_MODEL_DIRS", str(folder))
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "--target", "270M"]) == 2
    assert "matches 2 models" in capsys.readouterr().err
    assert main(["tune", "--target", "270M F16"]) in (0, 1)
    out = capsys.readouterr().out
    assert "Drafts for gemma-3 270M F16" in out
