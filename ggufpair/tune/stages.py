"""The stages of the search after the baselines, each given the search's `run` (measure one configuration)
and `fits` (its memory checked first): a model drafter's lengths, its p_min values and probabilistic drafts;
the n-gram kinds; a lookup beside the best draft; the best of each kind at another concurrency level."""

from __future__ import annotations

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.dialect import Dialect
from ggufpair.engine.traffic import level_config
from ggufpair.tune.predict import Predictor, step_sample, steps_of
from ggufpair.tune.predict import ceiling as predicted_ceiling
from ggufpair.tune.result import DraftChoice, TuneResult, TuneSpec, ngram_search_size, within_noise
from ggufpair.tune.sweep import PointResult, draft_tag


def with_kv(config: ServerConfig, tkv: str, dkv: str | None = None) -> ServerConfig:
    changes = {"cache_type_k": tkv, "cache_type_v": tkv}
    if dkv is not None:
        changes.update(draft_cache_type_k=dkv, draft_cache_type_v=dkv)
    return config.with_(**changes)


def choice_name(choice: DraftChoice, choices) -> str:
    """How a drafter's runs are labelled when several are tuned: its file name; nothing for a single one."""
    return f"{choice.name}: " if len(choices) > 1 else ""


def _draft_stage(spec: TuneSpec, base: ServerConfig, lengths: list[int], name: str, result: TuneResult, run, fits,
                 on_event, dialect: Dialect | None = None) -> None:
    """One model drafter: per (target KV, draft KV) pair the longest and a short draft, every other length
    predicted, the best predictions confirmed; then the p_min values on its best length."""
    # The short run: the second-shortest length (a length of 1 is rarely best and measures little).
    short_n, long_n = (lengths[1] if len(lengths) > 2 else lengths[0]), lengths[-1]
    candidates: list[tuple[float, ServerConfig]] = []
    hopeless: set[tuple[str, str]] = set()  # KV pairs whose ceiling is below what is already measured
    for tkv, dkv in [(t, d) for t in spec.target_kv for d in spec.draft_kv]:
        cfg = with_kv(base, tkv, dkv)
        if not fits(cfg.with_(draft_max=long_n), f"{name}target KV {tkv}, draft KV {dkv}"):
            continue
        if result.baseline_for(cfg) is None and spec.budget_seconds:  # deferred under a budget: paired first
            run(with_kv(spec.base.without_speculation(), tkv), f"baseline, target KV {tkv}", allow_early_stop=False)
        long_pt = run(cfg.with_(draft_max=long_n), f"{name}target KV {tkv}, draft KV {dkv}, n_max {long_n}", True)
        if long_n == short_n:
            continue
        # Measured even when the long run failed (a crash, memory): the tune goes on with what runs.
        short_pt = run(cfg.with_(draft_max=short_n), f"{name}target KV {tkv}, draft KV {dkv}, n_max {short_n}", True)
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
        result.predictions[(tkv, dkv) if not name else (f"{tkv}@{draft_tag(base.drafter)}", dkv)] = ranked
        lead = _lead(result, cfg.parallel)
        ceiling_n, ceiling = predicted_ceiling([(short_n, short_pt.measurement), (long_n, long_pt.measurement)],
                                               base_m.predicted_ms / steps_of(base_m) if base_m else None, lengths)
        if lead is not None and ceiling < lead.measurement.tokens_per_second:
            why = (f"even with every drafted token accepted it would reach at most {ceiling:.1f} tok/s (n_max "
                   f"{ceiling_n}), below {lead.label} at {lead.measurement.tokens_per_second:.1f}: its other "
                   "lengths and p_min cannot win and were not measured")
            who = name or f"{base.drafter_name}: "  # alone, its runs are labelled by KV only: named here as if several
            result.pruned.append((f"{who}KV {tkv}/{dkv}", why))
            on_event(f"  {who}KV {tkv}/{dkv}: {why}")
            hopeless.add((tkv, dkv))
            continue
        if not predictor.linear:
            on_event(f"  the step costs of n_max {short_n} and {long_n} ({s1.step_ms:.0f} and {s2.step_ms:.0f} ms) "
                     "fit no straight line with a positive fixed cost (a disturbed run?): other lengths are "
                     "interpolated through the measured steps and the baseline's")
        seen = {short_n: short_pt.measurement.tokens_per_second, long_n: long_pt.measurement.tokens_per_second}
        on_event(f"  predicted best for KV {tkv}/{dkv}: " + predictions_text(ranked[:3], seen, "n_max "))
        # the best predicted lengths not measured yet (the long and short runs need no confirmation)
        unmeasured = [(n, t) for n, t in ranked if n not in (short_n, long_n)]
        candidates += [(t, cfg.with_(draft_max=n)) for n, t in unmeasured[:spec.confirm]]
    measured = {(p.config.cache_type_k, p.config.draft_cache_type_k, p.config.draft_max)
                for p in result.points if p.config.has_draft and p.config.drafter == base.drafter}
    confirmed = 0
    for predicted, cfg in sorted(candidates, key=lambda c: -c[0]):
        if confirmed >= spec.confirm:
            break
        key = (cfg.cache_type_k, cfg.draft_cache_type_k, cfg.draft_max)
        if key in measured:
            continue
        measured.add(key)
        run(cfg, f"{name}confirm n_max {cfg.draft_max}, KV {cfg.cache_type_k}/{cfg.draft_cache_type_k} "
                 f"(predicted {predicted:.1f} tok/s)", True)
        confirmed += 1
    _p_min_stage(spec, base, name, result, run, fits, on_event, dialect, hopeless)


def _lead(result: TuneResult, level: int) -> PointResult | None:
    """The fastest run measured so far at this concurrency level, baseline or speculating (a speculating run
    only where speculation was live)."""
    runs = [p for p in result.points if p.ok and p.config.parallel == level
            and (not p.config.speculates or p.measurement.speculative)]
    return max(runs, key=lambda p: p.measurement.tokens_per_second, default=None)


def _p_min_stage(spec: TuneSpec, base: ServerConfig, name: str, result: TuneResult, run, fits, on_event,
                 dialect: Dialect | None = None, hopeless: set[tuple[str, str]] = frozenset()) -> None:
    """`--spec-draft-p-min` on the drafter's fastest configuration: a draft token below that probability ends
    the draft (llama.cpp #25908: acceptance collapsed at the default 0 on one pair). Not on a build without
    the flag (the run would be p_min 0 under another label)."""
    mine = [p for p in result.live(True) if p.config.drafter == base.drafter and p.config.ngram is None
            and p.config.draft_sampling is None]
    if not mine or not [v for v in spec.p_min if v]:
        return
    if dialect is not None and not dialect.p_min_flag:
        on_event("  this llama-server build has no --spec-draft-p-min: p_min is not tried")
        return
    best = max(mine, key=lambda p: p.measurement.tokens_per_second)
    if (best.config.cache_type_k, best.config.draft_cache_type_k) in hopeless:
        return  # its ceiling is below the lead (said in `_draft_stage`)
    for value in spec.p_min:
        label = f"{name}{best.label} with p_min {value:g}"
        if value and all(p.config != best.config.with_(p_min=value) for p in result.points) and fits(
                best.config.with_(p_min=value), label):
            run(best.config.with_(p_min=value), label, True)


def _draft_sampling_stage(spec: TuneSpec, dialect: Dialect, result: TuneResult, run, on_event) -> None:
    """At a temperature above 0: the best draft configuration once more with its drafts verified by rejection
    sampling (`--spec-draft-sampling probabilistic`, where the build has it): with greedy drafts a sampled
    token must equal the draft's argmax to be accepted."""
    if spec.sampling.greedy:
        return
    drafts = [p for p in result.live(True) if p.config.has_draft and p.config.ngram is None]
    if not drafts:
        return
    if not dialect.has("--spec-draft-sampling"):
        on_event("  this llama-server build has no --spec-draft-sampling: drafts are verified greedily at "
                 f"temperature {spec.sampling.temperature:g}")
        return
    best = max(drafts, key=lambda p: p.measurement.tokens_per_second)
    run(best.config.with_(draft_sampling="probabilistic"),
        f"{best.label} with probabilistic draft sampling (temperature {spec.sampling.temperature:g})", False)


def _level_stage(spec: TuneSpec, level: int, per_request_ctx: int, result: TuneResult, run, fits, on_event) -> None:
    """The baseline and the best configuration of each kind at the primary level, measured again with `level`
    requests in flight at once (a server with that many slots): where speculation pays for one user it can
    cost when the batch is already full."""
    primary = result.at(result.level)
    picks: list[PointResult] = []
    if (base := primary.best_baseline) is not None:
        picks.append(base)
    best_of: dict[str, PointResult] = {}
    for p in primary.live(True):
        family = ("mix" if p.config.has_draft and p.config.ngram else p.config.ngram or p.config.drafter or "draft")
        if family not in best_of or p.measurement.tokens_per_second > best_of[family].measurement.tokens_per_second:
            best_of[family] = p
    picks += sorted(best_of.values(), key=lambda p: -p.measurement.tokens_per_second)[:spec.level_finalists]
    if primary.recommended is not None and primary.recommended not in picks:
        picks.append(primary.recommended)
    on_event(f"{level} requests at once: measuring the baseline and the best of each kind again")
    for p in picks:
        cfg = level_config(p.config, level, per_request_ctx)
        if fits(cfg, f"{p.label} at {level} requests at once", (cfg.cache_type_k, cfg.draft_cache_type_k
                                                               if cfg.has_draft else None, level)):
            run(cfg, f"{p.label}, {level} requests at once", allow_early_stop=False)


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
    cfg0 = with_kv(base_cfg, tkv)
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
            pt = measure_at(p, value)
            if not keep(pt) and not (drafted(pt) and within_noise(pt.measurement, best.measurement)):
                break  # a shorter key clearly slower: shorter still will not be tried (one within the noise
                # of the best says nothing of the way, so the next one is)
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
    seen = {n: pt.measurement.tokens_per_second for n in lengths if (pt := measured(at({length.name: n}))) and pt.ok}
    on_event(f"  predicted for {k.name} by {length.name}: " + predictions_text(ranked[:3], seen))
    todo = [(n, t) for n, t in ranked if measured(at({length.name: n})) is None]
    if todo:
        n, t = todo[0]
        keep(measure_at(length, n, f"confirm (predicted {t:.1f} tok/s) "))


def predictions_text(ranked, measured: dict[int, float], prefix: str = "") -> str:
    """The predictor's best values, each one measured already shown with what it measured: a prediction is
    not to be read as a measurement, nor to hide one."""
    return ", ".join(f"{prefix}{n}: {t:.1f}" + (f" (measured {measured[n]:.1f})" if n in measured else "")
                     for n, t in ranked)


def _mix_stage(spec: TuneSpec, dialect: Dialect, draft, result: TuneResult, run, fits, on_event) -> None:
    """The best n-gram kind beside the best draft configuration: llama.cpp tries the n-gram lookup first at
    every step and falls back to the draft model when it finds nothing."""
    if not spec.mix:
        return
    lookups = [p for p in result.live(True) if p.config.ngram is not None and not p.config.has_draft]
    drafts = [p for p in result.live(True) if p.config.has_draft and p.config.ngram is None]
    if not lookups or not drafts:
        return
    look = max(lookups, key=lambda p: p.measurement.tokens_per_second)
    dr = max(drafts, key=lambda p: p.measurement.tokens_per_second)
    cfg = dr.config.with_ngram(look.config.ngram, look.config.ngram_values)
    drafter = "MTP" if dr.config.fileless_drafter else "the draft"
    what = f"{look.config.ngram} with {drafter}"
    if not dialect.ngram_with_draft:
        result.pruned.append((what, "this llama-server build runs an n-gram kind only without a draft model"))
        return
    if fits(cfg, what, (cfg.cache_type_k, cfg.draft_cache_type_k)):
        pt = run(cfg, f"{look.config.ngram} + {drafter} at n_max {dr.config.draft_max} (lookup first, {drafter} "
                      "when it finds nothing)", True)
        by_kind = pt.measurement.by_kind if pt.ok else {}
        if by_kind and not by_kind.get(look.config.ngram, {}).get("drafts"):
            result.pruned.append((what, f"{look.config.ngram} drafted nothing beside the draft: the mix ran as "
                                        "the draft alone"))


def _placement_stage(spec: TuneSpec, result: TuneResult, run, fits, on_event) -> None:
    """The fastest configuration again under each other placement (engine.placement) that fits, and the
    baseline too where the placement moves the target (a speedup is paired with a baseline placed alike);
    a placement that does not fit is listed with the device that lacks room, never launched."""
    if len(spec.placements) < 2:
        return
    best, base = result.best_speculative, result.best_baseline
    on_event("placements: measuring the best configuration where else it could run")
    for pl in spec.placements[1:]:
        moves_target = (pl.devices, pl.tensor_split) != (spec.base.devices, spec.base.tensor_split)
        for p in ([base] if moves_target and base else []) + ([best] if best else []):
            cfg = pl.apply(p.config)
            if cfg != p.config and fits(cfg, f"{p.label}, {pl.name}"):
                run(cfg, f"{p.label}, {pl.name}", allow_early_stop=False)
