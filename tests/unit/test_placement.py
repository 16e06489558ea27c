"""Placements as data (engine.placement): llama.cpp's layer assignment reproduced, the placements offered for
one and two GPUs (device budgets as a listing would give them: no GPU exists here, nothing is launched on
one), their flags, each device's share checked before launch, and the tune measuring the best configuration
under each placement that fits (a scripted engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.measure import Measurement
from ggufpair.engine.memory import estimate_pair, pipeline_bytes
from ggufpair.engine.placement import DeviceBudget, device_loads, layer_devices, misfit, placements
from ggufpair.format.model_info import read_model_info
from ggufpair.tune import search
from ggufpair.tune.run import recommendation_text
from ggufpair.tune.search import TuneSpec, tune
from tests.ggufmake import random_model
from tests.unit.test_dialect_config import NEW, _pairs
from tests.unit.test_traffic import PROMPTS

MIB = 1 << 20


def test_layer_assignment_is_llama_cpps():
    # 4 layers + output over two devices split 1:1: boundaries at il / 5 -> [0, .2, .4 | .6, .8]
    assert layer_devices(4, ["A", "B"], [1, 1]) == (["A", "A", "A", "B"], "B")
    assert layer_devices(4, ["A", "B"], [3, 1]) == (["A", "A", "A", "A"], "B")
    # -ngl 2: the first three layers stay on the host, layer 3 and the output offloaded
    assert layer_devices(4, ["A"], [1], n_gpu_layers=2) == (["CPU", "CPU", "CPU", "A"], "A")
    assert layer_devices(4, [], []) == (["CPU"] * 4, "CPU")


def test_placements_for_one_and_two_gpus():
    one = placements([DeviceBudget("CUDA0", 24 << 30, True)], with_draft=True)
    assert [p.name for p in one] == ["all on CUDA0", "target on CUDA0, draft on the host"]
    assert placements([DeviceBudget("CUDA0", 24 << 30, True)], with_draft=False)[1:] == []
    two = placements([DeviceBudget("CUDA1", 8 << 30, True), DeviceBudget("CUDA0", 24 << 30, True)], with_draft=True)
    assert [p.name for p in two] == ["target split over CUDA0, CUDA1, draft on CUDA0",
                                     "target on CUDA0, draft on CUDA1", "all on CUDA0"]
    assert placements([DeviceBudget("CPU", 1 << 30)], with_draft=True) == []  # nothing to place on this machine
    cfg = two[1].apply(ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf")))
    pairs = _pairs(cfg.argv(NEW))
    assert pairs["-dev"] == "CUDA0" and pairs["--spec-draft-device"] == "CUDA1"
    split = ServerConfig(Path("/m/t.gguf"), devices=("CUDA0", "CUDA1"), tensor_split=(3.0, 1.0))
    assert _pairs(split.argv(NEW))["-ts"] == "3,1"
    assert ServerConfig.from_dict(split.to_dict()) == split  # the profile keeps the placement
    host = one[1].apply(ServerConfig(Path("/m/t.gguf"), Path("/m/d.gguf")))
    assert _pairs(host.argv(NEW))["--spec-draft-ngl"] == "0"
    mtp = two[1].apply(ServerConfig(Path("/m/t.gguf"), spec_type="draft-mtp"))
    assert mtp.draft_device is None  # MTP follows the target's layers


@pytest.fixture
def pair(tmp_path):
    target = random_model(tmp_path / "t.gguf", "llama", n_layers=4, n_embd=128)
    draft = random_model(tmp_path / "d.gguf", "llama", n_layers=1, seed=3)
    return read_model_info(target), read_model_info(draft)


def test_each_devices_share_follows_the_layers(pair):
    t, d = pair
    budgets = [DeviceBudget("CUDA0", 512 * MIB, True), DeviceBudget("CUDA1", 512 * MIB, True)]
    cfg = ServerConfig(t.path, d.path, ctx=1024, devices=("CUDA0", "CUDA1"), tensor_split=(1.0, 1.0),
                       draft_device="CUDA1")
    est = estimate_pair(t, d, cfg, "cuda")
    loads = device_loads(t, d, cfg, est, budgets)
    assert set(loads) == {"CPU", "CUDA0", "CUDA1"}
    assert sum(loads.values()) >= est.total  # every byte somewhere (compute buffers on each device in use)
    only0 = device_loads(t, d, cfg.with_(devices=("CUDA0",), tensor_split=(), draft_device="CUDA0"), est, budgets)
    first_copies = pipeline_bytes(t, cfg)[0]  # the split runs pipelined; one device does not
    assert "CUDA1" not in only0 and only0["CUDA0"] > loads["CUDA0"] - first_copies
    tight = [DeviceBudget("CUDA0", loads["CUDA0"] + MIB, True), DeviceBudget("CUDA1", loads["CUDA1"] - MIB, True)]
    why = misfit(est, tight, target=t, draft=d, config=cfg)
    assert why is not None and "on CUDA1 needs about" in why, why
    assert misfit(est, budgets, target=t, draft=d, config=cfg) is None


def test_the_tune_measures_the_best_under_each_placement_that_fits(pair, monkeypatch, tmp_path):
    t, d = pair
    launched: list[ServerConfig] = []

    def run_point(binary, dialect, config, prompts, **kw):
        config.argv(dialect)
        launched.append(config)
        fast = config.draft_device == "CUDA1"  # the draft on a GPU of its own pays, here
        tps = 30.0 if not config.has_draft else (45.0 if fast else 36.0) - abs(config.draft_max - 4)
        q = tuple(0.8 ** (i + 1) for i in range(config.draft_max)) if config.has_draft else ()
        m = Measurement(bool(q), tps, (tps * 0.995, tps * 1.005), 400, 100 if q else 0, 70 if q else 0,
                        30 if q else 0, q, predicted_ms=396 / tps * 1000, request_tps=(tps,) * 4)
        return search.PointResult(config, m, None, 1.0)

    monkeypatch.setattr(search, "run_point", run_point)
    budgets = (DeviceBudget("CUDA0", 2048 * MIB, True), DeviceBudget("CUDA1", 2048 * MIB, True))
    placed = tuple(placements(list(budgets), with_draft=True))
    events: list[str] = []
    spec = TuneSpec(base=placed[0].apply(ServerConfig(t.path, d.path, ctx=1024)), lengths=(2, 4, 8),
                    target_kv=("f16",), draft_kv=("f16",), prompts=PROMPTS, device="cuda", device_budgets=budgets,
                    placements=placed)
    result = tune(None, NEW, spec, t, d, tmp_path, events.append)
    assert len(launched) <= spec.planned_launches(True)
    where = {(c.devices, c.draft_device) for c in launched if c.has_draft}
    assert where == {((), "CUDA0"), (("CUDA0",), "CUDA1"), (("CUDA0",), "CUDA0")}
    rec = result.recommended
    assert rec.config.draft_device == "CUDA1" and result.placement_of(rec.config).name == "target on CUDA0, draft on CUDA1"
    assert result.baseline_for(rec.config).config.devices == ("CUDA0",)  # paired with a baseline placed alike
    assert "Placement: target on CUDA0, draft on CUDA1" in recommendation_text(result)
    # a device too small for a placement: that placement is listed with the reason, never launched
    launched.clear()
    small = (DeviceBudget("CUDA0", 2048 * MIB, True), DeviceBudget("CUDA1", 1 * MIB, True))
    spec2 = TuneSpec(base=placed[0].apply(ServerConfig(t.path, d.path, ctx=1024)), lengths=(2, 4, 8),
                     target_kv=("f16",), draft_kv=("f16",), prompts=PROMPTS, device="cuda", device_budgets=small,
                     placements=tuple(placements(list(small), with_draft=True)))
    result2 = tune(None, NEW, spec2, t, d, tmp_path / "2", events.append)
    assert all(c.draft_device != "CUDA1" and "CUDA1" not in c.devices for c in launched)
    assert any("CUDA1" in why for _, why in result2.pruned), result2.pruned


def test_the_gpu_check_script_is_clean_shell():
    import subprocess

    from tests.conftest import shellcheck

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"
    check = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_devices_flag_names_only_devices_the_build_lists():
    from ggufpair.cli.tune_cmds import parse_devices
    from ggufpair.engine.devices import Device
    from ggufpair.errors import UsageError

    listed = [Device("CUDA0", "GPU", 24 << 30, 20 << 30, "list-devices"), Device("CUDA1", "GPU", 8 << 30, 7 << 30,
                                                                                 "list-devices")]
    assert parse_devices("CUDA1", listed) == ("CUDA1",) and parse_devices(None, listed) == ()
    with pytest.raises(UsageError, match="CUDA2 is not a device of this llama-server build"):
        parse_devices("CUDA0,CUDA2", listed)
    only = placements([DeviceBudget("CUDA0", 24 << 30, True), DeviceBudget("CUDA1", 8 << 30, True)], True, ("CUDA1",))
    assert [p.name for p in only] == ["all on CUDA1", "target on CUDA1, draft on the host"]
    assert all(p.devices == ("CUDA1",) for p in only)  # every placement keeps the user's choice


def test_pipeline_parallelism_is_on_only_where_llama_cpp_turns_it_on(pair):
    from ggufpair.engine.placement import pipeline_parallel

    t, _ = pair
    cfg = ServerConfig(t.path, None, ctx=1024)
    two, n = ["CUDA0", "CUDA1"], t.n_layers
    assert pipeline_parallel(cfg, two, None, n) and pipeline_parallel(cfg, two, "all", n)
    assert pipeline_parallel(cfg, two, n + 1, n)
    assert not pipeline_parallel(cfg, two, n, n)  # the output layer on the host: not every layer offloaded
    assert not pipeline_parallel(cfg, ["CUDA0"], None, n)
    assert pipeline_parallel(cfg.with_(extra=("-sm", "layer")), two, None, n)
    for extra in (("-sm", "row"), ("-nkvo",), ("-ot", "exps=CPU"), ("--cpu-moe",)):
        assert not pipeline_parallel(cfg.with_(extra=extra), two, None, n), extra


def test_a_split_target_carries_the_schedulers_pinned_input_copies(pair):
    from ggufpair.engine.memory import N_UBATCH, mask_bytes

    t, d = pair
    budgets = [DeviceBudget("CUDA0", 512 * MIB, True), DeviceBudget("CUDA1", 512 * MIB, True)]
    cfg = ServerConfig(t.path, d.path, ctx=1024, devices=("CUDA0", "CUDA1"), tensor_split=(1.0, 1.0),
                       draft_device="CUDA1", flash_attn="on")
    est = estimate_pair(t, d, cfg, "cuda")
    piped = device_loads(t, d, cfg, est, budgets)
    plain = device_loads(t, d, cfg.with_(extra=("-ot", "x=CUDA0")), est, budgets)  # overrides: no pipeline
    first, later, host = pipeline_bytes(t, cfg)
    assert (piped["CUDA0"] - plain["CUDA0"], piped["CUDA1"] - plain["CUDA1"], piped["CPU"] - plain["CPU"]) == (
        first, later, host)
    masks = mask_bytes(t, ctx=1024, parallel=1, flash_attn=True)
    assert masks == 1024 * N_UBATCH * 2  # one full-attention mask, F16 under flash attention
    assert later - 3 * masks == int(3.5 * t.n_embd * N_UBATCH * 4) and first > later
    # the draft on both devices too: it gets its own copies, by its own width
    both = device_loads(t, d, cfg.with_(draft_device=None), est, budgets)
    d_first, d_later, d_host = pipeline_bytes(d, cfg)
    assert both["CPU"] - piped["CPU"] == d_host and d_first != first


def test_the_pipeline_terms_read_auto_flash_attention_as_the_build_does(pair):
    """On a build whose bare -fa is a switch (no value), `auto` means flash attention off: the split target's
    pinned mask copies are then F32, as `estimate_pair` already reads it for that dialect."""
    t, d = pair
    budgets = [DeviceBudget("CUDA0", 512 * MIB, True), DeviceBudget("CUDA1", 512 * MIB, True)]
    cfg = ServerConfig(t.path, None, ctx=1024, devices=("CUDA0", "CUDA1"), tensor_split=(1.0, 1.0))
    auto = cfg.with_(flash_attn="auto")
    old = device_loads(t, None, auto, estimate_pair(t, None, auto, "cuda", False), budgets, fa_takes_value=False)
    off = device_loads(t, None, cfg.with_(flash_attn="off"), estimate_pair(t, None, auto, "cuda", False), budgets)
    new = device_loads(t, None, auto, estimate_pair(t, None, auto, "cuda", True), budgets, fa_takes_value=True)
    on = device_loads(t, None, cfg.with_(flash_attn="on"), estimate_pair(t, None, auto, "cuda", True), budgets)
    assert old == off and new == on and old["CUDA1"] > new["CUDA1"]  # F32 masks against F16 ones


def test_a_run_without_a_draft_is_not_said_to_have_placed_one():
    """Two GPUs: "all on CUDA1" and "target on CUDA1, draft on CUDA0" place the target alike, so a baseline
    (or an n-gram run) matches both; it is named by the placement that puts no draft anywhere."""
    from ggufpair.engine.placement import placement_of

    budgets = [DeviceBudget("CUDA0", 8 * 2**30, True), DeviceBudget("CUDA1", 16 * 2**30, True)]
    placed = placements(budgets, with_draft=True)
    alone = placed[1].apply(ServerConfig(Path("t.gguf"), None, ctx=1024))
    assert placed[1].name == "target on CUDA1, draft on CUDA0" and placed[1].apply(alone) == alone
    assert placement_of(placed, alone).name == "all on CUDA1"
    with_draft = placed[1].apply(ServerConfig(Path("t.gguf"), Path("d.gguf"), ctx=1024))
    assert placement_of(placed, with_draft).name == "target on CUDA1, draft on CUDA0"
