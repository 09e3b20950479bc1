"""The front door (`proxy_core.fastfront`): chat completions on the lean path, the rest by aiohttp.

Every test talks raw HTTP/1.1 over real sockets on 127.0.0.1, so that what
crosses the wire — status lines, framing, which requests share a
connection, when the server closes it — is checked byte for byte. Which
server answered is told by the `Server` header: the fast path sends
`Server: switchboard`, aiohttp its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop
from multidict import CIMultiDict

from proxy_core import fastfront
from proxy_core.app import SwitchboardProxy
from proxy_core.config import parse_config
from proxy_core.control import PREFIX
from support import (
    CHAT_PATH, MODEL, FakeUpstream, Hang, WaitFor, chat_body, finish_chunk, openai_config,
    settled_turn, sse, text_chunk, wait_until,
)

#: Safety limit for any one read: a hang fails the test instead of stalling the suite.
LIMIT = 10.0
HEALTH_PATH = PREFIX + "/health"


# -- a raw HTTP/1.1 client -----------------------------------------------------------

@dataclass
class Answer:
    """One HTTP response as it came off the wire."""

    version: str
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes = b""
    #: The chunk payloads of a chunked body, in order (None: not chunked).
    chunks: list[bytes] | None = None
    framing: str = ""  # "chunked", "length", "close" or "none"
    raw_head: bytes = b""

    @property
    def server(self) -> str:
        return self.headers.get("Server", "")

    @property
    def fast(self) -> bool:
        """Whether the fast path (not aiohttp) answered."""
        return self.server == "switchboard"

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[Any]:
        """The SSE `data:` payloads (JSON, or "[DONE]"); comments skipped."""
        out: list[Any] = []
        for block in self.body.decode().split("\n\n"):
            for line in block.split("\n"):
                if line.startswith("data:"):
                    data = line[5:].strip()
                    out.append(data if data == "[DONE]" else json.loads(data))
        return out

    def text(self) -> str:
        return "".join(e["choices"][0]["delta"].get("content") or ""
                       for e in self.events() if isinstance(e, dict) and e.get("choices"))

    def error(self, status: int) -> dict[str, Any]:
        """Check an OpenAI-shaped JSON error with this status; return `error`."""
        assert self.status == status, (self.status, self.body)
        assert self.headers["Content-Type"].startswith("application/json"), self.headers
        error = self.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and error["type"], error
        assert "code" in error, error
        return error


class Conn:
    """One raw TCP connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 port: int) -> None:
        self.reader = reader
        self.writer = writer
        self.port = port

    @classmethod
    async def open(cls, proxy: SwitchboardProxy, *, rcvbuf: int | None = None,
                   limit: int = 2 ** 16) -> Conn:
        sock = None
        if rcvbuf is not None:
            # Set before connecting, so the window the server sees is small from the start.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=limit)
        return cls(reader, writer, proxy.port)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def request(self, method: str, path: str, body: bytes | dict[str, Any] | None = None, *,
                version: str = "1.1", headers: dict[str, str] | None = None,
                length: bool = True) -> bytes:
        """The bytes of one request (Host and, for a body, Content-Length added)."""
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        fields = {"Host": f"127.0.0.1:{self.port}"}
        if body is not None:
            fields["Content-Type"] = "application/json"
            if length:
                fields["Content-Length"] = str(len(body))
        fields.update(headers or {})
        head = f"{method} {path} HTTP/{version}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fields.items() if v is not None) + "\r\n"
        return head.encode("latin-1") + (body or b"")

    async def answer(self, *, head_only: bool = False, method: str = "POST") -> Answer:
        """Read one response, strictly by its framing (a framing error fails the read)."""
        async with asyncio.timeout(LIMIT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
            version, status, *reason = status_line.split(" ", 2)
            assert version.startswith("HTTP/"), status_line
            headers: CIMultiDict[str] = CIMultiDict()
            for line in lines:
                name, sep, value = line.partition(":")
                assert sep and name == name.strip(), f"bad header line {line!r}"
                headers.add(name, value.strip())
            answer = Answer(version, int(status), reason[0] if reason else "", headers,
                            raw_head=head)
            if head_only or answer.status < 200 or answer.status in (204, 304) or method == "HEAD":
                answer.framing = "none"
                return answer
            if "chunked" in headers.get("Transfer-Encoding", "").lower():
                assert "Content-Length" not in headers, headers
                answer.framing, answer.chunks = "chunked", []
                while True:
                    size_line = await self.reader.readuntil(b"\r\n")
                    size = int(size_line[:-2].split(b";")[0], 16)
                    if size == 0:
                        trailer = await self.reader.readuntil(b"\r\n")
                        assert trailer == b"\r\n", f"trailers after the last chunk: {trailer!r}"
                        break
                    data = await self.reader.readexactly(size + 2)
                    assert data.endswith(b"\r\n"), "a chunk not followed by CRLF"
                    answer.chunks.append(data[:-2])
                answer.body = b"".join(answer.chunks)
            elif "Content-Length" in headers:
                answer.framing = "length"
                answer.body = await self.reader.readexactly(int(headers["Content-Length"]))
            else:
                answer.framing = "close"
                answer.body = await self.reader.read()
            return answer

    async def closed_by_server(self) -> bool:
        """Whether the server ends the connection cleanly (EOF, not a reset), sending nothing more."""
        async with asyncio.timeout(LIMIT):
            rest = await self.reader.read()
        assert rest == b"", f"unexpected bytes after the answer: {rest[:200]!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


class Conns:
    """`await conns(proxy, rcvbuf=None)` opens a raw connection; `close()` closes them all."""

    def __init__(self) -> None:
        self.opened: list[Conn] = []

    async def __call__(self, proxy: SwitchboardProxy, **kwargs: Any) -> Conn:
        conn = await Conn.open(proxy, **kwargs)
        self.opened.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self.opened:
            await conn.close()


@pytest.fixture
async def conns(proxy_factory: Any) -> AsyncIterator[Conns]:
    """Raw connections, closed at teardown (before the proxies stop)."""
    opened = Conns()
    yield opened
    await opened.close()


def assert_stream(answer: Answer, text: str = "Hello world") -> None:
    """A whole, well-formed chat completion event stream."""
    assert answer.status == 200, (answer.status, answer.body)
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    events = answer.events()
    assert events and events[-1] == "[DONE]", events[-3:]
    assert answer.text() == text
    assert [e["choices"][0]["finish_reason"] for e in events
            if isinstance(e, dict) and e.get("choices") and e["choices"][0]["finish_reason"]] \
        == ["stop"]


def assert_completion(answer: Answer, text: str = "Hello world") -> None:
    assert answer.status == 200, (answer.status, answer.body)
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == text


async def good_chat(conns: Conns, proxy: SwitchboardProxy) -> None:
    """The proxy still serves: a fresh connection gets a whole fast-path stream."""
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    answer = await conn.answer()
    assert answer.fast
    assert_stream(answer)


def journal_states(proxy: SwitchboardProxy) -> dict[str, str]:
    with sqlite3.connect(proxy.config.proxy.journal) as db:
        return dict(db.execute("SELECT id, state FROM turns").fetchall())


# -- hand-over and keep-alive -----------------------------------------------------------

async def test_one_connection_is_handed_to_aiohttp_before_and_after_a_fast_request(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    # Hand-over at the very first request: aiohttp serves the connection from then on.
    conn = await conns(proxy)
    await conn.send(conn.request("GET", "/v1/models"))
    models = await conn.answer(method="GET")
    assert models.status == 200 and not models.fast and "aiohttp" in models.server
    assert [m["id"] for m in models.json()["data"]] == [MODEL]
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    chat = await conn.answer()
    assert not chat.fast  # the connection is aiohttp's now
    assert_stream(chat)
    await conn.send(conn.request("GET", HEALTH_PATH))
    health = await conn.answer(method="GET")
    assert health.status == 200 and not health.fast and health.json()

    # Hand-over after a fast-path request on the same connection.
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    chat = await conn.answer()
    assert chat.fast
    assert_stream(chat)
    await conn.send(conn.request("GET", HEALTH_PATH))
    health = await conn.answer(method="GET")
    assert health.status == 200 and not health.fast and health.json()
    await conn.send(conn.request("GET", "/v1/models"))
    models = await conn.answer(method="GET")
    assert models.status == 200 and [m["id"] for m in models.json()["data"]] == [MODEL]
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(stream=False)))
    chat = await conn.answer()
    assert not chat.fast
    assert_completion(chat)
    assert len(fake_upstream.chat_requests) == 3


async def test_chat_completions_share_one_keep_alive_connection(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    conn = await conns(proxy)
    for stream in (True, False, True, False):
        await conn.send(conn.request("POST", CHAT_PATH, chat_body(stream=stream)))
        answer = await conn.answer()
        assert answer.fast and answer.version == "HTTP/1.1"
        assert "close" not in answer.headers.get("Connection", "").lower()
        if stream:
            assert answer.framing == "chunked" and answer.chunks
            assert all(answer.chunks), "an empty chunk before the last one ends the body early"
            assert_stream(answer)
        else:
            assert answer.framing == "length"
            assert int(answer.headers["Content-Length"]) == len(answer.body)
            assert_completion(answer)
    assert len(fake_upstream.chat_requests) == 4
    # The connection is still open and in step: nothing stray was left to read.
    await conn.send(conn.request("GET", HEALTH_PATH))
    assert (await conn.answer(method="GET")).status == 200


# -- pipelining ---------------------------------------------------------------------------

async def test_a_request_pipelined_behind_a_chat_completion_gets_400_and_the_connection_closes(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns,
        client: httpx.AsyncClient) -> None:
    release = asyncio.Event()
    fake_upstream.script(sse(WaitFor(release), text_chunk("late"), finish_chunk()))
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    await wait_until(lambda: fake_upstream.chat_requests, what="the first request upstream")
    await conn.send(conn.request("GET", "/v1/models"))  # before the first answer has begun
    answer = await conn.answer()
    error = answer.error(400)
    assert answer.fast and "pipelined" in error["message"]
    assert await conn.closed_by_server()
    release.set()
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed"  # its client is gone
    await good_chat(conns, proxy)


async def test_two_requests_in_one_write_are_refused_not_served_at_once(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    conn = await conns(proxy)
    first = conn.request("POST", CHAT_PATH, chat_body("first"))
    await conn.send(first + conn.request("POST", CHAT_PATH, chat_body("second")))
    answer = await conn.answer()
    error = answer.error(400)
    assert answer.fast and "pipelined" in error["message"]
    assert await conn.closed_by_server()
    # The second request never became a turn (the first one may have, and failed).
    await wait_until(lambda: all(t.state != "live" for t in proxy.store.recent()),
                     what="turns to settle")
    turns = proxy.store.recent()
    assert len(turns) <= 1 and all(t.state == "failed" for t in turns), turns
    asked = [r.body["messages"][-1]["content"] for r in fake_upstream.chat_requests]
    assert "second" not in asked, asked
    await good_chat(conns, proxy)


async def test_a_request_pipelined_into_a_running_stream_cuts_the_stream_without_a_stray_head(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns,
        client: httpx.AsyncClient) -> None:
    release = asyncio.Event()
    fake_upstream.script(sse(text_chunk("first"), WaitFor(release), text_chunk(" second"),
                             finish_chunk()))
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    async with asyncio.timeout(LIMIT):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        size = int((await conn.reader.readuntil(b"\r\n"))[:-2], 16)
        assert b"first" in await conn.reader.readexactly(size + 2)
    await conn.send(conn.request("GET", "/v1/models"))
    async with asyncio.timeout(LIMIT):
        try:
            rest = await conn.reader.read()
        except ConnectionResetError:
            rest = b""
    # A status line in the middle of a chunked body would be garbage to the client:
    # the stream is cut instead (no last chunk), and the connection closed.
    assert b"HTTP/1.1" not in rest and not rest.endswith(b"0\r\n\r\n"), rest
    release.set()
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed"
    await good_chat(conns, proxy)


# -- what aiohttp serves ----------------------------------------------------------------

async def test_http_1_0_chat_request_is_served_by_aiohttp(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(), version="1.0"))
    answer = await conn.answer()
    assert not answer.fast and answer.framing == "close"
    assert_stream(answer)
    assert await conn.closed_by_server()

    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(stream=False), version="1.0"))
    answer = await conn.answer()
    assert not answer.fast
    assert_completion(answer)
    assert len(fake_upstream.chat_requests) == 2


async def test_expect_100_continue_chat_request_works(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    conn = await conns(proxy)
    request = conn.request("POST", CHAT_PATH, chat_body(), headers={"Expect": "100-continue"})
    head, _, body = request.partition(b"\r\n\r\n")
    await conn.send(head + b"\r\n\r\n")
    interim = await conn.answer(head_only=True)
    assert interim.status == 100, interim
    await conn.send(body)
    answer = await conn.answer()
    assert not answer.fast
    assert_stream(answer)
    # Keep-alive goes on, on aiohttp's side.
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(stream=False)))
    assert_completion(await conn.answer())


# -- bad input on the fast path -----------------------------------------------------------

def _chat_head(extra: str = "") -> bytes:
    return (f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").encode()


MALFORMED = {
    "garbage": b"\x00\x01\x02 not http at all\r\n\r\n",
    "bad version": b"POST /v1/chat/completions HTTP/9x\r\nHost: 127.0.0.1\r\n\r\n",
    "bad Content-Length": _chat_head("Content-Length: twelve\r\n") + b"{}",
    "two Content-Lengths": _chat_head("Content-Length: 2\r\nContent-Length: 3\r\n") + b"{}",
    "Content-Length and chunked": _chat_head(
        "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n") + b"2\r\n{}\r\n0\r\n\r\n",
    "bad chunk size": _chat_head("Transfer-Encoding: chunked\r\n") + b"zz\r\n{}\r\n0\r\n\r\n",
    "space in header name": _chat_head("Content Type: application/json\r\n"),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_gets_400_json_and_the_connection_closes(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns, data: bytes) -> None:
    conn = await conns(proxy)
    await conn.send(data)
    answer = await conn.answer()
    error = answer.error(400)
    assert answer.fast and "malformed HTTP request" in error["message"], error
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_request"
    assert answer.headers["Connection"].lower() == "close"
    assert await conn.closed_by_server()
    assert fake_upstream.chat_requests == []
    await good_chat(conns, proxy)


async def test_body_over_the_limit_gets_413_with_content_length_or_chunked(
        fake_upstream: FakeUpstream, proxy_factory: Any, conns: Conns) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, max_body_mb=0.001))
    limit = int(0.001 * 1024 * 1024)
    big = json.dumps(chat_body("x" * 4 * limit)).encode()

    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, big))
    answer = await conn.answer()
    error = answer.error(413)
    assert answer.fast and error["code"] == "request_too_large" and "max_body_mb" in error["message"]
    assert answer.headers["Connection"].lower() == "close"
    assert await conn.closed_by_server()

    conn = await conns(proxy)
    head = conn.request("POST", CHAT_PATH, b"", length=False,
                        headers={"Transfer-Encoding": "chunked"})
    await conn.send(head)
    for piece in (big[i:i + 500] for i in range(0, len(big), 500)):
        await conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
    await conn.send(b"0\r\n\r\n")
    answer = await conn.answer()
    error = answer.error(413)
    assert answer.fast and error["code"] == "request_too_large"
    assert await conn.closed_by_server()

    assert fake_upstream.requests == []
    await good_chat(conns, proxy)  # a body under the limit is fine
    assert len(fake_upstream.chat_requests) == 1


async def test_a_huge_body_gets_413_not_a_reset(
        fake_upstream: FakeUpstream, proxy_factory: Any, conns: Conns) -> None:
    """A body far beyond what the sockets buffer: the client finishes sending, then reads 413."""
    proxy = await proxy_factory(openai_config(fake_upstream.base_url, max_body_mb=0.001))
    big = json.dumps(chat_body("x" * 16 * 1024 * 1024)).encode()
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, big))
    answer = await conn.answer()
    assert answer.error(413)["code"] == "request_too_large"
    assert fake_upstream.requests == []
    await good_chat(conns, proxy)


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"Host": "evil.example:4141"},
                                     {"Origin": "http://evil.example"}], ids=str)
async def test_foreign_host_or_origin_gets_403_on_the_fast_path(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns,
        headers: dict[str, str]) -> None:
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(), headers=headers))
    answer = await conn.answer()
    error = answer.error(403)
    assert answer.fast and error["code"] == "forbidden" and error["type"] == "forbidden"
    # The refusal answers the request; the connection stays usable.
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    assert_stream(await conn.answer())
    assert len(fake_upstream.chat_requests) == 1
    assert len(proxy.store) == 1


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:4141"])
async def test_loopback_origin_is_served_on_the_fast_path(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns, origin: str) -> None:
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(), headers={"Origin": origin}))
    answer = await conn.answer()
    assert answer.fast
    assert_stream(answer)


# -- framing --------------------------------------------------------------------------------

async def test_chunked_request_body_split_across_writes_is_served(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    body = json.dumps(chat_body("split me")).encode()
    conn = await conns(proxy)
    head = conn.request("POST", CHAT_PATH, b"", length=False,
                        headers={"Transfer-Encoding": "chunked"})
    pieces = [head[:20], head[20:]]
    for i in range(0, len(body), 37):
        piece = body[i:i + 37]
        frame = b"%x\r\n%s\r\n" % (len(piece), piece)
        pieces += [frame[:3], frame[3:]]  # a write boundary inside the size line too
    pieces += [b"0\r\n", b"\r\n"]
    for piece in pieces:
        await conn.send(piece)
        await asyncio.sleep(0.005)  # separate reads on the server side
    answer = await conn.answer()
    assert answer.fast
    assert_stream(answer)
    (seen,) = fake_upstream.chat_requests
    assert seen.body["messages"][-1]["content"] == "split me"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_connection_close_is_honoured(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns, stream: bool) -> None:
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body(stream=stream),
                                 headers={"Connection": "close"}))
    answer = await conn.answer()
    assert answer.fast
    assert answer.headers["Connection"].lower() == "close"
    (assert_stream if stream else assert_completion)(answer)
    assert await conn.closed_by_server()


async def test_idle_connections_are_swept_but_busy_and_fresh_ones_are_not(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    # Three connections: one served and left idle, one that stalled inside a
    # request head, one mid-answer (the upstream hangs). A sweep "75 s later"
    # closes the first two only; a sweep now closes nothing.
    idle = await conns(proxy)
    await idle.send(idle.request("POST", CHAT_PATH, chat_body()))
    assert_stream(await idle.answer())
    stalled = await conns(proxy)
    await stalled.send(b"POST " + CHAT_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    fake_upstream.script(sse(text_chunk("a"), Hang(), done=False))
    busy = await conns(proxy)
    await busy.send(busy.request("POST", CHAT_PATH, chat_body()))
    await wait_until(lambda: len(fake_upstream.chat_requests) == 2, what="the hanging request")
    await wait_until(lambda: len(proxy._doors) == 3, what="three open connections")
    loop = asyncio.get_running_loop()
    assert fastfront.close_idle(proxy._doors, loop.time()) == 0
    assert fastfront.close_idle(proxy._doors, loop.time() + fastfront.IDLE_TIMEOUT) == 2
    assert await idle.closed_by_server() and await stalled.closed_by_server()
    assert len(proxy._doors) == 1 and not next(iter(proxy._doors)).idle
    await good_chat(conns, proxy)


async def test_query_string_on_the_chat_path_is_served_and_a_longer_path_is_404(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH + "?x=1", chat_body()))
    answer = await conn.answer()
    assert answer.fast
    assert_stream(answer)

    await conn.send(conn.request("POST", CHAT_PATH + "X", chat_body()))
    answer = await conn.answer()
    error = answer.error(404)
    assert not answer.fast and CHAT_PATH + "X" in error["message"]
    assert len(fake_upstream.chat_requests) == 1


async def test_stream_answer_head(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    answer = await conn.answer()
    assert answer.raw_head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.headers["Content-Type"] == "text/event-stream"
    assert answer.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in answer.headers
    assert answer.headers.getall("Date") and answer.headers["Date"].endswith(" GMT")
    assert answer.fast
    assert_stream(answer)


# -- shutdown and back-pressure -----------------------------------------------------------

async def test_stop_during_a_fast_path_stream_ends_it_and_fails_the_turn(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    fake_upstream.script(sse(text_chunk("partial"), Hang(), done=False))
    conn = await conns(proxy)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    async with asyncio.timeout(LIMIT):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        first = await conn.reader.readuntil(b"\n\n")
    assert b"partial" in first
    (turn,) = proxy.store.recent()
    assert turn.state == "live"

    async with asyncio.timeout(LIMIT):
        await proxy.stop()
    async with asyncio.timeout(LIMIT):  # the client's stream ends: no hang
        try:
            rest = await conn.reader.read()
        except ConnectionResetError:
            rest = b""
    assert not rest.endswith(b"0\r\n\r\n")  # cut, not passed off as complete
    assert turn.state == "failed", turn.state
    assert journal_states(proxy) == {turn.id: "failed"}
    await wait_until(lambda: fake_upstream.disconnects == 1, what="the upstream request to end")


async def test_slow_reader_of_a_long_stream_gets_every_chunk(
        fake_upstream: FakeUpstream, proxy: SwitchboardProxy, conns: Conns) -> None:
    count = 6000
    pieces = [f"<{i:05d}:" + "y" * 1000 + ">" for i in range(count)]
    fake_upstream.script(sse(*(text_chunk(p) for p in pieces), finish_chunk()))
    conn = await conns(proxy, rcvbuf=4096)
    await conn.send(conn.request("POST", CHAT_PATH, chat_body()))
    # Not reading at first: the socket buffers fill and the server's transport
    # tells the front door to stop writing (pause_writing).
    await wait_until(lambda: any(door._write_paused for door in proxy._doors), timeout=30,
                     what="the server's writes to back up")
    # Then read a little at a time, with pauses: writing resumes and pauses again.
    data = bytearray()
    async with asyncio.timeout(60):
        while True:
            piece = await conn.reader.read(4096)
            if not piece:
                break
            data += piece
            if data.endswith(b"0\r\n\r\n"):
                break
            if len(data) < 1_000_000 and len(data) % 8 == 0:
                await asyncio.sleep(0.001)
    # Parse what arrived, strictly.
    reader = asyncio.StreamReader()
    reader.feed_data(bytes(data))
    reader.feed_eof()
    parsed = Conn(reader, conn.writer, conn.port)
    answer = await parsed.answer()
    assert answer.fast
    assert_stream(answer, "".join(pieces))
    assert await proxy_store_finished(proxy)


async def proxy_store_finished(proxy: SwitchboardProxy) -> bool:
    (turn,) = proxy.store.recent()
    await wait_until(lambda: turn.state != "live", what="the turn to settle")
    return turn.state == "finished"


# -- the same on uvloop ---------------------------------------------------------------
# Switchboard runs on uvloop (proxy_core.runner), whose transports are not asyncio's:
# hand-over (`set_protocol`), `write_eof`, flow control and abort are run there too.

async def _run_with_own_fixtures(test: Callable[..., Any], tmp_path: Path) -> None:
    """Run an async test of this module with this module's fixtures, built here (as in conftest)."""
    fake = FakeUpstream()
    await fake.start()
    running: list[SwitchboardProxy] = []

    async def proxy_factory(toml_text: str) -> SwitchboardProxy:
        config = parse_config(toml_text, "test.toml")
        settings = dataclasses.replace(config.proxy, journal=tmp_path / "journal.sqlite3")
        proxy = SwitchboardProxy(dataclasses.replace(config, proxy=settings), host="127.0.0.1",
                                 port=0, journal=True)
        await proxy.start()
        running.append(proxy)
        return proxy

    opened = Conns()
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            try:
                fixtures = {"fake_upstream": fake, "proxy_factory": proxy_factory,
                            "client": client, "conns": opened}
                wanted = inspect.signature(test).parameters
                if "proxy" in wanted:
                    fixtures["proxy"] = await proxy_factory(openai_config(fake.base_url))
                await test(**{name: fixtures[name] for name in wanted if name in fixtures})
            finally:
                await opened.close()
    finally:
        for proxy in reversed(running):
            if proxy._runner is not None:
                await proxy.stop()
        await fake.close()


ON_UVLOOP = {
    "hand-over": test_one_connection_is_handed_to_aiohttp_before_and_after_a_fast_request,
    "keep-alive": test_chat_completions_share_one_keep_alive_connection,
    "pipelined": test_a_request_pipelined_behind_a_chat_completion_gets_400_and_the_connection_closes,
    "pipelined-one-write": test_two_requests_in_one_write_are_refused_not_served_at_once,
    "pipelined-into-stream":
        test_a_request_pipelined_into_a_running_stream_cuts_the_stream_without_a_stray_head,
    "http-1.0": test_http_1_0_chat_request_is_served_by_aiohttp,
    "expect-100": test_expect_100_continue_chat_request_works,
    "malformed": functools.partial(test_malformed_request_gets_400_json_and_the_connection_closes,
                                   data=MALFORMED["bad chunk size"]),
    "413": test_body_over_the_limit_gets_413_with_content_length_or_chunked,
    "huge-body": test_a_huge_body_gets_413_not_a_reset,
    "chunked-body": test_chunked_request_body_split_across_writes_is_served,
    "connection-close": functools.partial(test_connection_close_is_honoured, stream=True),
    "stop": test_stop_during_a_fast_path_stream_ends_it_and_fails_the_turn,
    "slow-reader": test_slow_reader_of_a_long_stream_gets_every_chunk,
}


@pytest.mark.parametrize("test", ON_UVLOOP.values(), ids=ON_UVLOOP.keys())
def test_on_uvloop(test: Callable[..., Any], tmp_path: Path, upstream_key: str) -> None:
    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        await _run_with_own_fixtures(test, tmp_path)
    uvloop.run(main())
