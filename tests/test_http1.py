"""The small HTTP/1.1 upstream client (`proxy_core.upstreams.http1`) against real peers.

Every server is real and on 127.0.0.1: aiohttp `web` servers where a
well-behaved HTTP server is wanted, raw `asyncio.start_server` peers where
the bytes on the wire must be exact or the peer misbehaves (garbage,
truncation, stray bytes, silence), and tiny asyncio proxies (a forward
proxy that answers itself, a CONNECT tunnel). Connection reuse is checked
by counting the connections the server accepted.

Timeouts here are safety limits (a broken client fails instead of hanging
the run), never assertions about speed.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import random
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from proxy_core.upstreams import http1
from proxy_core.upstreams.http1 import (
    BadResponse, ConnectFailed, ConnectionBroken, ConnectionPool, ConnectTimeout, Response,
)
from support import wait_until

TLS_DIR = Path(__file__).parent / "fixtures" / "tls"
CERT = TLS_DIR / "localhost-cert.pem"
KEY = TLS_DIR / "localhost-key.pem"
#: Safety limit for one exchange against a local peer.
LIMIT = 5.0

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pools read proxies from the environment: start every test without any."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def server_tls() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(CERT, KEY)
    return context


def client_tls() -> ssl.SSLContext:
    """A client context that trusts the fixture's self-signed certificate."""
    return ssl.create_default_context(cafile=str(CERT))


# -- raw peers -------------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """`asyncio.start_server` on 127.0.0.1: `handler(reader, writer, n)` serves its n-th connection.

    `accepted` counts connections; the writer is closed when the handler returns.
    """

    def __init__(self, handler: Handler, *, tls: bool = False) -> None:
        self.handler = handler
        self.tls = tls
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, ssl=server_tls() if self.tls else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, self.accepted)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's head and body (framed by Content-Length); None at a clean EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


def answer(body: bytes = b"ok", *, status: str = "200 OK", headers: tuple[str, ...] = (),
           version: str = "HTTP/1.1") -> bytes:
    """A whole response framed by Content-Length."""
    lines = [f"{version} {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         n: int) -> None:
    """A keep-alive server: answers every request on the connection with `conn <n>`."""
    while await read_request(reader) is not None:
        writer.write(answer(f"conn {n}".encode()))
        await writer.drain()


async def wait_for_close(reader: asyncio.StreamReader) -> None:
    """Until the peer closes (EOF or reset), ignoring whatever it sends."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    """`await serve(handler, tls=False)`: a started `RawServer`, closed at teardown."""
    servers: list[RawServer] = []

    async def start(handler: Handler, *, tls: bool = False) -> RawServer:
        server = RawServer(handler, tls=tls)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def web_server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """`await web_server(app, tls=False)`: an aiohttp server; returns its base URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, *, tls: bool = False) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls() if tls else None)
        await site.start()
        return f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def make_pool(serve: object, web_server: object) -> AsyncIterator[Callable[..., ConnectionPool]]:
    """`make_pool(url, **options)`: a ConnectionPool closed at teardown (before the servers)."""
    pools: list[ConnectionPool] = []

    def make(url: str, **options: object) -> ConnectionPool:
        pool = ConnectionPool(url, **options)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.aclose()


async def read_all(response: Response) -> bytes:
    pieces = []
    async with asyncio.timeout(LIMIT):
        while piece := await response.read_chunk():
            pieces.append(piece)
    return b"".join(pieces)


async def send(pool: ConnectionPool, path: str = "/x", body: bytes = b"",
               method: str = "GET") -> Response:
    async with asyncio.timeout(LIMIT):
        return await pool.request(pool.request_head(method, path, [], len(body)), body)


async def get(pool: ConnectionPool, path: str = "/x") -> tuple[Response, bytes]:
    """A whole GET: the response (released) and its body."""
    response = await send(pool, path)
    body = await read_all(response)
    assert response.complete
    response.release()
    return response, body


# -- bodies ----------------------------------------------------------------------------

async def test_content_length_body_is_read_whole(
        web_server: Callable[..., Awaitable[str]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=(await request.read())[::-1])

    app = web.Application()
    app.router.add_post("/v1/echo", echo)
    pool = make_pool(await web_server(app) + "/v1")
    sent = random.Random(1).randbytes(300_000)  # several network reads each way

    response = await send(pool, "/echo", sent, method="POST")
    assert response.status == 200 and response.reason == "OK"
    assert response.headers["content-length"] == str(len(sent))
    assert await read_all(response) == sent[::-1]
    assert response.complete
    response.release()


async def test_chunked_body_arrives_chunk_by_chunk(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    first_read = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await first_read.wait()  # the rest only after the client has the first chunk
        for chunk in (b" second", b" third and last"):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await wait_for_close(reader)

    server = await serve(chunked)
    pool = make_pool(server.url)
    response = await send(pool)
    assert response.headers["transfer-encoding"] == "chunked"
    async with asyncio.timeout(LIMIT):
        assert await response.read_chunk() == b"first"
    assert not response.complete
    first_read.set()
    assert await read_all(response) == b" second third and last"
    assert response.complete
    assert await response.read_chunk() == b""  # stays at the end
    response.release()


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_body_delimited_by_close_is_read_whole(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool],
        version: str) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          n: int) -> None:
        await read_request(reader)
        writer.write(f"{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode())
        for piece in (b"no length, ", b"ends at ", b"the close"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)

    server = await serve(until_close)
    pool = make_pool(server.url)
    response = await send(pool)
    assert await read_all(response) == b"no length, ends at the close"
    assert response.complete
    response.release()
    _, body = await get(pool)  # the closed connection is not reused
    assert body == b"no length, ends at the close"
    assert server.accepted == 2


# -- keep-alive --------------------------------------------------------------------------

async def test_keep_alive_reuses_one_connection(
        web_server: Callable[..., Awaitable[str]], make_pool: Callable[..., ConnectionPool]) -> None:
    transports: list[object] = []

    async def hello(request: web.Request) -> web.Response:
        transports.append(request.transport)
        return web.Response(text=f"hello {len(transports)}")

    app = web.Application()
    app.router.add_get("/x", hello)
    pool = make_pool(await web_server(app))
    assert (await get(pool))[1] == b"hello 1"
    assert (await get(pool))[1] == b"hello 2"
    assert (await get(pool))[1] == b"hello 3"
    assert len(transports) == 3
    assert len({id(t) for t in transports}) == 1  # one TCP connection for all three


@pytest.mark.parametrize(("version", "header"), [("HTTP/1.1", ("Connection: close",)),
                                                  ("HTTP/1.0", ())])
async def test_response_without_keep_alive_is_not_reused(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool],
        version: str, header: tuple[str, ...]) -> None:
    async def says_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         n: int) -> None:
        # Says the connection won't be kept, yet keeps it open and would answer again.
        while await read_request(reader) is not None:
            writer.write(answer(f"conn {n}".encode(), headers=header, version=version))
            await writer.drain()

    server = await serve(says_close)
    pool = make_pool(server.url)
    assert (await get(pool))[1] == b"conn 1"
    assert (await get(pool))[1] == b"conn 2"
    assert server.accepted == 2


async def test_idle_connection_past_keepalive_is_not_reused(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    server = await serve(keep_answering)
    pool = make_pool(server.url, keepalive=0.0)
    assert (await get(pool))[1] == b"conn 1"
    assert (await get(pool))[1] == b"conn 2"
    assert server.accepted == 2


async def test_release_after_whole_body_returns_connection_to_pool(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    server = await serve(keep_answering)
    pool = make_pool(server.url)
    response = await send(pool)
    assert await read_all(response) == b"conn 1"
    response.release()
    assert (await get(pool))[1] == b"conn 1"
    assert server.accepted == 1


async def test_release_before_body_is_whole_closes_connection(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    saw_close = asyncio.Event()

    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        n: int) -> None:
        if n == 1:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            await wait_for_close(reader)
            saw_close.set()
        else:
            await keep_answering(reader, writer, n)

    server = await serve(slow_body)
    pool = make_pool(server.url)
    response = await send(pool)
    async with asyncio.timeout(LIMIT):
        assert await response.read_chunk() == b"only part"
    response.release()  # not whole: cannot go back to the pool
    async with asyncio.timeout(LIMIT):
        await saw_close.wait()
    assert (await get(pool))[1] == b"conn 2"
    assert server.accepted == 2


# -- connections the server closed -----------------------------------------------------

async def test_pooled_connection_closed_by_server_is_replaced(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                 n: int) -> None:
        await read_request(reader)
        writer.write(answer(f"conn {n}".encode()))  # claims keep-alive, then closes
        await writer.drain()

    server = await serve(one_per_connection)
    pool = make_pool(server.url)
    for n in (1, 2, 3):
        assert (await get(pool))[1] == f"conn {n}".encode()
    assert server.accepted == 3


async def test_request_on_connection_closed_before_answering_is_retried_once(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    requests: list[tuple[int, bytes]] = []

    async def closes_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               n: int) -> None:
        while (request := await read_request(reader)) is not None:
            requests.append((n, request.split(b"\r\n", 1)[0]))
            if n == 1 and len(requests) == 2:
                return  # the host dropped the idle connection as the request came in
            writer.write(answer(f"conn {n}".encode()))
            await writer.drain()

    server = await serve(closes_on_second)
    pool = make_pool(server.url)
    assert (await get(pool, "/first"))[1] == b"conn 1"
    assert (await get(pool, "/second"))[1] == b"conn 2"
    assert requests == [(1, b"GET /first HTTP/1.1"), (1, b"GET /second HTTP/1.1"),
                        (2, b"GET /second HTTP/1.1")]


async def test_reused_connection_broken_mid_answer_is_not_retried(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def half_second_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                 n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"first"))
        await read_request(reader)
        writer.write(b"HTTP/1.1 20")  # part of an answer: the request may have been acted on
        await writer.drain()

    server = await serve(half_second_answer)
    pool = make_pool(server.url)
    assert (await get(pool))[1] == b"first"
    with pytest.raises(ConnectionBroken):
        await send(pool)
    assert server.accepted == 1


# -- broken answers ----------------------------------------------------------------------

async def test_garbage_instead_of_http_is_bad_response(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await wait_for_close(reader)

    server = await serve(ssh)
    pool = make_pool(server.url)
    with pytest.raises(BadResponse):
        await send(pool)


async def test_garbage_inside_chunked_body_raises_from_read_chunk(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    first_read = asyncio.Event()

    async def bad_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await first_read.wait()
        writer.write(b"zz not a chunk size\r\n")
        await wait_for_close(reader)  # keeps the connection open: only the parser can end it

    server = await serve(bad_chunk)
    pool = make_pool(server.url)
    response = await send(pool)
    async with asyncio.timeout(LIMIT):
        assert await response.read_chunk() == b"hello"
        first_read.set()
        with pytest.raises(BadResponse):
            await response.read_chunk()
    assert not response.complete
    response.close()


async def test_close_before_content_length_is_reached_is_connection_broken(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nten bytes.")
        await writer.drain()

    server = await serve(short)
    pool = make_pool(server.url)
    response = await send(pool)
    async with asyncio.timeout(LIMIT):
        assert await response.read_chunk() == b"ten bytes."
        with pytest.raises(ConnectionBroken):
            await response.read_chunk()
    assert not response.complete
    response.close()


@pytest.mark.parametrize("spelling", ["chunked", "Chunked"])
async def test_close_inside_chunked_body_is_connection_broken(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool],
        spelling: str) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nTransfer-Encoding: {spelling}\r\n\r\n".encode()
                     + b"5\r\nhello\r\n")
        await writer.drain()

    server = await serve(cut)
    pool = make_pool(server.url)
    response = await send(pool)
    async with asyncio.timeout(LIMIT):
        assert await response.read_chunk() == b"hello"
        with pytest.raises(ConnectionBroken):  # no last chunk: the body is cut, not whole
            await response.read_chunk()
    assert not response.complete
    response.close()


async def test_close_without_answer_is_connection_broken(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    server = await serve(silent)
    pool = make_pool(server.url)
    with pytest.raises(ConnectionBroken):
        await send(pool)
    assert server.accepted == 1  # a new connection is not retried


# -- connecting ------------------------------------------------------------------------

async def test_connection_refused_is_connect_failed(
        make_pool: Callable[..., ConnectionPool]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectFailed) as caught:
        await send(pool)
    assert not isinstance(caught.value, ConnectTimeout)
    assert f"127.0.0.1:{port}" in str(caught.value)


async def test_tls_handshake_that_never_completes_is_connect_timeout(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    saw_close = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await wait_for_close(reader)  # takes the ClientHello, never answers it
        saw_close.set()

    server = await serve(mute)
    pool = make_pool(f"https://127.0.0.1:{server.port}", connect_timeout=0.2,
                     ssl_context=client_tls())
    with pytest.raises(ConnectTimeout):
        await send(pool)
    async with asyncio.timeout(LIMIT):
        await saw_close.wait()  # the half-open connection was not left behind


async def test_tls_with_trusted_certificate_works(
        web_server: Callable[..., Awaitable[str]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello over {request.scheme}")

    app = web.Application()
    app.router.add_get("/x", hello)
    url = await web_server(app, tls=True)
    pool = make_pool(url, ssl_context=client_tls())
    assert (await get(pool))[1] == b"hello over https"
    localhost = make_pool(url.replace("127.0.0.1", "localhost"), ssl_context=client_tls())
    assert (await get(localhost))[1] == b"hello over https"


async def test_tls_with_untrusted_certificate_is_connect_failed(
        web_server: Callable[..., Awaitable[str]], make_pool: Callable[..., ConnectionPool]) -> None:
    app = web.Application()
    url = await web_server(app, tls=True)
    pool = make_pool(url)  # the default context does not trust the self-signed certificate
    with pytest.raises(ConnectFailed) as caught:
        await send(pool)
    assert not isinstance(caught.value, ConnectTimeout)
    assert "TLS" in str(caught.value)


# -- what the answer carries -----------------------------------------------------------

async def test_interim_responses_are_skipped(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        writer.write(answer(b"final", status="200 Fine", headers=("X-Final: yes",)))
        await wait_for_close(reader)

    server = await serve(hints)
    pool = make_pool(server.url)
    response = await send(pool)
    assert (response.status, response.reason) == (200, "Fine")
    assert response.headers == {"content-length": "5", "x-final": "yes"}
    assert await read_all(response) == b"final"
    assert response.complete
    response.release()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_body_is_decoded(
        web_server: Callable[..., Awaitable[str]], make_pool: Callable[..., ConnectionPool],
        encoding: str) -> None:
    text = b"".join(b'data: {"n": %d, "text": "some streamed words"}\n\n' % i
                    for i in range(20_000))
    packed = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)

    async def compressed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Encoding": encoding})
        await response.prepare(request)
        step = len(packed) // 7 + 1
        for start in range(0, len(packed), step):  # the compressed stream in pieces
            await response.write(packed[start:start + step])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/x", compressed)
    pool = make_pool(await web_server(app))
    response, body = await get(pool)
    assert response.headers["content-encoding"] == encoding
    assert body == text


async def test_bytes_after_the_answer_are_not_part_of_its_body(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    saw_close = asyncio.Event()

    async def two_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          n: int) -> None:
        if n > 1:
            await keep_answering(reader, writer, n)
            return
        await read_request(reader)
        writer.write(answer(b"ok") + answer(b"nobody asked for this"))  # one write
        await wait_for_close(reader)
        saw_close.set()

    server = await serve(two_answers)
    pool = make_pool(server.url)
    response, body = await get(pool)
    assert (response.status, body) == (200, b"ok")
    async with asyncio.timeout(LIMIT):
        await saw_close.wait()  # a connection with stray bytes on it is dropped
    assert (await get(pool))[1] == b"conn 2"


# -- proxies ---------------------------------------------------------------------------

async def test_http_upstream_through_proxy_uses_absolute_form_and_credentials(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    heads: list[bytes] = []

    async def forward_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            n: int) -> None:
        while (request := await read_request(reader)) is not None:
            heads.append(request)
            writer.write(answer(b"from the proxy"))
            await writer.drain()

    proxy = await serve(forward_proxy)
    monkeypatch.setenv("HTTP_PROXY", f"http://alice:p%40ss%3Aword@127.0.0.1:{proxy.port}")
    # The upstream's name does not resolve: only the proxy can answer.
    pool = make_pool("http://upstream.invalid:8080/v1", use_env_proxy=True)
    response = await send(pool, "/chat/completions", b'{"q": 1}', method="POST")
    assert await read_all(response) == b"from the proxy"
    response.release()
    credentials = base64.b64encode(b"alice:p@ss:word").decode()
    assert heads == [(
        "POST http://upstream.invalid:8080/v1/chat/completions HTTP/1.1\r\n"
        "Host: upstream.invalid:8080\r\n"
        f"Proxy-Authorization: Basic {credentials}\r\n"
        "Content-Length: 8\r\n\r\n"
        '{"q": 1}').encode()]


async def connect_tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         heads: list[bytes]) -> None:
    """A CONNECT proxy: records the CONNECT head, then pipes bytes both ways."""
    head = await reader.readuntil(b"\r\n\r\n")
    heads.append(head)
    host, _, port = head.split(b" ")[1].decode().rpartition(":")
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_https_upstream_through_connect_tunnel(
        serve: Callable[..., Awaitable[RawServer]], web_server: Callable[..., Awaitable[str]],
        make_pool: Callable[..., ConnectionPool], monkeypatch: pytest.MonkeyPatch) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.path_qs} over {request.scheme}")

    app = web.Application()
    app.router.add_get("/v1/x", hello)
    upstream = await web_server(app, tls=True)
    heads: list[bytes] = []
    proxy = await serve(lambda r, w, n: connect_tunnel(r, w, heads))
    monkeypatch.setenv("HTTPS_PROXY", f"http://bob:secret@127.0.0.1:{proxy.port}")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # for http only: not used here
    authority = upstream.replace("https://127.0.0.1", "localhost")
    pool = make_pool(f"https://{authority}/v1", ssl_context=client_tls())

    assert pool.request_head("GET", "/x", [], 0).startswith(b"GET /v1/x HTTP/1.1\r\n")
    assert (await get(pool))[1] == b"GET /v1/x over https"
    assert (await get(pool))[1] == b"GET /v1/x over https"  # the same tunnel, kept alive
    assert proxy.accepted == 1
    credentials = base64.b64encode(b"bob:secret").decode()
    assert heads == [(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
                      f"Proxy-Authorization: Basic {credentials}\r\n\r\n").encode()]


async def test_no_proxy_bypasses_the_proxy(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    request_lines: list[bytes] = []

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        n: int) -> None:
        while (request := await read_request(reader)) is not None:
            request_lines.append(request.split(b"\r\n", 1)[0])
            writer.write(answer(b"answered"))
            await writer.drain()

    upstream = await serve(recording)
    proxy = await serve(recording)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("NO_PROXY", "example.test,127.0.0.1")
    direct = make_pool(upstream.url)
    assert (await get(direct, "/direct"))[1] == b"answered"
    assert (upstream.accepted, proxy.accepted) == (1, 0)

    monkeypatch.delenv("NO_PROXY")  # the same setting otherwise does go through the proxy
    proxied = make_pool(upstream.url)
    assert (await get(proxied, "/proxied"))[1] == b"answered"
    assert (upstream.accepted, proxy.accepted) == (1, 1)
    assert request_lines == [b"GET /direct HTTP/1.1",
                             f"GET {upstream.url}/proxied HTTP/1.1".encode()]


async def test_proxy_refusing_connect_with_407_is_connect_failed(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool],
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def wants_credentials(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(b"credentials, please", status="407 Proxy Authentication Required",
                            headers=('Proxy-Authenticate: Basic realm="proxy"',)))
        await wait_for_close(reader)

    proxy = await serve(wants_credentials)
    monkeypatch.setenv("HTTPS_PROXY", f"127.0.0.1:{proxy.port}")  # no scheme: http assumed
    pool = make_pool("https://upstream.invalid/v1", ssl_context=client_tls())
    with pytest.raises(ConnectFailed) as caught:
        await send(pool)
    assert not isinstance(caught.value, ConnectTimeout)
    assert "407" in str(caught.value)


# -- flow control, closing and cancelling ----------------------------------------------

async def test_large_body_read_slowly_pauses_the_socket_and_arrives_intact(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    # Far more than the client's high-water mark plus every kernel buffer on the way
    # (tcp_rmem's maximum is often 32 MiB): the server can only send it all if read.
    body = random.Random(2).randbytes(64 * 1024 * 1024)
    sent = 0

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        await read_request(reader)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        step = 256 * 1024
        for start in range(0, len(body), step):
            writer.write(body[start:start + step])
            await writer.drain()
            sent = start + step
        await wait_for_close(reader)

    server = await serve(big)
    pool = make_pool(server.url)
    response = await send(pool)

    # Without reading, the server's sending stalls: the client stopped reading the socket.
    async def stalled() -> int | None:
        before = sent
        await asyncio.sleep(0.1)
        return sent if sent == before and sent > 0 else None

    stalled_at = await wait_until(stalled, timeout=20, what="the server's sending to stall")
    assert stalled_at < len(body)

    digest, size = hashlib.sha256(), 0
    async with asyncio.timeout(60):
        while piece := await response.read_chunk():
            digest.update(piece)
            size += len(piece)
            await asyncio.sleep(0.001)  # a slow reader
    assert size == len(body)
    assert digest.digest() == hashlib.sha256(body).digest()
    assert response.complete
    response.release()


async def test_release_of_whole_body_left_unread_above_high_water_keeps_connection_usable(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    # One byte over the high-water mark: reading pauses exactly when the body is whole.
    size = http1._READ_HIGH_WATER + 1

    async def big_then_small(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"x" * size))
        await keep_answering(reader, writer, n)

    server = await serve(big_then_small)
    pool = make_pool(server.url)
    response = await send(pool)
    await wait_until(lambda: response.complete, timeout=LIMIT, what="the whole body")
    response.release()  # whole, so reusable, though never read
    assert (await get(pool))[1] == b"conn 1"
    assert server.accepted == 1


async def test_close_mid_body_closes_connection_and_it_is_not_reused(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    saw_close = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            await keep_answering(reader, writer, n)
            return
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nthe start")
        await wait_for_close(reader)
        saw_close.set()

    server = await serve(endless)
    pool = make_pool(server.url)
    response = await send(pool)
    async with asyncio.timeout(LIMIT):
        assert await response.read_chunk() == b"the start"
    response.close()
    async with asyncio.timeout(LIMIT):
        await saw_close.wait()
    assert (await get(pool))[1] == b"conn 2"
    assert server.accepted == 2


async def test_cancel_while_waiting_for_head_closes_connection_and_pool_recovers(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    saw_close = asyncio.Event()

    async def never_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          n: int) -> None:
        if n > 1:
            await keep_answering(reader, writer, n)
            return
        await read_request(reader)
        await wait_for_close(reader)  # never answers
        saw_close.set()

    server = await serve(never_first)
    pool = make_pool(server.url)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pool.request(pool.request_head("GET", "/x", [], 0), b""), 0.2)
    async with asyncio.timeout(LIMIT):
        await saw_close.wait()
    assert (await get(pool))[1] == b"conn 2"
    assert (await get(pool))[1] == b"conn 2"
    assert server.accepted == 2


async def test_bytes_on_idle_pooled_connection_make_it_unusable(
        serve: Callable[..., Awaitable[RawServer]], make_pool: Callable[..., ConnectionPool]) -> None:
    stray = asyncio.Event()
    saw_close = asyncio.Event()

    async def speaks_while_idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                n: int) -> None:
        if n > 1:
            await keep_answering(reader, writer, n)
            return
        await read_request(reader)
        writer.write(answer(b"first"))
        await stray.wait()
        # An answer to nothing: taken as the next request's, it would be wrong.
        writer.write(answer(b"", status="408 Request Timeout"))
        await wait_for_close(reader)
        saw_close.set()

    server = await serve(speaks_while_idle)
    pool = make_pool(server.url)
    assert (await get(pool))[1] == b"first"  # released: idle in the pool
    stray.set()
    async with asyncio.timeout(LIMIT):
        await saw_close.wait()
    response, body = await get(pool)
    assert (response.status, body) == (200, b"conn 2")
    assert server.accepted == 2


# -- request heads ---------------------------------------------------------------------

def test_request_head_names_host_port_prefix_and_length() -> None:
    pool = ConnectionPool("http://api.example.test:8080/v1/", use_env_proxy=False)
    head = pool.request_head("POST", "/chat/completions",
                             [("Authorization", "Bearer sk-1"), ("X-Odd", " a:b ; c=\"d\" "),
                              ("X-Empty", "")], 42)
    assert head == (b"POST /v1/chat/completions HTTP/1.1\r\n"
                    b"Host: api.example.test:8080\r\n"
                    b"Authorization: Bearer sk-1\r\n"
                    b'X-Odd:  a:b ; c="d" \r\n'
                    b"X-Empty: \r\n"
                    b"Content-Length: 42\r\n\r\n")


@pytest.mark.parametrize(("url", "host"), [
    ("https://api.example.test/v1", "api.example.test"),
    ("http://api.example.test", "api.example.test"),
    ("https://api.example.test:80", "api.example.test:80"),
    ("http://[::1]:8080/", "[::1]:8080"),
])
def test_request_head_host_omits_only_the_default_port(url: str, host: str) -> None:
    pool = ConnectionPool(url, use_env_proxy=False)
    head = pool.request_head("GET", "/models", [], 0)
    path = "/v1/models" if url.endswith("/v1") else "/models"
    assert head == f"GET {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()


@pytest.mark.parametrize("header", [("X-Bad", "a\r\nInjected: yes"), ("X-Bad\n", "a"),
                                    ("X-Bad", "a\rb")])
def test_request_head_refuses_line_breaks(header: tuple[str, str]) -> None:
    pool = ConnectionPool("http://api.example.test", use_env_proxy=False)
    with pytest.raises(ValueError):
        pool.request_head("GET", "/", [header], 0)
