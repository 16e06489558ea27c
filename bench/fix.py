"""Fix speed, measured in one run against the references (issue 3).

1. In-place patch (an add_bos flip) on a small and on a multi-gigabyte file: ggufpair's time must not grow
   with the file size. gguf's own `gguf_set_metadata.py` does the same job, for reference.
2. Rewrite throughput on the multi-gigabyte file as a ratio to `cp` of the same file (target >= 0.8).
   ggufpair's rewrite fsyncs and verifies every data byte; `cp` does neither, so `cp` + `sync` is shown too.
3. `gguf_new_metadata.py` (shipped with gguf) on a rewrite job it can do (a new BOS id into a new file).
4. `--filesystems xfs,btrfs,ext4` (root, mkfs.xfs / mkfs.btrfs): on a fresh loop filesystem of each kind, the
   rewrite of the file (`--output`: the data keeps its offset) against the reference there: on XFS and btrfs
   `cp --reflink=always`, which clones (target >= 0.8 of its speed); on ext4 `cp` followed by `sync`, the
   honest durable copy (target >= 0.8). The space each took from the filesystem is printed beside. On XFS and
   btrfs `cp --reflink=always` + `sync` (durable, as ggufpair's rewrite is) is shown too, and so are an
   interpreter that does nothing (the floor any Python tool's ratio is bounded by) and ggufpair's rewrite
   called in-process, its own work without an interpreter's start.

Every command runs as a fresh process, so interpreter start-up is included on both sides. `cp` finishes when
the copy is in the page cache; Linux lets it leave up to `vm.dirty_ratio` of memory dirty, so for a file
smaller than that `cp` measures memory and ggufpair (which must fsync) measures the disk, and for a larger one
both measure the disk. Give sizes on both sides (`--size-gib 4,12` on a 24 GiB machine) to see both.
Run: .venv/bin/python bench/fix.py [--size-gib 2[,12]] [--repeat 3] [--dir /tmp/ggufpair-bench]
     [--filesystems xfs,ext4] [--fs-size-gib 4]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/inspect.py must not shadow the standard library's `inspect` for this script's imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import os
import shutil
import statistics
import subprocess
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gguf import GGMLQuantizationType, GGUFValueType as T  # noqa: E402

from ggufpair.fix.apply import apply_plan  # noqa: E402
from ggufpair.fix.plan import RouteChoice, plan_pair_fix  # noqa: E402
from ggufpair.format.writer import encode_header, encode_kv, encode_tensor_info  # noqa: E402
from tests.ggufmake import model_kv, vocab_kv, write_gguf  # noqa: E402

PY = sys.executable
# The timed commands run as an installed tool does: with bytecode caches (pip compiles them at install).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def big_gguf(path: Path, size: int, kv: dict) -> Path:
    """A GGUF with one F16 tensor of about `size` bytes of incompressible data, streamed to disk."""
    cols = 8192
    rows = max(1, size // (cols * 2))
    blobs = [encode_kv(k, *v) for k, v in kv.items()]
    head = encode_header(blobs, [encode_tensor_info("token_embd.weight", (cols, rows), GGMLQuantizationType.F16, 0)], len(blobs))
    head += b"\0" * ((-len(head)) % 32)
    chunk = os.urandom(64 << 20)
    remaining = cols * rows * 2
    with open(path, "wb") as f:
        f.write(head)
        while remaining:
            n = min(remaining, len(chunk))
            f.write(chunk[:n])
            remaining -= n
        f.flush()
        os.fsync(f.fileno())
    return path


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t


def fix_cmd(*args: str) -> list[str]:
    return [PY, "-m", "ggufpair.cli.main", "fix", *map(str, args)]


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} s (runs: {', '.join(f'{x:.3f}' for x in xs)})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", default="2", help="one size, or several: 4,12")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/ggufpair-bench")
    ap.add_argument("--filesystems", default="", help="loop filesystems to measure the rewrite on: xfs,btrfs,ext4")
    ap.add_argument("--fs-size-gib", type=float, default=4, help="the model's size on those filesystems")
    ap.add_argument("--skip-base", action="store_true", help="only the --filesystems cases")
    args = ap.parse_args()
    work = Path(args.dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["GGUFPAIR_HOME"] = str(work / "home")
    sizes = [int(float(x) * 2**30) for x in args.size_gib.split(",")]
    size = sizes[0]

    base = {**model_kv(), **vocab_kv()}
    if args.skip_base:
        t_false = write_gguf(work / "target-bos-false.gguf", {**base, "tokenizer.ggml.add_bos_token": (T.BOOL, False),
                                                              "tokenizer.ggml.bos_token_id": (T.UINT32, 3)})
        for kind in filter(None, args.filesystems.split(",")):
            fs_bench(work, kind, int(args.fs_size_gib * 2**30), base, t_false, args.repeat)
        shutil.rmtree(work, ignore_errors=True)
        return
    t_true = write_gguf(work / "target-bos-true.gguf", {**base, "tokenizer.ggml.add_bos_token": (T.BOOL, True)})
    t_false = write_gguf(work / "target-bos-false.gguf", {**base, "tokenizer.ggml.add_bos_token": (T.BOOL, False),
                                                          "tokenizer.ggml.bos_token_id": (T.UINT32, 3)})
    small = write_gguf(work / "small.gguf", base)
    print(f"building a {size / 2**30:.1f} GiB model in {work} ...", flush=True)
    big = big_gguf(work / "big.gguf", size, base)
    print(f"small: {small.stat().st_size} bytes, big: {big.stat().st_size / 2**30:.2f} GiB\n")

    # 1. In place: flip add_bos back and forth by fixing against targets that want false, then true.
    results = {}
    for name, path in (("small", small), ("big", big)):
        ours = []
        for i in range(args.repeat * 2):
            target = t_false if i % 2 == 0 else t_true
            ours.append(timed(fix_cmd(path, "--reference", target, "--route", "patch")))
        ref = []
        for i in range(args.repeat * 2):
            value = "false" if i % 2 == 0 else "true"
            ref.append(timed([PY, "-m", "gguf.scripts.gguf_set_metadata", str(path), "tokenizer.ggml.add_bos_token",
                              value, "--force"]))
        results[name] = (ours, ref)
        print(f"in-place add_bos flip on {name}: ggufpair {med(ours)}")
        print(f"in-place add_bos flip on {name}: gguf_set_metadata.py {med(ref)}")
    growth = statistics.median(results["big"][0]) / statistics.median(results["small"][0])
    print(f"ggufpair in-place time, big / small: {growth:.2f} (must not grow with size: ~1)\n")

    big.unlink()
    dirty = dirty_limit()
    if dirty:
        print(f"this machine lets about {dirty / 2**30:.1f} GiB of written data wait in memory (vm.dirty_ratio)\n")
    for size in sizes:
        rewrite_bench(work, size, base, t_false, args.repeat, dirty)
    for kind in filter(None, args.filesystems.split(",")):
        fs_bench(work, kind, int(args.fs_size_gib * 2**30), base, t_false, args.repeat)
    shutil.rmtree(work, ignore_errors=True)


def dirty_limit() -> int | None:
    """Bytes of dirty page cache a writer may accumulate before it is throttled to the disk's speed."""
    try:
        ratio = int(Path("/proc/sys/vm/dirty_ratio").read_text())
        avail = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemAvailable:"))
    except (OSError, ValueError, StopIteration):
        return None
    return avail * ratio // 100


def rewrite_bench(work: Path, size: int, base: dict, t_false: Path, repeat: int, dirty: int | None) -> None:
    big = big_gguf(work / "big.gguf", size, base)
    # 2. Rewrite: BOS id 1 -> 3 into a new file, vs cp of the same file.
    out = work / "out.gguf"
    jobs = {
        "cp": [["cp", str(big), str(out)]],
        "cp_sync": [["cp", str(big), str(out)], ["sync", str(out)]],
        "ours": [fix_cmd(big, "--reference", t_false, "--route", "patch", "--output", out)],
        "newmeta": [[PY, "-m", "gguf.scripts.gguf_new_metadata", str(big), str(out), "--special-token-by-id", "bos",
                     "3", "--force"]],
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    names = list(jobs)
    for i in range(repeat):
        # Each command starts from the same state: no output file, and no dirty pages left by the previous one
        # (written back outside the timing), so none pays for another's writes. The order rotates.
        for name in names[i % len(names):] + names[:i % len(names)]:
            out.unlink(missing_ok=True)
            subprocess.run(["sync", "-f", str(work)], check=True)
            times[name].append(sum(timed(cmd) for cmd in jobs[name]))
        out.unlink(missing_ok=True)
    ours, cp, cp_sync, newmeta = times["ours"], times["cp"], times["cp_sync"], times["newmeta"]
    gib = big.stat().st_size / 2**30
    if dirty:
        print(f"{gib:.1f} GiB file: {'smaller' if big.stat().st_size < dirty else 'larger'} than the dirty-page limit")
    o, c, cs, nm = (statistics.median(x) for x in (ours, cp, cp_sync, newmeta))
    print(f"rewrite (new BOS id, --output) of {gib:.2f} GiB: ggufpair {med(ours)} = {gib / o:.2f} GiB/s "
          "(fsync + every data byte verified)")
    print(f"cp of the same file: {med(cp)} = {gib / c:.2f} GiB/s")
    print(f"cp + sync of the same file: {med(cp_sync)} = {gib / cs:.2f} GiB/s")
    print(f"gguf_new_metadata.py, same job: {med(newmeta)} = {gib / nm:.2f} GiB/s")
    print(f"throughput ratio ggufpair / cp: {c / o:.2f} (target >= 0.8); ggufpair / (cp + sync): {cs / o:.2f}; "
          f"ggufpair / gguf_new_metadata.py: {nm / o:.2f}")
    print("  per round, ggufpair / cp: " + ", ".join(f"{b / a:.2f}" for a, b in zip(ours, cp)) + "\n")
    big.unlink()


MKFS = {"xfs": ["mkfs.xfs", "-q", "-f"], "btrfs": ["mkfs.btrfs", "-q", "-f"], "ext4": ["mkfs.ext4", "-q", "-F"]}


def used_bytes(folder: Path) -> int:
    os.sync()
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def fs_bench(work: Path, kind: str, size: int, base: dict, t_false: Path, repeat: int) -> None:
    """The rewrite on a fresh loop filesystem of `kind`, against the reference copy there."""
    if shutil.which(MKFS[kind][0]) is None or os.geteuid() != 0:
        print(f"{kind}: not measured ({MKFS[kind][0]} missing or not root)\n")
        return
    image, mnt = work / f"{kind}.img", work / f"mnt-{kind}"
    with open(image, "wb") as f:
        f.truncate(size * 3 + (1 << 30))  # sparse: the model, a full copy of it, and room to spare
    mnt.mkdir(exist_ok=True)
    subprocess.run([*MKFS[kind], str(image)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    try:
        big = big_gguf(mnt / "big.gguf", size, base)
        out = mnt / "out.gguf"
        cow = kind != "ext4"
        ref_name = "cp --reflink=always" if cow else "cp + sync"
        jobs = {"ours": [fix_cmd(big, "--reference", t_false, "--route", "patch", "--output", out)],
                "ref": [["cp", "--reflink=always", str(big), str(out)]] if cow else
                       [["cp", "--reflink=never", str(big), str(out)], ["sync", str(out)]]}
        tiny = write_gguf(mnt / "tiny.gguf", base)  # the same job on a tiny file: what does not grow with size
        tiny_out = mnt / "tiny-out.gguf"
        jobs["ours_tiny"] = [fix_cmd(tiny, "--reference", t_false, "--route", "patch", "--output", tiny_out)]
        jobs["ref_tiny"] = ([["cp", "--reflink=always", str(tiny), str(tiny_out)]] if cow else
                            [["cp", "--reflink=never", str(tiny), str(tiny_out)], ["sync", str(tiny_out)]])
        jobs["python"] = [[PY, "-c", "pass"]]  # the floor of any Python tool: an interpreter that does nothing
        big_jobs = ["ours", "ref"]
        if cow:  # ggufpair fsyncs what it wrote; the durable form of the clone does too
            jobs["ref_sync"] = [["cp", "--reflink=always", str(big), str(out)], ["sync", str(out)]]
            big_jobs.append("ref_sync")
        times: dict[str, list[float]] = {name: [] for name in jobs}
        took: dict[str, list[int]] = {name: [] for name in jobs}
        tiny_out.unlink(missing_ok=True)
        timed(jobs["ours_tiny"][0])  # untimed: Python's bytecode caches written, as an installed ggufpair has them
        # Untimed too: one full rewrite, so that the sparse image's blocks it wrote (the timed runs' usually reuse
        # some of them) exist on the disk under it: the first such write took 2-3x as long here, on whichever
        # side ran first. On XFS and btrfs the rewrite clones, so this touches almost nothing there.
        for cmd in jobs["ours"]:
            timed(cmd)
        out.unlink(missing_ok=True)
        for i in range(repeat):
            for name in ("ours_tiny", "ref_tiny", "python"):
                tiny_out.unlink(missing_ok=True)
                times[name].append(sum(timed(cmd) for cmd in jobs[name]))
            tiny_out.unlink(missing_ok=True)
            for name in big_jobs[i % len(big_jobs):] + big_jobs[:i % len(big_jobs)]:
                out.unlink(missing_ok=True)
                subprocess.run(["sync", "-f", str(mnt)], check=True)
                before = used_bytes(mnt)
                times[name].append(sum(timed(cmd) for cmd in jobs[name]))
                took[name].append(used_bytes(mnt) - before)
            out.unlink(missing_ok=True)
        if cow:  # ggufpair's own work without an interpreter's start: the plan, the clone, its checks, fsyncs
            times["in_process"] = []
            for _ in range(repeat):
                out.unlink(missing_ok=True)
                subprocess.run(["sync", "-f", str(mnt)], check=True)
                t = time.perf_counter()
                apply_plan(plan_pair_fix(big, t_false, RouteChoice("patch")), output=out)
                times["in_process"].append(time.perf_counter() - t)
            out.unlink(missing_ok=True)
        gib = big.stat().st_size / 2**30
        o, r = statistics.median(times["ours"]), statistics.median(times["ref"])
        print(f"{kind}, rewrite (new BOS id, --output) of {gib:.2f} GiB: ggufpair {med(times['ours'])}, "
              f"took {statistics.median(took['ours']) / 2**20:.1f} MiB of the filesystem")
        print(f"{kind}, {ref_name} of the same file: {med(times['ref'])}, "
              f"took {statistics.median(took['ref']) / 2**20:.1f} MiB")
        print(f"{kind}: speed ratio ggufpair / ({ref_name}): {r / o:.2f} (target >= 0.8)")
        ot, rt = statistics.median(times["ours_tiny"]), statistics.median(times["ref_tiny"])
        print(f"{kind}: the same jobs on a {tiny.stat().st_size} B file: ggufpair {med(times['ours_tiny'])}, "
              f"{ref_name} {med(times['ref_tiny'])}; what the 4 GiB added: ggufpair {o - ot:+.3f} s, "
              f"{ref_name} {r - rt:+.3f} s")
        print("  per round: " + ", ".join(f"{b / a:.2f}" for a, b in zip(times["ours"], times["ref"])))
        if cow:
            rs = statistics.median(times["ref_sync"])
            print(f"{kind}, {ref_name} + sync (durable, as ggufpair's rewrite is): {med(times['ref_sync'])}; "
                  f"ratio ggufpair / that: {rs / o:.2f}")
            ip = statistics.median(times["in_process"])
            print(f"{kind}, ggufpair's rewrite called in-process (plan, clone, checks, fsyncs; no interpreter start): "
                  f"{med(times['in_process'])}; ratio to {ref_name}: {r / ip:.2f}, to it + sync: {rs / ip:.2f}")
        floor = statistics.median(times["python"])
        print(f"{kind}: a Python interpreter that does nothing: {med(times['python'])}; the best ratio any Python "
              f"tool could reach against {ref_name}: {r / floor:.2f}\n")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        image.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
