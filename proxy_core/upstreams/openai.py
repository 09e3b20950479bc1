"""Any OpenAI-compatible host: OpenRouter, Moonshot, bedrock-mantle, local servers.

Requests go out through aiohttp's client: one `ClientSession` (a keep-alive
pool) per upstream, created by `start` inside the running loop. The body is
encoded once, to bytes, with each message's encoding kept from earlier turns
(`encodings.py`), and each network read's worth of the answer is
parsed at once. The key comes from the environment variable named in the
config and is sent as `Authorization: Bearer`; the client's own
`Authorization` is never forwarded.

Proxies come from the environment, as curl and most tools read them
(`proxy_for`): `HTTPS_PROXY` for https:// upstreams, `HTTP_PROXY` for
http://, `ALL_PROXY` for either when the specific one is unset, `NO_PROXY`
to bypass; lower-case names too. A proxy URL may be `http://` or `https://`
(TLS to the proxy), with credentials in it. SOCKS proxies (`socks5://`) are
not supported by aiohttp's client: such a setting is refused with an error
that says so, never silently spoken to as HTTP.

Library errors become Switchboard's `UpstreamError`s here (`_mapped`) and
nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from ..config import UpstreamSettings
from ..encodings import PartEncodings
from ..errors import (
    WHOLE_ANSWER_LIMIT, UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
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
#: Idle keep-alive connections are closed after this many seconds.
_KEEPALIVE = 30.0
_USER_AGENT = "switchboard"
_KEEPALIVE_PART = KeepAlivePart()


class ProxySettingError(UpstreamConnectError):
    """The environment names a proxy the client cannot speak to (retrying will not help)."""

    retryable = False
    code = "unsupported_proxy"


def proxy_for(url: URL) -> URL | None:
    """The proxy the environment names for `url`, or None (see the module docstring).

    Raises `ProxySettingError` for a proxy of a kind the client cannot speak.
    """
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not proxy or bypass(url.host or "", proxies):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parsed = URL(proxy)
    if parsed.scheme not in ("http", "https"):
        raise ProxySettingError(
            f"the proxy {parsed.with_user(None).with_password(None)} from the environment is "
            f"{parsed.scheme}://, which Switchboard's HTTP client does not speak; use an "
            f"http:// or https:// proxy, or add {url.host} to NO_PROXY")
    return parsed


class OpenAIUpstream:
    """Streams `/chat/completions` from an OpenAI-compatible base URL.

    The adapter owns a `ClientSession`, opened by `start` (or the first
    request) and closed by `aclose`.
    """

    kind = "openai"
    #: Hands each network read to `UpstreamRequest.capture` (`capture.py`).
    captures_wire = True

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
        self._url = URL(self.base_url + "/chat/completions", encoded=True)
        self._session: aiohttp.ClientSession | None = None
        self._proxy: URL | ProxySettingError | None = None
        #: Each message encoded once, however many turns resend it (`encodings.py`).
        self._encodings = PartEncodings()

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # The environment's proxy for this upstream, read once (reading it costs
            # ~0.2 ms: too much for every request).
            try:
                self._proxy = proxy_for(self._url)
            except ProxySettingError as exc:
                self._proxy = exc
            context: ssl.SSLContext | bool = True
            if self.settings.ca_bundle:
                context = ssl.create_default_context(cafile=self.settings.ca_bundle)
            connector = aiohttp.TCPConnector(limit=0, ssl=context, keepalive_timeout=_KEEPALIVE)
            timeout = aiohttp.ClientTimeout(total=None, connect=self.settings.connect_timeout)
            # Proxies are chosen per request by `proxy_for` (aiohttp's own reading of
            # the environment skips ALL_PROXY); no cookies are kept between turns.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True, trust_env=False)
        return self._session

    async def start(self) -> None:
        self._open_session()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream",
                   "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        headers.update(self.settings.headers)
        key = self.settings.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif self._basic is not None:
            headers["Authorization"] = self._basic
        return headers

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamPart, None]:
        session = self._open_session()
        proxy = self._proxy
        if isinstance(proxy, ProxySettingError):
            raise ProxySettingError(proxy.message)  # a new one each time: tracebacks pile up
        response: aiohttp.ClientResponse | None = None
        clean = False  # the body was read to its end: the connection can be reused
        try:
            try:
                body = request.raw if request.raw is not None else \
                    self._encodings.body(request.body)
                if request.on_send is not None:
                    request.on_send()
                response = await session.post(self._url, data=body, headers=self._headers(),
                                              proxy=proxy)
                capture = request.capture
                if capture is not None:
                    capture.answered(response.status, response.headers.get("content-type", ""))
                if response.status >= 400:
                    error = await _status_error(response)
                    if capture is not None:
                        capture.add(error.body.encode())
                    raise error
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    raw, clean = await _read_upto(response, WHOLE_ANSWER_LIMIT)
                    if capture is not None:
                        capture.add(raw)
                    if not clean:
                        raise UpstreamProtocolError(
                            f"the answer is larger than {WHOLE_ANSWER_LIMIT} bytes")
                    for part in _whole_response(raw):
                        yield part
                    return
                # The event stream, parsed here rather than in a generator of its own:
                # one hop less for every part. Each network read is parsed whole.
                events, decoder = SSEDecoder(), ChunkDecoder()
                read = response.content.readany
                finished = done = False
                while not done:
                    data = await read()
                    if capture is not None and data:
                        capture.add(data)
                    for event in events.feed(data) if data else events.close():
                        if event is COMMENT:
                            yield _KEEPALIVE_PART
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
            except (aiohttp.ClientError, HttpProcessingError, SSEProtocolError,
                    TimeoutError) as exc:
                raise self._mapped(exc) from None
        finally:
            if response is not None:
                if clean:
                    response.release()
                else:  # abandoned mid-body (client left, watchdog, error): drop it
                    response.close()

    def _mapped(self, exc: Exception) -> UpstreamError:
        """The one place aiohttp's errors become Switchboard's."""
        where = f"{self.name} ({self.base_url})"
        if isinstance(exc, SSEProtocolError):
            return UpstreamProtocolError(f"{where}: {exc}")
        if isinstance(exc, (TimeoutError, aiohttp.ConnectionTimeoutError)):
            return UpstreamTimeout(f"{where}: no connection within "
                                   f"{self.settings.connect_timeout:g}s")
        if isinstance(exc, aiohttp.ClientResponseError) and not isinstance(
                exc, aiohttp.ClientHttpProxyError):
            return UpstreamProtocolError(f"{where}: not a valid HTTP answer: {exc.message}")
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            return UpstreamConnectError(f"{where}: the proxy refused: {exc.status} {exc.message}")
        if isinstance(exc, HttpProcessingError):  # from aiohttp's pure-Python parser
            return UpstreamProtocolError(f"{where}: not a valid HTTP answer: {exc.message}")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return UpstreamConnectError(f"{where}: the connection broke mid-answer: {exc}")
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return UpstreamConnectError(f"{where}: the host closed the connection before answering")
        return UpstreamConnectError(f"{where}: {exc}")  # refused, unreachable, TLS, proxy


async def _read_upto(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The body, or its first `limit` bytes; and whether it was read to its end."""
    pieces: list[bytes] = []
    size = 0
    while size <= limit:
        piece = await response.content.readany()
        if not piece:
            return b"".join(pieces), True
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)[:limit], False


async def _status_error(response: aiohttp.ClientResponse) -> UpstreamStatusError:
    try:
        raw, _ = await _read_upto(response, _ERROR_BODY_LIMIT)
    except aiohttp.ClientError:
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
    except (TimeoutError, aiohttp.ClientError):
        return False
    return True


def _json_event(payload: bytes) -> object:
    try:
        return loads_clean(payload)
    except ValueError:
        raise UpstreamProtocolError(f"malformed JSON in stream: {payload[:200]!r}") from None
