"""Where a turn's time goes before its first byte, step by step, inside the proxy.

`bench_relay.py` measures from outside what the proxy adds to the first
byte; this says where it goes. The proxy runs in its own process, set up
as `bench_relay.py` sets it up (journal on), with a few of its functions
wrapped to note when they are called and return — the wrappers are
installed by this script in that process; Switchboard's code is not
changed. Requests of an opencode-shaped session of the given size then go
through it one at a time (a 20 ms model delay, 10-chunk replies), and
each step's p50 is printed:

    read the body           the handler starts -> the request parser is called
    parse                   the parser's work (reusing the last turn's parse)
    route, start attempt    -> history repairs start (open the turn, plan, deadlines)
    history repairs         the repairs' work (reusing the last turn's)
    set up the stream       -> the body is encoded (stream repairer, tool catalog)
    encode                  the body for the upstream (reusing each message's encoding;
                               nothing when the client's bytes go as sent)
    build and write         -> the request's first socket write (aiohttp's client)
    model and network       -> the first network read of the answer (20 ms of it the model)
    chunk to first part     -> the pipeline records the first part (decode, watchdog, stream
                               repairs: text is held until the next delta, see the README)
    open the response       -> the part reaches the client's encoder (the journal has the
                               turn's start; the keep-alive stops; the response is prepared)
    first write             -> the first socket write to the client

and, beside them, the deferred bookkeeping (session, events, the journal's
hand-over), which should run after the request is written.

    .venv/bin/python bench/bench_first_byte.py                    # 0 and 500 KB
    .venv/bin/python bench/bench_first_byte.py --context-kb 100 --requests 200
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for extra in (ROOT, ROOT / "bench"):
    if str(extra) not in sys.path:  # run from a checkout without installing
        sys.path.insert(0, str(extra))

import aiohttp  # noqa: E402

import bench_relay  # noqa: E402

#: (label, the mark that ends the step), in the order a turn reaches them.
STEPS = (
    ("read the body", "parse called"),
    ("parse", "parsed"),
    ("route, start attempt", "repairs called"),
    ("history repairs", "repaired"),
    ("set up the stream", "encode called"),
    ("encode", "encoded"),
    ("build and write", "request written"),
    ("model and network", "first chunk in"),
    ("chunk to first part", "first part recorded"),
    ("open the response", "first part"),
    ("first write", "first byte out"),
)
WARMUP = 10
DELAY_MS = 20


def _install_marks(marks: list[tuple[str, float]]) -> None:
    """Wrap the functions a turn passes through so each notes the time (in this process)."""
    from aiohttp import http_writer

    from proxy_core.bus import EventBus
    from proxy_core.openai_wire import ChunkEncoder
    from proxy_core.pipeline import Pipeline
    from proxy_core.repairs.history import HistoryRepairs
    from proxy_core.request_parser import RequestParser
    from proxy_core.server import OpenAIFront
    from proxy_core.sse import SSEDecoder
    from proxy_core.upstreams.openai import OpenAIUpstream

    clock = time.perf_counter
    seen: set[str] = set()  # marks this turn already has (only the first of each counts)

    def mark(name: str) -> None:
        if name == "entry":
            seen.clear()
        if name not in seen:
            seen.add(name)
            marks.append((name, clock()))

    def around(cls: Any, attr: str, before: str | None, after: str | None) -> None:
        original = getattr(cls, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before is not None:
                mark(before)
            result = original(*args, **kwargs)
            if after is not None:
                mark(after)
            return result

        setattr(cls, attr, wrapper)

    around(OpenAIFront, "_learn_credentials", "entry", None)
    around(RequestParser, "parse", "parse called", "parsed")
    around(HistoryRepairs, "repair", "repairs called", "repaired")
    # The adapter opens its session, then makes the body (encoded, or the client's bytes
    # when nothing changed them), then its headers: the encode step lies between.
    around(OpenAIUpstream, "_open_session", "encode called", None)
    around(OpenAIUpstream, "_headers", "encoded", None)
    around(ChunkEncoder, "event", "first part", None)
    around(Pipeline, "_record", "first part recorded", None)

    def flush_marks(self: EventBus, _original: Any = EventBus.flush) -> None:
        busy = "encoded" in seen and "bookkeeping done" not in seen and bool(self._deferred)
        if busy:
            mark("bookkeeping called")
        _original(self)
        if busy:
            mark("bookkeeping done")

    EventBus.flush = flush_marks  # type: ignore[method-assign]

    def feed_marks(self: SSEDecoder, data: bytes, _original: Any = SSEDecoder.feed) -> Any:
        if "request written" in seen:
            mark("first chunk in")
        return _original(self, data)

    SSEDecoder.feed = feed_marks  # type: ignore[method-assign]

    def written() -> None:
        if "first chunk in" in seen:
            mark("first byte out")
        elif "encoded" in seen:
            mark("request written")

    for attr in ("_write", "_writelines"):
        original = getattr(http_writer.StreamWriter, attr)

        def write(self: Any, data: Any, _original: Any = original) -> Any:
            written()
            return _original(self, data)

        setattr(http_writer.StreamWriter, attr, write)


def _proxy_main(ready: mp.Queue, stop: mp.Event, upstream_url: str, journal: str,
                out: str) -> None:
    marks: list[tuple[str, float]] = []
    _install_marks(marks)
    bench_relay.serve_proxy(ready, stop, upstream_url, journal)
    Path(out).write_text(json.dumps(marks))


async def _send(base: str, kb: int, requests: int, repairs: bool) -> None:
    bench_relay.set_context(kb)
    model = bench_relay.bench_model(10, DELAY_MS, repairs=repairs)
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            await bench_relay.one_stream(session, base, model, 10)


def steps_of(marks: list[tuple[str, float]], skip: int) -> dict[str, list[float]]:
    """Each step's durations (ms) over the turns after the first `skip`."""
    turns: list[dict[str, float]] = []
    for name, at in marks:
        if name == "entry":
            turns.append({})
        if turns:
            turns[-1][name] = at
    out: dict[str, list[float]] = {label: [] for label, _ in STEPS}
    out["bookkeeping (beside)"] = []
    for turn in turns[skip:]:
        last = turn.get("entry")
        for label, end in STEPS:
            if end in turn and last is not None:
                out[label].append((turn[end] - last) * 1000)
                last = turn[end]
        if "bookkeeping called" in turn and "bookkeeping done" in turn:
            out["bookkeeping (beside)"].append(
                (turn["bookkeeping done"] - turn["bookkeeping called"]) * 1000)
    return out


def measure(kb: int, requests: int, repairs: bool) -> dict[str, list[float]]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="switchboard-first-byte-") as tmp:
        out = str(Path(tmp) / "marks.json")
        up_proc, up_stop, up_port = bench_relay.start_child(ctx, bench_relay._upstream_main)
        try:
            px_proc, px_stop, px_port = bench_relay.start_child(
                ctx, _proxy_main, f"http://127.0.0.1:{up_port}/v1",
                str(Path(tmp) / "journal.sqlite3"), out)
            try:
                asyncio.run(_send(f"http://127.0.0.1:{px_port}", kb, requests + WARMUP, repairs))
            finally:
                bench_relay.stop_child(px_proc, px_stop)
        finally:
            bench_relay.stop_child(up_proc, up_stop)
        marks = [(name, at) for name, at in json.loads(Path(out).read_text())]
    return steps_of(marks, WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-kb", default="0,500",
                        help="request sizes, a comma list (0 is a one-line prompt)")
    parser.add_argument("--requests", type=int, default=100, help="requests per size")
    parser.add_argument("--no-repairs", action="store_true",
                        help="a route without repairs (no history repairs step)")
    args = parser.parse_args()
    sizes = [int(v) for v in args.context_kb.split(",")]
    results = {kb: measure(kb, args.requests, not args.no_repairs) for kb in sizes}
    print(f"Where the first byte goes inside the proxy: p50 of {args.requests} requests "
          f"one at a time, {DELAY_MS} ms model delay, repairs "
          f"{'off' if args.no_repairs else 'on'}, journal on (ms)\n")
    print(f"{'step':<24}" + "".join(f"{f'{kb} KB':>10}" for kb in sizes))
    for label in [*(label for label, _ in STEPS), "bookkeeping (beside)"]:
        cells = [statistics.median(results[kb][label]) if results[kb][label] else None
                 for kb in sizes]
        print(f"{label:<24}" + "".join(f"{c:>10.3f}" if c is not None else f"{'-':>10}"
                                       for c in cells))
    mine = ("parse", "route, start attempt", "history repairs", "set up the stream", "encode",
            "chunk to first part")
    for kb in sizes:
        total = sum(statistics.median(results[kb][s]) for s in mine if results[kb][s])
        print(f"\n{kb} KB: Switchboard's own steps, parse to first part, add up to "
              f"{total:.2f} ms")
    if args.no_repairs:
        print("\n(Without repairs, routing and setting up the stream are one step, shown as"
              " 'set up the stream'.)")


if __name__ == "__main__":
    main()
