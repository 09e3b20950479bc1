"""What does OpenTelemetry export cost the relay?

Five processes: a fake OpenAI-compatible upstream, an OTLP/HTTP receiver
(answers at once, or after 10 s: `--slow`), and proxies that differ only in
`[telemetry]`: off, exporting to the receiver, exporting to a port nobody
listens on. Streams run interleaved against each in the same run and are
reported as ratios to export off (the noise shows in the off-vs-off line).

    .venv/bin/python bench/bench_otel.py            # ~40 s
    .venv/bin/python bench/bench_otel.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402 - after the checkout is on sys.path

CHUNKS = 50


def _upstream_main(ready: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    def sse(payload: dict) -> bytes:  # type: ignore[type-arg]
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    lines = [sse({**base, "choices": [{"index": 0, "delta": {"content": " the quick brown fox"},
                                       "finish_reason": None}]}) for _ in range(CHUNKS)]
    lines.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 20, "completion_tokens": CHUNKS,
                                "total_tokens": 20 + CHUNKS}}))
    lines.append(b"data: [DONE]\n\n")

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for line in lines:
            await response.write(line)
        return response

    _serve(ready, stop, [("/v1/chat/completions", chat)])


def _receiver_main(ready: mp.Queue, stop: mp.Event, delay: float) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    async def export(request: web.Request) -> web.Response:
        await request.read()
        if delay:
            await asyncio.sleep(delay)
        return web.Response(body=b"", content_type="application/x-protobuf")

    _serve(ready, stop, [("/v1/traces", export), ("/v1/metrics", export)])


def _serve(ready: mp.Queue, stop: mp.Event, routes: list) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        for path, handler in routes:
            app.router.add_post(path, handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        ready.put(("ok", runner.addresses[0][1]))
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await runner.cleanup()

    asyncio.run(main())


def _proxy_main(ready: mp.Queue, stop: mp.Event, upstream: str, journal: str,  # type: ignore[type-arg]
                endpoint: str | None) -> None:
    from proxy_core.app import SwitchboardProxy
    from proxy_core.config import parse_config

    toml = f"""
[proxy]
journal = {json.dumps(journal)}
[upstreams.fake]
kind = "openai"
base_url = {json.dumps(upstream)}
[[routes]]
model = "*"
targets = ["fake:m"]
repairs = "kimi"
"""
    if endpoint:
        toml += f'[telemetry]\notlp_endpoint = {json.dumps(endpoint)}\nexport_timeout = 2\n'

    async def main() -> None:
        proxy = SwitchboardProxy(parse_config(toml, "<bench>"), host="127.0.0.1", port=0)
        await proxy.start()
        ready.put(("ok", proxy.port))
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        if proxy.telemetry is not None:
            print(f"  {endpoint}: {proxy.telemetry.status()}", flush=True)
        await proxy.stop()

    asyncio.run(main())


def start(ctx, target, *args):  # type: ignore[no-untyped-def]
    ready, stop = ctx.Queue(), ctx.Event()
    # Not daemonic: a proxy exporting telemetry starts a process of its own.
    proc = ctx.Process(target=target, args=(ready, stop, *args), daemon=False)
    proc.start()
    status, value = ready.get(timeout=30)
    assert status == "ok", value
    return proc, stop, value


async def one(session: aiohttp.ClientSession, port: int) -> float:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    t0 = time.perf_counter()
    async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as r:
        data = await r.read()
    assert r.status == 200 and data.count(b"quick brown") == CHUNKS, data[-200:]
    return time.perf_counter() - t0


async def run(ports: dict[str, int], reps: int, conc: int) -> None:
    names = list(ports)
    single: dict[str, list[float]] = {n: [] for n in names}
    rate: dict[str, list[float]] = {n: [] for n in names}
    async with aiohttp.ClientSession() as session:
        for n in names:  # warm up
            await one(session, ports[n])
        for i in range(reps):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                single[n].append(await one(session, ports[n]))
                t0 = time.perf_counter()
                await asyncio.gather(*(one(session, ports[n]) for _ in range(conc)))
                rate[n].append(conc * CHUNKS / (time.perf_counter() - t0))
    base_t = statistics.median(single["off"])
    base_r = statistics.median(rate["off"])
    print(f"{'proxy':<14}{'stream p50 ms':>15}{'ratio':>8}{'chunks/s x' + str(conc):>16}{'ratio':>8}")
    for n in names:
        t, r = statistics.median(single[n]), statistics.median(rate[n])
        print(f"{n:<14}{t * 1000:>15.2f}{t / base_t:>8.3f}{r:>16.0f}{r / base_r:>8.3f}")
    print("Ratios are against export off, measured interleaved in the same run; "
          "'off-again' (a second proxy with export off) shows the noise.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slow", action="store_true", help="the receiver answers after 10 s")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    children = []
    up_proc, up_stop, up_port = start(ctx, _upstream_main)
    children.append((up_proc, up_stop))
    rx_proc, rx_stop, rx_port = start(ctx, _receiver_main, 10.0 if args.slow else 0.0)
    children.append((rx_proc, rx_stop))
    with socket.socket() as s:  # a port nobody listens on: the collector is down
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    upstream = f"http://127.0.0.1:{up_port}/v1"
    ports: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, endpoint in (("off", None), ("off-again", None),
                               ("export" + ("-slow" if args.slow else ""), f"http://127.0.0.1:{rx_port}"),
                               ("export-down", f"http://127.0.0.1:{dead}")):
            proc, stop, port = start(ctx, _proxy_main, upstream, f"{tmp}/{name}.sqlite3", endpoint)
            children.append((proc, stop))
            ports[name] = port
        try:
            asyncio.run(run(ports, reps=10 if args.quick else 40, conc=16))
        finally:
            for proc, stop in reversed(children):
                stop.set()
                proc.join(timeout=15)
                if proc.is_alive():
                    proc.terminate()


if __name__ == "__main__":
    main()
