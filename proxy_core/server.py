"""The OpenAI-compatible front: `/v1/chat/completions` and `/v1/models`.

Thin: it parses the request, asks the pipeline for parts and writes them as
they come (never buffering a stream beyond what one burst produced), and
maps every failure to an OpenAI-shaped error with the right status.

Everything is served by aiohttp's server. The chat handler talks to its
client through an `Exchange` (`AiohttpExchange`): the request's headers
and body, a way to start the event stream, a way to answer with one JSON
document — a seam small enough to drive the handler without a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import aclosing
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from .errors import ClientRequestError
from .openai_wire import ChunkEncoder, CompletionBuilder, error_body
from .request_body import read_body
from .request_parser import RequestParser
from .pipeline import Pipeline, TurnAborted
from .secrets import CLIENT_TOKEN_MIN, Redactor
from .sse import DONE, SSE_HEADERS, comment_line, data_line
from .stream import StreamPart

KEEPALIVE = comment_line("keep-alive")

log = logging.getLogger(__name__)

_DISCONNECTS = (ConnectionResetError, ConnectionError)
#: Client headers that carry credentials; their values are scrubbed from everything.
_CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "proxy-authorization")


class StreamSink(Protocol):
    """Where an event stream goes: the response headers leave with the first write."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...


class Exchange(Protocol):
    """One request as the chat handler sees it, whichever front received it."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read_body(self) -> bytes:
        """The whole body, its content coding undone (`request_body.py`); raises
        `ClientRequestError` (413) above the size limit, or if it cannot be decoded."""

    async def open_stream(self) -> StreamSink:
        """Start a 200 `text/event-stream` answer."""

    def reply(self, status: int, payload: Any) -> Any:
        """Answer with one JSON document; the handler returns what this returns."""


class AiohttpExchange:
    """A request that reached the chat handler through aiohttp's server."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.headers = request.headers
        self.response: SSEResponse | None = None

    async def read_body(self) -> bytes:
        return await read_body(self.request)

    async def open_stream(self) -> SSEResponse:
        response = SSEResponse(headers=SSE_HEADERS)
        await response.prepare(self.request)
        self.response = response
        return response

    def reply(self, status: int, payload: Any) -> web.Response:
        return web.json_response(payload, status=status)


class SSEResponse(web.StreamResponse):
    """A streamed response whose headers leave with its first event, in one send.

    aiohttp sends a `StreamResponse`'s headers the moment it is prepared;
    its `Response` keeps them for the body (the class switch below). On a
    stream that is one more syscall and wake-up for the client before the
    first byte of the answer — measurable in the time to first byte.
    """

    _send_headers_immediately = False


class KeepAlive:
    """SSE comments to a streaming client whose turn has produced nothing yet.

    While attempts are retried and rerouted before the commit boundary, the
    client would otherwise hear nothing and its own timeouts could fire.
    A timer, not a task around the read: the first upstream read is awaited
    directly (the cheapest path to the first byte), and each tick writes a
    comment beside it — the first tick sends the response headers too.
    Call `stop()` before writing anything else, `cancel()` on every exit.
    """

    def __init__(self, exchange: Exchange, interval: float) -> None:
        self._exchange = exchange
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self.response: StreamSink | None = None
        self._writing: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(interval, self._tick) if interval > 0 else None

    def _tick(self) -> None:
        self._timer = self._loop.call_later(self._interval, self._tick)
        if self._writing is None or self._writing.done():
            self._writing = self._loop.create_task(self._write(), name="switchboard keep-alive")

    async def _write(self) -> None:
        if self.response is None:
            self.response = await self._exchange.open_stream()
        await self.response.write(KEEPALIVE)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def stop(self) -> StreamSink | None:
        """No more ticks; wait for a write in flight. The response, if one was started."""
        self.cancel()
        if self._writing is not None:
            with contextlib.suppress(ConnectionError):
                await self._writing
        return self.response


class EventWriter:
    """Sends SSE events to a prepared response: the first at once, then one send per burst.

    The first event (with the response headers) is written straight away:
    it is the time to first byte. After that `send` only appends, and a
    helper task sends everything appended since its last send when the
    handler next waits for I/O — so the events the handler produced in one
    go (a fast upstream's network read holds dozens; under load, one pass of
    the event loop serves many streams) leave in one write: one syscall, one
    HTTP chunk, one read for the client. An event that arrives alone still
    leaves within the same pass of the loop. Above `HIGH_WATER` pending
    bytes the client reads slower than the upstream writes, and `send`
    waits, which stops the handler reading the upstream.
    """

    HIGH_WATER = 256 * 1024

    def __init__(self, response: StreamSink) -> None:
        self._response = response
        self._buffer: list[bytes] = []
        self.pending = 0
        self._loop = asyncio.get_running_loop()
        self._first = True
        self._writing = False
        self._wakeup: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._closing = False
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def send(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._first:
            self._first = False
            self._writing = True
            try:
                await self._response.write(data)
            finally:
                self._writing = False
            return
        self.put(data)
        if self.pending > self.HIGH_WATER:
            await self.drained()

    @property
    def queueing(self) -> bool:
        """Whether `send` would only queue: the first event is out, the client keeps up."""
        return not self._first and self.pending < self.HIGH_WATER

    def put(self, data: bytes) -> None:
        """Queue `data` for the helper task (never writes, never waits)."""
        if self._error is not None:
            raise self._error
        self._buffer.append(data)
        self.pending += len(data)
        if self._task is None:
            self._task = self._loop.create_task(self._run(), name="switchboard sse writer")
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    async def drained(self) -> None:
        """Wait until the helper task has taken what is pending (or failed)."""
        while self.pending and self._error is None and self._task is not None \
                and not self._task.done():
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained
        if self._error is not None:
            raise self._error

    async def finish(self, final: bytes) -> None:
        """Send what is pending and `final`, and end the response — one write.

        Raises the write error, if any.
        """
        self._closing = True
        if self._task is not None:
            wakeup, self._wakeup = self._wakeup, None
            if wakeup is not None and not wakeup.done():
                wakeup.set_result(None)
            await self._task  # lets a write in flight finish; leaves the rest to us
        if self._error is not None:
            raise self._error
        buffer, self._buffer = self._buffer, []
        self.pending = 0
        buffer.append(final)
        await self._response.write_eof(b"".join(buffer))

    def abort(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _run(self) -> None:
        try:
            while True:
                if self._closing:
                    return  # `finish` sends the rest with the end of the response
                if not self.pending or self._writing:
                    self._wakeup = self._loop.create_future()
                    await self._wakeup
                    continue
                buffer, self._buffer = self._buffer, []
                self.pending = 0
                self._writing = True
                try:
                    await self._response.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))
                finally:
                    self._writing = False
                drained, self._drained = self._drained, None
                if drained is not None and not drained.done():
                    drained.set_result(None)
        except Exception as exc:  # the client went away, mostly: the handler re-raises it
            self._error = exc
            drained, self._drained = self._drained, None
            if drained is not None and not drained.done():
                drained.set_result(None)


class OpenAIFront:
    """The OpenAI-compatible endpoints: turns go to the pipeline, secrets to the redactor."""

    def __init__(self, pipeline: Pipeline, redactor: Redactor) -> None:
        self.pipeline = pipeline
        self.redactor = redactor
        #: Bodies that extend a recent one are parsed from where that one's messages end.
        self.requests = RequestParser()
        self._serving: set[asyncio.Task[Any]] = set()  # chat handlers in flight

    async def cancel_all(self, timeout: float) -> None:
        """Cancel the chat completions in flight and wait (up to `timeout`) for them to end.

        For `SwitchboardProxy.stop`: each turn ends now and is recorded as
        failed before the journal closes, instead of aiohttp's shutdown
        letting it run on for its grace period.
        """
        tasks = [task for task in self._serving if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchboard"}
                for m in self.pipeline.model_ids()]
        return web.json_response({"object": "list", "data": data})

    def _learn_credentials(self, headers: Mapping[str, str]) -> None:
        """Whatever credential the client presents is scrubbed from all we record."""
        for name in _CREDENTIAL_HEADERS:
            value = headers.get(name)
            if value:
                token = value.partition(" ")[2] if " " in value else value
                self.redactor.add(token.strip() or value, min_length=CLIENT_TOKEN_MIN)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        exchange = AiohttpExchange(request)
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            reply = await self.chat(exchange)
        finally:
            self._serving.discard(task)
        if reply is None:  # streamed
            assert exchange.response is not None
            return exchange.response
        return reply  # type: ignore[no-any-return]

    async def chat(self, exchange: Exchange) -> Any:
        """Serve one chat completion; returns `exchange.reply(...)`, or None when streamed."""
        try:
            self._learn_credentials(exchange.headers)
            raw = await exchange.read_body()
            received = time.perf_counter()
            chat = self.requests.parse(raw)
            turn, route = self.pipeline.open_turn(chat, exchange.headers, len(raw))
        except ClientRequestError as exc:
            return exchange.reply(exc.status, error_body(exc.message, type_=exc.type, code=exc.code))
        async with aclosing(self.pipeline.run(turn, route, raw=chat.raw,
                                              received=received)) as parts:
            if not chat.stream:
                builder = CompletionBuilder(chat.model)
                try:
                    async for part in parts:
                        builder.add(part)
                except TurnAborted as exc:
                    return self._aborted(exchange, exc)
                return exchange.reply(200, builder.build())

            keepalive = KeepAlive(exchange, route.watchdog.keepalive_interval)
            # Made before the wait, not after: the first part goes out sooner.
            encoder = ChunkEncoder(chat.model, include_usage=chat.include_usage)
            first: StreamPart | TurnAborted | None
            try:
                first = await parts.__anext__()
            except StopAsyncIteration:
                first = None
            except TurnAborted as exc:
                if await keepalive.stop() is None:
                    return self._aborted(exchange, exc)
                first = exc  # the status line went out with a keep-alive: report in-stream
            finally:
                keepalive.cancel()
            response = await keepalive.stop()
            if response is None:
                response = await exchange.open_stream()
            writer = EventWriter(response)
            try:
                if isinstance(first, TurnAborted):
                    raise first
                if first is not None:
                    await _relay(writer, encoder, first, parts)
                await writer.finish(DONE)
            except TurnAborted as exc:
                await _write_error(writer, exc, self.redactor(exc.message))
            except _DISCONNECTS:
                log.info("client went away during %s", turn.id)
            finally:
                writer.abort()
            return None

    def _aborted(self, exchange: Exchange, exc: TurnAborted) -> Any:
        # Upstream error text can quote our key back (careless hosts do): redact.
        return exchange.reply(exc.status, error_body(self.redactor(exc.message),
                                                     type_="upstream_error", code=exc.code))


async def _relay(writer: EventWriter, encoder: ChunkEncoder, first: Any, parts: Any) -> None:
    """Encode and send every part (see `EventWriter` for when that waits)."""
    event = encoder.event
    part = first
    while True:
        data = event(part)
        if data is not None:
            if writer.queueing:  # the common case, without a coroutine per event
                writer.put(data)
            else:
                await writer.send(data)
        try:
            part = await parts.__anext__()
        except StopAsyncIteration:
            return


async def _write_error(writer: EventWriter, exc: TurnAborted, message: str) -> None:
    if exc.committed:
        message += (" (after output had started; Switchboard could not retry"
                    " transparently — retry the turn)")
    try:
        await writer.finish(data_line(error_body(message, type_="upstream_error",
                                                 code=exc.code)) + DONE)
    except _DISCONNECTS:
        pass
