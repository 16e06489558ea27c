"""Where target and draft run, and whether each device holds its share, checked before any launch.

With remote devices (engine.rpc) the target's layers are offloaded (`-ngl all`) over every device that takes
layers, the local GPUs and the RPC devices alike, split as llama.cpp splits them by default: in proportion
to each device's free memory (`-ts` unset). The draft runs where `-devd` puts it: a local GPU, or the host
(`none`). Each device's share (weights, KV cache, compute) must fit its free memory less the margin.
"""

from __future__ import annotations

from dataclasses import dataclass

from ggufpair.engine.memory import PairMemory


@dataclass(frozen=True)
class DeviceBudget:
    name: str  # RPC0, CUDA1, CPU ...
    budget_bytes: int  # free memory less the margin
    offload: bool = False  # takes the target's layers (a GPU, an RPC device); the host CPU does not


def target_shares(est: PairMemory, devices: list[DeviceBudget]) -> dict[str, int]:
    """Bytes of the target each offload device receives: llama.cpp's default split, by free memory."""
    takers = [d for d in devices if d.offload]
    total = sum(d.budget_bytes for d in takers)
    if not takers or total <= 0:
        return {}
    return {d.name: int(est.target.total * d.budget_bytes / total) for d in takers}


def misfit(est: PairMemory, devices: list[DeviceBudget], draft_on: str | None = None) -> str | None:
    """Why the placement does not fit, or None. `draft_on`: the device the draft is placed on (-devd);
    None or "none": the host."""
    load = dict(target_shares(est, devices))
    host = next((d for d in devices if not d.offload), None)
    where = draft_on if draft_on and draft_on != "none" and any(d.name == draft_on for d in devices) else (
        host.name if host else None)
    if where is not None and est.draft is not None:
        load[where] = load.get(where, 0) + est.draft.total
    for d in devices:
        need = load.get(d.name, 0)
        if need > d.budget_bytes:
            what = "the target's share" if d.offload and where != d.name else (
                "the draft" if not d.offload else "the target's share and the draft")
            return (f"{what} on {d.name} needs about {need / 2**20:.0f} MiB, the device has "
                    f"{d.budget_bytes / 2**20:.0f} MiB to give")
    return None
