"""The front door: chat completions served on a lean HTTP/1.1 path, the rest by aiohttp.

Why: on the relay's first-byte path aiohttp's server (its request object,
a task hop per request on Python 3.11, response preparation) measured
~0.25 ms of added time to first byte: a minimal relay with aiohttp's
server added 0.89-0.95 ms, the same relay parsing HTTP with httptools
0.63-0.70 ms (bench/bench_relay.py, same machine, same run).

Every connection starts here and is parsed with httptools (llhttp). An
HTTP/1.1 `POST /v1/chat/completions` is served here, by the same handler
aiohttp's route uses (`OpenAIFront.chat`, through a `FastExchange`), with
the same checks: Host/Origin (`SwitchboardProxy.refusal`), the body size
limit, OpenAI-shaped errors. Anything else — the control API, `/v1/models`,
unknown paths, HTTP/1.0, `Expect: 100-continue`, upgrades — hands the
whole connection to aiohttp's server, which serves it from then on: the
request's bytes so far are replayed to aiohttp's protocol, which takes
over the transport.

Requests are served one at a time, so a hand-over always starts at a
request's first byte: a client that sends another request before the
answer to a chat completion is complete (pipelining; clients don't
pipeline POSTs) gets a 400 — or, once that answer has begun, sees it cut
short — and the connection is closed. Reading goes on
while a request is served, so a client that goes away is noticed at once
and cancels its handler, as aiohttp's `handler_cancellation` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import ClientRequestError
from .openai_wire import error_body, internal_error_body
from .server import body_too_large

if TYPE_CHECKING:
    from .app import SwitchboardProxy
    from .server import OpenAIFront

log = logging.getLogger(__name__)

CHAT_PATH = b"/v1/chat/completions"
#: How long a refused client may go on sending (discarded) before its connection is
#: closed: closing with its bytes unread resets the connection, and a client still
#: sending a body would see the reset, not the answer (aiohttp's `lingering_time`).
LINGER = 10.0
#: A connection with no request being answered that has sent nothing for this long
#: is closed by `close_idle` (idle keep-alive, or a request head/body that stalled).
IDLE_TIMEOUT = 75.0

_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests",
            499: "Client Closed Request", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class _Date:
    """The `Date` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_date = _Date()


class _HandOver(Exception):
    """Raised from a parser callback: this request is aiohttp's to serve."""


class _Pipelined(Exception):
    """Raised from a parser callback: a request began before the last one was answered."""


class FrontDoor(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, proxy: SwitchboardProxy, front: OpenAIFront,
                 aiohttp_protocol: Callable[[], asyncio.Protocol],
                 connections: set[FrontDoor]) -> None:
        self._proxy = proxy
        self._front = front
        self._aiohttp_protocol = aiohttp_protocol
        self._connections = connections
        self._limit = int(proxy.config.proxy.max_body_mb * 1024 * 1024)
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._raw: list[bytes] = []  # this request's bytes so far, for a hand-over
        self._in_request = False     # between a request's first byte and its handling
        self._url = b""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._size = 0
        self._refusal: ClientRequestError | None = None
        self._task: asyncio.Task[None] | None = None
        self._serving: FastExchange | None = None  # the request being answered
        self._keep_alive = True
        self._closed = False
        self._handed_over = False
        self._lingering = False  # refused: the answer is out, the client's bytes are discarded
        self._linger_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self.last_activity = self._loop.time()

    # -- connection ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._connections.discard(self)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client left: its turn fails now, nobody retries for it
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    def close(self) -> None:
        """Close the connection; a request still being served is cancelled (its turn fails)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self.transport is not None and not self._closed and not self._handed_over:
            self.transport.close()

    @property
    def idle(self) -> bool:
        """No request is being answered on this connection."""
        return self._task is None or self._task.done()

    def abort(self) -> None:
        """Close now, dropping what is still buffered for a client that does not read."""
        if self.transport is not None and not self._closed and not self._handed_over:
            self.transport.abort()

    # -- reading -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.last_activity = self._loop.time()
        if self._lingering:
            return
        if self._serving is not None and not self._serving.finished:  # pipelined
            self._refuse_pipelined()
            return
        if not self._in_request:
            self._in_request = True
            self._raw = []
        self._raw.append(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._hand_over()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HandOver):
                self._hand_over()
            elif isinstance(exc.__context__, _Pipelined):
                self._refuse_pipelined()
            elif not self._closed:
                status = 413 if self._size > self._limit else 400
                self._refuse_and_close(status, f"malformed HTTP request: {exc}"
                                       if status == 400 else body_too_large(self._limit).message)

    def on_message_begin(self) -> None:
        if self._serving is not None and not self._serving.finished:
            raise _Pipelined  # the next request in the same read as the last one
        self._url = b""
        self._headers = CIMultiDict()
        self._body = []
        self._size = 0
        self._refusal = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        path = self._url.partition(b"?")[0]
        headers = self._headers
        if (path != CHAT_PATH or parser.get_method() != b"POST"
                or parser.get_http_version() != "1.1" or "expect" in headers
                or parser.should_upgrade()):
            raise _HandOver
        self._keep_alive = parser.should_keep_alive()
        refusal = self._proxy.refusal(headers.get("Host"), headers.get("Origin"))
        if refusal is not None:
            log.warning("refused POST %s: %s", path.decode("latin-1", "replace"), refusal)
            self._refusal = ClientRequestError(f"forbidden: {refusal}", status=403,
                                               code="forbidden", type_="forbidden")
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._limit:
            self._size = int(length)
            raise ValueError("body too large")  # answered 413 by data_received

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            raise ValueError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_request = False
        self._raw = []
        exchange = FastExchange(self, CIMultiDictProxy(self._headers), b"".join(self._body))
        self._body = []
        self._serving = exchange
        self._task = self._loop.create_task(self._serve(exchange, self._refusal),
                                            name="switchboard chat")

    # -- serving -----------------------------------------------------------------

    async def _serve(self, exchange: FastExchange, refusal: ClientRequestError | None) -> None:
        try:
            if refusal is not None:
                exchange.reply(refusal.status, error_body(refusal.message, type_=refusal.type,
                                                          code=refusal.code))
            else:
                await self._front.chat(exchange)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error handling POST %s", CHAT_PATH.decode())
            if not exchange.started:
                exchange.reply(500, internal_error_body())
            else:
                self._keep_alive = False
        finally:
            if self._task is asyncio.current_task():
                self._task = None
        if not exchange.finished or not self._keep_alive:
            self.close()

    def _hand_over(self) -> None:
        """Give this connection to aiohttp, starting with the current request's bytes."""
        transport = self.transport
        assert transport is not None
        raw = b"".join(self._raw)
        self._handed_over = True
        self._connections.discard(self)
        protocol = self._aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(raw)

    def _refuse_pipelined(self) -> None:
        serving, self._serving = self._serving, None
        if serving is not None and serving.sent:
            # The answer has begun: a status line now would land inside its body.
            # Cut it short instead (no last chunk: the client sees it incomplete).
            self._keep_alive = False
            self.close()
            return
        self._refuse_and_close(400, "pipelined requests are not supported; wait for the"
                                    " answer before sending the next request")

    def _refuse_and_close(self, status: int, message: str) -> None:
        code = "request_too_large" if status == 413 else "bad_request"
        self._keep_alive = False
        self.write_whole(status, error_body(message, type_="invalid_request_error", code=code))
        self._linger()

    def _linger(self) -> None:
        """End the answer, then close once the client stops sending (or after `LINGER`)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        transport = self.transport
        if transport is None or self._closed or self._lingering or transport.is_closing():
            return
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()  # the client reads the answer, then the end of it
        # The client's end (eof_received's default) closes the connection; else this does.
        self._linger_timer = self._loop.call_later(LINGER, self.close)

    # -- writing -----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self._closed or self._lingering or self.transport is None \
                or self.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        while self._write_paused and not self._closed:
            self._drained = self._loop.create_future()
            await self._drained
        if self._closed:
            raise ConnectionResetError("the client closed the connection")

    def _wake_writer(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def head(self, status: int, fields: bytes) -> bytes:
        reason = _REASONS.get(status, "Error" if status >= 400 else "OK")
        connection = b"" if self._keep_alive else b"Connection: close\r\n"
        return (b"HTTP/1.1 %d %s\r\nDate: %s\r\nServer: switchboard\r\n%s%s\r\n"
                % (status, reason.encode(), _date(), fields, connection))

    def write_whole(self, status: int, payload: Any) -> None:
        body = _json(payload).encode()
        fields = b"Content-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n" % len(body)
        try:
            self.send(self.head(status, fields) + body)
        except ConnectionResetError:
            pass


_STREAM_FIELDS = (b"Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                  b"X-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n")


class FastExchange:
    """A chat request on the fast path (the `server.Exchange` the handler talks to)."""

    def __init__(self, door: FrontDoor, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self._door = door
        self.headers = headers
        self._body = body
        self.started = False   # the status line is on its way
        self.sent = False      # some of the answer has been written to the client
        self.finished = False  # the whole answer is

    async def read_body(self) -> bytes:
        return self._body

    async def open_stream(self) -> _ChunkedStream:
        self.started = True
        return _ChunkedStream(self)

    def reply(self, status: int, payload: Any) -> None:
        self.started = self.sent = True
        self._door.write_whole(status, payload)
        self.finished = True


class _ChunkedStream:
    """An event stream in HTTP/1.1 chunks; the head leaves with the first write."""

    __slots__ = ("_exchange", "_door", "_head")

    def __init__(self, exchange: FastExchange) -> None:
        self._exchange = exchange
        self._door = exchange._door
        self._head: bytes | None = self._door.head(200, _STREAM_FIELDS)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        frame = b"%x\r\n%s\r\n" % (len(data), data)
        head, self._head = self._head, None
        self._exchange.sent = True
        door = self._door
        door.send(head + frame if head is not None else frame)
        if door._write_paused:
            await door.drain()

    async def write_eof(self, data: bytes = b"") -> None:
        frame = (b"%x\r\n%s\r\n" % (len(data), data) if data else b"") + b"0\r\n\r\n"
        head, self._head = self._head, None
        self._exchange.sent = True
        self._door.send(head + frame if head is not None else frame)
        self._exchange.finished = True


async def close_all(doors: set[FrontDoor], timeout: float) -> None:
    """Close every connection still at the front door; wait for their handlers to end.

    For `SwitchboardProxy.stop`: a turn in flight on the fast path is
    cancelled and recorded as failed before the journal closes, as
    aiohttp's shutdown does for the requests it serves. After `timeout`,
    or once the handlers are done, connections still open (a client that
    does not read what is buffered for it) are aborted.
    """
    open_doors = list(doors)
    tasks = [door._task for door in open_doors if door._task is not None and not door._task.done()]
    for door in open_doors:
        door.close()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    for door in open_doors:
        door.abort()


def close_idle(doors: set[FrontDoor], now: float, limit: float = IDLE_TIMEOUT) -> int:
    """Close connections that are not being answered and have sent nothing for `limit` s.

    Run every few seconds by `SwitchboardProxy` (one sweep, no timer per
    request). Returns how many were closed.
    """
    stale = [door for door in doors if door.idle and now - door.last_activity >= limit]
    for door in stale:
        door.close()
    return len(stale)
