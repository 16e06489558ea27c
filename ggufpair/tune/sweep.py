"""Measuring configurations one launch at a time, each failure marked on its point and the sweep going on."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import Dialect
from ggufpair.engine.measure import Measurement, Prompt, measure, spread_text
from ggufpair.engine.runner import LlamaServer, kind_statistics
from ggufpair.errors import EngineError

Events = Callable[[str], None]


@dataclass(frozen=True)
class PointResult:
    config: ServerConfig
    measurement: Measurement | None
    error: str | None
    seconds: float
    reused: bool = False  # taken from an interrupted tune's journal, not launched in this session
    logs: str | None = None  # a reused point: the folder that holds its launch's logs (the interrupted tune's)

    @property
    def ok(self) -> bool:
        return self.measurement is not None

    @property
    def label(self) -> str:
        return config_label(self.config)


def config_label(c: ServerConfig) -> str:
    """`no draft, KV f16/f16`, `n_max 4, KV f16/f16 + draft q8_0/q8_0` (K/V types), `ngram-mod n_match 24,
    n_min 48, n_max 64, KV f16/f16`, or an n-gram kind and a draft together."""
    kv = f"KV {c.cache_type_k}/{c.cache_type_v}"
    parts = []
    if c.ngram is not None:
        from ggufpair.engine.kinds import kind

        parts.append(kind(c.ngram).describe(c.ngram_values))
    if c.has_draft:
        parts.append(("MTP " if c.fileless_drafter else "") + f"n_max {c.draft_max}" + (f", p_min {c.p_min:g}" if c.p_min else ""))
    if c.has_draft and c.draft_sampling == "probabilistic":
        parts[-1] += " (probabilistic)"
    at = f", {c.parallel} at once" if c.parallel > 1 else ""
    at += placement_text(c)
    if not parts:
        return f"no draft, {kv}{at}"
    tail = (f" + {'MTP' if c.fileless_drafter else 'draft'} {c.draft_cache_type_k}/{c.draft_cache_type_v}"
            if c.has_draft else "")
    return f"{' + '.join(parts)}, {kv}{tail}{at}"


def placement_text(c: ServerConfig) -> str:
    """`, on CUDA0 split 3:1, draft on CUDA1` where the configuration says where things run (engine.placement);
    nothing where llama.cpp decides."""
    parts = []
    if c.devices or c.tensor_split:
        parts.append("on " + ",".join(c.devices or ("all devices",))
                     + (" split " + ":".join(f"{x:g}" for x in c.tensor_split) if c.tensor_split else ""))
    if c.draft is not None and c.draft_gpu_layers == 0 or c.draft is not None and c.draft_device == "none" and not c.rpc:
        parts.append("draft on the host")
    elif c.draft is not None and c.draft_device not in (None, "none"):
        parts.append(f"draft on {c.draft_device}")
    return "".join(f", {p}" for p in parts)


def draft_tag(draft) -> str:
    """A short, unique, file-name-safe name for a draft file (its stem and a digest of its path): the runs of
    several drafts in one tune keep apart logs and predictions."""
    import hashlib

    return f"{Path(draft).stem}-{hashlib.sha256(str(draft).encode()).hexdigest()[:6]}"


def point_name(c: ServerConfig) -> str:
    """A file-name-safe name for a configuration's server log."""
    parts = [f"{'mtp' if c.fileless_drafter else 'draft'}{c.draft_max}-{c.cache_type_k}-{c.draft_cache_type_k}"
             ] if c.has_draft else []
    if parts and c.draft_sampling == "probabilistic":
        parts[-1] += "-prob"
    if parts and c.p_min:
        parts[-1] += f"-p{c.p_min:g}"
    if c.ngram is not None:
        parts.insert(0, c.ngram + "".join(f"-{v}" for _, v in c.ngram_params) + f"-{c.cache_type_k}")
    name = "+".join(parts) or f"baseline-{c.cache_type_k}"
    placed = placement_text(c)
    if placed:  # where it ran: a short digest keeps each placement's log apart
        import hashlib

        name += "-at" + hashlib.sha256(placed.encode()).hexdigest()[:6]
    return name + (f"-np{c.parallel}" if c.parallel > 1 else "")


def run_point(binary: Binary, dialect: Dialect, config: ServerConfig, prompts: list[Prompt], *, n_predict: int,
              repeats: int, log_dir: Path, on_event: Events = lambda _: None, stop_early=None,
              cancel=None, sampling=None, log_tag: str = "") -> PointResult:
    """Measure one configuration; a kind that learns across requests (config.stateful) gets a fresh server
    for every repetition, so that no timed request meets its own text in the server's table. A server with
    several slots (config.parallel) is measured with that many requests in flight at once; `sampling`
    (engine.traffic.Sampling) is how every request is sampled (default: greedy). `log_tag` starts the log's
    name (the draft's `draft_tag` when a tune measures several)."""
    start = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    name, label = (f"{log_tag}-" if log_tag else "") + point_name(config), config_label(config)
    on_event(f"measuring {label}" + (" (a fresh server per repetition: the kind keeps its table across "
                                     "requests)" if config.stateful and repeats > 1 else ""))
    servers: list[LlamaServer] = []

    def stop(server: LlamaServer) -> None:
        server.stop()
        if mix:
            stats.append(kind_statistics(server.log_text()))

    def fresh() -> LlamaServer:
        if servers:
            stop(servers[-1])
        n = len(servers)
        run_config = config.with_(extra=(*config.extra, "-lv", "4")) if mix else config
        servers.append(LlamaServer(binary, run_config, dialect=dialect,
                                   log_path=log_dir / (f"{name}.log" if not n else f"{name}.{n + 1}.log")))
        return servers[-1].start()

    restart = fresh if config.stateful else None
    mix = config.ngram is not None and config.has_draft  # which of its kinds drafted: llama.cpp's -lv 4 statistics
    stats: list[dict] = []
    try:
        m = measure(fresh(), prompts, n_predict=n_predict, repeats=repeats, stop_early=stop_early, cancel=cancel,
                    restart=restart, concurrency=config.parallel, sampling=sampling)
        if m.stalls and not (cancel is not None and cancel.is_set()):
            # A request far slower than the others: something else had the machine. Measure once more (on the
            # same server, or on fresh ones for a kind with a table) and keep the run without stalls; a second
            # stalled run is kept and flagged.
            on_event(f"  {m.stalls} request(s) ran at under half the median rate: measuring again")
            again = measure(fresh() if restart else servers[-1], prompts, n_predict=n_predict, repeats=repeats,
                            stop_early=stop_early, cancel=cancel, warmup=restart is not None, restart=restart,
                            concurrency=config.parallel, sampling=sampling)
            if not (cancel is not None and cancel.is_set()):  # a cancelled second run is partial: keep the first
                m = again if again.stalls <= m.stalls else m
    except EngineError as e:
        on_event(f"  failed: {e.message}")
        return PointResult(config, None, e.message, time.perf_counter() - start)
    finally:
        if servers:
            stop(servers[-1])
    if config.stateful and m.seen_texts:  # cannot happen by construction; if it did, the number would flatter
        why = (f"{m.seen_texts} timed request(s) met their own text on a server whose {config.ngram} table keeps "
               "it: not an honest measurement")
        on_event(f"  discarded: {why}")
        return PointResult(config, None, why, time.perf_counter() - start)
    if mix:
        by_kind: dict[str, dict[str, int]] = {}
        for server_stats in stats:  # each server's statistics are cumulative for that server
            for name, v in server_stats.items():
                total = by_kind.setdefault(name, dict.fromkeys(v, 0))
                for key, n in v.items():
                    total[key] += n
        m = replace(m, by_kind=by_kind)
        on_event("  drafted by kind: " + (", ".join(f"{k} {v['drafts']} drafts, {v['accepted_tokens']} tokens "
                                                    "accepted" for k, v in by_kind.items()) or "not reported"))
    extra = f", acceptance {m.acceptance_rate:.0%}" if m.acceptance_rate is not None else ""
    if m.concurrency > 1 and m.request_tps_median is not None:
        extra += (f"; {m.concurrency} at once: {m.request_tps_median:.1f} tok/s per request, first token after "
                  f"{m.ttft_ms_median or 0:.0f} ms")
    extra += " (stopped early: clearly slower)" if m.stopped_early else ""
    extra += f" ({m.stalls} stalled request(s): unreliable)" if m.stalls else ""
    rate = "tok/s in all" if m.concurrency > 1 else "tok/s"
    on_event(f"  {m.tokens_per_second:.1f} {rate} ({spread_text(m, 'spread ')}){extra}")
    return PointResult(config, m, None, time.perf_counter() - start)


def beats(candidate: Measurement, baseline: Measurement) -> bool:
    """Faster than the baseline beyond the noise: every repetition of the candidate above every one of the baseline."""
    return min(candidate.tps_runs) > max(baseline.tps_runs)
