"""Effective vocabulary values, as llama.cpp's loader computes them from stored keys and defaults."""

from __future__ import annotations

from gguf import GGUFValueType as T

from ggufpair.format.model_info import read_model_info
from ggufpair.format.vocab import VocabType
from tests.ggufmake import DROP, tiny_model
from tests.pair_cases import ADD_BOS, ADD_EOS, BOS, EOS, GEMMA4, PRE


def _vocab(tmp_path, tokenizer="llama", overrides=None, **changes):
    path = tiny_model(tmp_path / "m.gguf", tokenizer=tokenizer, changes=changes.get("changes"))
    return read_model_info(path, overrides).vocab


def test_stored_values_are_used(tmp_path):
    v = _vocab(tmp_path)
    assert (v.vocab_type, v.n_tokens, v.bos_id, v.eos_id, v.add_bos, v.add_eos) == (VocabType.SPM, 300, 1, 2, True, False)
    assert (v.bos_id_stored, v.add_bos_stored) == (1, True)


def test_spm_defaults_when_keys_are_missing(tmp_path):
    v = _vocab(tmp_path, changes={ADD_BOS: DROP, ADD_EOS: DROP, BOS: DROP, EOS: DROP})
    assert (v.add_bos, v.add_eos, v.bos_id, v.eos_id) == (True, False, 1, 2)
    assert (v.add_bos_stored, v.add_eos_stored, v.bos_id_stored, v.eos_id_stored) == (None, None, None, None)


def test_bpe_defaults_when_keys_are_missing(tmp_path):
    v = _vocab(tmp_path, "gpt2", changes={ADD_BOS: DROP, BOS: DROP, EOS: DROP})
    assert (v.vocab_type, v.add_bos, v.add_eos, v.bos_id, v.eos_id) == (VocabType.BPE, False, False, 11, 11)


def test_llama3_pre_tokenizer_defaults_add_bos_true(tmp_path):
    v = _vocab(tmp_path, "gpt2", changes={PRE: (T.STRING, "llama-bpe"), ADD_BOS: DROP})
    assert v.add_bos is True


def test_gemma4_add_bos_is_forced_true(tmp_path):
    v = _vocab(tmp_path, "gpt2", changes={**GEMMA4, ADD_BOS: (T.BOOL, False)})
    assert v.add_bos is True and v.add_bos_stored is False
    assert any("Gemma 4" in n for n in v.notes)


def test_out_of_range_special_id_falls_back_to_default(tmp_path):
    v = _vocab(tmp_path, changes={BOS: (T.UINT32, 5000)})
    assert v.bos_id == 1 and v.bos_id_stored == 5000
    assert any("outside the vocabulary" in n for n in v.notes)


def test_default_id_outside_small_vocab_is_disabled(tmp_path):
    path = tiny_model(tmp_path / "m.gguf", "gpt2", n_tokens=8, changes={BOS: DROP, EOS: DROP})
    v = read_model_info(path).vocab
    assert (v.bos_id, v.eos_id) == (-1, -1)  # BPE default 11 is outside 8 tokens


def test_wrong_key_type_is_a_load_error(tmp_path):
    v = _vocab(tmp_path, changes={ADD_BOS: (T.INT32, 1)})
    assert v.vocab_type is None and "tokenizer.ggml.add_bos_token" in v.load_error and "BOOL" in v.load_error


def test_override_wins_even_when_key_is_absent(tmp_path):
    v = _vocab(tmp_path, "gpt2", overrides={ADD_BOS: True}, changes={ADD_BOS: DROP})
    assert v.add_bos is True and v.overridden == (ADD_BOS,)


def test_override_of_the_wrong_kind_is_ignored(tmp_path):
    v = _vocab(tmp_path, overrides={ADD_BOS: 0}, changes={ADD_BOS: (T.BOOL, True)})
    assert v.add_bos is True and v.overridden == ()


def test_real_gemma3_vocab(gemma_q4):
    info = read_model_info(gemma_q4)
    v = info.vocab
    assert (v.tokenizer_model, v.vocab_type, v.n_tokens) == ("llama", VocabType.SPM, 262144)
    assert (v.bos_id, v.eos_id, v.add_bos, v.add_eos) == (2, 1, True, False)
    texts = v.tokens.load()
    assert texts[:3] == (b"<pad>", b"<eos>", b"<bos>")


def test_real_smollm2_vocab(smollm2):
    v = read_model_info(smollm2).vocab
    assert (v.tokenizer_model, v.vocab_type, v.pre, v.n_tokens) == ("gpt2", VocabType.BPE, "smollm", 49152)
    assert (v.add_bos, v.add_bos_stored, v.add_eos_stored) == (False, False, None)
