"""For a handful of real drafts, ggufpair's verdict equals what a real llama-server does: `/slots`
reports speculation on exactly when ggufpair says the pair is compatible."""

from __future__ import annotations

import pytest

from ggufpair.pairing.verdict import inspect_pair
from tests.integration.variants import set_scalar, set_token_text, speculation_live

pytestmark = pytest.mark.integration

ADD_BOS = "tokenizer.ggml.add_bos_token"
ADD_EOS = "tokenizer.ggml.add_eos_token"
EOS = "tokenizer.ggml.eos_token_id"

# name, patch of the draft copy, overrides, compatible?
VARIANTS = [
    ("same_file", None, {}, True),
    ("add_bos_false", lambda p: set_scalar(p, ADD_BOS, False), {}, False),
    ("add_bos_false_with_override", lambda p: set_scalar(p, ADD_BOS, False), {ADD_BOS: True}, True),
    ("add_eos_true", lambda p: set_scalar(p, ADD_EOS, True), {}, False),
    ("eos_id_differs_without_add_eos", lambda p: set_scalar(p, EOS, 3), {}, True),
    ("text_differs_at_id_4", lambda p: set_token_text(p, 4, b"<MASK>"), {}, True),
    ("text_differs_at_id_5", lambda p: set_token_text(p, 5, b"[MULTIMODAL]"), {}, False),
]


@pytest.mark.parametrize("name,patch,overrides,compatible", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_server_speculates_exactly_when_verdict_says_so(name, patch, overrides, compatible, gemma_q4, model_copy,
                                                        llama_server, tmp_path):
    draft = gemma_q4
    if patch is not None:
        draft = model_copy(gemma_q4, f"{name}.gguf")
        patch(draft)
    verdict = inspect_pair(gemma_q4, draft, overrides)
    assert verdict.compatible == compatible, verdict.summary
    live, log = speculation_live(llama_server, gemma_q4, draft, overrides, tmp_path / "server.log")
    assert live == verdict.compatible, log[-3000:]
    if not compatible:
        assert "failed to initialize speculative decoding context" in log or "not compatible" in log, log[-3000:]
