"""The OpenAI-compatible front: `/v1/chat/completions` and `/v1/models`.

Thin: it parses the request, asks the pipeline for parts and writes them as
they come (never buffering a stream), and maps every failure to an
OpenAI-shaped error with the right status.
"""

from __future__ import annotations

import json
import logging
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import ClientRequestError
from .openai_wire import ChunkEncoder, CompletionBuilder, error_body, parse_chat_request
from .pipeline import TurnAborted
from .secrets import CLIENT_TOKEN_MIN
from .sse import DONE, SSE_HEADERS, comment_line, data_line
from .stream import KeepAlivePart

KEEPALIVE = comment_line("keep-alive")

if TYPE_CHECKING:
    from .app import SwitchboardProxy

log = logging.getLogger(__name__)

_DISCONNECTS = (ConnectionResetError, ConnectionError)


def json_error(message: str, status: int, *, code: str | None = None,
               type_: str = "invalid_request_error") -> web.Response:
    return web.json_response(error_body(message, type_=type_, code=code), status=status)


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ClientRequestError(
            f"request body too large (limit {request.client_max_size} bytes;"
            " raise [proxy] max_body_mb)",
            status=413, code="request_too_large") from None
    if not raw:
        raise ClientRequestError("request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from None


class OpenAIFront:
    def __init__(self, proxy: SwitchboardProxy) -> None:
        self.proxy = proxy

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "switchboard"}
                for m in self.proxy.pipeline.model_ids()]
        return web.json_response({"object": "list", "data": data})

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            chat = parse_chat_request(await read_json(request))
            auth = request.headers.get("authorization", "")
            self.proxy.redactor.add(auth.partition(" ")[2] or auth, min_length=CLIENT_TOKEN_MIN)
            turn, route = self.proxy.pipeline.open_turn(chat, request.headers)
        except ClientRequestError as exc:
            return json_error(exc.message, exc.status, code=exc.code, type_=exc.type)
        async with aclosing(self.proxy.pipeline.run(turn, route)) as parts:
            if not chat.stream:
                builder = CompletionBuilder(chat.model)
                try:
                    async for part in parts:
                        builder.add(part)
                except TurnAborted as exc:
                    return self._aborted(exc)
                return web.json_response(builder.build())

            try:
                first = await parts.__anext__()
            except StopAsyncIteration:
                first = None
            except TurnAborted as exc:
                return self._aborted(exc)
            response = web.StreamResponse(headers=SSE_HEADERS)
            encoder = ChunkEncoder(chat.model, include_usage=chat.include_usage)
            try:
                await response.prepare(request)
                if first is not None:
                    await _write(response, encoder, first)
                    async for part in parts:
                        await _write(response, encoder, part)
                await response.write(DONE)
            except TurnAborted as exc:
                await _write_error(response, exc, self.proxy.redactor(exc.message))
            except _DISCONNECTS:
                log.info("client went away during %s", turn.id)
            return response

    def _aborted(self, exc: TurnAborted) -> web.Response:
        # Upstream error text can quote our key back (careless hosts do): redact.
        return json_error(self.proxy.redactor(exc.message), exc.status, code=exc.code,
                          type_="upstream_error")


async def _write(response: web.StreamResponse, encoder: ChunkEncoder, part: Any) -> None:
    if isinstance(part, KeepAlivePart):  # the pipeline keeps a waiting client alive
        await response.write(KEEPALIVE)
        return
    chunk = encoder.encode(part)
    if chunk is not None:
        await response.write(data_line(chunk))


async def _write_error(response: web.StreamResponse, exc: TurnAborted, message: str) -> None:
    try:
        await response.write(data_line(error_body(
            f"{message} (after output had started; Switchboard could not retry"
            " transparently — retry the turn)", type_="upstream_error", code=exc.code)))
        await response.write(DONE)
    except _DISCONNECTS:
        pass
