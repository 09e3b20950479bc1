"""How much memory does the proxy hold for big agent requests?

Three measurements of a real `SwitchboardProxy` (journal on, as a user runs
it) in its own process, read from Linux's /proc (VmRSS, and VmHWM for the
peak), with a fake upstream in this process:

1. **16 concurrent 1 MB requests** (16 different opencode-shaped sessions,
   nothing in common but the system prompt and tools): the fake upstream
   answers none until all 16 are in flight, so the proxy holds them all at
   once. Reports the proxy's peak resident memory, and what it added to
   the idle proxy. The README states the bound.
2. **8 distinct 60 MB requests sent at once** (`--large`, `--large-mb`),
   answered as they come, to a fresh proxy: its peak resident memory, and
   how many requests waited for room in the body budget (`[proxy]
   max_inflight_mb`). `--large 0` skips it (it takes about a minute).
3. **The turns kept in memory** (the dashboard's and the control API's
   `TurnStore`) after 60 turns of one 500 KB session, in a proxy in this
   process: the bytes their requests hold (every object counted once, by
   `sys.getsizeof`), against what the same turns would hold if each kept a
   private copy of its history (each turn's request counted on its own).

    .venv/bin/python bench/bench_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(extra))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from agent_session import session  # noqa: E402

MB = 1024 * 1024
#: The bound the README states for part 1 (peak resident memory of the proxy).
BOUND_MB = 256
#: `[proxy] max_inflight_mb`'s default, which the proxy of part 3 runs with.
INFLIGHT_MB = 128

_REPLY = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
     "choices": [{"index": 0, "delta": {"content": "Reading the next file."},
                  "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
]) + b"data: [DONE]\n\n"


def rss(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field_name} for {pid}")


def _proxy_main(ready: Any, stop: Any, upstream_url: str, journal: str) -> None:
    from proxy_core.app import SwitchboardProxy
    from proxy_core.config import parse_config
    from proxy_core.runner import run as run_loop

    config = parse_config(f"""
[proxy]
port = 0
[upstreams.fake]
kind = "openai"
base_url = {json.dumps(upstream_url)}
[[routes]]
model = "*"
targets = ["fake:up"]
""", "bench_memory")
    config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy,
                                                                   journal=Path(journal)))

    async def main() -> None:
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0)
        await proxy.start()
        ready.put(proxy.base_url)
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await proxy.stop()

    run_loop(main())


class Upstream:
    """Answers a short stream; with `hold`, only once that many requests are waiting."""

    def __init__(self) -> None:
        self.hold = 0
        self.waiting = 0
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        if self.hold:
            self.waiting += 1
            if self.waiting >= self.hold:
                self.release.set()
            await self.release.wait()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_REPLY)
        return response


async def post(client: aiohttp.ClientSession, url: str, body: dict[str, Any], session_id: str) -> None:
    async with client.post(url + "/v1/chat/completions", json=body,
                           headers={"x-session-id": session_id}) as response:
        assert response.status == 200, await response.text()
        await response.read()


async def with_proxy(upstream_url: str, work: Any) -> Any:
    """`await work(client, base_url, pid)` against a proxy in its own process."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory() as tmp:
        proc = ctx.Process(target=_proxy_main, daemon=True,
                           args=(ready, stop, upstream_url, str(Path(tmp) / "j.sqlite3")))
        proc.start()
        base = await asyncio.get_running_loop().run_in_executor(None, ready.get, True, 60)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
                return await work(client, base, proc.pid)
        finally:
            stop.set()
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 30)


def deep_size(root: Any, seen: set[int]) -> int:
    """Bytes of `root` and everything it holds (JSON values), skipping objects in `seen`."""
    total = 0
    stack = [root]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        total += sys.getsizeof(value)
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return total


async def store_sizes(upstream_url: str, requests: list[dict[str, Any]]) -> tuple[int, int]:
    """(held, would hold with private copies) by the requests of a proxy's stored turns."""
    from proxy_core.app import SwitchboardProxy
    from proxy_core.config import parse_config

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(f"""
[proxy]
journal = {json.dumps(str(Path(tmp) / "j.sqlite3"))}
[upstreams.fake]
kind = "openai"
base_url = {json.dumps(upstream_url)}
[[routes]]
model = "*"
targets = ["fake:up"]
""", "bench_memory")
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0)
        await proxy.start()
        async with aiohttp.ClientSession() as client:
            for body in requests:
                await post(client, proxy.base_url, body, "ses_long")
        await proxy.stop()  # the journal writes what is left (and its turns share) first
        turns = proxy.store.recent(0)
        assert len(turns) == len(requests)
        seen: set[int] = set()
        held = sum(deep_size(t.request, seen) for t in turns)
        private = sum(deep_size(t.request, set()) for t in turns)
    return held, private


def _numbered(message: dict[str, Any], session_number: int) -> dict[str, Any]:
    """The message with its text (the reasoning of a call, else the content) marked as
    session `session_number`'s."""
    field = "reasoning_content" if message.get("reasoning_content") else "content"
    text = message.get(field)
    return {**message, field: f"(session {session_number}) {text}"} if text else message


async def large_requests(upstream_url: str, count: int, size_mb: int) -> tuple[int, int]:
    """The proxy's peak resident memory while `count` distinct requests of `size_mb` MB
    arrive at once, and how many of them waited for room in the body budget."""
    base = next(session(1, size_mb * 1024, 1, "large"))
    bodies = [{**base, "messages": [*base["messages"][:1],
                                    {"role": "user", "content": f"large request {i}"},
                                    *(_numbered(m, i) for m in base["messages"][2:])]}
              for i in range(count)]

    async def flood(client: aiohttp.ClientSession, url: str, pid: int) -> tuple[int, int]:
        await asyncio.gather(*(post(client, url, b, f"ses_large_{i}") for i, b in enumerate(bodies)))
        async with client.get(url + "/switchboard/api/health") as response:
            waited = (await response.json())["request_bytes"]["waited"]
        return rss(pid, "VmHWM"), waited

    return await with_proxy(upstream_url, flood)  # type: ignore[no-any-return]


async def run(concurrent: int, request_kb: int, turns: int, session_kb: int,
              large_count: int = 0, large_mb: int = 60) -> int:
    upstream = Upstream()
    app = web.Application(client_max_size=256 * MB)
    app.router.add_post("/v1/chat/completions", upstream.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    upstream_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"

    bodies = [next(session(1, request_kb, 1, f"model-{i}")) for i in range(concurrent)]
    for i, body in enumerate(bodies):  # 16 sessions: nothing shared but prompt and tools
        body["messages"][1] = {"role": "user", "content": f"task {i}: make the tests pass"}
        # Every step's text numbered too: the proxy finds a message it read lately by its
        # bytes, so histories that were the same but for the prompt would be held once.
        body["messages"][2:] = [_numbered(message, i) for message in body["messages"][2:]]

    async def concurrent_requests(client: aiohttp.ClientSession, base: str, pid: int) -> tuple[int, int]:
        await post(client, base, session(1, 1, 1, "warm").__next__(), "ses_warm")
        idle = rss(pid)
        upstream.hold, upstream.waiting = concurrent, 0
        upstream.release.clear()
        await asyncio.gather(*(post(client, base, b, f"ses_{i}") for i, b in enumerate(bodies)))
        upstream.hold = 0
        return idle, rss(pid, "VmHWM")

    idle, peak = await with_proxy(upstream_url, concurrent_requests)
    size_kb = len(json.dumps(bodies[0])) // 1024
    print(f"{concurrent} concurrent requests of {size_kb} KB (all in flight at once):")
    print(f"  proxy idle      {idle / MB:7.1f} MB")
    print(f"  proxy peak      {peak / MB:7.1f} MB   (+{(peak - idle) / MB:.1f} MB,"
          f" {(peak - idle) / concurrent / MB:.1f} MB per request)")
    met = peak < BOUND_MB * MB
    print(f"  bound: peak under {BOUND_MB} MB: {'met' if met else 'MISSED'}")

    if large_count:
        peak_large, waited = await large_requests(upstream_url, large_count, large_mb)
        print(f"{large_count} concurrent requests of {large_mb} MB (answered as they come;"
              f" the proxy takes at most [proxy] max_inflight_mb = {INFLIGHT_MB} MB at once):")
        print(f"  proxy peak      {peak_large / MB:7.1f} MB   ({waited} requests waited for room)")

    requests = list(session(turns, session_kb, 1.1, "kimi-k2.5"))
    shared, private = await store_sizes(upstream_url, requests)
    print(f"{turns} turns of one {session_kb}-{len(json.dumps(requests[-1])) // 1024} KB session,"
          " kept in memory (TurnStore):")
    print(f"  requests hold   {shared / MB:7.1f} MB   (messages shared between turns)")
    print(f"  private copies  {private / MB:7.1f} MB   would hold ({private / shared:.0f}x)")
    await runner.cleanup()
    return 0 if met else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--request-kb", type=int, default=1024)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--session-kb", type=int, default=500)
    parser.add_argument("--large", type=int, default=8, metavar="N",
                        help="also send N distinct large requests at once (0: skip)")
    parser.add_argument("--large-mb", type=int, default=60)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.concurrent, args.request_kb, args.turns, args.session_kb,
                             args.large, args.large_mb)))


if __name__ == "__main__":
    main()
