"""The tune: the fastest configuration that fits memory, found in few launches.

For each target KV type, a no-draft baseline on the same prompts. For each (target KV, draft KV) pair that
fits the memory budget: a launch with the longest draft (its acceptance by position) and one with a short
draft (with the first, the cost of a step), a `Predictor` for every other length, then real runs of the
best predictions. Configurations that cannot fit are dropped before any launch; a run clearly slower than
the best so far stops after its first repetition.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import QUANTIZED_KV, ServerConfig, spec_type_for
from ggufpair.engine.dialect import Dialect
from ggufpair.engine.measure import Prompt
from ggufpair.engine.memory import PairMemory, estimate_pair, flash_attn_on, pad256
from ggufpair.errors import UsageError
from ggufpair.format.model_info import ModelInfo
from ggufpair.tune.predict import Predictor, step_sample
from ggufpair.tune.sweep import PointResult, beats, run_point

Events = Callable[[str], None]
MIN_CTX = 512


@dataclass(frozen=True)
class TuneSpec:
    base: ServerConfig  # target, draft, ctx, threads, overrides...: everything but the swept values
    lengths: tuple[int, ...] = tuple(range(1, 17))
    target_kv: tuple[str, ...] = ("f16", "q8_0", "q4_0")
    draft_kv: tuple[str, ...] = ("f16", "q8_0", "q4_0")
    prompts: tuple[Prompt, ...] = ()
    n_predict: int = 128
    repeats: int = 2
    budget_bytes: int | None = None  # None: no memory limit checked
    confirm: int = 2  # real runs of the best predicted lengths
    early_stop: float = 0.85  # stop a run whose first repetition is below this fraction of the best so far
    device: str = "cpu"
    ngram_kinds: tuple[str, ...] = ()  # draftless kinds to try (engine.kinds), in llama.cpp's priority order
    mix: bool = True  # with a draft too: the best n-gram kind beside the best draft configuration
    ngram_finalists: int = 2  # n-gram kinds whose parameters are searched after the scouting runs

    def planned_launches(self, with_draft: bool) -> int:
        """Launches the search plans: a baseline per target KV type; with a draft, a long and a short run per
        (target KV, draft KV) pair and the confirmations; per n-gram kind a scouting run at its defaults, and for
        the finalists a short length, a confirmation and the other key and floor values; the mix; and the
        baseline again at the end."""
        from ggufpair.engine.kinds import kind

        combos = len(self.target_kv) * len(self.draft_kv) if with_draft else 0
        runs = 2 if len(self.lengths) > 1 else 1  # the long and the short run (one, when one length is asked)
        confirm = min(self.confirm, (len(self.lengths) - runs) * combos)  # lengths not measured already
        kinds = [kind(k) for k in self.ngram_kinds]
        finalists = sorted(kinds, key=lambda k: -ngram_search_size(k))[:self.ngram_finalists]  # at most these
        ngram = len(kinds) + sum(ngram_search_size(k) for k in finalists)
        mix = 1 if with_draft and kinds and self.mix else 0
        speculating = combos or kinds
        return len(self.target_kv) + runs * combos + confirm + ngram + mix + (1 if speculating else 0)


def ngram_search_size(k) -> int:
    """Launches after a kind's scouting run, at most: its floor's lowest value, every key below the default,
    and every other length (a short run that drafts, a confirmation)."""
    n = 0
    for p in k.params:
        below = [v for v in p.values if v < p.default]
        if p.role == "min":
            n += bool(below)
        elif p.role == "key":
            n += len(below)
        elif p.role == "length":
            n += len(p.values) - 1
    return n


@dataclass
class TuneResult:
    points: list[PointResult] = field(default_factory=list)
    pruned: list[tuple[str, str]] = field(default_factory=list)  # (configuration, why)
    predictions: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    estimates: dict[tuple[str, str], PairMemory] = field(default_factory=dict)
    seconds: float = 0.0
    cancelled: bool = False
    planned: int = 0
    prompts: tuple[Prompt, ...] = ()  # what every point was measured on

    @property
    def launches(self) -> int:
        return len(self.points)

    def measured(self, speculating: bool) -> list[PointResult]:
        """The points that measured something: baselines (False), or configurations that speculate (True)."""
        return [p for p in self.points if p.ok and p.config.speculates == speculating]

    def live(self, speculating: bool) -> list[PointResult]:
        """The measured points that count: baselines, and speculating runs with speculation live."""
        return [p for p in self.measured(speculating) if p.measurement.speculative or not speculating]

    def baseline_for(self, config: ServerConfig) -> PointResult | None:
        """The faster of the baselines with the same target KV (measured before and after the drafts)."""
        return max((p for p in self.measured(False) if p.config.cache_type_k == config.cache_type_k
                    and p.config.cache_type_v == config.cache_type_v),
                   key=lambda p: p.measurement.tokens_per_second, default=None)

    @property
    def best_speculative(self) -> PointResult | None:
        """The fastest speculating configuration (a draft, an n-gram kind, or both) that ran with it live."""
        return max(self.live(True), key=lambda p: p.measurement.tokens_per_second, default=None)

    @property
    def best_baseline(self) -> PointResult | None:
        return max(self.measured(False), key=lambda p: p.measurement.tokens_per_second, default=None)

    @property
    def contenders(self) -> list[PointResult]:
        """What the recommendation is chosen from: the draft configurations (speculation live) whose every run
        beats every run of the best baseline, by more than the run-to-run noise, or else the baselines; of
        those, the ones within the fastest's run-to-run noise of it."""
        base = self.best_baseline
        if base is None:
            return []
        b = base.measurement
        drafts = [p for p in self.live(True) if beats(p.measurement, b)
                  and p.measurement.tokens_per_second >= b.tokens_per_second * (1 + noise(p.measurement, b))]
        pool = drafts or self.measured(False)
        top = max(pool, key=lambda p: p.measurement.tokens_per_second).measurement
        # The band is the fastest's noise: a configuration's own large spread does not widen it.
        return [p for p in pool if p.measurement.tokens_per_second * (1 + noise(top)) >= top.tokens_per_second]

    @property
    def recommended(self) -> PointResult | None:
        """The simplest of the contenders: measured speeds that noise cannot tell apart do not decide, so two
        tunes of the same pair agree unless a configuration moves across the noise band."""
        return min(self.contenders, key=simplicity, default=None)

    @property
    def draft_pays_off(self) -> bool:
        """Whether speculation (of any kind) is recommended."""
        rec = self.recommended
        return rec is not None and rec.config.speculates

    def category_winners(self) -> dict[str, tuple[PointResult, float]]:
        """Per prompt category, the fastest configuration there and its speedup over the best baseline's rate
        on that category (the baselines ran the same prompts in the same session); the baseline itself where
        nothing beats it by more than the noise. Runs stopped early after one repetition do not compete."""
        base = self.best_baseline
        if base is None:
            return {}
        out = {}
        for cat, b in base.measurement.per_category.items():
            ref = b.get("tokens_per_second") or 0.0
            if not ref:
                continue
            best, best_tps = base, ref
            for p in self.live(True):
                if p.measurement.stopped_early:
                    continue
                tps = p.measurement.per_category.get(cat, {}).get("tokens_per_second", 0.0)
                if tps > best_tps and tps >= ref * (1 + noise(p.measurement, base.measurement)):
                    best, best_tps = p, tps
            out[cat] = (best, best_tps / ref)
        return out


NOISE_FLOOR = 0.05
"""Launch-to-launch drift seen on a quiet 2-core machine; differences below it are not a stable ranking."""
KV_RANK = {"f32": 0, "bf16": 0, "f16": 0, "q8_0": 1, "q5_1": 2, "q5_0": 2, "iq4_nl": 3, "q4_1": 3, "q4_0": 3}


def noise(*measurements) -> float:
    """The relative difference two measurements need before their order means anything: the floor, each one's
    spread over repetitions, and for one with stalled requests the spread of its requests."""
    def stalled_spread(m) -> float:
        rates = sorted(r for r in m.request_tps if r > 0)
        return (rates[-1] - rates[0]) / rates[len(rates) // 2] if m.stalls and rates else 0.0

    return max(NOISE_FLOOR, *(m.tps_spread for m in measurements), *(stalled_spread(m) for m in measurements))


def simplicity(point: PointResult) -> tuple:
    """Among equally fast configurations, prefer no speculation, then an n-gram kind alone (no second model),
    then a draft, then both; then the less quantized KV caches (target first), then the shorter draft, then
    llama.cpp's own default parameters of the n-gram kind."""
    c = point.config
    kind_rank = (0 if not c.speculates else 1 if not c.has_draft else 2 if c.ngram is None else 3)
    off_default = 0
    if c.ngram is not None:
        from ggufpair.engine.kinds import kind

        off_default = sum(v != kind(c.ngram).param(n).default for n, v in c.ngram_params)
    return (kind_rank, KV_RANK.get(c.cache_type_k, 9), KV_RANK.get(c.draft_cache_type_k, 9) if c.has_draft else 0,
            c.draft_max if c.has_draft else 0, off_default)


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
    """The largest context (multiple of 256, up to the target's training context) whose f16 KV fits."""
    limit = pad256(target.context_length or 4096)
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


def _kv(config: ServerConfig, tkv: str, dkv: str | None = None) -> ServerConfig:
    changes = {"cache_type_k": tkv, "cache_type_v": tkv}
    if dkv is not None:
        changes.update(draft_cache_type_k=dkv, draft_cache_type_v=dkv)
    return config.with_(**changes)


class Cancelled(Exception):
    """Raised inside a tune when its cancel event is set; `tune` catches it and returns what it has."""


def tune(binary: Binary, dialect: Dialect, spec: TuneSpec, target: ModelInfo, draft: ModelInfo | None,
         log_dir: Path, on_event: Events = lambda _: None, on_point: Callable[[PointResult], None] = lambda _: None,
         cancel: threading.Event | None = None) -> TuneResult:
    """Run the search. `on_point` sees every measured point; setting `cancel` stops the server in use and
    returns the partial result (`cancelled` set)."""
    if draft is not None:  # its draft runs would all fail, and "no draft" would pass for a measured answer
        from ggufpair.pairing.verdict import check_pair, parse_override

        check_pair(target, draft, dict(parse_override(a) for a in spec.base.overrides)).refuse(
            hint="fix it first: `ggufpair fix DRAFT --reference TARGET` (in the TUI: o, no copy, or f, patch the "
                 "file, on the verdict screen)")
    start = time.perf_counter()
    result = TuneResult()
    try:
        _search(binary, dialect, spec, target, draft, log_dir, on_event, on_point, cancel, result)
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


def _search(binary, dialect, spec, target, draft, log_dir, on_event, on_point, cancel, result) -> None:
    spec = with_draft_kind(spec, draft)
    prompts = list(spec.prompts)
    result.prompts = tuple(prompts)
    base_cfg = spec.base.without_speculation()
    lengths = sorted(set(spec.lengths))
    combos = [(t, d) for t in spec.target_kv for d in (spec.draft_kv if draft is not None else ())]
    planned = spec.planned_launches(draft is not None)
    result.planned = planned
    launch_times: list[float] = []

    def progress(label: str) -> None:
        done = len(result.points)
        eta = (sum(launch_times) / len(launch_times)) * max(planned - done, 0) if launch_times else None
        on_event(f"[{done + 1}/{planned}] {label}" + (f" (ETA {eta:.0f} s)" if eta is not None else ""))

    def fits(config: ServerConfig, what: str, key) -> bool:
        if config.flash_attn == "off" and (config.cache_type_v in QUANTIZED_KV or config.draft_cache_type_v in QUANTIZED_KV):
            result.pruned.append((what, "a quantized V cache needs flash attention, which is off"))
            return False
        fa = flash_attn_on(config, dialect.fa_takes_value)
        misfit = kv_type_misfit(target, config.cache_type_k, config.cache_type_v, flash_attn=fa) or (
            config.has_draft and draft is not None
            and kv_type_misfit(draft, config.draft_cache_type_k, config.draft_cache_type_v, "the draft", fa))
        if misfit:
            result.pruned.append((what, misfit))
            on_event(f"skipped {what}: {misfit}")
            return False
        est = estimate_pair(target, draft if config.has_draft else None, config, spec.device, dialect.fa_takes_value)
        result.estimates[key] = est
        if spec.budget_bytes is not None and est.total > spec.budget_bytes:
            result.pruned.append((what, f"needs about {est.total / 2**20:.0f} MiB, the budget is "
                                        f"{spec.budget_bytes / 2**20:.0f} MiB"))
            on_event(f"skipped {what}: does not fit memory")
            return False
        return True

    def best_tps() -> float:
        measured = [p.measurement.tokens_per_second for p in result.points if p.ok]
        return max(measured, default=0.0)

    def run(config: ServerConfig, label: str, allow_early_stop: bool) -> PointResult:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        progress(label)
        threshold = spec.early_stop * best_tps()
        stop = (lambda tps: tps < threshold) if allow_early_stop and threshold > 0 else None
        point = run_point(binary, dialect, config, prompts, n_predict=spec.n_predict, repeats=spec.repeats,
                          log_dir=log_dir, on_event=on_event, stop_early=stop, cancel=cancel)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        result.points.append(point)
        launch_times.append(point.seconds)
        on_point(point)
        return point

    for tkv in spec.target_kv:
        cfg = _kv(base_cfg, tkv)
        if fits(cfg, f"no draft, KV {tkv}", (tkv, None)):
            run(cfg, f"baseline, target KV {tkv}", allow_early_stop=False)

    if draft is not None:
        # The short run: the second-shortest length (a length of 1 is rarely best and measures little).
        short_n, long_n = (lengths[1] if len(lengths) > 2 else lengths[0]), lengths[-1]
        candidates: list[tuple[float, ServerConfig]] = []
        for tkv, dkv in combos:
            cfg = _kv(spec.base, tkv, dkv)
            if not fits(cfg.with_(draft_max=long_n), f"target KV {tkv}, draft KV {dkv}", (tkv, dkv)):
                continue
            long_pt = run(cfg.with_(draft_max=long_n), f"target KV {tkv}, draft KV {dkv}, n_max {long_n}", True)
            if long_n == short_n:
                continue
            # Measured even when the long run failed (a crash, memory): the tune goes on with what runs.
            short_pt = run(cfg.with_(draft_max=short_n), f"target KV {tkv}, draft KV {dkv}, n_max {short_n}", True)
            if not (long_pt.ok and short_pt.ok and long_pt.measurement.speculative):
                continue
            s1 = step_sample(short_n, short_pt.measurement, short_pt.measurement.predicted_ms)
            s2 = step_sample(long_n, long_pt.measurement, long_pt.measurement.predicted_ms)
            if s1 is None or s2 is None or not long_pt.measurement.accept_by_position:
                on_event(f"  no prediction for KV {tkv}/{dkv}: this build's /metrics has no speculative counters "
                         f"(spec_decode_*), so only n_max {short_n} and {long_n} were measured; name other lengths "
                         "with --lengths to measure them")
                continue
            base_m = base_pt.measurement if (base_pt := result.baseline_for(cfg)) else None
            base_ms = base_m.predicted_ms / base_m.predicted_tokens if base_m and base_m.predicted_tokens else None
            predictor = Predictor.fit(s1, s2, long_pt.measurement.accept_by_position, base_ms)
            ranked = predictor.best(lengths)
            result.predictions[(tkv, dkv)] = ranked
            if not predictor.linear:
                on_event(f"  the step costs of n_max {short_n} and {long_n} ({s1.step_ms:.0f} and {s2.step_ms:.0f} ms) "
                         "fit no straight line with a positive fixed cost (a disturbed run?): other lengths are "
                         "interpolated through the measured steps and the baseline's")
            on_event(f"  predicted best for KV {tkv}/{dkv}: " + ", ".join(f"n_max {n}: {t:.1f}" for n, t in ranked[:3]))
            # the best predicted lengths not measured yet (the long and short runs need no confirmation)
            unmeasured = [(n, t) for n, t in ranked if n not in (short_n, long_n)]
            candidates += [(t, cfg.with_(draft_max=n)) for n, t in unmeasured[:spec.confirm]]
        measured = {(p.config.cache_type_k, p.config.draft_cache_type_k, p.config.draft_max)
                    for p in result.points if p.config.has_draft}
        confirmed = 0
        for predicted, cfg in sorted(candidates, key=lambda c: -c[0]):
            if confirmed >= spec.confirm:
                break
            key = (cfg.cache_type_k, cfg.draft_cache_type_k, cfg.draft_max)
            if key in measured:
                continue
            measured.add(key)
            run(cfg, f"confirm n_max {cfg.draft_max}, KV {cfg.cache_type_k}/{cfg.draft_cache_type_k} "
                     f"(predicted {predicted:.1f} tok/s)", True)
            confirmed += 1
    if spec.ngram_kinds:
        _ngram_stage(spec, base_cfg, result, run, fits, on_event)
        _mix_stage(spec, dialect, draft, result, run, fits, on_event)
    # The baseline again, after the speculating runs: the pair measured at both ends of the tune, so a machine
    # busy while the first baseline ran cannot make speculation look faster than it is (the faster counts).
    best = result.best_speculative
    if best is not None and not (cancel is not None and cancel.is_set()):
        tkv = best.config.cache_type_k
        run(_kv(base_cfg, tkv), f"baseline again, target KV {tkv} (the other end of the pairing)",
            allow_early_stop=False)


def _ngram_stage(spec: TuneSpec, base_cfg: ServerConfig, result: TuneResult, run, fits, on_event) -> None:
    """The draftless kinds: each at llama.cpp's defaults first (the run that tells whether lookup finds
    anything in these prompts at all); a kind that drafted nothing is left out, and the fastest with
    parameters (`ngram_finalists`) have them searched (`_search_kind`), the others left out with the reason."""
    from ggufpair.engine.kinds import kind
    from ggufpair.tune.predict import steps_of

    bl = result.best_baseline
    if bl is None:
        result.pruned += [(k, "no baseline was measured to compare it with") for k in spec.ngram_kinds]
        return
    tkv = bl.config.cache_type_k
    cfg0 = _kv(base_cfg, tkv)
    if not fits(cfg0, "n-gram kinds", (tkv, None)):
        return
    base_step = bl.measurement.predicted_ms / steps_of(bl.measurement)  # 0 when it timed nothing: no prediction
    scouts: list[tuple[object, PointResult]] = []
    for name in spec.ngram_kinds:
        scouts.append((kind(name), run(cfg0.with_ngram(name), f"{kind(name).describe({})}, KV {tkv} "
                                       "(llama.cpp's defaults)", True)))
    alive = []
    for k, pt in scouts:
        m = pt.measurement
        if not pt.ok:
            result.pruned.append((k.name, f"failed to run: {pt.error}"))
        elif not m.speculative:
            result.pruned.append((k.name, "drafted nothing on these prompts: its lookup never found a match"))
        else:
            alive.append((k, pt))
    alive.sort(key=lambda kp: -kp[1].measurement.tokens_per_second)
    # The fastest kinds with parameters to search go on (a kind without any is done once scouted).
    searchable = [(k, pt) for k, pt in alive if ngram_search_size(k)]
    finalists = searchable[:max(spec.ngram_finalists, 1)]
    for k, pt in searchable[len(finalists):]:
        lead_kind, lead = finalists[-1][0].name, finalists[-1][1].measurement.tokens_per_second
        result.pruned.append((k.name, f"{pt.measurement.tokens_per_second:.1f} tok/s at its defaults against "
                                      f"{lead_kind}'s {lead:.1f}: its parameters were not searched"))
        on_event(f"  {k.name}: {pt.measurement.tokens_per_second:.1f} tok/s at its defaults, behind "
                 f"{lead_kind} ({lead:.1f}): not searched further")
    for k, scout in finalists:
        _search_kind(k, scout, cfg0, base_step, tkv, result, run, on_event)


def _search_kind(k, scout: PointResult, cfg0: ServerConfig, base_step: float, tkv: str, result: TuneResult, run,
                 on_event) -> None:
    """One kind's parameters after its scouting run, one at a time from what decides most: its floor (the
    shortest draft kept), then its key (the tokens matched: shorter keys find more matches, tried down from the
    default while each step pays), then its length at that key (a short run, the other lengths predicted from
    the long run's acceptance by position and drafting rate, the best prediction confirmed; only lengths the
    floor allows, so the two runs compared differ in length alone)."""
    from ggufpair.tune.predict import drafted_fraction, lookup_step_sample

    values = dict(scout.config.ngram_values)
    best = scout

    def at(changes: dict[str, int]) -> ServerConfig:
        return cfg0.with_ngram(k.name, {**values, **changes})

    def measured(cfg: ServerConfig) -> PointResult | None:
        return next((q for q in result.points if q.config == cfg), None)

    def drafted(pt: PointResult | None) -> bool:
        return pt is not None and pt.ok and pt.measurement.speculative and pt.measurement.drafts > 0

    def keep(pt: PointResult) -> bool:
        # A run stopped early (one repetition, below another kind's best) still says which way this kind's
        # parameters go: the kind is compared with itself here, the recommendation compares across kinds.
        nonlocal best, values
        if drafted(pt) and pt.measurement.tokens_per_second > best.measurement.tokens_per_second:
            best, values = pt, dict(pt.config.ngram_values)
            return True
        return False

    def measure_at(p, value: int, why: str = "") -> PointResult:
        cfg = at({p.name: value})
        return measured(cfg) or run(cfg, f"{why}{k.name} {p.name} {value}, KV {tkv}", True)

    for p in (q for q in k.params if q.role == "min" and len(q.values) > 1):
        lower = [v for v in p.values if v < values[p.name]]
        if lower:
            keep(measure_at(p, lower[0]))
    for p in (q for q in k.params if q.role == "key" and len(q.values) > 1):
        for value in sorted((v for v in p.values if v < values[p.name]), reverse=True):
            if not keep(measure_at(p, value)):
                break  # a shorter key that does not pay: shorter still will not be tried
    length = k.length
    floor = next((values[p.name] for p in k.params if p.role == "min"), 0)
    lengths = [v for v in (length.values if length else ()) if v >= floor]
    if length is None or len(lengths) < 2 or base_step <= 0 or not drafted(best):
        return
    long_pt, long_v = best, values[length.name]
    short = None
    for short_v in (v for v in lengths if v < long_v):  # the shortest that drafts at all (a short m may find none)
        short = measure_at(length, short_v)
        keep(short)
        if drafted(short):
            break
    if not drafted(short):
        return
    s1 = lookup_step_sample(short_v, short.measurement, base_step)
    s2 = lookup_step_sample(long_v, long_pt.measurement, base_step)
    if s1 is None or s2 is None or not long_pt.measurement.accept_by_position:
        return
    predictor = Predictor.fit(s1, s2, long_pt.measurement.accept_by_position, base_step,
                              drafted=drafted_fraction(long_pt.measurement))
    ranked = predictor.best(lengths)
    result.predictions[(k.name, length.name)] = ranked
    on_event(f"  predicted for {k.name} by {length.name}: " + ", ".join(f"{n}: {t:.1f}" for n, t in ranked[:3]))
    todo = [(n, t) for n, t in ranked if measured(at({length.name: n})) is None]
    if todo:
        n, t = todo[0]
        keep(measure_at(length, n, f"confirm (predicted {t:.1f} tok/s) "))


def _mix_stage(spec: TuneSpec, dialect: Dialect, draft, result: TuneResult, run, fits, on_event) -> None:
    """The best n-gram kind beside the best draft configuration: llama.cpp tries the n-gram lookup first at
    every step and falls back to the draft model when it finds nothing."""
    if draft is None or not spec.mix:
        return
    lookups = [p for p in result.live(True) if p.config.ngram is not None and not p.config.has_draft]
    drafts = [p for p in result.live(True) if p.config.has_draft and p.config.ngram is None]
    if not lookups or not drafts:
        return
    look = max(lookups, key=lambda p: p.measurement.tokens_per_second)
    dr = max(drafts, key=lambda p: p.measurement.tokens_per_second)
    cfg = dr.config.with_ngram(look.config.ngram, look.config.ngram_values)
    what = f"{look.config.ngram} with the draft"
    if not dialect.ngram_with_draft:
        result.pruned.append((what, "this llama-server build runs an n-gram kind only without a draft model"))
        return
    if fits(cfg, what, (cfg.cache_type_k, cfg.draft_cache_type_k)):
        pt = run(cfg, f"{look.config.ngram} + the draft at n_max {dr.config.draft_max} (lookup first, the draft "
                      "when it finds nothing)", True)
        by_kind = pt.measurement.by_kind if pt.ok else {}
        if by_kind and not by_kind.get(look.config.ngram, {}).get("drafts"):
            result.pruned.append((what, f"{look.config.ngram} drafted nothing beside the draft: the mix ran as "
                                        "the draft alone"))
