"""A second opinion from llama.cpp itself: load both vocabularies with llama.cpp's own loader
(llama-cpp-python, `vocab_only`) and run `common_speculative_are_compatible`'s five checks on what it
returns.

llama.cpp aborts the whole process on some bad files (a GGML_ASSERT on duplicate token texts), so the
loads run in a child process: `python -m ggufpair.pairing.llama_oracle TARGET DRAFT [KEY=TYPE:VALUE ...]`
prints one JSON object. `llama_verdict()` wraps that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ggufpair.errors import EngineError

CHECKS = ("vocab_type", "add_bos", "add_eos", "vocab_size", "token_text")
"""llama.cpp's check order; a BOS/EOS id mismatch is reported under its add_bos/add_eos check."""


@dataclass(frozen=True)
class LlamaVerdict:
    compatible: bool
    failed_check: str | None  # one of CHECKS, or "load" when a vocabulary did not load
    detail: dict[str, Any]


def llama_verdict(target: str | Path, draft: str | Path, overrides: Mapping[str, Any] | None = None,
                  timeout: float = 300) -> LlamaVerdict:
    """llama.cpp's own verdict for the pair, computed in a child process."""
    from ggufpair.pairing.verdict import override_argument

    args = [sys.executable, "-m", "ggufpair.pairing.llama_oracle", str(target), str(draft)]
    args += [override_argument(k, v) for k, v in (overrides or {}).items()]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        if "No module named 'llama_cpp'" in proc.stderr:
            raise EngineError("`inspect --llama` needs llama-cpp-python (llama.cpp's own loader), which is not "
                              "installed: the core install leaves it out, since it compiles llama.cpp",
                              hint="pip install 'ggufpair[oracle]' (bin/ggufpair and bin/test install it)")
        # An abort inside llama.cpp (GGML_ASSERT) kills the child: that is llama.cpp's verdict too.
        return LlamaVerdict(False, "load", {"crashed": True, "returncode": proc.returncode, "stderr": proc.stderr[-2000:]})
    data = json.loads(proc.stdout)
    return LlamaVerdict(data["compatible"], data["failed_check"], data)


def _load_vocab(llama_cpp, path: str, overrides: Mapping[str, Any]):
    import ctypes

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    keep = None
    if overrides:
        keep = (llama_cpp.llama_model_kv_override * (len(overrides) + 1))()
        for i, (key, value) in enumerate(overrides.items()):
            keep[i].key = key.encode()
            if isinstance(value, bool):
                keep[i].tag, keep[i].value.val_bool = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_BOOL, value
            elif isinstance(value, int):
                keep[i].tag, keep[i].value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
            elif isinstance(value, float):
                keep[i].tag, keep[i].value.val_f64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
            else:
                keep[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
                keep[i].value.val_str = str(value).encode()[:127]
        keep[len(overrides)].key = b"\0"
        params.kv_overrides = ctypes.cast(keep, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return None, None
    return model, llama_cpp.llama_model_get_vocab(model)


def _facts(llama_cpp, vocab) -> dict[str, Any]:
    return {
        "vocab_type": int(llama_cpp.llama_vocab_type(vocab)),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "bos": int(llama_cpp.llama_vocab_bos(vocab)),
        "eos": int(llama_cpp.llama_vocab_eos(vocab)),
        "n_tokens": int(llama_cpp.llama_vocab_n_tokens(vocab)),
    }


def _main(argv: list[str]) -> int:
    os.environ.setdefault("LLAMA_LOG_LEVEL", "error")
    import llama_cpp

    llama_cpp.llama_backend_init()
    target, draft, *rest = argv
    from ggufpair.pairing.verdict import parse_override

    overrides = dict(parse_override(a) for a in rest)
    out: dict[str, Any] = {"compatible": False, "failed_check": None}
    vocabs = {}
    for role, path in (("target", target), ("draft", draft)):
        model, vocab = _load_vocab(llama_cpp, path, overrides)
        if model is None:
            out.update(failed_check="load", load_failed=role)
            print(json.dumps(out))
            return 0
        vocabs[role] = vocab
        out[role] = _facts(llama_cpp, vocab)
    t, d = out["target"], out["draft"]
    if t["vocab_type"] != d["vocab_type"]:
        out["failed_check"] = "vocab_type"
    elif t["add_bos"] != d["add_bos"] or (t["add_bos"] and t["bos"] != d["bos"]):
        out["failed_check"] = "add_bos"
    elif t["add_eos"] != d["add_eos"] or (t["add_eos"] and t["eos"] != d["eos"]):
        out["failed_check"] = "add_eos"
    elif abs(t["n_tokens"] - d["n_tokens"]) > 128:
        out["failed_check"] = "vocab_size"
    else:
        get = llama_cpp.llama_vocab_get_text
        for i in range(5, min(t["n_tokens"], d["n_tokens"])):
            if get(vocabs["target"], i) != get(vocabs["draft"], i):
                out["failed_check"] = "token_text"
                out["first_text_diff"] = i
                break
    out["compatible"] = out["failed_check"] is None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
