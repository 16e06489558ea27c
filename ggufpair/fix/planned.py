"""No-copy fixes remembered: a fix by the no-copy route changes no file, only the launch command
(`--override-kv`), so `inspect` of the same files afterwards would still call the pair broken. What was
planned, for which files as they were then (size and modification time), is kept in the state folder."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

from ggufpair.state import state_path, write_json_atomic


def _key(draft: Path, reference: Path) -> Path:
    pair = json.dumps([os.path.realpath(draft), os.path.realpath(reference)])
    return state_path("overrides", hashlib.sha256(pair.encode()).hexdigest()[:24] + ".json")


def _stamp(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def remember(draft: Path, reference: Path, override_args) -> None:
    """Keep the --override-kv arguments a no-copy fix of the pair planned (a failure to write is no error:
    the fix itself is done)."""
    path = _key(draft, reference)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"draft": str(draft), "reference": str(reference), "override_args": list(override_args),
                                 "draft_stamp": _stamp(draft), "reference_stamp": _stamp(reference),
                                 "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    except OSError:
        pass


def planned(draft: Path, reference: Path) -> dict | None:
    """The no-copy fix planned for these very files (neither changed since), or None."""
    try:
        data = json.loads(_key(draft, reference).read_text())
        if data["draft_stamp"] == _stamp(draft) and data["reference_stamp"] == _stamp(reference):
            return data
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None
