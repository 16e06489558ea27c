"""Serving conditions on a real llama-server with the demo pair (F16 Gemma 3 270M target, its Q4_K_M as the
draft): two requests in flight at once with speculation live in both slots, and sampling at a temperature
with llama.cpp's probabilistic draft verification (acceptance reported, no greedy identity to check)."""

from __future__ import annotations

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.runner import LlamaServer
from ggufpair.engine.traffic import Sampling, level_config
from ggufpair.tune.prompts import builtin_prompts
from ggufpair.tune.sweep import run_point

pytestmark = pytest.mark.integration

CHAT = builtin_prompts(["chat", "code"], per_category=2)


def _pair(target, draft):
    return ServerConfig(target=target, draft=draft, ctx=1024, threads=2, draft_max=4)


def test_two_requests_at_once_speculate_in_both_slots(gemma_f16, gemma_q4, llama_server, dialect, tmp_path):
    cfg = level_config(_pair(gemma_f16, gemma_q4), 2, 1024)
    assert cfg.parallel == 2 and cfg.ctx == 2048 and "-np 2" in " ".join(cfg.argv(dialect))
    with LlamaServer(llama_server, cfg, dialect=dialect, log_path=tmp_path / "np2.log") as server:
        slots = server.process.get_json("/slots")
        assert len(slots) == 2 and all(s["speculative"] for s in slots)
    point = run_point(llama_server, dialect, cfg, CHAT, n_predict=32, repeats=1, log_dir=tmp_path)
    m = point.measurement
    assert point.ok, point.error
    assert m.concurrency == 2 and m.speculative and m.acceptance_rate > 0
    # every request drafted: speculation was live in whichever slot served it, two at a time
    assert len(m.request_drafts) == len(CHAT) and all(n > 0 for n in m.request_drafts), m.request_drafts
    assert len(m.ttft_ms) == len(CHAT) and all(t > 0 for t in m.ttft_ms)
    # the aggregate rate is over wall-clock time, so it cannot exceed the sum of the two slots' own rates
    assert 0 < m.tokens_per_second <= 2 * max(m.request_tps) * 1.05


def test_sampling_at_a_temperature_with_probabilistic_drafts(gemma_f16, gemma_q4, llama_server, dialect, tmp_path):
    if not dialect.has("--spec-draft-sampling"):
        pytest.skip("this llama-server build has no --spec-draft-sampling")
    sampling = Sampling(temperature=0.8, top_p=0.95, seed=11)
    cfg = _pair(gemma_f16, gemma_q4).with_(draft_sampling="probabilistic")
    assert "--spec-draft-sampling probabilistic" in " ".join(cfg.argv(dialect))
    point = run_point(llama_server, dialect, cfg, CHAT[:2], n_predict=32, repeats=1, log_dir=tmp_path,
                      sampling=sampling)
    m = point.measurement
    assert point.ok, point.error
    assert m.speculative and m.draft_tokens > 0 and m.acceptance_rate is not None
    assert m.outputs == ()  # sampled answers: nothing for a greedy lossless comparison to hold on to


def test_a_long_prompt_reports_prefill_and_generation_apart(gemma_f16, gemma_q4, llama_server, dialect, tmp_path):
    from ggufpair.tune.prompts import long_prompts

    prompts = long_prompts(1000, count=1)
    point = run_point(llama_server, dialect, _pair(gemma_f16, gemma_q4).with_(ctx=2048), prompts, n_predict=16,
                      repeats=1, log_dir=tmp_path)
    m = point.measurement
    assert point.ok, point.error
    assert m.speculative and m.draft_tokens > 0
    long = m.per_category["long"]
    assert 700 < long["prompt_tokens"] < 2000, long  # the document, as the target's tokenizer counts it
    assert long["prefill_tokens_per_second"] > 0 and long["tokens_per_second"] > 0
    # prefill is far faster per token than generation (a batch against one token a step), so they are apart
    assert long["prefill_tokens_per_second"] > 2 * long["tokens_per_second"]
    assert m.prefill_tps == pytest.approx(m.prompt_tokens / (m.prompt_ms / 1000))
