"""Running Switchboard's event loop: uvloop where it is available, asyncio's otherwise.

Every front end (`switchboard serve`, the dashboard, the demo, the
simulator, the benchmarks' proxy process) starts its loop here. uvloop's
loop does the same work as asyncio's in C; on the relay's first-byte path,
which runs a few loop passes right after the process wakes from waiting on
the model, that measured 0.1-0.2 ms less added time to first byte (full
`bench/bench_relay.py --only ttfb` runs, alternated). Set
`SWITCHBOARD_LOOP=asyncio` to use asyncio's loop anyway (to rule the loop
out when chasing a problem). uvloop does not exist on Windows; there the
asyncio loop is used. `run` also sets the cyclic collector's thresholds
(`tune_gc`) and lets `json` write values as deep as the proxy reads
(`contents.allow_deep_json`).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from .contents import allow_deep_json

T = TypeVar("T")


#: The cyclic collector's thresholds (`gc.set_threshold`); see `tune_gc`.
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Collect young objects every 10,000 allocations, not 700 (Python's default).

    The proxy keeps recent conversations parsed (hundreds of thousands of
    objects at agent sizes) and allocates a few containers per relayed
    chunk: at the default, the collector ran ~30 times a second under load,
    and its full collections, every few seconds, took ~90 ms. Measured at 500 KB with 8 clients: collection time 0.53 -> 0.16 ms
    per request, full (gen2) collections gone from a 10 s run; a young
    collection takes ~6 ms instead of ~0.6 ms, every ~20 requests instead
    of every ~3. `SWITCHBOARD_GC=700,10,10` sets other thresholds.
    """
    wanted = os.environ.get("SWITCHBOARD_GC", "").strip()
    try:
        thresholds = tuple(int(v) for v in wanted.split(",")) if wanted else GC_THRESHOLDS
        gc.set_threshold(*thresholds)
    except (ValueError, TypeError):
        gc.set_threshold(*GC_THRESHOLDS)


def loop_name() -> str:
    """Which loop `run` uses: "uvloop" or "asyncio"."""
    if os.environ.get("SWITCHBOARD_LOOP", "").strip().lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on a new loop, like `asyncio.run`."""
    tune_gc()
    allow_deep_json()
    if loop_name() == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)
