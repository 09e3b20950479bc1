"""The dashboard's share of issue 14 items 4 and 6: tokens and cost on the status line
and in the detail pane, and `x` writing the selected turn as a repro fixture that
replays to what the client received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from textual.message import Message

from conftest import ProxyFactory
from proxy_core.replay import replay
from proxy_core.repro import client_view, normalized, read_fixture
from support import (
    FakeUpstream, chat_body, finish_chunk, openai_config, sse, stream_chat, text_chunk,
    usage_chunk, wait_until,
)
from tui.app import SwitchboardApp
from tui.messages import Exported
from tui.source import LocalSource, RemoteSource, SourceError
from tui_support import screen_text, wait_for

#: For the route `openai_config` makes: test-model -> primary:up-model.
PRICES = '\n[prices."up-model"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n'


def usage_with_details() -> dict[str, Any]:
    payload = usage_chunk(1500, 500)
    payload["usage"]["prompt_tokens_details"] = {"cached_tokens": 1000}
    return payload


async def test_status_line_tokens_and_the_repro_key(
        fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, client: httpx.AsyncClient,
        tmp_path: Path) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url) + PRICES)
    reply = sse(text_chunk("Hel"), text_chunk("lo"), finish_chunk(), usage_with_details())
    fake_upstream.script(reply, reply)
    app = SwitchboardApp(LocalSource(proxy), themes_dir=tmp_path / "themes",
                         keymap_path=tmp_path / "keymap.toml", export_dir=tmp_path)
    messages: list[Message] = []
    async with app.run_test(size=(170, 50), message_hook=messages.append) as pilot:
        for session in ("ses_a", "ses_b"):
            response, _ = await stream_chat(client, proxy.base_url, chat_body(),
                                            headers={"x-session-id": session})
            assert response.status_code == 200
        turn_id = proxy.store.recent(1)[0].id
        await wait_for(pilot, lambda: app.selected_id == turn_id
                       and "tokens 3.0k in / 1.0k out · $0.0140" in screen_text(app),
                       what="the totals on the status line")
        text = screen_text(app)
        # two turns of 1500 in (1000 cached, no price of its own) / 500 out at 2 and 8
        # per million: $0.007 each
        assert "(session 1.5k in / 500 out · $0.0070)" in text
        assert "1500/500 tokens (1000 cached) · $0.0070" in text
        assert proxy.journal is not None
        journal = proxy.journal
        await wait_for(pilot, lambda: journal.wire(turn_id) is not None, what="the raw answer")
        await pilot.press("x")
        await wait_for(pilot, lambda: any(isinstance(m, Exported) for m in messages),
                       what="the repro fixture")
    await app.source.stop()
    fixture = read_fixture(tmp_path / f"repro-{turn_id}.json")
    assert fixture["turn"]["cost"] == 0.007
    result = await replay(fixture, instant=True)
    assert client_view(result.output).text == "Hello"
    assert normalized(result.output)[-1] == "[DONE]"


async def test_an_attached_dashboard_gets_the_fixture_from_the_control_api(
        fake_upstream: FakeUpstream, proxy_factory: ProxyFactory,
        client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    response, _ = await stream_chat(client, proxy.base_url, chat_body())
    assert response.status_code == 200
    turn = proxy.store.recent(1)[0]
    assert proxy.journal is not None
    journal = proxy.journal
    await wait_until(lambda: journal.wire(turn.id) is not None, what="the raw answer")
    source = RemoteSource(proxy.base_url)
    try:
        fixture = await source.repro(turn.id)
        assert fixture["turn"]["id"] == turn.id and fixture["wire_recorded"] is True
        assert fixture["wire"][0]["body"].endswith("data: [DONE]\n\n")
        with pytest.raises(SourceError, match="no turn 'turn_nope'"):
            await source.repro("turn_nope")
    finally:
        await source.stop()
