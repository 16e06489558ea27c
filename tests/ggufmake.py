"""Tiny GGUF files for tests: vocab-only models that llama.cpp's loader accepts, and raw headers to break."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType as T

from ggufpair.format.writer import encode_header, encode_kv, encode_tensor_info

ARCH = "llama"
DROP = object()
"""Pass as a value to leave the key out of the file."""


def spm_tokens(n: int) -> list[str]:
    specials = ["<unk>", "<s>", "</s>"]
    bytes_ = [f"<0x{b:02X}>" for b in range(256)]
    words = [f"\u2581w{i}" for i in range(max(0, n - len(specials) - len(bytes_)))]
    return (specials + bytes_ + words)[:n]


def bpe_tokens(n: int) -> list[str]:
    base = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "\u010a", "a", "b", "ab"]
    return (base + [f"t{i}" for i in range(max(0, n - len(base)))])[:n]


def vocab_kv(tokenizer: str = "llama", n_tokens: int = 300, tokens: list[str] | None = None) -> dict[str, Any]:
    """Metadata for a loadable vocabulary: key -> (type, value[, item type])."""
    if tokens is None:
        tokens = spm_tokens(n_tokens) if tokenizer == "llama" else bpe_tokens(n_tokens)
    kv: dict[str, Any] = {
        "tokenizer.ggml.model": (T.STRING, tokenizer),
        "tokenizer.ggml.tokens": (T.ARRAY, tokens, T.STRING),
        "tokenizer.ggml.token_type": (T.ARRAY, [3 if i < 3 else 1 for i in range(len(tokens))], T.INT32),
    }
    if tokenizer == "llama":
        kv["tokenizer.ggml.scores"] = (T.ARRAY, [float(-i) for i in range(len(tokens))], T.FLOAT32)
        kv["tokenizer.ggml.bos_token_id"] = (T.UINT32, 1)
        kv["tokenizer.ggml.eos_token_id"] = (T.UINT32, 2)
        kv["tokenizer.ggml.add_bos_token"] = (T.BOOL, True)
        kv["tokenizer.ggml.add_eos_token"] = (T.BOOL, False)
    else:
        kv["tokenizer.ggml.pre"] = (T.STRING, "gpt-2")
        kv["tokenizer.ggml.merges"] = (T.ARRAY, ["a b"], T.STRING)
        kv["tokenizer.ggml.bos_token_id"] = (T.UINT32, 0)
        kv["tokenizer.ggml.eos_token_id"] = (T.UINT32, 0)
        kv["tokenizer.ggml.add_bos_token"] = (T.BOOL, False)
    return kv


def model_kv(n_layers: int = 2, n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, ctx: int = 2048,
             arch: str = ARCH, name: str = "tiny") -> dict[str, Any]:
    return {
        "general.architecture": (T.STRING, arch),
        "general.name": (T.STRING, name),
        "general.size_label": (T.STRING, "1M"),
        "general.file_type": (T.UINT32, 0),
        f"{arch}.context_length": (T.UINT32, ctx),
        f"{arch}.embedding_length": (T.UINT32, n_embd),
        f"{arch}.block_count": (T.UINT32, n_layers),
        f"{arch}.feed_forward_length": (T.UINT32, n_embd * 2),
        f"{arch}.attention.head_count": (T.UINT32, n_head),
        f"{arch}.attention.head_count_kv": (T.UINT32, n_head_kv),
        f"{arch}.attention.layer_norm_rms_epsilon": (T.FLOAT32, 1e-5),
        f"{arch}.rope.dimension_count": (T.UINT32, n_embd // n_head),
    }


def write_gguf(path: Path, kv: dict[str, Any], tensors: list[tuple[str, tuple[int, ...]]] | None = None,
               alignment: int = 32, version: int = 3) -> Path:
    """Write a GGUF file with F32 tensors of the given ggml shapes (data: ascending floats)."""
    blobs = [encode_kv(k, *v) for k, v in kv.items() if v is not DROP]
    tensors = tensors if tensors is not None else [("token_embd.weight", (8, 4)), ("output_norm.weight", (8,))]
    infos, datas, offset = [], [], 0
    for name, shape in tensors:
        n = int(np.prod(shape))
        data = np.arange(n, dtype=np.float32).tobytes()
        infos.append(encode_tensor_info(name, shape, GGMLQuantizationType.F32, offset))
        pad = (-len(data)) % alignment
        datas.append(data + b"\0" * pad)
        offset += len(data) + pad
    head = encode_header(blobs, infos, len(blobs), version)
    head += b"\0" * ((-len(head)) % alignment) if tensors else b""
    path.write_bytes(head + b"".join(datas))
    return path


def tiny_model(path: Path, tokenizer: str = "llama", n_tokens: int = 300, tokens: list[str] | None = None,
               changes: dict[str, Any] | None = None) -> Path:
    """A vocab-only-loadable model; `changes` maps keys (dots as given) to (type, value[, item type]) or DROP."""
    kv = {**model_kv(), **vocab_kv(tokenizer, n_tokens, tokens)}
    for key, value in (changes or {}).items():
        kv[key] = value
    return write_gguf(path, kv)
