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
               alignment: int = 32, version: int = 3, fill: np.random.Generator | None = None) -> Path:
    """Write a GGUF file with F32 tensors of the given ggml shapes (data: ascending floats, or with `fill`
    random weights a model can run on: norms 1, biases 0, matrices small normal values)."""
    blobs = [encode_kv(k, *v) for k, v in kv.items() if v is not DROP]
    tensors = tensors if tensors is not None else [("token_embd.weight", (8, 4)), ("output_norm.weight", (8,))]
    infos, datas, offset = [], [], 0
    for name, shape in tensors:
        n = int(np.prod(shape))
        if fill is None:
            data = np.arange(n, dtype=np.float32).tobytes()
        elif len(shape) == 1:
            data = np.full(n, 0.0 if name.endswith(".bias") else 1.0, dtype=np.float32).tobytes()
        else:
            data = (fill.standard_normal(n) * 0.1).astype(np.float32).tobytes()
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


# Whole tiny models with random weights that the real llama-server loads and runs: a llama target, the same
# target carrying one NextN (MTP) block (llama.cpp runs MTP for `glm4moe`, whose MTP block is an MoE layer), an
# EAGLE-3 head for the llama target, and DFlash and DSpark drafters for it. Shapes are ggml's (ne0 first), as
# `create_tensor` in the pinned llama.cpp's src/models/{llama,glm4-moe,eagle3,dflash}.cpp asks for them.

def _attn(i: int, n_embd: int, n_q: int, n_kv: int, n_in: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    n_in = n_in or n_embd
    return [(f"blk.{i}.attn_q.weight", (n_in, n_q)), (f"blk.{i}.attn_k.weight", (n_in, n_kv)),
            (f"blk.{i}.attn_v.weight", (n_in, n_kv)), (f"blk.{i}.attn_output.weight", (n_q, n_embd))]


def _ffn(i: int, n_embd: int, n_ff: int, suffix: str = "") -> list[tuple[str, tuple[int, ...]]]:
    return [(f"blk.{i}.ffn_gate{suffix}.weight", (n_embd, n_ff)), (f"blk.{i}.ffn_down{suffix}.weight", (n_ff, n_embd)),
            (f"blk.{i}.ffn_up{suffix}.weight", (n_embd, n_ff))]


def random_model(path: Path, kind: str = "llama", *, n_layers: int = 4, n_embd: int = 64, n_head: int = 4,
                 n_head_kv: int = 2, n_tokens: int = 300, seed: int = 0, target_layers: tuple[int, ...] = (1, 2, 3),
                 target_hidden: int | None = None, name: str | None = None, block_size: int | None = None,
                 sample_from_anchor: bool | None = None) -> Path:
    """`kind`: "llama" (a plain target), "mtp" (a glm4moe target whose last block is a NextN/MTP block),
    "eagle3" (a one-layer EAGLE-3 head reading `target_layers` of a target of hidden size `target_hidden`), or
    "dflash"/"dspark" (a one-layer DFlash drafter reading `target_layers` of a target of hidden size `n_embd`,
    denoising blocks of `block_size` (llama.cpp's 16 when None); "dspark" adds the Markov head)."""
    arch = {"llama": "llama", "mtp": "glm4moe", "eagle3": "eagle3", "dflash": "dflash", "dspark": "dflash"}[kind]
    n_ff, head = n_embd * 2, n_embd // n_head
    n_q, n_kv = n_head * head, n_head_kv * head
    blocks = 1 if kind in ("eagle3", "dflash", "dspark") else n_layers + (kind == "mtp")
    kv = {**model_kv(blocks, n_embd, n_head, n_head_kv, arch=arch, name=name or f"tiny-{kind}"),
          **vocab_kv("llama", n_tokens)}
    tensors: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_embd, n_tokens)),
                                                   ("output_norm.weight", (n_embd,)),
                                                   ("output.weight", (n_embd, n_tokens))]
    if kind == "llama":
        for i in range(n_layers):
            tensors += [(f"blk.{i}.attn_norm.weight", (n_embd,)), *_attn(i, n_embd, n_q, n_kv),
                        (f"blk.{i}.ffn_norm.weight", (n_embd,)), *_ffn(i, n_embd, n_ff)]
    elif kind == "mtp":
        n_expert = 2
        kv.update({f"{arch}.nextn_predict_layers": (T.UINT32, 1),
                   f"{arch}.leading_dense_block_count": (T.UINT32, n_layers),
                   f"{arch}.expert_count": (T.UINT32, n_expert), f"{arch}.expert_used_count": (T.UINT32, 1),
                   f"{arch}.expert_shared_count": (T.UINT32, 1),
                   f"{arch}.expert_feed_forward_length": (T.UINT32, n_ff)})
        for i in range(n_layers + 1):
            tensors += [(f"blk.{i}.attn_norm.weight", (n_embd,)), *_attn(i, n_embd, n_q, n_kv),
                        (f"blk.{i}.post_attention_norm.weight", (n_embd,))]
            if i < n_layers:
                tensors += _ffn(i, n_embd, n_ff)
            else:  # the MTP block: an MoE layer with a shared expert, and the NextN projections
                tensors += [(f"blk.{i}.ffn_gate_inp.weight", (n_embd, n_expert)), (f"blk.{i}.exp_probs_b.bias", (n_expert,)),
                            (f"blk.{i}.ffn_gate_exps.weight", (n_embd, n_ff, n_expert)),
                            (f"blk.{i}.ffn_down_exps.weight", (n_ff, n_embd, n_expert)),
                            (f"blk.{i}.ffn_up_exps.weight", (n_embd, n_ff, n_expert)),
                            *_ffn(i, n_embd, n_ff, "_shexp"),
                            (f"blk.{i}.nextn.eh_proj.weight", (2 * n_embd, n_embd)),
                            (f"blk.{i}.nextn.enorm.weight", (n_embd,)), (f"blk.{i}.nextn.hnorm.weight", (n_embd,))]
    elif kind in ("dflash", "dspark"):  # src/models/dflash.cpp, load_arch_tensors (no DFlash2 selector, no DSV4)
        kv.update({f"{arch}.target_layers": (T.ARRAY, list(target_layers), T.INT32),
                   "tokenizer.ggml.mask_token_id": (T.UINT32, 3)})  # the masked positions' token (llama_vocab_mask)
        if block_size is not None:
            kv[f"{arch}.block_size"] = (T.UINT32, block_size)
        if sample_from_anchor is not None:
            kv[f"{arch}.sample_from_anchor"] = (T.BOOL, sample_from_anchor)
        tensors += [("fc.weight", (len(target_layers) * n_embd, n_embd)), ("enc.output_norm.weight", (n_embd,)),
                    ("blk.0.attn_norm.weight", (n_embd,)), *_attn(0, n_embd, n_q, n_kv),
                    ("blk.0.attn_q_norm.weight", (head,)), ("blk.0.attn_k_norm.weight", (head,)),
                    ("blk.0.ffn_norm.weight", (n_embd,)), *_ffn(0, n_embd, n_ff)]
        if kind == "dspark":
            rank = 8
            tensors += [("markov_w1.weight", (rank, n_tokens)), ("markov_w2.weight", (rank, n_tokens)),
                        ("conf_proj.weight", (n_embd + rank, 1))]
    else:
        hidden = target_hidden or n_embd
        kv.update({f"{arch}.target_layers": (T.ARRAY, list(target_layers), T.INT32),
                   f"{arch}.target_hidden_size": (T.UINT32, hidden)})
        tensors += [("fc.weight", (len(target_layers) * hidden, n_embd)), ("blk.0.attn_norm.weight", (n_embd,)),
                    ("blk.0.attn_norm_2.weight", (n_embd,)), *_attn(0, n_embd, n_q, n_kv, n_in=2 * n_embd),
                    ("blk.0.ffn_norm.weight", (n_embd,)), *_ffn(0, n_embd, n_ff)]
    return write_gguf(path, kv, tensors, fill=np.random.default_rng(seed))
