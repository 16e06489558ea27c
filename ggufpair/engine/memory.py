"""Memory of a configuration: estimated from GGUF metadata alone, and measured from llama.cpp's own
reporting of a running server (`-lv 4`: model buffer, KV cache, output and compute buffer lines, target
first, then the draft).

KV cache (llama-kv-cache.cpp, llama-kv-cache-iswa.cpp): n_ctx = PAD256(-c); per stream n_ctx_seq =
n_ctx (unified) or PAD256(n_ctx / n_seq); sliding-window layers hold PAD256(min(n_ctx_seq, n_swa * (unified ?
n_seq : 1) + n_ubatch)) cells; each layer with its own KV stores cells * n_head_kv * head_dim * bytes per
element of the cache type, for K and for V (V uses the widest layer when flash attention is off).

The compute buffer is not in the metadata: it is modelled from the graph's largest live tensors for one
micro-batch (feed-forward activations and the residual stream) plus the attention mask (flash attention)
or the attention scores (without), which grow with the context. Measured on Gemma 3 and SmolLM2 here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ggufpair.engine.config import QUANTIZED_KV, ServerConfig
from ggufpair.format.gguf_constants import GGMLQuantizationType, Keys
from ggufpair.format.model_info import ModelInfo

MIB = 1 << 20
N_UBATCH = 512
BYTES_PER_ELEMENT = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
                     "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32}
# Weight types the CPU backend repacks into an extra buffer for its matrix kernels (not on GPUs), by the CPU
# features it needs and the row count they must divide (ggml-cpu/repack.cpp:N4974-5135,
# ggml_repack_get_optimal_repack_type; RISC-V's vector-length-dependent kernels are left out).
_Q = GGMLQuantizationType
X86_REPACK = {_Q.Q4_0: ("avx2", 8), _Q.Q4_K: ("avx2", 8), _Q.IQ4_NL: ("avx2", 8), _Q.MXFP4: ("avx2", 8),
              _Q.Q2_K: ("avx512f", 8)}
ARM_REPACK = {_Q.Q4_0: 4, _Q.Q4_K: 8, _Q.Q5_K: 8, _Q.Q6_K: 8, _Q.Q8_0: 4, _Q.IQ4_NL: 4, _Q.MXFP4: 4}


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, ARM `Features`)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def repacked_on_cpu(ttype: GGMLQuantizationType, rows: int, features: frozenset[str], machine: str) -> bool:
    """Whether llama.cpp's CPU backend keeps a repacked copy of a weight of this type and row count."""
    if machine in ("x86_64", "amd64", "i686"):
        need = X86_REPACK.get(ttype)
        return need is not None and need[0] in features and rows % need[1] == 0
    if machine in ("aarch64", "arm64"):
        multiple = ARM_REPACK.get(ttype)
        dot = "asimddp" in features or "i8mm" in features  # dotprod / matmul_int8
        return multiple is not None and dot and rows % multiple == 0
    return False


def repack_bytes(info: ModelInfo, features: frozenset[str] | None = None, machine: str | None = None) -> int:
    """Bytes of the CPU backend's repacked weight copies (the token embedding is only looked up, not repacked)."""
    import platform

    features = cpu_features() if features is None else features
    machine = (machine or platform.machine()).lower()
    return sum(t.n_bytes for t in info.header.tensors
               if len(t.shape) >= 2 and t.name != "token_embd.weight"
               and repacked_on_cpu(t.type, int(t.shape[1]), features, machine))


def pad256(n: int) -> int:
    return (n + 255) // 256 * 256


@dataclass(frozen=True)
class ModelMemory:
    weights: int
    kv_k: int
    kv_v: int
    output: int
    compute: int

    @property
    def kv(self) -> int:
        return self.kv_k + self.kv_v

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.output + self.compute

    def to_dict(self) -> dict[str, int]:
        return {"weights": self.weights, "kv": self.kv, "kv_k": self.kv_k, "kv_v": self.kv_v,
                "output": self.output, "compute": self.compute, "total": self.total}


@dataclass(frozen=True)
class PairMemory:
    target: ModelMemory
    draft: ModelMemory | None

    @property
    def total(self) -> int:
        return self.target.total + (self.draft.total if self.draft else 0)


def flash_attn_on(config: ServerConfig, fa_takes_value: bool = True) -> bool:
    """`auto` resolves to on where the backend supports it (CPU and CUDA do) on builds whose -fa takes a value;
    older builds have a bare -fa switch, off unless given (ggufpair gives it for a quantized V cache)."""
    quantized_v = config.cache_type_v in QUANTIZED_KV or config.draft_cache_type_v in QUANTIZED_KV
    if config.flash_attn == "auto" and not fa_takes_value:
        return quantized_v
    return config.flash_attn != "off" or quantized_v


def kv_cells(info: ModelInfo, *, ctx: int, parallel: int, unified: bool, swa_full: bool = False) -> tuple[int, int]:
    """Cells per stream of a full-attention layer and of a sliding-window layer."""
    n_seq = max(1, parallel)
    n_ctx = pad256(ctx)
    n_ctx_seq = n_ctx if unified else pad256(n_ctx // n_seq)
    window = info.sliding_window or 0
    swa_cells = n_ctx_seq if swa_full else pad256(min(n_ctx_seq, window * (n_seq if unified else 1) + N_UBATCH))
    return n_ctx_seq, swa_cells


def kv_bytes(info: ModelInfo, *, ctx: int, parallel: int, type_k: str, type_v: str, flash_attn: bool,
             unified: bool | None = None, swa_full: bool = False) -> tuple[int, int]:
    n_seq = max(1, parallel)
    # llama-server turns kv_unified on only for an automatic slot count (-np -1, server.cpp:N168-173); an
    # explicit -np, as ggufpair always passes, keeps one stream of PAD256(n_ctx / n_seq) cells per slot.
    unified = False if unified is None else unified
    n_ctx_seq, swa_cells = kv_cells(info, ctx=ctx, parallel=parallel, unified=unified, swa_full=swa_full)
    n_stream = 1 if unified else n_seq
    swa = set(info.swa_layers)
    heads_kv = info.n_head_kv or (1,) * (info.n_layers or 0)
    k_total = v_total = 0.0
    v_widest = max((heads_kv[il] * ((info.head_dim_v_swa if il in swa else info.head_dim_v) or 0)
                    for il in info.kv_layers), default=0)
    for il in info.kv_layers:
        cells = swa_cells if il in swa else n_ctx_seq
        hk = (info.head_dim_k_swa if il in swa else info.head_dim_k) or 0
        hv = (info.head_dim_v_swa if il in swa else info.head_dim_v) or 0
        n_kv = heads_kv[il] if il < len(heads_kv) else heads_kv[-1]
        k_total += cells * n_stream * n_kv * hk * BYTES_PER_ELEMENT[type_k]
        v_width = n_kv * hv if flash_attn else v_widest
        v_total += cells * n_stream * v_width * BYTES_PER_ELEMENT[type_v]
    return int(k_total), int(v_total)


def _feed_forward_length(info: ModelInfo) -> int:
    value = info.header.get(Keys.LLM.FEED_FORWARD_LENGTH.format(arch=info.architecture))
    if isinstance(value, int):
        return value
    if hasattr(value, "items"):
        return max(value.items(), default=0)
    return 4 * (info.n_embd or 0)


def compute_bytes(info: ModelInfo, *, ctx: int, parallel: int, flash_attn: bool, unified: bool = False) -> int:
    n_embd = info.n_embd or 0
    n_ff = _feed_forward_length(info)
    n_head = max(info.n_head or (1,))
    head_dim = info.head_dim_k or 0
    # the widest attention: a full-context layer, over one stream's cells (the reserve's micro-batch is spread
    # over the slots' streams, so the scores are n_ctx_seq x n_ubatch per head in all)
    n_kv, _ = kv_cells(info, ctx=ctx, parallel=parallel, unified=unified)
    fixed = N_UBATCH * 4 * (3 * n_ff + 2 * n_embd)
    if flash_attn:
        return int(fixed + N_UBATCH * 4 * 2 * n_head * head_dim + n_kv * N_UBATCH * 2)
    return int(fixed + n_kv * N_UBATCH * (4 * n_head + 4))


# Pipeline parallelism (llama_context, src/llama-context.cpp): a model whose layers all sit on more than one
# device, split by layer, KV offloaded and no tensor overrides, gets a scheduler with GGML_SCHED_MAX_COPIES (4)
# copies of every graph input and of every tensor a device receives from another (ggml-backend.cpp, passes 5-6;
# each copy pinned for the whole graph). The masks (one per attention kind, n_kv x n_ubatch, F16 with flash
# attention, F32 without) are such inputs on every device and on the host; the residual stream enters each
# device; the first device also takes the token/embedding/mixed-batch inputs. The residual-sized terms are
# calibrated on Gemma 3 270M and SmolLM2 135M at contexts 2048 and 8192 with and without flash attention
# (two real rpc-servers, `bench/memory.py --placements`), where this model lands within 1.5 MiB of llama.cpp's
# buffers: extra = 3 masks + (first device) 12.5, (each later one) 3.5, (host) 6 residual rows of the
# micro-batch with flash attention; 14.5, 5.5 and 9 without.
N_SCHED_COPIES = 4
_PIPELINE_ROWS = {True: (12.5, 3.5, 6.0), False: (14.5, 5.5, 9.0)}  # (first device, later device, host)
# The host's own compute buffer when a model's layers are all on other devices (the token lookup and the graph
# inputs): the masks and 4 residual rows with flash attention, 5 without (measured on the same two models).
_HOST_ROWS = {True: 4.0, False: 5.0}


def mask_bytes(info: ModelInfo, *, ctx: int, parallel: int, flash_attn: bool, unified: bool = False,
               swa_full: bool = False) -> int:
    """The attention masks of one micro-batch: one per attention kind the model has (full, sliding-window)."""
    full, swa = kv_cells(info, ctx=ctx, parallel=parallel, unified=unified, swa_full=swa_full)
    swa_layers = set(info.swa_layers)
    kinds = [full] if any(il not in swa_layers for il in info.kv_layers) else []
    kinds += [swa] if swa_layers else []
    return int(sum(kinds) * N_UBATCH * (2 if flash_attn else 4))


def pipeline_bytes(info: ModelInfo, config: ServerConfig, fa_takes_value: bool = True) -> tuple[int, int, int]:
    """What pipeline parallelism adds to the compute buffers: (the first device, each later device, the host)."""
    fa, masks, row = _graph_inputs(info, config, fa_takes_value)
    pinned = (N_SCHED_COPIES - 1) * masks
    return tuple(int(pinned + k * row) for k in _PIPELINE_ROWS[fa])


def host_compute_bytes(info: ModelInfo, config: ServerConfig, fa_takes_value: bool = True) -> int:
    """The host's compute buffer for a model none of whose layers runs on the host."""
    fa, masks, row = _graph_inputs(info, config, fa_takes_value)
    return int(masks + _HOST_ROWS[fa] * row)


def _graph_inputs(info: ModelInfo, config: ServerConfig, fa_takes_value: bool) -> tuple[bool, int, int]:
    """(flash attention on, the masks' bytes, one residual row's bytes for the micro-batch) under `config`."""
    fa = flash_attn_on(config, fa_takes_value)
    masks = mask_bytes(info, ctx=config.ctx, parallel=config.parallel, flash_attn=fa,
                       unified=config.kv_unified, swa_full="--swa-full" in config.extra)
    return fa, masks, (info.n_embd or 0) * N_UBATCH * 4


def estimate_model(info: ModelInfo, config: ServerConfig, *, draft: bool = False, device: str = "cpu",
                   fa_takes_value: bool = True) -> ModelMemory:
    """One model's memory for `config` (`draft` picks the draft's KV types; the draft shares the target's context)."""
    fa = flash_attn_on(config, fa_takes_value)
    tk, tv = (config.draft_cache_type_k, config.draft_cache_type_v) if draft else (config.cache_type_k, config.cache_type_v)
    k, v = kv_bytes(info, ctx=config.ctx, parallel=config.parallel, type_k=tk, type_v=tv, flash_attn=fa,
                    unified=config.kv_unified, swa_full="--swa-full" in config.extra)
    weights = info.weight_bytes
    if device == "cpu":
        weights += repack_bytes(info)
    output = info.vocab.n_tokens * 4 * max(1, config.parallel)
    compute = compute_bytes(info, ctx=config.ctx, parallel=config.parallel, flash_attn=fa, unified=config.kv_unified)
    return ModelMemory(weights, k, v, output, compute)


def estimate_mtp(target: ModelInfo, config: ServerConfig, fa_takes_value: bool = True) -> ModelMemory:
    """The MTP context (draft-mtp): no weights of its own (it runs on the target's NextN blocks, loaded with the
    target), a KV cache for those blocks at the draft KV types, its outputs and a compute buffer."""
    fa = flash_attn_on(config, fa_takes_value)
    n_seq, n_ctx = max(1, config.parallel), pad256(config.ctx)
    cells = n_ctx if config.kv_unified else pad256(n_ctx // n_seq) * n_seq
    heads_kv = target.n_head_kv or (1,)
    nextn = range((target.n_layers or 0) - target.n_nextn, target.n_layers or 0)
    k = sum(cells * heads_kv[min(il, len(heads_kv) - 1)] * (target.head_dim_k or 0) for il in nextn)
    v = sum(cells * heads_kv[min(il, len(heads_kv) - 1)] * (target.head_dim_v or 0) for il in nextn)
    return ModelMemory(0, int(k * BYTES_PER_ELEMENT[config.draft_cache_type_k]),
                       int(v * BYTES_PER_ELEMENT[config.draft_cache_type_v]),
                       target.vocab.n_tokens * 4 * n_seq, compute_bytes(target, ctx=config.ctx, parallel=config.parallel,
                                                                         flash_attn=fa, unified=config.kv_unified))


def estimate_pair(target: ModelInfo, draft: ModelInfo | None, config: ServerConfig, device: str = "cpu",
                  fa_takes_value: bool = True) -> PairMemory:
    """`fa_takes_value`: the build's -fa takes on|off|auto (the dialect's), which decides what `auto` means.
    With MTP (a drafter without a file) the draft part is the MTP context."""
    if draft is None and config.fileless_drafter:
        return PairMemory(estimate_model(target, config, device=device, fa_takes_value=fa_takes_value),
                          estimate_mtp(target, config, fa_takes_value))
    return PairMemory(estimate_model(target, config, device=device, fa_takes_value=fa_takes_value),
                      estimate_model(draft, config, draft=True, device=device, fa_takes_value=fa_takes_value)
                      if draft is not None else None)


# ------------------------------------------------------------------------------------------------ measured

_MODEL_BUF = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB")
_KV = re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB .*K \((\w+)\):\s+([\d.]+) MiB, V \((\w+)\):\s+([\d.]+) MiB")
_OUT = re.compile(r"llama_context:\s+\S+\s+output buffer size =\s+([\d.]+) MiB")
_COMPUTE = re.compile(r"sched_reserve:\s+\S+ compute buffer size =\s+([\d.]+) MiB")
DRAFT_MARK = re.compile(r"loading draft model|common_speculative_init")


def measured_from_log(log: str) -> PairMemory:
    """llama.cpp's own numbers from a `-lv 4` server log: the target's lines, then the draft's."""
    lines = log.splitlines()
    split = next((i for i, line in enumerate(lines) if DRAFT_MARK.search(line)), len(lines))
    parts = ["\n".join(lines[:split]), "\n".join(lines[split:])]
    models = [_measured_part(p) for p in parts]
    return PairMemory(models[0], models[1] if models[1].total else None)  # MTP: a context with no weights of its own


def _mib(x: str) -> int:
    return int(float(x) * MIB)


def _measured_part(text: str) -> ModelMemory:
    weights = sum(_mib(m.group(2)) for m in _MODEL_BUF.finditer(text))
    k = v = 0
    for m in _KV.finditer(text):
        k += _mib(m.group(3))
        v += _mib(m.group(5))
    output = sum(_mib(m.group(1)) for m in _OUT.finditer(text))
    compute = sum(_mib(m.group(1)) for m in _COMPUTE.finditer(text))
    return ModelMemory(weights, k, v, output, compute)


_BUF_BY_DEVICE = re.compile(r"(?:load_tensors|llama_kv_cache|llama_context|sched_reserve):\s+(\S+)\s+"
                            r"(model|KV|output|compute) buffer size =\s+([\d.]+) MiB")
HOST_BUFFERS = ("CPU", "CPU_Mapped", "CPU_REPACK", "CUDA_Host", "CPU_AARCH64")  # host memory, whatever the name


_USING_DEVICE = re.compile(r"using device (\S+) \(([^)]+)\)")


def measured_by_device(log: str, rpc: tuple[str, ...] = ()) -> dict[str, int]:
    """Bytes llama.cpp reports allocating on each device, target and draft together, from a `-lv 4` log:
    model, KV, output and compute buffers by the device name each line gives (`CUDA0`); host buffers (CPU,
    CPU_Mapped, CPU_REPACK, CUDA_Host) count as `CPU`. A remote buffer is named by its server's own device
    index and endpoint (`RPC0[127.0.0.1:50053]`): it is given the name the device list has for that endpoint
    (the log's "using device RPC1 (127.0.0.1:50053)", else the endpoint's place in `rpc`)."""
    by_endpoint = {ep: name for name, ep in _USING_DEVICE.findall(log)}
    out: dict[str, int] = {}
    for m in _BUF_BY_DEVICE.finditer(log):
        name, _, endpoint = m.group(1).partition("[")
        endpoint = endpoint.rstrip("]")
        if endpoint:
            name = by_endpoint.get(endpoint) or (f"RPC{rpc.index(endpoint)}" if endpoint in rpc else name)
        name = "CPU" if name in HOST_BUFFERS else name
        out[name] = out.get(name, 0) + _mib(m.group(3))
    return out
