"""End to end with the real llama-server and the real Gemma 3 270M files: a draft made incompatible in each
fixable way serves without speculation before `fix`, and with speculation after it, by both routes."""

from __future__ import annotations

import pytest

from ggufpair.fix.apply import apply_plan
from ggufpair.fix.plan import RouteChoice, plan_pair_fix
from ggufpair.pairing.verdict import Route, parse_override
from tests.integration.variants import set_scalar, set_token_text, speculation_live, with_token_text

pytestmark = pytest.mark.integration

BREAKS = {
    "add_bos": lambda p: set_scalar(p, "tokenizer.ggml.add_bos_token", False),
    "add_eos": lambda p: set_scalar(p, "tokenizer.ggml.add_eos_token", True),
    "bos_id": lambda p: set_scalar(p, "tokenizer.ggml.bos_token_id", 3),
    # both at once: llama.cpp reports add_bos only, and compares the ids once the flags agree
    "add_bos_and_bos_id": lambda p: (set_scalar(p, "tokenizer.ggml.add_bos_token", False),
                                     set_scalar(p, "tokenizer.ggml.bos_token_id", 3)),
    "token_text": lambda p: set_token_text(p, 5, b"[MULTIMODAL]"),
    "token_text_in_padding": None,  # made by with_token_text: 7 bytes longer, which the header's padding absorbs
    "token_text_longer": None,  # made by with_token_text: 40 bytes longer forces a rewrite
}
LONGER = {"token_text_in_padding": b"[multimodal-longer]",
          "token_text_longer": b"[multimodal-a-text-longer-than-any-header-padding]"}
CASES = [(name, route) for name in BREAKS for route in (RouteChoice.OVERRIDE, RouteChoice.PATCH)
         if not (name.startswith("token_text") and route == RouteChoice.OVERRIDE)]


@pytest.fixture(scope="module")
def broken_drafts(gemma_q4, model_copy, llama_server, tmp_path_factory):
    """Each broken draft, checked once to serve without speculation before any fix."""
    drafts = {}
    for name, brk in BREAKS.items():
        path = model_copy(gemma_q4, f"broken-{name}.gguf") if brk else with_token_text(
            gemma_q4, tmp_path_factory.mktemp("longer") / f"broken-{name}.gguf", 5, LONGER[name])
        if brk:
            brk(path)
        live, log = speculation_live(llama_server, gemma_q4, path, log_path=tmp_path_factory.mktemp(name) / "server.log")
        assert not live, f"{name}: speculation was on before the fix"
        assert "failed to initialize speculative decoding context" in log
        drafts[name] = path
    return drafts


@pytest.mark.parametrize("name,route", CASES, ids=[f"{n}-{r.value}" for n, r in CASES])
def test_fix_turns_speculation_on(name, route, broken_drafts, gemma_q4, model_copy, llama_server, tmp_path):
    draft = model_copy(broken_drafts[name], f"{name}-{route.value}.gguf")
    plan = plan_pair_fix(draft, gemma_q4, route)
    result = apply_plan(plan)
    overrides = dict(parse_override(a) for a in result.override_args)
    if route == RouteChoice.OVERRIDE:
        assert plan.route == Route.OVERRIDE_KV and overrides
    else:
        assert result.mode == ("rewrite" if name == "token_text_longer" else "in-place")
    live, log = speculation_live(llama_server, gemma_q4, draft, overrides, tmp_path / "server.log")
    assert live, log[-3000:]


def test_draft_with_a_duplicate_text_is_repaired_from_the_target(gemma_q4, llama_server, tmp_path):
    """A draft whose token 1000 got the text of token 1001: llama-server aborts loading it; copying the
    target's text back (patch route: arrays have no --override-kv form) makes it speculate."""
    from ggufpair.errors import GgufpairError
    from ggufpair.format.reader import read_header

    text = read_header(gemma_q4).kv["tokenizer.ggml.tokens"].value.items()[1001]
    draft = with_token_text(gemma_q4, tmp_path / "duplicate.gguf", 1000, text)
    with pytest.raises(GgufpairError) as failed:
        speculation_live(llama_server, gemma_q4, draft, log_path=tmp_path / "before.log")
    log = (tmp_path / "before.log").read_text(errors="replace")
    assert "GGML_ASSERT" in log or "GGML_ASSERT" in str(failed.value), log[-3000:]
    plan = plan_pair_fix(draft, gemma_q4)
    assert plan.route == Route.PATCH and sorted(plan.array_edits["tokenizer.ggml.tokens"]) == [1000]
    apply_plan(plan)
    live, log = speculation_live(llama_server, gemma_q4, draft, log_path=tmp_path / "after.log")
    assert live, log[-3000:]
