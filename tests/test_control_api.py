"""The control API: health, turns, one turn, the live event stream, session grouping."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from proxy_core.app import SwitchboardProxy
from proxy_core.events import event_from_dict
from support import (
    API, CHAT_PATH, FakeUpstream, api_turn, api_turns, assert_openai_error, chat_body,
    content_of, finish_chunk, openai_config, sse, stream_chat, text_chunk, tool_call_chunk, usage_chunk,
    wait_until, writer_held,
)


async def chat(client: httpx.AsyncClient, proxy: SwitchboardProxy, text: str = "Say hello",
               headers: dict[str, str] | None = None, **body: Any) -> None:
    response, payloads = await stream_chat(client, proxy.base_url, chat_body(text, **body),
                                           headers=headers)
    assert response.status_code == 200 and payloads[-1] == "[DONE]"


async def test_health(proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    await chat(client, proxy)
    response = await client.get(proxy.base_url + API + "/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    assert health["turns"] == 1 and health["live_turns"] == 0
    assert health["config"] == "test.toml"
    assert health["journal"]["path"] == str(proxy.config.proxy.journal)
    assert health["journal"]["ok"] is True
    assert health["upstreams"] == {"primary": "openai"}
    assert health["routes"] == [{"model": "test-model", "targets": ["primary:up-model"],
                                 "repairs": "none"}]


async def test_health_says_degraded_while_the_journal_cannot_write(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    assert proxy.journal is not None
    proxy.journal.conn.execute("PRAGMA query_only = ON")  # every write now fails
    await chat(client, proxy)  # still proxied
    health = (await client.get(proxy.base_url + API + "/health")).json()
    assert health["status"] == "degraded"
    assert health["journal"]["ok"] is False and health["journal"]["unsaved_turns"] >= 1
    proxy.journal.conn.execute("PRAGMA query_only = OFF")
    await chat(client, proxy)  # a write succeeds again, and the backlog with it
    health = (await client.get(proxy.base_url + API + "/health")).json()
    assert health["status"] == "ok" and health["journal"]["unsaved_turns"] == 0


async def test_health_answers_while_the_journal_writer_is_busy(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    """A health check reads the journal's state as it is: waiting for its writer would
    stall the proxy's event loop for as long as the writer is behind."""
    journal = proxy.journal
    assert journal is not None
    async with writer_held(journal) as ended:
        health = (await client.get(proxy.base_url + API + "/health")).json()
        assert not ended.is_set()  # answered while the writer is still stuck
        assert health["journal"]["queued_writes"] == 0 and health["journal"]["behind"] is False


async def test_reads_from_the_journal_wait_for_its_writer_without_holding_the_proxy(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    """A turn read from the journal comes after the writes handed over before it, and
    the event loop serves everything else meanwhile (`Journal.fetch`)."""
    journal = proxy.journal
    assert journal is not None
    await chat(client, proxy)
    async with writer_held(journal) as ended:
        read = asyncio.ensure_future(client.get(proxy.base_url + API + "/turns/turn_elsewhere"))
        listed = asyncio.ensure_future(client.get(proxy.base_url + API + "/usage"))
        worker = journal._worker
        assert worker is not None
        await wait_until(lambda: worker.backlog() == 2, what="both reads queued for the writer")
        health = await client.get(proxy.base_url + API + "/health")  # served meanwhile
        assert health.status_code == 200 and health.json()["journal"]["queued_writes"] == 2
        assert not ended.is_set() and not read.done() and not listed.done()
    assert (await read).status_code == 404
    assert (await listed).json()["total"]["turns"] == 1



async def test_a_turn_retried_by_hand_from_the_journal_is_read_without_holding_the_proxy(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    """Retrying, or listing the targets of, a turn no longer in memory reads it from the
    journal on its writer: meanwhile the event loop serves everything else."""
    journal = proxy.journal
    assert journal is not None
    proxy.store.capacity = 1
    await chat(client, proxy, "the one to retry")
    old = (await api_turns(client, proxy.base_url))[-1]["id"]
    await chat(client, proxy, "the one that pushes it out of memory")
    assert proxy.store.get(old) is None
    async with writer_held(journal) as ended:
        retried = asyncio.ensure_future(client.post(f"{proxy.base_url}{API}/turns/{old}/retry"))
        targets = asyncio.ensure_future(
            client.get(f"{proxy.base_url}{API}/targets", params={"turn": old}))
        worker = journal._worker
        assert worker is not None
        await wait_until(lambda: worker.backlog() == 2, what="both reads queued for the writer")
        health = await client.get(proxy.base_url + API + "/health")  # served meanwhile
        assert health.status_code == 200
        assert not ended.is_set() and not retried.done() and not targets.done()
    assert (await targets).json()["targets"] == ["primary:up-model"]
    response = await retried
    assert response.status_code == 202, response.text  # accepted: the re-run goes on
    rerun = response.json()["turn_id"]
    assert rerun != old
    await wait_until(lambda: (turn := proxy.store.get(rerun)) is not None
                     and turn.state == "finished", what="the re-run to finish")
    rerun_turn = proxy.store.get(rerun)
    assert rerun_turn is not None and rerun_turn.rerun_of == old
    assert rerun_turn.request["messages"][-1]["content"] == "the one to retry"

async def test_turns_lists_recent_turns_oldest_first_with_limit(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    for i in range(3):
        await chat(client, proxy, f"question {i}")
    turns = await api_turns(client, proxy.base_url)
    assert len(turns) == 3
    assert [t["started_at"] for t in turns] == sorted(t["started_at"] for t in turns)
    assert all(t["state"] == "finished" and t["text"] == "Hello world" for t in turns)
    assert all("request" not in t for t in turns)  # the list stays light
    limited = await api_turns(client, proxy.base_url, limit=2)
    assert [t["id"] for t in limited] == [t["id"] for t in turns[1:]]
    response = await client.get(proxy.base_url + API + "/turns", params={"limit": "many"})
    assert_openai_error(response, 400)


async def test_turns_filtered_by_session(proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    await chat(client, proxy, "a1", headers={"x-session-id": "ses_A"})
    await chat(client, proxy, "b1", headers={"x-session-id": "ses_B"})
    await chat(client, proxy, "a2", headers={"x-session-id": "ses_A"})
    turns_a = await api_turns(client, proxy.base_url, session="ses_A")
    assert [t["session_id"] for t in turns_a] == ["ses_A", "ses_A"]
    turns_b = await api_turns(client, proxy.base_url, session="ses_B")
    assert len(turns_b) == 1
    assert await api_turns(client, proxy.base_url, session="ses_none") == []


async def test_one_turn_in_full_and_404_for_unknown(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    await chat(client, proxy, "show me everything")
    (listed,) = await api_turns(client, proxy.base_url)
    turn = await api_turn(client, proxy.base_url, listed["id"])
    assert turn["id"] == listed["id"]
    assert turn["request"]["messages"][-1]["content"] == "show me everything"
    assert turn["text"] == "Hello world" and turn["finish_reason"] == "stop"
    assert turn["usage"]["total_tokens"] == 18
    (attempt,) = turn["attempts"]
    assert attempt["target"] == "primary:up-model" and attempt["outcome"] == "ok"
    assert turn["ttfb"] is not None and turn["duration"] >= turn["ttfb"]

    response = await client.get(proxy.base_url + API + "/turns/turn_doesnotexist")
    error = assert_openai_error(response, 404)
    assert "turn_doesnotexist" in error["message"]


async def test_turns_survive_a_restart_through_the_journal(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    toml = openai_config(fake_upstream.base_url)
    first = await proxy_factory(toml)
    await chat(client, first, "before restart 1", headers={"x-session-id": "ses_R"})
    await chat(client, first, "before restart 2")
    before = await api_turns(client, first.base_url)
    await first.stop()

    second = await proxy_factory(toml)  # same journal file
    after = await api_turns(client, second.base_url)
    assert [t["id"] for t in after] == [t["id"] for t in before]
    assert all(t["state"] == "finished" and "request" not in t for t in after)
    old = await api_turn(client, second.base_url, before[0]["id"])
    assert old["request"]["messages"][-1]["content"] == "before restart 1"
    assert [t["id"] for t in await api_turns(client, second.base_url, session="ses_R")] == [
        before[0]["id"]]

    await chat(client, second, "after restart")
    merged = await api_turns(client, second.base_url)
    assert [t["id"] for t in merged][:2] == [t["id"] for t in before]
    assert len(merged) == 3
    assert [t["id"] for t in await api_turns(client, second.base_url, limit=2)] == [
        before[1]["id"], merged[2]["id"]]


async def test_events_stream_delivers_a_turn_live(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(text_chunk("live"), text_chunk(" events"),
                             tool_call_chunk(0, id="call_1", name="bash", arguments='{"command": "ls"}'),
                             finish_chunk("tool_calls"), usage_chunk()))
    events: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        async with client.stream("GET", proxy.base_url + API + "/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(":")  # subscribed
            reply = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
            assert reply.status_code == 200
            name = None
            async for line in lines:
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    assert name == data["type"]
                    events.append((name, data))
                    if name in ("TurnFinished", "TurnFailed"):
                        break
    names = [n for n, _ in events]
    for expected in ("TurnStarted", "AttemptStarted", "FirstByte", "Chunk", "TurnFinished"):
        assert expected in names, names
    order = ["TurnStarted", "AttemptStarted", "FirstByte", "TurnFinished"]
    assert [n for n in names if n in order] == order
    assert names.index("FirstByte") < names.index("Chunk")
    assert len({d["turn_id"] for _, d in events}) == 1
    assert "".join(d["text"] for n, d in events if n == "Chunk") == "live events"
    # A tool call's `name` field is the tool, never taken for the event type.
    (call,) = [d for n, d in events if n == "ToolCallRelayed"]
    assert call["name"] == "bash"
    for _, data in events:  # every event rebuilds, as `switchboard attach` does
        assert type(event_from_dict(data)).__name__ == data["type"]
    finished = events[-1][1]
    assert finished["finish_reason"] == "tool_calls" and finished["completion_tokens"] == 7


async def test_events_stream_with_snapshots_carries_the_core_record(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    fake_upstream.script(sse(*(text_chunk(w) for w in ("one ", "two ", "three")),
                             finish_chunk("stop"), usage_chunk()))
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        async with client.stream("GET", proxy.base_url + API + "/events",
                                 params={"snapshots": "1"}) as response:
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith(":")  # subscribed
            assert (await client.post(proxy.base_url + CHAT_PATH, json=chat_body())).status_code == 200
            name = ""
            async for line in lines:
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    seen.append((name, json.loads(line[6:])))
                    if name == "TurnFinished":
                        break
    names = [n for n, _ in seen]
    # Every event of the turn but a chunk comes after a snapshot of the turn.
    for i, name in enumerate(names):
        if name not in ("TurnSnapshot", "Chunk"):
            assert names[i - 1] == "TurnSnapshot", names
    snapshots = [d for n, d in seen if n == "TurnSnapshot"]
    assert snapshots[0]["state"] == "live" and snapshots[0]["format"] == 1
    assert all("request" not in d for d in snapshots)
    last = snapshots[-1]
    stored = await api_turn(client, proxy.base_url, last["id"])
    assert last["text"] == "one two three" and last["state"] == "finished"
    assert {k: v for k, v in last.items() if k != "duration"} == {
        k: v for k, v in stored.items() if k not in ("request", "duration")}


async def test_x_session_id_groups_turns(proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    await chat(client, proxy, "one", headers={"x-session-id": "ses_abc"})
    await chat(client, proxy, "something else entirely", headers={"x-session-id": "ses_abc"})
    turns = await api_turns(client, proxy.base_url)
    assert [t["session_id"] for t in turns] == ["ses_abc", "ses_abc"]


async def test_x_parent_session_id_is_recorded_with_the_subagent_session(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    events: list[Any] = []
    proxy.bus.subscribe(events.append)
    await chat(client, proxy, "plan", headers={"x-session-id": "ses_main"})
    await chat(client, proxy, "explore", headers={"x-session-id": "ses_sub",
                                                  "x-parent-session-id": "ses_main"})
    turns = await api_turns(client, proxy.base_url)
    assert [(t["session_id"], t["parent_session_id"]) for t in turns] == [
        ("ses_main", None), ("ses_sub", "ses_main")]
    started = [e for e in events if type(e).__name__ == "TurnStarted"]
    assert [e.parent_session_id for e in started] == [None, "ses_main"]


async def test_without_a_session_header_the_conversation_start_groups_turns(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    first = chat_body("fix the bug")
    later = chat_body("fix the bug")  # same system + first user message, longer history
    later["messages"] += [{"role": "assistant", "content": "Done."},
                          {"role": "user", "content": "now add a test"}]
    other = chat_body("write docs")
    for body in (first, later, other):
        response, payloads = await stream_chat(client, proxy.base_url, body)
        assert content_of(payloads) == "Hello world"
    a, b, c = await api_turns(client, proxy.base_url)
    assert a["session_id"].startswith("fp_")
    assert a["session_id"] == b["session_id"]
    assert c["session_id"].startswith("fp_") and c["session_id"] != a["session_id"]


async def test_every_refusal_is_an_openai_error_with_a_code(
        proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    await chat(client, proxy)
    [turn] = await api_turns(client, proxy.base_url)
    base = proxy.base_url + API
    refusals = [
        (client.get(base + "/turns", params={"limit": "many"}), 400, "invalid_parameter"),
        (client.get(base + "/scoreboard", params={"sort": "nope"}), 400, "invalid_parameter"),
        (client.get(base + "/turns/turn_nope"), 404, "turn_not_found"),
        (client.post(base + "/turns/turn_nope/retry"), 404, "turn_not_found"),
        (client.post(f"{base}/turns/{turn['id']}/reroute", content=b"{"), 400, "invalid_json"),
        (client.post(f"{base}/turns/{turn['id']}/reroute", json={"to": "x"}), 400,
         "invalid_target"),
        (client.post(f"{base}/turns/{turn['id']}/reroute", json={"target": "nowhere:m"}), 400,
         "unknown_target"),
    ]
    for request, status, code in refusals:
        response = await request
        error = response.json()["error"]
        assert (response.status_code, error["code"]) == (status, code), response.text
        assert error["message"] and error["type"]
    # And it serves on.
    assert (await client.get(base + "/health")).json()["status"] == "ok"
