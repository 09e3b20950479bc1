"""Any OpenAI-compatible host: OpenRouter, Moonshot, bedrock-mantle, local servers.

Requests go out through aiohttp's client (one connection pool per
upstream, created on first use inside the running loop): its C HTTP parser
hands over everything that arrived in one network read at once, where a
pure-Python HTTP/1.1 stack pays per HTTP chunk — on a relay of small SSE
events that is most of the proxy's cost, and about 1 ms per request more
(bench/bench_relay.py measures both). The key comes from the environment
variable named in the config and is sent as `Authorization: Bearer`; the
client's own `Authorization` is never forwarded. aiohttp's exceptions are
mapped to `UpstreamError`s here and nowhere else.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from ..config import UpstreamSettings
from ..errors import (
    UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
    UpstreamTimeout,
)
from ..openai_wire import ChunkDecoder, decode_completion, error_message_from, loads_clean
from ..sse import COMMENT, SSEDecoder, SSEProtocolError
from ..stream import FinishPart, KeepAlivePart, StreamPart
from .base import UpstreamRequest

#: How long to wait for the end of the body after `data: [DONE]`.
_DRAIN_TIMEOUT = 0.25
#: How much of an error body is read for the message.
_ERROR_BODY_LIMIT = 64 * 1024
#: Largest whole (non-streamed) JSON answer accepted.
_WHOLE_BODY_LIMIT = 64 * 1024 * 1024
_USER_AGENT = "switchboard"
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_KEEPALIVE = KeepAlivePart()
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _body_bytes(body: dict[str, Any]) -> bytes:
    try:
        return _compact(body).encode()
    except UnicodeEncodeError:  # a lone surrogate somewhere: let json escape it
        return json.dumps(body, separators=(",", ":")).encode()


class OpenAIUpstream:
    """Streams `/chat/completions` from an OpenAI-compatible base URL.

    The adapter owns an aiohttp session, opened by `start` and closed by `aclose`.
    """

    kind = "openai"

    def __init__(self, settings: UpstreamSettings, base_url: str | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        url = URL((base_url or settings.base_url).rstrip("/"))
        # Credentials in the URL (`https://user:pass@host`) become Basic auth,
        # used when no API key is configured; they never appear in messages.
        self._auth = (aiohttp.BasicAuth(url.user or "", url.password or "")
                      if url.user or url.password else None)
        self.base_url = str(url.with_user(None))
        self._url = f"{self.base_url}/chat/completions"
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=None, connect=None,
                                              sock_connect=settings.connect_timeout,
                                              sock_read=None)

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # No cap: every client stream needs its own upstream connection,
                # and queueing one behind the others would look like a stall.
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
                timeout=self._timeout,
                # Honour HTTP(S)_PROXY like other HTTP clients do, but only look
                # the environment up per request when one is set.
                trust_env=any(os.environ.get(name) for name in _PROXY_ENV),
            )
        return self._session

    async def start(self) -> None:
        self._open_session()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   "User-Agent": _USER_AGENT}
        headers.update(self.settings.headers)
        key = self.settings.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self._auth is not None:
            headers["Authorization"] = self._auth.encode()
        return headers

    async def stream(self, request: UpstreamRequest) -> AsyncIterator[StreamPart]:
        session = self._open_session()
        response: aiohttp.ClientResponse | None = None
        clean = False  # the body was read to its end: the connection can be reused
        try:
            try:
                response = await session.post(self._url, data=_body_bytes(request.body),
                                              headers=self._headers(), allow_redirects=False)
                if response.status >= 400:
                    raise await _status_error(response)
                if "text/event-stream" not in response.headers.get("Content-Type", ""):
                    raw = await _read_limited(response, _WHOLE_BODY_LIMIT)
                    clean = True
                    for part in _whole_response(raw):
                        yield part
                    return
                # The event stream, parsed here rather than in a generator of its own:
                # one hop less for every part. Each network read is parsed whole.
                events, decoder = SSEDecoder(), ChunkDecoder()
                content = response.content
                finished = done = False
                while not done:
                    data = await content.readany()
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
            except (aiohttp.ClientError, OSError, SSEProtocolError, TimeoutError) as exc:
                raise self._mapped(exc) from None
        finally:
            if response is not None:
                if clean:
                    response.release()
                else:  # abandoned mid-body (client left, watchdog, error): drop it
                    response.close()

    def _mapped(self, exc: BaseException) -> UpstreamError:
        where = f"{self.name} ({self.base_url})"
        if isinstance(exc, SSEProtocolError):
            return UpstreamProtocolError(f"{where}: {exc}")
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"{where}: no connection within "
                                   f"{self.settings.connect_timeout:g}s")
        if isinstance(exc, aiohttp.ClientResponseError):  # not HTTP at all
            return UpstreamProtocolError(f"{where}: not a valid HTTP response: "
                                         f"{exc.message or type(exc).__name__}")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return UpstreamConnectError(f"{where}: the connection broke mid-response ({exc})")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return UpstreamConnectError(f"{where}: the server closed the connection")
        detail = str(exc) or type(exc).__name__
        return UpstreamConnectError(f"{where}: {detail}")


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    pieces: list[bytes] = []
    size = 0
    while size < limit:
        piece = await response.content.readany()
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)[:limit]


async def _status_error(response: aiohttp.ClientResponse) -> UpstreamStatusError:
    try:
        raw = await _read_limited(response, _ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, OSError):
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


async def _drain(response: aiohttp.ClientResponse) -> bool:
    """Read to the end of the body after `[DONE]` so the connection can be reused.

    A host that keeps the body open after `[DONE]` costs at most
    `_DRAIN_TIMEOUT`; the connection is then dropped instead (returns False).
    """
    content = response.content
    if content.at_eof():
        return True
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            while await content.readany():
                pass
    except (TimeoutError, aiohttp.ClientError, OSError):
        return False
    return True


def _json_event(payload: bytes) -> object:
    try:
        return loads_clean(payload)
    except ValueError:
        raise UpstreamProtocolError(f"malformed JSON in stream: {payload[:200]!r}") from None
