"""Several model drafters in one tune (a scripted engine): each measured alone with its own length search and
p_min values, ranked with speed, acceptance and memory, every point naming its draft file, and the answer
saying what the smaller draft costs."""

from __future__ import annotations

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.measure import Measurement
from ggufpair.format.model_info import read_model_info
from ggufpair.tune import search
from ggufpair.tune.run import point_dict, recommendation_text
from ggufpair.tune.search import DraftChoice, TuneSpec, tune
from ggufpair.tune.sweep import draft_tag, point_name
from tests.ggufmake import model_kv, vocab_kv, write_gguf
from tests.unit.test_traffic import NEW, PROMPTS


@pytest.fixture
def engine(monkeypatch):
    launched: list[ServerConfig] = []

    def run_point(binary, dialect, config, prompts, **kw):
        config.argv(dialect)
        launched.append(config)
        if not config.has_draft:
            tps, q = 30.0, ()
        else:  # the big draft accepts more; p_min 0.5 helps the small one a little
            big = "big" in config.draft.name
            tps = (48.0 if big else 42.0) - abs(config.draft_max - 4) + (1.5 if config.p_min and not big else 0.0)
            q = tuple((0.9 if big else 0.8) ** (i + 1) for i in range(config.draft_max))
        m = Measurement(bool(q), tps, (tps * 0.995, tps * 1.005), 400, 100 if q else 0, 70 if q else 0, 30 if q else 0,
                        q, predicted_ms=396 / tps * 1000, request_tps=(tps,) * 4)
        return search.PointResult(config, m, None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    return launched


def test_two_drafts_are_ranked_and_the_smaller_ones_cost_is_said(engine, tmp_path):
    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    big = write_gguf(tmp_path / "draft-big.gguf", {**model_kv(n_layers=4), **vocab_kv()}, [("blk.0.w", (256, 256))])
    small = write_gguf(tmp_path / "draft-small.gguf", {**model_kv(n_layers=2), **vocab_kv()})
    assert small.stat().st_size < big.stat().st_size
    spec = TuneSpec(base=ServerConfig(target=t, draft=big, ctx=1024), lengths=(2, 4, 8), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, p_min=(0.0, 0.5),
                    more_drafts=(DraftChoice(read_model_info(small)),))
    result = tune(None, NEW, spec, read_model_info(t), read_model_info(big), tmp_path)
    drafted = [c for c in engine if c.has_draft]
    assert {c.draft for c in drafted} == {big, small}
    assert len(engine) <= spec.planned_launches(True)
    # each draft had its own search: a long and a short run, and its p_min value on its best length
    for d in (big, small):
        mine = [c for c in drafted if c.draft == d]
        assert {2, 8} <= {c.draft_max for c in mine} and any(c.p_min == 0.5 for c in mine)
    # no two draft runs share a log: with several drafts each log starts with its draft's tag
    assert len({(draft_tag(c.draft), point_name(c)) for c in drafted}) == len(drafted)
    assert draft_tag(big) != draft_tag(small) and draft_tag(big).startswith("draft-big-")
    ranked = result.drafters()
    assert [p.config.draft for p in ranked] == [big, small]
    assert ranked[1].config.p_min == 0.5  # the small draft's best is with p_min 0.5
    assert result.recommended.config.draft == big
    text = recommendation_text(result)
    assert text.startswith("draft-big.gguf: n_max 2")  # within the noise of n_max 4's 48.0: the shorter one
    assert "Drafts ranked: draft-big.gguf 48.0 tok/s at n_max 4" in text and "draft-small.gguf 43.5 tok/s" in text
    assert "The smaller draft-small.gguf (" in text and "KiB less on disk) costs 9% of the speed" in text
    points = [point_dict(p) for p in result.points]
    assert all(p["draft"] in (str(big), str(small)) for p in points if p["kind"] == "draft")
    assert all("draft" not in p for p in points if p["kind"] == "none")


def test_draft_auto_with_no_compatible_local_draft_is_a_clear_usage_error(tmp_path, monkeypatch, capsys):
    from ggufpair.cli.main import main

    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("GGUFPAIR_MODEL_DIRS", str(folder))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-empty"))
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    t = write_gguf(folder / "t.gguf", {**model_kv(), **vocab_kv()})
    assert main(["tune", "--target", str(t), "--draft", "auto", "--kinds", "draft"]) == 2
    err = capsys.readouterr().err
    assert "--draft auto: no local file would serve t.gguf as a draft" in err


def test_a_drafter_that_cannot_reach_the_lead_even_accepting_everything_is_not_searched(monkeypatch, tmp_path):
    """n-gram lookup runs first and reaches 100 tok/s; a draft whose steps cost 40 ms + 20 ms per drafted token
    would reach at most 1000 * 9 / 200 = 45 tok/s at n_max 8 were every token accepted, so after its long and
    short runs (its acceptance by position, for the table) its other lengths and p_min are not launched."""
    from ggufpair.tune.predict import ceiling

    launched: list[ServerConfig] = []

    def measurement(step_ms: float, tokens_per_step: float, n: int, drafting: bool) -> Measurement:
        steps = 100
        predicted = int(steps * tokens_per_step) + 4  # + each of 4 answers' first token
        accepted = predicted - 4 - steps
        q = tuple(0.5 ** (i + 1) for i in range(n)) if drafting else ()
        tps = 1000.0 * tokens_per_step / step_ms
        return Measurement(drafting, tps, (tps, tps), predicted, steps * n if drafting else 0,
                           accepted if drafting else 0, steps if drafting else 0, q,
                           predicted_ms=steps * step_ms, request_tps=(tps,) * 4)

    def run_point(binary, dialect, config, prompts, **kw):
        config.argv(dialect)
        launched.append(config)
        if config.ngram is not None:
            m = measurement(30.0, 3.0, 8, True)  # 100 tok/s
        elif config.has_draft:
            n = config.draft_max
            m = measurement(40.0 + 20.0 * n, 1.0 + sum(0.5 ** (i + 1) for i in range(n)), n, True)
        else:
            m = measurement(40.0, 1.0, 0, False)
        return search.PointResult(config, m, None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    t = write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()})
    d = write_gguf(tmp_path / "d.gguf", {**model_kv(n_layers=2), **vocab_kv()})
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2, 4, 8), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, p_min=(0.0, 0.5), ngram_kinds=("ngram-simple",), mix=False)
    result = tune(None, NEW, spec, read_model_info(t), read_model_info(d), tmp_path)
    drafted = [c for c in launched if c.has_draft]
    assert sorted(c.draft_max for c in drafted) == [4, 8] and not any(c.p_min for c in drafted)
    assert launched.index(drafted[0]) > min(i for i, c in enumerate(launched) if c.ngram is not None)
    why = dict(result.pruned)["d.gguf: KV f16/f16"]  # named, though the only drafter
    assert "at most 45.0 tok/s (n_max 8)" in why and "at 100.0" in why
    assert result.recommended.config.ngram == "ngram-simple"
    # the bound itself: the runs' measured step costs, n + 1 tokens a step
    runs = [(n, measurement(40.0 + 20.0 * n, 1.2, n, True)) for n in (4, 8)]
    assert ceiling(runs, 40.0, (2, 4, 8)) == (8, pytest.approx(45.0, rel=0.02))
    assert ceiling(runs, 40.0, (2,)) == (2, pytest.approx(1000 * 3 / 80, rel=0.02))  # interpolated to n = 2
    # a drafter at the lead's speed is searched as before: the bound only removes what cannot win
    spec_fast = TuneSpec(base=spec.base, lengths=(2, 4, 8), target_kv=("f16",), draft_kv=("f16",), prompts=PROMPTS,
                         p_min=(0.0, 0.5))
    launched.clear()
    tune(None, NEW, spec_fast, read_model_info(t), read_model_info(d), tmp_path / "2")
    assert any(c.p_min == 0.5 for c in launched) and 2 in {c.draft_max for c in launched if c.has_draft}
