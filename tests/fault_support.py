"""Support for fault tests: a raw TCP upstream that misbehaves, and `switchboard serve` in a process.

`RawUpstream` is a real TCP server on 127.0.0.1 that speaks as much HTTP as
a test wants and no more: each connection reads the request head and body,
then plays a script of raw steps — bytes written as they are, pauses, a byte
at a time at a given pace, a reset (RST) or a clean close. It counts the
connections it served and those the peer closed while it was still talking.

`ServeProcess` runs `python -m tui.cli serve` with a config file, collects
its stderr, and can be killed with SIGKILL (optionally with resource limits
set in the child, e.g. a file-size limit standing in for a full disk).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    return http_chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


def text_event(text: str) -> bytes:
    return sse_event({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                      "choices": [{"index": 0, "delta": {"content": text},
                                   "finish_reason": None}]})


def finish_events() -> bytes:
    return (sse_event({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            + http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Trickle:
    """Write `data` one byte at a time, `interval` seconds apart."""

    data: bytes
    interval: float


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP reset."""


RawStep = bytes | Pause | Trickle | Reset


class RawUpstream:
    """A TCP server answering each connection with the next script (or the default)."""

    def __init__(self, default: list[RawStep] | None = None) -> None:
        self.default = default or [SSE_HEAD, text_event("fine"), finish_events()]
        self.scripts: list[list[RawStep]] = []
        self.connections = 0
        self.requests = 0
        self.peer_closed = 0  # connections the proxy closed while we still had more to send
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:  # keep-alive: one script per request on this connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                match = re.search(rb"content-length:\s*(\d+)", head, re.I)
                if match:
                    await reader.readexactly(int(match.group(1)))
                self.requests += 1
                script = self.scripts.pop(0) if self.scripts else self.default
                if not await self._play(script, writer):
                    return
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _play(self, script: list[RawStep], writer: asyncio.StreamWriter) -> bool:
        """Play the steps; False when the connection is over."""
        try:
            for step in script:
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                elif isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Trickle):
                    for i in range(len(step.data)):
                        writer.write(step.data[i:i + 1])
                        await writer.drain()
                        await asyncio.sleep(step.interval)
                elif isinstance(step, Reset):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return False
            return True
        except (ConnectionError, asyncio.CancelledError):
            self.peer_closed += 1
            return False


def raw_upstream_config(base_url: str, journal: Path | None = None, *,
                        first_token_timeout: float = 2.0, idle_timeout: float = 2.0,
                        max_attempts: int = 2) -> str:
    """One route `test-model` → the raw upstream, no repairs, no keep-alives to the client."""
    journal_line = f"journal = {json.dumps(str(journal))}\n" if journal else ""
    return f"""
[proxy]
host = "127.0.0.1"
port = 0
{journal_line}
[watchdog]
first_token_timeout = {first_token_timeout}
idle_timeout = {idle_timeout}
max_attempts = {max_attempts}
keepalive_interval = 0

[upstreams.raw]
kind = "openai"
base_url = {json.dumps(base_url)}

[[routes]]
model = "test-model"
targets = ["raw:up-model"]
repairs = "none"
"""


class ServeProcess:
    """`python -m tui.cli serve --config PATH --port 0`, stderr collected."""

    def __init__(self, proc: asyncio.subprocess.Process, base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url
        self.stderr = bytearray()
        self._drain = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    @classmethod
    async def start(cls, config: Path, env: dict[str, str] | None = None,
                    extra_args: tuple[str, ...] = (),
                    preexec: Callable[[], None] | None = None) -> ServeProcess:
        full_env = {**os.environ, **(env or {})}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tui.cli", "serve", "--config", str(config), "--port", "0",
            *extra_args, cwd=REPO, env=full_env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, preexec_fn=preexec)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async with asyncio.timeout(20):
                line = (await proc.stdout.readline()).decode()
        except TimeoutError:
            proc.kill()
            raise
        match = re.search(r"ready on (http://\S+)", line)
        if match is None:
            proc.kill()
            rest = (await proc.stderr.read()).decode()
            raise AssertionError(f"serve did not start: {line!r} {rest}")
        return cls(proc, match.group(1))

    @property
    def log(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        await self._drain

    async def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await self.proc.wait()
            await self._drain
        return code
