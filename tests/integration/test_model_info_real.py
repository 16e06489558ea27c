"""ModelInfo of the real models agrees with llama.cpp's own full model load (llama-cpp-python)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ggufpair.format.model_info import read_model_info

pytestmark = pytest.mark.integration

_PROBE = """
import json, sys, llama_cpp
llama_cpp.llama_backend_init()
m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), llama_cpp.llama_model_default_params())
print(json.dumps({"n_params": llama_cpp.llama_model_n_params(m), "size": llama_cpp.llama_model_size(m),
                  "n_layer": llama_cpp.llama_model_n_layer(m), "n_embd": llama_cpp.llama_model_n_embd(m),
                  "n_head": llama_cpp.llama_model_n_head(m), "n_ctx_train": llama_cpp.llama_model_n_ctx_train(m)}))
"""


def _llama_facts(path) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("fixture", ["gemma_q4", "smollm2"])
def test_counts_from_tensor_infos_match_llama_cpp(fixture, request):
    path = request.getfixturevalue(fixture)
    info = read_model_info(path)
    facts = _llama_facts(path)
    assert info.parameter_count == facts["n_params"]
    assert info.weight_bytes == facts["size"]
    assert (info.n_layers, info.n_embd, info.n_head[0], info.context_length) == (
        facts["n_layer"], facts["n_embd"], facts["n_head"], facts["n_ctx_train"])


def test_gemma3_attention_layout(gemma_q4):
    info = read_model_info(gemma_q4)
    assert (info.architecture, info.quant, info.size_label) == ("gemma3", "Q4_K_M", "270M")
    assert (info.n_head_kv[0], info.head_dim_k, info.head_dim_v, info.sliding_window) == (1, 256, 256, 512)
    # llama.cpp's load log: is_swa = 0 on layers 5, 11 and 17 (pattern 6)
    assert info.swa_layers == tuple(i for i in range(18) if i % 6 < 5)
    assert info.draft_kind is None and not info.has_chat_template
