"""The TUI's session: a fix belongs to the pair it was made for (issue 18: a no-copy fix carried over to
another draft, whose verdict then said COMPATIBLE "with --override-kv" and whose tune started with it)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from ggufpair.tui.app import Session


def _c(name: str):
    return SimpleNamespace(path=Path(f"/models/{name}.gguf"), info=None, where="given")


def test_another_model_in_either_role_clears_the_fix():
    s = Session()
    s.choose("target", _c("t"))
    s.choose("draft", _c("d1"))
    s.overrides = ("tokenizer.ggml.add_bos_token=bool:true",)
    s.choose("draft", _c("d1"))  # the same file again: the pair is unchanged, its fix stays
    assert s.overrides
    s.choose("draft", _c("d2"))
    assert s.overrides == () and s.draft.path.name == "d2.gguf"
    s.overrides = ("tokenizer.ggml.add_bos_token=bool:true",)
    s.choose("target", _c("t2"))
    assert s.overrides == ()


def test_same_named_models_are_told_apart_by_their_folders():
    """Issue 18: two models of one file name showed the same row."""
    from ggufpair.tui.app import distinguishing_paths

    paths = ["/hf/a/snap/1/model.gguf", "/hf/b/snap/1/model.gguf", "/models/other.gguf", "/x/y.gguf"]
    assert distinguishing_paths(paths) == ["a/snap/1/model.gguf", "b/snap/1/model.gguf", "other.gguf", "y.gguf"]
    assert distinguishing_paths(["/m/a.gguf", "/m/a.gguf"]) == ["/m/a.gguf", "/m/a.gguf"]  # the same file twice
