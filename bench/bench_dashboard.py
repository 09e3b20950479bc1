"""Does the dashboard slow the proxy down? The relay benchmark, headless vs dashboard.

Runs `bench_relay.py`'s fake upstream and client against two proxies at
once, each in its own process, with the same config: one headless (as
`switchboard serve`), one with the Textual dashboard attached in the same
event loop (as `switchboard`: the app runs headless, so it lays out and
renders every redraw but writes to no terminal). Runs are interleaved, and
each scenario is reported as the dashboard's throughput as a ratio to the
headless proxy's, measured in the same run.

    .venv/bin/python bench/bench_dashboard.py            # ~1 min
    .venv/bin/python bench/bench_dashboard.py --quick    # ~15 s
    .venv/bin/python bench/bench_dashboard.py --smoke    # a few seconds (tests)

Scenarios: one fast stream, 16 concurrent streams, and a hundred live turns
at once; plus time to first byte. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for path in (BENCH, BENCH.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import aiohttp  # noqa: E402

from bench_relay import (  # noqa: E402
    Run, Target, _proxy_main, _upstream_main, concurrent_streams, cpu_seconds, interleaved,
    one_stream, pct, proxy_config, start_child, stop_child,
)


def _dashboard_main(ready: mp.Queue, stop: mp.Event, upstream_url: str, journal: str,
                    stats_path: str) -> None:
    """The proxy with the dashboard attached, in one event loop (as `switchboard` runs)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from proxy_core.app import SwitchboardProxy
    from proxy_core.config import parse_config
    from tui.app import SwitchboardApp
    from tui.source import LocalSource

    class CountingSource(LocalSource):
        drains = 0
        events = 0

        def drain(self):  # type: ignore[no-untyped-def]
            batch = super().drain()
            self.drains += 1
            self.events += len(batch.events) + sum(t.count for t in batch.chunks.values())
            return batch

    config = parse_config(proxy_config(upstream_url, journal), "<bench>")
    nowhere = Path(journal).parent / "ui"

    async def main() -> None:
        proxy = SwitchboardProxy(config, host="127.0.0.1", port=0, journal=True)
        await proxy.start()
        source = CountingSource(proxy)
        app = SwitchboardApp(source, themes_dir=nowhere, keymap_path=nowhere / "keymap.toml",
                             export_dir=nowhere)
        task = asyncio.create_task(app.run_async(headless=True, size=(200, 60)))
        deadline = time.monotonic() + 20
        while app.palette is None:  # mounted: subscribed to the bus, timers running
            if task.done() or time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start")
            await asyncio.sleep(0.02)
        ready.put(("ok", proxy.port))
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        stats = {"seconds": time.monotonic() - started, "drains": source.drains,
                 "events": source.events, "turns_held": len(app.model),
                 "turns_seen": len(proxy.store),
                 # the host scoreboard is on screen (as by default) and has its targets
                 "scoreboard_rows": app.query_one("#scoreboard").row_count
                 if app.query_one("#scoreboard").display else None}
        app.exit()
        await task
        await source.stop()
        await proxy.stop()
        Path(stats_path).write_text(json.dumps(stats))

    try:
        asyncio.run(main())
    except Exception as exc:
        ready.put(("error", repr(exc)))


@dataclass(frozen=True)
class Plan:
    ttfb_reps: int
    long_reps: int
    long_chunks: int
    conc_reps: int
    conc: tuple[tuple[int, int], ...]  # (streams, chunks per stream)
    warmup: int


FULL = Plan(ttfb_reps=100, long_reps=12, long_chunks=5000, conc_reps=5,
            conc=((16, 1000), (100, 300)), warmup=2)
QUICK = Plan(ttfb_reps=30, long_reps=4, long_chunks=5000, conc_reps=2,
             conc=((16, 1000), (100, 300)), warmup=1)
SMOKE = Plan(ttfb_reps=4, long_reps=2, long_chunks=1000, conc_reps=1,
             conc=((100, 50),), warmup=1)


async def run(plan: Plan, targets: list[Target], delay_ms: int) -> dict[str, dict[str, list[Run]]]:
    results: dict[str, dict[str, list[Run]]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(plan.warmup):
            for target in targets:
                await one_stream(session, target.base, target.model(plan.long_chunks),
                                 plan.long_chunks)
                for streams, chunks in plan.conc:
                    await concurrent_streams(session, target.base, target.model(chunks),
                                             streams, chunks)
        results["ttfb"] = await interleaved(
            plan.ttfb_reps, targets,
            lambda t: one_stream(session, t.base, t.model(10, delay_ms), 10))
        results["long"] = await interleaved(
            plan.long_reps, targets,
            lambda t: one_stream(session, t.base, t.model(plan.long_chunks), plan.long_chunks))
        for streams, chunks in plan.conc:
            results[f"{streams}x{chunks}"] = await interleaved(
                plan.conc_reps, targets,
                lambda t, s=streams, c=chunks: concurrent_streams(session, t.base, t.model(c),
                                                                  s, c))
    return results


def report(plan: Plan, results: dict[str, dict[str, list[Run]]], stats: dict[str, float],
           elapsed: float, delay_ms: int) -> list[float]:
    def rate(r: Run) -> float:
        return r.chunks / r.total

    print()
    print(f"Switchboard dashboard benchmark ({elapsed:.0f} s): the same proxy headless and with "
          "the dashboard attached, interleaved runs")
    print(f"{'metric':<36}{'headless':>16}{'dashboard':>16}{'ratio':>10}")
    print("-" * 78)
    ratios: list[float] = []
    ttfb = results["ttfb"]
    h, d = pct([r.ttfb for r in ttfb["headless"]], 0.5), pct([r.ttfb for r in ttfb["dashboard"]], 0.5)
    print(f"{f'time to first byte p50 ({delay_ms} ms delay)':<36}{h * 1000:>13.2f} ms"
          f"{d * 1000:>13.2f} ms{d / h:>9.2f}x")
    labels = {"long": f"1 stream x {plan.long_chunks} chunks"}
    labels.update({f"{s}x{c}": f"{s} live streams x {c} chunks" for s, c in plan.conc})
    for key, label in labels.items():
        runs = results[key]
        h = statistics.median(rate(r) for r in runs["headless"])
        d = statistics.median(rate(r) for r in runs["dashboard"])
        ratios.append(d / h)
        print(f"{label:<36}{h / 1000:>10,.1f}k ch/s{d / 1000:>10,.1f}k ch/s{d / h:>9.0%}")
    cpu = {}
    for name in ("headless", "dashboard"):
        runs = [r for key in labels for r in results[key][name]]
        chunks = sum(r.chunks for r in runs)
        cpu[name] = sum(r.cpu for r in runs) / chunks * 1e6 if chunks else 0.0
    print(f"{'proxy CPU per relayed chunk':<36}{cpu['headless']:>13.1f} us"
          f"{cpu['dashboard']:>13.1f} us{cpu['dashboard'] / max(cpu['headless'], 1e-9):>9.2f}x")
    print()
    print("throughput with the dashboard attached, as a ratio to headless: "
          + ", ".join(f"{label} {r:.0%}" for label, r in zip(labels.values(), ratios, strict=False)))
    if stats:
        seconds = max(stats["seconds"], 1e-9)
        print(f"dashboard: {stats['events']:,} events in {stats['drains']:,} redraw batches "
              f"({stats['drains'] / seconds:.1f}/s over {seconds:.0f} s); holds "
              f"{stats['turns_held']} of {stats['turns_seen']} turns in memory; host scoreboard "
              f"{'shown, ' + str(stats['scoreboard_rows']) + ' target(s)' if stats.get('scoreboard_rows') is not None else 'hidden'}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run (~15 s)")
    parser.add_argument("--smoke", action="store_true", help="tiny run (a few seconds; for tests)")
    parser.add_argument("--first-delay-ms", type=int, default=20)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-dash-") as tmp:
        stats_path = Path(tmp) / "dashboard-stats.json"
        up_proc, up_stop, up_port = start_child(ctx, _upstream_main)
        upstream = f"http://127.0.0.1:{up_port}/v1"
        children = []
        try:
            (Path(tmp) / "h").mkdir()
            (Path(tmp) / "d").mkdir()
            headless = start_child(ctx, _proxy_main, upstream, str(Path(tmp) / "h" / "j.sqlite3"),
                                   None, str(Path(tmp) / "unused.prof"))
            children.append(headless)
            dashboard = start_child(ctx, _dashboard_main, upstream,
                                    str(Path(tmp) / "d" / "j.sqlite3"), str(stats_path))
            children.append(dashboard)
            targets = [Target("headless", f"http://127.0.0.1:{headless[2]}", False, headless[0].pid),
                       Target("dashboard", f"http://127.0.0.1:{dashboard[2]}", False,
                              dashboard[0].pid)]
            results = asyncio.run(run(plan, targets, args.first_delay_ms))
        finally:
            for proc, stop, _ in children:
                stop_child(proc, stop)
            stop_child(up_proc, up_stop)
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
        report(plan, results, stats, time.perf_counter() - started, args.first_delay_ms)
        if cpu_seconds(up_proc.pid) is None and not stats:
            print("(CPU and dashboard counters need Linux /proc)")


if __name__ == "__main__":
    main()
