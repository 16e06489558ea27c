"""Plain-data forms of core results, for `--json` and saved files (no UI library here)."""

from __future__ import annotations

import enum
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from ggufpair.format.model_info import ModelInfo
from ggufpair.pairing.verdict import Verdict


def plain(value: Any) -> Any:
    """Dataclasses, enums, paths and bytes as JSON-ready values."""
    if isinstance(value, enum.Enum):
        return value.value if not isinstance(value, int) else value.name
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def model_dict(info: ModelInfo) -> dict[str, Any]:
    v = info.vocab
    return {
        "path": str(info.path),
        "shards": [str(p) for p in info.shards],
        "file_size": info.file_size,
        "gguf_version": info.gguf_version,
        "architecture": info.architecture,
        "name": info.name,
        "basename": info.basename,
        "size_label": info.size_label,
        "finetune": info.finetune,
        "quant": info.quant,
        "file_type": info.file_type,
        "parameter_count": info.parameter_count,
        "weight_bytes": info.weight_bytes,
        "n_layers": info.n_layers,
        "n_embd": info.n_embd,
        "n_head": list(info.n_head),
        "n_head_kv": list(info.n_head_kv),
        "head_dim_k": info.head_dim_k,
        "head_dim_v": info.head_dim_v,
        "head_dim_k_swa": info.head_dim_k_swa,
        "head_dim_v_swa": info.head_dim_v_swa,
        "sliding_window": info.sliding_window,
        "swa_layers": list(info.swa_layers),
        "shared_kv_layers": info.shared_kv_layers,
        "context_length": info.context_length,
        "chat_template_sha256": info.chat_template_sha256,
        "draft_kind": info.draft_kind,
        "vocab": {
            "tokenizer_model": v.tokenizer_model,
            "vocab_type": v.vocab_type_name,
            "pre": v.pre,
            "n_tokens": v.n_tokens,
            "bos_id": v.bos_id,
            "eos_id": v.eos_id,
            "add_bos": v.add_bos,
            "add_eos": v.add_eos,
            "stored": {"bos_id": v.bos_id_stored, "eos_id": v.eos_id_stored,
                       "add_bos": v.add_bos_stored, "add_eos": v.add_eos_stored},
            "load_error": v.load_error,
            "overridden": list(v.overridden),
            "notes": list(v.notes),
        },
    }


def verdict_dict(verdict: Verdict) -> dict[str, Any]:
    return {
        "compatible": verdict.compatible,
        "summary": verdict.summary,
        "llama_check": verdict.llama_check,
        "overrides": dict(verdict.overrides),
        "findings": [plain(f) for f in verdict.findings],
        "target": model_dict(verdict.as_loaded()[0]),  # with --override-kv: the values llama.cpp will use
        "draft": model_dict(verdict.as_loaded()[1]),
    }


def plan_dict(plan) -> dict[str, Any]:
    """A fix plan as JSON: array values are summarised (their length, and the ids that change with their old
    and new values) instead of two copies of a 262k-token vocabulary."""
    changes = []
    for c in plan.changes:
        d = {"key": c.key, "action": plain(c.action), "type": plain(c.type), "reason": c.reason}
        edits = plan.array_edits.get(c.key)
        if edits is not None or isinstance(c.new, (list, tuple)) or isinstance(c.old, (list, tuple)):
            d["items"] = len(c.new) if isinstance(c.new, (list, tuple)) else None
            d["changed_ids"] = {str(i): {"old": plain(old), "new": plain(new)} for i, (old, new) in sorted((edits or {}).items())}
        else:
            d["old"], d["new"] = plain(c.old), plain(c.new)
        changes.append(d)
    return {"path": str(plan.path), "route": plain(plan.route), "why": plan.why, "changes": changes,
            "override_args": list(plan.override_args), "unfixable": list(plan.unfixable),
            "reference": str(plan.reference) if plan.reference else None}
