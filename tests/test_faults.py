"""Faults: the proxy killed mid-stream, its journal's disk full or read-only, upstreams
that reset connections, send garbage or trickle a byte at a time.

Real servers on 127.0.0.1 and real clients throughout. The journal faults
are produced two ways: a real operating-system limit on `switchboard serve`
(a file-size limit: writes past it fail like a full disk), and SQLite's own
switches on the journal's connection (`max_page_count` gives SQLite's "disk
full", `query_only` its "read-only database") — the same errors a full or
read-only file system produces, without needing root to mount one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from fault_support import (
    SSE_HEAD, Pause, RawUpstream, Reset, ServeProcess, Trickle, finish_events,
    raw_upstream_config, text_event,
)
from proxy_core.app import SwitchboardProxy
from proxy_core.journal import UNFINISHED_ERROR, UNFINISHED_STATUS
from support import (
    CHAT_PATH, UPSTREAM_KEY_ENV, FakeUpstream, Hang, api_turn, api_turns,
    assert_openai_error, chat_body, content_of, openai_config, sse, stream_chat, stream_errors,
    text_chunk, wait_until,
)


def with_journal(toml_text: str, journal: Path) -> str:
    return toml_text.replace("port = 0", f"port = 0\njournal = {json.dumps(str(journal))}", 1)


# -- kill -9 and restart ---------------------------------------------------------------

async def test_kill_9_mid_stream_then_restart_marks_the_turn_unfinished(
        tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    journal = tmp_path / "journal.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(with_journal(openai_config(fake_upstream.base_url, first_token_timeout=60,
                                                 idle_timeout=60), journal))
    env = {UPSTREAM_KEY_ENV: "sk-test-restart-key-000000000"}
    first = await ServeProcess.start(config, env)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(2):
                _, payloads = await stream_chat(client, first.base_url, chat_body(f"turn {i}"))
                assert content_of(payloads) == "Hello world"
            done = [t["id"] for t in await api_turns(client, first.base_url)]
            fake_upstream.script(sse(text_chunk("half an ans"), Hang(), done=False))
            async with client.stream("POST", first.base_url + CHAT_PATH,
                                     json=chat_body("in flight")) as response:
                lines = response.aiter_lines()  # kept: a dropped one closes the stream
                async with asyncio.timeout(5):
                    async for line in lines:
                        if "half an ans" in line:
                            break
                # The heartbeat checkpoints the partial answer within about a second.
                await wait_until(lambda: journal_text(journal, "in flight") == "half an ans",
                                 timeout=5, what="the partial answer checkpointed")
                await first.kill()
    finally:
        await first.kill()

    with sqlite3.connect(journal) as conn:  # intact, and the live turn is on disk as live
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        states = dict(conn.execute("SELECT id, state FROM turns").fetchall())
    assert len(states) == 3 and [states[i] for i in done] == ["finished", "finished"]
    (in_flight,) = set(states) - set(done)
    assert states[in_flight] == "live"

    second = await ServeProcess.start(config, env)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            turns = {t["id"]: t for t in await api_turns(client, second.base_url)}
            assert set(turns) == set(states)
            for turn_id in done:
                assert turns[turn_id]["state"] == "finished"
                assert turns[turn_id]["text"] == "Hello world"
            lost = await api_turn(client, second.base_url, in_flight)
            assert lost["state"] == "failed" and lost["error"] == UNFINISHED_ERROR
            assert lost["status"] == UNFINISHED_STATUS
            assert lost["request"]["messages"][-1]["content"] == "in flight"
            assert lost["text"] == "half an ans"  # what it had produced survives the kill
            assert all(a["outcome"] != "live" for a in lost["attempts"])
            assert lost["finished_at"] is not None and lost["finished_at"] >= lost["started_at"]
            response, payloads = await stream_chat(client, second.base_url, chat_body("after"))
            assert content_of(payloads) == "Hello world"
        assert await second.terminate() == 0
    finally:
        await second.kill()
    assert "still in flight when Switchboard last stopped" in second.log
    with sqlite3.connect(journal) as conn:
        assert conn.execute("SELECT count(*) FROM turns WHERE state = 'live'").fetchone()[0] == 0


def journal_text(path: Path, prompt: str) -> str | None:
    """The recorded text of the turn whose last message is `prompt`, read from the file."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT t.data, r.request FROM turns t JOIN requests r"
                            " ON r.id = t.id").fetchall()
    for data, request in rows:
        if json.loads(request)["messages"][-1]["content"] == prompt:
            return json.loads(data).get("text")
    return None


# -- the journal's disk --------------------------------------------------------------------

JOURNAL_LOGGER = "proxy_core.journal"


def loud_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == JOURNAL_LOGGER and text in r.getMessage()]


def journal_ids(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT id, state FROM turns").fetchall())


@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
async def test_journal_write_failures_keep_the_proxy_serving_and_are_caught_up(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient,
        caplog: pytest.LogCaptureFixture, fault: str) -> None:
    caplog.set_level(logging.INFO, logger=JOURNAL_LOGGER)
    journal = proxy.journal
    assert journal is not None
    response, payloads = await stream_chat(client, proxy.base_url, chat_body("before"))
    assert content_of(payloads) == "Hello world"
    if fault == "disk-full":  # SQLite may not grow the file by one more page
        journal.settle()
        pages = journal.conn.execute("PRAGMA page_count").fetchone()[0]
        journal.conn.execute(f"PRAGMA max_page_count = {pages}")
        # ...and the free room left in its pages is filled, so that no write fits.
        journal.conn.execute("CREATE TABLE filler (x BLOB)")
        size = 4096
        while size:
            try:
                journal.conn.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))
            except sqlite3.OperationalError:
                size //= 2
    else:
        journal.conn.execute("PRAGMA query_only = ON")

    # Turns big enough to need new pages go on as if nothing happened.
    for i in range(4):
        response, payloads = await stream_chat(client, proxy.base_url,
                                               chat_body(f"during {i} " + "x" * 30_000))
        assert response.status_code == 200 and content_of(payloads) == "Hello world"
    status = journal.status()
    assert not status["ok"] and status["failed_writes"] >= 4
    assert status["unsaved_turns"] == 4 and status["lost_turns"] == 0
    expected = "full" if fault == "disk-full" else "readonly"
    assert expected in status["error"]
    loud = loud_lines(caplog, "JOURNAL NOT WRITING")
    assert len(loud) == 1 and loud[0].levelno == logging.ERROR  # once per streak
    assert len(journal_ids(proxy.config.proxy.journal)) == 1
    turns = await api_turns(client, proxy.base_url)  # the API still shows them all
    assert [t["state"] for t in turns] == ["finished"] * 5

    # Space again: the next write succeeds and the kept turns follow it to disk.
    if fault == "disk-full":
        journal.conn.execute("PRAGMA max_page_count = 1073741823")
    else:
        journal.conn.execute("PRAGMA query_only = OFF")
    response, payloads = await stream_chat(client, proxy.base_url, chat_body("after"))
    assert content_of(payloads) == "Hello world"
    await wait_until(lambda: journal.status()["ok"] and len(
        journal_ids(proxy.config.proxy.journal)) == 6, what="the kept turns written")
    on_disk = journal_ids(proxy.config.proxy.journal)
    assert set(on_disk.values()) == {"finished"}
    assert {t["id"] for t in await api_turns(client, proxy.base_url)} == set(on_disk)
    detail = journal.turn(turns[2]["id"])
    assert detail is not None and detail["request"]["messages"][-1]["content"].startswith("during 1")
    recovered = loud_lines(caplog, "writing again")
    assert len(recovered) == 1 and "failed writes" in recovered[0].getMessage()
    assert len(loud_lines(caplog, "JOURNAL NOT WRITING")) == 1


async def test_a_real_file_size_limit_on_the_journal_keeps_serve_serving(
        tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """The OS refuses to grow the journal (EFBIG, like a full disk): serve logs it once, loudly,
    and every turn is still answered."""
    journal = tmp_path / "journal.sqlite3"
    config = tmp_path / "config.toml"
    config.write_text(with_journal(openai_config(fake_upstream.base_url), journal))
    limit = 256 * 1024

    def small_files() -> None:  # in the child: files may not grow past `limit`
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    served = await ServeProcess.start(config, {UPSTREAM_KEY_ENV: "sk-test-fsize-key-0000000"},
                                      preexec=small_files)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for i in range(12):  # ~40 KB of history per turn: the WAL hits the limit
                response, payloads = await stream_chat(
                    client, served.base_url, chat_body(f"turn {i} " + "y" * 40_000))
                assert response.status_code == 200 and content_of(payloads) == "Hello world"
            turns = await api_turns(client, served.base_url)
            assert len(turns) == 12 and {t["state"] for t in turns} == {"finished"}
        assert await served.terminate() == 0
    finally:
        await served.kill()
    assert served.log.count("JOURNAL NOT WRITING") == 1, served.log[-3000:]
    assert "Traceback" not in served.log
    with sqlite3.connect(journal) as conn:  # what was written is intact
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        written = conn.execute("SELECT count(*) FROM turns").fetchone()[0]
    assert 0 < written < 12


# -- upstreams that misbehave at the TCP level -------------------------------------------

@pytest.fixture
async def raw_upstream() -> Any:
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.close()


async def raw_proxy(proxy_factory: Any, upstream: RawUpstream, **watchdog: Any) -> SwitchboardProxy:
    return await proxy_factory(raw_upstream_config(upstream.base_url, **watchdog))


async def test_reset_before_any_output_is_retried_transparently(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await raw_proxy(proxy_factory, raw_upstream, max_attempts=3)
    raw_upstream.scripts = [[Reset()], [SSE_HEAD, Reset()]]  # no answer; headers only
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "fine"
    assert stream_errors(payloads) == []
    turn = (await api_turns(client, proxy.base_url))[-1]
    assert [a["outcome"] for a in turn["attempts"]] == ["failed", "failed", "ok"]
    assert all("raw" in a["error"] for a in turn["attempts"][:2])


async def test_reset_after_output_ends_the_stream_with_a_clear_error(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await raw_proxy(proxy_factory, raw_upstream)
    raw_upstream.scripts = [[SSE_HEAD, text_event("partial "), Pause(0.05), Reset()]]
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "partial "
    (error,) = stream_errors(payloads)
    assert error["code"] == "upstream_unreachable" and payloads[-1] == "[DONE]"
    assert (await api_turns(client, proxy.base_url))[-1]["state"] == "failed"
    response, payloads = await stream_chat(client, proxy.base_url)  # and it carries on
    assert content_of(payloads) == "fine"


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\xfe not http at all\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nnot a chunk size\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
], ids=["not-http", "bad-chunking", "another-protocol"])
async def test_garbage_instead_of_http_is_an_upstream_protocol_error(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient,
        garbage: bytes) -> None:
    proxy = await raw_proxy(proxy_factory, raw_upstream)
    raw_upstream.scripts = [[garbage], [garbage]]
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
    error = assert_openai_error(response, 502)
    assert error["code"] in ("upstream_protocol_error", "upstream_unreachable"), error
    assert raw_upstream.requests == 2  # retried once (max_attempts = 2), then given up
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "fine"


async def test_garbage_after_output_ends_the_stream_with_an_error(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    # A chunk size that is not hex, after good events, on a connection the host
    # keeps open. aiohttp's C parser drops the connection but never fails the
    # body it was reading (its bug), so what ends the attempt is the watchdog.
    proxy = await raw_proxy(proxy_factory, raw_upstream, first_token_timeout=20,
                            idle_timeout=1)
    raw_upstream.scripts = [[SSE_HEAD, text_event("ok "), Pause(0.05),
                             b"\xde\xad\xbe\xef garbage\r\n\r\n", Pause(30)]]
    async with asyncio.timeout(5):
        response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "ok "
    (error,) = stream_errors(payloads)
    assert error["code"] in ("upstream_protocol_error", "upstream_timeout"), error
    assert payloads[-1] == "[DONE]"
    assert (await api_turns(client, proxy.base_url))[-1]["state"] == "failed"


async def test_an_upstream_trickling_one_byte_a_second_times_out_and_is_closed(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """A byte a second is never a whole event: the watchdog sees no progress and gives up."""
    proxy = await raw_proxy(proxy_factory, raw_upstream, first_token_timeout=1.5,
                            idle_timeout=1.5, max_attempts=1)
    raw_upstream.scripts = [[SSE_HEAD, Trickle(text_event("never arrives"), 1.0)]]
    response = await client.post(proxy.base_url + CHAT_PATH, json=chat_body())
    error = assert_openai_error(response, 504)
    assert error["code"] == "upstream_timeout" and "first token" in error["message"]
    await wait_until(lambda: raw_upstream.peer_closed == 1, timeout=4,
                     what="the trickling connection closed by the proxy")


async def test_trickling_headers_time_out_as_no_first_token(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await raw_proxy(proxy_factory, raw_upstream, first_token_timeout=0.6,
                            idle_timeout=0.6, max_attempts=2)
    raw_upstream.scripts = [[Trickle(SSE_HEAD, 0.1)]]  # then the default answer
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "fine"
    turn = (await api_turns(client, proxy.base_url))[-1]
    first, second = turn["attempts"]
    assert "first token" in first["error"] and second["outcome"] == "ok"
    await wait_until(lambda: raw_upstream.peer_closed == 1, timeout=4,
                     what="the trickling connection closed")


async def test_trickle_after_output_is_a_mid_stream_stall(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await raw_proxy(proxy_factory, raw_upstream, first_token_timeout=0.6,
                            idle_timeout=0.6, max_attempts=2)
    raw_upstream.scripts = [[SSE_HEAD, text_event("started "),
                             Trickle(text_event("slowly") + finish_events(), 0.1)]]
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "started "
    (error,) = stream_errors(payloads)
    assert error["code"] == "upstream_timeout" and payloads[-1] == "[DONE]"
    assert raw_upstream.requests == 1  # past the commit boundary: no retry
    await wait_until(lambda: raw_upstream.peer_closed == 1, timeout=4,
                     what="the trickling connection closed")


async def test_a_slow_but_steady_upstream_is_not_a_stall(
        raw_upstream: RawUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """Whole events at a slow pace are progress: only silence counts against the watchdog."""
    # Six gaps of 0.25 s: 1.5 s in all, past one timeout, each well inside one (the
    # margin left for a loaded machine's scheduling delays; 0.3 s of it once was not).
    proxy = await raw_proxy(proxy_factory, raw_upstream, first_token_timeout=1.0,
                            idle_timeout=1.0)
    steps: list[Any] = [SSE_HEAD]
    for i in range(6):
        steps += [Pause(0.25), text_event(f"{i} ")]
    raw_upstream.scripts = [steps + [finish_events()]]
    response, payloads = await stream_chat(client, proxy.base_url)
    assert content_of(payloads) == "0 1 2 3 4 5 " and stream_errors(payloads) == []


async def test_a_tool_call_the_journal_cannot_remember_is_still_relayed(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    from support import finish_chunk, tool_call_chunk
    journal = proxy.journal
    assert journal is not None
    journal.conn.execute("PRAGMA query_only = ON")
    fake_upstream.script(sse(tool_call_chunk(0, id="call_1", name="read", arguments="{}"),
                             finish_chunk("tool_calls")))
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and payloads[-1] == "[DONE]"
    assert stream_errors(payloads) == []
    status = journal.status()
    assert status["ok"] is False and status["unsaved_turns"] == 1
    assert status["path"] == str(proxy.config.proxy.journal)
    assert proxy.memory.recall("call_1") is not None  # remembered in memory meanwhile
