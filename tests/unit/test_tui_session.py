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
