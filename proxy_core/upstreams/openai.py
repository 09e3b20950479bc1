"""Any OpenAI-compatible host: OpenRouter, Moonshot, bedrock-mantle, local servers.

Requests go out through `http1` (one keep-alive pool per upstream, created
on first use inside the running loop): the request is pre-built bytes in
one write, and every network read's worth of body is parsed at once (the
module's docstring says why it is not aiohttp's client). The key comes from
the environment variable named in the config and is sent as
`Authorization: Bearer`; the client's own `Authorization` is never
forwarded. Transport failures are mapped to `UpstreamError`s here and
nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from ..config import UpstreamSettings
from ..errors import (
    UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
    UpstreamTimeout,
)
from ..openai_wire import ChunkDecoder, decode_completion, error_message_from, loads_clean
from ..sse import COMMENT, SSEDecoder, SSEProtocolError
from ..stream import FinishPart, KeepAlivePart, StreamPart
from .base import UpstreamRequest
from .http1 import BadResponse, ConnectionPool, ConnectTimeout, HTTPError, Response

#: How long to wait for the end of the body after `data: [DONE]`.
_DRAIN_TIMEOUT = 0.25
#: How much of an error body is read for the message.
_ERROR_BODY_LIMIT = 64 * 1024
#: Largest whole (non-streamed) JSON answer accepted.
_WHOLE_BODY_LIMIT = 64 * 1024 * 1024
_USER_AGENT = "switchboard"
_KEEPALIVE = KeepAlivePart()
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _body_bytes(body: dict[str, Any]) -> bytes:
    try:
        return _compact(body).encode()
    except UnicodeEncodeError:  # a lone surrogate somewhere: let json escape it
        return json.dumps(body, separators=(",", ":")).encode()


class OpenAIUpstream:
    """Streams `/chat/completions` from an OpenAI-compatible base URL.

    The adapter owns a connection pool, opened by `start` (or the first
    request) and closed by `aclose`.
    """

    kind = "openai"

    def __init__(self, settings: UpstreamSettings, base_url: str | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        url = urllib.parse.urlsplit((base_url or settings.base_url).rstrip("/"))
        # Credentials in the URL (`https://user:pass@host`) become Basic auth,
        # used when no API key is configured; they never appear in messages.
        self._basic: str | None = None
        if url.username is not None or url.password is not None:
            pair = (f"{urllib.parse.unquote(url.username or '')}:"
                    f"{urllib.parse.unquote(url.password or '')}")
            self._basic = "Basic " + base64.b64encode(pair.encode()).decode()
            url = url._replace(netloc=url.netloc.rpartition("@")[2])
        self.base_url = urllib.parse.urlunsplit(url)
        self._pool: ConnectionPool | None = None

    def _open_pool(self) -> ConnectionPool:
        if self._pool is None:
            context = None
            if self.settings.ca_bundle:
                context = ssl.create_default_context(cafile=self.settings.ca_bundle)
            self._pool = ConnectionPool(self.base_url,
                                        connect_timeout=self.settings.connect_timeout,
                                        ssl_context=context)
        return self._pool

    async def start(self) -> None:
        self._open_pool()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    def _headers(self) -> list[tuple[str, str]]:
        headers = [("Content-Type", "application/json"), ("Accept", "text/event-stream"),
                   ("Accept-Encoding", "identity"), ("User-Agent", _USER_AGENT)]
        headers.extend(self.settings.headers)
        key = self.settings.api_key()
        if key:
            headers.append(("Authorization", f"Bearer {key}"))
        elif self._basic is not None:
            headers.append(("Authorization", self._basic))
        return headers

    async def stream(self, request: UpstreamRequest) -> AsyncIterator[StreamPart]:
        pool = self._open_pool()
        response: Response | None = None
        clean = False  # the body was read to its end: the connection can be reused
        try:
            try:
                body = _body_bytes(request.body)
                head = pool.request_head("POST", "/chat/completions", self._headers(), len(body))
                response = await pool.request(head, body)
                if response.status >= 400:
                    raise await _status_error(response)
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    raw = await response.read(_WHOLE_BODY_LIMIT)
                    clean = response.complete
                    for part in _whole_response(raw):
                        yield part
                    return
                # The event stream, parsed here rather than in a generator of its own:
                # one hop less for every part. Each network read is parsed whole.
                events, decoder = SSEDecoder(), ChunkDecoder()
                read = response.read_chunk
                finished = done = False
                while not done:
                    data = await read()
                    for event in events.feed(data) if data else events.close():
                        if event is COMMENT:
                            yield _KEEPALIVE
                        elif event[:1] == b"{" or event.strip() != b"[DONE]":
                            for part in decoder.feed(_json_event(event)):
                                if type(part) is FinishPart:
                                    finished = True
                                yield part
                        else:
                            done = True
                            break
                    if not data:
                        break
                if not (done or finished):
                    # Closed with neither `[DONE]` nor a finish reason: cut off.
                    raise UpstreamConnectError("the stream ended before the model finished")
                for part in decoder.finish():
                    yield part
                clean = await _drain(response)
            except UpstreamError:
                raise
            except (HTTPError, SSEProtocolError) as exc:
                raise self._mapped(exc) from None
        finally:
            if response is not None:
                if clean:
                    response.release()
                else:  # abandoned mid-body (client left, watchdog, error): drop it
                    response.close()

    def _mapped(self, exc: Exception) -> UpstreamError:
        where = f"{self.name} ({self.base_url})"
        if isinstance(exc, SSEProtocolError):
            return UpstreamProtocolError(f"{where}: {exc}")
        if isinstance(exc, ConnectTimeout):
            return UpstreamTimeout(f"{where}: {exc}")
        if isinstance(exc, BadResponse):
            return UpstreamProtocolError(f"{where}: {exc}")
        return UpstreamConnectError(f"{where}: {exc}")  # ConnectFailed, ConnectionBroken


async def _status_error(response: Response) -> UpstreamStatusError:
    try:
        raw = await response.read(_ERROR_BODY_LIMIT)
    except HTTPError:
        raw = b""
    text = raw.decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    message = error_message_from(payload, text.strip()[:500] or response.reason or "")
    return UpstreamStatusError(response.status, message or f"HTTP {response.status}", text)


def _whole_response(raw: bytes) -> list[StreamPart]:
    try:
        payload = loads_clean(raw)
    except ValueError:
        raise UpstreamProtocolError(f"expected a JSON or SSE body, got {raw[:200]!r}") from None
    return decode_completion(payload)


async def _drain(response: Response) -> bool:
    """Read to the end of the body after `[DONE]` so the connection can be reused.

    A host that keeps the body open after `[DONE]` costs at most
    `_DRAIN_TIMEOUT`; the connection is then dropped instead (returns False).
    """
    if response.complete:
        return True
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            await response.wait_complete()
    except (TimeoutError, HTTPError):
        return False
    return True


def _json_event(payload: bytes) -> object:
    try:
        return loads_clean(payload)
    except ValueError:
        raise UpstreamProtocolError(f"malformed JSON in stream: {payload[:200]!r}") from None
