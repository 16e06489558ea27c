"""Tunes that survive interruption: every measured point is saved as it completes, with what decided it
(the model files' identities, the llama-server build, the device, the prompts, tokens, repetitions and
sampling). `tune --resume` reuses the speculating points that still apply and measures only the rest; the
paired baseline is always measured again in the resumed session, so old points are compared through it.
A changed model file or build makes its points stale, and the resumed tune says which and why.

One journal per pair (target and drafts by path), a JSON line per point, under the state folder's `tunes/`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ggufpair.engine.config import ServerConfig
from ggufpair.state import state_dir


def _identity(path: Path | None) -> dict[str, Any] | None:
    """Size and modification time of a model file: a replaced or patched file no longer matches."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return {"path": str(path), "missing": True}
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _build_identity(binary) -> dict[str, Any]:
    st = os.stat(binary.path)
    return {"path": str(binary.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def conditions(binary, device: str, prompts, n_predict: int, repeats: int, sampling,
               context: int | None = None) -> dict[str, Any]:
    """What a point's measurement depends on besides its configuration (and its model files); `context`, the
    per-request context, is there to be offered to a resumed tune (free memory, and so the automatic
    context, can move between sessions)."""
    digest = hashlib.sha256(json.dumps([[p.id, p.category, p.payload()] for p in prompts], sort_keys=True).encode())
    return {"build": _build_identity(binary), "device": device, "prompts": digest.hexdigest(), "n_predict": n_predict,
            "repeats": repeats, "sampling": sampling.to_dict(), "context": context}


def _journal_path(target: Path, drafts) -> Path:
    name = hashlib.sha256(json.dumps([str(target), *map(str, drafts)]).encode()).hexdigest()[:20]
    return state_dir("tunes") / f"{name}.jsonl"


def config_key(config: ServerConfig) -> str:
    d = config.to_dict()
    d.pop("host", None), d.pop("port", None)
    return json.dumps(d, sort_keys=True, default=str)


@dataclass
class TuneJournal:
    """The saved points of a pair's tunes, and the conditions they were measured under."""
    path: Path
    conditions: dict[str, Any]
    reusable: dict[str, Any] = field(default_factory=dict)  # config key -> PointResult, from an earlier run
    stale: list[str] = field(default_factory=list)  # why saved points do not apply (one line per reason)

    @classmethod
    def for_pair(cls, target: Path, drafts, conds: dict[str, Any], resume: bool) -> "TuneJournal":
        """The pair's journal; with `resume`, the saved points that still apply are loaded (the others are
        counted in `stale` with the reason), else the journal starts empty."""
        journal = cls(_journal_path(target, drafts), conds)
        if resume:
            journal._load()
        else:
            journal.path.unlink(missing_ok=True)
        return journal

    @staticmethod
    def previous_context(target: Path, drafts) -> int | None:
        """The per-request context the pair's last journaled tune ran at, if any."""
        try:
            first = _journal_path(target, drafts).read_text().splitlines()[0]
            return int(json.loads(first)["conditions"]["context"])
        except (OSError, IndexError, ValueError, KeyError, TypeError):
            return None

    def _load(self) -> None:
        from ggufpair.engine.measure import Measurement
        from ggufpair.tune.sweep import PointResult

        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return
        reasons: dict[str, int] = {}
        for line in lines:
            try:
                rec = json.loads(line)
                config = ServerConfig.from_dict(rec["config"])
                measured = replace(Measurement.from_dict(rec["measurement"]),
                                   outputs=tuple((str(i), str(t)) for i, t in rec.get("outputs", ())))
            except (ValueError, KeyError, TypeError):
                reasons["a line of the journal is unreadable"] = reasons.get("a line of the journal is unreadable", 0) + 1
                continue
            if not config.speculates:  # a baseline is measured again in every session
                continue
            why = self._why_stale(rec, config)
            if why:
                reasons[why] = reasons.get(why, 0) + 1
                continue
            logs = rec.get("logs")  # named only while it is there (a log folder of long ago is pruned)
            self.reusable[config_key(config)] = PointResult(config, measured, None, 0.0, reused=True,
                                                            logs=logs if logs and os.path.isdir(logs) else None)
        self.stale = [f"{n} point(s): {why}" for why, n in reasons.items()]

    def _why_stale(self, rec: dict[str, Any], config: ServerConfig) -> str | None:
        old = rec.get("conditions", {})
        for key, what in (("build", "the llama-server build changed"), ("device", "the device changed"),
                          ("context", "the context changed"),
                          ("prompts", "the prompts changed"), ("n_predict", "--tokens changed"),
                          ("repeats", "--repeats changed"), ("sampling", "the sampling changed")):
            if old.get(key) != self.conditions.get(key):
                return what
        for role, path in (("target", config.target), ("draft", config.draft)):
            if path is not None and rec.get("models", {}).get(role) != _identity(path):
                return f"the {role} file {Path(path).name} changed since"
        return None

    def save(self, point, log_dir: Path | None = None) -> None:
        """Append a measured point (failed ones are not kept: they are tried again); `log_dir`: where its
        launch's logs are, for a tune that reuses it to name."""
        if not point.ok:
            return
        from ggufpair.tune.run import point_dict

        rec = {"config": json.loads(config_key(point.config)), "measurement": point.measurement.to_dict(),
               "outputs": [list(o) for o in point.measurement.outputs],  # the greedy answers, for agreement
               "conditions": self.conditions, "label": point_dict(point)["label"],
               "logs": str(log_dir) if log_dir is not None else None,
               "models": {"target": _identity(point.config.target),
                          "draft": _identity(point.config.draft) if point.config.draft is not None else None}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def finished(self) -> None:
        """The tune ran to its end: nothing is left to resume."""
        self.path.unlink(missing_ok=True)

    def take(self, config: ServerConfig):
        """A saved point for this configuration, or None (a baseline is never taken: always re-measured)."""
        if not config.speculates:
            return None
        return self.reusable.pop(config_key(config), None)
