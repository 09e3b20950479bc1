"""What the dashboard says: stalls before any output, plurals, attach's help and quit key,
the help screen's columns, and where the palette's screenshot goes."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.text import Text
from textual.events import DeliveryComplete
from textual.message import Message
from textual.widgets import Static

from proxy_core.record import Attempt, Turn
from tui.app import SwitchboardApp
from tui.cli import build_parser
from tui.model import DEFAULT_STALL_RULE, Pulse, SessionInfo, TurnEntry
from tui.source import StaticSource
from tui.widgets.detail import attempts_text, heartbeat_text
from tui.widgets.palette import Palette
from tui.widgets.screens import HelpScreen
from tui.widgets.sessions import session_prompt
from tui.widgets.status import StatusInfo, status_text
from tui_records import NOW, history
from tui_support import wait_for

P = Palette("", "", "", "", "", "", "", "")


def live_turn(*, output: bool) -> TurnEntry:
    turn = Turn(id="t", session_id="s", model="k2", route="k2", stream=True, request={},
                started_at=100.0)
    turn.attempts = [Attempt(1, "flaky:k2", started_at=100.0)]
    pulse = Pulse(100.0)
    if output:
        pulse.progress(101.0, 3)
    return TurnEntry(turn, pulse)


def test_a_stall_before_any_output_says_so() -> None:
    silent = heartbeat_text(live_turn(output=False), 130.0, DEFAULT_STALL_RULE, P).plain
    assert "30.0s waiting for the first output from flaky:k2" in silent
    assert "since first output" not in silent
    talked = heartbeat_text(live_turn(output=True), 130.0, DEFAULT_STALL_RULE, P).plain
    assert "29.0s since the last output from flaky:k2" in talked


def test_each_attempt_says_how_long_switchboard_took_before_it_was_sent() -> None:
    turn = Turn(id="t", session_id="s", model="k2", route="k2", stream=True, request={},
                started_at=100.0)
    turn.attempts = [Attempt(1, "flaky:k2", started_at=100.0, ended_at=103.0, outcome="failed",
                             error="HTTP 500", prepared_in=0.00234),
                     Attempt(2, "flaky:k2", "retry", started_at=103.0, first_byte_at=103.4,
                             outcome="ok", prepared_in=0.012),
                     Attempt(3, "other:k2", "hedge", started_at=103.5)]  # never sent
    lines = attempts_text(turn, P).plain.splitlines()
    assert "ours   2.3ms" in lines[0] and "first byte       —" in lines[0]
    assert "ours  12.0ms" in lines[2] and "first byte   0.40s" in lines[2]
    assert "ours       —" in lines[3]


def test_one_turn_is_not_turns() -> None:
    assert "· 1 turn " in status_text(StatusInfo("http://x", turns=1), P).plain + " "
    assert "· 2 turns" in status_text(StatusInfo("http://x", turns=2), P).plain
    assert "1 turn" in session_prompt(SessionInfo("ses_a", turns=1), P).plain
    assert "1 turns" not in session_prompt(SessionInfo("ses_a", turns=1), P).plain


def test_the_journal_is_named_on_the_status_line_only_when_something_is_wrong() -> None:
    assert "journal" not in status_text(StatusInfo("http://x"), P).plain
    failing = status_text(StatusInfo("http://x", journal_error="database or disk is full",
                                     journal_kept=2, journal_queued=300), P).plain
    assert "journal NOT WRITING (database or disk is full, 2 turns kept in memory)" in failing
    assert "behind" not in failing  # the failure is what to say
    behind = status_text(StatusInfo("http://x", journal_queued=300), P).plain
    assert "journal behind: 300 writes queued, turns wait" in behind


def test_requests_waiting_for_room_are_named_on_the_status_line() -> None:
    assert "waiting for room" not in status_text(StatusInfo("http://x"), P).plain
    one = status_text(StatusInfo("http://x", bodies_waiting=1), P).plain
    assert "1 request waiting for room (max_inflight_mb)" in one
    assert "3 requests waiting" in status_text(StatusInfo("http://x", bodies_waiting=3), P).plain


def test_attach_help_speaks_of_the_proxy_to_reach_not_an_address_to_bind(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["attach", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bind" not in text
    assert "the proxy's host, when no URL is given" in text
    args = build_parser().parse_args(["attach", "--host", "10.0.0.2", "--port", "9"])
    assert (args.host, args.port, args.url) == ("10.0.0.2", 9, None)


def make_app(tmp_path: Path, export_dir: Path) -> SwitchboardApp:
    return SwitchboardApp(StaticSource(history()), clock=lambda: NOW,
                          themes_dir=tmp_path / "themes", keymap_path=tmp_path / "keymap.toml",
                          export_dir=export_dir)


async def test_help_keeps_columns_apart_and_says_quit_leaves_a_remote_proxy_running(
        tmp_path: Path) -> None:
    app = make_app(tmp_path, tmp_path)
    async with app.run_test(size=(120, 60)) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        help_text = app.screen.query_one("#help-text", Static).render()
        lines = (help_text.plain if isinstance(help_text, Text) else str(help_text)).splitlines()
        for line in lines:
            if "id: " in line:
                assert line.split("id: ")[0].endswith("  "), line
        assert any("Quit (the proxy keeps running)" in line for line in lines)
        assert not any("stops the proxy" in line for line in lines)


@pytest.mark.parametrize("exports_exist", [True, False])
async def test_the_palette_screenshot_goes_to_a_folder_that_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exports_exist: bool) -> None:
    exports, cwd = tmp_path / "exports", tmp_path / "cwd"
    cwd.mkdir()
    if exports_exist:
        exports.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(tmp_path / "no-home"))  # no ~/Downloads
    app = make_app(tmp_path, exports)
    messages: list[Message] = []
    async with app.run_test(size=(100, 30), message_hook=messages.append) as pilot:
        await pilot.pause()
        app.deliver_screenshot(filename="shot.svg")  # what the palette's "Screenshot" calls
        where = (exports if exports_exist else cwd) / "shot.svg"
        await wait_for(pilot, lambda: any(isinstance(m, DeliveryComplete) for m in messages),
                       what="the screenshot delivered")
        assert where.exists()
    assert "<svg" in where.read_text()
