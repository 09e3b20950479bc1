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
import os
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
            status = proxy.telemetry.status()
            print(f"  {endpoint}: {status}", flush=True)
        await proxy.stop()

    asyncio.run(main())


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


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


def _children_cpu(pid: int) -> float:
    """CPU seconds of the processes `pid` started (a proxy's telemetry process)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                total += _cpu_seconds(int(stat.parent.name)) or 0.0
        except (OSError, IndexError, ValueError):
            continue
    return total


async def run(ports: dict[str, int], reps: int, conc: int, pids: dict[str, int]) -> None:
    names = list(ports)
    single: dict[str, list[float]] = {n: [] for n in names}
    rate: dict[str, list[float]] = {n: [] for n in names}
    async with aiohttp.ClientSession() as session:
        for n in names:  # warm up
            await one(session, ports[n])
        await asyncio.sleep(3)  # the telemetry processes finish importing the SDK
        cpu0 = {n: _children_cpu(pid) for n, pid in pids.items()}
        for i in range(reps):
            order = names[i % len(names):] + names[:i % len(names)]
            for n in order:
                single[n].append(await one(session, ports[n]))
                t0 = time.perf_counter()
                await asyncio.gather(*(one(session, ports[n]) for _ in range(conc)))
                rate[n].append(conc * CHUNKS / (time.perf_counter() - t0))
        await asyncio.sleep(3)  # the last batches are built and exported
        spent = {n: _children_cpu(pid) - cpu0[n] for n, pid in pids.items()}
    print(f"{'proxy':<14}{'stream p50 ms':>15}{'ratio':>8}{'chunks/s x' + str(conc):>16}"
          f"{'ratio':>8}{'middle half':>16}")
    for n in names:
        t, r = statistics.median(single[n]), statistics.median(rate[n])
        # Each round's rate against export off's in the same round: the machine's drift
        # over the run cancels out of these pairs.
        paired = sorted(a / b for a, b in zip(rate[n], rate["off"], strict=True))
        low, high = paired[len(paired) // 4], paired[(3 * len(paired)) // 4]
        print(f"{n:<14}{t * 1000:>15.2f}{t / statistics.median(single['off']):>8.3f}"
              f"{r:>16.0f}{statistics.median(paired):>8.3f}{f'{low:.3f}-{high:.3f}':>16}")
    print("Ratios are against export off, measured interleaved in the same run (throughput:"
          " the median of each round's ratio, and the middle half of those ratios);"
          " 'off-again' (a second proxy with export off) shows the noise.")
    turns = reps * (1 + conc)
    for n in names:
        if n.startswith("export"):
            print(f"{n}: its telemetry process used {spent[n] / turns * 1e6:.0f} us of CPU per"
                  f" turn ({turns} turns), at the lowest CPU priority (SCHED_IDLE)")


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
    pids: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, endpoint in (("off", None), ("off-again", None),
                               ("export" + ("-slow" if args.slow else ""), f"http://127.0.0.1:{rx_port}"),
                               ("export-down", f"http://127.0.0.1:{dead}")):
            proc, stop, port = start(ctx, _proxy_main, upstream, f"{tmp}/{name}.sqlite3", endpoint)
            children.append((proc, stop))
            ports[name] = port
            pids[name] = proc.pid
        try:
            asyncio.run(run(ports, reps=10 if args.quick else 40, conc=16, pids=pids))
        finally:
            for proc, stop in reversed(children):
                stop.set()
                proc.join(timeout=15)
                if proc.is_alive():
                    proc.terminate()


if __name__ == "__main__":
    main()
