"""The journal against a real `switchboard serve` process: durability and secrets.

The proxy runs as a subprocess (so it can be killed with SIGKILL and its
stderr log read); its upstream is a fake upstream in this test process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from fault_support import ServeProcess
from proxy_core.journal import Writer
from support import (
    API, CHAT_PATH, UPSTREAM_KEY_ENV, FakeUpstream, Hang, api_turn, api_turns, chat_body,
    content_of, openai_config, sse, stream_chat, text_chunk, text_reply, wait_until, writer_held,
)



@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Any]:
    """Factory: `await serve(toml_text, env={...})` → a running `ServeProcess`."""
    started: list[ServeProcess] = []

    async def start(toml_text: str, env: dict[str, str]) -> ServeProcess:
        config = tmp_path / "config.toml"
        config.write_text(toml_text)
        full_env = {**os.environ, **env, "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
                    "XDG_DATA_HOME": str(tmp_path / "xdg-data")}
        process = await ServeProcess.start(config, full_env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.proc.returncode is None:
            await process.kill()


def with_journal(toml_text: str, journal: Path) -> str:
    return toml_text.replace("port = 0", f"port = 0\njournal = {json.dumps(str(journal))}", 1)


async def test_kill_9_leaves_finished_turns_and_the_live_one_on_disk(
        tmp_path: Path, fake_upstream: FakeUpstream, serve: Any) -> None:
    journal = tmp_path / "journal.sqlite3"
    toml = with_journal(openai_config(fake_upstream.base_url, first_token_timeout=60,
                                      idle_timeout=60), journal)
    proxy = await serve(toml, {UPSTREAM_KEY_ENV: "sk-test-kill9-key-00000000"})
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(3):
            response, payloads = await stream_chat(client, proxy.base_url, chat_body(f"turn {i}"))
            assert response.status_code == 200 and content_of(payloads) == "Hello world"
        finished = [t["id"] for t in await api_turns(client, proxy.base_url)]
        assert len(finished) == 3

        # One more turn that is mid-stream when the proxy dies.
        fake_upstream.script(sse(text_chunk("half an ans"), Hang(), done=False))
        async with client.stream("POST", proxy.base_url + CHAT_PATH,
                                 json=chat_body("in flight")) as response:
            async with asyncio.timeout(5):
                async for line in response.aiter_lines():
                    if "half an ans" in line:
                        break
            await proxy.kill()

    assert proxy.proc.returncode == -signal.SIGKILL
    with sqlite3.connect(journal) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = {i: (s, {**json.loads(d), "request": json.loads(r)}) for i, s, d, r in
                conn.execute("SELECT t.id, t.state, t.data, coalesce(r.request, t.request)"
                             " FROM turns t LEFT JOIN requests r ON r.id = t.id").fetchall()}
    assert len(rows) == 4
    for turn_id in finished:
        state, data = rows[turn_id]
        assert state == "finished" and data["state"] == "finished"
        assert data["text"] == "Hello world" and data["finish_reason"] == "stop"
    (live_id,) = set(rows) - set(finished)
    state, data = rows[live_id]
    assert state == "live"
    assert data["request"]["messages"][-1]["content"] == "in flight"


# -- the writer thread ---------------------------------------------------------------

def test_the_writer_runs_rows_before_requests_each_kind_in_order() -> None:
    writer = Writer()
    busy = threading.Event()
    done: list[str] = []
    writer.submit(busy.wait, Writer.REQUEST)  # the thread is busy with a request
    for name, kind in [("request 1", Writer.REQUEST), ("row 1", Writer.ROW),
                       ("request 2", Writer.REQUEST), ("row 2", Writer.ROW)]:
        writer.submit(lambda name=name: done.append(name), kind)
    busy.set()
    writer.close()
    assert done == ["row 1", "row 2", "request 1", "request 2"]


def test_a_wait_given_up_does_not_stop_the_writer() -> None:
    # A client that leaves cancels its wait for its turn's row: the row is
    # still written and the writer goes on (it once died on this).
    writer = Writer()
    busy = threading.Event()
    done: list[str] = []
    writer.submit(busy.wait, Writer.REQUEST)
    given_up = writer.submit(lambda: done.append("row"), Writer.ROW)
    assert given_up.cancel()
    busy.set()
    writer.submit(lambda: done.append("next"), Writer.ROW).result(timeout=10)
    writer.close()
    assert done == ["row", "next"]


async def test_turns_wait_for_a_writer_that_has_fallen_behind(tmp_path: Path) -> None:
    """Rows jump the queue, so the rest could pile up for as long as the proxy outpaces
    its writer, holding memory. Past `BACKLOG` waiting jobs, a turn's output waits until
    the writer has done all that was handed over before it."""
    from proxy_core.journal import Journal
    from proxy_core.secrets import Redactor
    from proxy_core.store import TurnStore

    journal = Journal.open(tmp_path / "j.sqlite3", Redactor(), TurnStore())
    journal.BACKLOG = 3
    done: list[int] = []

    async with writer_held(journal):  # the writer is stuck on a slow write
        for i in range(3):
            journal._do(lambda i=i: done.append(i))
        assert journal.recorded("turn_a") is None  # three waiting: not behind yet
        assert journal.status(settle=False)["behind"] is False
        journal._do(lambda: done.append(3))
        now = journal.status(settle=False)  # what the dashboard shows: it does not wait
        assert now["behind"] is True and now["queued_writes"] == 4 and now["ok"]
        first, second = journal.recorded("turn_a"), journal.recorded("turn_b")
        assert first is not None and second is not None and journal.waited_turns == 2
        marker = journal._catch_up  # what both wait for: still pending behind the slow write
        assert marker is not None and not marker.done()
    await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert done == [0, 1, 2, 3]  # everything handed over before the waits was written
    assert journal.recorded("turn_a") is None
    status = journal.status()
    assert status["waited_turns"] == 2 and status["queued_writes"] == 0
    assert status["behind"] is False
    journal.close()


async def test_a_delivered_call_is_recalled_without_waiting_for_the_writer(
        tmp_path: Path) -> None:
    """History repairs recall tool calls on a request's path, and after a restart each
    call of a session's first turn is a journal read. It reads what is committed, on a
    connection of its own: a writer that is behind holds neither it nor the event loop
    (which every turn runs on)."""
    from proxy_core.journal import Journal
    from proxy_core.repairs.memory import RememberedCall, ToolCallMemory
    from proxy_core.secrets import Redactor
    from proxy_core.store import TurnStore

    path = tmp_path / "j.sqlite3"
    before = Journal.open(path, Redactor(), TurnStore())
    delivered = RememberedCall("call_1", "read", '{"path": "a.py"}', reasoning="look first",
                               session_id="ses_1", turn_id="turn_1", at=1.0)
    await asyncio.to_thread(before.save_call, delivered)  # no loop there: written at once
    before.close()

    journal = Journal.open(path, Redactor(), TurnStore())  # the restart
    memory = ToolCallMemory(journal)
    async with writer_held(journal) as ended:
        assert memory.recall("call_1") == delivered
        assert memory.recall("call_unknown") is None
        assert not ended.is_set()  # answered while the writer is still stuck
    journal.close()


# -- secrets -------------------------------------------------------------------------

UPSTREAM_SECRET = "sk-test-PLANTED-SECRET-123456789"
CLIENT_SECRET = "client-PLANTED-token-987654321"
CLIENT_AUTH = {"Authorization": f"Bearer {CLIENT_SECRET}"}


def echo_key(status: int) -> Any:
    """A reply that echoes the Authorization header it got, as careless hosts do."""

    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        got = request.headers.get("Authorization", "")
        return web.json_response({"error": {"message": f"invalid credentials: {got}",
                                            "type": "auth_error"}}, status=status)

    return reply


def echo_key_in_stream() -> Any:
    """A 200 stream that starts, then reports an error quoting the key (reference F6)."""

    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        got = request.headers.get("Authorization", "")
        return await sse(text_chunk("thinking"), {"error": {"message": f"quota for {got}"}})(
            request, fake)

    return reply


def assert_clean(where: str, blob: bytes | str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    for secret in (UPSTREAM_SECRET, CLIENT_SECRET, "PLANTED"):
        assert secret not in text, f"{secret!r} leaked into {where}"


async def test_secrets_reach_no_journal_log_api_or_event(
        tmp_path: Path, fake_upstream: FakeUpstream, serve: Any) -> None:
    journal = tmp_path / "journal.sqlite3"
    toml = with_journal(openai_config(fake_upstream.base_url, max_attempts=2), journal)
    proxy = await serve(toml, {UPSTREAM_KEY_ENV: UPSTREAM_SECRET})
    events = bytearray()
    client_saw: list[str] = []

    async with httpx.AsyncClient(timeout=10) as client:
        async def watch() -> None:
            try:
                async with client.stream("GET", proxy.base_url + API + "/events") as response:
                    async for piece in response.aiter_bytes():
                        events.extend(piece)
            except httpx.HTTPError:
                pass  # the proxy went away

        watcher = asyncio.create_task(watch())
        await wait_until(lambda: events, what="the event stream to open")

        # A success, a non-retryable 401 echoing the key, a 500 echoing it
        # (retried, then failed), an in-stream error echoing it, a success.
        fake_upstream.script(text_reply(), echo_key(401), echo_key(500), echo_key(500),
                             echo_key_in_stream())
        for stream in (True, True, False, True, True):
            if stream:
                response, payloads = await stream_chat(client, proxy.base_url, headers=CLIENT_AUTH)
                client_saw.append(json.dumps(payloads) if payloads else response.text)
            else:
                response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body(stream=False),
                                             headers=CLIENT_AUTH)
                client_saw.append(response.text)
        # The upstream really saw (and echoed) the key; the proxy really saw the client token.
        assert fake_upstream.chat_requests[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
        turns = await api_turns(client, proxy.base_url)
        assert [t["state"] for t in turns] == ["finished", "failed", "failed", "failed", "finished"]
        assert "invalid credentials" in turns[1]["error"]

        api_text = (await client.get(proxy.base_url + API + "/turns")).text
        details = [(await client.get(f"{proxy.base_url}{API}/turns/{t['id']}")).text for t in turns]
        await wait_until(lambda: events.count(b"event: TurnFinished") >= 2, what="all events")
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)

        wal = Path(f"{journal}-wal")
        journal_live = journal.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
        assert await api_turn(client, proxy.base_url, turns[0]["id"])

    assert await proxy.terminate() == 0
    journal_after = journal.read_bytes() + (wal.read_bytes() if wal.exists() else b"")

    assert b"TurnFailed" in events and b"invalid credentials" in events  # the check can see
    assert proxy.stderr and b"FAILED" in proxy.stderr
    assert_clean("the journal (while running)", journal_live)
    assert_clean("the journal (after shutdown)", journal_after)
    assert_clean("the serve log (stderr)", bytes(proxy.stderr))
    assert_clean("GET /turns", api_text)
    for detail in details:
        assert_clean("GET /turns/{id}", detail)
    assert_clean("the /events stream", bytes(events))
    for answer in client_saw:
        assert_clean("the client's answers", answer)


def test_a_record_orjson_refuses_is_written_by_json_instead(tmp_path: Path) -> None:
    """Rows are encoded with orjson; a lone surrogate in a reply (UTF-8 cannot hold it) or
    an integer beyond 64 bits still gets written, escaped, and read back as it was."""
    from proxy_core.journal import Journal
    from proxy_core.record import Turn
    from proxy_core.secrets import Redactor
    from proxy_core.store import TurnStore

    journal = Journal.open(tmp_path / "j.sqlite3", Redactor(), TurnStore())
    turn = Turn(id="turn_odd", session_id="ses_odd", model="m", route="m", stream=True,
                request={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                state="finished")
    turn.text_parts.append("half a pair: \ud83d, then more")
    turn.usage.prompt_tokens = 2**70
    journal.save(turn)
    record = journal.turn("turn_odd")
    assert record is not None
    assert record["text"] == "half a pair: \ud83d, then more"
    assert record["usage"]["prompt_tokens"] == 2**70
    journal.close()


def test_a_turns_row_and_its_request_are_written_together_or_not_at_all(
        tmp_path: Path) -> None:
    """One transaction: after kill -9 a turn on disk has its request. A request that
    cannot be written leaves no row behind; the turn is kept and both go in later."""
    from unittest import mock

    from proxy_core import journal_db
    from proxy_core.journal import Journal
    from proxy_core.record import Turn
    from proxy_core.secrets import Redactor
    from proxy_core.store import TurnStore

    store = TurnStore()
    journal = Journal.open(tmp_path / "j.sqlite3", Redactor(), store)
    turn = Turn(id="turn_pair", session_id="ses_pair", model="m", route="m", stream=True,
                request={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    store.add(turn)
    with mock.patch.object(journal_db.RequestWriter, "write",
                           side_effect=sqlite3.OperationalError("database or disk is full")):
        journal.save(turn)
    assert journal.turn("turn_pair") is None  # not the row without its request
    assert journal.status()["failed_writes"] == 1

    journal.save(Turn(id="turn_next", session_id="ses_pair", model="m", route="m",
                      stream=True, request={"model": "m", "messages": []}))
    record = journal.turn("turn_pair")  # written again once writes work
    assert record is not None and record["request"] == turn.request
    journal.close()
