"""Watchdog, automatic recovery, upstream cooldown, heartbeats and manual control.

Real proxies and fake upstreams on 127.0.0.1 (see support.py), real httpx
clients; manual actions go through the HTTP control API.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from proxy_core.events import Event, StreamHeartbeat, UpstreamHealthChanged
from support import (
    API, CHAT_PATH, UPSTREAM_MODEL, Hang, api_turn, chat_body, content_of, error_reply,
    hang_reply, openai_config, sse, stream_errors, text_chunk, text_reply,
    wait_until,
)

PRIMARY = f"primary:{UPSTREAM_MODEL}"
BACKUP = f"backup:{UPSTREAM_MODEL}"


def config(*urls: str, watchdog: str = "", route: str = "", **kw: Any) -> str:
    """`openai_config` with extra `[watchdog]` and `[[routes]]` lines."""
    text = openai_config(*urls, **kw)
    text = text.replace("[watchdog]\n", f"[watchdog]\n{watchdog}\n")
    return text.replace('repairs = "none"', f'repairs = "none"\n{route}')


class Streaming:
    """A client request streaming in the background, keeping every raw line."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.lines: list[str] = []
        self.status: int | None = None
        self.task = asyncio.create_task(self._run(client, base_url))

    async def _run(self, client: httpx.AsyncClient, base_url: str) -> None:
        async with client.stream("POST", base_url + CHAT_PATH, json=chat_body()) as response:
            self.status = response.status_code
            async for line in response.aiter_lines():
                if line:
                    self.lines.append(line)

    def payloads(self) -> list[Any]:
        import json
        return [json.loads(line[6:]) for line in self.lines
                if line.startswith("data: ") and line != "data: [DONE]"]

    async def done(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.task, timeout)


async def live_attempt(proxy: Any, n: int = 1) -> str:
    """Wait until a turn is live on attempt `n`; return its id."""
    def find() -> str | None:
        for turn_id, live in proxy.pipeline.live.items():
            if len(live.turn.attempts) >= n:
                return turn_id
        return None
    return await wait_until(find, what=f"a live turn on attempt {n}")


async def test_waiting_client_gets_keepalives_while_a_hang_is_retried(
        make_fake_upstream, proxy_factory, client) -> None:
    fake = await make_fake_upstream(text_reply("after", " retry"))
    fake.script(hang_reply())
    proxy = await proxy_factory(config(fake.base_url, first_token_timeout=1.0,
                                       watchdog="keepalive_interval = 0.2"))
    stream = Streaming(client, proxy.base_url)
    await stream.done()
    assert stream.status == 200
    first_data = next(i for i, line in enumerate(stream.lines) if line.startswith("data: "))
    assert stream.lines[:first_data].count(": keep-alive") >= 3, stream.lines[:first_data]
    assert content_of(stream.payloads()) == "after retry"
    turn = (await client.get(f"{proxy.base_url}{API}/turns")).json()["turns"][-1]
    assert [a["reason"] for a in turn["attempts"]] == ["initial", "retry"]
    assert "no first token" in turn["attempts"][0]["error"]


async def test_route_overrides_the_watchdog(make_fake_upstream, proxy_factory, client) -> None:
    fake = await make_fake_upstream(text_reply("ok"))
    fake.script(hang_reply())
    # Globally a hang would take 30 s to notice; this route says 0.3 s.
    proxy = await proxy_factory(config(fake.base_url, first_token_timeout=30.0,
                                       route="first_token_timeout = 0.3"))
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False), timeout=5)
    assert response.status_code == 200
    assert len(fake.chat_requests) == 2


async def test_manual_retry_restarts_a_live_hung_turn_on_its_client_stream(
        make_fake_upstream, proxy_factory, client) -> None:
    fake = await make_fake_upstream(text_reply("Hello", " world"))
    fake.script(hang_reply())
    proxy = await proxy_factory(config(fake.base_url, first_token_timeout=30.0))
    stream = Streaming(client, proxy.base_url)
    turn_id = await live_attempt(proxy)
    await wait_until(lambda: fake.chat_requests, what="the upstream request")
    response = await client.post(f"{proxy.base_url}{API}/turns/{turn_id}/retry")
    assert response.status_code == 202 and response.json()["turn_id"] == turn_id
    await stream.done()
    assert content_of(stream.payloads()) == "Hello world", "sent once, from the new attempt"
    turn = await api_turn(client, proxy.base_url, turn_id)
    assert [(a["reason"], a["outcome"]) for a in turn["attempts"]] == [
        ("initial", "interrupted"), ("manual-retry", "ok")]
    assert turn["state"] == "finished"
    await wait_until(lambda: fake.disconnects >= 1, what="the hung upstream request closed")


async def test_manual_reroute_moves_a_live_hung_turn(make_fake_upstream, proxy_factory, client) -> None:
    primary = await make_fake_upstream(hang_reply())
    backup = await make_fake_upstream(text_reply("from backup"))
    proxy = await proxy_factory(config(primary.base_url, backup.base_url, first_token_timeout=30.0))
    stream = Streaming(client, proxy.base_url)
    turn_id = await live_attempt(proxy)
    targets = (await client.get(f"{proxy.base_url}{API}/targets", params={"turn": turn_id})).json()
    assert targets["targets"][:2] == [PRIMARY, BACKUP]
    response = await client.post(f"{proxy.base_url}{API}/turns/{turn_id}/reroute",
                                 json={"target": BACKUP})
    assert response.status_code == 202
    await stream.done()
    assert content_of(stream.payloads()) == "from backup"
    turn = await api_turn(client, proxy.base_url, turn_id)
    assert [(a["target"], a["reason"]) for a in turn["attempts"]] == [
        (PRIMARY, "initial"), (BACKUP, "manual-reroute")]


async def test_manual_retry_after_output_started_reruns_without_resending(
        make_fake_upstream, proxy_factory, client) -> None:
    fake = await make_fake_upstream(text_reply("fresh", " answer"))
    fake.script(sse(text_chunk("partial"), Hang()))
    proxy = await proxy_factory(config(fake.base_url, idle_timeout=30.0))
    stream = Streaming(client, proxy.base_url)
    turn_id = await live_attempt(proxy)
    await wait_until(lambda: "partial" in content_of(stream.payloads()), what="partial output")
    response = await client.post(f"{proxy.base_url}{API}/turns/{turn_id}/retry")
    assert response.status_code == 202
    rerun_id = response.json()["turn_id"]
    assert rerun_id != turn_id
    await stream.done()
    payloads = stream.payloads()
    assert content_of(payloads) == "partial", "nothing sent twice, nothing from the re-run"
    assert rerun_id in stream_errors(payloads)[0]["message"]
    assert stream.lines[-1] == "data: [DONE]"

    async def rerun_done() -> dict | None:
        turn = await api_turn(client, proxy.base_url, rerun_id)
        return turn if turn["state"] != "live" else None
    rerun = await wait_until(rerun_done, what="the re-run to finish")
    assert rerun["state"] == "finished" and rerun["text"] == "fresh answer"
    assert rerun["rerun_of"] == turn_id and rerun["attempts"][0]["reason"] == "manual-retry"
    original = await api_turn(client, proxy.base_url, turn_id)
    assert original["state"] == "failed" and rerun_id in original["error"]


async def test_finished_turn_is_rerun_and_recorded(fake_upstream, proxy, client) -> None:
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False))
    assert response.status_code == 200
    turn_id = (await client.get(f"{proxy.base_url}{API}/turns")).json()["turns"][-1]["id"]
    response = await client.post(f"{proxy.base_url}{API}/turns/{turn_id}/reroute",
                                 json={"target": PRIMARY})
    assert response.status_code == 202
    rerun_id = response.json()["turn_id"]

    async def finished() -> dict | None:
        turn = await api_turn(client, proxy.base_url, rerun_id)
        return turn if turn["state"] == "finished" else None
    rerun = await wait_until(finished, what="the re-run")
    assert rerun["rerun_of"] == turn_id and rerun["text"] == "Hello world"
    assert rerun["request"] == (await api_turn(client, proxy.base_url, turn_id))["request"]


async def test_manual_control_errors(fake_upstream, proxy, client) -> None:
    response = await client.post(f"{proxy.base_url}{API}/turns/turn_nope/retry")
    assert response.status_code == 404 and response.json()["error"]["code"] == "turn_not_found"
    await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False))
    turn_id = (await client.get(f"{proxy.base_url}{API}/turns")).json()["turns"][-1]["id"]
    for body in ({"target": "nowhere:x"}, {"nope": 1}, "not json"):
        kwargs = {"content": body} if isinstance(body, str) else {"json": body}
        response = await client.post(f"{proxy.base_url}{API}/turns/{turn_id}/reroute", **kwargs)
        assert response.status_code == 400, body
    response = await client.post(f"{proxy.base_url}{API}/turns/{turn_id}/retry",
                                 headers={"Origin": "http://evil.example"})
    assert response.status_code == 403


async def test_failing_target_cools_down_and_comes_back(make_fake_upstream, proxy_factory, client) -> None:
    primary = await make_fake_upstream(error_reply(503, "down", type_="server_error"))
    backup = await make_fake_upstream(text_reply("ok"))
    proxy = await proxy_factory(config(primary.base_url, backup.base_url,
                                       watchdog="cooldown = 30\ncooldown_after = 2"))
    now = [1_000_000.0]  # the cooldown's clock, moved by hand below
    proxy.pipeline.health.clock = lambda: now[0]
    events: list[Event] = []
    proxy.bus.subscribe(events.append)
    body = chat_body(stream=False)
    assert (await client.post(proxy.base_url + CHAT_PATH, json=body)).status_code == 200
    assert len(primary.chat_requests) == 2  # failed twice: cooling now
    changes = [e for e in events if isinstance(e, UpstreamHealthChanged)]
    assert [(c.target, c.healthy) for c in changes] == [(PRIMARY, False)]
    assert (await client.post(proxy.base_url + CHAT_PATH, json=body)).status_code == 200
    assert len(primary.chat_requests) == 2, "skipped while cooling"
    health = (await client.get(f"{proxy.base_url}{API}/health")).json()
    assert health["upstream_health"][PRIMARY]["cooling_for"] == 30
    now[0] += 29.9
    assert (await client.post(proxy.base_url + CHAT_PATH, json=body)).status_code == 200
    assert len(primary.chat_requests) == 2, "still cooling a moment before the end"
    now[0] += 0.1  # the cooldown is over
    primary.default = text_reply("primary again")
    response = await client.post(proxy.base_url + CHAT_PATH, json=body)
    assert response.json()["choices"][0]["message"]["content"] == "primary again"
    assert [(c.target, c.healthy) for c in events if isinstance(c, UpstreamHealthChanged)] == [
        (PRIMARY, False), (PRIMARY, True)]


async def test_heartbeats_show_a_stream_stalling(make_fake_upstream, proxy_factory, client) -> None:
    fake = await make_fake_upstream(text_reply("late"))
    fake.script(sse(text_chunk("a"), text_chunk("b"), Hang()))
    # Stalled shows from half the idle limit until the limit ends the attempt: with
    # 3 s that window (1.5 s) holds at least one of the once-a-second heartbeats.
    proxy = await proxy_factory(config(fake.base_url, idle_timeout=3.0))
    beats: list[StreamHeartbeat] = []
    proxy.bus.subscribe(lambda e: beats.append(e) if isinstance(e, StreamHeartbeat) else None)
    stream = Streaming(client, proxy.base_url)
    await wait_until(lambda: any(b.stalled for b in beats), timeout=8, what="a stalled heartbeat")
    stalled = next(b for b in beats if b.stalled)
    assert stalled.chunks == 2 and stalled.since_last >= 1.5 and stalled.target == PRIMARY
    await stream.done()
    assert stream_errors(stream.payloads()), "after output, a stall ends the stream with an error"


async def test_failure_after_keepalives_arrives_in_stream(make_fake_upstream, proxy_factory, client) -> None:
    """Once keep-alives have gone out the status is 200: a final failure is an in-stream error."""
    fake = await make_fake_upstream(error_reply(400, "bad request, really"))
    fake.script(hang_reply())
    proxy = await proxy_factory(config(fake.base_url, first_token_timeout=0.8,
                                       watchdog="keepalive_interval = 0.2"))
    stream = Streaming(client, proxy.base_url)
    await stream.done()
    assert stream.status == 200
    assert ": keep-alive" in stream.lines
    errors = stream_errors(stream.payloads())
    assert len(errors) == 1 and "bad request, really" in errors[0]["message"]
    assert stream.lines[-1] == "data: [DONE]"
    turn = (await client.get(f"{proxy.base_url}{API}/turns")).json()["turns"][-1]
    assert turn["state"] == "failed" and [a["outcome"] for a in turn["attempts"]] == ["failed", "failed"]


async def test_no_keepalives_when_the_answer_comes_quickly(fake_upstream, proxy, client) -> None:
    stream = Streaming(client, proxy.base_url)
    await stream.done()
    assert ": keep-alive" not in stream.lines and content_of(stream.payloads()) == "Hello world"
