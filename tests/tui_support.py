"""Helpers for the dashboard tests: the screen as text, waiting on the app, fixed records."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from textual.app import App


def screen_text(app: App[Any]) -> str:
    """What the terminal shows now, as plain text (the same render as a screenshot)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True,
                      color_system=None, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(  # noqa: SLF001 - as export_screenshot
        full=True, screen_stack=app._background_screens))  # noqa: SLF001
    return console.export_text()


async def wait_for(pilot: Any, predicate: Callable[[], Any], *, timeout: float = 10.0,
                   what: str = "condition") -> Any:
    """Let the app run until `predicate()` is truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n"
                                 f"{screen_text(pilot.app)}")
        await pilot.pause(0.05)
        await asyncio.sleep(0)


async def journal_trouble_shown_and_cleared(pilot: Any, app: App[Any], journal: Any,
                                            chat: Callable[[], Any]) -> None:
    """Make the journal read-only, have a turn (`chat`) fail to be written, wait for the
    status line to say so, make it writable, have a turn written, and wait for the
    status line to name the journal no more."""
    journal.settle()
    journal.conn.execute("PRAGMA query_only = ON")
    await chat()
    await wait_for(pilot, lambda: "journal NOT WRITING" in screen_text(app)
                   and "1 turn kept in memory" in screen_text(app),
                   what="the journal's failure on the status line")
    assert "readonly" in screen_text(app)
    journal.conn.execute("PRAGMA query_only = OFF")
    await chat()
    await wait_for(pilot, lambda: "journal" not in screen_text(app),
                   what="the status line clear again")
