"""What a tune is given before its first launch, decided once for both faces (the CLI's `tune` and the TUI):
the memory budget over the devices listed and each device's share of it, the placements worth measuring on
them, and whether the target's own MTP layers are measured."""

from __future__ import annotations

from dataclasses import dataclass

from ggufpair.engine.devices import Device, device_kind
from ggufpair.engine.placement import DeviceBudget, Placement, placements
from ggufpair.errors import UsageError


@dataclass(frozen=True)
class DevicePlan:
    devices: tuple[Device, ...]  # those the tune may use (`--devices` applied)
    budget: int  # bytes over all of them, less the margin
    kind: str  # "gpu" or "cpu" (engine.devices.device_kind)
    budgets: tuple[DeviceBudget, ...]  # per device, where any device takes layers; () on the host alone
    placements: tuple[Placement, ...]  # the default first; () on the host alone, or over RPC (placed by --rpc)


def plan_devices(devs: list[Device], margin: float, with_drafter: bool, chosen: tuple[str, ...] = (),
                 rpc: bool = False) -> DevicePlan:
    """The budget and the placements for `devs` (the build's listing, RPC devices included). `with_drafter`:
    a draft file or MTP runs beside the target (placements then say where it goes)."""
    if chosen:
        devs = [d for d in devs if d.name in chosen]
    budgets = tuple(DeviceBudget(d.name, int(d.free_bytes * (1 - margin)), d.name != "CPU") for d in devs)
    offload = any(b.offload for b in budgets)
    return DevicePlan(tuple(devs), int(sum(d.free_bytes for d in devs) * (1 - margin)), device_kind(devs),
                      budgets if offload else (),
                      tuple(placements(list(budgets), with_drafter, chosen)) if offload and not rpc else ())


@dataclass(frozen=True)
class Remote:
    """The rpc-servers a tune spreads the target over (`--rpc`, as llama-server takes it), checked reachable
    before anything is launched (llama-server aborts on a host it cannot reach)."""
    hosts: tuple[str, ...] = ()  # host:port, in llama.cpp's order (RPC0, RPC1, ...)
    warnings: tuple[str, ...] = ()  # RPC is unauthenticated: said for every host that is not loopback

    @classmethod
    def parse(cls, text: str | None) -> "Remote":
        from ggufpair.engine.rpc import check_reachable, parse_rpc, warnings

        hosts = parse_rpc(text)
        if hosts:
            check_reachable(hosts)
        return cls(tuple(str(h) for h in hosts), tuple(warnings(hosts)))

    def place(self, devs: list[Device], has_draft: bool) -> dict:
        """ServerConfig fields for the target's layers on the remote devices (every layer offloaded) and a
        draft file kept local: on the local GPU where there is one, else off every offload device (`-devd
        none`: llama.cpp #23242 crashed mixing target and draft on one RPC device). Nothing without hosts."""
        if not self.hosts:
            return {}
        local_gpu = next((d.name for d in devs if not d.name.startswith("RPC") and d.name != "CPU"), None)
        return {"rpc": self.hosts, "gpu_layers": "all", "draft_device": (local_gpu or "none") if has_draft else None}


def check_mtp_asked(target, kinds: tuple[str, ...]) -> None:
    if "mtp" in kinds and target.draft_kind != "mtp":
        raise UsageError(f"--kinds mtp: {target.path.name} has no NextN (MTP) layers (no blk.N.nextn.eh_proj "
                         "tensor)", hint="MTP comes with models converted with their MTP heads (GLM-4.5, Qwen3.5/3-Next, "
                                         "DeepSeek-V3/V4, ...)")


def mtp_offered(target, dialect, kinds: tuple[str, ...]) -> tuple[bool, str | None]:
    """(whether the tune measures the target's own MTP layers, a note to show when it could but will not):
    asked for (`mtp`, or `draft`, which means every model drafter), the target carries NextN blocks, and the
    build has draft-mtp. `mtp` asked of a target without them is an error; `draft` of one says nothing."""
    asked = "mtp" in kinds or "draft" in kinds
    has = target.draft_kind == "mtp"
    check_mtp_asked(target, kinds)
    if asked and has and "draft-mtp" not in dialect.spec_types:
        return False, (f"{target.path.name} has MTP layers, but this llama-server build has no --spec-type "
                       "draft-mtp: MTP is not measured")
    return asked and has, None
