"""`switchboard attach`: the dashboard on a proxy elsewhere, through the control API only.

A real proxy serves on 127.0.0.1; the app's `RemoteSource` reads its SSE
event stream, `/turns`, `/turns/{id}` and `/targets`, and drives
`POST .../retry` and `.../reroute`. Nothing is shared in memory but the loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from textual.message import Message

from proxy_core.app import SwitchboardProxy
from proxy_core.record import Turn
from support import (
    FakeUpstream, finish_chunk, hang_reply, openai_config, sse, stream_chat, text_chunk,
    tool_call_chunk, usage_chunk,
)
from tui.app import SwitchboardApp
from tui.messages import SourceStatus, TurnActionDone
from tui.source import RemoteSource
from tui.widgets.screens import PickerScreen
from tui_support import journal_trouble_shown_and_cleared, screen_text, wait_for

SIZE = (170, 50)


def attached(url: str, tmp_path: Path) -> SwitchboardApp:
    return SwitchboardApp(RemoteSource(url), themes_dir=tmp_path / "themes",
                          keymap_path=tmp_path / "keymap.toml", export_dir=tmp_path)


async def test_attach_shows_earlier_and_live_turns_with_their_conversation(
        proxy: SwitchboardProxy, client: httpx.AsyncClient, tmp_path: Path) -> None:
    await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_before"})
    before = proxy.store.recent(1)[0].id
    app = attached(f"{proxy.base_url}/v1", tmp_path)  # the /v1 URL works too
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: before in app.table.ids, what="the earlier turn")
        await stream_chat(client, proxy.base_url, headers={"x-session-id": "ses_after"})
        after = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: after in app.table.ids and app.selected_id == after,
                       what="the live turn, followed")
        entry = await wait_for(pilot, lambda: (e := app.model.get(after)) and e.full
                               and e.turn.state == "finished" and e, what="its full record")
        assert entry.turn.request["messages"][-1]["content"] == "Say hello"
        await wait_for(pilot, lambda: "Say hello" in screen_text(app), what="the conversation")
        text = screen_text(app)
        assert "ses_before" in text and "ses_after" in text and "stop" in text
        assert proxy.base_url in text and "(disconnected)" not in text
    await app.source.stop()


async def test_attach_retry_and_reroute_keys_go_through_the_control_api(
        make_fake_upstream, proxy_factory, client: httpx.AsyncClient, tmp_path: Path) -> None:
    primary, backup = await make_fake_upstream(), await make_fake_upstream()
    proxy = await proxy_factory(openai_config(primary.base_url, backup.base_url))
    messages: list[Message] = []
    app = attached(proxy.base_url, tmp_path)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: app.source.connected, what="the event stream")
        await stream_chat(client, proxy.base_url)
        original = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: app.selected_id == original
                       and app.model.get(original).turn.state == "finished", what="the turn")
        await pilot.press("r")
        retried = await wait_for(pilot, lambda: next(
            (m.turn_id for m in messages if isinstance(m, TurnActionDone)), None), what="retry")
        await wait_for(pilot, lambda: (e := app.model.get(retried)) is not None
                       and e.turn.state == "finished" and app.selected_id == retried,
                       what="the re-run over SSE")
        await pilot.press("R")
        await wait_for(pilot, lambda: isinstance(app.screen, PickerScreen), what="the picker")
        assert "backup:up-model" in screen_text(app)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: sum(isinstance(m, TurnActionDone) for m in messages) == 2,
                       what="the reroute")
    await app.source.stop()
    rerun = proxy.store.get(retried)
    assert rerun.rerun_of == original and rerun.attempts[0].reason == "manual-retry"
    rerouted = [m for m in messages if isinstance(m, TurnActionDone)][1]
    assert rerouted.target == "backup:up-model"
    assert proxy.store.get(rerouted.turn_id).rerun_of == retried
    assert len(backup.requests) == 1


async def test_an_attached_dashboard_holds_the_cores_own_records(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        tmp_path: Path) -> None:
    """No turn is rebuilt from events on the dashboard's side: the records it shows are the
    core's snapshots, field for field, as a local dashboard's are the core's objects."""
    fake_upstream.script(sse(*(text_chunk(w) for w in ("Reading ", "the ", "file.")),
                             tool_call_chunk(0, id="call_1", name="read",
                                             arguments='{"filePath": "a.py"}'),
                             finish_chunk("tool_calls"), usage_chunk()))
    app = attached(proxy.base_url, tmp_path)

    def record(turn: Turn) -> dict[str, object]:
        data = turn.to_dict(include_request=False)
        del data["duration"]
        return data

    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.source.connected, what="the event stream")
        await stream_chat(client, proxy.base_url)
        core = proxy.store.recent(1)[0]
        await wait_for(pilot, lambda: (e := app.model.get(core.id)) is not None
                       and e.turn.state == "finished", what="the finished turn")
        shown = app.model.get(core.id).turn
        assert shown is app.source.turn(core.id)
        assert record(shown) == record(core)
        assert shown.text == "Reading the file." and shown.tool_calls[0].id == "call_1"
    await app.source.stop()


async def test_an_attached_dashboard_says_when_the_journal_cannot_write(
        proxy: SwitchboardProxy, client: httpx.AsyncClient, tmp_path: Path) -> None:
    """`serve` logs to its own terminal: the dashboard attached to it reads the journal's
    health from `/switchboard/api/health`, asked every `health_interval`."""
    journal = proxy.journal
    assert journal is not None
    app = SwitchboardApp(RemoteSource(proxy.base_url, health_interval=0.05),
                         themes_dir=tmp_path / "themes", keymap_path=tmp_path / "keymap.toml",
                         export_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: proxy.base_url in screen_text(app), what="the status line")
        await journal_trouble_shown_and_cleared(
            pilot, app, journal, lambda: stream_chat(client, proxy.base_url))
    await app.source.stop()


async def test_attach_to_nothing_shows_disconnected_and_keeps_running(tmp_path: Path,
                                                                     unused_tcp_port: int) -> None:
    messages: list[Message] = []
    app = attached(f"http://127.0.0.1:{unused_tcp_port}", tmp_path)
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await wait_for(pilot, lambda: any(isinstance(m, SourceStatus) and not m.connected
                                          for m in messages), what="a disconnected status")
        await wait_for(pilot, lambda: "(disconnected)" in screen_text(app), what="the status line")
        await pilot.press("r")  # nothing selected: a notice, no crash
        assert app.is_running
    await app.source.stop()


async def test_attach_uses_the_core_heartbeat(fake_upstream: FakeUpstream, proxy_factory,
                                              client: httpx.AsyncClient, tmp_path: Path) -> None:
    """StreamHeartbeat events over SSE mark a silent stream stalled (half the 3 s limit)."""
    fake_upstream.script(hang_reply(), hang_reply(), hang_reply())
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, first_token_timeout=3.0,
                                              idle_timeout=3.0, max_attempts=1))
    app = attached(proxy.base_url, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.source.connected, what="the event stream")
        request = asyncio.create_task(stream_chat(client, proxy.base_url, timeout=15))
        turn_id = (await wait_for(pilot, lambda: proxy.store.recent(1), what="a turn"))[0].id
        entry = await wait_for(pilot, lambda: app.model.get(turn_id), what="the turn listed")
        await wait_for(pilot, lambda: entry.pulse.reported_at is not None, what="a heartbeat")
        await wait_for(pilot, lambda: "◌ STALLED" in screen_text(app), what="stalled shown")
        response, _ = await request
        assert response.status_code == 504
        await wait_for(pilot, lambda: "✗ failed" in screen_text(app), what="the failed turn")
    await app.source.stop()
