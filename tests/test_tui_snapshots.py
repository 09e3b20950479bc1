"""Snapshots of the dashboard (pytest-textual-snapshot): the main screen, a turn with
paired and orphaned tool calls, a stalled turn, and the help screen.

The records are fixed (`tui_records.py`), the clock is pinned and TZ is UTC,
so the SVGs in `tests/__snapshots__/` are the same on every run. After a
deliberate change to the screen: `pytest tests/test_tui_snapshots.py --snapshot-update`,
then look at the new SVGs before committing them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tui.app import SwitchboardApp
from tui.source import StaticSource
from tui_records import NOW, STALL, history, live_turns

SIZE = (160, 56)
NOWHERE = Path("/nonexistent/switchboard")


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def make_app(*, live: bool = True) -> SwitchboardApp:
    turns = history()
    events: list[object] = []
    if live:
        extra, events = live_turns()
        turns += extra
    source = StaticSource(turns, events, base_url="http://127.0.0.1:4141", stall_after=STALL,
                          targets=["sim:kimi-k2.5", "mantle:kimi-k2.5"])
    return SwitchboardApp(source, clock=lambda: NOW, themes_dir=NOWHERE / "themes",
                          keymap_path=NOWHERE / "keymap.toml", export_dir=NOWHERE / "exports")


async def settle(pilot) -> None:  # type: ignore[no-untyped-def]
    """Until the recorded events are applied (they arrive like live ones, buffered)."""
    app = pilot.app
    for _ in range(200):
        if app.model.get("turn_live00000000001") is not None and not app.source._events:
            break
        await pilot.pause(0.02)
    await pilot.pause()


def test_main_screen(snap_compare) -> None:
    """Sessions, the live table (finished, retried, rerouted, failed, streaming, stalled) and
    the newest turn followed, with its heartbeat."""
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=settle)


def test_turn_with_paired_and_orphaned_tool_calls(snap_compare) -> None:
    async def select(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        assert pilot.app.select_turn("turn_pairs000000001")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=select)


def test_stalled_turn(snap_compare) -> None:
    async def select(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        assert pilot.app.select_turn("turn_stall0000000001")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=select)


def test_help_screen(snap_compare) -> None:
    assert snap_compare(make_app(live=False), terminal_size=SIZE, press=["question_mark"],
                        run_before=settle)


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_main_screen_sizes(snap_compare, size: tuple[int, int]) -> None:
    """Columns size to content and width (the least important give way on 80 columns);
    the footer keeps ? and q; session ids do not wrap."""
    assert snap_compare(make_app(), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("theme", ["dark", "light", "high-contrast"])
def test_cursor_row_in_each_theme(snap_compare, theme: str) -> None:
    """The selected row is highlighted across the whole row in every built-in theme."""
    async def select(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot)
        assert pilot.app.select_turn("turn_fixed000000003")
        await pilot.pause()

    app = make_app()
    app.theme = theme
    assert snap_compare(app, terminal_size=(120, 30), run_before=select)
