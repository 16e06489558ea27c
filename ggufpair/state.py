"""ggufpair's saved state lives under one folder: `$GGUFPAIR_HOME`, else `$XDG_DATA_HOME/ggufpair`,
else `~/.local/share/ggufpair`. Tests point `GGUFPAIR_HOME` at a temporary folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def state_path(*parts: str) -> Path:
    """Where state lives, without creating anything (for a read-only look)."""
    base = os.environ.get("GGUFPAIR_HOME")
    if base:
        root = Path(base)
    else:
        root = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "ggufpair"
    return root.joinpath(*parts)


def state_dir(*parts: str) -> Path:
    path = state_path(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


LOG_RUNS_KEPT = 50
"""Run folders kept under logs/: the oldest beyond these are removed when a new run starts."""


def run_log_dir(what: str) -> Path:
    """A folder under logs/ for one run's llama-server logs (a tune's, a check's), named by the time and `what`
    (the model's name), so that no later run overwrites the evidence of an earlier one. It is made by the
    first launch that writes into it (a run refused before any launch leaves nothing); the oldest run folders
    beyond LOG_RUNS_KEPT go."""
    import re
    import shutil
    import time

    logs = state_dir("logs")
    runs = sorted((p for p in logs.iterdir() if p.is_dir() and re.match(r"\d{8}-\d{6}-", p.name)),
                  key=lambda p: p.name)
    for old in runs[:max(len(runs) - LOG_RUNS_KEPT + 1, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", what).strip("-")[:60] or "run"
    base = logs / f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}.{n}")
    return path


def write_json_atomic(path: Path, data: Any, like: Path | None = None) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one (fsync'd). `like`: a
    file whose owner, group and read/write bits the new one takes (where permitted), so that whoever can use
    that file can read this one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            if like is not None:
                st = os.stat(like)
                try:
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                except PermissionError:
                    pass  # not root: the file stays this user's, with the bits below
                os.fchmod(f.fileno(), st.st_mode & 0o666)
            json.dump(data, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
