"""Backend devices and their memory: llama-server's `--list-devices`, NVML when an NVIDIA GPU and its
library are present, and host RAM (psutil) as the budget on a CPU-only machine."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 1 << 20


@dataclass(frozen=True)
class Device:
    name: str  # CUDA0, Vulkan0, ... or "CPU" for host memory
    description: str
    total_bytes: int
    free_bytes: int
    source: str  # "list-devices", "nvml" or "psutil"


_LINE = re.compile(r"^\s*(?P<name>[A-Za-z][\w]*\d+):\s*(?P<desc>.*?)\s*\((?P<total>\d+)\s*MiB,\s*(?P<free>\d+)\s*MiB free\)")


def parse_list_devices(text: str) -> list[Device]:
    """Parse `llama-server --list-devices` (`  CUDA0: NVIDIA ... (24564 MiB, 23900 MiB free)`)."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            out.append(Device(m["name"], m["desc"], int(m["total"]) * MIB, int(m["free"]) * MIB, "list-devices"))
    return out


def list_devices(binary: Path, timeout: float = 60, rpc: tuple[str, ...] = ()) -> list[Device]:
    """The build's devices; with `rpc` (host:port, reachable: see engine.rpc), the remote ones too (RPC0...)."""
    # --rpc first: llama-server lists the devices as soon as it reads --list-devices, and exits
    args = [str(binary)] + (["--rpc", ",".join(rpc)] if rpc else []) + ["--list-devices"]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_list_devices(out.stdout + out.stderr)


def nvml_devices() -> list[Device]:
    """NVIDIA GPUs through libnvidia-ml, if present (no Python binding needed)."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return []

    class Memory(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    if nvml.nvmlInit_v2() != 0:
        return []
    try:
        count = ctypes.c_uint()
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        out = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                continue
            name = ctypes.create_string_buffer(96)
            nvml.nvmlDeviceGetName(handle, name, 96)
            mem = Memory()
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) == 0:
                out.append(Device(f"CUDA{i}", name.value.decode(errors="replace"), mem.total, mem.free, "nvml"))
        return out
    finally:
        nvml.nvmlShutdown()


def host_memory() -> Device:
    vm = psutil.virtual_memory()
    return Device("CPU", _cpu_name(), vm.total, vm.available, "psutil")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"


_NO_DEVICES: set[Path] = set()
"""Builds whose --list-devices listed nothing (CPU builds): asked once, not on every server start."""


def devices(binary: Path | None, rpc: tuple[str, ...] = ()) -> list[Device]:
    """GPUs as llama.cpp sees them (NVML's numbers where they surely are the same card), else the host as a
    CPU device. With `rpc`, the remote devices join the list, and the host stays in it when no local GPU
    does (it runs what is not offloaded: the draft, kept local)."""
    if rpc and binary:
        found = list_devices(binary, rpc=rpc)
        local = [d for d in found if not d.name.startswith("RPC")]
        if local and any(d.name.startswith("CUDA") for d in local):
            local = with_nvml(local, nvml_devices(), os.environ)
        return (local or [host_memory()]) + [d for d in found if d.name.startswith("RPC")]
    found = list_devices(binary) if binary and binary not in _NO_DEVICES else []
    if binary and not found:
        _NO_DEVICES.add(binary)
    if found and any(d.name.startswith("CUDA") for d in found):
        found = with_nvml(found, nvml_devices(), os.environ)
    return found or [host_memory()]


def with_nvml(found: list[Device], nvml: list[Device], env) -> list[Device]:
    """llama.cpp's CUDA devices, each with NVML's memory figures when NVML's device of the same index is the
    same card. NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES, CUDA numbers the fastest first
    and honours it: with either variable set the indices may name different cards, so llama.cpp's own figures
    (cudaMemGetInfo, from --list-devices) are kept; and a device whose name differs from NVML's is kept too."""
    if env.get("CUDA_VISIBLE_DEVICES") is not None or env.get("CUDA_DEVICE_ORDER"):
        return found
    by_name = {d.name: d for d in nvml}
    out = []
    for d in found:
        n = by_name.get(d.name)
        out.append(n if n is not None and n.description.strip() == d.description.strip() else d)
    return out


def device_kind(devs: list[Device]) -> str:
    """"gpu" when llama.cpp listed devices to offload to, else "cpu" (the budget is host memory)."""
    return "cpu" if all(d.name == "CPU" for d in devs) else "gpu"


def describe(devs: list[Device]) -> str:
    return "; ".join(f"{d.name} {d.description} ({d.total_bytes // MIB} MiB, {d.free_bytes // MIB} MiB free)" for d in devs)
