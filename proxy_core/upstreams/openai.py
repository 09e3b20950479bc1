"""Any OpenAI-compatible host: OpenRouter, Moonshot, bedrock-mantle, local servers.

All such upstreams share one `httpx.AsyncClient` (one connection pool). The
key comes from the environment variable named in the config and is sent as
`Authorization: Bearer`; the client's own `Authorization` is never
forwarded. httpx exceptions are mapped to `UpstreamError`s here and nowhere
else.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx

from ..config import UpstreamSettings
from ..errors import (
    UpstreamConnectError, UpstreamProtocolError, UpstreamStatusError, UpstreamTimeout,
)
from ..openai_wire import ChunkDecoder, decode_completion, error_message_from
from ..stream import FinishPart, KeepAlivePart, StreamPart
from .base import UpstreamRequest

#: How long to wait for the end of the body after `data: [DONE]`.
_DRAIN_TIMEOUT = 0.25
#: How much of an error body is read for the message.
_ERROR_BODY_LIMIT = 64 * 1024


def make_http_client() -> httpx.AsyncClient:
    """The one client shared by every HTTP upstream. The watchdog owns read timeouts."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        follow_redirects=False,
    )


class OpenAIUpstream:
    """Streams `/chat/completions` from an OpenAI-compatible base URL."""

    kind = "openai"

    def __init__(self, settings: UpstreamSettings, client: httpx.AsyncClient,
                 base_url: str | None = None) -> None:
        self.name = settings.name
        self.settings = settings
        self._client = client
        self.base_url = (base_url or settings.base_url).rstrip("/")

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        headers.update(dict(self.settings.headers))
        key = self.settings.api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def stream(self, request: UpstreamRequest) -> AsyncIterator[StreamPart]:
        url = f"{self.base_url}/chat/completions"
        try:
            async with self._client.stream(
                "POST", url, content=json.dumps(request.body).encode(), headers=self._headers(),
                timeout=httpx.Timeout(connect=self.settings.connect_timeout, read=None,
                                      write=60.0, pool=None),
            ) as response:
                if response.status_code >= 400:
                    raise await _status_error(response)
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    for part in _whole_response(await response.aread()):
                        yield part
                    return
                async for part in _sse_parts(response):
                    yield part
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"{self.name}: {type(exc).__name__} talking to {self.base_url}") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            detail = str(exc) or type(exc).__name__
            raise UpstreamConnectError(f"{self.name}: {detail} ({self.base_url})") from None


async def _status_error(response: httpx.Response) -> UpstreamStatusError:
    raw = b""
    async for piece in response.aiter_bytes():
        raw += piece
        if len(raw) >= _ERROR_BODY_LIMIT:
            break
    text = raw[:_ERROR_BODY_LIMIT].decode("utf-8", "replace")
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    message = error_message_from(payload, text.strip()[:500] or response.reason_phrase)
    return UpstreamStatusError(response.status_code, message, text)


def _whole_response(raw: bytes) -> list[StreamPart]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise UpstreamProtocolError(f"expected a JSON or SSE body, got {raw[:200]!r}") from None
    return decode_completion(payload)


async def _sse_parts(response: httpx.Response) -> AsyncIterator[StreamPart]:
    """Parse server-sent events into parts. Ends at `data: [DONE]`.

    A stream that closes with neither `[DONE]` nor a finish reason was cut
    off, and is reported as a dropped connection.
    """
    decoder = ChunkDecoder()
    data: list[str] = []
    finished = False
    lines = response.aiter_lines()
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue
        if line.startswith(":"):
            yield KeepAlivePart()
            continue
        if line or not data:
            continue  # other fields (event:, id:) and blank lines between events
        payload = "\n".join(data)
        data.clear()
        if payload.strip() == "[DONE]":
            finished = True
            await _drain(lines)
            break
        for part in decoder.feed(_json_event(payload)):
            finished = finished or isinstance(part, FinishPart)
            yield part
    else:
        if data:  # a last event without its blank line
            payload = "\n".join(data)
            finished = finished or payload.strip() == "[DONE]"
            if payload.strip() != "[DONE]":
                for part in decoder.feed(_json_event(payload)):
                    finished = finished or isinstance(part, FinishPart)
                    yield part
    if not finished:
        raise UpstreamConnectError("the stream ended before the model finished")
    for part in decoder.finish():
        yield part


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read to the end of the body after `[DONE]` so the connection is reused.

    A host that keeps the body open after `[DONE]` costs at most
    `_DRAIN_TIMEOUT`; the connection is then dropped instead.
    """
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT):
            async for _ in lines:
                pass
    except TimeoutError:
        pass


def _json_event(payload: str) -> object:
    try:
        return json.loads(payload)
    except ValueError:
        raise UpstreamProtocolError(f"malformed JSON in stream: {payload[:200]!r}") from None
