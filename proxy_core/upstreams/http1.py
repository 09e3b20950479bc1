"""A small HTTP/1.1 client for upstream hosts: keep-alive pool, streamed bodies, TLS, proxies.

Why not aiohttp's client, which Switchboard used first: the proxy's added
time to first byte is spent in work done right after the process wakes up,
when this kind of machine runs code 2-3 times slower than when busy (see
bench/README.md). aiohttp's client builds a request object, merges
cookies and default headers, and hands each body read through a stream
reader and a task wake-up; on the bench's first-byte path that was
~0.3 ms of the proxy's ~1.7 ms (measured with stamps on both sides).
Here a request is one `transport.write` of pre-built bytes, and the body
bytes a network read produced are handed straight to the waiting reader.

Parsing is httptools (llhttp, Node's HTTP parser; what uvicorn uses):
status, headers, chunked and length-delimited bodies; a body delimited by
the connection closing ends at the close. One request at a time per
connection; a finished connection (whole body read, no `Connection:
close`) goes back to its pool and is reused for at most `keepalive`
seconds of idleness. A reused connection that the host had already closed
is replaced once, transparently, when no byte of the answer came back.

Proxies come from the usual environment variables (`HTTPS_PROXY`,
`HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, read once per pool): HTTPS goes
through a `CONNECT` tunnel, plain HTTP as an absolute-form request to
the proxy. Credentials in the proxy URL become `Proxy-Authorization`.

Errors are `HTTPError`s: `ConnectFailed` (no connection, TLS or proxy
failure, within `connect_timeout`), `BadResponse` (not HTTP), and
`ConnectionBroken` (closed before the answer was whole). Header names and
values must not contain line breaks (the config refuses them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import httptools

#: Above this many unread body bytes the connection stops reading the socket.
_READ_HIGH_WATER = 1024 * 1024
#: Idle connections kept per pool; more are closed when released.
_MAX_IDLE = 256


class HTTPError(Exception):
    """Something went wrong talking to the host."""


class ConnectFailed(HTTPError):
    """No usable connection: refused, unreachable, timed out, TLS or proxy failure."""


class ConnectTimeout(ConnectFailed):
    """No connection within the connect timeout."""


class BadResponse(HTTPError):
    """What came back is not an HTTP/1.x response."""


class ConnectionBroken(HTTPError):
    """The connection closed before the response was whole."""


class _AfterResponse(Exception):
    """Raised from the parser when bytes follow the whole response (stops the parse)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host, port, and the path prefix of the base URL."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Proxy:
    host: str
    port: int
    authorization: str | None  # the Proxy-Authorization value


def proxy_for(origin: Origin) -> _Proxy | None:
    """The proxy the environment names for `origin`, if any (NO_PROXY respected)."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(origin.scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(origin.host, proxies):
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    authorization = None
    if parts.username is not None:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode()).decode()
    return _Proxy(parts.hostname, parts.port or 80, authorization)


class Response:
    """A response whose body is read as it arrives. Always `release()` or `close()` it."""

    __slots__ = ("status", "reason", "headers", "_conn", "_decoder")

    def __init__(self, conn: _Connection, status: int, reason: str,
                 headers: dict[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case names; repeated headers joined by ", "
        self._conn = conn
        encoding = headers.get("content-encoding", "").strip().lower()
        self._decoder = (zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip"
                         else zlib.decompressobj() if encoding == "deflate" else None)

    async def read_chunk(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none has); b"" at its end."""
        conn = self._conn
        data = conn.take() or await conn.wait_body()
        decoder = self._decoder
        if decoder is None:
            return data
        while data:  # compressed bytes that decode to nothing yet: read on
            try:
                plain = decoder.decompress(data)
            except zlib.error as exc:
                raise BadResponse(f"cannot decompress the body: {exc}") from None
            if plain:
                return plain
            data = conn.take() or await conn.wait_body()
        return decoder.flush()

    async def read(self, limit: int) -> bytes:
        """The body, or its first `limit` bytes."""
        pieces: list[bytes] = []
        size = 0
        while size < limit:
            piece = await self.read_chunk()
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)[:limit]

    @property
    def complete(self) -> bool:
        """The whole body has arrived (not necessarily been read)."""
        return self._conn.complete

    async def wait_complete(self) -> None:
        """Read (and drop) the rest of the body."""
        while await self.read_chunk():
            pass

    def release(self) -> None:
        """Done with it: the connection goes back to the pool if it can be reused."""
        self._conn.release()

    def close(self) -> None:
        """Done with it mid-body: the connection is closed at once."""
        self._conn.close()


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time. Parser callbacks fill the current response."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._reset()

    def _reset(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self._reason = b""
        self._headers: dict[str, str] = {}
        self._head: asyncio.Future[None] | None = None
        self._head_done = False
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.active = False    # between sending a request and releasing its response
        self.received = False  # any byte of the response came back
        self._error: HTTPError | None = None
        self._keep_alive = False

    # -- the exchange ----------------------------------------------------------

    async def exchange(self, request: bytes) -> Response:
        """Send one request and wait for the head of its response."""
        self._reset()
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise ConnectionBroken("the connection was closed before the request was sent")
        self.active = True
        self._head = self._loop.create_future()
        transport.write(request)
        try:
            await self._head
            if self._error is not None:
                raise self._error
        except BaseException:  # broken, or the caller gave up waiting: never reuse it
            self.close()
            raise
        finally:
            self._head = None
        reason = self._reason.decode("latin-1", "replace")
        return Response(self, self._status, reason, self._headers)

    def take(self) -> bytes:
        body = self._body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait_body(self) -> bytes:
        while not self._body:
            if self._error is not None:
                raise self._error
            if self.complete:
                return b""
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take()

    def release(self) -> None:
        self.active = False
        if self.complete and self._keep_alive and not self.closed:
            self._body = []
            self._buffered = 0
            if self._paused and self.transport is not None:
                # Paused by an unread body: an idle connection must read (to see a close).
                self._paused = False
                self.transport.resume_reading()
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- protocol callbacks -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.active:
            # Bytes while idle in the pool: the host is closing or confused. Not reusable.
            self.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # After the whole response (a second answer, garbage): the response
            # stands, but the connection is out of step and is dropped.
            if not self.complete:
                self._fail(BadResponse(f"not a valid HTTP response: {exc}"))
            self.close()
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the host switched protocols"))
            self.close()
        else:
            if self._buffered > _READ_HIGH_WATER and not self._paused \
                    and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost decides what the EOF means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self._head_done and not self.complete:
            if not self._delimited_by_length():
                self.complete = True  # the body ran to the close, as the head said it would
            else:
                self._fail(ConnectionBroken(
                    "the connection broke mid-response" + (f" ({exc})" if exc else "")))
        elif not self._head_done and (self._head is not None or self.received):
            self._fail(ConnectionBroken(
                "the server closed the connection" + (f" ({exc})" if exc else "")))
        self._wake()

    def on_message_begin(self) -> None:
        if self.complete:  # bytes after the whole response: not part of it
            raise _AfterResponse

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103): the real one follows
            self._headers = {}
            self._reason = b""
            return
        self._status = status
        self._head_done = True
        connection = self._headers.get("connection", "").lower()
        version = self._parser.get_http_version()
        self._keep_alive = ("close" not in connection if version == "1.1"
                            else "keep-alive" in connection)
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)

    def on_message_complete(self) -> None:
        if self._head_done:
            self.complete = True

    # -- helpers ---------------------------------------------------------------

    def _delimited_by_length(self) -> bool:
        headers = self._headers
        return ("content-length" in headers
                or "chunked" in headers.get("transfer-encoding", "").lower())

    def _fail(self, error: HTTPError) -> None:
        if self._error is None:
            self._error = error
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class ConnectionPool:
    """Connections to one origin (through the environment's proxy, if it names one)."""

    def __init__(self, base_url: str, *, connect_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None, keepalive: float = 30.0,
                 use_env_proxy: bool = True) -> None:
        self.origin = Origin.parse(base_url)
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._ssl = (ssl_context or ssl.create_default_context()) if self.origin.tls else None
        self._proxy = proxy_for(self.origin) if use_env_proxy else None
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        # Plain HTTP through a proxy: the request line names the whole URL.
        self._target_prefix = (f"http://{self.origin.authority}"
                               if self._proxy is not None and not self.origin.tls else "")

    def request_head(self, method: str, path: str, headers: Sequence[tuple[str, str]],
                     content_length: int) -> bytes:
        """The request line and headers, ready to send before a body of `content_length`."""
        lines = [f"{method} {self._target_prefix}{self.origin.path}{path} HTTP/1.1",
                 f"Host: {self.origin.authority}"]
        for name, value in headers:
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}")
        if self._target_prefix and self._proxy is not None and self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        lines.append(f"Content-Length: {content_length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def request(self, head: bytes, body: bytes) -> Response:
        """Send a request (`request_head` + body) and return its response's head."""
        data = head + body
        conn = self._idle_connection()
        if conn is not None:
            try:
                return await conn.exchange(data)
            except ConnectionBroken:
                if conn.received:
                    raise
                conn.close()  # closed by the host while idle: once more, on a new connection
        conn = await self._connect()
        return await conn.exchange(data)

    def _idle_connection(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive \
                    and conn.transport is not None and not conn.transport.is_closing():
                return conn
            conn.close()
        return None

    def put_back(self, conn: _Connection) -> None:
        if len(self._idle) >= _MAX_IDLE:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        self._open.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        origin, proxy = self.origin, self._proxy
        host, port = (proxy.host, proxy.port) if proxy is not None else (origin.host, origin.port)
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is not None and origin.tls:
                    conn = await self._tunnel(proxy)
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self), host, port, ssl=self._ssl,
                        server_hostname=origin.host if self._ssl else None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {self.connect_timeout:g}s") from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            where = f"proxy {host}:{port}" if proxy is not None else f"{host}:{port}"
            raise ConnectFailed(f"cannot connect to {where}: {exc.strerror or exc}") from None
        self._open.add(conn)
        return conn

    async def _tunnel(self, proxy: _Proxy) -> _Connection:
        """A TLS connection to the origin through the proxy's CONNECT."""
        loop = asyncio.get_running_loop()
        origin = self.origin
        transport, tunnel = await loop.create_connection(_TunnelHead, proxy.host, proxy.port)
        lines = [f"CONNECT {origin.host}:{origin.port} HTTP/1.1",
                 f"Host: {origin.host}:{origin.port}"]
        if proxy.authorization:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            status = await tunnel.status
            if status != 200:
                raise ConnectFailed(f"proxy {proxy.host}:{proxy.port} refused CONNECT"
                                    f" to {origin.host}:{origin.port} (HTTP {status})")
            conn = _Connection(self)
            tls = await loop.start_tls(transport, conn, self._ssl,  # type: ignore[arg-type]
                                       server_hostname=origin.host)
        except BaseException:
            transport.abort()
            raise
        if tls is None:
            raise ConnectFailed("the proxy tunnel closed during the TLS handshake")
        conn.connection_made(tls)
        return conn

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        self._open.clear()


class _TunnelHead(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT (its head only; a tunnel has no body)."""

    def __init__(self) -> None:
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._buffer = b""

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.status.done() or b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > 64 * 1024 and not self.status.done():
                self.status.set_exception(ConnectFailed("the proxy's answer to CONNECT is too long"))
            return
        line = self._buffer.split(b"\r\n", 1)[0].split()
        try:
            self.status.set_result(int(line[1]))
        except (IndexError, ValueError):
            self.status.set_exception(ConnectFailed(f"the proxy answered CONNECT with {line!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(ConnectFailed("the proxy closed the connection during CONNECT"))
