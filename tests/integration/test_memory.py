"""Memory estimated from metadata against llama.cpp's own reporting of a running server."""

from __future__ import annotations

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.memory import estimate_pair, kv_bytes, measured_from_log
from ggufpair.engine.runner import LlamaServer
from ggufpair.format.model_info import read_model_info

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("tkv,dkv,ctx,parallel,extra", [
    ("f16", "q4_0", 4096, 1, ()),
    ("q8_0", "f16", 1024, 2, ()),
    ("q8_0", "f16", 4096, 4, ()),  # an explicit -np: one KV stream per slot (the window no longer hides it)
    ("q8_0", "f16", 4096, 4, ("-kvu",)),  # one buffer shared by the slots
])
def test_kv_estimate_is_exact_and_total_close(tkv, dkv, ctx, parallel, extra, gemma_f16, gemma_q4, llama_server,
                                              dialect):
    config = ServerConfig(target=gemma_f16, draft=gemma_q4, draft_max=4, ctx=ctx, parallel=parallel, threads=2,
                          cache_type_k=tkv, cache_type_v=tkv, draft_cache_type_k=dkv, draft_cache_type_v=dkv,
                          flash_attn="on", extra=("-lv", "4", *extra))
    with LlamaServer(llama_server, config, dialect=dialect) as server:
        measured = measured_from_log(server.log_text())
    est = estimate_pair(read_model_info(gemma_f16), read_model_info(gemma_q4), config)
    assert measured.draft is not None
    # llama.cpp prints MiB with two decimals: equal to that precision
    assert abs(est.target.kv - measured.target.kv) < 0.02 * 2**20
    assert abs(est.draft.kv - measured.draft.kv) < 0.02 * 2**20
    assert abs(est.target.weights - measured.target.weights) < 0.05 * 2**20
    assert abs(est.total - measured.total) / measured.total < 0.05


def test_kv_layout_of_gemma3(gemma_q4):
    """Gemma 3 270M at -c 4096, one slot: 3 full layers of 4096 cells, 15 SWA layers of 1024 (log: 9.19 MiB and
    11.48 MiB with K q8_0, V f16)."""
    info = read_model_info(gemma_q4)
    k, v = kv_bytes(info, ctx=4096, parallel=1, type_k="q8_0", type_v="f16", flash_attn=True)
    assert k == int(3 * 4096 * 256 * 34 / 32 + 15 * 1024 * 256 * 34 / 32)
    assert v == 3 * 4096 * 256 * 2 + 15 * 1024 * 256 * 2
