"""The tune: the fastest configuration that fits memory, found in few launches.

For each target KV type, a no-draft baseline on the same prompts. For each (target KV, draft KV) pair that
fits the memory budget: a launch with the longest draft (its acceptance by position) and one with a short
draft (with the first, the cost of a step), a `Predictor` for every other length, then real runs of the
best predictions, then the p_min values on the best length; each model drafter (several may be tuned) on
its own. Then the n-gram kinds (scouted at their defaults, the fastest searched), the best lookup beside the
best draft, the baseline again, and the best of each kind at the other concurrency levels. Configurations
that cannot fit are dropped before any launch; a run clearly slower than the best so far stops after its
first repetition; a time budget lists the launches it had no time for.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import QUANTIZED_KV, ServerConfig, spec_type_for
from ggufpair.engine.dialect import Dialect
from ggufpair.engine.memory import estimate_pair, flash_attn_on, pad256
from ggufpair.engine.traffic import level_config
from ggufpair.errors import UsageError
from ggufpair.format.model_info import ModelInfo
# the tune's data, importable from here as before the split
from ggufpair.tune.result import (KV_RANK, NOISE_FLOOR, DraftChoice, TuneResult, TuneSpec,  # noqa: F401
                                  estimate_key, load_key, ngram_search_size, noise, simplicity)
from ggufpair.tune.stages import (_draft_sampling_stage, _draft_stage, _level_stage, _mix_stage, _ngram_stage,
                                  _placement_stage, choice_name, with_kv)
from ggufpair.tune.sweep import PointResult, draft_tag, run_point

Events = Callable[[str], None]
MIN_CTX = 512


def check_tune_values(*, tokens: int, repeats: int, margin: float, ctx: int | None, kv: str, draft_kv: str,
                      lengths: str) -> tuple[int, ...]:
    """The values a tune is asked for, checked before anything is loaded or launched (the CLI and the TUI
    alike); returns the draft lengths, parsed."""
    from ggufpair.engine.config import KV_TYPES

    if tokens < 2:
        raise UsageError(f"--tokens {tokens}: at least 2 per prompt (an answer's first token comes from the "
                         "prompt; the generation rate is measured on the ones after it)")
    if repeats < 1:
        raise UsageError(f"--repeats {repeats}: at least one repetition is needed")
    if not 0 <= margin < 1:
        raise UsageError(f"--margin {margin}: a fraction of the memory budget kept free, from 0 to below 1")
    if ctx is not None and ctx < 256:
        raise UsageError(f"--ctx {ctx}: llama.cpp pads the context to 256; give at least 256")
    for flag, value in (("--kv", kv), ("--draft-kv", draft_kv)):
        bad = [t for t in value.split(",") if t not in KV_TYPES]
        if bad:
            raise UsageError(f"{flag} {value}: {', '.join(bad)} is not a KV cache type llama.cpp accepts",
                             hint=f"one of {', '.join(KV_TYPES)}")
    return parse_lengths(lengths)


def same_file(a: Path, b: Path) -> None:
    """Refuse one file as both target and draft."""
    if Path(a).resolve() == Path(b).resolve():
        raise UsageError(f"{b}: the target and the draft are the same file",
                         hint="a draft is a smaller model of the target's family (`ggufpair tune --target ...` suggests some)")


def parse_lengths(text: str) -> tuple[int, ...]:
    out: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-"))
                if hi < lo:
                    raise UsageError(f"bad draft lengths {text!r}: the range {part.strip()} is empty",
                                     hint=f"write it low-high: {hi}-{lo}")
                out.update(range(lo, hi + 1))
            elif part.strip():
                out.add(int(part))
    except ValueError:
        raise UsageError(f"bad draft lengths {text!r}", hint="use 1-16 or 2,4,8") from None
    if not out:
        raise UsageError("no draft lengths given", hint="use 1-16 or 2,4,8")
    if min(out) < 1:
        raise UsageError(f"bad draft lengths {text!r}: a draft is at least 1 token long")
    return tuple(sorted(out))


def largest_context(target: ModelInfo, draft: ModelInfo | None, base: ServerConfig, budget: int | None,
                    device: str = "cpu", fa_takes_value: bool = True) -> int:
    """The largest context (multiple of 256, up to the target's training context for each of the
    configuration's slots) whose f16 KV fits."""
    limit = pad256(target.context_length or 4096) * max(1, base.parallel)
    if budget is None:
        return limit
    lo, hi = MIN_CTX // 256, limit // 256
    if estimate_pair(target, draft, base.with_(ctx=MIN_CTX), device, fa_takes_value).total > budget:
        return 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_pair(target, draft, base.with_(ctx=mid * 256), device, fa_takes_value).total <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * 256


def context_that_fits(target: ModelInfo, draft: ModelInfo | None, base: ServerConfig, budget: int,
                      device: str = "cpu", fa_takes_value: bool = True) -> int:
    """`largest_context`, or a UsageError when not even the smallest context fits the budget."""
    ctx = largest_context(target, draft, base, budget, device, fa_takes_value)
    if ctx == 0:
        raise UsageError(f"the pair does not fit the memory budget ({budget >> 20} MiB) even at a {MIN_CTX} context")
    return ctx


class Cancelled(Exception):
    """Raised inside a tune when its cancel event is set; `tune` catches it and returns what it has."""


def tune(binary: Binary, dialect: Dialect, spec: TuneSpec, target: ModelInfo, draft: ModelInfo | None,
         log_dir: Path, on_event: Events = lambda _: None, on_point: Callable[[PointResult], None] = lambda _: None,
         cancel: threading.Event | None = None, journal=None) -> TuneResult:
    """Run the search. `on_point` sees every measured point; setting `cancel` stops the server in use and
    returns the partial result (`cancelled` set). `journal` (tune.resume.TuneJournal) keeps every point as it
    completes, and hands back the ones an interrupted tune of the same pair measured under the same
    conditions instead of launching them again (never a baseline)."""
    if draft is not None:  # its draft runs would all fail, and "no draft" would pass for a measured answer
        from ggufpair.pairing.verdict import check_pair, parse_override

        check_pair(target, draft, dict(parse_override(a) for a in spec.base.overrides)).refuse(
            hint="fix it first: `ggufpair fix DRAFT --reference TARGET` (in the TUI: o, no copy, or f, patch the "
                 "file, on the verdict screen)")
    start = time.perf_counter()
    result = TuneResult(log_dir=log_dir)
    try:
        _search(binary, dialect, spec, target, draft, log_dir, on_event, on_point, cancel, result, journal)
    except Cancelled:
        result.cancelled = True
        on_event("cancelled: partial results kept")
    result.seconds = time.perf_counter() - start
    return result


QUANT_BLOCK = 32  # elements per block of every quantized KV type llama.cpp accepts (q8_0 ... iq4_nl)


def kv_type_misfit(info: ModelInfo, type_k: str, type_v: str, whose: str = "the target",
                   flash_attn: bool = True) -> str | None:
    """Why llama.cpp would refuse these KV types for this model, or None: with flash attention, a quantized
    cache needs head sizes that are a multiple of its block (llama-context.cpp:N3853-3872; without it the
    check is not made, and a quantized V needs flash attention anyway)."""
    if not flash_attn:
        return None
    for name, ttype, dims in (("K", type_k, (info.head_dim_k, info.head_dim_k_swa)),
                              ("V", type_v, (info.head_dim_v, info.head_dim_v_swa))):
        bad = [d for d in dims if ttype in QUANTIZED_KV and d and d % QUANT_BLOCK]
        if bad:
            return (f"{whose}'s {name} head size {bad[0]} is not a multiple of {QUANT_BLOCK}, so llama.cpp refuses "
                    f"a {ttype} {name} cache for it")
    return None


def with_draft_kind(spec: TuneSpec, draft: ModelInfo | None) -> TuneSpec:
    """The spec with the --spec-type a special draft (EAGLE-3, DFlash, DSpark) runs by; unchanged otherwise."""
    kind = spec_type_for(draft.draft_kind) if draft is not None else "draft-simple"
    if kind == "draft-simple" or spec.base.spec_type != "draft-simple":
        return spec
    return replace(spec, base=spec.base.with_(spec_type=kind))


def _search(binary, dialect, spec, target, draft, log_dir, on_event, on_point, cancel, result, journal=None) -> None:
    spec = with_draft_kind(spec, draft)
    prompts = list(spec.prompts)
    result.prompts = tuple(prompts)
    per_request_ctx, primary = spec.base.ctx, spec.concurrency[0]
    distinct = len({json.dumps(p.payload(), sort_keys=True) for p in prompts})
    if max(spec.concurrency) > 1 and distinct < max(spec.concurrency):
        raise UsageError(f"--concurrency {max(spec.concurrency)} needs at least that many distinct prompts in flight; "
                         f"the prompt set has {distinct}", hint="add categories or prompts, or a lower level")
    spec = replace(spec, base=level_config(spec.base, primary, per_request_ctx))
    result.level, result.sampling, result.placements = primary, spec.sampling, spec.placements
    base_cfg = spec.base.without_speculation()
    lengths = sorted(set(spec.lengths))
    planned = spec.planned_launches(draft is not None)
    result.planned = planned
    launch_times: list[float] = []
    started = time.perf_counter()

    def progress(label: str) -> None:
        done = len(result.points)
        eta = (sum(launch_times) / len(launch_times)) * max(planned - done, 0) if launch_times else None
        on_event(f"[{done + 1}/{planned}] {label}" + (f" (ETA {eta:.0f} s)" if eta is not None else ""))

    infos = {d.path: d for d in ([draft] if draft is not None else [])}
    infos.update({c.path: c.info for c in spec.more_drafts})

    def fits(config: ServerConfig, what: str, _key=None) -> bool:
        config_draft = infos.get(config.draft) if config.has_draft else None
        if config.flash_attn == "off" and (config.cache_type_v in QUANTIZED_KV or config.draft_cache_type_v in QUANTIZED_KV):
            result.pruned.append((what, "a quantized V cache needs flash attention, which is off"))
            return False
        fa = flash_attn_on(config, dialect.fa_takes_value)
        misfit = kv_type_misfit(target, config.cache_type_k, config.cache_type_v, flash_attn=fa) or (
            config_draft is not None
            and kv_type_misfit(config_draft, config.draft_cache_type_k, config.draft_cache_type_v, "the draft", fa)) or (
            config.fileless_drafter  # MTP: its draft context holds the target's own heads
            and kv_type_misfit(target, config.draft_cache_type_k, config.draft_cache_type_v, "the MTP context", fa))
        if not misfit and config.p_min and config_draft is not None and not config_draft.takes_p_min:
            misfit = ("llama.cpp refuses a p_min above 0 for this DSpark draft: it has no confidence head "
                      "(dflash.has_confidence_head false)")
        if misfit:
            result.pruned.append((what, misfit))
            on_event(f"skipped {what}: {misfit}")
            return False
        est = estimate_pair(target, config_draft, config, spec.device, dialect.fa_takes_value)
        result.estimates[estimate_key(config)] = est
        if spec.device_budgets:  # GPUs or RPC devices: each device's share, as llama.cpp assigns it
            from ggufpair.engine.placement import device_loads, misfit as placement_misfit

            loads = device_loads(target, config_draft, config, est, list(spec.device_budgets), dialect.fa_takes_value)
            result.loads[load_key(config)] = loads
            why = placement_misfit(est, list(spec.device_budgets), config=config, loads=loads)
            if why:
                result.pruned.append((what, why))
                on_event(f"skipped {what}: {why}")
                return False
        need = sum(loads.values()) if spec.device_budgets else est.total  # what the answer will say it takes
        if spec.budget_bytes is not None and need > spec.budget_bytes:
            result.pruned.append((what, f"needs about {need / 2**20:.0f} MiB, the budget is "
                                        f"{spec.budget_bytes / 2**20:.0f} MiB"))
            on_event(f"skipped {what}: does not fit memory")
            return False
        return True

    def best_tps(level: int) -> float:
        measured = [p.measurement.tokens_per_second for p in result.points if p.ok and p.config.parallel == level]
        return max(measured, default=0.0)

    def run(config: ServerConfig, label: str, allow_early_stop: bool) -> PointResult:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        saved = journal.take(config) if journal is not None else None
        if saved is not None:  # costs no time: taken before the budget is looked at
            on_event(f"reused from the interrupted tune: {label}: {saved.measurement.tokens_per_second:.1f} tok/s")
            result.points.append(saved)
            result.reused += 1
            on_point(saved)
            return saved
        if spec.budget_seconds is not None and launch_times:
            typical = sum(launch_times) / len(launch_times)
            if time.perf_counter() - started + typical > spec.budget_seconds:
                if not result.unmeasured:
                    on_event(f"the time budget ({spec.budget_seconds:.0f} s) is spent: the launches left are listed, "
                             "not measured")
                result.unmeasured.append(label)
                return PointResult(config, None, "not measured: the time budget was spent", 0.0)
        progress(label)
        threshold = spec.early_stop * best_tps(config.parallel)
        stop = (lambda tps: tps < threshold) if allow_early_stop and threshold > 0 else None
        tag = draft_tag(config.drafter) if (spec.more_drafts or spec.mtp) and config.has_draft else ""
        if again := sum(p.config == config for p in result.points):  # measured before (the baseline again): a
            tag = "-".join(filter(None, (f"again{again if again > 1 else ''}", tag)))  # log of its own
        point = run_point(binary, dialect, config, prompts, n_predict=spec.n_predict, repeats=spec.repeats,
                          log_dir=log_dir, on_event=on_event, stop_early=stop, cancel=cancel, sampling=spec.sampling,
                          log_tag=tag)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        result.points.append(point)
        if journal is not None:
            journal.save(point, log_dir)
        launch_times.append(point.seconds)
        on_point(point)
        return point

    # Under a time budget the most decisive launches come first: the other target KV types' baselines are
    # measured just before their first draft run (`_draft_stage`), not all up front.
    for tkv in spec.target_kv[:1] if spec.budget_seconds else spec.target_kv:
        cfg = with_kv(base_cfg, tkv)
        if fits(cfg, f"no draft, KV {tkv}", (tkv, None)):
            run(cfg, f"baseline, target KV {tkv}", allow_early_stop=False)

    # The draftless kinds first: one launch each says whether lookup finds anything in these prompts, and
    # where it does, the speed it reaches is the bar a model drafter's ceiling is held to (`_draft_stage`).
    if spec.ngram_kinds:
        _ngram_stage(spec, base_cfg, result, run, fits, on_event)
    choices = ([DraftChoice(draft, spec.base.overrides, spec.base.spec_type)] if draft is not None else [])
    choices += [*spec.more_drafts, *([DraftChoice.mtp(target)] if spec.mtp else [])]
    for choice in choices:
        cap = choice.kind.length_cap(target, choice.info)
        if cap is not None and cap < 1:
            result.pruned.append((choice.name, f"llama.cpp would let it draft no token ({choice.kind.cap_reason}: "
                                               f"{cap})"))
            on_event(f"skipped {choice.name}: llama.cpp would let it draft no token")
            continue
        mine = [n for n in lengths if cap is None or n <= cap] or [cap]  # empty only under a cap
        if mine != lengths:
            on_event(f"{choice.name}: llama.cpp caps its drafts at {cap} token(s) ({choice.kind.cap_reason}): "
                     f"lengths {', '.join(map(str, mine))}")
        _draft_stage(spec, spec.base.with_(draft=choice.file, overrides=choice.overrides, spec_type=choice.kind.spec_type),
                     mine, choice_name(choice, choices), result, run, fits, on_event, dialect)
    if choices:
        _draft_sampling_stage(spec, dialect, result, run, on_event)
    if spec.budget_seconds:  # the baselines deferred under the budget that no draft run needed yet
        for tkv in spec.target_kv[1:]:
            cfg = with_kv(base_cfg, tkv)
            if result.baseline_for(cfg) is None and fits(cfg, f"no draft, KV {tkv}"):
                run(cfg, f"baseline, target KV {tkv}", allow_early_stop=False)
    if spec.ngram_kinds:
        _mix_stage(spec, dialect, draft, result, run, fits, on_event)
    _placement_stage(spec, result, run, fits, on_event)
    # The baseline again, after the speculating runs: the pair measured at both ends of the tune, so a machine
    # busy while the first baseline ran cannot make speculation look faster than it is (the faster counts).
    best = result.best_speculative
    if best is not None and not (cancel is not None and cancel.is_set()):
        tkv = best.config.cache_type_k
        run(with_kv(base_cfg, tkv), f"baseline again, target KV {tkv} (the other end of the pairing)",
            allow_early_stop=False)
    for level in spec.concurrency[1:]:
        if cancel is not None and cancel.is_set():
            break
        _level_stage(spec, level, per_request_ctx, result, run, fits, on_event)
