"""Test support: a scriptable fake OpenAI-compatible upstream and client helpers.

Import from test modules as `from support import ...` (pytest puts `tests/`
on `sys.path`). The fixtures that start these live in `conftest.py`.

The fake upstream is a real aiohttp server on 127.0.0.1. What it answers is
scripted per request with *replies*: async callables
`(request, fake) -> web.StreamResponse`. Build them with

- `sse(*steps, done=True)` — a 200 `text/event-stream` made of steps:
  a `dict` is sent as `data: <json>`, a `str`/`bytes` is written verbatim
  (`": ping\\n\\n"`, `"data: {broken\\n\\n"`), and `Sleep`, `WaitFor`, `Hang`,
  `KeepAlives`, `Drop` control timing and the connection;
- `text_reply(...)`, `tool_reply(...)` — common well-formed streams;
- `error_reply(status, message)` — a JSON error with any status;
- `json_reply(payload)` — a non-streaming `chat.completion` answer;
- `hang_reply()`, `keepalive_reply()` — headers, then silence / comments only.

`fake.script(r1, r2)` answers the next two requests with r1 then r2; after
that `fake.default` answers. Every request is recorded in `fake.requests`
(method, path, lower-cased headers, JSON body); replies cut short because
the peer went away are counted in `fake.disconnects`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web

from proxy_core.journal import Journal

#: Environment variable holding the upstream key in test configs, and its value.
UPSTREAM_KEY_ENV = "SWITCHBOARD_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-test-upstream-key-0123456789abcdef"
#: The model clients ask for, and the model the route sends upstream.
MODEL = "test-model"
UPSTREAM_MODEL = "up-model"
#: Upstream names used by `openai_config`, in target order.
UPSTREAM_NAMES = ("primary", "backup", "third")

CHAT_PATH = "/v1/chat/completions"
API = "/switchboard/api"


# -- waiting ---------------------------------------------------------------------

async def wait_until(predicate: Callable[[], Any], *, timeout: float = 5.0,
                     what: str = "condition") -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def writer_held(journal: Journal) -> AsyncIterator[threading.Event]:
    """The journal's writer stuck on a slow write for the block; yields the event set
    once that write has ended (only after the block, unless something waited for it)."""
    started, busy, ended = threading.Event(), threading.Event(), threading.Event()

    def slow_write() -> None:
        started.set()
        busy.wait(10)
        ended.set()

    journal._do(slow_write)
    assert await asyncio.to_thread(started.wait, 10)
    try:
        yield ended
    finally:
        busy.set()


# -- stream steps -----------------------------------------------------------------

@dataclass(frozen=True)
class Sleep:
    """Pause the stream for `seconds`."""

    seconds: float


@dataclass(frozen=True)
class WaitFor:
    """Pause the stream until the test sets `event`."""

    event: asyncio.Event


@dataclass(frozen=True)
class Hang:
    """Send nothing more, ever (the reply ends only when the peer goes away)."""


@dataclass(frozen=True)
class KeepAlives:
    """Send `: keep-alive` comments every `interval` seconds, forever; never data."""

    interval: float = 0.05


@dataclass(frozen=True)
class Drop:
    """Abort the TCP connection here: no terminating chunk, no `[DONE]`."""


Step = dict[str, Any] | str | bytes | Sleep | WaitFor | Hang | KeepAlives | Drop
Reply = Callable[[web.Request, "FakeUpstream"], Awaitable[web.StreamResponse]]


class _Dropped(Exception):
    """Internal: a `Drop` step aborted the connection."""


async def _play(step: Step, request: web.Request, response: web.StreamResponse) -> None:
    if isinstance(step, dict):
        await response.write(b"data: " + json.dumps(step).encode() + b"\n\n")
    elif isinstance(step, str):
        await response.write(step.encode())
    elif isinstance(step, bytes):
        await response.write(step)
    elif isinstance(step, Sleep):
        await asyncio.sleep(step.seconds)
    elif isinstance(step, WaitFor):
        await step.event.wait()
    elif isinstance(step, Hang):
        await asyncio.Event().wait()
    elif isinstance(step, KeepAlives):
        while True:
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(step.interval)
    elif isinstance(step, Drop):
        assert request.transport is not None
        request.transport.abort()
        raise _Dropped
    else:  # pragma: no cover - a mistake in a test
        raise TypeError(f"unknown step {step!r}")


# -- replies ------------------------------------------------------------------------

def sse(*steps: Step, done: bool = True, status: int = 200) -> Reply:
    """A `text/event-stream` reply playing `steps`, then `data: [DONE]` if `done`."""

    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for step in steps:
            await _play(step, request, response)
        if done:
            await response.write(b"data: [DONE]\n\n")
        return response

    return reply


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` with a single choice."""
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def text_chunk(text: str) -> dict[str, Any]:
    return chunk({"content": text})


def reasoning_chunk(text: str) -> dict[str, Any]:
    return chunk({"reasoning_content": text})


def tool_call_chunk(index: int, *, id: str | None = None, name: str | None = None,
                    arguments: str | None = None) -> dict[str, Any]:
    """A tool-call fragment as OpenAI streams it (id/name only on the first one)."""
    call: dict[str, Any] = {"index": index}
    if id is not None:
        call["id"] = id
        call["type"] = "function"
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    call["function"] = function
    return chunk({"tool_calls": [call]})


def finish_chunk(reason: str = "stop") -> dict[str, Any]:
    return chunk({}, reason)


def usage_chunk(prompt: int = 11, completion: int = 7) -> dict[str, Any]:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
            "model": UPSTREAM_MODEL, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def text_reply(*pieces: str, finish: str = "stop", usage: bool = True,
               delay: float = 0.0) -> Reply:
    """A well-formed text stream: one chunk per piece, finish, usage, `[DONE]`."""
    if not pieces:
        pieces = ("Hello", " world")
    steps: list[Step] = []
    for piece in pieces:
        steps.append(text_chunk(piece))
        if delay:
            steps.append(Sleep(delay))
    steps.append(finish_chunk(finish))
    if usage:
        steps.append(usage_chunk())
    return sse(*steps)


def error_reply(status: int, message: str, *, type_: str = "invalid_request_error") -> Reply:
    """A JSON error answer in OpenAI's shape with the given HTTP status."""

    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        return web.json_response({"error": {"message": message, "type": type_, "code": status}},
                                 status=status)

    return reply


def completion_payload(text: str = "Hello world", finish: str = "stop") -> dict[str, Any]:
    """A whole, non-streamed `chat.completion` body."""
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


def json_reply(payload: Any, status: int = 200) -> Reply:
    """A plain JSON answer (an upstream that ignores `stream: true`)."""

    async def reply(request: web.Request, fake: FakeUpstream) -> web.StreamResponse:
        return web.json_response(payload, status=status)

    return reply


def hang_reply() -> Reply:
    """Send 200 and SSE headers, then nothing, ever (reference F2)."""
    return sse(Hang(), done=False)


def keepalive_reply(interval: float = 0.05) -> Reply:
    """Send 200 and SSE headers, then only keep-alive comments, forever."""
    return sse(KeepAlives(interval), done=False)


# -- the fake server ----------------------------------------------------------------

@dataclass
class SeenRequest:
    """One request the fake upstream received."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or the raw text when it is not JSON
    at: float = field(default_factory=time.monotonic)
    raw: bytes = b""  # the body's bytes as they arrived


class FakeUpstream:
    """A real aiohttp server on 127.0.0.1 answering any path with scripted replies.

    With `tls` (a server `SSLContext`) it speaks HTTPS, as `https://localhost:PORT`.
    """

    def __init__(self, default: Reply | None = None, *, tls: ssl.SSLContext | None = None) -> None:
        self.default: Reply = default or text_reply()
        self.tls = tls
        #: The client address of each connection requests came on (keep-alive reuse
        #: shows as fewer of them than requests).
        self.peers: set[tuple[str, int]] = set()
        self.requests: list[SeenRequest] = []
        #: Replies cut short because the peer (the proxy) closed the connection.
        self.disconnects = 0
        self._script: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """What to put in `base_url` of an `[upstreams.X]` table."""
        if self.tls is not None:
            return f"https://localhost:{self.port}/v1"
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Answer the next requests with `replies`, in order; then `default` again."""
        self._script.extend(replies)

    @property
    def chat_requests(self) -> list[SeenRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # agent-sized requests
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a reply that is waiting (Hang, WaitFor) ends as
        # soon as the proxy closes the connection, and is counted.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername")[:2])
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(SeenRequest(request.method, request.path,
                                         {k.lower(): v for k, v in request.headers.items()}, body,
                                         raw=raw))
        reply = self._script.popleft() if self._script else self.default
        try:
            return await reply(request, self)
        except _Dropped:
            raise asyncio.CancelledError from None
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise


# -- client side -------------------------------------------------------------------

def chat_body(text: str = "Say hello", *, model: str = MODEL, stream: bool = True,
              system: str | None = "You are a test.", **extra: Any) -> dict[str, Any]:
    """A minimal valid chat-completions request body."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": text})
    return {"model": model, "messages": messages, "stream": stream, **extra}


async def sse_payloads(response: httpx.Response) -> AsyncIterator[Any]:
    """Each `data:` payload of an SSE response: parsed JSON, or the string `"[DONE]"`."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        yield data if data == "[DONE]" else json.loads(data)


async def read_sse(response: httpx.Response, timeout: float = 10.0) -> list[Any]:
    """All `data:` payloads of an SSE response (see `sse_payloads`)."""
    async with asyncio.timeout(timeout):
        return [p async for p in sse_payloads(response)]


async def stream_chat(client: httpx.AsyncClient, base_url: str, body: dict[str, Any] | None = None,
                      headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> tuple[httpx.Response, list[Any]]:
    """POST a streaming chat request; return the response and all its SSE payloads."""
    async with asyncio.timeout(timeout):
        async with client.stream("POST", base_url + CHAT_PATH, json=body or chat_body(),
                                 headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                return response, []
            return response, await read_sse(response, timeout)


def deltas(payloads: list[Any]) -> list[dict[str, Any]]:
    """The `choices[0].delta` of every chunk that has a choice."""
    return [p["choices"][0]["delta"] for p in payloads
            if isinstance(p, dict) and p.get("choices")]


def content_of(payloads: list[Any]) -> str:
    """The assistant text a streaming client assembled."""
    return "".join(d.get("content") or "" for d in deltas(payloads))


def finish_reasons(payloads: list[Any]) -> list[str]:
    return [p["choices"][0]["finish_reason"] for p in payloads
            if isinstance(p, dict) and p.get("choices") and p["choices"][0].get("finish_reason")]


def stream_errors(payloads: list[Any]) -> list[dict[str, Any]]:
    """In-stream `data: {"error": ...}` payloads."""
    return [p["error"] for p in payloads if isinstance(p, dict) and "error" in p]


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check status and the `{"error": {"message", "type", "code"}}` shape; return the error."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "code" in error
    return error


# -- configuration -----------------------------------------------------------------

def openai_config(*base_urls: str, first_token_timeout: float = 2.0, idle_timeout: float = 2.0,
                  max_attempts: int = 3, model: str = MODEL, upstream_model: str = UPSTREAM_MODEL,
                  headers: dict[str, str] | None = None, max_body_mb: float | None = None,
                  key_env: str | None = UPSTREAM_KEY_ENV) -> str:
    """TOML for one route `model` → one `kind="openai"` upstream per base URL, in order.

    Upstreams are named `primary`, `backup`, `third`; targets are
    `NAME:upstream_model`. The journal path is set by the `proxy_factory` fixture.
    """
    lines = ["[proxy]", 'host = "127.0.0.1"', "port = 0"]
    if max_body_mb is not None:
        lines.append(f"max_body_mb = {max_body_mb}")
    lines += ["", "[watchdog]", f"first_token_timeout = {first_token_timeout}",
              f"idle_timeout = {idle_timeout}", f"max_attempts = {max_attempts}", ""]
    targets = []
    for name, url in zip(UPSTREAM_NAMES, base_urls, strict=False):
        lines += [f"[upstreams.{name}]", 'kind = "openai"', f"base_url = {json.dumps(url)}"]
        if key_env:
            lines.append(f"api_key_env = {json.dumps(key_env)}")
        if headers:
            inline = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in headers.items())
            lines.append(f"headers = {{ {inline} }}")
        lines.append("")
        targets.append(f"{name}:{upstream_model}")
    lines += ["[[routes]]", f"model = {json.dumps(model)}", f"targets = {json.dumps(targets)}",
              'repairs = "none"', ""]
    return "\n".join(lines)


# -- control API -------------------------------------------------------------------

async def api_turns(client: httpx.AsyncClient, base_url: str, **params: Any) -> list[dict[str, Any]]:
    """`GET /switchboard/api/turns` (oldest first)."""
    response = await client.get(base_url + API + "/turns", params=params)
    assert response.status_code == 200, response.text
    return response.json()["turns"]


async def api_turn(client: httpx.AsyncClient, base_url: str, turn_id: str) -> dict[str, Any]:
    """`GET /switchboard/api/turns/{id}`."""
    response = await client.get(f"{base_url}{API}/turns/{turn_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def last_turn(client: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
    """The most recent turn, as the control API shows it."""
    turns = await api_turns(client, base_url, limit=1)
    assert turns, "no turns recorded"
    return turns[-1]


async def settled_turn(client: httpx.AsyncClient, base_url: str, *,
                       timeout: float = 5.0) -> dict[str, Any]:
    """The most recent turn, once it is no longer `live`."""
    async def done() -> dict[str, Any] | None:
        turn = await last_turn(client, base_url)
        return turn if turn["state"] != "live" else None
    return await wait_until(done, timeout=timeout, what="the last turn to settle")


async def collect_answer(response: httpx.Response) -> dict[str, Any]:
    """A streamed completion as an agent assembles it: text, reasoning, tool calls
    (each checked to arrive whole, with a string id and a name), finish reason,
    usage, and an in-stream error if one came."""
    out: dict[str, Any] = {"text": "", "reasoning": "", "calls": [], "finish": None,
                           "error": None, "usage": None}
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            out["error"] = chunk["error"]
            continue
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
        for choice in chunk.get("choices", []):
            delta = choice["delta"]
            out["text"] += delta.get("content") or ""
            out["reasoning"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                assert isinstance(call["id"], str) and call["function"]["name"]
                json.loads(call["function"]["arguments"])  # whole, in one delta
                out["calls"].append(call)
            out["finish"] = choice.get("finish_reason") or out["finish"]
    return out


def packed(data: bytes, framing: str) -> bytes:
    """`data` compressed as a client sends it: "gzip", "deflate" (zlib's framing) or
    "raw deflate" (no framing, as some clients send `Content-Encoding: deflate`)."""
    wbits = {"gzip": 31, "deflate": 15, "raw deflate": -15}[framing]
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(data) + packer.flush()
