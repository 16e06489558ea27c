"""The TUI driven with Textual's Pilot through a real flow (the demo pair, a fix, a short tune with the real
llama-server), snapshots of the deterministic screens at 80x24 with the cursor blink off, and cancelling."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import psutil
import pytest

from ggufpair.tui.app import ConfigScreen, GgufpairApp, ResultScreen, TuneScreen, VerdictScreen
from ggufpair.tune.run import result_from_profile

pytestmark = pytest.mark.integration
SIZE = (80, 24)
RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "profiles" / "demo-tune.toml"
"""A profile saved by a real `ggufpair tune` of the demo pair (see the file's header): the live and result
screens are snapshotted from its measurements, so the pictures do not change with this machine's speed."""


@pytest.fixture
def pair_dir(demo_pair_folder):
    return demo_pair_folder


def _app(**kw) -> GgufpairApp:
    return GgufpairApp(threads=2, cursor_blink=False, **kw)


def _replay(stop_before_last: bool):
    """A tune runner that feeds the TUI the recorded tune's points, as the core tune would, instead of
    measuring again; it holds before the last point (the screen mid-tune) until the screen goes away."""
    result, outputs = result_from_profile(RECORDED)

    def runner(screen):
        points = result.points[:-1] if stop_before_last else result.points
        screen.post(screen.set_plan, result.planned, 8 * 2**30)
        for i, p in enumerate(points):
            screen.post(screen.show_event, f"[{i + 1}/{result.planned}] {p.label}")
            screen.post(screen.add_point, p)
        if stop_before_last:
            nxt = result.points[-1]
            screen.post(screen.show_event, f"[{len(points) + 1}/{result.planned}] measuring {nxt.label} (ETA 25 s)")
            screen.cancel_event.wait(120)
            return None
        return result, outputs
    return runner, len(result.points)


async def _choose_pair(pilot) -> None:
    """Rows are sorted by size: the Q4 draft first, the F16 target second."""
    await pilot.press("d", "down", "t", "v")
    await pilot.pause()


async def _wait_for(pilot, predicate, seconds: float) -> None:
    for _ in range(int(seconds * 10)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("timed out waiting for the TUI")


def test_snapshot_models(pair_dir, snap_compare):
    assert snap_compare(_app(), terminal_size=SIZE)


def test_snapshot_verdict(pair_dir, snap_compare):
    assert snap_compare(_app(), terminal_size=SIZE, run_before=_choose_pair)


def test_snapshot_fix_preview(pair_dir, snap_compare):
    async def before(pilot):
        await _choose_pair(pilot)
        await pilot.press("p")
    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_snapshot_tune_config(pair_dir, snap_compare):
    async def before(pilot):
        await _choose_pair(pilot)
        await pilot.press("n")
    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_snapshot_tune_live(pair_dir, snap_compare):
    runner, n = _replay(stop_before_last=True)

    async def before(pilot):
        await _choose_pair(pilot)
        await pilot.press("o", "n", "ctrl+s")
        await _wait_for(pilot, lambda: isinstance(pilot.app.screen, TuneScreen) and len(pilot.app.screen.points) == n - 1, 10)
        pilot.app.clear_notifications()  # the fix's toast would time out at a machine-dependent moment
        await pilot.pause()
    assert snap_compare(_app(tune_runner=runner), terminal_size=SIZE, run_before=before)


def test_snapshot_result_of_a_saved_profile(pair_dir, snap_compare):
    """`ggufpair tui --profile PROFILE` opens a saved tune's result."""
    shutil.copy(RECORDED, Path.cwd() / "demo-tune.toml")  # shown relative to the current folder
    assert snap_compare(_app(profile=Path("demo-tune.toml")), terminal_size=SIZE)


def test_a_replayed_tune_ends_on_its_result_screen(pair_dir):
    runner, n = _replay(stop_before_last=False)

    async def flow():
        app = _app(tune_runner=runner)
        async with app.run_test(size=SIZE) as pilot:
            await _choose_pair(pilot)
            await pilot.press("o", "n", "ctrl+s")
            await _wait_for(pilot, lambda: isinstance(app.screen, ResultScreen) and app.screen.is_mounted, 10)
            await pilot.pause()
            assert app.screen.query_one("#points").row_count == n
            assert str(app.screen.query_one("#summary").render()).startswith(app.session.outputs.recommendation[:40])
    asyncio.run(flow())


def test_a_bad_profile_is_a_notification_not_a_traceback(pair_dir):
    (Path.cwd() / "broken.toml").write_text("[profile\n")

    async def flow():
        app = _app(profile=Path("broken.toml"))
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert not isinstance(app.screen, ResultScreen)
            assert any("broken.toml" in n.message for n in app._notifications)
    asyncio.run(flow())


def test_real_flow_fix_and_tune(pair_dir):
    async def flow():
        app = _app()
        async with app.run_test(size=(120, 40)) as pilot:
            await _choose_pair(pilot)
            assert isinstance(app.screen, VerdictScreen)
            text = str(app.screen.query_one("#verdict").render())
            assert "INCOMPATIBLE" in text and "add_bos" in text
            await pilot.press("o")  # fix without a copy
            await pilot.pause()
            assert app.session.overrides == ("tokenizer.ggml.add_bos_token=bool:true",)
            assert str(app.screen.query_one("#verdict").render()).startswith("COMPATIBLE")
            await pilot.press("n")
            assert isinstance(app.screen, ConfigScreen)
            for key, value in (("lengths", "2,4"), ("kv", "f16"), ("draft_kv", "f16"), ("categories", "chat"),
                               ("tokens", "16"), ("repeats", "1"), ("ctx", "1024"), ("kinds", "draft,ngram-simple")):
                app.screen.query_one(f"#f_{key}").value = value
            await pilot.press("ctrl+s")
            await _wait_for(pilot, lambda: isinstance(app.screen, ResultScreen), 300)
            result = app.session.result
            assert result.launches >= 3 and not result.cancelled
            # the kinds asked for were measured: the draft, and n-gram lookup (no draft file)
            assert {p.config.has_draft for p in result.points} == {True, False}
            assert any(p.config.ngram == "ngram-simple" and not p.config.has_draft for p in result.points)
            assert app.session.outputs.profile.exists() and app.session.outputs.script.exists()
            # the screen fills its summary once mounted: wait for that, not just for the screen
            await _wait_for(pilot, lambda: app.screen.is_mounted and "profile:" in str(
                app.screen.query_one("#summary").render()), 30)
            await pilot.press("l")
            await pilot.pause()
            assert app.session.outputs.profile.with_suffix(".llama-swap.yaml").exists()
    asyncio.run(flow())


def test_cancel_stops_the_server_and_keeps_partial_results(pair_dir):
    async def flow():
        app = _app()
        async with app.run_test(size=(120, 40)) as pilot:
            await _choose_pair(pilot)
            await pilot.press("o", "n")
            for key, value in (("lengths", "1-8"), ("kv", "f16,q8_0"), ("draft_kv", "f16"), ("categories", "chat"),
                               ("tokens", "24"), ("repeats", "1"), ("ctx", "1024"), ("kinds", "draft")):
                app.screen.query_one(f"#f_{key}").value = value
            await pilot.press("ctrl+s")
            screen = app.screen
            assert isinstance(screen, TuneScreen)
            await _wait_for(pilot, lambda: len(screen.points) >= 1, 120)
            await pilot.press("c")
            await _wait_for(pilot, lambda: isinstance(app.screen, ResultScreen), 120)
            assert app.session.result.cancelled and app.session.result.launches >= 1
            assert app.session.outputs.profile is None  # a partial tune replaces no saved profile
            assert app.session.outputs.recommendation.startswith("CANCELLED after")
            assert not [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.name() == "llama-server"]
    asyncio.run(flow())


def test_bad_tune_values_are_a_notification_and_nothing_starts(pair_dir):
    """The TUI checks a tune's values as the CLI does (one tokens per answer measures nothing)."""
    async def flow():
        app = _app()
        async with app.run_test(size=(120, 40)) as pilot:
            await _choose_pair(pilot)
            await pilot.press("o", "n")
            assert isinstance(app.screen, ConfigScreen)
            app.screen.query_one("#f_tokens").value = "1"
            await pilot.press("ctrl+s")
            await _wait_for(pilot, lambda: any("--tokens 1" in n.message for n in app._notifications), 30)
            assert app.session.result is None
    asyncio.run(flow())


def test_an_incompatible_pair_is_not_tuned_before_it_is_fixed(pair_dir):
    """Its draft runs would all fail to speculate and "no draft" would look like a measured answer."""
    async def flow():
        app = _app()
        async with app.run_test(size=(120, 40)) as pilot:
            await _choose_pair(pilot)
            await pilot.press("n")  # no fix first
            assert isinstance(app.screen, ConfigScreen)
            await pilot.press("ctrl+s")
            await _wait_for(pilot, lambda: any("incompatible" in n.message for n in app._notifications), 30)
            assert app.session.result is None
            assert not [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.name() == "llama-server"]
    asyncio.run(flow())


def test_patching_the_file_asks_first_and_q_quits_the_verdict_screen(pair_dir):
    """Issue 18: `f` patched a file at one key press, and `q` did nothing on the verdict screen."""
    async def flow():
        app = _app()
        async with app.run_test(size=(120, 40)) as pilot:
            await _choose_pair(pilot)
            draft = app.session.draft.path
            before = draft.read_bytes()
            await pilot.press("f")
            await pilot.pause()
            assert draft.read_bytes() == before  # nothing written yet
            assert any("press f again" in n.message for n in app._notifications)
            assert "INCOMPATIBLE" in str(app.screen.query_one("#verdict").render())
            await pilot.press("q")
            await pilot.pause()
        assert draft.read_bytes() == before and app.return_code in (0, None)
    asyncio.run(flow())


def test_a_target_alone_is_tuned_with_its_own_mtp_layers(models_folder, llama_server):
    """No draft file: `n` on the models screen tunes the target alone; a target carrying NextN layers is
    offered its MTP layers (the kinds field says so), which run live through the real llama-server."""
    from tests.ggufmake import random_model

    random_model(models_folder / "tiny-mtp.gguf", "mtp")

    async def flow():
        app = _app()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("n")  # no target yet: a warning, nothing pushed
            await pilot.pause()
            assert not isinstance(app.screen, ConfigScreen)
            await pilot.press("t", "n")
            await pilot.pause()
            assert isinstance(app.screen, ConfigScreen) and app.session.draft is None
            assert app.screen.query_one("#f_kinds").value == "mtp,ngram"
            for key, value in (("kinds", "mtp"), ("lengths", "2"), ("kv", "f16"), ("draft_kv", "f16"), ("categories", "chat"),
                               ("tokens", "16"), ("repeats", "1"), ("ctx", "1024")):
                app.screen.query_one(f"#f_{key}").value = value
            await pilot.press("ctrl+s")
            await _wait_for(pilot, lambda: isinstance(app.screen, ResultScreen), 300)
            result = app.session.result
            mtp = [p for p in result.points if p.config.spec_type == "draft-mtp"]
            assert len(mtp) == 1 and mtp[0].ok and mtp[0].measurement.speculative, result.points
            assert mtp[0].measurement.draft_tokens > 0 and mtp[0].config.draft is None  # no file: its own layers
            assert app.session.outputs.profile.exists()
    asyncio.run(flow())
