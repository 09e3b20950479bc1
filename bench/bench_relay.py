"""What does Switchboard add to a streaming chat completion?

Runs three processes: a fake OpenAI-compatible upstream, the proxy (journal
on, as a user runs it) and this client. Every scenario is run both directly
against the fake and through the proxy, interleaved, in the same run, and
reported as a ratio: on a noisy machine the absolute numbers mean little,
the direct/proxy comparison does.

    .venv/bin/python bench/bench_relay.py            # full run, ~1 min
    .venv/bin/python bench/bench_relay.py --quick    # smoke run, ~15 s
    .venv/bin/python bench/bench_relay.py --profile cprofile   # + proxy hot spots

See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

# ---------------------------------------------------------------------------
# The fake upstream (runs in its own process)
# ---------------------------------------------------------------------------

#: Text deltas of 20 bytes each, like the few tokens a real model sends per chunk.
_FRAGMENTS = [" the quick brown fox", " jumps over the lazy", " dog; then it sleeps",
              " until the sun rises", " again over the hill"]
_MODEL_RE = re.compile(r"bench-c(\d+)-d(\d+)")


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


def _upstream_main(ready: mp.Queue, stop: mp.Event) -> None:
    from aiohttp import web

    cache: dict[str, list[bytes]] = {}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body["model"]
        m = _MODEL_RE.fullmatch(model)
        if m is None:
            return web.json_response({"error": {"message": f"bad bench model {model!r}"}}, status=400)
        chunks, delay_ms = int(m.group(1)), int(m.group(2))
        lines = cache.get(model)
        if lines is None:
            lines = cache[model] = _stream_lines(model, chunks)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        for line in lines:  # one write per event, as a real server flushes per token
            await response.write(line)
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.put(("ok", site._server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await runner.cleanup()

    try:
        asyncio.run(main())
    except Exception as exc:  # report instead of leaving the parent waiting
        ready.put(("error", repr(exc)))


# ---------------------------------------------------------------------------
# The proxy (runs in its own process)
# ---------------------------------------------------------------------------

def _proxy_main(ready: mp.Queue, stop: mp.Event, upstream_url: str, journal: str,
                profile: str | None, profile_out: str) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from proxy_core.app import SwitchboardProxy
    from proxy_core.config import parse_config

    config = parse_config(f"""
[proxy]
journal = {json.dumps(journal)}

[upstreams.fake]
kind = "openai"
base_url = {json.dumps(upstream_url)}

[[routes]]
model = "*"
targets = ["fake"]
""", "<bench>")

    async def main() -> None:
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0, journal=True)
        await proxy.start()
        ready.put(("ok", proxy.port))
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        await proxy.stop()

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
        asyncio.run(main())
    except Exception as exc:
        ready.put(("error", repr(exc)))
    finally:
        if profile == "cprofile":
            profiler.disable()
            profiler.dump_stats(profile_out)
        elif profile == "pyinstrument":
            profiler.stop()
            Path(profile_out).write_text(profiler.output_text(unicode=False, color=False))


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------
# The client (this process)
# ---------------------------------------------------------------------------

_CONTENT = re.compile(rb'"content":"[^"]')


@dataclass
class Run:
    ttfb: float
    total: float
    chunks: int
    nbytes: int


#: Earlier conversation sent with every request (`--request-kb`); agents send large contexts.
_HISTORY: list[dict] = []


def set_history(kb: int) -> None:
    _HISTORY.clear()
    for i in range(kb // 2):  # 2 KB messages, alternating roles
        _HISTORY.append({"role": "assistant" if i % 2 else "user",
                         "content": f"message {i}: " + "lorem ipsum " * 170})


async def one_stream(client: httpx.AsyncClient, base: str, chunks: int, delay_ms: int) -> Run:
    body = {"model": f"bench-c{chunks}-d{delay_ms}", "stream": True,
            "messages": [*_HISTORY, {"role": "user", "content": "write a long story"}]}
    pieces: list[bytes] = []
    ttfb = None
    tail = b""
    t0 = time.perf_counter()
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{base}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for piece in response.aiter_raw():
            pieces.append(piece)
            if ttfb is None:
                if _CONTENT.search(tail + piece):
                    ttfb = time.perf_counter() - t0
                tail = piece[-16:]
    total = time.perf_counter() - t0
    raw = b"".join(pieces)
    got = len(_CONTENT.findall(raw))
    if got != chunks or not raw.rstrip().endswith(b"data: [DONE]") or ttfb is None:
        raise RuntimeError(f"{base}: expected {chunks} content deltas and [DONE], got {got}: "
                           f"{raw[-300:]!r}")
    return Run(ttfb, total, got, len(raw))


async def concurrent_streams(client: httpx.AsyncClient, base: str, streams: int,
                             chunks: int) -> Run:
    t0 = time.perf_counter()
    runs = await asyncio.gather(*(one_stream(client, base, chunks, 0) for _ in range(streams)))
    wall = time.perf_counter() - t0
    return Run(statistics.median(r.ttfb for r in runs), wall,
               sum(r.chunks for r in runs), sum(r.nbytes for r in runs))


@dataclass
class Pair:
    direct: list[Run] = field(default_factory=list)
    proxy: list[Run] = field(default_factory=list)


async def interleaved(reps: int, direct, proxy) -> Pair:  # type: ignore[no-untyped-def]
    """Run `reps` direct/proxy pairs, alternating which goes first."""
    pair = Pair()
    for i in range(reps):
        order = [("direct", direct), ("proxy", proxy)]
        if i % 2:
            order.reverse()
        for name, fn in order:
            getattr(pair, name).append(await fn())
    return pair


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ---------------------------------------------------------------------------
# Orchestration and report
# ---------------------------------------------------------------------------

@dataclass
class Plan:
    ttfb_reps: int
    ttfb_chunks: int
    long_reps: int
    long_chunks: int
    conc_reps: int
    conc_streams: int
    conc_chunks: int
    warmup: int


FULL = Plan(ttfb_reps=120, ttfb_chunks=10, long_reps=30, long_chunks=5000,
            conc_reps=12, conc_streams=8, conc_chunks=1000, warmup=3)
QUICK = Plan(ttfb_reps=30, ttfb_chunks=10, long_reps=6, long_chunks=5000,
             conc_reps=3, conc_streams=8, conc_chunks=1000, warmup=1)


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


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def fmt_rate(value: float, unit: str) -> str:
    if unit == "chunks/s":
        return f"{value / 1000:,.1f}k ch/s"
    return f"{value:,.2f} MB/s"


async def run_bench(plan: Plan, delay_ms: int, direct: str, proxy: str,
                    upstream_pid: int, proxy_pid: int) -> dict:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits) as client:
        # Warm-up: connection pools, the proxy's first-turn work, the fake's caches.
        for _ in range(plan.warmup):
            for base in (direct, proxy):
                await one_stream(client, base, plan.ttfb_chunks, delay_ms)
                await one_stream(client, base, plan.long_chunks, 0)
                await concurrent_streams(client, base, plan.conc_streams, plan.conc_chunks)

        cpu_t0 = _cpu_seconds(proxy_pid)
        ttfb = await interleaved(
            plan.ttfb_reps,
            lambda: one_stream(client, direct, plan.ttfb_chunks, delay_ms),
            lambda: one_stream(client, proxy, plan.ttfb_chunks, delay_ms))

        cpu_t1 = _cpu_seconds(proxy_pid)
        cpu0 = (_cpu_seconds(proxy_pid), _cpu_seconds(upstream_pid))
        long = await interleaved(
            plan.long_reps,
            lambda: one_stream(client, direct, plan.long_chunks, 0),
            lambda: one_stream(client, proxy, plan.long_chunks, 0))
        cpu1 = (_cpu_seconds(proxy_pid), _cpu_seconds(upstream_pid))

        conc = await interleaved(
            plan.conc_reps,
            lambda: concurrent_streams(client, direct, plan.conc_streams, plan.conc_chunks),
            lambda: concurrent_streams(client, proxy, plan.conc_streams, plan.conc_chunks))

    cpu = None
    if None not in cpu0 and None not in cpu1:
        relayed = plan.long_reps * plan.long_chunks
        cpu = ((cpu1[0] - cpu0[0]) / relayed,        # proxy: only proxied runs
               (cpu1[1] - cpu0[1]) / (2 * relayed))  # upstream: serves both
    cpu_turn = None if None in (cpu_t0, cpu_t1) else (cpu_t1 - cpu_t0) / plan.ttfb_reps
    return {"ttfb": ttfb, "long": long, "conc": conc, "cpu": cpu, "cpu_turn": cpu_turn}


def report(plan: Plan, delay_ms: int, results: dict, elapsed: float) -> None:  # noqa: C901
    ttfb, long, conc, cpu = results["ttfb"], results["long"], results["conc"], results["cpu"]
    rows: list[tuple[str, str, str, str]] = []

    def times(label: str, pair: Pair, attr: str) -> tuple[float, float]:
        d = [getattr(r, attr) for r in pair.direct]
        p = [getattr(r, attr) for r in pair.proxy]
        for name, q in (("median", 0.5), ("p90", 0.9)):
            dv, pv = pct(d, q), pct(p, q)
            rows.append((f"{label} {name}", fmt_ms(dv), fmt_ms(pv), f"{pv / dv:.2f}x"))
        return pct(d, 0.5), pct(p, 0.5)

    def rates(label: str, pair: Pair, unit: str) -> tuple[float, float]:
        def rate(r: Run) -> float:
            return r.chunks / r.total if unit == "chunks/s" else r.nbytes / r.total / 1e6
        d = statistics.median(rate(r) for r in pair.direct)
        p = statistics.median(rate(r) for r in pair.proxy)
        rows.append((f"{label} median", fmt_rate(d, unit), fmt_rate(p, unit), f"{p / d:.0%}"))
        return d, p

    t_d, t_p = times(f"TTFB ({delay_ms} ms model delay)", ttfb, "ttfb")
    t90_d, t90_p = pct([r.ttfb for r in ttfb.direct], 0.9), pct([r.ttfb for r in ttfb.proxy], 0.9)
    l_d, l_p = times(f"{plan.long_chunks}-chunk stream, total", long, "total")
    cps_d, cps_p = rates("  throughput (chunks)", long, "chunks/s")
    rates("  throughput (bytes)", long, "MB/s")
    c_d, c_p = times(f"{plan.conc_streams}x{plan.conc_chunks} concurrent, wall", conc, "total")
    agg_d, agg_p = rates("  aggregate throughput", conc, "chunks/s")

    print()
    print(f"Switchboard relay benchmark  ({'quick' if plan is QUICK else 'full'} run, "
          f"{elapsed:.0f} s, {os.cpu_count()} CPUs; medians over interleaved runs: "
          f"TTFB n={plan.ttfb_reps}, long n={plan.long_reps}, concurrent n={plan.conc_reps}; "
          f"request: {f'{len(json.dumps(_HISTORY)) // 1024} KB context' if _HISTORY else 'one-line prompt'})")
    print("ratio column: proxy/direct for times (1.00x = no overhead); "
          "proxy as % of direct for rates (100% = no loss)")
    w = max(len(r[0]) for r in rows)
    print(f"{'metric':<{w}}  {'direct':>14}  {'proxy':>14}  {'ratio':>7}")
    print("-" * (w + 43))
    for m, d, p, r in rows:
        print(f"{m:<{w}}  {d:>14}  {p:>14}  {r:>7}")
    print()
    print(f"added TTFB: {(t_p - t_d) * 1000:+.2f} ms median, {(t90_p - t90_d) * 1000:+.2f} ms p90 "
          f"(ratio {t_p / t_d:.2f}x)")
    print(f"throughput: proxy at {cps_p / cps_d:.0%} of direct on one long stream "
          f"({cps_p / 1000:,.1f}k vs {cps_d / 1000:,.1f}k chunks/s); "
          f"{agg_p / agg_d:.0%} with {plan.conc_streams} concurrent streams")
    if results["cpu_turn"] is not None:
        print(f"proxy CPU per short turn ({plan.ttfb_chunks} chunks, TTFB case): "
              f"{results['cpu_turn'] * 1000:.2f} ms")
    per_chunk = (l_p - l_d) / plan.long_chunks
    print(f"added time per chunk (long stream): {per_chunk * 1e6:+.1f} us")
    if cpu is not None:
        proxy_us, upstream_us = cpu[0] * 1e6, cpu[1] * 1e6
        print(f"proxy CPU per relayed chunk: {proxy_us:.1f} us "
              f"(the fake upstream spends {upstream_us:.1f} us producing one)")
        if proxy_us > 0:
            streams = 1e6 / proxy_us / 50
            print(f"  => one proxy core keeps up with ~{streams:,.0f} concurrent streams "
                  f"at 50 chunks/s (a fast model)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~15 s)")
    parser.add_argument("--first-delay-ms", type=int, default=20,
                        help="model 'thinking' time before the first chunk in the TTFB case")
    parser.add_argument("--request-kb", type=int, default=0,
                        help="pad every request with this much earlier conversation (agent-sized "
                             "contexts are 100-1000 KB); default: a one-line prompt")
    parser.add_argument("--profile", choices=("cprofile", "pyinstrument"),
                        help="profile the proxy process and print its hot spots")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    set_history(args.request_kb)

    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        profile_out = str(Path(tmp) / "proxy.prof")
        up_proc, up_stop, up_port = start_child(ctx, _upstream_main)
        direct = f"http://127.0.0.1:{up_port}"
        px_proc = px_stop = None
        try:
            px_proc, px_stop, px_port = start_child(
                ctx, _proxy_main, f"{direct}/v1", str(Path(tmp) / "journal.sqlite3"),
                args.profile, profile_out)
            proxy = f"http://127.0.0.1:{px_port}"
            results = asyncio.run(run_bench(plan, args.first_delay_ms, direct, proxy,
                                            up_proc.pid, px_proc.pid))
        finally:
            if px_proc is not None:
                stop_child(px_proc, px_stop)
            stop_child(up_proc, up_stop)
        report(plan, args.first_delay_ms, results, time.perf_counter() - started)
        if args.profile == "cprofile" and Path(profile_out).exists():
            import pstats
            print("\nproxy process profile (cProfile, whole run incl. idle), top by own time:")
            stats = pstats.Stats(profile_out, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(20)
            print("proxy_core functions by cumulative time:")
            stats.sort_stats("cumulative").print_stats(r"proxy_core", 20)
            print("library functions by cumulative time:")
            stats.sort_stats("cumulative").print_stats(r"httpx|httpcore|aiohttp|sqlite", 15)
        elif args.profile == "pyinstrument" and Path(profile_out).exists():
            print("\nproxy process profile (pyinstrument):")
            print(Path(profile_out).read_text())


if __name__ == "__main__":
    main()
