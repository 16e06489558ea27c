"""The TUI driven with Textual's Pilot through a real flow (the demo pair, a fix, a short tune with the real
llama-server), snapshots of the deterministic screens at 80x24 with the cursor blink off, and cancelling."""

from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from ggufpair.tui.app import ConfigScreen, GgufpairApp, ResultScreen, TuneScreen, VerdictScreen

pytestmark = pytest.mark.integration
SIZE = (80, 24)


@pytest.fixture
def pair_dir(demo_pair_folder):
    return demo_pair_folder


def _app() -> GgufpairApp:
    return GgufpairApp(threads=2, cursor_blink=False)


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
                               ("tokens", "16"), ("repeats", "1"), ("ctx", "1024")):
                app.screen.query_one(f"#f_{key}").value = value
            await pilot.press("ctrl+s")
            await _wait_for(pilot, lambda: isinstance(app.screen, ResultScreen), 300)
            result = app.session.result
            assert result.launches >= 3 and not result.cancelled
            assert app.session.outputs.profile.exists() and app.session.outputs.script.exists()
            summary = str(app.screen.query_one("#summary").render())
            assert "profile:" in summary
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
                               ("tokens", "24"), ("repeats", "1"), ("ctx", "1024")):
                app.screen.query_one(f"#f_{key}").value = value
            await pilot.press("ctrl+s")
            screen = app.screen
            assert isinstance(screen, TuneScreen)
            await _wait_for(pilot, lambda: len(screen.points) >= 1, 120)
            await pilot.press("c")
            await _wait_for(pilot, lambda: isinstance(app.screen, ResultScreen), 120)
            assert app.session.result.cancelled and app.session.result.launches >= 1
            assert not [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.name() == "llama-server"]
    asyncio.run(flow())
