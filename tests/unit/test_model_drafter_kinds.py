"""Model drafters as data (engine.kinds.DRAFTERS): MTP rendered with no draft file, its draft length capped as
llama.cpp caps chained heads, searched like any drafter and kept apart from the draft files; EAGLE-3 heads
refused before launch when llama.cpp would refuse or abort on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFValueType as T

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.kinds import DRAFTERS, drafter_for_file, parse_kinds
from ggufpair.engine.measure import Measurement
from ggufpair.errors import UsageError
from ggufpair.format.model_info import read_model_info
from ggufpair.pairing.verdict import check_pair
from ggufpair.tune import search
from ggufpair.tune.run import kind_of, point_dict, recommendation_text
from ggufpair.tune.search import TuneSpec, tune
from tests.ggufmake import model_kv, random_model, vocab_kv, write_gguf
from tests.unit.test_dialect_config import MID, NEW, _pairs
from tests.unit.test_traffic import PROMPTS

T_PATH = Path("/m/glm.gguf")


def test_mtp_renders_without_a_draft_file_and_with_the_draft_length_and_kv():
    cfg = ServerConfig(T_PATH, spec_type="draft-mtp", draft_max=3, draft_cache_type_k="q8_0",
                       draft_cache_type_v="q8_0", draft_device="CUDA1", draft_gpu_layers="all")
    argv = cfg.argv(NEW)
    pairs = _pairs(argv)
    assert pairs["--spec-type"] == "draft-mtp" and pairs["--spec-draft-n-max"] == "3"
    assert pairs["--spec-draft-type-k"] == "q8_0" and pairs["--spec-draft-type-v"] == "q8_0"
    # no draft model, and nothing that places one (the MTP context runs where the target's layers are)
    assert not {"-md", "--spec-draft-model", "-devd", "--spec-draft-device", "-ngld", "--spec-draft-ngl"} & set(argv)
    assert cfg.has_draft and cfg.speculates and cfg.drafter == "draft-mtp" and cfg.drafter_name == "MTP"
    assert kind_of(cfg) == "mtp" and kind_of(cfg.with_ngram("ngram-simple")) == "ngram-simple+mtp"
    assert _pairs(cfg.with_ngram("ngram-simple").argv(NEW))["--spec-type"] == "ngram-simple,draft-mtp"
    base = cfg.without_speculation()
    assert not base.has_draft and not base.speculates and "--spec-type" not in base.argv(NEW)


def test_mtp_errors_a_user_can_meet():
    with pytest.raises(UsageError, match="no --spec-type draft-mtp"):
        ServerConfig(T_PATH, spec_type="draft-mtp").argv(MID)
    with pytest.raises(UsageError, match="takes no draft file"):
        ServerConfig(T_PATH, Path("/m/d.gguf"), spec_type="draft-mtp")
    with pytest.raises(UsageError, match="no --spec-type draft-mtp"):
        parse_kinds("mtp", MID)
    assert parse_kinds("draft,mtp,ngram-mod", NEW) == ("draft", "mtp", "ngram-mod")


def test_drafters_are_data_each_file_kind_runs_by_its_own_spec_type():
    assert {d.spec_type for d in DRAFTERS.values()} <= set(NEW.spec_types)
    assert drafter_for_file("eagle3").spec_type == "draft-eagle3" and drafter_for_file("dspark").spec_type == "draft-dspark"
    # a draft file that carries NextN layers runs as a draft (ggufpair passes --spec-type, so no auto-switch)
    assert drafter_for_file("mtp").spec_type == "draft-simple" and drafter_for_file(None).spec_type == "draft-simple"
    assert not DRAFTERS["draft-mtp"].needs_file and not DRAFTERS["draft-eagle3"].vocab_checked


def _mtp_target(path: Path, heads: int) -> Path:
    """A glm4moe header with `heads` NextN blocks after 2 trunk blocks (a header only: nothing is launched)."""
    n = 2 + heads
    kv = {**model_kv(n_layers=n, arch="glm4moe"), **vocab_kv(), "glm4moe.nextn_predict_layers": (T.UINT32, heads)}
    return write_gguf(path, kv, [("token_embd.weight", (64, 300)), (f"blk.{n - 1}.nextn.eh_proj.weight", (128, 64))])


@pytest.fixture
def engine(monkeypatch):
    launched: list[ServerConfig] = []

    def run_point(binary, dialect, config, prompts, **kw):
        config.argv(dialect)  # every launch renders for the build
        launched.append(config)
        if not config.has_draft:
            tps, q = 30.0, ()
        else:  # MTP accepts well; the draft file less
            mtp = config.fileless_drafter
            tps = (40.0 if mtp else 33.0) - abs(config.draft_max - 2)
            q = tuple((0.8 if mtp else 0.6) ** (i + 1) for i in range(config.draft_max))
        m = Measurement(bool(q), tps, (tps * 0.995, tps * 1.005), 400, 100 if q else 0, 70 if q else 0, 30 if q else 0,
                        q, predicted_ms=396 / tps * 1000, request_tps=(tps,) * 4)
        return search.PointResult(config, m, None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    return launched


def test_mtp_is_one_more_drafter_capped_at_its_heads_and_ranked(engine, tmp_path):
    target = _mtp_target(tmp_path / "glm.gguf", heads=2)
    info = read_model_info(target)
    assert info.draft_kind == "mtp" and info.n_nextn == 2 and DRAFTERS["draft-mtp"].length_cap(info) == 2
    assert DRAFTERS["draft-mtp"].length_cap(read_model_info(_mtp_target(tmp_path / "one.gguf", 1))) is None
    draft = write_gguf(tmp_path / "small.gguf", {**model_kv(n_layers=1), **vocab_kv()})
    events: list[str] = []
    spec = TuneSpec(base=ServerConfig(target=target, draft=draft, ctx=1024), lengths=(1, 2, 4, 8), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS, mtp=True)
    result = tune(None, NEW, spec, info, read_model_info(draft), tmp_path, events.append)
    assert len(engine) <= spec.planned_launches(True)
    mtp = [c for c in engine if c.fileless_drafter]
    files = [c for c in engine if c.draft is not None]
    assert mtp and files and all(c.draft is None for c in mtp)
    assert max(c.draft_max for c in mtp) == 2 and max(c.draft_max for c in files) == 8  # the cap is MTP's alone
    assert any("caps its drafts at 2 token(s)" in e for e in events), events
    ranked = result.drafters()
    assert [p.config.drafter for p in ranked] == ["draft-mtp", str(draft)]
    assert result.recommended.config.fileless_drafter  # n_max 1 and 2 within the noise: the simpler one may win
    text = recommendation_text(result)
    assert "Drafts ranked: MTP 40.0 tok/s at n_max 2" in text and "small.gguf 33.0 tok/s at n_max 2" in text
    rows = result.drafter_table()  # speed, acceptance by position (from each one's longest run), memory
    assert [r["drafter"] for r in rows] == ["MTP", "small.gguf"]
    assert rows[0]["positions_from"] == 2 and rows[0]["accept_by_position"] == pytest.approx([0.8, 0.64])
    assert rows[1]["positions_from"] == 8 and len(rows[1]["accept_by_position"]) == 8
    assert rows[0]["speedup"] == pytest.approx(40 / 30) and all(r["memory_bytes"] > 0 for r in rows)
    points = [point_dict(p) for p in result.points]
    assert all(p["spec_type"] == "draft-mtp" and "draft" not in p for p in points if p["kind"] == "mtp")
    assert all(p["spec_type"] == "draft-simple" and p["draft"] == str(draft) for p in points if p["kind"] == "draft")


def test_eagle3_heads_that_llama_cpp_refuses_or_aborts_on_are_blockers(tmp_path):
    target = read_model_info(random_model(tmp_path / "t.gguf", "llama", n_layers=4))
    fine = read_model_info(random_model(tmp_path / "ok.gguf", "eagle3", target_layers=(1, 2, 4)))
    assert check_pair(target, fine).compatible  # layer 4 = n_layer: the target's last hidden state, allowed
    beyond = read_model_info(random_model(tmp_path / "beyond.gguf", "eagle3", target_layers=(1, 2, 9)))
    verdict = check_pair(target, beyond)
    assert not verdict.compatible and "reads target layer 9, and the target has 4" in verdict.summary
    two = read_model_info(random_model(tmp_path / "two.gguf", "eagle3", target_layers=(1, 2)))
    assert "needs exactly 3" in check_pair(target, two).summary
    wide = read_model_info(random_model(tmp_path / "wide.gguf", "eagle3", target_hidden=128))
    assert "hidden size of 128" in check_pair(target, wide).summary


def test_an_mtp_profile_round_trips_and_its_script_loads_no_draft(tmp_path):
    from ggufpair.engine.binary import Binary
    from ggufpair.tune.profile import launch_script

    cfg = ServerConfig(T_PATH, spec_type="draft-mtp", draft_max=2, draft_cache_type_k="q8_0", draft_cache_type_v="q8_0")
    assert ServerConfig.from_dict(cfg.to_dict()) == cfg
    script = launch_script(cfg, Binary(tmp_path / "llama-server", "flag"), NEW)
    assert "--spec-type draft-mtp" in script and "--spec-draft-n-max 2" in script
    assert "-md " not in script and "--spec-draft-model" not in script


def test_an_mtp_context_kv_type_llama_cpp_refuses_for_the_targets_heads_is_never_launched(engine, tmp_path):
    """MTP's draft context holds the target's own heads (16 wide here): a q4_0 cache (blocks of 32) is refused
    by llama.cpp under flash attention, so that run is pruned with the reason, and f16 is measured."""
    target = _mtp_target(tmp_path / "glm.gguf", heads=1)
    info = read_model_info(target)
    spec = TuneSpec(base=ServerConfig(target=target, ctx=1024, flash_attn="on"), lengths=(1, 2), target_kv=("f16",),
                    draft_kv=("f16", "q4_0"), prompts=PROMPTS, mtp=True)
    result = tune(None, NEW, spec, info, None, tmp_path)
    mtp = [c for c in engine if c.fileless_drafter]
    assert mtp and {c.draft_cache_type_k for c in mtp} == {"f16"}
    assert any("the MTP context's K head size 16 is not a multiple of 32" in why for _, why in result.pruned), \
        result.pruned


def test_a_dspark_draft_without_a_confidence_head_gets_no_p_min_run(engine, tmp_path):
    """llama.cpp throws "DSpark draft has no confidence head: please set --spec-draft-p-min 0" for a p_min above
    0 with such a file: that run is pruned with the reason; the one with a head gets its p_min run."""
    target = write_gguf(tmp_path / "t.gguf", {**model_kv(n_layers=4), **vocab_kv()})
    head = [("token_embd.weight", (64, 300)), ("markov_w1.weight", (8, 300))]
    for name, has_head in (("headless", False), ("headed", True)):
        draft = write_gguf(tmp_path / f"{name}.gguf", {**model_kv(n_layers=1, arch="dflash"), **vocab_kv(),
                                                        "dflash.target_layers": (T.ARRAY, [1, 2, 3], T.INT32),
                                                        "dflash.has_confidence_head": (T.BOOL, has_head)}, head)
        info = read_model_info(draft)
        assert info.draft_kind == "dspark" and info.takes_p_min is has_head
        engine.clear()
        spec = TuneSpec(base=ServerConfig(target=target, draft=draft, ctx=1024), lengths=(2, 4), target_kv=("f16",),
                        draft_kv=("f16",), prompts=PROMPTS, p_min=(0.0, 0.5))
        result = tune(None, NEW, spec, read_model_info(target), info, tmp_path)
        assert {c.spec_type for c in engine if c.draft is not None} == {"draft-dspark"}
        assert any(c.p_min for c in engine) is has_head, engine
        assert any("no confidence head" in why for _, why in result.pruned) is not has_head, result.pruned
