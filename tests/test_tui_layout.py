"""Columns that use the terminal: session, model and target in full from 160 columns,
and session ids in full in the sidebar from 180; the least important columns give way
first when narrow; the footer keeps ? and q."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy_core.record import Attempt, Turn, Usage
from tui.app import SwitchboardApp
from tui.source import StaticSource
from tui.widgets.turn_table import COLUMNS, GAP, layout
from tui_support import screen_text, wait_for

SESSION = "ses_2b3c4d5e6f7a8b9c0d1e2f3a4b"  # an opencode session id (30 characters)


def opencode_turn(n: int) -> Turn:
    turn = Turn(id=f"turn_{n:016d}", session_id=SESSION, model="kimi-k2.5-mantle",
                route="kimi-k2.5-mantle", stream=True, request={}, started_at=1000.0 + n,
                finished_at=1002.0 + n, state="finished", finish_reason="tool_calls",
                usage=Usage(123_456, 789))
    turn.attempts = [Attempt(1, "mantle:kimi-k2.5", started_at=1000.0 + n, outcome="failed",
                             error="cannot connect"),
                     Attempt(2, "steady:kimi-k2.5", "reroute", 1000.5 + n, 1001.0 + n,
                             1002.0 + n, "ok")]
    return turn


@pytest.mark.parametrize("width", [160, 180, 200])
async def test_columns_in_full_from_160_and_session_ids_in_the_sidebar_from_180(
        tmp_path: Path, width: int) -> None:
    app = SwitchboardApp(StaticSource([opencode_turn(1), opencode_turn(2)]),
                         clock=lambda: 1010.0, themes_dir=tmp_path / "t",
                         keymap_path=tmp_path / "k.toml", export_dir=tmp_path)
    async with app.run_test(size=(width, 40)) as pilot:
        row = await wait_for(pilot, lambda: next(
            (line for line in screen_text(app).splitlines()
             if "steady:kimi-k2.5" in line and "kimi-k2.5-mantle" in line), None),
            what="a full row")
        assert SESSION in row and "#2 reroute" in row and "…" not in row
        if width >= 180:  # the wide sidebar: the session's id in full there too
            await wait_for(pilot, lambda: any(SESSION in line.split("▕")[0]
                                              for line in screen_text(app).splitlines()),
                           what="the session's id in full in the sidebar")
        shown = app.table.shown_columns
        assert {"session", "model", "target", "state", "attempt"} <= set(shown)
        if width == 200:
            assert shown == [c.key for c in COLUMNS]  # everything fits


async def test_on_80_columns_the_footer_keeps_help_and_quit_and_rows_fit(tmp_path: Path) -> None:
    app = SwitchboardApp(StaticSource([opencode_turn(1)]), clock=lambda: 1010.0,
                         themes_dir=tmp_path / "t", keymap_path=tmp_path / "k.toml",
                         export_dir=tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.table.ids, what="the turn")
        await pilot.pause()
        footer = screen_text(app).splitlines()[-1]
        assert "? Help" in footer and "q Quit" in footer
        shown = app.table.shown_columns
        assert {"session", "target", "state"} <= set(shown) and "dur" not in shown
        room = app.table.scrollable_content_region.width
        assert app.table.virtual_size.width <= room


def test_layout_gives_way_in_order() -> None:
    natural = [8, 30, 16, 16, 10, 9, 14, 10, 4, 3, 13, 6]
    full = sum(max(c.least, min(c.most, n)) + GAP for c, n in zip(COLUMNS, natural, strict=True))
    assert [i for i, _ in layout(natural, full)] == list(range(len(COLUMNS)))
    keys = lambda cols: [COLUMNS[i].key for i, _ in cols]  # noqa: E731
    # A little short: the other wide columns shrink first, nothing goes.
    assert len(layout(natural, full - 3)) == len(COLUMNS)
    # Shorter: the minor columns go, least kept first (duration, tokens, time ...).
    squeezed = keys(layout(natural, full - 20))
    assert "dur" not in squeezed and "tokens" not in squeezed and "session" in squeezed
    widths = dict(zip(keys(layout(natural, full - 20)), (w for _, w in layout(natural, full - 20)),
                      strict=True))
    assert (widths["session"], widths["model"], widths["target"]) == (30, 16, 16)
    # Very narrow: session, target and state last.
    assert keys(layout(natural, 45)) == ["session", "target", "state"]
    for room in range(20, 200):
        cols = layout(natural, room)
        assert sum(w + GAP for _, w in cols) <= room or len(cols) == 1
