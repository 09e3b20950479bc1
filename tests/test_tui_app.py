"""The dashboard driven with Pilot against a real proxy in the same event loop.

Every key is pressed here: r, R, F, f, /, e, E, c, t, o, escape, ?, q (and the
session list). The proxy is a real `SwitchboardProxy` on 127.0.0.1 with the
scriptable fake upstream from `support.py`; requests go over real HTTP.
Assertions read the screen (`screen_text`), the app's model, and the
messages the app handled (`message_hook`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.message import Message
from textual.notifications import Notify

from proxy_core.app import SwitchboardProxy
from proxy_core.events import Chunk
from support import (
    FakeUpstream, WaitFor, chat_body, content_of, error_reply, hang_reply, openai_config, sse,
    stream_chat, text_chunk, text_reply,
)
from tui.app import SwitchboardApp, visible_state
from tui.messages import EventsReady, Exported, OlderLoaded, TurnActionDone
from tui.source import LocalSource
from tui.widgets.screens import HelpScreen, PickerScreen
from tui.widgets.sessions import SessionList
from tui_support import journal_trouble_shown_and_cleared, screen_text, wait_for

SIZE = (170, 50)
AppFactory = Callable[..., SwitchboardApp]


@pytest.fixture
def make_app(tmp_path: Path) -> AppFactory:
    (tmp_path / "exports").mkdir()

    def make(proxy: SwitchboardProxy, **kwargs: Any) -> SwitchboardApp:
        kwargs.setdefault("themes_dir", tmp_path / "themes")
        kwargs.setdefault("keymap_path", tmp_path / "keymap.toml")
        kwargs.setdefault("export_dir", tmp_path / "exports")
        return SwitchboardApp(LocalSource(proxy), **kwargs)

    return make


@asynccontextmanager
async def running(app: SwitchboardApp, messages: list[Message] | None = None
                  ) -> AsyncIterator[Any]:
    hook = messages.append if messages is not None else None
    async with app.run_test(size=SIZE, message_hook=hook) as pilot:
        await wait_for(pilot, lambda: app.palette is not None, what="the app to mount")
        yield pilot
    await app.source.stop()


def notices(messages: list[Message]) -> list[str]:
    return [m.notification.message for m in messages if isinstance(m, Notify)]


def turn_ids(app: SwitchboardApp) -> list[str]:
    return list(app.table.ids)


def finished(app: SwitchboardApp, turn_id: str) -> bool:
    entry = app.model.get(turn_id)
    return entry is not None and entry.turn.state != "live"


async def test_turns_appear_live_and_redraws_are_coalesced(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        make_app: AppFactory) -> None:
    """A 3000-chunk stream: every chunk counted, the screen redrawn a few times a second."""
    fake_upstream.script(text_reply(*(["tok "] * 3000), delay=0.0003))
    chunks = 0

    def count(event: object) -> None:
        nonlocal chunks
        chunks += isinstance(event, Chunk)

    proxy.bus.subscribe(count)
    messages: list[Message] = []
    app = make_app(proxy)
    async with running(app, messages) as pilot:
        started = time.monotonic()
        response, payloads = await stream_chat(client, proxy.base_url, timeout=30)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and content_of(payloads) == "tok " * 3000
        turn_id = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: finished(app, turn_id), what="the turn to finish")
        await wait_for(pilot, lambda: "✓ done" in screen_text(app), what="the finished row")
        text = screen_text(app)
        assert "up-model" in text and "stop" in text and "11/7" in text  # target, stop, tokens
        assert app.model.get(turn_id).pulse.chunks == chunks == 3000
        drains = sum(isinstance(m, EventsReady) for m in messages)
        # One drain per 1/12 s at most (plus the trailing one), never one per chunk.
        assert 1 <= drains <= elapsed * 12 + 3, (drains, elapsed)


async def test_retry_key_restarts_a_stalled_turn(
        make_fake_upstream, proxy_factory, client: httpx.AsyncClient, make_app: AppFactory) -> None:
    """The turn hangs, the dashboard shows it stalled (half the 6 s watchdog limit),
    `r` restarts it on the same client stream before the watchdog would."""
    fake = await make_fake_upstream()
    fake.script(hang_reply(), text_reply("after", " the retry"))
    proxy = await proxy_factory(openai_config(fake.base_url, first_token_timeout=6.0,
                                              idle_timeout=6.0))
    messages: list[Message] = []
    app = make_app(proxy)
    async with running(app, messages) as pilot:
        request = asyncio.create_task(stream_chat(client, proxy.base_url, timeout=30))
        turn_id = (await wait_for(pilot, lambda: proxy.store.recent(1), what="a turn"))[0].id
        await wait_for(pilot, lambda: visible_state(app, turn_id) == "stalled", timeout=5.5,
                       what="the stalled state")
        text = screen_text(app)
        assert "◌ STALLED" in text and "waiting for the first output" in text
        assert app.selected_id == turn_id
        await pilot.press("r")
        response, payloads = await asyncio.wait_for(request, 10)
        assert response.status_code == 200 and content_of(payloads) == "after the retry"
        await wait_for(pilot, lambda: finished(app, turn_id), what="the retried turn to finish")
        await wait_for(pilot, lambda: "#2 retry*" in screen_text(app), what="the manual retry")
    done = [m for m in messages if isinstance(m, TurnActionDone)]
    assert [(m.action, m.source_turn, m.turn_id) for m in done] == [("retry", turn_id, turn_id)]
    turn = proxy.store.get(turn_id)
    assert [a.reason for a in turn.attempts] == ["initial", "manual-retry"]
    assert turn.attempts[0].outcome == "interrupted"


async def test_reroute_key_reruns_a_finished_turn_on_the_picked_target(
        make_fake_upstream, proxy_factory, client: httpx.AsyncClient, make_app: AppFactory) -> None:
    primary, backup = await make_fake_upstream(), await make_fake_upstream()
    proxy = await proxy_factory(openai_config(primary.base_url, backup.base_url))
    messages: list[Message] = []
    app = make_app(proxy)
    async with running(app, messages) as pilot:
        response, _ = await stream_chat(client, proxy.base_url)
        assert response.status_code == 200
        original = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: finished(app, original) and app.selected_id == original,
                       what="the first turn")
        await pilot.press("R")
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), what="the picker")
        text = screen_text(app)
        assert f"Reroute {original} to:" in text
        assert "primary:up-model  (current)" in text and "backup:up-model" in text
        await pilot.press("down", "enter")
        rerun = await wait_for(pilot, lambda: next(
            (t for t in proxy.store.recent(0) if t.rerun_of == original), None), what="the re-run")
        await wait_for(pilot, lambda: finished(app, rerun.id) and app.selected_id == rerun.id,
                       what="the re-run selected and finished")
        await wait_for(pilot, lambda: "#1 reroute*" in screen_text(app),
                       what="the re-run row")
    assert rerun.state == "finished" and rerun.attempts[0].reason == "manual-reroute"
    assert rerun.attempts[0].target == "backup:up-model" and len(backup.requests) == 1
    done = [m for m in messages if isinstance(m, TurnActionDone)]
    assert [(m.action, m.turn_id, m.target) for m in done] == [
        ("reroute", rerun.id, "backup:up-model")]


async def test_follow_key_and_moving_the_cursor(
        proxy: SwitchboardProxy, client: httpx.AsyncClient, make_app: AppFactory) -> None:
    app = make_app(proxy)
    async with running(app) as pilot:
        for _ in range(3):
            await stream_chat(client, proxy.base_url)
        ids = [t.id for t in proxy.store.recent(0)]
        await wait_for(pilot, lambda: app.selected_id == ids[-1], what="following the newest")
        assert "FOLLOW" in screen_text(app)
        await pilot.press("up")
        await wait_for(pilot, lambda: app.selected_id == ids[-2] and not app.follow,
                       what="follow off after moving up")
        await stream_chat(client, proxy.base_url)
        newest = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: newest in turn_ids(app), what="the fourth turn")
        assert app.selected_id == ids[-2] and "FOLLOW" not in screen_text(app)
        await pilot.press("F")
        await wait_for(pilot, lambda: app.selected_id == newest and app.follow,
                       what="following again")
        assert "FOLLOW" in screen_text(app)


async def test_filter_key_session_list_and_escape(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        make_app: AppFactory) -> None:
    fake_upstream.script(error_reply(400, "the host refused this history"))
    app = make_app(proxy)
    async with running(app) as pilot:
        await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_one"})
        await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_two"})
        await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_two"})
        failed, *ok = [t.id for t in proxy.store.recent(0)]
        await wait_for(pilot, lambda: len(turn_ids(app)) == 3 and all(
            finished(app, i) for i in (failed, *ok)), what="three settled turns")
        assert "error 400" in screen_text(app)
        await pilot.press("f")
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), what="filter picker")
        assert "Stalled (silent live streams)" in screen_text(app)
        await pilot.press(*["down"] * 5, "enter")  # all, live, stalled, repaired, retried, failed
        await wait_for(pilot, lambda: turn_ids(app) == [failed], what="only the failed turn")
        assert "filter: failed" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(turn_ids(app)) == 3, what="filters cleared")
        # The session list: pick ses_two (options: All, ses_one, ses_two; none highlighted).
        app.query_one(SessionList).focus()
        await pilot.press("down", "down", "down", "enter")
        await wait_for(pilot, lambda: turn_ids(app) == ok, what="only ses_two's turns")
        assert "filter: session ses_two" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(turn_ids(app)) == 3, what="filters cleared again")


async def test_search_key(proxy: SwitchboardProxy, client: httpx.AsyncClient,
                          make_app: AppFactory) -> None:
    app = make_app(proxy)
    async with running(app) as pilot:
        await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_apple"})
        await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_pear"})
        pear = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: len(turn_ids(app)) == 2, what="two turns")
        await pilot.press("slash")
        await wait_for(pilot, lambda: app.focused is not None and app.focused.id == "search",
                       what="the search box")
        await pilot.press(*"pear")
        await wait_for(pilot, lambda: turn_ids(app) == [pear], what="only the matching turn")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.focused is app.table, what="back to the table")
        assert turn_ids(app) == [pear] and "filter: /pear" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(turn_ids(app)) == 2, what="search cleared")


async def test_export_keys_write_redacted_json(
        proxy: SwitchboardProxy, client: httpx.AsyncClient, make_app: AppFactory,
        tmp_path: Path) -> None:
    secret = "sk-live0123456789abcdefghij"
    app = make_app(proxy)
    messages: list[Message] = []
    async with running(app, messages) as pilot:
        await stream_chat(client, proxy.base_url, chat_body(f"my key is {secret}"),
                          headers={"x-session-id": "ses_export"})
        turn_id = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: app.selected_id == turn_id and finished(app, turn_id),
                       what="the turn")
        await pilot.press("e")
        await wait_for(pilot, lambda: any(isinstance(m, Exported) for m in messages),
                       what="the turn export")
        await pilot.press("E")
        await wait_for(pilot, lambda: sum(isinstance(m, Exported) for m in messages) == 2,
                       what="the session export")
    turn_file = tmp_path / "exports" / f"switchboard-{turn_id}.json"
    session_file = tmp_path / "exports" / "switchboard-session-ses_export.json"
    exported = json.loads(turn_file.read_text())
    assert exported["id"] == turn_id and exported["state"] == "finished"
    assert exported["request"]["messages"][-1]["content"] == "my key is [redacted]"
    session = json.loads(session_file.read_text())
    assert [t["id"] for t in session["turns"]] == [turn_id]
    assert session["last_request"]["messages"][-1]["content"] == "my key is [redacted]"
    assert secret not in turn_file.read_text() + session_file.read_text()


async def test_the_status_line_says_when_the_journal_cannot_write(
        proxy: SwitchboardProxy, client: httpx.AsyncClient, make_app: AppFactory) -> None:
    """The logs go to a file while the dashboard owns the screen, so a journal that
    stopped writing (disk full, read-only) says so on the status line until it writes
    again; the turns go on meanwhile."""
    journal = proxy.journal
    assert journal is not None
    app = make_app(proxy)

    async def chat() -> None:
        response, payloads = await stream_chat(client, proxy.base_url)
        assert response.status_code == 200 and content_of(payloads) == "Hello world"

    async with running(app) as pilot:
        assert "journal" not in screen_text(app)
        await journal_trouble_shown_and_cleared(pilot, app, journal, chat)
    assert journal.status()["ok"] and journal.status()["unsaved_turns"] == 0


async def test_copy_url_key(proxy: SwitchboardProxy, make_app: AppFactory) -> None:
    app = make_app(proxy)
    async with running(app) as pilot:
        await pilot.press("c")
        await wait_for(pilot, lambda: app.clipboard == f"{proxy.base_url}/v1", what="the URL copied")
        assert f"{proxy.base_url}/v1" in screen_text(app)  # the status line shows it too


async def test_theme_key_cycles_theme_files(proxy: SwitchboardProxy, make_app: AppFactory,
                                            tmp_path: Path) -> None:
    themes = tmp_path / "themes"
    themes.mkdir()
    (themes / "dusk.toml").write_text('primary = "#FF8800"\nbackground = "#101018"\n')
    (themes / "broken.toml").write_text('primary = "not-a-colour"\n')
    messages: list[Message] = []
    app = make_app(proxy)
    async with running(app, messages) as pilot:
        assert app.theme == "dark"
        assert app.theme_names == ["dark", "light", "high-contrast", "dusk"]
        seen = []
        for _ in range(4):
            await pilot.press("t")
            seen.append(app.theme)
        assert seen == ["light", "high-contrast", "dusk", "dark"]
        await wait_for(pilot, lambda: any("broken.toml" in n for n in notices(messages)),
                       what="the broken theme notice")
    (notice,) = [n for n in notices(messages) if "broken.toml" in n]
    assert "primary" in notice and "not a colour" in notice


async def test_unknown_theme_falls_back_with_a_notice(proxy: SwitchboardProxy,
                                                      make_app: AppFactory) -> None:
    messages: list[Message] = []
    app = make_app(proxy, theme="no-such-theme")
    async with running(app, messages) as pilot:
        await wait_for(pilot, lambda: notices(messages), what="a notice")
        assert app.theme == "dark"
        assert "theme 'no-such-theme' not found" in notices(messages)[0]


async def test_help_key(proxy: SwitchboardProxy, make_app: AppFactory) -> None:
    app = make_app(proxy)
    async with running(app) as pilot:
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
        text = screen_text(app)
        for binding_id in ("retry", "reroute", "follow", "filter", "search", "export-turn",
                           "export-session", "copy-url", "theme", "older", "help", "quit"):
            assert f"id: {binding_id}" in text
        assert "✗ orphaned" in text and "keymap.toml" in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), what="help closed")


async def test_older_key_loads_turns_from_the_journal_and_memory_stays_bounded(
        proxy: SwitchboardProxy, client: httpx.AsyncClient, make_app: AppFactory) -> None:
    messages: list[Message] = []
    app = make_app(proxy, max_turns=4)
    async with running(app, messages) as pilot:
        for _ in range(9):
            await stream_chat(client, proxy.base_url)
        newest = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: newest in turn_ids(app) and finished(app, newest),
                       what="the newest turn")
        assert len(app.model) == 4 and len(turn_ids(app)) == 4
        await pilot.press("o")
        loaded = await wait_for(pilot, lambda: [m for m in messages if isinstance(m, OlderLoaded)],
                                what="older turns")
        assert len(loaded[0].turns) == 5
        await wait_for(pilot, lambda: len(turn_ids(app)) == 9, what="all nine listed")
        assert turn_ids(app) == [t.id for t in proxy.store.recent(0)]
        # New traffic trims the model back to its bound.
        await stream_chat(client, proxy.base_url)
        await wait_for(pilot, lambda: proxy.store.recent(1)[0].id in turn_ids(app),
                       what="the tenth turn")
        assert len(app.model) <= 4 + 1


async def test_keymap_file_remaps_bindings(proxy: SwitchboardProxy, client: httpx.AsyncClient,
                                           make_app: AppFactory, tmp_path: Path) -> None:
    keymap = tmp_path / "keymap.toml"
    keymap.write_text('retry = "x"\nno-such-action = "y"\n')
    messages: list[Message] = []
    app = make_app(proxy)
    async with running(app, messages) as pilot:
        await stream_chat(client, proxy.base_url)
        original = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: app.selected_id == original and finished(app, original),
                       what="a finished turn")
        await pilot.press("x")
        done = await wait_for(pilot, lambda: [m for m in messages
                                              if isinstance(m, TurnActionDone)], what="the retry")
        assert done[0].action == "retry" and done[0].turn_id != original  # re-run as a new turn
        await wait_for(pilot, lambda: finished(app, done[0].turn_id), what="the re-run")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        assert re.search(r"│\s+x\s+Retry the selected turn\s+id: retry", screen_text(app))
    assert any("no-such-action: no binding with this id" in n for n in notices(messages))
    assert proxy.store.get(done[0].turn_id).rerun_of == original


async def test_quit_key(proxy: SwitchboardProxy, make_app: AppFactory) -> None:
    app = make_app(proxy)
    async with running(app) as pilot:
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to exit")
    assert app.return_value == 0


async def test_a_failing_worker_is_shown_as_a_notice_and_the_app_keeps_running(
        tmp_path: Path) -> None:
    """Workers let errors out; their one failure path names the action and the error."""
    from tui.source import StaticSource
    from tui_records import history

    app = SwitchboardApp(StaticSource(history()), themes_dir=tmp_path / "themes",
                         keymap_path=tmp_path / "keymap.toml", export_dir=tmp_path / "missing")
    messages: list[Message] = []
    async with running(app, messages) as pilot:
        await wait_for(pilot, lambda: app.selected_id is not None, what="a selected turn")
        await pilot.press("r")
        await wait_for(pilot, lambda: "retry failed: recorded turns cannot be retried"
                       in notices(messages), what="the retry's failure notice")
        await pilot.press("e")  # the export folder does not exist
        await wait_for(pilot, lambda: any(n.startswith("export failed: ")
                                          for n in notices(messages)), what="the export failure")
        assert app.is_running


async def test_requests_waiting_for_room_show_on_the_status_line_until_let_in(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        make_app: AppFactory) -> None:
    """They are not turns yet (their bodies wait unread), so only the status line can say."""
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, max_body_mb=0.5,
                                              first_token_timeout=30, idle_timeout=30)
                                .replace("max_body_mb = 0.5", "max_body_mb = 0.5\nmax_inflight_mb = 1"))
    go = asyncio.Event()
    fake_upstream.default = sse(text_chunk("held "), WaitFor(go), text_chunk("then done"))

    async def send(i: int) -> int:
        body = chat_body(f"request {i}")
        body["messages"].insert(0, {"role": "system", "content": "x" * 400 * 1024})
        response = await client.post(proxy.base_url + "/v1/chat/completions", json=body)
        return response.status_code

    app = make_app(proxy)
    async with running(app) as pilot:
        sends = [asyncio.create_task(send(i)) for i in range(3)]  # 1 MB fits two of them
        await wait_for(pilot, lambda: "1 request waiting for room (max_inflight_mb)"
                       in screen_text(app), what="the waiting request on the status line")
        go.set()
        assert await asyncio.wait_for(asyncio.gather(*sends), 20) == [200, 200, 200]
        await wait_for(pilot, lambda: "waiting for room" not in screen_text(app),
                       what="the status line to clear")
