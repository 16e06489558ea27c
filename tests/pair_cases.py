"""Generated target/draft pairs, each breaking (or almost breaking) one of llama.cpp's draft checks.

`expected` is ggufpair's check name for the blocker llama.cpp trips on first (None: compatible);
`LLAMA_CHECK` maps it to the name the llama.cpp oracle reports (BOS/EOS ids fail inside the add_bos/add_eos
checks there, and every loader failure is "load").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as T

from tests.ggufmake import DROP, spm_tokens, tiny_model

LLAMA_CHECK = {
    None: None, "vocab_type": "vocab_type", "add_bos": "add_bos", "bos_id": "add_bos", "add_eos": "add_eos",
    "eos_id": "add_eos", "vocab_size": "vocab_size", "token_text": "token_text",
    "draft_vocab_load": "load", "target_vocab_load": "load", "draft_duplicate_tokens": "load", "draft_key_type": "load",
}


@dataclass
class Side:
    tokenizer: str = "llama"
    n_tokens: int = 300
    tokens: list[str] | None = None
    changes: dict[str, Any] = field(default_factory=dict)

    def build(self, path: Path) -> Path:
        return tiny_model(path, self.tokenizer, self.n_tokens, self.tokens, self.changes)


@dataclass
class Case:
    name: str
    target: Side
    draft: Side
    expected: str | None
    overrides: dict[str, Any] = field(default_factory=dict)


def _spm_with(changes: dict[int, str], n: int = 300) -> list[str]:
    toks = spm_tokens(n)
    for i, t in changes.items():
        toks[i] = t
    return toks


def _bpe(**changes) -> Side:
    return Side("gpt2", 300, None, changes)


ADD_BOS = "tokenizer.ggml.add_bos_token"
ADD_EOS = "tokenizer.ggml.add_eos_token"
BOS = "tokenizer.ggml.bos_token_id"
EOS = "tokenizer.ggml.eos_token_id"
PRE = "tokenizer.ggml.pre"
GEMMA4 = {"tokenizer.ggml.model": (T.STRING, "gemma4"), PRE: (T.STRING, "gemma4")}

CASES: list[Case] = [
    Case("identical", Side(), Side(), None),
    Case("add_bos_differs", Side(), Side(changes={ADD_BOS: (T.BOOL, False)}), "add_bos"),
    Case("add_bos_missing_spm_default_true", Side(), Side(changes={ADD_BOS: DROP}), None),
    Case("add_bos_missing_bpe_default_false", _bpe(**{ADD_BOS: (T.BOOL, True)}), _bpe(**{ADD_BOS: DROP}), "add_bos"),
    Case("bos_id_differs", Side(), Side(changes={BOS: (T.UINT32, 3)}), "bos_id"),
    Case("add_bos_and_bos_id_differ", Side(), Side(changes={ADD_BOS: (T.BOOL, False), BOS: (T.UINT32, 3)}), "add_bos"),
    Case("bos_id_differs_without_add_bos", Side(changes={ADD_BOS: (T.BOOL, False)}),
         Side(changes={ADD_BOS: (T.BOOL, False), BOS: (T.UINT32, 3)}), None),
    Case("bos_id_missing_spm_default_1", Side(), Side(changes={BOS: DROP}), None),
    Case("bos_id_out_of_range_falls_back", Side(), Side(changes={BOS: (T.UINT32, 9999)}), None),
    Case("bos_id_out_of_range_vs_other_id", Side(changes={BOS: (T.UINT32, 3)}), Side(changes={BOS: (T.UINT32, 9999)}), "bos_id"),
    Case("add_eos_differs", Side(), Side(changes={ADD_EOS: (T.BOOL, True)}), "add_eos"),
    Case("eos_id_differs_without_add_eos", Side(), Side(changes={EOS: (T.UINT32, 7)}), None),
    Case("eos_id_differs_with_add_eos", Side(changes={ADD_EOS: (T.BOOL, True)}),
         Side(changes={ADD_EOS: (T.BOOL, True), EOS: (T.UINT32, 7)}), "eos_id"),
    Case("vocab_type_spm_vs_bpe", Side(), _bpe(), "vocab_type"),
    Case("vocab_size_diff_128", Side(n_tokens=300), Side(n_tokens=428), None),
    Case("vocab_size_diff_129", Side(n_tokens=300), Side(n_tokens=429), "vocab_size"),
    Case("vocab_size_diff_129_smaller_draft", Side(n_tokens=429), Side(n_tokens=300), "vocab_size"),
    Case("text_differs_at_id_4", Side(), Side(tokens=_spm_with({4: "<0xZZ>"})), None),
    Case("text_differs_at_id_5", Side(), Side(tokens=_spm_with({5: "<0xZZ>"})), "token_text"),
    Case("text_differs_at_last_id", Side(), Side(tokens=_spm_with({299: "\u2581other"})), "token_text"),
    Case("text_after_nul_ignored", Side(tokens=_spm_with({280: "ab\0x"})), Side(tokens=_spm_with({280: "ab\0y"})), None),
    Case("empty_text_becomes_placeholder", Side(tokens=_spm_with({281: ""})), Side(tokens=_spm_with({281: "[EMPTY_281]"})), None),
    Case("llama_bpe_pre_sets_add_bos", _bpe(), _bpe(**{PRE: (T.STRING, "llama-bpe"), ADD_BOS: DROP}), "add_bos"),
    Case("gemma4_forces_add_bos", _bpe(**{**GEMMA4, ADD_BOS: (T.BOOL, False), BOS: (T.UINT32, 1)}),
         _bpe(**{**GEMMA4, ADD_BOS: (T.BOOL, True), BOS: (T.UINT32, 1)}), None),
    Case("gemma4_vs_gpt2_add_bos", _bpe(**{**GEMMA4, ADD_BOS: (T.BOOL, False), BOS: (T.UINT32, 1)}),
         _bpe(**{ADD_BOS: (T.BOOL, False), BOS: (T.UINT32, 1)}), "add_bos"),
    Case("add_bos_wrong_type", Side(), Side(changes={ADD_BOS: (T.UINT8, 1)}), "draft_key_type"),
    Case("bos_id_wrong_type", Side(), Side(changes={BOS: (T.INT32, 1)}), "draft_key_type"),
    Case("tokenizer_model_missing", Side(), Side(changes={"tokenizer.ggml.model": DROP}), "draft_vocab_load"),
    Case("tokenizer_model_unknown", Side(), Side(changes={"tokenizer.ggml.model": (T.STRING, "nonsense")}), "draft_vocab_load"),
    Case("bpe_without_merges", _bpe(), _bpe(**{"tokenizer.ggml.merges": DROP}), "draft_vocab_load"),
    Case("duplicate_token_texts", Side(), Side(tokens=_spm_with({290: "\u2581w0"})), "draft_duplicate_tokens"),
    Case("override_fixes_add_bos", Side(), Side(changes={ADD_BOS: (T.BOOL, False)}), None, {ADD_BOS: True}),
    Case("override_of_wrong_kind_is_ignored", Side(), Side(changes={ADD_BOS: (T.BOOL, False)}), "add_bos", {ADD_BOS: 1}),
    Case("override_sets_absent_key", _bpe(**{ADD_BOS: (T.BOOL, True)}), _bpe(**{ADD_BOS: DROP}), None, {ADD_BOS: True}),
    Case("override_bos_id", Side(), Side(changes={BOS: (T.UINT32, 3)}), None, {BOS: 1}),
]


def build(case: Case, folder: Path) -> tuple[Path, Path]:
    return case.target.build(folder / "target.gguf"), case.draft.build(folder / "draft.gguf")
