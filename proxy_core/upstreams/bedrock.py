"""Bedrock Converse through boto3 (`kind = "bedrock"`).

One boto3 client per upstream, created once at start (botocore clients are
thread-safe), with the table's `region`, optional `endpoint_url`, `profile`
and `ca_bundle`. Credentials come from the standard AWS chain (environment,
profile files, SSO, instance roles); when `AWS_BEARER_TOKEN_BEDROCK` is set,
botocore (≥ 1.39) sends it as `Authorization: Bearer` instead of signing —
and only over HTTPS, so an `http://` `endpoint_url` needs SigV4 credentials.

boto3 is synchronous. Each attempt runs the blocking `converse_stream` call
and the event iteration in its own daemon thread, which hands every event
to the event loop (`call_soon_threadsafe` into an `asyncio.Queue`); the
translation to internal parts happens on the loop (`converse.py`). When the
pipeline closes the stream early (a watchdog stall, the client gone), the
response socket is shut down, which ends the thread's blocking read at
once. A host that never sends response headers cannot be interrupted that
way; its thread ends at botocore's `read_timeout` (default 120 s), long
after the watchdog has moved on.

botocore's own retries are off (`total_max_attempts = 1`): the watchdog
owns retrying. botocore exceptions are mapped to `UpstreamError`s here and
nowhere else. With `stream = false` the adapter calls `converse` (for
models without streaming); the pipeline always asks upstreams for a stream,
so a client's non-streaming request still uses `converse_stream` by default.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from ..config import UpstreamSettings
from ..errors import (
    ConfigError, UpstreamConnectError, UpstreamError, UpstreamProtocolError, UpstreamStatusError,
)
from ..stream import StreamPart
from .base import UpstreamRequest
from .converse import (
    ConverseStreamDecoder, ConverseTranslationError, converse_response_parts,
    status_error, stream_exception_error, to_converse,
)

BEARER_ENV = "AWS_BEARER_TOKEN_BEDROCK"
#: Concurrent connections per upstream (botocore's default is 10).
_POOL_SIZE = 64


@dataclass(frozen=True, slots=True)
class _Failed:
    """The worker thread's call raised."""

    error: BaseException


_END = object()


class BedrockUpstream:
    """Streams ConverseStream (or Converse) from Bedrock Runtime."""

    kind = "bedrock"

    def __init__(self, settings: UpstreamSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._secrets: tuple[str, ...] = ()

    def secret_values(self) -> tuple[str, ...]:
        """Credentials resolved from a profile, SSO or a role: for the redactor
        (keys from the environment it knows already)."""
        return self._secrets

    @property
    def where(self) -> str:
        return self.settings.endpoint_url or f"bedrock-runtime.{self.settings.region}"

    async def start(self) -> None:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._make_client)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    def _make_client(self) -> Any:
        # boto3 costs ~130 ms to import: only proxies with a bedrock upstream pay it.
        import boto3
        import botocore.exceptions
        from botocore.config import Config as BotoConfig

        settings = self.settings
        key = f"upstreams.{self.name}"
        try:
            session = boto3.Session(profile_name=settings.profile, region_name=settings.region)
        except botocore.exceptions.ProfileNotFound:
            raise ConfigError(f"{key}.profile: AWS profile {settings.profile!r} not found "
                              "in the AWS config files") from None
        if os.environ.get(BEARER_ENV):
            if (settings.endpoint_url or "https://").startswith("http://"):
                raise ConfigError(
                    f"{key}.endpoint_url: {BEARER_ENV} is set, and botocore sends a bearer "
                    "token only over https; use an https endpoint_url, or unset it and use "
                    "SigV4 credentials")
        else:
            try:
                credentials = session.get_credentials()
            except botocore.exceptions.BotoCoreError as exc:
                raise ConfigError(f"{key}: cannot load AWS credentials: {exc}") from None
            if credentials is None:
                raise ConfigError(
                    f"{key}: no AWS credentials: set {BEARER_ENV}, or AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or name a profile")
            frozen = credentials.get_frozen_credentials()
            self._secrets = tuple(v for v in (frozen.access_key, frozen.secret_key, frozen.token) if v)
        config = BotoConfig(
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=_POOL_SIZE,
            tcp_keepalive=True,
            user_agent_extra="switchboard",
        )
        return session.client("bedrock-runtime", region_name=settings.region,
                              endpoint_url=settings.endpoint_url,
                              verify=settings.ca_bundle, config=config)

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamPart, None]:
        if self._client is None:
            await self.start()
        try:
            call = to_converse(request.body, request.model)
        except ConverseTranslationError as exc:
            raise UpstreamStatusError(400, f"{self.name}: {exc}") from None
        streaming = self.settings.stream and request.body.get("stream", True) is not False
        operation = self._client.converse_stream if streaming else self._client.converse
        if request.on_send is not None:
            request.on_send()
        worker = _Worker(operation, call.kwargs, streaming=streaming,
                         name=f"switchboard-bedrock-{self.name}")
        try:
            async with aclosing(worker.events()) as events:
                if streaming:
                    decoder = ConverseStreamDecoder(call.tool_names)
                    async for event in events:
                        for part in decoder.feed(event):
                            yield part
                    if not decoder.finished:
                        raise UpstreamConnectError(
                            f"the stream ended before the model finished ({self.where})")
                else:
                    async for response in events:
                        for part in converse_response_parts(response, call.tool_names):
                            yield part
        except _Raised as raised:
            raise self._error(raised.error) from None
        except UpstreamError as exc:  # from the translation of what Bedrock sent
            exc.message = f"{self.name}: {exc.message}"
            exc.args = (exc.message,)
            raise
        finally:
            worker.close()

    def _error(self, exc: BaseException) -> UpstreamError:
        """Map a botocore / urllib3 exception into Switchboard's hierarchy (the one place)."""
        import botocore.eventstream
        import botocore.exceptions
        import urllib3.exceptions

        prefix = f"{self.name}: "
        if isinstance(exc, botocore.exceptions.EventStreamError):
            error = exc.response.get("Error", {})
            mapped = stream_exception_error(str(error.get("Code", "")), str(error.get("Message", "")))
        elif isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 502
            mapped = status_error(int(status), str(error.get("Code", "")), str(error.get("Message", "")))
        elif isinstance(exc, _credential_errors(botocore.exceptions)):
            mapped = UpstreamStatusError(401, f"no usable AWS credentials: {exc}")
        elif isinstance(exc, botocore.exceptions.ParamValidationError):
            mapped = UpstreamStatusError(400, f"Converse request rejected by botocore: {exc}")
        elif isinstance(exc, botocore.eventstream.ParserError):
            mapped = UpstreamProtocolError(f"bad Bedrock event stream: {exc}")
        elif isinstance(exc, (botocore.exceptions.BotoCoreError, urllib3.exceptions.HTTPError,
                              OSError)):
            detail = str(exc) or type(exc).__name__
            mapped = UpstreamConnectError(f"{detail} ({self.where})")
        else:
            raise exc  # a bug of ours: let the pipeline report it as one
        mapped.message = prefix + mapped.message
        mapped.args = (mapped.message,)
        return mapped


def _credential_errors(exceptions: Any) -> tuple[type[BaseException], ...]:
    """botocore's "your credentials are missing or expired" errors: retrying cannot help."""
    names = ("NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError",
             "CredentialRetrievalError", "TokenRetrievalError", "SSOTokenLoadError",
             "UnauthorizedSSOTokenError")
    return tuple(getattr(exceptions, n) for n in names if hasattr(exceptions, n))


class _Raised(Exception):
    """Internal: carries the worker's exception to the loop side."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class _Worker:
    """One blocking boto3 call in a daemon thread, its events handed to the loop.

    `events()` yields each event dict of a stream (or the one response of a
    non-streaming call) and raises `_Raised` when the call failed. `close()`
    stops the thread from the loop side: it marks the worker closed and
    shuts down the response socket so a blocked read returns at once.
    """

    def __init__(self, call: Callable[..., Any], kwargs: dict[str, Any], *, streaming: bool,
                 name: str) -> None:
        self._call = call
        self._kwargs = kwargs
        self._streaming = streaming
        self._name = name
        self._closed = False
        self._stream: Any = None
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    async def events(self) -> AsyncGenerator[Any, None]:
        self._loop = asyncio.get_running_loop()
        self.thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self.thread.start()
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise _Raised(item.error)
            yield item

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream = self._stream
        if stream is not None:
            _shutdown(stream)

    # -- in the worker thread --------------------------------------------------------

    def _put(self, item: Any) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _run(self) -> None:
        stream = None
        try:
            response = self._call(**self._kwargs)
            if not self._streaming:
                self._put(response)
                self._put(_END)
                return
            stream = response["stream"]
            with self._lock:
                closed = self._closed
                self._stream = stream
            if closed:
                return
            for event in stream:
                if self._closed:
                    return
                self._put(event)
            self._put(_END)
        except BaseException as exc:  # handed to the loop, which maps it
            self._put(_Failed(exc))
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # noqa: BLE001 - closing a dead connection
                    pass


def _shutdown(stream: Any) -> None:
    """Interrupt a read blocked in another thread on this event stream's socket.

    `close()` alone does not: the thread's read holds a reference to the
    socket file, so the descriptor stays open and the read stays blocked.
    urllib3's `HTTPResponse.shutdown()` (2.3+) shuts the socket down for
    reading, which ends the read at once; the worker thread then closes the
    response itself. botocore's `EventStream` exposes no public handle on
    its response, hence `_raw_stream`.
    """
    raw = getattr(stream, "_raw_stream", None)
    try:
        if raw is not None and hasattr(raw, "shutdown"):
            raw.shutdown()
        else:
            stream.close()
    except Exception:  # noqa: BLE001 - already closed or released: nothing to interrupt
        pass
