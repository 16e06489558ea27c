"""The tune's n-gram stage with a scripted engine (the real-server tests are in tests/integration): every
kind scouted at its defaults, kinds that draft nothing or trail pruned with the reason, the finalists'
lengths predicted and confirmed, the mix with the draft where the build can run one, the per-category
winners and what the profile keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import parse_help
from ggufpair.engine.kinds import KINDS
from ggufpair.engine.measure import Measurement
from ggufpair.format.model_info import read_model_info
from ggufpair.tune import search
from ggufpair.tune.run import kind_of, point_dict, recommendation_text
from ggufpair.tune.search import TuneResult, TuneSpec, tune
from ggufpair.tune.sweep import PointResult
from tests.ggufmake import model_kv, vocab_kv, write_gguf

HELP = Path(__file__).resolve().parent.parent / "fixtures" / "help"
NEW = parse_help((HELP / "llama-server-11434-spec.txt").read_text())
MID = parse_help((HELP / "llama-server-2026-ngram-spec.txt").read_text())


def _rate(c: ServerConfig) -> tuple[float, float, bool]:
    """(edit tok/s, chat tok/s, drafted) of the scripted engine: lookup pays on edit prompts only, ngram-simple
    most at a short draft, the map kinds never find a match, the draft model is slower than none."""
    if c.ngram in ("ngram-map-k", "ngram-map-k4v"):
        return 30.0, 30.0, False
    if c.ngram == "ngram-simple":
        v = c.ngram_values
        edit = {8: 70.0, 16: 80.0, 32: 66.0, 48: 60.0}[v["size_m"]] + (4.0 if v["size_n"] == 8 else 0.0)
        return edit, 31.0, True
    if c.ngram == "ngram-mod":
        return 55.0 + (5.0 if c.ngram_values["n_min"] < 48 else 0.0), 30.0, True
    if c.ngram == "ngram-cache":
        return 50.0, 30.0, True
    if c.has_draft:
        return 26.0, 26.0, True
    return 30.0, 30.0, False


def _measurement(c: ServerConfig) -> Measurement:
    edit, chat, drafted = _rate(c)
    if c.ngram and c.has_draft:
        edit, chat = edit * 0.9, chat * 0.9
    tps = 2 / (1 / edit + 1 / chat)
    n = (c.ngram_values.get("size_m") or c.ngram_values.get("n_max") or 8) if c.ngram else c.draft_max
    q = tuple(0.9 * 0.97 ** i for i in range(n)) if drafted else ()
    tokens = 400
    return Measurement(drafted, tps, (tps * 0.99, tps * 1.01), tokens, 120 if drafted else 0, 90 if drafted else 0,
                       20 if drafted else 0, q, {"edit": {"tokens_per_second": edit}, "chat": {"tokens_per_second": chat}},
                       predicted_ms=(tokens - 4) / tps * 1000, request_tps=(tps,) * 4)


@pytest.fixture
def engine(monkeypatch):
    launched: list[ServerConfig] = []

    def run_point(binary, dialect, config, prompts, **kw):
        config.argv(dialect)  # what the build would be given must render for it
        launched.append(config)
        return PointResult(config, _measurement(config), None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    return launched


def _models(tmp_path):
    t = read_model_info(write_gguf(tmp_path / "t.gguf", {**model_kv(), **vocab_kv()}))
    d = read_model_info(write_gguf(tmp_path / "d.gguf", {**model_kv(n_layers=2), **vocab_kv()}))
    return t, d


def test_n_gram_kinds_without_a_draft(engine, tmp_path):
    t, _ = _models(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t.path, ctx=1024), target_kv=("f16",), ngram_kinds=tuple(KINDS))
    result = tune(Binary(tmp_path / "llama-server", "flag"), NEW, spec, t, None, tmp_path / "logs")
    scouted = [c for c in engine if c.ngram and c.ngram_values == KINDS[c.ngram].defaults()]
    assert [c.ngram for c in scouted] == list(KINDS)  # each kind once at llama.cpp's defaults
    pruned = dict(result.pruned)
    assert "never found a match" in pruned["ngram-map-k"] and "never found a match" in pruned["ngram-map-k4v"]
    # the two fastest kinds with parameters are searched: ngram-simple's length and key, ngram-mod's floor
    assert ("ngram-simple", "size_m") in result.predictions and ("ngram-mod", "n_max") in result.predictions
    assert any(c.ngram == "ngram-simple" and c.ngram_values["size_m"] == 8 for c in engine)  # the short run
    assert any(c.ngram == "ngram-mod" and c.ngram_values["n_min"] == 4 for c in engine)
    assert not any(c.ngram in ("ngram-map-k", "ngram-map-k4v") and c.ngram_values != KINDS[c.ngram].defaults()
                   for c in engine)  # pruned kinds are not searched
    rec = result.recommended
    fastest = max(result.live(True), key=lambda p: p.measurement.tokens_per_second)
    assert rec.config.ngram == "ngram-simple"  # the fastest, or one within its noise with fewer changed values
    assert rec.measurement.tokens_per_second * 1.05 >= fastest.measurement.tokens_per_second
    assert any(c.ngram_values == {"size_n": 8, "size_m": 8} for c in engine)  # the key tried at the best length
    assert not any(c.has_draft for c in engine)
    assert engine[-1] == spec.base.without_speculation()  # the baseline again, at the other end
    assert result.launches <= spec.planned_launches(with_draft=False)
    winners = result.category_winners()
    assert kind_of(winners["edit"][0].config) == "ngram-simple" and not winners["chat"][0].config.speculates
    text = recommendation_text(result)
    assert "The best kind depends on the workload: ngram-simple for edit (" in text and "no speculation for chat" in text


def test_the_mix_with_the_draft_is_measured_where_the_build_runs_one(engine, tmp_path):
    t, d = _models(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t.path, draft=d.path, ctx=1024), lengths=(2, 4, 8), target_kv=("f16",),
                    draft_kv=("f16",), ngram_kinds=("ngram-simple",))
    result = tune(Binary(tmp_path / "llama-server", "flag"), NEW, spec, t, d, tmp_path / "logs")
    mixes = [c for c in engine if c.ngram and c.has_draft]
    assert len(mixes) == 1 and mixes[0].ngram == "ngram-simple" and mixes[0].draft_max in (2, 4, 8)
    assert "--spec-type ngram-simple,draft-simple" in " ".join(mixes[0].argv(NEW))
    assert result.launches <= spec.planned_launches(with_draft=True)


def test_a_build_that_cannot_mix_says_so_and_launches_no_mix(engine, tmp_path):
    t, d = _models(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t.path, draft=d.path, ctx=1024), lengths=(2, 4), target_kv=("f16",),
                    draft_kv=("f16",), ngram_kinds=("ngram-simple",))
    result = tune(Binary(tmp_path / "llama-server", "flag"), MID, spec, t, d, tmp_path / "logs")
    assert not any(c.ngram and c.has_draft for c in engine)
    assert "only without a draft model" in dict(result.pruned)["ngram-simple with the draft"]


def test_n_gram_points_read_back_from_a_profile_point(tmp_path):
    cfg = ServerConfig(target=Path("t")).with_ngram("ngram-mod", {"n_min": 4})
    point = PointResult(cfg, _measurement(cfg), None, 1.0)
    d = point_dict(point)
    assert d["kind"] == "ngram-mod" and d["ngram_params"] == {"n_match": 24, "n_max": 64, "n_min": 4}
    back = ServerConfig(target=Path("t")).with_ngram(d["ngram"], d["ngram_params"])
    assert back == cfg and Measurement.from_dict(d).servers == 1


def test_a_kind_slower_on_every_category_wins_none():
    base_cfg = ServerConfig(target=Path("t"))
    slow = base_cfg.with_ngram("ngram-map-k")
    base = PointResult(base_cfg, _measurement(base_cfg), None, 1.0)
    m = _measurement(base_cfg)
    lookup = PointResult(slow, Measurement(True, 29.0, (29.0, 29.1), 400, 10, 1, 5, (0.1,),
                                           {"edit": {"tokens_per_second": 29.0}, "chat": {"tokens_per_second": 29.0}},
                                           predicted_ms=m.predicted_ms, request_tps=m.request_tps), None, 1.0)
    result = TuneResult(points=[base, lookup])
    assert all(not p.config.speculates for p, _ in result.category_winners().values())
    assert not result.recommended.config.speculates
    assert recommendation_text(result).startswith("no speculation: the fastest speculating configuration (ngram-map-k")


def test_a_saved_n_gram_profile_reads_back_with_its_baselines_as_baselines(tmp_path):
    """The profile's [server] table is the n-gram recommendation: the points read back from it must not all
    inherit its kind (the baselines did, and the saved result had no baseline and no recommendation)."""
    from types import SimpleNamespace

    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.tune.run import result_from_profile, save_outputs

    t, _ = _models(tmp_path)
    base_cfg = ServerConfig(target=t.path, ctx=1024)
    lookup_cfg = base_cfg.with_ngram("ngram-simple", {"size_m": 16})
    result = TuneResult(points=[PointResult(c, _measurement(c), None, 1.0) for c in (base_cfg, lookup_cfg, base_cfg)])
    binary = find_llama_server(None)
    args = SimpleNamespace(tokens=48, categories="edit,chat", profile=None, script=None, format="bash",
                           host="127.0.0.1", port=8080)
    out = save_outputs(result, binary, probe_dialect(binary.path), "CPU", args, "no draft model", measure_memory=False)
    assert out.profile is not None and "--spec-type ngram-simple" in out.script.read_text()
    import tomllib

    from ggufpair.engine.config import DRAFT_ONLY

    server = tomllib.loads(out.profile.read_text())["server"]
    assert server["ngram"] == "ngram-simple" and not set(DRAFT_ONLY) & set(server), server  # no draft length
    back, _ = result_from_profile(out.profile)
    assert [kind_of(p.config) for p in back.points] == ["none", "ngram-simple", "none"]
    assert back.recommended.config == lookup_cfg.with_(threads=back.recommended.config.threads)
    assert back.category_winners()["edit"][0].config.ngram == "ngram-simple"


def test_of_lookup_runs_noise_cannot_tell_apart_the_shorter_drafts_are_recommended():
    """Two ngram-simple lengths within the noise band of each other (and as far from llama.cpp's defaults):
    the shorter one is recommended whichever was measured first or faster; one clearly faster still wins."""
    base_cfg = ServerConfig(target=Path("t"))
    base = PointResult(base_cfg, _measurement(base_cfg), None, 1.0)

    def lookup(size_m: int, tps: float) -> PointResult:
        cfg = base_cfg.with_ngram("ngram-simple", {"size_n": 4, "size_m": size_m})
        m = _measurement(cfg)
        return PointResult(cfg, Measurement(True, tps, (tps * 0.99, tps * 1.01), 400, 120, 90, 20, m.accept_by_position,
                                            m.per_category, predicted_ms=m.predicted_ms, request_tps=m.request_tps),
                           None, 1.0)

    for order in ((16, 8), (8, 16)):
        points = [base] + [lookup(n, 70.0 if n == 16 else 68.0) for n in order]
        assert TuneResult(points=points).recommended.config.ngram_values["size_m"] == 8
    clear = TuneResult(points=[base, lookup(16, 80.0), lookup(8, 68.0)])
    assert clear.recommended.config.ngram_values["size_m"] == 16


@pytest.mark.parametrize("at_8,tries_4", [(49.5, True), (40.0, False)])
def test_the_key_search_goes_on_past_a_shorter_key_within_the_noise(monkeypatch, tmp_path, at_8, tries_4):
    """ngram-simple's key (size_n) is tried down from its default 12. A shorter key clearly slower ends that walk;
    one within the noise of the best says nothing of the way, so the next shorter one is measured too (here
    size_n 4 is far the fastest)."""
    launched: list[ServerConfig] = []

    def run_point(binary, dialect, config, prompts, **kw):
        launched.append(config)
        if config.ngram is None:
            tps, q = 30.0, ()
        else:
            tps = {12: 50.0, 8: at_8, 4: 70.0}[config.ngram_values["size_n"]]
            q = tuple(0.9 * 0.97 ** i for i in range(config.ngram_values["size_m"]))
        m = Measurement(bool(q), tps, (tps * 0.99, tps * 1.01), 400, 120 if q else 0, 90 if q else 0, 20 if q else 0,
                        q, predicted_ms=396 / tps * 1000, request_tps=(tps,) * 4)
        return PointResult(config, m, None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    t, _ = _models(tmp_path)
    spec = TuneSpec(base=ServerConfig(target=t.path, ctx=1024), target_kv=("f16",), ngram_kinds=("ngram-simple",))
    result = tune(Binary(tmp_path / "llama-server", "flag"), NEW, spec, t, None, tmp_path / "logs")
    keys = [c.ngram_values["size_n"] for c in launched if c.ngram]
    assert (4 in keys) is tries_4, keys
    assert keys[:2] == [12, 8] and (keys[2] == 4) is tries_4  # the scout at the defaults, then the keys down
    assert result.recommended.config.ngram_values["size_n"] == (4 if tries_4 else 12)
    assert result.launches <= spec.planned_launches(with_draft=False)
