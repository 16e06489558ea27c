"""llama.cpp's RPC backend for real: two `ggml-rpc-server`s on 127.0.0.1 (CPU backend), the demo target's
layers on them and the draft kept local, speculation live and measured; a placement that does not fit the
remote memory pruned before launch; an unreachable host a clear error (exit 5) that leaves no process.

This build's rpc-server has no option to cap the memory it offers (tools/rpc/rpc-server.cpp reads -t, -d, -H,
-p, -c only), so the pruning test gives the search smaller per-device budgets than the devices report."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.devices import devices
from ggufpair.engine.memory import MIB, estimate_pair, measured_by_device
from ggufpair.engine.placement import DeviceBudget, device_loads
from ggufpair.engine.process import free_port
from ggufpair.engine.rpc import local_rpc_servers, rpc_tool
from ggufpair.format.model_info import read_model_info
from ggufpair.tune.prompts import builtin_prompts
from ggufpair.tune.sweep import run_point

pytestmark = pytest.mark.integration


def _tool(llama_server):
    tool = rpc_tool(llama_server.path)
    if tool is None:
        pytest.skip(f"{llama_server.path.parent}: no rpc-server (llama.cpp built without -DGGML_RPC=ON)")
    return tool


@pytest.fixture(scope="module")
def rpc_servers(llama_server):
    with local_rpc_servers(_tool(llama_server)) as hosts:
        yield hosts


def test_the_target_runs_on_two_rpc_servers_with_the_draft_local(rpc_servers, gemma_f16, gemma_q4, llama_server,
                                                                   dialect, tmp_path):
    listed = devices(llama_server.path, rpc=rpc_servers)
    assert [d.name for d in listed if d.name.startswith("RPC")] == ["RPC0", "RPC1"]
    assert not listed[0].name.startswith("RPC")  # the local device (the host, here) keeps the draft
    cfg = ServerConfig(target=gemma_f16, draft=gemma_q4, ctx=1024, threads=2, draft_max=4, gpu_layers="all",
                       rpc=rpc_servers, draft_device="none", extra=("-lv", "4"))  # -lv 4: the buffers' devices
    point = run_point(llama_server, dialect, cfg, builtin_prompts(["chat"], per_category=2), n_predict=24,
                      repeats=1, log_dir=tmp_path)
    assert point.ok, point.error
    assert point.measurement.speculative and point.measurement.draft_tokens > 0
    log = next(tmp_path.glob("*.log")).read_text(errors="replace")
    assert "RPC0" in log and "RPC1" in log  # the target's buffers on both remote devices
    draft_part = log[log.find("loading draft model") if "loading draft model" in log else 0:]
    assert "RPC" not in "".join(line for line in draft_part.splitlines() if "model buffer size" in line)
    # each device's share as estimated, against llama.cpp's buffers on it: the split target runs with pipeline
    # parallelism (the log says so), whose pinned input copies the estimate must carry
    assert "pipeline parallelism enabled" in log
    t_info, d_info = read_model_info(gemma_f16), read_model_info(gemma_q4)
    est = estimate_pair(t_info, d_info, cfg, "cpu", dialect.fa_takes_value)
    budgets = [DeviceBudget(d.name, d.free_bytes, d.name != "CPU") for d in listed]
    loads, measured = device_loads(t_info, d_info, cfg, est, budgets, dialect.fa_takes_value), measured_by_device(log, rpc_servers)
    assert set(measured) == {"CPU", "RPC0", "RPC1"} == set(loads)
    for dev, m in measured.items():
        assert abs(loads[dev] - m) <= 0.05 * m, (dev, loads[dev] / MIB, m / MIB)


def test_a_placement_that_does_not_fit_the_remote_memory_is_pruned_before_launch(rpc_servers, gemma_f16, gemma_q4,
                                                                                 llama_server, dialect, tmp_path,
                                                                                 monkeypatch):
    from ggufpair.tune import search
    from ggufpair.tune.search import TuneSpec, tune

    launched = []
    monkeypatch.setattr(search, "run_point", lambda *a, **k: launched.append(a[2]) or pytest.fail("launched"))
    listed = devices(llama_server.path, rpc=rpc_servers)
    budgets = tuple(DeviceBudget(d.name, (64 << 20) if d.name.startswith("RPC") else d.free_bytes,
                                 d.name != "CPU") for d in listed)  # 64 MiB each remote: far too small
    base = ServerConfig(target=gemma_f16, draft=gemma_q4, ctx=1024, threads=2, gpu_layers="all", rpc=rpc_servers,
                        draft_device="none")
    spec = TuneSpec(base=base, lengths=(2, 4), target_kv=("f16",), draft_kv=("f16",),
                    prompts=tuple(builtin_prompts(["chat"], per_category=2)), device_budgets=budgets)
    result = tune(llama_server, dialect, spec, read_model_info(gemma_f16), read_model_info(gemma_q4), tmp_path)
    assert launched == [] and result.points == []
    assert result.pruned and all("the target's share on RPC" in why for _, why in result.pruned)


def test_an_unreachable_rpc_host_is_a_clear_error_and_leaves_no_process(gemma_f16, gemma_q4, capsys):
    from ggufpair.cli.main import main

    port = free_port()  # nothing listens there
    before = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "llama-server"}
    code = main(["tune", "--target", str(gemma_f16), "--draft", str(gemma_q4), "--kinds", "draft", "--rpc",
                 f"127.0.0.1:{port}", "--lengths", "2,4", "--kv", "f16", "--draft-kv", "f16"])
    err = capsys.readouterr().err
    assert code == 5, err
    assert f"cannot reach the rpc-server at 127.0.0.1:{port}" in err and "Traceback" not in err
    after = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "llama-server"}
    assert after <= before


TINY = ["--kinds", "draft", "--lengths", "2", "--kv", "f16", "--draft-kv", "f16", "--tokens", "16", "--repeats", "1",
        "--categories", "chat", "--ctx", "1024", "--threads", "2", "--p-min", "0"]


def _tiny_pair(folder):
    from tests.ggufmake import random_model

    return (random_model(folder / "tiny-target.gguf", "llama", n_layers=4),
            random_model(folder / "tiny-draft.gguf", "llama", n_layers=1, seed=1))  # the same 300-token vocabulary


def _profile():
    import tomllib

    from ggufpair.state import state_dir

    (profile,) = state_dir("profiles").glob("*.toml")
    return profile, tomllib.loads(profile.read_text())


def test_a_tune_over_rpc_keeps_the_draft_local_and_its_profile_says_where_everything_ran(rpc_servers, llama_server,
                                                                                       tmp_path, capsys):
    """`tune --rpc` end to end (tiny generated models: seconds): every launch with the target's layers on the two
    rpc-servers and the draft off them, live; the answer's memory per device against llama.cpp's, their sum the
    headline figure; the profile and its script carry the hosts and print the rpc-server command for each."""
    from ggufpair.cli.main import main

    target, draft = _tiny_pair(tmp_path)
    code = main(["tune", "--target", str(target), "--draft", str(draft), "--rpc", ",".join(rpc_servers), *TINY])
    out = capsys.readouterr().out
    assert code == 0, out
    profile, data = _profile()
    points = data["measurements"]["points"]
    drafted = [p for p in points if p.get("draft_max")]
    assert drafted and all(p["speculative"] and p["draft_tokens"] > 0 for p in drafted), drafted
    assert data["server"]["rpc"] == list(rpc_servers)
    # the answer keeps the draft off the rpc-servers when it has one; a no-draft answer has no draft to place
    placed = data["server"].get("draft_device")  # "none" (this host's CPU), or a local GPU where there is one
    assert (placed is not None and not placed.startswith("RPC")) if "draft" in data["models"] else placed is None, \
        data["server"]
    # every launch (each log's first line is the command ggufpair ran) put the target on both hosts, and each
    # one with the draft kept it off them (-devd none: this host's CPU; a local GPU where there is one)
    commands = [log.read_text().splitlines()[0] for log in Path(data["measurements"]["logs"]).glob("*.log")]
    with_draft = [c for c in commands if str(draft) in c]
    assert commands and all("--rpc " + ",".join(rpc_servers) in c for c in commands), commands
    assert with_draft and all(re.search(r"(--spec-draft-device|-devd|--device-draft) (?!RPC)\S+( |$)", c)
                              for c in with_draft), with_draft
    rec = data["measurements"]["recommended"]
    assert set(rec["measured_by_device"]) == {"CPU", "RPC0", "RPC1"} == set(rec["predicted_by_device"])
    # the headline prediction is each device's share summed (pipeline buffers on both remotes included), and
    # holds against what llama.cpp allocated, in all and on each device (tiny models: MiB, loose bounds)
    measured = rec["measured_by_device"]
    assert abs(rec["predicted_memory_bytes"] - sum(measured.values())) <= 0.15 * sum(measured.values()), rec
    for dev, n in measured.items():
        assert abs(rec["predicted_by_device"][dev] - n) <= 0.25 * n, (dev, rec)
    script = profile.with_suffix(".sh").read_text()
    assert "--rpc " + ",".join(rpc_servers) in script and script.count("rpc-server") >= len(rpc_servers)
    # `check` of the profile once a host is gone: said as such (exit 5) before a launch, not called a regression
    gone = profile.with_name("gone.toml")
    gone.write_text(profile.read_text().replace(rpc_servers[1], f"127.0.0.1:{free_port()}"))
    assert main(["check", str(gone)]) == 5
    captured = capsys.readouterr()
    assert "cannot reach the rpc-server" in captured.err and "REGRESSION" not in captured.out


def test_the_tui_tunes_over_rpc(rpc_servers, llama_server, models_folder, monkeypatch):
    """`ggufpair tui --rpc`: the same placement through the TUI's tune (the core's tune.setup.Remote), its live
    memory line per device, and the warning a host off this machine gets (RPC is unauthenticated) shown from the
    tune's thread (here for loopback hosts, as if they were remote)."""
    import asyncio

    import ggufpair.engine.rpc as rpc

    monkeypatch.setattr(rpc, "warnings", lambda hosts: [f"{h} is not loopback: RPC is unauthenticated" for h in hosts])

    from ggufpair.tui.app import ConfigScreen, GgufpairApp, ResultScreen, TuneScreen
    from tests.integration.test_tui import _wait_for

    from tests.ggufmake import random_model

    random_model(models_folder / "tiny-target.gguf", "llama", n_layers=4)

    async def flow():
        app = GgufpairApp(threads=2, cursor_blink=False, rpc=",".join(rpc_servers))
        seen: list[str] = []
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("t")  # the only model: the target
            await pilot.pause()
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, ConfigScreen)
            for key, value in (("kinds", "ngram-simple"), ("kv", "f16"), ("categories", "chat"), ("tokens", "16"),
                               ("repeats", "1"), ("ctx", "1024")):
                app.screen.query_one(f"#f_{key}").value = value
            await pilot.press("ctrl+s")

            def done() -> bool:
                if isinstance(app.screen, TuneScreen):
                    seen.append(str(app.screen.query_one("#memory").content))
                return isinstance(app.screen, ResultScreen)

            await _wait_for(pilot, done, 300)
            result = app.session.result
            assert result.points and all(p.config.rpc == rpc_servers and p.config.gpu_layers == "all"
                                         for p in result.points), result.points
            assert any("RPC0" in t and "RPC1" in t for t in seen), seen
            assert app.session.outputs.profile.exists()
    asyncio.run(flow())
