"""The front: aiohttp's server, as Switchboard configures it.

What the hand-written front door used to test and still matters, now
against aiohttp's server over real sockets on 127.0.0.1: bodies over the
limit get a 413 in OpenAI's error shape (declared or chunked, small or far
beyond what the sockets buffer), keep-alive connections carry several
chat completions, oversized headers are refused and the proxy serves on,
and stopping the proxy mid-stream ends the stream and fails the turn.
(Host/Origin: test_security.py; a client leaving mid-turn:
test_proxy_openai.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from typing import Any

import httpx

from proxy_core.app import SwitchboardProxy
from support import (
    CHAT_PATH, FakeUpstream, Hang, assert_openai_error, chat_body, content_of, openai_config,
    sse, stream_chat, text_chunk, wait_until,
)

#: Safety limit for any one read: a hang fails the test instead of stalling the suite.
LIMIT = 10.0


def journal_states(proxy: SwitchboardProxy) -> dict[str, str]:
    with sqlite3.connect(proxy.config.proxy.journal) as conn:
        return dict(conn.execute("SELECT id, state FROM turns").fetchall())


async def good_chat(client: httpx.AsyncClient, proxy: SwitchboardProxy) -> None:
    response, payloads = await stream_chat(client, proxy.base_url)
    assert response.status_code == 200 and content_of(payloads) == "Hello world"


async def raw_exchange(proxy: SwitchboardProxy, request: bytes) -> bytes:
    """Send raw bytes on a fresh connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(LIMIT):
            return await reader.read()
    finally:
        writer.close()


def post_head(length: int | None, extra: str = "") -> bytes:
    framing = (f"Content-Length: {length}\r\n" if length is not None
               else "Transfer-Encoding: chunked\r\n")
    return (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{framing}{extra}Connection: close\r\n\r\n").encode()


async def test_bodies_over_the_limit_get_413_declared_or_chunked(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, max_body_mb=0.001))
    limit = int(0.001 * 1024 * 1024)
    big = json.dumps(chat_body("x" * 4 * limit)).encode()

    response = await client.post(proxy.base_url + CHAT_PATH, content=big,
                                 headers={"Content-Type": "application/json"})
    error = assert_openai_error(response, 413)
    assert error["code"] == "request_too_large" and "max_body_mb" in error["message"]

    async def pieces() -> Any:  # no length: sent chunked
        for i in range(0, len(big), 500):
            yield big[i:i + 500]

    response = await client.post(proxy.base_url + CHAT_PATH, content=pieces(),
                                 headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert assert_openai_error(response, 413)["code"] == "request_too_large"

    assert fake_upstream.requests == []
    small = await proxy_factory(openai_config(fake_upstream.base_url))
    await good_chat(client, small)  # under the limit: served


async def test_a_huge_body_gets_413_not_a_reset(
        fake_upstream: FakeUpstream, proxy_factory: Any, client: httpx.AsyncClient) -> None:
    """A body far beyond what the sockets buffer: the client finishes sending, then reads 413."""
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, max_body_mb=0.001))
    big = json.dumps(chat_body("x" * 16 * 1024 * 1024)).encode()
    response = await client.post(proxy.base_url + CHAT_PATH, content=big,
                                 headers={"Content-Type": "application/json"})
    assert assert_openai_error(response, 413)["code"] == "request_too_large"
    assert fake_upstream.requests == []


async def test_chat_completions_share_one_keep_alive_connection(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy) -> None:
    body = json.dumps(chat_body()).encode()
    request = (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for _ in range(3):
            writer.write(request)
            async with asyncio.timeout(LIMIT):
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 "), head
                assert b"transfer-encoding: chunked" in head.lower()
                body_bytes = await reader.readuntil(b"\r\n0\r\n\r\n")  # the last chunk
        assert b"data: [DONE]" in body_bytes
    finally:
        writer.close()
    assert len(fake_upstream.chat_requests) == 3
    assert len(proxy.store.recent()) == 3


async def test_oversized_headers_are_refused_and_the_proxy_serves_on(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    answer = await raw_exchange(proxy, post_head(2, "X-Big: " + "a" * 64 * 1024 + "\r\n") + b"{}")
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]  # 400 or 431
    assert fake_upstream.requests == []
    await good_chat(client, proxy)


async def test_malformed_http_gets_400_and_the_proxy_serves_on(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, client: httpx.AsyncClient) -> None:
    answer = await raw_exchange(proxy, b"POST /v1/chat/completions HTTP/1.1\r\nHost 127\r\n\r\n")
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    assert fake_upstream.requests == []
    await good_chat(client, proxy)


async def test_stop_during_a_stream_ends_it_and_fails_the_turn(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy) -> None:
    fake_upstream.script(sse(text_chunk("partial"), Hang(), done=False))
    body = json.dumps(chat_body()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(post_head(len(body)) + body)
        async with asyncio.timeout(LIMIT):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            first = await reader.readuntil(b"\n\n")
        assert b"partial" in first
        (turn,) = proxy.store.recent()
        assert turn.state == "live"

        async with asyncio.timeout(LIMIT):
            await proxy.stop()
        async with asyncio.timeout(LIMIT):  # the client's stream ends: no hang
            try:
                rest = await reader.read()
            except ConnectionResetError:
                rest = b""
    finally:
        writer.close()
    assert not rest.endswith(b"0\r\n\r\n")  # cut, not passed off as complete
    assert turn.state == "failed", turn.state
    assert journal_states(proxy) == {turn.id: "failed"}
    await wait_until(lambda: fake_upstream.disconnects == 1, what="the upstream request to end")
