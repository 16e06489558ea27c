"""Resumable tunes (a scripted engine): every point saved as it completes; a resumed tune reuses the
speculating points measured under the same conditions, measures the baseline again, and says why points of a
changed model file or build no longer apply."""

from __future__ import annotations

import os

import pytest

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.traffic import Sampling
from ggufpair.tune.resume import TuneJournal, conditions
from ggufpair.tune.search import TuneSpec, tune
from tests.unit.test_drafters import engine  # noqa: F401 (the scripted engine fixture)
from tests.unit.test_traffic import NEW, PROMPTS, _pair


class Interrupt(Exception):
    pass


def _run(tmp_path, binary, t, d, ti, di, resume: bool, stop_after: int | None = None):
    conds = conditions(binary, "cpu", PROMPTS, 128, 2, Sampling())
    journal = TuneJournal.for_pair(t, [d], conds, resume=resume)
    spec = TuneSpec(base=ServerConfig(target=t, draft=d, ctx=1024), lengths=(2, 4, 8), target_kv=("f16",),
                    draft_kv=("f16",), prompts=PROMPTS)
    seen = []

    def on_point(p):
        seen.append(p)
        if stop_after is not None and len(seen) >= stop_after:
            raise Interrupt()  # as a Ctrl-C would, after the point was saved

    return journal, lambda: tune(binary, NEW, spec, ti, di, tmp_path, on_point=on_point, journal=journal)


def test_an_interrupted_tune_resumes_without_launching_its_points_again(engine, tmp_path):  # noqa: F811
    t, d, ti, di = _pair(tmp_path)
    binary = Binary(tmp_path / "llama-server", "test")
    binary.path.write_text("#!/bin/sh\n")
    _, first = _run(tmp_path, binary, t, d, ti, di, resume=False, stop_after=3)
    with pytest.raises(Interrupt):
        first()
    launched_before = list(engine)
    assert [c.draft_max for c in launched_before if c.has_draft] == [8, 4]  # after the baseline: long, short
    engine.clear()
    journal, again = _run(tmp_path, binary, t, d, ti, di, resume=True)
    assert len(journal.reusable) == 2 and not journal.stale  # the two draft points; the baseline is not reused
    result = again()
    assert result.reused == 2
    assert all(c.draft_max not in (4, 8) for c in engine if c.has_draft)  # not launched again
    assert sum(not c.speculates for c in engine) >= 1  # the paired baseline, measured again now
    assert {p.config.draft_max for p in result.points if p.reused} == {4, 8}  # the long and the short run
    assert result.launches == len(engine)
    # the same result as a tune that measured everything: the scripted engine is deterministic
    engine.clear()
    _, fresh = _run(tmp_path, binary, t, d, ti, di, resume=False)
    full = fresh()
    assert full.recommended.config == result.recommended.config


def test_points_of_a_changed_draft_or_build_are_not_reused_and_the_reason_is_said(engine, tmp_path):  # noqa: F811
    t, d, ti, di = _pair(tmp_path)
    binary = Binary(tmp_path / "llama-server", "test")
    binary.path.write_text("#!/bin/sh\n")
    _, first = _run(tmp_path, binary, t, d, ti, di, resume=False)
    first()
    st = os.stat(d)
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the draft was patched since
    journal, _ = _run(tmp_path, binary, t, d, ti, di, resume=True)
    assert not journal.reusable and any("the draft file d.gguf changed since" in s for s in journal.stale)
    binary.path.write_text("#!/bin/sh\n# another build\n")
    journal, _ = _run(tmp_path, binary, t, d, ti, di, resume=True)
    assert not journal.reusable and any("the llama-server build changed" in s for s in journal.stale)
    journal, _ = _run(tmp_path, binary, t, d, ti, di, resume=False)  # a fresh tune forgets them
    assert not journal.path.exists() and not journal.reusable


def test_each_run_gets_a_log_folder_of_its_own(tmp_path, monkeypatch):
    """Two tunes of the same model in the same second: two folders, so the second never overwrites the first's
    llama-server logs; a folder appears with its first log; the oldest runs beyond the kept number go."""
    import time

    import ggufpair.state as state

    monkeypatch.setenv("GGUFPAIR_HOME", str(tmp_path))
    monkeypatch.setattr(time, "strftime", lambda fmt: "20261202-150000")
    a = state.run_log_dir("gemma 3/270m")
    assert a.name == "20261202-150000-gemma-3-270m" and not a.exists()  # made by the first launch, not before
    a.mkdir()
    b = state.run_log_dir("gemma 3/270m")
    assert b.name == "20261202-150000-gemma-3-270m.2" and b.parent == a.parent == state.state_dir("logs")
    monkeypatch.setattr(state, "LOG_RUNS_KEPT", 3)
    for i in range(1, 5):
        (a.parent / f"2026120{i}-000000-old").mkdir()
    state.run_log_dir("next")
    # five run folders, three kept with the new one: the three oldest by their time go
    assert sorted(p.name for p in a.parent.iterdir()) == ["20261203-000000-old", "20261204-000000-old"]
