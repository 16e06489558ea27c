"""Other machines through llama.cpp's RPC backend, without a network: --rpc parsing, the device listings of
several shapes (one GPU, two, a GPU and RPC devices, RPC only: a CPU host), the per-device placement check,
the flags, the launch script's rpc-server commands, and an unreachable host as a clear error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.devices import MIB, device_kind, parse_list_devices
from ggufpair.engine.dialect import parse_help
from ggufpair.engine.memory import ModelMemory, PairMemory
from ggufpair.engine.placement import DeviceBudget, misfit, target_shares
from ggufpair.engine.rpc import RpcHost, check_reachable, parse_rpc, warnings
from ggufpair.errors import EngineError, UsageError

HELP = Path(__file__).resolve().parent.parent / "fixtures" / "help"
NEW = parse_help((HELP / "llama-server-11434-spec.txt").read_text())

ONE_GPU = "Available devices:\n  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23452 MiB free)\n"
TWO_GPUS = ONE_GPU + "  CUDA1: NVIDIA GeForce RTX 3060 (12044 MiB, 11800 MiB free)\n"
GPU_AND_RPC = ONE_GPU + "  RPC0: 192.168.1.20:50052 (32109 MiB, 31588 MiB free)\n  RPC1: 192.168.1.21:50052 (8000 MiB, 7900 MiB free)\n"
RPC_ONLY = "Available devices:\n  RPC0: 127.0.0.1:50152 (24105 MiB, 24105 MiB free)\n"  # captured here, CPU build


def test_listings_of_every_shape_are_parsed():
    assert [d.name for d in parse_list_devices(ONE_GPU)] == ["CUDA0"]
    assert [d.name for d in parse_list_devices(TWO_GPUS)] == ["CUDA0", "CUDA1"]
    mixed = parse_list_devices(GPU_AND_RPC)
    assert [(d.name, d.description, d.free_bytes // MIB) for d in mixed] == [
        ("CUDA0", "NVIDIA GeForce RTX 4090", 23452), ("RPC0", "192.168.1.20:50052", 31588),
        ("RPC1", "192.168.1.21:50052", 7900)]
    (rpc,) = parse_list_devices(RPC_ONLY)
    assert rpc.name == "RPC0" and rpc.total_bytes == 24105 * MIB
    assert device_kind(parse_list_devices(RPC_ONLY)) == "gpu"  # layers are offloaded, to the remote device


def test_rpc_hosts_are_parsed_and_checked():
    assert parse_rpc("10.0.0.2:50052,10.0.0.3") == (RpcHost("10.0.0.2", 50052), RpcHost("10.0.0.3", 50052))
    assert parse_rpc("[::1]:6000")[0].loopback and parse_rpc("localhost:1")[0].loopback
    for bad in ("host:", "host:x", "host:70000", ":5", "127.0.0.1:50161 127.0.0.1:50162"):  # a space is no list
        with pytest.raises(UsageError, match="--rpc"):
            parse_rpc(bad)
    (only,) = warnings(parse_rpc("192.168.1.20:50052"))
    assert only.startswith("RPC is unauthenticated")
    insecure, local = warnings(parse_rpc("127.0.0.1:5000,192.168.1.20:50052"))
    assert "192.168.1.20:50052" in insecure and "unauthenticated" in insecure and "127.0.0.1" not in insecure
    # loopback rpc-servers share this machine's memory: the budget would count it again, and says so
    assert "127.0.0.1:5000" in local and "more than once" in local and "192.168" not in local
    assert warnings(parse_rpc("127.0.0.1:5000")) == [local]
    assert RpcHost("192.168.1.20", 50052).server_command() == "ggml-rpc-server -H 0.0.0.0 -p 50052"


def test_an_unreachable_rpc_server_is_a_clear_error_with_exit_5():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(EngineError) as err:
        check_reachable(parse_rpc(f"127.0.0.1:{port}"), timeout=1)
    assert err.value.exit_code == 5 and f"127.0.0.1:{port}" in err.value.message
    assert "nothing was launched" in err.value.message and f"ggml-rpc-server -H 127.0.0.1 -p {port}" in err.value.hint


def test_the_target_is_split_by_free_memory_and_each_share_must_fit():
    est = PairMemory(ModelMemory(900 * MIB, 50 * MIB, 50 * MIB, 0, 0), ModelMemory(100 * MIB, 0, 0, 0, 0))
    devs = [DeviceBudget("CPU", 4000 * MIB), DeviceBudget("RPC0", 3000 * MIB, True), DeviceBudget("RPC1", 1000 * MIB, True)]
    assert target_shares(est, devs) == {"RPC0": 750 * MIB, "RPC1": 250 * MIB}
    assert misfit(est, devs) is None
    small = [DeviceBudget("CPU", 4000 * MIB), DeviceBudget("RPC0", 300 * MIB, True), DeviceBudget("RPC1", 100 * MIB, True)]
    assert "the target's share on RPC0 needs about 750 MiB, the device has 300 MiB" in misfit(est, small)
    tiny_host = [DeviceBudget("CPU", 50 * MIB), DeviceBudget("RPC0", 3000 * MIB, True)]
    assert "the draft on CPU needs about 100 MiB" in misfit(est, tiny_host)
    # a local GPU takes its share of the target too, and the draft placed on it adds to that
    gpu = [DeviceBudget("CPU", 4000 * MIB), DeviceBudget("CUDA0", 1000 * MIB, True), DeviceBudget("RPC0", 1000 * MIB, True)]
    assert target_shares(est, gpu) == {"CUDA0": 500 * MIB, "RPC0": 500 * MIB}
    assert misfit(est, gpu) is None and misfit(est, gpu, "CUDA0") is None
    tight = [DeviceBudget("CPU", 4000 * MIB), DeviceBudget("CUDA0", 550 * MIB, True), DeviceBudget("RPC0", 550 * MIB, True)]
    assert misfit(est, tight) is None
    assert "the target's share and the draft on CUDA0 needs about 600 MiB" in misfit(est, tight, "CUDA0")


def test_rpc_flags_and_the_launch_script(tmp_path):
    from ggufpair.engine.binary import Binary
    from ggufpair.tune.profile import launch_script

    cfg = ServerConfig(target=tmp_path / "t.gguf", draft=tmp_path / "d.gguf", gpu_layers="all",
                       rpc=("192.168.1.20:50052", "127.0.0.1:50053"), draft_device="none")
    argv = cfg.argv(NEW)
    assert argv[argv.index("--rpc") + 1] == "192.168.1.20:50052,127.0.0.1:50053"
    assert argv[argv.index("--spec-draft-device") + 1] == "none" and argv[argv.index("-ngl") + 1] == "all"
    script = launch_script(cfg, Binary(tmp_path / "llama-server", "flag"), NEW)
    assert "#   on 192.168.1.20: ggml-rpc-server -H 0.0.0.0 -p 50052" in script
    assert "#   on 127.0.0.1: ggml-rpc-server -H 127.0.0.1 -p 50053" in script
    assert "# WARNING: RPC is unauthenticated" in script
    without = parse_help("\n".join(line for line in (HELP / "llama-server-11434-spec.txt").read_text().splitlines()
                                    if not line.startswith("--rpc")))  # a build made without -DGGML_RPC=ON
    assert not without.has("--rpc")
    with pytest.raises(UsageError, match="no RPC backend"):
        cfg.argv(without)
