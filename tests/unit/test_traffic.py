"""Serving conditions as data: concurrency levels and sampling in the search (a scripted engine: at 4
requests at once the draft's extra work no longer pays, as llama.cpp users report), what the profile keeps,
the recommendation's words, and the usage errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import parse_help
from ggufpair.engine.measure import Measurement, Prompt
from ggufpair.engine.traffic import Sampling, level_config, parse_concurrency
from ggufpair.errors import UsageError
from ggufpair.format.model_info import read_model_info
from ggufpair.tune import search
from ggufpair.tune.run import point_dict, recommendation_text
from ggufpair.tune.search import TuneSpec, tune
from ggufpair.tune.sweep import PointResult, config_label
from tests.ggufmake import model_kv, vocab_kv, write_gguf

HELP = Path(__file__).resolve().parent.parent / "fixtures" / "help"
NEW = parse_help((HELP / "llama-server-11434-spec.txt").read_text())
OLD = parse_help((HELP / "llama-server-2026-ngram-spec.txt").read_text())
PROMPTS = tuple(Prompt(f"p{i}", "chat", ({"role": "user", "content": f"question {i}"},)) for i in range(4))
MANY = tuple(Prompt(f"q{i}", "chat", ({"role": "user", "content": f"question {i}"},)) for i in range(64))


def _rate(c: ServerConfig) -> float:
    """Aggregate tok/s: one request alone is 30 without a draft, 45 with one; four at once share the machine
    better without the draft (100 against 80); probabilistic drafts are accepted more at a temperature."""
    if not c.has_draft:
        return 30.0 if c.parallel == 1 else 100.0
    rate = 45.0 if c.parallel == 1 else 80.0
    return rate * (1.1 if c.draft_sampling == "probabilistic" else 1.0)


@pytest.fixture
def engine(monkeypatch):
    launched: list[tuple[ServerConfig, Sampling | None]] = []

    def run_point(binary, dialect, config, prompts, **kw):
        config.argv(dialect)
        launched.append((config, kw.get("sampling")))
        tps = _rate(config)
        drafted = config.has_draft
        m = Measurement(drafted, tps, (tps * 0.99, tps * 1.01), 400, 100 if drafted else 0, 70 if drafted else 0,
                        30 if drafted else 0, (0.8, 0.6, 0.4, 0.3) if drafted else (), predicted_ms=396 / tps * 1000,
                        request_tps=(tps / config.parallel,) * 4, concurrency=config.parallel,
                        ttft_ms=(20.0 * config.parallel,) * 4, request_drafts=(25,) * 4 if drafted else (0,) * 4)
        return PointResult(config, m, None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    return launched


def _pair(tmp_path):
    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(n_layers=2), **vocab_kv()})
    return t, d, read_model_info(t), read_model_info(d)


def test_the_best_is_measured_again_at_each_level_and_the_answer_says_where_it_differs(engine, tmp_path):
    t, d, ti, di = _pair(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2, 4), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, concurrency=(1, 4))
    result = tune(None, NEW, spec, ti, di, tmp_path)
    at4 = [c for c, _ in engine if c.parallel == 4]
    assert at4 and all(c.ctx == 4096 for c in at4)  # four slots, each with the per-request context
    assert {c.has_draft for c in at4} == {True, False}  # the baseline and the best draft, again at 4
    assert result.level == 1 and result.levels == [1, 4]
    assert result.recommended.config.has_draft and result.recommended.config.parallel == 1
    assert not result.at(4).recommended.config.has_draft
    text = recommendation_text(result)
    assert text.startswith("for one request at a time: ")
    assert "At 4 requests at once the best differs: no draft" in text
    assert len(engine) <= spec.planned_launches(True)
    points = [point_dict(p) for p in result.points]
    assert {p["concurrency"] for p in points} == {1, 4}
    assert all(p["ttft_ms_median"] == 20.0 * p["concurrency"] for p in points)


def test_the_first_level_is_the_one_the_recommendation_is_for(engine, tmp_path):
    t, d, ti, di = _pair(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2, 4), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, concurrency=(4, 1))
    result = tune(None, NEW, spec, ti, di, tmp_path)
    assert result.level == 4 and not result.recommended.config.speculates and result.recommended.config.parallel == 4
    assert "for 4 requests at once: no draft" in recommendation_text(result)
    assert "At one request at a time the best differs" in recommendation_text(result)


def test_a_level_above_what_memory_allows_is_pruned_before_launch(engine, tmp_path):
    from ggufpair.engine.memory import estimate_pair

    t, d, ti, di = _pair(tmp_path)
    base = ServerConfig(target=t, draft=d, ctx=1024)
    one = estimate_pair(ti, di, level_config(base, 1, 1024).with_(draft_max=4), "cpu").total
    many = estimate_pair(ti, None, level_config(base, 64, 1024).without_draft(), "cpu").total
    assert many > one
    spec = TuneSpec(base=base, lengths=(2, 4), target_kv=("f16",), draft_kv=("f16",),
                    prompts=MANY, concurrency=(1, 64), budget_bytes=(one + many) // 2)
    result = tune(None, NEW, spec, ti, di, tmp_path)
    assert not any(c.parallel == 64 for c, _ in engine)
    pruned = [(what, why) for what, why in result.pruned if "64 requests at once" in what]
    assert pruned and all("the budget is" in why for _, why in pruned)


def test_at_a_temperature_probabilistic_drafts_are_measured_beside_greedy_ones(engine, tmp_path):
    t, d, ti, di = _pair(tmp_path)
    sampling = Sampling(temperature=0.8, top_p=0.95, seed=7)
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2, 4), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, sampling=sampling)
    result = tune(None, NEW, spec, ti, di, tmp_path)
    assert all(s == sampling for _, s in engine)  # every request at the user's sampling
    prob = [c for c, _ in engine if c.draft_sampling == "probabilistic"]
    assert len(prob) == 1 and "--spec-draft-sampling" in prob[0].argv(NEW)
    assert "(probabilistic)" in config_label(prob[0])
    assert result.recommended.config.draft_sampling == "probabilistic"
    assert "no lossless check" in recommendation_text(result) and "temperature 0.8" in recommendation_text(result)
    engine.clear()
    # a build without the flag: drafts stay greedy, and it is said
    said: list[str] = []
    tune(None, OLD, spec, ti, di, tmp_path, said.append)
    assert not any(c.draft_sampling for c, _ in engine)
    assert any("no --spec-draft-sampling" in m for m in said)


def test_bad_traffic_values_are_usage_errors(tmp_path):
    for bad in ("0", "1,x", "65", ""):
        with pytest.raises(UsageError, match="--concurrency"):
            parse_concurrency(bad)
    assert parse_concurrency("4,1,4") == (4, 1)
    for kw, flag in (({"temperature": -0.1}, "--temperature"), ({"temperature": 9}, "--temperature"),
                     ({"top_p": 0}, "--top-p"), ({"top_p": 1.5}, "--top-p"), ({"top_k": -1}, "--top-k")):
        with pytest.raises(UsageError, match=flag):
            Sampling(**kw)
    assert Sampling(0.7, 0.9, 40, 3).body() == {"temperature": 0.7, "seed": 3, "top_p": 0.9, "top_k": 40}
    assert Sampling.from_dict(Sampling(0.7, 0.9).to_dict()) == Sampling(0.7, 0.9)
    t, d, ti, di = _pair(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2,), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, concurrency=(1, 8))
    with pytest.raises(UsageError, match="needs at least that many distinct prompts"):
        tune(None, NEW, spec, ti, di, tmp_path)
    with pytest.raises(UsageError, match="the prompt set has 4"):  # the same four prompts twice are still four
        tune(None, NEW, replace(spec, prompts=PROMPTS * 2, concurrency=(1, 5)), ti, di, tmp_path)


def test_a_time_budget_stops_launching_and_says_what_it_left_out(monkeypatch, tmp_path):
    """Each scripted launch takes 40 s of a clock the test moves; a 100 s budget holds the f16 baseline and
    the long draft run (the third would end at 120 s; the q8_0 baseline waits for its own draft runs), lists
    the rest as not measured, and still recommends."""
    clock = [0.0]
    monkeypatch.setattr(search.time, "perf_counter", lambda: clock[0])

    def run_point(binary, dialect, config, prompts, **kw):
        clock[0] += 40.0
        tps = 45.0 if config.has_draft else 30.0
        q = (0.8, 0.6) if config.has_draft else ()
        m = Measurement(bool(q), tps, (tps, tps), 400, 100 if q else 0, 70 if q else 0, 30 if q else 0, q,
                        predicted_ms=396 / tps * 1000, request_tps=(tps,) * 4)
        return PointResult(config, m, None, 40.0)

    monkeypatch.setattr(search, "run_point", run_point)
    t, d, ti, di = _pair(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2, 4, 8), target_kv=("f16", "q8_0"),
                    draft_kv=("f16",), prompts=PROMPTS, budget_seconds=100)
    said: list[str] = []
    result = tune(None, NEW, spec, ti, di, tmp_path, said.append)
    assert len(result.points) == 2 and clock[0] <= 100 + 40  # give or take one launch
    assert [p.config.has_draft for p in result.points] == [False, True]
    assert result.unmeasured and len(result.points) + len(result.unmeasured) <= spec.planned_launches(True)
    assert any("time budget" in m for m in said)
    assert result.recommended is not None
    text = recommendation_text(result)
    assert f"The time budget was spent before {len(result.unmeasured)} planned launch" in text
    from ggufpair.cli.tune_cmds import parse_duration

    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration("600") == 600
    for bad in ("soon", "5s", "m"):
        with pytest.raises(UsageError, match="--budget"):
            parse_duration(bad)


def test_lookup_over_answers_that_repeat_themselves_is_said():
    from ggufpair.tune.result import TuneResult
    from ggufpair.tune.run import repetition_note, self_repetition

    loop = "the cat sat on the mat and " * 8
    assert self_repetition(loop) > 0.7 and self_repetition("one two three four five six seven eight") == 0.0
    cfg = ServerConfig(target=Path("t.gguf"), ctx=1024)

    def point(c, tps, outputs=()):
        q = (0.9,) if c.speculates else ()
        return PointResult(c, Measurement(bool(q), tps, (tps, tps), 100, 10 * len(q), 9 * len(q), len(q), q,
                                          outputs=outputs), None, 1.0)

    result = TuneResult(points=[point(cfg, 30.0, (("a", loop), ("b", loop), ("c", "a plain answer without loops"))),
                                point(cfg.with_ngram("ngram-simple"), 90.0)])
    assert result.recommended.config.ngram == "ngram-simple"
    note = repetition_note(result)
    assert "of 3 greedy answers, 2 repeat themselves" in note and "expect less" in note
    plain = TuneResult(points=[point(cfg, 30.0, (("a", "a plain answer without any loops at all"),)),
                               point(cfg.with_ngram("ngram-simple"), 90.0)])
    assert repetition_note(plain) == ""
    # a base model echoing the chat turns copies its prompt: said too, for the built-in prompts whose task is
    # not to copy (an edit or a summary is; a user's own prompts are theirs to judge)
    from dataclasses import replace as changed

    from ggufpair.tune.prompts import builtin_prompts
    from ggufpair.tune.run import prompt_copy

    chat, _, edit = builtin_prompts(["chat", "edit"], per_category=2)[:3]
    ask = chat.messages[0]["content"]
    echo = f"{ask}<|im_end|>\n<|im_start|>assistant\nThe"  # as a new user saw it, once: no loop
    assert self_repetition(echo) < 0.5 and prompt_copy(echo, ask) >= 0.5
    assert prompt_copy("Red, green and blue are three colours.", "Name three colours.") < 0.5

    def echoing(outputs, prompts):
        r = TuneResult(points=[point(cfg, 30.0, outputs), point(cfg.with_ngram("ngram-simple"), 90.0)])
        r.prompts = prompts
        return repetition_note(r)

    other = builtin_prompts(["chat"], per_category=2)[1]
    note = echoing(((chat.id, echo), (other.id, "A plain answer of its own words.")), [chat, other])
    assert "of 2 greedy answers, 1 copies its prompt" in note, note
    edit_echo = f"{edit.messages[0]['content']}<|im_end|>"
    assert echoing(((edit.id, edit_echo), (other.id, "A plain answer.")), [edit, other]) == ""  # meant to copy
    mine = changed(chat, id="support-0", category="support")  # a user's own prompt: not judged
    assert echoing(((mine.id, echo), (other.id, "A plain answer.")), [mine, other]) == ""
