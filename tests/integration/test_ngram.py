"""n-gram lookup (no draft file) against a real llama-server on the real Gemma 3 270M files: a kind live on
edit prompts with drafts counted in the timed requests, the mix of a kind with the draft model, and the
rule that no timed request is drafted from a table an earlier identical request filled."""

from __future__ import annotations

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.measure import measure
from ggufpair.engine.runner import LlamaServer, kind_statistics
from ggufpair.tune.prompts import builtin_prompts
from ggufpair.tune.sweep import run_point

pytestmark = pytest.mark.integration

EDIT = builtin_prompts(["edit"], per_category=2)


def _config(target, draft=None):
    return ServerConfig(target=target, draft=draft, ctx=2048, threads=2, draft_max=4)


def test_an_ngram_kind_drafts_live_on_edit_prompts(gemma_f16, llama_server, dialect, tmp_path):
    point = run_point(llama_server, dialect, _config(gemma_f16).with_ngram("ngram-simple", {"size_m": 16}), EDIT,
                      n_predict=48, repeats=1, log_dir=tmp_path)
    m = point.measurement
    assert point.ok, point.error
    # live: /slots said so at start (LlamaServer refuses otherwise), and these very requests drafted and accepted
    assert m.speculative and m.draft_tokens > 0 and m.accepted_tokens > 0 and m.acceptance_rate > 0
    assert m.drafts > 0 and len(m.accept_by_position) == 16  # positions up to size_m, from /metrics
    assert m.per_category["edit"]["acceptance_rate"] > 0
    assert "--spec-type ngram-simple" in " ".join(point.config.argv(dialect))


def test_an_ngram_kind_beside_the_draft_model(gemma_f16, gemma_q4, llama_server, dialect, tmp_path):
    cfg = _config(gemma_f16, gemma_q4).with_ngram("ngram-mod", {"n_min": 4, "n_max": 16}).with_(extra=("-lv", "4"))
    with LlamaServer(llama_server, cfg, dialect=dialect, log_path=tmp_path / "mix.log") as server:
        assert server.speculative is True
        m = measure(server, EDIT, n_predict=48, repeats=1)
        stats = kind_statistics(server.log_text())
    assert m.speculative and m.draft_tokens > 0 and m.accepted_tokens > 0
    # both kinds drafted in these requests: the lookup where it found a match, the draft model elsewhere
    assert stats["ngram-mod"]["drafts"] > 0 and stats["ngram-mod"]["accepted_tokens"] > 0, stats
    assert stats["draft-simple"]["drafts"] > 0 and stats["draft-simple"]["accepted_tokens"] > 0, stats
    assert sum(s["tokens"] for s in stats.values()) >= m.draft_tokens


def test_no_timed_request_is_drafted_from_a_table_an_identical_one_filled(gemma_f16, llama_server, dialect, tmp_path):
    cfg = _config(gemma_f16).with_ngram("ngram-mod", {"n_min": 4, "n_max": 16})
    prompt = EDIT[0].payload()
    # Why the rule exists: ngram-mod's table outlives a request, so the same text a second time is drafted from
    # the first one's tokens.
    with LlamaServer(llama_server, cfg, dialect=dialect, log_path=tmp_path / "twice.log") as server:
        first = server.complete(prompt, n_predict=48)
        second = server.complete(prompt, n_predict=48)
    assert not first.seen and second.seen
    assert second.draft_accepted > first.draft_accepted, (first, second)
    # On one server, repeated prompts meet their own text again: the measurement counts them...
    with LlamaServer(llama_server, cfg, dialect=dialect, log_path=tmp_path / "one.log") as server:
        same_server = measure(server, EDIT, n_predict=48, repeats=2)
    assert same_server.seen_texts == len(EDIT) and same_server.servers == 1
    # ...and the tune's measurement of a kind with a table takes a fresh server per repetition, so none does,
    # the warm-up included (its text is its own), and its second repetition drafts no more than its first
    # did: fewer accepted tokens than on one server, where the second repetition was drafted from the first.
    point = run_point(llama_server, dialect, cfg, EDIT, n_predict=48, repeats=2, log_dir=tmp_path)
    assert point.ok, point.error
    fresh = point.measurement
    assert fresh.servers == 2 and fresh.seen_texts == 0 and len(fresh.tps_runs) == 2
    assert fresh.accepted_tokens < same_server.accepted_tokens, (fresh.accepted_tokens, same_server.accepted_tokens)
