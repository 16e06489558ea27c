"""Deriving model files with llama.cpp's own `llama-quantize` (an F16 target from a Q4 file, say)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ggufpair.engine.binary import Binary
from ggufpair.errors import EngineError


def quantize(binary: Binary, src: Path, dst: Path, qtype: str, threads: int | None = None) -> Path:
    """Write `dst` as `src` re-quantized to `qtype` (e.g. F16, Q8_0). Atomic: a temporary name, then a rename."""
    tool = binary.sibling("llama-quantize")
    tmp = dst.with_name(f".{dst.name}.partial")
    args = [str(tool), "--allow-requantize", str(src), str(tmp), qtype]
    if threads:
        args.append(str(threads))
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-8:])
        raise EngineError(f"llama-quantize {src.name} -> {qtype} failed (exit {out.returncode}):\n{tail}")
    os.replace(tmp, dst)
    return dst


def derived(binary: Binary, src: Path, folder: Path, qtype: str) -> Path:
    """`src` quantized to `qtype` in `folder`, made once and reused while the source is unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    st = src.stat()
    dst = folder / f"{src.stem}.{qtype.lower()}.{st.st_size}.gguf"
    if not dst.exists():
        quantize(binary, src, dst, qtype)
    return dst
