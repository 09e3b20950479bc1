"""What does Switchboard add to a streaming chat completion?

Four processes: a fake OpenAI-compatible upstream, the proxy (journal on,
as a user runs it), a bare TCP pipe to the fake (the "floor": what any proxy
hop costs on this machine) and this client. Every scenario runs directly
against the fake, through the pipe, and through the proxy — once with
repairs off (`repairs = "none"`) and once with the Kimi repairs on
(`repairs = "kimi"`: the leak parser reads every delta) — interleaved, in the
same run, and is reported as a ratio or a difference to the direct
connection. On a noisy machine the absolute numbers mean little; the
same-run comparison does.

    .venv/bin/python bench/bench_relay.py            # full run, ~2 min
    .venv/bin/python bench/bench_relay.py --quick    # smoke run, ~30 s
    .venv/bin/python bench/bench_relay.py --profile cprofile   # + proxy hot spots

Scenarios: added time to first byte (p50, p99), added total time of a
50-chunk stream, chunks/s with 16 and with 128 concurrent streams, one long
stream, and the proxy's memory per open stream. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from agent_request import agent_session_bytes  # noqa: E402  (bench/, next to this script)

# ---------------------------------------------------------------------------
# The fake upstream (runs in its own process)
# ---------------------------------------------------------------------------

#: Text deltas of 20 bytes each, like the few tokens a real model sends per chunk.
_FRAGMENTS = [" the quick brown fox", " jumps over the lazy", " dog; then it sleeps",
              " until the sun rises", " again over the hill"]
#: The reply is encoded in the model name: chunks, delay before the first (ms),
#: and optionally how long to hold the stream open after the first chunk (ms).
_MODEL_RE = re.compile(r"bench-c(\d+)-d(\d+)(?:-h(\d+))?")


def bench_model(chunks: int, delay_ms: int = 0, hold_ms: int = 0, *, repairs: bool = False) -> str:
    name = f"bench-c{chunks}-d{delay_ms}" + (f"-h{hold_ms}" if hold_ms else "")
    return "rep-" + name if repairs else name


def _sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _stream_lines(model: str, chunks: int) -> list[bytes]:
    """The whole SSE body of one completion, one bytes object per event."""
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
            "model": model}
    lines = [_sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None}]})]
    for i in range(chunks):
        lines.append(_sse({**head, "choices": [{"index": 0,
                                                 "delta": {"content": _FRAGMENTS[i % len(_FRAGMENTS)]},
                                                 "finish_reason": None}]}))
    lines.append(_sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    lines.append(_sse({**head, "choices": [],
                       "usage": {"prompt_tokens": 12, "completion_tokens": chunks,
                                 "total_tokens": 12 + chunks}}))
    lines.append(b"data: [DONE]\n\n")
    return lines


async def _serve_chat(chat: Callable[..., Awaitable[Any]], ready: mp.Queue,
                      stop: mp.Event) -> None:
    """Serve `chat` at /v1/chat/completions on a free port until `stop` is set; the port
    goes to `ready`."""
    from aiohttp import web

    app = web.Application(client_max_size=64 * 1024 * 1024)  # agent-sized requests
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    ready.put(("ok", site._server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
    await asyncio.get_running_loop().run_in_executor(None, stop.wait)
    await runner.cleanup()


def _upstream_main(ready: mp.Queue, stop: mp.Event) -> None:
    from aiohttp import web

    cache: dict[str, list[bytes]] = {}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        m = _MODEL_RE.search(model)
        if m is None:
            return web.json_response({"error": {"message": f"bad bench model {model!r}"}}, status=400)
        chunks, delay_ms, hold_ms = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
        lines = cache.get(model)
        if lines is None:
            lines = cache[model] = _stream_lines(model, chunks)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        for i, line in enumerate(lines):  # one write per event, as a real server flushes per token
            await response.write(line)
            if hold_ms and i == 1:
                await asyncio.sleep(hold_ms / 1000)
        return response

    try:
        asyncio.run(_serve_chat(chat, ready, stop))
    except Exception as exc:  # report instead of leaving the parent waiting
        ready.put(("error", repr(exc)))


# ---------------------------------------------------------------------------
# The proxy (runs in its own process)
# ---------------------------------------------------------------------------

def proxy_config(upstream_url: str, journal: str) -> str:
    """The proxy's config: `rep-*` models with the Kimi repairs, everything else relayed as is."""
    return f"""
[proxy]
journal = {json.dumps(journal)}

[upstreams.fake]
kind = "openai"
base_url = {json.dumps(upstream_url)}

[[routes]]
model = "rep-*"
targets = ["fake"]
repairs = "kimi"

[[routes]]
model = "*"
targets = ["fake"]
repairs = "none"
"""


def serve_proxy(ready: mp.Queue, stop: mp.Event, upstream_url: str, journal: str) -> None:
    """Run the bench's proxy (journal on) on the loop `switchboard serve` uses until `stop`
    is set; its port goes to `ready`, or the error that kept it from starting."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from proxy_core.app import SwitchboardProxy
    from proxy_core.config import parse_config
    from proxy_core.runner import run as run_loop

    config = parse_config(proxy_config(upstream_url, journal), "<bench>")

    async def main() -> None:
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0, journal=True)
        await proxy.start()
        ready.put(("ok", proxy.port))
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await proxy.stop()

    try:
        run_loop(main())
    except Exception as exc:  # report instead of leaving the parent waiting
        ready.put(("error", repr(exc)))


def _proxy_main(ready: mp.Queue, stop: mp.Event, upstream_url: str, journal: str,
                profile: str | None, profile_out: str, tree: str | None = None) -> None:
    if tree is not None:  # `--before`: the proxy of another checkout
        sys.path.insert(0, tree)
    profiler = None
    if profile == "cprofile":
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    elif profile == "pyinstrument":
        from pyinstrument import Profiler
        profiler = Profiler(async_mode="disabled")
        profiler.start()
    try:
        serve_proxy(ready, stop, upstream_url, journal)
    finally:
        if profile == "cprofile":
            profiler.disable()
            profiler.dump_stats(profile_out)
        elif profile == "pyinstrument":
            profiler.stop()
            Path(profile_out).write_text(profiler.output_text(unicode=False, color=False))


# ---------------------------------------------------------------------------
# The floor: a bare TCP pipe to the fake upstream (runs in its own process)
# ---------------------------------------------------------------------------

class _PipeEnd(asyncio.Protocol):
    """One end of a byte pipe: every chunk received is written straight to the peer.

    The pipe exists to measure the floor. Any proxy, however fast, adds a
    hop: two more sockets, another process to wake up, each chunk received
    and sent again. A pipe that does only that — no HTTP parsing, no routing,
    no journal, no buffering beyond the kernel's — shows what the hop alone
    costs on this machine, so Switchboard's added first byte can be read
    against it rather than against zero.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _PipeEnd | None = None
        self.early: list[bytes] = []  # received before the other end was connected
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            peer.transport.write(data)  # type: ignore[union-attr]
        else:
            self.early.append(data)

    def eof_received(self) -> None:
        return None  # close this end; connection_lost closes the peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.peer is not None:
            self.peer.transport.close()  # type: ignore[union-attr]

    # Flow control: while this end's send buffer is full, stop reading the peer.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.resume_reading()  # type: ignore[union-attr]


class _PipeClientEnd(_PipeEnd):
    """An accepted client connection: opens its own connection to the upstream."""

    def __init__(self, upstream_port: int, live: set[_PipeEnd]) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.live = live
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.live.add(self)
        self.connecting = asyncio.get_running_loop().create_task(self.connect())

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        super().connection_lost(exc)

    async def connect(self) -> None:
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                _PipeEnd, "127.0.0.1", self.upstream_port)
        except OSError:
            self.transport.close()  # type: ignore[union-attr]
            return
        if self.closed or upstream.closed:  # one side went away while connecting
            upstream.transport.close()  # type: ignore[union-attr]
            self.transport.close()  # type: ignore[union-attr]
            return
        self.peer, upstream.peer = upstream, self
        for end in (self, upstream):  # flush what arrived before the link
            for chunk in end.early:
                end.peer.transport.write(chunk)  # type: ignore[union-attr]
            end.early.clear()


def _pipe_main(ready: mp.Queue, stop: mp.Event, upstream_port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        live: set[_PipeEnd] = set()
        server = await loop.create_server(lambda: _PipeClientEnd(upstream_port, live),
                                          "127.0.0.1", 0, backlog=1024)
        ready.put(("ok", server.sockets[0].getsockname()[1]))
        await loop.run_in_executor(None, stop.wait)
        server.close()
        for end in list(live):  # close both ends of every pipe still open
            end.transport.close()  # type: ignore[union-attr]
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run

    try:
        asyncio.run(main())
    except Exception as exc:
        ready.put(("error", repr(exc)))


# ---------------------------------------------------------------------------
# The store-and-forward floor: aiohttp alone, reading the request before sending
# it on (runs in its own process)
# ---------------------------------------------------------------------------

def _relay_main(ready: mp.Queue, stop: mp.Event, upstream_url: str) -> None:
    """An HTTP relay with nothing of Switchboard's: read the whole body, post it upstream,
    stream the answer back. A proxy that must see the request before choosing where it
    goes (to route, repair or record it) cannot add less than this on these libraries;
    the bare TCP pipe, which never waits for a whole request, can."""
    from aiohttp import web

    async def main() -> None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

        async def chat(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            async with session.post(upstream_url + "/chat/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as answer:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                async for piece in answer.content.iter_any():
                    await response.write(piece)
                return response

        await _serve_chat(chat, ready, stop)
        await session.close()

    from proxy_core.runner import run as run_loop
    try:
        run_loop(main())  # the loop the proxy uses
    except Exception as exc:
        ready.put(("error", repr(exc)))


def start_child(ctx, target, *args):  # type: ignore[no-untyped-def]
    ready, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=target, args=(ready, stop, *args), daemon=True)
    proc.start()
    status, value = ready.get(timeout=30)
    if status != "ok":
        raise RuntimeError(f"{target.__name__} failed to start: {value}")
    return proc, stop, value


def stop_child(proc, stop) -> None:  # type: ignore[no-untyped-def]
    stop.set()
    proc.join(timeout=15)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=5)


def pin(pids: list[int], cpu: int) -> None:
    """Run every thread of these processes (and those they start later) on `cpu` only."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {cpu})


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int | None:
    """Resident memory of a process (Linux /proc); `VmHWM` gives the peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# ---------------------------------------------------------------------------
# The client (this process)
# ---------------------------------------------------------------------------

_CONTENT = re.compile(rb'"content":"[^"]')
#: Every content string of a reply (the bench's fragments hold no quotes or escapes).
_CONTENT_TEXT = re.compile(rb'"content":"([^"]*)"')


def reply_text(chunks: int) -> bytes:
    """The text the fake upstream's reply of `chunks` content deltas spells."""
    return "".join(_FRAGMENTS[i % len(_FRAGMENTS)] for i in range(chunks)).encode()


@dataclass
class Run:
    ttfb: float
    total: float
    chunks: int
    nbytes: int
    cpu: float = 0.0  # proxy CPU seconds spent during this run (proxy targets only)


#: The size of every request's conversation (`--context-kb`): 0 is a one-line prompt.
_CONTEXT_KB = 0
#: Each target's session at that size: its first history's requests, the current
#: history's, which one goes next, and how many histories it has begun.
_SESSIONS: dict[tuple[str, str], tuple[list[bytes], list[bytes], int, int]] = {}
#: What every ten turns begin (`--restart`): "new", a new history; "fresh", a new history
#: with every message new; "undo", the first request of the same history again.
_RESTART = "new"
#: The user's prompt in every agent-sized request; a new history asks it with its number.
_PROMPT = b"build a small calculator module with tests"
#: Text in every assistant message and every tool result (`agent_request.py`); a fresh
#: history numbers them too.
_IN_EVERY_STEP = (b"The user wants the failing test fixed.", b"<file>")


def set_context(kb: int) -> None:
    global _CONTEXT_KB
    _CONTEXT_KB = kb
    _SESSIONS.clear()


def request_body(base: str, model: str) -> bytes:
    """The next request of `base`'s session for `model` at the current context size.

    Ten turns, each the one before plus an agent step, as an agent sends
    them: what lets a proxy reuse the previous turn's work. Then a new
    history begins: the same ten bodies with the user's prompt numbered,
    so from the second message on nothing is a request seen before (as
    when a user edits the first prompt, or the date in opencode's system
    prompt turns), though the messages after it are. `--restart fresh`
    numbers those too, in every assistant message and tool result: no
    message of the new history was seen before, and its first turn is
    parsed, repaired, encoded, named and stored whole, as a session's
    first turn that somehow starts at this size would be. `--restart undo`
    begins the same history again: the first body is then the last one
    cut back, as after an undo. Every target walks the same bodies, so
    each sees the same sizes.
    """
    key = (base, model)
    first, bodies, turn, history = _SESSIONS.get(key) or (
        (made := agent_session_bytes(_CONTEXT_KB, model)), made, 0, 0)
    if turn == len(bodies):
        turn, history = 0, history + 1
        if _RESTART in ("new", "fresh") and len(first) > 1:
            numbered = _PROMPT + b" (history %d)" % history
            bodies = [body.replace(_PROMPT, numbered, 1) for body in first]
            if _RESTART == "fresh":
                for text in _IN_EVERY_STEP:
                    bodies = [body.replace(text, text + b" (%d)" % history) for body in bodies]
    _SESSIONS[key] = (first, bodies, turn + 1, history)
    return bodies[turn]


async def one_stream(session: aiohttp.ClientSession, base: str, model: str, chunks: int,
                     first: asyncio.Event | None = None) -> Run:
    """One streamed completion, checked: the reply's whole text and `[DONE]` arrived."""
    body = request_body(base, model)
    pieces: list[bytes] = []
    ttfb = None
    tail = b""
    t0 = time.perf_counter()
    async with session.post(f"{base}/v1/chat/completions", data=body,
                            headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            raise RuntimeError(f"{base}: HTTP {response.status}: {(await response.read())[:300]!r}")
        async for piece in response.content.iter_any():
            pieces.append(piece)
            if ttfb is None:
                if _CONTENT.search(tail + piece):
                    ttfb = time.perf_counter() - t0
                    if first is not None:
                        first.set()
                tail = piece[-16:]
    total = time.perf_counter() - t0
    raw = b"".join(pieces)
    # The text, not the number of deltas: a proxy may send the same text in other pieces
    # (the leak repair holds each delta's last word until the next one).
    text = b"".join(_CONTENT_TEXT.findall(raw))
    if text != reply_text(chunks) or not raw.rstrip().endswith(b"data: [DONE]") or ttfb is None:
        raise RuntimeError(f"{base} {model}: expected the {chunks} content deltas' text and "
                           f"[DONE], got {text[-200:]!r}: {raw[-300:]!r}")
    return Run(ttfb, total, chunks, len(raw))


async def concurrent_streams(session: aiohttp.ClientSession, base: str, model: str,
                             streams: int, chunks: int) -> Run:
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one_stream(session, base, model, chunks) for _ in range(streams)))
    wall = time.perf_counter() - t0
    return Run(statistics.median(r.ttfb for r in runs), wall,
               sum(r.chunks for r in runs), sum(r.nbytes for r in runs))


@dataclass(frozen=True)
class Target:
    name: str      # "direct" | "floor" | "proxy" | "repairs"
    base: str
    repairs: bool
    pid: int | None  # the proxy's pid, for CPU and memory accounting; None if not a proxy

    def model(self, chunks: int, delay_ms: int = 0, hold_ms: int = 0) -> str:
        return bench_model(chunks, delay_ms, hold_ms, repairs=self.repairs)


async def interleaved(reps: int, targets: list[Target],
                      make: Callable[[Target], Awaitable[Run]]) -> dict[str, list[Run]]:
    """Run each target `reps` times, rotating which goes first, charging proxy CPU per run."""
    runs: dict[str, list[Run]] = {t.name: [] for t in targets}
    for i in range(reps):
        shift = i % len(targets)
        for target in targets[shift:] + targets[:shift]:
            before = cpu_seconds(target.pid) if target.pid else None
            run = await make(target)
            if before is not None:
                after = cpu_seconds(target.pid)  # type: ignore[arg-type]
                run.cpu = (after or before) - before
            runs[target.name].append(run)
    return runs


async def held_streams_memory(session: aiohttp.ClientSession, targets: list[Target], count: int,
                              proxy_pid: int, hold_ms: int) -> dict[str, float]:
    """Bytes of proxy RSS per stream held open mid-answer, per proxy target.

    `count` streams per target are opened and held (the fake sends the first
    chunk, then waits `hold_ms`); targets are added one after the other, and
    each one's share is the RSS growth it caused, divided by `count`.
    """
    per_stream: dict[str, float] = {}
    tasks: list[asyncio.Task[Run]] = []
    await asyncio.sleep(0.2)
    for target in targets:
        pid = target.pid or proxy_pid
        before = rss_bytes(pid)
        firsts = [asyncio.Event() for _ in range(count)]
        tasks += [asyncio.create_task(one_stream(session, target.base,
                                                 target.model(20, 0, hold_ms), 20, first))
                  for first in firsts]
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), hold_ms / 1000)
        await asyncio.sleep(0.2)
        now = rss_bytes(pid)
        if before is not None and now is not None:
            per_stream[target.name] = (now - before) / count
    await asyncio.gather(*tasks)
    return per_stream


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def added_p50_interval(proxied: list[float], direct: list[float], resamples: int = 2000,
                       level: float = 0.9) -> tuple[float, float]:
    """A bootstrap interval for the added p50 (proxied p50 minus direct p50): both sets of
    runs resampled with replacement, `level` of the resampled differences inside. Seeded,
    so the same runs give the same interval."""
    draw = random.Random(12).choices
    diffs = sorted(statistics.median(draw(proxied, k=len(proxied)))
                   - statistics.median(draw(direct, k=len(direct))) for _ in range(resamples))
    tail = (1 - level) / 2
    return pct(diffs, tail), pct(diffs, 1 - tail)


def verdict(interval: tuple[float, float], target: float) -> str:
    """'met' if the whole interval is within the target, 'NOT met' if none of it is, and
    'within noise' if the target falls inside it: this run cannot tell."""
    low, high = interval
    if high <= target:
        return "met"
    if low > target:
        return "NOT met"
    return "within noise"


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

@dataclass
class Plan:
    ttfb_reps: int
    short_reps: int
    long_reps: int
    long_chunks: int
    conc_reps: int
    conc: tuple[tuple[int, int], ...]  # (streams, chunks per stream)
    held: int
    warmup: int


FULL = Plan(ttfb_reps=300, short_reps=300, long_reps=20, long_chunks=5000,
            conc_reps=6, conc=((16, 1000), (128, 1000)), held=200, warmup=3)
QUICK = Plan(ttfb_reps=40, short_reps=40, long_reps=4, long_chunks=5000,
             conc_reps=2, conc=((16, 1000), (128, 1000)), held=100, warmup=1)
SHORT_CHUNKS = 50


@dataclass
class Results:
    ttfb: dict[str, list[Run]] = field(default_factory=dict)
    short: dict[str, list[Run]] = field(default_factory=dict)
    long: dict[str, list[Run]] = field(default_factory=dict)
    conc: dict[tuple[int, int], dict[str, list[Run]]] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    upstream_cpu_per_chunk: float | None = None


SCENARIOS = ("memory", "ttfb", "short", "long", "concurrent")


async def run_bench(plan: Plan, delay_ms: int, targets: list[Target], upstream_pid: int,
                    proxy_pid: int, scenarios: tuple[str, ...] = SCENARIOS) -> Results:
    results = Results()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        proxied = [t for t in targets if t.pid]
        # Memory first, on a fresh proxy: later scenarios leave freed memory behind
        # that new streams would reuse, hiding their cost.
        for target in targets:
            await one_stream(session, target.base, target.model(10), 10)
        if "memory" in scenarios:
            results.memory = await held_streams_memory(session, proxied, plan.held, proxy_pid,
                                                       hold_ms=8000)

        # Warm-up: connection pools, the proxy's first-turn work, the fake's caches.
        for _ in range(plan.warmup):
            for target in targets:
                await one_stream(session, target.base, target.model(10, delay_ms), 10)
                if "long" in scenarios or "concurrent" in scenarios:
                    await one_stream(session, target.base, target.model(plan.long_chunks),
                                     plan.long_chunks)
                if "concurrent" in scenarios:
                    for streams, chunks in plan.conc:
                        await concurrent_streams(session, target.base, target.model(chunks),
                                                 streams, chunks)

        if "ttfb" in scenarios:
            results.ttfb = await interleaved(
                plan.ttfb_reps, targets,
                lambda t: one_stream(session, t.base, t.model(10, delay_ms), 10))
        if "short" in scenarios:
            results.short = await interleaved(
                plan.short_reps, targets,
                lambda t: one_stream(session, t.base, t.model(SHORT_CHUNKS), SHORT_CHUNKS))
        if "long" in scenarios:
            up0 = cpu_seconds(upstream_pid)
            results.long = await interleaved(
                plan.long_reps, targets,
                lambda t: one_stream(session, t.base, t.model(plan.long_chunks), plan.long_chunks))
            up1 = cpu_seconds(upstream_pid)
            if up0 is not None and up1 is not None:
                results.upstream_cpu_per_chunk = (up1 - up0) / (
                    plan.long_reps * len(targets) * plan.long_chunks)
        if "concurrent" in scenarios:
            for streams, chunks in plan.conc:
                results.conc[(streams, chunks)] = await interleaved(
                    plan.conc_reps, targets,
                    lambda t, s=streams, c=chunks: concurrent_streams(session, t.base, t.model(c),
                                                                      s, c))
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

#: One-line prompts: issue 12's added first byte at 0 KB (`AGENT_P50_BASE_MS`). The first
#: version's 1 ms was what its hand-written HTTP stack bought; issue 12 traded that stack
#: for aiohttp's and set this budget.
TTFB_TARGET_MS = 1.5
#: The first version's share of direct chunk throughput with 16 and 128 streams.
THROUGHPUT_TARGET = 0.5


def report(plan: Plan, delay_ms: int, targets: list[Target], r: Results, elapsed: float) -> None:
    names = [t.name for t in targets]
    label = _labels()
    proxied = {t.name for t in targets if t.pid}
    print()
    print(f"Switchboard relay benchmark ({'quick' if plan is QUICK else 'full'} run, "
          f"{elapsed:.0f} s, {os.cpu_count()} CPUs; request: "
          f"{f'{_CONTEXT_KB} KB opencode-shaped' if _CONTEXT_KB else 'one-line prompt'})")
    if "floor" in names:
        print("tcp-pipe = a bare byte pipe to the upstream, no HTTP: what any extra hop costs.")
    print("proxy = repairs off (relay only); proxy+repairs = the Kimi repairs on every delta.")
    print("Differences and ratios are against the direct connection, measured in the same run.")
    print()

    def row(metric: str, cells: list[str]) -> None:
        print(f"{metric:<34}" + "".join(f"{c:>17}" for c in cells))

    row("metric", [label[n] for n in names])
    print("-" * (34 + 17 * len(names)))

    def ms(v: float) -> str:
        return f"{v * 1000:.2f} ms"

    def added(v: float) -> str:
        return f"{v * 1000:+.2f} ms"

    summary: list[str] = []
    for title, runs, attr in ((f"time to first byte ({delay_ms} ms model delay)", r.ttfb, "ttfb"),
                              (f"{SHORT_CHUNKS}-chunk stream, total time", r.short, "total")):
        if not runs:
            continue
        direct = [getattr(x, attr) for x in runs["direct"]]
        for q, qname in ((0.5, "p50"), (0.99, "p99")):
            row(f"{title[:26]} {qname}", [ms(pct([getattr(x, attr) for x in runs[n]], q))
                                         for n in names])
        for q, qname in ((0.5, "p50"), (0.99, "p99")):
            base = pct(direct, q)
            row(f"  added, {qname}", ["" if n == "direct" else
                                      added(pct([getattr(x, attr) for x in runs[n]], q) - base)
                                      for n in names])
        if attr == "ttfb":
            for n in names[1:]:
                extra = pct([x.ttfb for x in runs[n]], 0.5) - pct(direct, 0.5)
                if n not in proxied:
                    summary.append(f"added first byte p50 ({label[n]} floor): "
                                   f"{extra * 1000:+.2f} ms — what any extra hop costs "
                                   f"on this machine")
                    continue
                verdict = "met" if extra * 1000 < TTFB_TARGET_MS else "NOT met"
                summary.append(f"added first byte p50 ({label[n]}): {extra * 1000:+.2f} ms "
                               f"(target < {TTFB_TARGET_MS:g} ms: {verdict})")

    def rate(run: Run) -> float:
        return run.chunks / run.total

    def rates(title: str, runs: dict[str, list[Run]]) -> None:
        d = statistics.median(rate(x) for x in runs["direct"])
        row(title, [f"{statistics.median(rate(x) for x in runs[n]) / 1000:,.1f}k ch/s"
                    for n in names])
        row("  share of direct", ["" if n == "direct" else
                                  f"{statistics.median(rate(x) for x in runs[n]) / d:.0%}"
                                  for n in names])

    if r.long:
        rates(f"1 stream x {plan.long_chunks} chunks", r.long)
    for (streams, chunks), runs in r.conc.items():
        rates(f"{streams} streams x {chunks} chunks", runs)
        d = statistics.median(rate(x) for x in runs["direct"])
        for n in names[1:]:
            share = statistics.median(rate(x) for x in runs[n]) / d
            if n not in proxied:
                summary.append(f"throughput, {streams} concurrent streams ({label[n]} floor): "
                               f"{share:.0%} of direct")
                continue
            verdict = "met" if share >= THROUGHPUT_TARGET else "NOT met"
            summary.append(f"throughput, {streams} concurrent streams ({label[n]}): {share:.0%} "
                           f"of direct (target >= {THROUGHPUT_TARGET:.0%}: {verdict})")

    relayed = r.conc.get(plan.conc[0]) or r.long
    if relayed:
        cpu_cells = []
        for n in names:
            chunks = sum(x.chunks for x in relayed[n])
            cpu_cells.append("" if n not in proxied or not chunks else
                             f"{sum(x.cpu for x in relayed[n]) / chunks * 1e6:.1f} us")
        row("proxy CPU per relayed chunk", cpu_cells)
    if r.short:
        row("proxy CPU per short turn", ["" if n not in proxied else
                                         f"{sum(x.cpu for x in r.short[n]) / len(r.short[n]) * 1000:.2f} ms"
                                         for n in names])
    if r.memory:
        row("proxy memory per open stream", ["" if n not in r.memory else
                                             f"{r.memory[n] / 1024:.1f} KB" for n in names])
    print()
    for line in summary:
        print(line)
    if r.upstream_cpu_per_chunk is not None:
        print(f"(the fake upstream spends {r.upstream_cpu_per_chunk * 1e6:.1f} us of CPU "
              f"producing one chunk)")


# ---------------------------------------------------------------------------
# Agent sizes (--context-kb)
# ---------------------------------------------------------------------------

@dataclass
class AgentPlan:
    ttfb_reps: int
    clients: int         # concurrent clients in the throughput runs
    per_client: int      # requests each client sends in one throughput run
    throughput_reps: int
    warmup: int


AGENT_FULL = AgentPlan(ttfb_reps=200, clients=8, per_client=6, throughput_reps=4, warmup=3)
AGENT_QUICK = AgentPlan(ttfb_reps=40, clients=8, per_client=3, throughput_reps=2, warmup=1)
AGENT_CHUNKS = 50  # chunks in each throughput request's reply


@dataclass
class AgentSize:
    kb: int
    actual_kb: float
    ttfb: dict[str, list[Run]]
    throughput: dict[str, list[Run]]  # one Run per batch: chunks = requests done, total = wall
    upstream_cpu: dict[str, float]    # the fake upstream's CPU per request, per target


async def client_batch(session: aiohttp.ClientSession, target: Target, clients: int,
                       per_client: int) -> Run:
    """`clients` concurrent clients, each sending `per_client` requests back to back."""
    async def client() -> None:
        for _ in range(per_client):
            await one_stream(session, target.base, target.model(AGENT_CHUNKS), AGENT_CHUNKS)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Run(0.0, time.perf_counter() - t0, clients * per_client, 0)


async def run_agent_sizes(plan: AgentPlan, sizes: list[int], delay_ms: int,
                          targets: list[Target], upstream_pid: int) -> list[AgentSize]:
    out: list[AgentSize] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=300)) as session:
        for kb in sizes:
            set_context(kb)
            for _ in range(plan.warmup):
                for target in targets:
                    await one_stream(session, target.base, target.model(10, delay_ms), 10)
            ttfb = await interleaved(
                plan.ttfb_reps, targets,
                lambda t: one_stream(session, t.base, t.model(10, delay_ms), 10))
            upstream_cpu: dict[str, float] = {}

            async def batch(t: Target, upstream_cpu: dict[str, float] = upstream_cpu) -> Run:
                before = cpu_seconds(upstream_pid)
                run = await client_batch(session, t, plan.clients, plan.per_client)
                after = cpu_seconds(upstream_pid)
                if before is not None and after is not None:
                    upstream_cpu[t.name] = upstream_cpu.get(t.name, 0.0) + after - before
                return run

            await interleaved(1, targets, batch)  # warm-up at this size
            upstream_cpu.clear()
            throughput = await interleaved(plan.throughput_reps, targets, batch)
            requests = plan.throughput_reps * plan.clients * plan.per_client
            per_request = {name: cpu / requests for name, cpu in upstream_cpu.items()}
            bodies = agent_session_bytes(kb, targets[0].model(10, delay_ms))
            actual = sum(map(len, bodies)) / len(bodies) / 1024  # the session's mean
            out.append(AgentSize(kb, actual, ttfb, throughput, per_request))
            print(f"  {kb} KB done", file=sys.stderr, flush=True)
    return out


#: `--pin`: the client and host on one CPU, the proxies on the other.
PINNED = False
AGENT_P50_BASE_MS = 1.5
AGENT_P50_PER_KB_US = 2.0


def _labels() -> dict[str, str]:
    """Column names; `before2`... are further `--before` checkouts."""
    names = {"direct": "direct", "floor": "tcp-pipe", "relay": "aiohttp-relay", "proxy": "proxy",
             "repairs": "proxy+repairs", "before": "before+repairs"}
    names.update({f"before{i}": f"before{i}+repairs" for i in range(2, 10)})
    return names


def report_agent(plan: AgentPlan, delay_ms: int, targets: list[Target], sizes: list[AgentSize],
                 elapsed: float) -> None:
    label = _labels()
    names = [t.name for t in targets]
    proxied = {t.name for t in targets if t.pid}
    print()
    print(f"Switchboard relay benchmark at agent sizes ({elapsed:.0f} s, {os.cpu_count()} CPUs): "
          f"opencode-shaped requests, {delay_ms} ms model delay, {plan.ttfb_reps} first-byte "
          f"runs; throughput = {plan.clients} clients x {plan.per_client} requests "
          f"({AGENT_CHUNKS}-chunk replies), {plan.throughput_reps} batches.")
    print("Differences and ratios are against the direct connection, measured in the same run.")
    if PINNED:
        print("Pinned (--pin): this client and the fake host on CPU 0, every proxy on CPU 1.")
    if "before" in names:
        print("before+repairs (before2+repairs, ...) = the proxy of the (first, second, ...)"
              " --before checkout, repairs on, in the same run.")
    others = [n for n in names if n != "direct"]
    head = f"{'request':>10} {'metric':<30}" + "".join(f"{label[n]:>18}" for n in others)
    print()
    print(head)
    print("-" * len(head))
    summary: list[str] = []
    for size in sizes:
        d50 = pct([x.ttfb for x in size.ttfb["direct"]], 0.5)
        d99 = pct([x.ttfb for x in size.ttfb["direct"]], 0.99)

        def rps(name: str, size: AgentSize = size) -> float:
            return statistics.median(x.chunks / x.total for x in size.throughput[name])

        direct_rps = rps("direct")
        first = f"{size.actual_kb:.0f} KB"

        def line(metric: str, cells: list[str], lead: str = "") -> None:
            print(f"{lead:>10} {metric:<30}" + "".join(f"{c:>18}" for c in cells))

        def ttfb(name: str, q: float, size: AgentSize = size) -> float:
            return pct([x.ttfb for x in size.ttfb[name]], q)

        line("direct first byte p50 / p99", [f"{d50 * 1000:.2f}/{d99 * 1000:.2f} ms"] +
             [""] * (len(others) - 1), first)
        line("added first byte, p50", [f"{(ttfb(n, 0.5) - d50) * 1000:+.2f} ms" for n in others])
        line("added first byte, p99", [f"{(ttfb(n, 0.99) - d99) * 1000:+.2f} ms" for n in others])
        line("proxied p99 / its p50", [f"{ttfb(n, 0.99) / ttfb(n, 0.5):.2f}x"
                                       if n in proxied else "" for n in others])
        line("throughput, share of direct", [f"{rps(n) / direct_rps:.0%}" for n in others])
        line(f"  (direct {direct_rps:.0f} req/s)", [f"{rps(n):.0f} req/s" for n in others])
        cpu_cells = []
        up = size.upstream_cpu.get("direct")
        for n in others:
            if n not in proxied:
                cpu_cells.append("")
                continue
            runs = size.throughput[n]
            per = sum(x.cpu for x in runs) / sum(x.chunks for x in runs)
            cpu_cells.append(f"{per * 1000:.2f} ms" + (f" ({per / up:.1f}x)" if up else ""))
        line("proxy CPU per request", cpu_cells)
        if up:
            line("  (upstream's, for scale)", [f"{up * 1000:.2f} ms"] + [""] * (len(others) - 1))
        print()
        if "repairs" in proxied:
            p50, p99 = ttfb("repairs", 0.5), ttfb("repairs", 0.99)
            added = p50 - d50
            budget = AGENT_P50_BASE_MS + AGENT_P50_PER_KB_US * size.actual_kb / 1000
            low, high = added_p50_interval([x.ttfb for x in size.ttfb["repairs"]],
                                           [x.ttfb for x in size.ttfb["direct"]])
            floor = (f" (aiohttp-relay: {rps('relay') / direct_rps:.0%})"
                     if "relay" in size.throughput else "")
            # What the libraries alone add in this run: the rest is Switchboard's own work.
            relay = (f"; aiohttp-relay {(ttfb('relay', 0.5) - d50) * 1000:+.2f} ms, "
                     f"Switchboard's own {(p50 - ttfb('relay', 0.5)) * 1000:+.2f} ms"
                     if "relay" in size.ttfb else "")
            summary.append(
                f"{size.kb:>5} KB: added first byte p50 {added * 1000:+.2f} ms "
                f"(90% interval {low * 1000:+.2f} to {high * 1000:+.2f}; target <= "
                f"{budget:.2f} ms: {verdict((low * 1000, high * 1000), budget)}{relay}); "
                f"p99/p50 "
                f"{p99 / p50:.2f} (target <= 3: {'met' if p99 <= 3 * p50 else 'NOT met'}); "
                f"throughput {rps('repairs') / direct_rps:.0%} of direct{floor}")
    for text in summary:
        print(text)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~30 s)")
    parser.add_argument("--first-delay-ms", type=int, default=20,
                        help="model 'thinking' time before the first chunk in the TTFB case")
    parser.add_argument("--context-kb", default=None,
                        help="agent sizes: send opencode-shaped requests of N KB (a comma list, "
                             "e.g. 0,100,500,1000) and measure first byte, throughput and CPU "
                             "per request at each size (~1-2 min per size)")
    parser.add_argument("--before", metavar="CHECKOUT[,CHECKOUT...]",
                        help="also run the proxy of another checkout (e.g. a worktree of main), "
                             "with repairs, in the same run: a before/after comparison that the "
                             "machine's noise cannot skew; several, comma-separated, for several")
    parser.add_argument("--restart", choices=("new", "fresh", "undo"), default="new",
                        help="at agent sizes, what begins every tenth turn: a new history, "
                             "its first prompt changed (default); a fresh one, every message "
                             "changed; or the first request of the same one again, as after "
                             "an undo")
    parser.add_argument("--no-repairs", action="store_true",
                        help="skip the proxy+repairs column")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the floor columns: tcp-pipe (a bare TCP pipe: what any "
                             "extra hop costs) and, at agent sizes, aiohttp-relay (what reading "
                             "the whole request before sending it on costs)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})")
    parser.add_argument("--pin", action="store_true",
                        help="run this client and the fake host on CPU 0 and every proxy (the "
                             "floors too) on CPU 1: throughput as on a machine where the proxy "
                             "has a core of its own, not shared with the client and the host")
    parser.add_argument("--profile", choices=("cprofile", "pyinstrument"),
                        help="profile the proxy process and print its hot spots")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    scenarios = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    sizes = [int(v) for v in args.context_kb.split(",")] if args.context_kb else None
    global _RESTART, PINNED
    _RESTART = args.restart
    PINNED = args.pin

    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        profile_out = str(Path(tmp) / "proxy.prof")
        up_proc, up_stop, up_port = start_child(ctx, _upstream_main)
        direct = f"http://127.0.0.1:{up_port}"
        px_proc = px_stop = pipe_proc = pipe_stop = None
        befores: list[tuple[mp.Process, mp.Event]] = []
        try:
            targets = [Target("direct", direct, False, None)]
            if not args.no_floor:
                pipe_proc, pipe_stop, pipe_port = start_child(ctx, _pipe_main, up_port)
                targets.append(Target("floor", f"http://127.0.0.1:{pipe_port}", False, None))
            if sizes is not None and not args.no_floor:  # what reading the request first costs
                relay_proc, relay_stop, relay_port = start_child(ctx, _relay_main, f"{direct}/v1")
                befores.append((relay_proc, relay_stop))
                targets.append(Target("relay", f"http://127.0.0.1:{relay_port}", False,
                                      relay_proc.pid))
            px_proc, px_stop, px_port = start_child(
                ctx, _proxy_main, f"{direct}/v1", str(Path(tmp) / "journal.sqlite3"),
                args.profile, profile_out)
            proxy = f"http://127.0.0.1:{px_port}"
            targets.append(Target("proxy", proxy, False, px_proc.pid))
            if not args.no_repairs:
                targets.append(Target("repairs", proxy, True, px_proc.pid))
            for i, tree in enumerate(args.before.split(",") if args.before else []):
                before_proc, before_stop, before_port = start_child(
                    ctx, _proxy_main, f"{direct}/v1", str(Path(tmp) / f"before{i}.sqlite3"),
                    None, "", str(Path(tree).resolve()))
                befores.append((before_proc, before_stop))
                targets.append(Target("before" if i == 0 else f"before{i + 1}",
                                      f"http://127.0.0.1:{before_port}", True, before_proc.pid))
            if args.pin:
                pin([os.getpid(), up_proc.pid], 0)
                pin([t.pid for t in targets if t.pid] + ([pipe_proc.pid] if pipe_proc else []), 1)
            if sizes is not None:
                agent = asyncio.run(run_agent_sizes(AGENT_QUICK if args.quick else AGENT_FULL,
                                                    sizes, args.first_delay_ms, targets,
                                                    up_proc.pid))
            else:
                results = asyncio.run(run_bench(plan, args.first_delay_ms, targets, up_proc.pid,
                                                px_proc.pid, scenarios))
        finally:
            for before_proc, before_stop in befores:
                stop_child(before_proc, before_stop)
            if px_proc is not None:
                stop_child(px_proc, px_stop)
            if pipe_proc is not None:
                stop_child(pipe_proc, pipe_stop)
            stop_child(up_proc, up_stop)
        if sizes is not None:
            report_agent(AGENT_QUICK if args.quick else AGENT_FULL, args.first_delay_ms,
                         targets, agent, time.perf_counter() - started)
        else:
            report(plan, args.first_delay_ms, targets, results, time.perf_counter() - started)
        if args.profile == "cprofile" and Path(profile_out).exists():
            import pstats
            print("\nproxy process profile (cProfile, whole run incl. idle), top by own time:")
            stats = pstats.Stats(profile_out, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)
            print("proxy_core functions by cumulative time:")
            stats.sort_stats("cumulative").print_stats(r"proxy_core", 25)
        elif args.profile == "pyinstrument" and Path(profile_out).exists():
            print("\nproxy process profile (pyinstrument):")
            print(Path(profile_out).read_text())


if __name__ == "__main__":
    main()
