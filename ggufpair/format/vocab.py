"""The vocabulary as llama.cpp's loader will see it (`llama_vocab::impl::load`, src/llama-vocab.cpp).

Speculative decoding is refused or allowed on *effective* values: the ones llama.cpp computes after its
per-tokenizer defaults, its pre-tokenizer quirks, its range checks on special ids and any `--override-kv`.
This module reproduces that computation from GGUF metadata, so a verdict can be given without loading
llama.cpp, and names the stored key behind every value.
"""

from __future__ import annotations

import enum
import functools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ggufpair.format.gguf_constants import GGUFValueType, Keys
from ggufpair.format.reader import ArrayValue, GGUFHeader

TOKEN_NULL = -1


class VocabType(enum.IntEnum):
    """`enum llama_vocab_type` (include/llama.h)."""

    NONE = 0
    SPM = 1
    BPE = 2
    WPM = 3
    UGM = 4
    RWKV = 5
    PLAMO2 = 6


# tokenizer.ggml.model -> (vocab type, default bos id, default eos id); TOKEN_NULL where llama.cpp has none.
TOKENIZER_MODELS: dict[str, tuple[VocabType, int, int]] = {
    "no_vocab": (VocabType.NONE, TOKEN_NULL, TOKEN_NULL),
    "none": (VocabType.NONE, TOKEN_NULL, TOKEN_NULL),
    "llama": (VocabType.SPM, 1, 2),
    "bert": (VocabType.WPM, 101, TOKEN_NULL),
    "gpt2": (VocabType.BPE, 11, 11),
    "hybriddna": (VocabType.BPE, 11, 11),
    "whitespace": (VocabType.BPE, 11, 11),
    "t5": (VocabType.UGM, TOKEN_NULL, 1),
    "rwkv": (VocabType.RWKV, TOKEN_NULL, TOKEN_NULL),
    "test": (VocabType.NONE, TOKEN_NULL, TOKEN_NULL),
    "plamo2": (VocabType.PLAMO2, 1, 2),
    "gemma4": (VocabType.BPE, TOKEN_NULL, TOKEN_NULL),
}
# add_bos / add_eos defaults by vocab type, before the GGUF keys are read.
TYPE_ADD_DEFAULTS: dict[VocabType, tuple[bool, bool]] = {
    VocabType.SPM: (True, False),
    VocabType.WPM: (True, False),
    VocabType.UGM: (False, True),
    VocabType.RWKV: (False, False),
}
# BPE pre-tokenizers whose branch sets add_bos = true.
PRE_ADD_BOS = frozenset({
    "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano",
    "tekken", "chameleon",
})
# BPE pre-tokenizers whose branch clears the default BOS id.
PRE_NO_BOS = frozenset({"chatglm-bpe", "glm4", "glm5"})
# Pre-tokenizers mapped to LLAMA_VOCAB_PRE_TYPE_GEMMA4, for which the loader forces add_bos = true.
# Architectures whose tokenizers need a BOS token at the start of every sequence.
NEEDS_BOS = ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma-embedding")
PRE_GEMMA4 = frozenset({"gemma4", "granite-embed-multi-311m"})
BPE_WITHOUT_MERGES = frozenset({"kimi-k2"})

K = Keys.Tokenizer
ADD_BOS_KEY = K.ADD_BOS
ADD_EOS_KEY = K.ADD_EOS
BOS_KEY = K.BOS_ID
EOS_KEY = K.EOS_ID


@dataclass(frozen=True)
class TokenTexts:
    """Token texts exactly as llama.cpp compares them: cut at the first NUL (a C string), and an empty
    token becomes `[EMPTY_<id>]` (the loader's substitution). Loaded from the file only when asked."""

    array: ArrayValue

    def __len__(self) -> int:
        return self.array.count

    def load(self) -> tuple[bytes, ...]:
        st = os.stat(self.array.path)
        return _load_texts(self.array, st.st_size, st.st_mtime_ns)

    def raw_bytes(self) -> bytes:
        return self.array.raw()


@functools.lru_cache(maxsize=4)
def _load_texts(array: ArrayValue, _size: int, _mtime_ns: int) -> tuple[bytes, ...]:
    return tuple(t if t and b"\0" not in t else _as_llama_text(t, i) for i, t in enumerate(array.items()))


def load_problem(vocab: "VocabInfo") -> str | None:
    """Why llama.cpp's loader would refuse or abort on this vocabulary, or None: what `read_vocab` found, then
    duplicate token texts (checked here, not at read time: it means reading every text)."""
    return "; ".join(p for p in (vocab.load_error, duplicate_problem(vocab)) if p) or None


def duplicate_problem(vocab: "VocabInfo") -> str | None:
    """Two ids with one text, which makes llama.cpp's loader abort; None when there are none."""
    if vocab.tokens is None:
        return None
    texts = vocab.tokens.load()
    dup = first_duplicate(texts)
    if dup:
        return (f"token ids {dup[0]} and {dup[1]} have the same text ({texts[dup[1]][:32]!r}): llama.cpp's "
                "loader aborts on this (GGML_ASSERT in llama_vocab::load)")
    return None


def first_duplicate(texts: tuple[bytes, ...]) -> tuple[int, int] | None:
    """The first pair of ids with the same text: llama.cpp's loader aborts on it (GGML_ASSERT)."""
    if len(set(texts)) == len(texts):
        return None
    seen: dict[bytes, int] = {}
    for i, t in enumerate(texts):
        if t in seen:
            return seen[t], i
        seen[t] = i
    return None


def _as_llama_text(raw: bytes, index: int) -> bytes:
    nul = raw.find(b"\0")
    text = raw if nul < 0 else raw[:nul]
    return text if text else b"[EMPTY_%d]" % index


@dataclass(frozen=True)
class VocabInfo:
    tokenizer_model: str | None
    vocab_type: VocabType | None  # None when llama.cpp cannot load this vocab (see load_error)
    pre: str | None
    n_tokens: int
    bos_id: int  # effective (TOKEN_NULL when none)
    eos_id: int
    add_bos: bool  # effective
    add_eos: bool
    bos_id_stored: int | None  # as stored in the GGUF (None: key missing)
    eos_id_stored: int | None
    add_bos_stored: bool | None
    add_eos_stored: bool | None
    tokens: TokenTexts | None = field(compare=False, repr=False)
    token_types: ArrayValue | None = field(compare=False, repr=False)
    load_error: str | None = None  # why llama.cpp's vocab loader would refuse this file
    overridden: tuple[str, ...] = ()  # keys whose value came from --override-kv
    notes: tuple[str, ...] = ()  # how effective values departed from stored ones
    wrong_type_keys: tuple[str, ...] = ()  # scalar keys stored with a type llama.cpp's loader refuses
    only_wrong_types: bool = False  # the load error is nothing but those keys: a metadata fix can repair it

    @property
    def vocab_type_name(self) -> str:
        return self.vocab_type.name if self.vocab_type is not None else "unloadable"


class _Meta:
    """Metadata lookups as llama_model_loader::get_key does them: an `--override-kv` of the expected kind
    wins even when the key is absent (one of another kind is ignored with a warning); a stored value of
    the wrong GGUF type makes the loader throw."""

    def __init__(self, header: GGUFHeader, overrides: Mapping[str, Any], errors: list[str]) -> None:
        self.header = header
        self.overrides = dict(overrides)
        self.errors = errors
        self.used: list[str] = []
        self.ignored: list[str] = []
        self.wrong: list[str] = []

    def get(self, key: str, expected: GGUFValueType) -> tuple[bool, Any]:
        if key in self.overrides:
            kind = _override_kind(self.overrides[key])
            if kind == _KINDS[expected]:
                self.used.append(key)
                return True, self.overrides[key]
            self.ignored.append(f"--override-kv {key} is {kind}:, llama.cpp expects {_KINDS[expected]}: and ignores it")
        entry = self.header.kv.get(key)
        if entry is None:
            return False, None
        if entry.type != expected:
            self.errors.append(f"key {key} has wrong type {entry.type.name}, llama.cpp expects {expected.name}")
            self.wrong.append(key)
            return False, None
        return True, entry.value


_KINDS = {GGUFValueType.BOOL: "bool", GGUFValueType.UINT32: "int", GGUFValueType.STRING: "str"}


def _override_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def read_vocab(header: GGUFHeader, overrides: Mapping[str, Any] | None = None) -> VocabInfo:
    """The vocabulary llama.cpp would load from `header`, with `--override-kv` values applied."""
    errors: list[str] = []
    notes: list[str] = []
    meta = _Meta(header, overrides or {}, errors)

    has_model, model = meta.get(K.MODEL, GGUFValueType.STRING)
    if not has_model and K.MODEL not in header.kv:
        errors.append(f"key {K.MODEL} is missing (llama.cpp requires it)")
    _, pre = meta.get(K.PRE, GGUFValueType.STRING)

    vocab_type: VocabType | None = None
    default_bos = default_eos = TOKEN_NULL
    if model is not None:
        if model not in TOKENIZER_MODELS:
            errors.append(f"unknown tokenizer {K.MODEL} = {model!r}")
        else:
            vocab_type, default_bos, default_eos = TOKENIZER_MODELS[model]
    if model == "gemma4":
        pre = "gemma4"  # the loader overwrites the pre-tokenizer for this tokenizer model
    if vocab_type == VocabType.BPE and K.MERGES not in header.kv and not (model != "gemma4" and pre in BPE_WITHOUT_MERGES):
        errors.append(f"BPE tokenizer without {K.MERGES}")

    tokens = None
    n_tokens = 0
    tokens_entry = header.kv.get(K.LIST)
    if vocab_type == VocabType.NONE:
        pass  # no_vocab models: llama.cpp returns before reading any token or flag
    elif tokens_entry is None:
        errors.append(f"key {K.LIST} is missing: the file has no vocabulary")
    elif tokens_entry.type != GGUFValueType.ARRAY or tokens_entry.value.item_type != GGUFValueType.STRING:
        errors.append(f"key {K.LIST} must be an array of strings")
    else:
        tokens = TokenTexts(tokens_entry.value)
        n_tokens = tokens_entry.value.count

    add_bos, add_eos = TYPE_ADD_DEFAULTS.get(vocab_type, (False, False))
    if vocab_type == VocabType.BPE:
        if pre in PRE_ADD_BOS:
            add_bos = True
        if pre in PRE_NO_BOS:
            default_bos = TOKEN_NULL

    token_types = _checked_array(header, K.TOKEN_TYPE, (GGUFValueType.INT32,), n_tokens, errors)
    _checked_array(header, K.SCORES, (GGUFValueType.FLOAT32, GGUFValueType.INT32), n_tokens, errors)

    special_ids = {}
    for key, default in ((BOS_KEY, default_bos), (EOS_KEY, default_eos)):
        value = default
        if 0 <= value and value >= n_tokens:
            value = TOKEN_NULL
        found, new = meta.get(key, GGUFValueType.UINT32)
        if found:
            new_u32 = int(new) & 0xFFFFFFFF
            if new_u32 >= n_tokens:
                notes.append(f"{key} = {new} is outside the vocabulary of {n_tokens} tokens: llama.cpp ignores it and uses {value}")
            else:
                value = new_u32
        special_ids[key] = value

    flags = {ADD_BOS_KEY: add_bos, ADD_EOS_KEY: add_eos}
    for key in (ADD_BOS_KEY, ADD_EOS_KEY):
        found, value = meta.get(key, GGUFValueType.BOOL)
        if found:
            flags[key] = bool(value)
    if vocab_type == VocabType.BPE and pre in PRE_GEMMA4 and not flags[ADD_BOS_KEY]:
        flags[ADD_BOS_KEY] = True
        notes.append(f"llama.cpp forces {ADD_BOS_KEY} to true for the Gemma 4 pre-tokenizer")

    notes.extend(dict.fromkeys(meta.ignored))
    load_error = "; ".join(errors) if errors else None
    return VocabInfo(
        tokenizer_model=model,
        vocab_type=None if load_error else vocab_type,
        pre=pre,
        n_tokens=n_tokens,
        bos_id=special_ids[BOS_KEY],
        eos_id=special_ids[EOS_KEY],
        add_bos=flags[ADD_BOS_KEY],
        add_eos=flags[ADD_EOS_KEY],
        bos_id_stored=_stored(header, BOS_KEY, GGUFValueType.UINT32),
        eos_id_stored=_stored(header, EOS_KEY, GGUFValueType.UINT32),
        add_bos_stored=_stored(header, ADD_BOS_KEY, GGUFValueType.BOOL),
        add_eos_stored=_stored(header, ADD_EOS_KEY, GGUFValueType.BOOL),
        tokens=tokens,
        token_types=token_types,
        load_error=load_error,
        overridden=tuple(dict.fromkeys(meta.used)),
        notes=tuple(notes),
        wrong_type_keys=tuple(dict.fromkeys(meta.wrong)),
        only_wrong_types=bool(errors) and len(errors) == len(meta.wrong),
    )


def _checked_array(header: GGUFHeader, key: str, item_types: tuple[GGUFValueType, ...], n_tokens: int,
                   errors: list[str]) -> ArrayValue | None:
    entry = header.kv.get(key)
    if entry is None:
        return None
    if entry.type != GGUFValueType.ARRAY or entry.value.item_type not in item_types:
        errors.append(f"key {key} must be an array of {' or '.join(t.name for t in item_types)}")
        return None
    if entry.value.count < n_tokens:
        errors.append(f"{key} has {entry.value.count} entries for {n_tokens} tokens")
        return None
    return entry.value


def _stored(header: GGUFHeader, key: str, vtype: GGUFValueType) -> Any:
    """The value stored under `key` when it has the type llama.cpp reads, else None."""
    entry = header.kv.get(key)
    return entry.value if entry is not None and entry.type == vtype else None
