"""What a tune is asked (`TuneSpec`: the space, the traffic, the drafters) and what it found (`TuneResult`:
the measured points and the rankings read from them: contenders within the noise, the simplest of them
recommended, per category, per concurrency level, per drafter)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ggufpair.engine.config import ServerConfig
from ggufpair.engine.measure import Prompt
from ggufpair.engine.memory import PairMemory
from ggufpair.engine.traffic import Sampling
from ggufpair.format.model_info import ModelInfo
from ggufpair.tune.sweep import PointResult, beats


@dataclass(frozen=True)
class DraftChoice:
    """A model drafter to measure: the file's facts (for MTP, the target's: it drafts with the target's own
    NextN layers), the --override-kv arguments its fix needs, and its --spec-type (engine.kinds.DRAFTERS;
    empty: the one its file runs by)."""
    info: ModelInfo
    overrides: tuple[str, ...] = ()
    spec_type: str = ""

    @property
    def kind(self):
        from ggufpair.engine.kinds import drafter, drafter_for_file

        return drafter(self.spec_type) if self.spec_type else drafter_for_file(self.info.draft_kind)

    @property
    def file(self) -> Path | None:
        """The draft file llama-server loads with -md; None for MTP."""
        return self.info.path if self.kind.needs_file else None

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def name(self) -> str:
        return self.kind.name(self.file)

    @classmethod
    def mtp(cls, target: ModelInfo) -> "DraftChoice":
        return cls(target, (), "draft-mtp")


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
    # requests in flight at once: the search runs at the first level, the best configurations of each kind are
    # measured again at the others (base.ctx is the context of one request; a level's server has that many
    # slots and that many times the context)
    concurrency: tuple[int, ...] = (1,)
    sampling: Sampling = field(default_factory=Sampling)
    level_finalists: int = 3  # configurations (besides the baseline) measured again at each other level
    # more model drafters beside base.draft, each measured like it (never two in one server: llama.cpp has one
    # draft context), each with the --override-kv its own fix needs
    more_drafts: tuple["DraftChoice", ...] = ()
    mtp: bool = False  # the target's own NextN (MTP) layers measured as one more drafter (draft-mtp, no file)
    p_min: tuple[float, ...] = ()  # --spec-draft-p-min values tried on each drafter's best length (0 is measured)
    budget_seconds: float | None = None  # stop launching when the next launch would end past this
    # per device, where remote (RPC) devices take the target's layers: each share is checked (engine.placement)
    device_budgets: tuple = ()
    # where target and draft run (engine.placement.Placement): base is placed as the first; the best
    # configurations are measured again under each other one that fits
    placements: tuple = ()

    def planned_launches(self, with_draft: bool) -> int:
        """Launches the search plans: a baseline per target KV type; with a draft, a long and a short run per
        (target KV, draft KV) pair and the confirmations; per n-gram kind a scouting run at its defaults, and for
        the finalists a short length, a confirmation and the other key and floor values; the mix; and the
        baseline again at the end."""
        from ggufpair.engine.kinds import kind

        drafters = ((1 + len(self.more_drafts)) if with_draft else 0) + self.mtp
        combos = len(self.target_kv) * len(self.draft_kv) * drafters
        runs = 2 if len(self.lengths) > 1 else 1  # the long and the short run (one, when one length is asked)
        confirm = min(self.confirm, (len(self.lengths) - runs) * combos // max(drafters, 1)) * drafters
        confirm += len([v for v in self.p_min if v]) * drafters
        kinds = [kind(k) for k in self.ngram_kinds]
        finalists = sorted(kinds, key=lambda k: -ngram_search_size(k))[:self.ngram_finalists]  # at most these
        ngram = len(kinds) + sum(ngram_search_size(k) for k in finalists)
        mix = 1 if drafters and kinds and self.mix else 0
        speculating = combos or kinds
        sampling = 1 if combos and not self.sampling.greedy else 0  # probabilistic drafts
        levels = (len(self.concurrency) - 1) * (1 + self.level_finalists) if speculating else len(self.concurrency) - 1
        placed = 2 * (len(self.placements) - 1) if speculating and len(self.placements) > 1 else 0
        return (len(self.target_kv) + runs * combos + confirm + ngram + mix + (1 if speculating else 0) + sampling
                + levels + placed)


def load_key(config: ServerConfig) -> tuple:
    """What a per-device estimate depends on: the memory estimate's key and where things run."""
    return (*estimate_key(config), config.devices, config.tensor_split, config.draft_device, config.draft_gpu_layers,
            config.gpu_layers)


def estimate_key(config: ServerConfig) -> tuple:
    """What a memory estimate depends on, of what the search varies (the draft length, p_min and the n-gram
    parameters add nothing to it)."""
    return (config.cache_type_k, config.cache_type_v, config.drafter,
            config.draft_cache_type_k if config.has_draft else None, config.parallel, config.ctx)


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
    loads: dict[tuple, dict[str, int]] = field(default_factory=dict)  # per device, where devices were budgeted
    seconds: float = 0.0
    cancelled: bool = False
    planned: int = 0
    prompts: tuple[Prompt, ...] = ()  # what every point was measured on
    unmeasured: list[str] = field(default_factory=list)  # launches the time budget left out, in plan order
    reused: int = 0  # points taken from an interrupted tune's journal instead of launched again
    level: int = 1  # the concurrency the rankings below are for (points at other levels do not compete)
    placements: tuple = ()  # the placements the tune considered (engine.placement), the first the default
    sampling: Sampling = field(default_factory=Sampling)
    log_dir: Path | None = None  # where each launch's llama-server log is

    @property
    def launches(self) -> int:
        """Configurations launched in this session (points reused from an interrupted tune are not)."""
        return len(self.points) - self.reused

    def estimate_for(self, config: ServerConfig) -> PairMemory | None:
        """The memory estimated for the configuration before its launch (draft length aside)."""
        return self.estimates.get(estimate_key(config))

    @property
    def levels(self) -> list[int]:
        """The concurrency levels measured, this result's own first."""
        return sorted({p.config.parallel for p in self.points}, key=lambda n: (n != self.level, n))

    def at(self, level: int) -> "TuneResult":
        """The same points ranked at another concurrency level."""
        return replace(self, level=level)

    def measured(self, speculating: bool) -> list[PointResult]:
        """The points at this level that measured something: baselines (False), or configurations that
        speculate (True)."""
        return [p for p in self.points if p.ok and p.config.speculates == speculating and p.config.parallel == self.level]

    def live(self, speculating: bool) -> list[PointResult]:
        """The measured points that count: baselines, and speculating runs with speculation live."""
        return [p for p in self.measured(speculating) if p.measurement.speculative or not speculating]

    def baseline_for(self, config: ServerConfig) -> PointResult | None:
        """The faster of the baselines with the same target KV (measured before and after the drafts)."""
        from ggufpair.engine.placement import placement_key

        return max((p for p in self.measured(False) if p.config.cache_type_k == config.cache_type_k
                    and p.config.cache_type_v == config.cache_type_v
                    and placement_key(p.config) == placement_key(config)),
                   key=lambda p: p.measurement.tokens_per_second, default=None)

    @property
    def best_speculative(self) -> PointResult | None:
        """The fastest speculating configuration (a draft, an n-gram kind, or both) that ran with it live."""
        return max(self.live(True), key=lambda p: p.measurement.tokens_per_second, default=None)

    def drafters(self) -> list[PointResult]:
        """The fastest live configuration of each model drafter (a draft file, or MTP; without an n-gram kind),
        fastest first."""
        best: dict[str, PointResult] = {}
        for p in self.live(True):
            if p.config.has_draft and p.config.ngram is None:
                key = p.config.drafter
                if key not in best or p.measurement.tokens_per_second > best[key].measurement.tokens_per_second:
                    best[key] = p
        return sorted(best.values(), key=lambda p: -p.measurement.tokens_per_second)

    def placement_of(self, config: ServerConfig):
        """The placement (of those considered) a configuration ran under, or None."""
        from ggufpair.engine.placement import placement_of

        return placement_of(self.placements, config)

    def drafter_table(self) -> list[dict]:
        """Each model drafter measured (fastest first; those that never ran with speculation live last): its
        fastest configuration, and its acceptance by draft position read from its longest live run (the one
        that drafted the most positions: the long run of the length search)."""
        rows: list[dict] = []
        names = {p.config.drafter: p.config for p in self.points if p.config.has_draft and p.config.ngram is None
                 and p.config.parallel == self.level}
        best = {p.config.drafter: p for p in self.drafters()}
        base = self.best_baseline
        for key in sorted(names, key=lambda k: -(best[k].measurement.tokens_per_second if k in best else -1)):
            cfg, top = names[key], best.get(key)
            mine = [p for p in self.live(True) if p.config.drafter == key and p.config.ngram is None]
            longest = max(mine, key=lambda p: (p.config.draft_max, p.measurement.drafts), default=None)
            est = self.estimate_for(top.config) if top else None
            rows.append({
                "drafter": cfg.drafter_name, "spec_type": cfg.spec_type,
                "best": top.label if top else None,
                "tokens_per_second": top.measurement.tokens_per_second if top else None,
                "speedup": (top.measurement.tokens_per_second / base.measurement.tokens_per_second
                            if top and base and base.measurement.tokens_per_second else None),
                "acceptance_rate": top.measurement.acceptance_rate if top else None,
                "accept_by_position": list(longest.measurement.accept_by_position) if longest else [],
                "positions_from": longest.config.draft_max if longest else None,
                "memory_bytes": est.total if est else None,
            })
        return rows

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
        tunes of the same pair agree unless a configuration moves across the noise band. Of equally simple runs
        of one n-gram kind (the same number of parameters off llama.cpp's defaults), the shorter lookup drafts:
        a draft that misses costs the verification of every token it proposed, so the shorter one loses less
        where the traffic repeats itself less than the tune's prompts did. (Across kinds the order measured
        stays: no length compares a kind that keeps a table with one that keeps none.)"""
        contenders = self.contenders
        best = min(contenders, key=simplicity, default=None)
        if best is not None and not best.config.speculates:  # a baseline measured at both ends: the faster end,
            # the one every comparison uses (`best_baseline`), so no table shows it at two rates
            return max((p for p in self.measured(False) if p.config == best.config),
                       key=lambda p: p.measurement.tokens_per_second)
        if best is None or best.config.ngram is None:
            return best
        same = [p for p in contenders if p.config.ngram == best.config.ngram and p.config.draft == best.config.draft
                and simplicity(p) == simplicity(best)]
        return min(same, key=lambda p: lookup_length(p.config))

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


def within_noise(m, of) -> bool:
    """Whether measurement `m` is no slower than `of` by more than the two's noise (the form the contenders'
    band uses: m's rate raised by the noise reaches `of`'s)."""
    return of.tokens_per_second > 0 and m.tokens_per_second * (1 + noise(m, of)) >= of.tokens_per_second


def simplicity(point: PointResult) -> tuple:
    """Among equally fast configurations, prefer no speculation, then an n-gram kind alone (no second model),
    then a draft, then both; then the less quantized KV caches (target first), then the shorter draft, then
    llama.cpp's own default parameters of the n-gram kind."""
    c = point.config
    kind_rank = (0 if not c.speculates else 1 if not c.has_draft else 2 if c.ngram is None else 3)
    kind_rank += 0.5 * (c.has_draft and c.draft_sampling == "probabilistic")  # the build's default first
    off_default = 0
    if c.ngram is not None:
        from ggufpair.engine.kinds import kind

        off_default = sum(v != kind(c.ngram).param(n).default for n, v in c.ngram_params)
    return (kind_rank, KV_RANK.get(c.cache_type_k, 9), KV_RANK.get(c.draft_cache_type_k, 9) if c.has_draft else 0,
            c.draft_max if c.has_draft else 0, off_default)


def lookup_length(config: ServerConfig) -> int:
    """The most tokens an n-gram kind drafts at a lookup under `config` (its length parameter, or its fixed
    length); 0 without one."""
    from ggufpair.engine.kinds import kind

    if config.ngram is None:
        return 0
    k = kind(config.ngram)
    return config.ngram_values[k.length.name] if k.length else (k.fixed_length or 0)
