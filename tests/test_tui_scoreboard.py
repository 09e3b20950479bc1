"""The host scoreboard panel: under the demo, a host that stalls shows as bad at once;
sorting by key and by header."""

from __future__ import annotations

import re
import time
from pathlib import Path

from proxy_core.app import SwitchboardProxy
from proxy_core.events import Event, StreamHeartbeat
from proxy_core.record import Attempt, Turn
from tui.app import SwitchboardApp
from tui.demo import DemoAgent, demo_config
from tui.source import LocalSource, StaticSource
from tui.widgets.scoreboard import ScoreboardTable
from tui_support import screen_text, wait_for

BAD = ("STALLING", "failing", "cooling")


def board_line(app: SwitchboardApp, target: str) -> str:
    """The scoreboard's row for `target` as the screen shows it ('' if not shown)."""
    board = app.query_one("#scoreboard", ScoreboardTable)
    top = board.region.y
    lines = screen_text(app).splitlines()[top:top + board.region.height]
    return next((line for line in lines if target in line), "")


async def test_under_the_demo_a_host_shows_bad_within_two_seconds_of_its_first_stall(
        tmp_path: Path) -> None:
    proxy = SwitchboardProxy(demo_config(tmp_path / "journal.sqlite3"), port=0)
    await proxy.start()
    first_stall: dict[str, float] = {}

    def watch(event: Event) -> None:
        if isinstance(event, StreamHeartbeat) and event.stalled and not first_stall:
            first_stall[event.target] = time.monotonic()

    proxy.bus.subscribe(watch)
    source = LocalSource(proxy)
    agent = DemoAgent(proxy.base_url)
    app = SwitchboardApp(source, themes_dir=tmp_path / "themes",
                         keymap_path=tmp_path / "keymap.toml", export_dir=tmp_path)
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            agent.start()
            await wait_for(pilot, lambda: first_stall, timeout=60, what="a stalled stream")
            (target, stalled_at), = first_stall.items()
            await wait_for(pilot, lambda: any(b in board_line(app, target) for b in BAD),
                           timeout=5, what=f"{target} shown as bad on the scoreboard")
            assert time.monotonic() - stalled_at <= 2.0, board_line(app, target)
            # The same fold, over HTTP: the control API says so too.
            assert proxy.scoreboard.targets[target].status(time.time()) in (
                "stalling", "failing", "cooling")
    finally:
        await agent.stop()
        await source.stop()
        await proxy.stop()


def finished(turn_id: str, target: str, *, failed_first: bool = False) -> Turn:
    turn = Turn(id=turn_id, session_id="ses_a", model="k2", route="k2", stream=True, request={},
                started_at=1000.0, finished_at=1002.0, state="finished")
    attempts = []
    if failed_first:
        attempts.append(Attempt(1, "flaky:k2", started_at=1000.0, ended_at=1001.0,
                                outcome="failed", error="no first token from flaky:k2 within 3s"))
    attempts.append(Attempt(len(attempts) + 1, target, reason="reroute" if failed_first else "initial",
                            started_at=1001.0, first_byte_at=1001.2, ended_at=1002.0,
                            outcome="ok"))
    turn.attempts = attempts
    return turn


async def test_the_scoreboard_sorts_by_key_and_hides_with_b(tmp_path: Path) -> None:
    turns = [finished("t1", "steady:k2", failed_first=True), finished("t2", "steady:k2")]
    app = SwitchboardApp(StaticSource(turns), themes_dir=tmp_path / "themes",
                         keymap_path=tmp_path / "keymap.toml", export_dir=tmp_path,
                         clock=lambda: 1010.0)
    async with app.run_test(size=(160, 40)) as pilot:
        board = app.query_one("#scoreboard", ScoreboardTable)
        await wait_for(pilot, lambda: board.row_count == 2, what="two targets")
        assert "✗ failing" in board_line(app, "flaky:k2")  # worst first
        assert board.coordinate_to_cell_key((0, 0)).row_key.value == "flaky:k2"
        board.focus()
        await pilot.press("s", "s")  # status → target → turns
        await wait_for(pilot, lambda: board.sort_key == "turns", what="sorted by turns")
        await pilot.pause()
        assert board.coordinate_to_cell_key((0, 0)).row_key.value == "steady:k2"
        assert re.search(r"steady:k2\s+2\s", board_line(app, "steady:k2"))
        await pilot.press("b")
        await wait_for(pilot, lambda: not board.display, what="the scoreboard hidden")
        assert "✗ failing" not in screen_text(app) and "rerouted" not in screen_text(app)
