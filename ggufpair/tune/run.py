"""What surrounds a tune: fixing the pair first, suggesting drafts, and handing over the answer as a profile
and a launch script (or a llama-swap entry)."""

from __future__ import annotations

import os

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ggufpair.engine.binary import Binary
from ggufpair.engine.dialect import Dialect
from ggufpair.engine.measure import RATE_DEFINITION, greedy_agreement
from ggufpair.errors import IncompatiblePairError, UsageError
from ggufpair.fix.apply import apply_plan
from ggufpair.fix.plan import RouteChoice, plan_pair_fix
from ggufpair.format.model_info import ModelInfo
from ggufpair.pairing.verdict import check_pair
from ggufpair.tune.profile import (launch_script, llama_swap_entry, profile_data, profile_path, save_profile,
                                   write_script)
from ggufpair.tune.result import NOISE_FLOOR, TuneResult, load_key, noise, simplicity

PRESETS = Path(__file__).resolve().parent.parent.parent / "profiles" / "presets.toml"
MAX_DRAFT_RATIO = 0.3


def prepare_pair(target: Path, draft: Path, route: str, on_event: Callable[[str], None]) -> tuple[tuple[str, ...], str]:
    """Check the pair before any launch; fix a fixable mismatch by the chosen route. Returns the
    --override-kv arguments to launch with, and a note for the profile."""
    plan = plan_pair_fix(draft, target, RouteChoice(route) if route != "auto" else RouteChoice.AUTO)
    if plan.unfixable:
        raise IncompatiblePairError("llama.cpp will not speculate with this pair, and metadata cannot fix it:\n  "
                         + "\n  ".join(plan.unfixable), hint="pick a draft from the target's family (`ggufpair tune --target ...` suggests some)")
    if plan.empty:
        return (), "compatible as is"
    on_event(f"the pair needs a fix ({plan.why}); applying it by the {plan.route.value} route")
    result = apply_plan(plan)
    if result.mode == "override":
        from ggufpair.fix.planned import remember

        remember(draft, target, result.override_args)
    note = f"fixed by {result.mode}: " + ("; ".join(plan.override_args) if plan.override_args else
                                          ", ".join(c.key for c in plan.changes))
    return tuple(plan.override_args), note


@dataclass(frozen=True)
class Suggestion:
    path: Path | None
    name: str
    why: str
    hub: str | None = None


def load_presets(path: Path = PRESETS) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return tomllib.loads(path.read_text()).get("pairing", [])


def suggest_drafts(target: ModelInfo, candidates, left_out: list[Suggestion] | None = None) -> list[Suggestion]:
    """Local files llama.cpp would accept as drafts (same vocab, much smaller), then the shipped presets.
    `left_out`, when given, receives the local files of the target's vocabulary that were not suggested, and
    why (too large a share of the target's weights to pay off as a draft)."""
    out = []
    for c in candidates:
        if c.path.resolve() == target.path.resolve() or not target.weight_bytes:
            continue
        ratio = c.info.weight_bytes / target.weight_bytes
        verdict = check_pair(target, c.info)
        fixable = all(f.fixes for f in verdict.blockers)
        if not (verdict.compatible or fixable):
            continue
        if ratio > MAX_DRAFT_RATIO:
            if left_out is not None:
                left_out.append(Suggestion(c.path, c.info.display_name, f"{ratio:.0%} of the target's weights, "
                                           f"above the {MAX_DRAFT_RATIO:.0%} a draft needs to pay off"))
            continue
        state = "compatible" if verdict.compatible else "compatible after `ggufpair fix`"
        out.append(Suggestion(c.path, c.info.display_name, f"{state}; {ratio:.0%} of the target's weights"))
    family = (target.basename or target.name or "").lower()
    for preset in load_presets():
        if preset.get("target_basename", "").lower() in family and _size_ok(preset, target):
            for d in preset.get("drafts", []):
                out.append(Suggestion(None, d["name"], d.get("note", "a known pairing"), d.get("hub")))
    return out


def _size_ok(preset: dict, target: ModelInfo) -> bool:
    sizes = [s.lower() for s in preset.get("target_sizes", [])]
    return not sizes or (target.size_label or "").lower() in sizes


@dataclass(frozen=True)
class TuneOutputs:
    profile: Path | None
    script: Path | None
    swap: Path | None
    recommendation: str
    data: dict[str, Any]
    replaced: str | None = None  # the saved profile of that name this one replaced, described (previous_profile)

    def to_dict(self) -> dict[str, Any]:
        return {"profile": str(self.profile) if self.profile else None, "script": str(self.script) if self.script else None,
                "llama_swap": str(self.swap) if self.swap else None, "recommendation": self.recommendation,
                "replaced": self.replaced, **self.data}


def observed_noise(result: TuneResult) -> tuple[float, str] | None:
    """The largest relative difference from its paired baseline of a speculating configuration that drafted
    nothing (so ran as the baseline does; such a run is not live): noise seen, not assumed; with its label.
    None when there is none."""
    worst = None
    for p in result.measured(True):
        m, base = p.measurement, result.baseline_for(p.config)
        if m.speculative or m.draft_tokens or m.drafts or base is None or not base.measurement.tokens_per_second \
                or base.config.parallel != p.config.parallel or p.config.has_draft:
            continue  # (a draft model's steps cost its own decode even when nothing is accepted)
        off = abs(p.measurement.tokens_per_second / base.measurement.tokens_per_second - 1)
        if worst is None or off > worst[0]:
            worst = (off, p.label)
    return worst


def stability_note(result: TuneResult) -> str:
    """Whether another tune would likely recommend the same configuration, and if not, why."""
    rec = result.recommended
    if rec is None:
        return ""
    tps = lambda p: p.measurement.tokens_per_second  # noqa: E731
    contenders = result.contenders
    fastest = max(contenders, key=tps)
    notes, unstable = [], False
    by_kv: dict[str, list[float]] = {}
    for p in result.measured(False):
        by_kv.setdefault(p.config.cache_type_k, []).append(p.measurement.tokens_per_second)
    for kv, rates in by_kv.items():
        if len(rates) > 1 and min(rates) < max(rates) * (1 - 2 * NOISE_FLOOR):
            unstable = True
            notes.append(f" The no-draft baseline (KV {kv}) moved from {rates[0]:.1f} to {rates[-1]:.1f} tok/s "
                         "between the start and the end of the tune: the machine was busier at one end. The "
                         "faster is compared with; measure again on a quiet machine to be sure.")
    distinct = list({p.config: p for p in contenders if p.config != rec.config}.values())  # not a run's own repeat
    if distinct:
        others = ", ".join(f"{p.label} {tps(p):.1f}" for p in distinct)
        simplest = ("no speculation, then n-gram lookup alone, then a draft; unquantized KV first, then the "
                    "shorter draft" if any(p.config.ngram for p in contenders) else
                    "unquantized KV first, then the shorter draft")
        notes.append(f" {len(distinct) + 1} configurations are within run-to-run noise of each other ({others} tok/s): "
                     f"ggufpair takes the simplest ({simplest}), so their order does not decide.")
    outside = sorted((p for p in result.live(False) + result.live(True) if p not in contenders), key=lambda p: -tps(p))
    if rec.config.speculates:
        base = result.best_baseline
        margin = min(rec.measurement.tps_runs) / max(base.measurement.tps_runs) - 1
        if margin < noise(rec.measurement, base.measurement):
            what, none = ("the draft's", "no draft") if rec.config.ngram is None else ("its", "no speculation")
            notes.append(f" Not a stable choice: {what} slowest run beats the fastest baseline run by only "
                         f"{margin:.1%}, within the noise, so another tune may recommend {none}.")
            unstable = True
    involved = [*contenders, *([result.best_baseline] if result.best_baseline else []), *outside[:1]]
    stalled = sum(1 for p in involved if p.measurement.stalls)
    if stalled:
        notes.append(f" Unreliable: {stalled} of the measurements that decide this had requests running at under "
                     "half the others' rate (something else used the machine); run the tune again when it is quiet.")
        unstable = True
    if all(len(p.measurement.tps_runs) < 2 for p in involved):
        notes.append(" One repetition each: the run-to-run noise was not measured (5% assumed), so this ranking is "
                     "not proven stable; use --repeats 2 or more.")
        unstable = True
    seen = observed_noise(result)
    if seen is not None and seen[0] > NOISE_FLOOR:
        notes.append(f" What noise is here: {seen[1]} drafted nothing, so ran as the baseline does, and measured "
                     f"{seen[0]:.0%} off it; differences smaller than that say nothing.")
        unstable = True  # the ranking's band (5% at the least) is narrower than the noise seen
    simpler = lambda p: simplicity(p) < simplicity(rec)  # noqa: E731
    for p in outside:  # the first configuration that noise could make the pick
        band = noise(fastest.measurement)
        if p.config.speculates != rec.config.speculates:
            # A draft within the noise of the baseline may clear the margin next time (both move); a baseline
            # outside a draft pick is the margin note's business.
            threat, within = p.config.speculates and tps(p) * (1 + band) >= tps(fastest), ""
        else:  # noise could bring it into the band, where its simplicity would win
            threat, within = simpler(p) and tps(p) * (1 + 2 * band) >= tps(fastest), "twice "
        if threat:
            gap = tps(fastest) / tps(p) - 1
            how = (f"is only {gap:.1%} slower than the fastest" if gap >= 0 else
                   f"measured {-gap:.1%} faster than {fastest.label} without beating it beyond the noise")
            notes.append(f" Not a stable ranking: {p.label} {how}, within {within}the {band:.0%} run-to-run "
                         "noise, so another tune may pick it instead.")
            break
    else:
        if outside and not unstable:
            nxt = outside[0]
            gap = tps(fastest) / tps(nxt) - 1
            band = noise(fastest.measurement, nxt.measurement)
            notes.append(f" Stable: the next best ({nxt.label}) is {1 - tps(nxt) / tps(fastest):.0%} slower, "
                         + (f"beyond twice the {band:.0%} noise." if gap >= 2 * band else
                            f"and even if noise closed the gap, the simpler {rec.label} would still be taken."))
    return "".join(notes)


def kind_of(config) -> str:
    """What a configuration speculates with: none, draft (a draft file), mtp (the target's own layers), an
    n-gram kind, or an n-gram kind + one of those."""
    if not config.speculates:
        return "none"
    model = ["mtp" if config.fileless_drafter else "draft"] if config.has_draft else []
    return "+".join(([config.ngram] if config.ngram else []) + model)


def workload_note(result: TuneResult) -> str:
    """When the best kind of speculation differs between prompt categories: which wins where."""
    winners = result.category_winners()
    kinds = {kind_of(p.config) for p, _ in winners.values()}
    if len(kinds) < 2 or result.cancelled:
        return ""
    by_kind: dict[str, list[str]] = {}
    for cat, (p, speedup) in winners.items():
        by_kind.setdefault(kind_of(p.config), []).append(cat if not p.config.speculates else f"{cat} ({speedup:.2f}x)")
    parts = [f"{'no speculation' if k == 'none' else k} for {', '.join(cats)}" for k, cats in by_kind.items()]
    return (" The best kind depends on the workload: " + "; ".join(parts) + " (each category's share of the same "
            "runs against the baseline's on the same prompts: fewer prompts than the overall figure, so a hint to "
            "measure your own prompts of that kind with --prompts; the profile keeps each category's winner).")


REPEATING = 0.5  # share of an answer's word 4-grams that recur within it, above which it loops


def self_repetition(text: str, n: int = 4) -> float:
    """The share of an answer's word n-grams that already occurred earlier in the same answer."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    again = 0
    for g in grams:
        again += g in seen
        seen.add(g)
    return again / len(grams)


def prompt_copy(text: str, prompt: str, n: int = 4) -> float:
    """The share of an answer's word n-grams that are in its prompt (an answer that echoes its question; its
    own repeats are `self_repetition`'s). Words are runs of letters and digits: chat-template markers glued
    to a word (`sea.<|im_end|>`) do not hide it."""
    import re

    words, source = re.findall(r"\w+", text.lower()), re.findall(r"\w+", prompt.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    known = {tuple(source[i:i + n]) for i in range(len(source) - n + 1)}
    return sum(g in known for g in grams) / len(grams)


# built-in categories whose answers are meant to repeat or quote their prompt (an edit, a summary, an answer
# about a long document): copying there is the task
COPYING_IS_THE_TASK = ("edit", "summarization", "long")


def _prompt_text(prompt) -> str:
    return prompt.messages if isinstance(prompt.messages, str) else " ".join(m.get("content", "") for m in prompt.messages)


def repetition_note(result: TuneResult) -> str:
    """When n-gram lookup is recommended and the baseline's own greedy answers repeat themselves (a base model
    looping, say) or, outside the categories meant to, copy their prompt (a base model echoing the chat
    turns): lookup drafts such answers from themselves or the prompt, so the speedup is real here but larger
    than on answers that do neither."""
    rec, base = result.recommended, result.best_baseline
    if rec is None or rec.config.ngram is None or base is None or not base.measurement.outputs:
        return ""
    from ggufpair.tune.prompts import CATEGORIES, builtin_prompts

    prompts = {q.id: q for q in result.prompts}
    cats = sorted({q.category for q in result.prompts} & set(CATEGORIES))
    builtin = {(q.id, str(q.payload())) for q in builtin_prompts(cats)} if cats else set()
    loops, copies = [], []
    for pid, text in base.measurement.outputs:
        q = prompts.get(pid)
        loop = self_repetition(text)
        judged = q is not None and (q.id, str(q.payload())) in builtin and q.category not in COPYING_IS_THE_TASK
        copy = prompt_copy(text, _prompt_text(q)) if judged else 0.0
        (loops if loop >= REPEATING else copies if copy >= REPEATING else []).append(max(loop, copy))
    n = len(base.measurement.outputs)
    if (len(loops) + len(copies)) * 2 < n:
        return ""
    what = " and ".join(w for w, k in ((f"{len(loops)} repeat{'s' * (len(loops) == 1)} "
                                        f"{'itself' if len(loops) == 1 else 'themselves'}", loops),
                                       (f"{len(copies)} cop{'ies its' if len(copies) == 1 else 'y their'} prompt",
                                        copies)) if k)
    return (f" Note: of {n} greedy answers, {what} (up to {max(loops + copies):.0%} of one's word 4-grams seen "
            "before); n-gram lookup drafts such answers from what came before, so expect less on answers that do "
            "neither (a chat model's, or your own prompts: --prompts).")


def recommendation_text(result: TuneResult) -> str:
    text = _recommendation(result)
    if len(result.levels) > 1:
        text = f"for {_at(result.level)}: {text}"
    note = (stability_note(result) + workload_note(result) + repetition_note(result) + drafter_note(result)
            + placement_note(result)
            + level_note(result) + sampling_note(result) + budget_note(result))
    return text + ("." if note and not text.endswith(".") else "") + note


def placement_note(result: TuneResult) -> str:
    """Where the recommendation runs, why, and what the other placements measured or why they were left out."""
    rec = result.recommended
    if len(result.placements) < 2 or rec is None or (pl := result.placement_of(rec.config)) is None:
        return ""
    best: dict[str, float] = {}
    for p in result.live(True):
        other = result.placement_of(p.config)
        if other is not None and other.name != pl.name:
            best[other.name] = max(best.get(other.name, 0.0), p.measurement.tokens_per_second)
    text = f" Placement: {pl.name} ({pl.why})"
    if best:
        text += "; the best elsewhere: " + ", ".join(f"{n} {t:.1f} tok/s" for n, t in best.items())
    left = [f"{q.name} ({why})" for q in result.placements for what, why in result.pruned if what.endswith(q.name)]
    if left:
        text += "; left out: " + "; ".join(left)
    return text + "."


def drafter_note(result: TuneResult) -> str:
    """With several drafts: each one's best, and what the smaller of the two fastest costs or saves."""
    ranked = result.drafters()
    tried = {p.config.drafter: p.config.drafter_name for p in result.points if p.config.has_draft}
    if len(tried) < 2:
        return ""
    parts = []
    for p in ranked:
        m = p.measurement
        est = result.estimate_for(p.config)
        acc = f"acceptance {m.acceptance_rate:.0%}" if m.acceptance_rate is not None else "acceptance not reported"
        parts.append(f"{p.config.drafter_name} {m.tokens_per_second:.1f} tok/s at n_max {p.config.draft_max} "
                     f"({acc}" + (f", {est.total / 2**20:.0f} MiB in all" if est else "") + ")")
    text = (" Drafts ranked: " + "; ".join(parts)) if parts else " No draft ran with speculation live"
    missing = sorted(set(tried) - {p.config.drafter for p in ranked})
    if missing:
        text += "; without speculation live: " + ", ".join(tried[m] for m in missing)
    if len(ranked) >= 2:
        a, b = ranked[0], ranked[1]
        size_a, size_b = (os.path.getsize(p.config.draft) if p.config.draft and os.path.exists(p.config.draft) else 0
                          for p in (a, b))  # MTP has no file of its own: no size to compare
        if size_b and size_a and size_b < size_a:
            cost = 1 - b.measurement.tokens_per_second / a.measurement.tokens_per_second
            text += (f". The smaller {b.config.draft.name} ({_size(size_a - size_b)} less on disk) costs "
                     f"{cost:.0%} of the speed")
        elif size_a and size_b and size_a < size_b:
            text += f". The fastest is also the smaller ({_size(size_b - size_a)} less on disk than {b.config.draft.name})"
    return text + "."


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _at(level: int) -> str:
    return "one request at a time" if level == 1 else f"{level} requests at once"


def _same_choice(a, b) -> bool:
    """The same configuration apart from the slots it serves (and the context that comes with them)."""
    return a.with_(parallel=1, ctx=0) == b.with_(parallel=1, ctx=0)


def level_note(result: TuneResult) -> str:
    """What the other concurrency levels say: the same answer, or another one."""
    rec = result.recommended
    if rec is None:
        return ""
    parts = []
    for level in result.levels[1:]:
        other = result.at(level)
        best, base = other.recommended, other.best_baseline
        if best is None:
            parts.append(f"At {_at(level)} nothing was measured")
            continue
        rate = f"{best.measurement.tokens_per_second:.1f} tok/s in all"
        if base is not None and best is not base and base.measurement.wall_tps:
            # over wall-clock time at every level, so that the speedups of two levels compare
            rate += f", {best.measurement.wall_tps / base.measurement.wall_tps:.2f}x no speculation"
        if _same_choice(best.config, rec.config):
            parts.append(f"At {_at(level)} the same holds ({rate})")
        else:
            parts.append(f"At {_at(level)} the best differs: {best.label} ({rate})")
    return (" " + ". ".join(parts) + ".") if parts else ""


def budget_note(result: TuneResult) -> str:
    if not result.unmeasured:
        return ""
    n = len(result.unmeasured)
    return (f" The time budget was spent before {n} planned launch{'es' if n > 1 else ''} (recommended from what "
            f"was measured; not measured: {'; '.join(result.unmeasured[:4])}{'; ...' if n > 4 else ''}).")


def sampling_note(result: TuneResult) -> str:
    if result.sampling.greedy:
        return ""
    return (f" Measured at {result.sampling.describe()}: the answers are sampled, so greedy output identity does "
            "not apply (no lossless check); acceptance says how well the drafts match.")


def _recommendation(result: TuneResult) -> str:
    text = _answer(result)
    if result.cancelled:
        return (f"CANCELLED after {result.launches} of {result.planned} launches, so no profile was saved; "
                f"the points measured so far say: {text}")
    return text


def several_drafts(points) -> bool:
    return len({p.config.drafter for p in points if p.config.has_draft}) > 1


def label(point, points) -> str:
    """A point's label, naming its draft file when the tune measured several."""
    if point.config.has_draft and several_drafts(points):
        return f"{point.config.drafter_name}: {point.label}"
    return point.label


def _answer(result: TuneResult) -> str:
    rec, base = result.recommended, result.best_baseline
    if rec is None:
        if result.measured(True):
            return ("no recommendation: no no-draft baseline could be measured, so no speedup can be claimed "
                    "(see the log lines above for why the baselines failed)")
        if not result.points and result.pruned:
            return ("nothing was launched: no configuration fits the memory budget (see the pruned ones above); "
                    "a smaller --ctx, or quantized KV caches (--kv q8_0 --draft-kv q8_0), may fit")
        return "nothing could be measured: every configuration failed (see the log lines above)"
    if not rec.config.speculates:
        best = result.best_speculative
        only_drafts = all(p.config.ngram is None for p in result.points)  # a tune of drafts alone says "draft"
        answer, what, without = (("no draft", "draft configuration", "without a draft") if only_drafts else
                                 ("no speculation", "speculating configuration", "without speculation"))
        if best is None:
            if not any(p.config.speculates for p in result.points):
                return f"no {what} was measured; nothing to recommend over {answer}"
            failed = [p for p in result.points if p.config.speculates and not p.ok]
            why = (f" ({len(failed)} failed: {failed[0].error})" if failed else "")
            return f"no {what} ran with speculation live{why}; recommending {answer}"
        paired = result.baseline_for(best.config) or rec
        slower = best.measurement.tokens_per_second * (1 + noise(best.measurement, rec.measurement)) < \
            rec.measurement.tokens_per_second  # slower beyond the noise, not only not faster
        return (f"{answer}: the fastest {what} ({label(best, result.points)}) reached "
                f"{best.measurement.tokens_per_second:.1f} tok/s against {rec.measurement.tokens_per_second:.1f} "
                f"{without}, " + (f"{best.measurement.tokens_per_second / rec.measurement.tokens_per_second:.2f}x: slower"
                                  if slower else "not faster beyond the run-to-run spread")
                + _agreement_text(paired.measurement, best.measurement).replace("; greedy answers", "; its greedy answers"))
    paired = result.baseline_for(rec.config) or base
    if not paired.measurement.tokens_per_second:
        return f"{label(rec, result.points)}: {rec.measurement.tokens_per_second:.1f} tok/s; the baseline measured nothing to compare with"
    speedup = rec.measurement.tokens_per_second / paired.measurement.tokens_per_second
    return (f"{label(rec, result.points)}: {rec.measurement.tokens_per_second:.1f} tok/s, {speedup:.2f}x the paired baseline "
            f"({paired.measurement.tokens_per_second:.1f} tok/s), acceptance {rec.measurement.acceptance_rate:.0%}"
            + _agreement_text(paired.measurement, rec.measurement))


def _agreement_text(baseline, drafted) -> str:
    same, compared, differ = greedy_agreement(baseline, drafted)
    if not compared:
        return ""
    if same == compared:
        return f"; greedy answers identical to the baseline's on all {compared} prompts"
    return (f"; greedy answers identical to the baseline's on {same} of {compared} prompts (differing: "
            f"{', '.join(differ[:5])}): batched verification can flip a near-tie of the target's two best tokens, "
            "but a draft that changes many answers deserves a closer look")


def measured_memory(binary: Binary, dialect: Dialect, config) -> tuple[int | None, dict[str, int]]:
    """Start the configuration once with llama.cpp's verbose log: what it reports allocating in all, and on
    each device."""
    from ggufpair.engine.memory import measured_by_device, measured_from_log
    from ggufpair.engine.runner import LlamaServer
    from ggufpair.errors import EngineError

    try:
        with LlamaServer(binary, config.with_(extra=(*config.extra, "-lv", "4")), dialect=dialect) as server:
            log = server.log_text()
            return measured_from_log(log).total or None, measured_by_device(log, config.rpc)
    except EngineError:
        return None, {}


def save_outputs(result: TuneResult, binary: Binary, dialect: Dialect, device: str, args, fix_note: str,
                 measure_memory: bool = True) -> TuneOutputs:
    rec = result.recommended
    text = recommendation_text(result)
    # the recommendation's draft, else the first one tuned (a profile is named after the pair it serves)
    drafted = rec.config.draft if rec is not None and rec.config.has_draft else next(
        (p.config.draft for p in result.points if p.config.has_draft), None)
    data: dict[str, Any] = {
        "launches": result.launches, "planned": result.planned, "seconds": round(result.seconds, 1), "fix": fix_note,
        "cancelled": result.cancelled, "draft_model": str(drafted) if drafted else None,
        "logs": str(result.log_dir) if result.log_dir else None,  # each launch's llama-server log
        "points": [point_dict(p) for p in result.points],
        "pruned": [{"configuration": c, "why": w} for c, w in result.pruned],
        "unmeasured": list(result.unmeasured),
        "drafters": result.drafter_table(),  # each model drafter's best, acceptance by position, memory
        "predictions": {f"{t}/{d}": [[n, round(tps, 2)] for n, tps in ranked] for (t, d), ranked in result.predictions.items()},
    }
    if rec is None or result.cancelled:  # a cancelled tune's partial results replace no saved profile
        return TuneOutputs(None, None, None, text, data)
    est = result.estimate_for(rec.config)
    paired = result.baseline_for(rec.config) if rec.config.speculates else None
    if paired is not None:
        same, compared, _ = greedy_agreement(paired.measurement, rec.measurement)
        data["greedy_identical"] = {"prompts": compared, "identical": same}
    data["category_winners"] = {cat: {"label": p.label, "kind": kind_of(p.config), "speedup": round(x, 3)}
                                for cat, (p, x) in result.category_winners().items()}
    loads = result.loads.get(load_key(rec.config))  # per device, where devices were budgeted
    data["recommended"] = {"label": rec.label, "tokens_per_second": rec.measurement.tokens_per_second,
                           "rate": RATE_DEFINITION, "draft": rec.config.has_draft, "kind": kind_of(rec.config),
                           "measured_on": measured_on(rec), "n_predict": args.tokens,
                           "categories": sorted({q.category for q in result.prompts}) or args.categories.split(","),
                           # the prompts themselves, so that `ggufpair check` re-measures on the same ones
                           "prompts": [{"id": q.id, "category": q.category, "messages": q.payload()}
                                       for q in result.prompts],
                           # over several devices, what each receives (pipeline buffers included), summed
                           "predicted_memory_bytes": sum(loads.values()) if loads else est.total if est else None}
    if paired is not None:  # what `check` compares its own re-measure of the baseline with
        data["recommended"]["paired_baseline_tps"] = paired.measurement.tokens_per_second
    total, by_device = measured_memory(binary, dialect, rec.config) if measure_memory else (None, {})
    data["recommended"]["measured_memory_bytes"] = total
    if len(by_device) > 1 or any(k != "CPU" for k in by_device):  # more than the host: say where it went
        data["recommended"]["measured_by_device"] = by_device
        if loads:
            data["recommended"]["predicted_by_device"] = loads
    config = rec.config if rec.config.has_draft else rec.config.with_(overrides=())
    name = profile_name(result, config.target)
    listen = {"host": args.host, "port": args.port}
    pdata = profile_data(name, config, binary, device, {**data, "recommendation": text}, **listen)
    pdata["traffic"] = {"concurrency": rec.config.parallel, "levels": result.levels,
                        "context_per_request": rec.config.ctx // max(rec.config.parallel, 1),
                        "sampling": result.sampling.to_dict()}
    replaced = previous_profile(profile_path(name))
    profile = save_profile(pdata)
    if getattr(args, "profile", None):
        save_profile(pdata, Path(args.profile))
    script_path = Path(args.script) if getattr(args, "script", None) else profile.with_suffix(".sh")
    script = write_script(launch_script(config, binary, dialect, host=args.host, port=args.port, profile=profile),
                          script_path)
    swap = None
    if getattr(args, "format", "bash") == "llama-swap":
        swap = profile.with_suffix(".llama-swap.yaml")
        swap.write_text(llama_swap_entry(name, config, binary, dialect))
    return TuneOutputs(profile, script, swap, text, data, replaced)


def previous_profile(path: Path) -> str | None:
    """What a saved profile about to be replaced held, to say so: when it was tuned (UTC) and its answer."""
    if not path.exists():
        return None
    import tomllib

    try:
        old = tomllib.loads(path.read_text())
        rec = old["measurements"]["recommended"]
        return f"the profile of that name tuned {str(old['profile']['created'])[:16].replace('T', ' ')} UTC: " \
               f"{rec['label']}, {float(rec['tokens_per_second']):.1f} tok/s"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable profile of that name"


def profile_name(result: TuneResult, target: Path) -> str:
    """Named after what was tuned, even when the answer is no draft, so that tunes of other drafts keep their
    own profiles: the answer's drafter (a file, or `mtp`: the target's own MTP layers); with no drafter in the
    answer, every one tuned, files by name (the first one and a count when the name grows long)."""
    rec = result.recommended
    if rec is not None and rec.config.has_draft:
        names = [Path(rec.config.draft).stem if rec.config.draft is not None else "mtp"]
    else:
        drafts = sorted({p.config.draft for p in result.points if p.config.has_draft and p.config.draft is not None},
                        key=lambda d: (Path(d).stem, str(d)))  # in any order given, one name
        names = [Path(d).stem for d in drafts] + ["mtp"] * any(p.config.fileless_drafter for p in result.points)
    name = target.stem + "".join(f"+{n}" for n in names)
    if len(names) > 1 and len(name.encode()) > 120:
        name = f"{target.stem}+{names[0]}+{len(names) - 1}-more"
    return name


def measured_on(point) -> str:
    """How the point's repetitions were kept honest for a kind with a table: what the profile records."""
    if point.config.stateful:
        return (f"a fresh llama-server per repetition ({point.measurement.servers}): the kind keeps its table "
                "across requests")
    return "one llama-server, prompts repeated (the kind keeps nothing across requests)"


def point_dict(p) -> dict[str, Any]:
    """A measured point as a profile keeps it (`result_from_profile` reads it back)."""
    c = p.config
    d = {"label": p.label, "kind": kind_of(c), "draft_max": c.draft_max if c.has_draft else 0,
         "target_kv": c.cache_type_k, "draft_kv": c.draft_cache_type_k if c.has_draft else None, "error": p.error}
    if c.ngram is not None:
        d["ngram"] = c.ngram
        d["ngram_params"] = dict(c.ngram_params)
    if c.has_draft:
        d["spec_type"] = c.spec_type  # draft-simple, draft-eagle3, draft-mtp, ...
        if c.draft is not None:
            d["draft"] = str(c.draft)  # every draft point names its file: a tune may rank several
        if c.p_min:
            d["p_min"] = c.p_min
    if c.has_draft and c.draft_sampling is not None:
        d["draft_sampling"] = c.draft_sampling
    d["concurrency"] = c.parallel  # also in the measurement; said here for a point that failed
    if p.reused:
        d["reused"] = True  # measured by an interrupted tune of the same pair, under the same conditions
        if p.logs:
            d["logs"] = p.logs  # its log is in that tune's folder, not in this one's (measurements.logs)
    return {**d, **(p.measurement.to_dict() if p.measurement else {})}


def result_from_profile(path: Path) -> tuple[TuneResult, TuneOutputs]:
    """A saved profile's tune read back: its points (every measurement as recorded) and its outputs."""
    from ggufpair.engine.measure import Measurement
    from ggufpair.tune.profile import load_profile
    from ggufpair.tune.sweep import PointResult

    from ggufpair.engine.traffic import Sampling, level_config

    data, config = load_profile(path)
    m = data.get("measurements", {})
    draft = Path(m["draft_model"]) if m.get("draft_model") else config.draft or Path("draft.gguf")
    base = config.without_speculation().with_(draft_sampling=None)
    traffic = data.get("traffic", {})
    per_request_ctx = int(traffic.get("context_per_request", config.ctx // max(config.parallel, 1)))
    result = TuneResult(seconds=float(m.get("seconds", 0.0)), cancelled=bool(m.get("cancelled", False)),
                        planned=int(m.get("planned", 0)),
                        pruned=[(x["configuration"], x["why"]) for x in m.get("pruned", [])],
                        level=config.parallel, sampling=Sampling.from_dict(traffic.get("sampling")))
    try:
        for p in m.get("points", []):
            cfg = base.with_(cache_type_k=p["target_kv"], cache_type_v=p["target_kv"])
            if p.get("draft_max"):
                kind = p.get("spec_type", config.spec_type)  # profiles before MTP: the profile's own
                fileless = kind == "draft-mtp"
                cfg = cfg.with_(draft=None if fileless else Path(p["draft"]) if p.get("draft") else draft,
                                spec_type=kind, draft_max=p["draft_max"],
                                draft_cache_type_k=p["draft_kv"], draft_cache_type_v=p["draft_kv"],
                                p_min=float(p.get("p_min", 0.0)))
            if p.get("ngram"):
                cfg = cfg.with_ngram(p["ngram"], dict(p.get("ngram_params", {})))
            if p.get("draft_sampling") and cfg.has_draft:
                cfg = cfg.with_(draft_sampling=p["draft_sampling"])
            cfg = level_config(cfg, int(p.get("concurrency", config.parallel)), per_request_ctx)
            measured = Measurement.from_dict(p) if "tokens_per_second" in p else None
            result.points.append(PointResult(cfg, measured, p.get("error"), 0.0))
        for key, ranked in m.get("predictions", {}).items():
            t, d = key.split("/")
            result.predictions[(t, d)] = [(int(n), float(tps)) for n, tps in ranked]
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: the profile's measurements are not readable ({type(e).__name__}: {e})") from None
    script = path.with_suffix(".sh")
    swap = path.with_suffix(".llama-swap.yaml")
    outputs = TuneOutputs(path, script if script.exists() else None, swap if swap.exists() else None,
                          m.get("recommendation", ""), m)
    return result, outputs
