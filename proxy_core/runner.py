"""Running Switchboard's event loop: uvloop where it is available, asyncio's otherwise.

Every front end (`switchboard serve`, the dashboard, the demo, the
simulator, the benchmarks' proxy process) starts its loop here. uvloop's
loop does the same work as asyncio's in C; on the relay's first-byte path,
which runs a few loop passes right after the process wakes from waiting on
the model, that measured 0.1-0.2 ms less added time to first byte (full
`bench/bench_relay.py --only ttfb` runs, alternated). Set
`SWITCHBOARD_LOOP=asyncio` to use asyncio's loop anyway (to rule the loop
out when chasing a problem). uvloop does not exist on Windows; there the
asyncio loop is used.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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
    if loop_name() == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)
