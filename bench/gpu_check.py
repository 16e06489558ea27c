"""The one-shot GPU check's Python half (bench/gpu_check.sh builds llama.cpp, then calls this): makes its models
(random weights, written by tests/ggufmake.py, quantized by the fresh llama-quantize: nothing is fetched),
runs `ggufpair doctor`, a short tune with every layer on the GPU, an MTP target, and ggufpair's per-device
memory estimate against llama.cpp's own buffer lines for each placement the devices allow. Writes one
Markdown report.

Run (after the build): python3 bench/gpu_check.py --bin-dir BUILD/bin --report REPORT [--small]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

MIB = 1 << 20


def sh(argv: list[str], env: dict, timeout: int, split: bool = False):
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    if split:  # --json: the JSON on stdout, what a person reads on stderr
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True, type=Path)
    ap.add_argument("--report", required=True, type=Path)
    ap.add_argument("--small", action="store_true", help="small models (a CPU rehearsal of the script)")
    ap.add_argument("--build-seconds", type=float, default=0.0)
    ap.add_argument("--build-note", default="")
    args = ap.parse_args()
    from ggufpair.engine.binary import Binary
    from ggufpair.engine.config import ServerConfig
    from ggufpair.engine.devices import devices
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.engine.memory import estimate_pair, measured_by_device
    from ggufpair.engine.placement import DeviceBudget, device_loads, placements
    from ggufpair.engine.runner import LlamaServer
    from ggufpair.format.model_info import read_model_info
    from tests.ggufmake import random_model

    t_start = time.perf_counter()
    server = args.bin_dir / "llama-server"
    quantize = args.bin_dir / "llama-quantize"
    work = Path(tempfile.mkdtemp(prefix="ggufpair-gpu-check-"))
    env = {**os.environ, "LLAMA_SERVER": str(server), "GGUFPAIR_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    lines: list[str] = ["# ggufpair one-shot GPU check", ""]
    if args.build_seconds:
        lines += [f"- llama.cpp build: {args.build_seconds:.0f} s {args.build_note}".rstrip()]

    # models: a dense target and a small draft of the same vocabulary, and a target carrying an MTP block
    big = dict(n_layers=4, n_embd=256, n_head=8, n_head_kv=4, n_tokens=4000) if args.small else \
        dict(n_layers=24, n_embd=1536, n_head=16, n_head_kv=4, n_tokens=32000)
    t0 = time.perf_counter()
    f32_t = random_model(work / "target-f32.gguf", "llama", **big, name="gpu-check-target")
    f32_d = random_model(work / "draft-f32.gguf", "llama", **{**big, "n_layers": 2}, seed=1, name="gpu-check-draft")
    f32_m = random_model(work / "mtp-f32.gguf", "mtp", **{**big, "n_layers": 4}, seed=2, name="gpu-check-mtp")
    made = {}
    for src, q in ((f32_t, "Q8_0"), (f32_d, "Q4_K_M"), (f32_m, "Q8_0")):
        dst = src.with_name(src.stem.replace("f32", q.lower()) + ".gguf")
        rc, out, _ = sh([str(quantize), str(src), str(dst), q], env, 600)
        if rc:
            lines += [f"- llama-quantize {src.name} {q} failed ({rc}): `{out.strip().splitlines()[-1]}`"]
            dst = src
        made[src.stem.split("-")[0]] = dst
        src.unlink() if dst != src else None
    target, draft, mtp = made["target"], made["draft"], made["mtp"]
    t_info, d_info = read_model_info(target), read_model_info(draft)
    lines += [f"- models (random weights, {time.perf_counter() - t0:.0f} s to make): target {target.name} "
              f"{t_info.file_size / MIB:.0f} MiB ({t_info.n_layers} layers, n_embd {t_info.n_embd}), draft "
              f"{draft.name} {d_info.file_size / MIB:.0f} MiB, MTP target {mtp.name}", ""]

    rc, out, secs = sh([sys.executable, "-m", "ggufpair.cli.main", "doctor", "--json"], env, 120)
    lines += ["## doctor", "", f"exit {rc}, {secs:.1f} s", "", "```", out.strip()[-3000:], "```", ""]

    short = ["--kv", "f16", "--draft-kv", "f16", "--tokens", "64", "--repeats", "1", "--categories", "chat,edit",
             "--ctx", "2048", "--gpu-layers", "all", "--p-min", "0", "--json"]
    for title, argv in (("tune: draft and n-gram lookup, every layer on the GPU",
                         ["--target", str(target), "--draft", str(draft), "--kinds", "draft,ngram-simple",
                          "--lengths", "2,4,8"]),
                        ("tune: the MTP target's own layers", ["--target", str(mtp), "--kinds", "mtp",
                                                               "--lengths", "1,2,3"])):
        rc, out, err, secs = sh([sys.executable, "-m", "ggufpair.cli.main", "tune", *argv, *short], env, 420, split=True)
        lines += [f"## {title}", "", f"exit {rc}, {secs:.0f} s", ""]
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            data = {}
        for p in data.get("points", []):
            lines.append(f"- {p['label']}: " + (f"{p['tokens_per_second']:.1f} tok/s, speculative {p['speculative']}, "
                                               f"drafted {p.get('draft_tokens', 0)}, accepted {p.get('accepted_tokens', 0)}"
                                               if "tokens_per_second" in p else f"failed: {p.get('error')}"))
        rec = data.get("recommended") or {}
        if rec:
            lines.append(f"- recommended: {rec.get('label')}; memory predicted {rec.get('predicted_memory_bytes', 0) / MIB:.0f}"
                         f" MiB, measured {(rec.get('measured_memory_bytes') or 0) / MIB:.0f} MiB")
        lines += ["", "<details><summary>output</summary>", "", "```", err.strip()[-6000:], "```", "</details>", ""]

    # per device: ggufpair's estimate against llama.cpp's buffer lines, for every placement offered
    binary = Binary(server, "gpu-check")
    dialect = probe_dialect(server)
    devs = devices(server)
    budgets = [DeviceBudget(d.name, d.free_bytes, d.name != "CPU") for d in devs]
    base = ServerConfig(target=target, draft=draft, ctx=4096, gpu_layers="all", draft_gpu_layers="all", draft_max=4)
    placed = placements(budgets, with_draft=True) or []
    cases = [(pl.name, pl.apply(base)) for pl in placed] or [("host only (no GPU listed)", base)]
    cases += [("MTP target, all on the GPU", ServerConfig(target=mtp, spec_type="draft-mtp", ctx=4096,
                                                         gpu_layers="all", draft_max=2))]
    lines += ["## memory per device: ggufpair's estimate against llama.cpp's own buffer lines", "",
              "| placement | device | estimated MiB | measured MiB | error |", "|---|---|---|---|---|"]
    for name, cfg in cases:
        t = read_model_info(cfg.target)
        d = read_model_info(cfg.draft) if cfg.draft else None
        est = estimate_pair(t, d, cfg, "cuda" if any(b.offload for b in budgets) else "cpu", dialect.fa_takes_value)
        loads = device_loads(t, d, cfg, est, budgets, dialect.fa_takes_value) if any(b.offload for b in budgets) else {"CPU": est.total}
        try:
            with LlamaServer(binary, cfg.with_(extra=("-lv", "4")), dialect=dialect) as srv:
                measured = measured_by_device(srv.log_text())
                live = srv.speculative
        except Exception as e:  # noqa: BLE001 - the report says what failed and goes on
            lines.append(f"| {name} | - | - | - | failed to start: {str(e)[:200]} |")
            continue
        for dev in sorted(set(loads) | set(measured)):
            e, m = loads.get(dev, 0) / MIB, measured.get(dev, 0) / MIB
            lines.append(f"| {name}{'' if live else ' (speculation OFF)'} | {dev} | {e:.0f} | {m:.0f} | "
                         + (f"{(e - m) / m:+.1%} |" if m else "- |"))
    lines += ["", f"total time after the build: {time.perf_counter() - t_start:.0f} s"]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
