"""`proxy_core.runner`: the loop every front end runs on, and the collector's thresholds.

Each case runs in its own interpreter: the settings are process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32",
                                reason="uvloop and asyncio's unix loop do not exist on Windows")

PROBE = ("import asyncio, gc\n"
         "from proxy_core.runner import run, loop_name\n"
         "async def main():\n"
         "    return gc.get_threshold(), type(asyncio.get_running_loop()).__module__\n"
         "print(run(main()), loop_name())\n")


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


def test_uvloop_and_fewer_young_collections_by_default() -> None:
    assert probe() == "((10000, 10, 10), 'uvloop') uvloop"


def test_the_environment_chooses_the_loop_and_the_thresholds() -> None:
    assert probe(SWITCHBOARD_LOOP="asyncio", SWITCHBOARD_GC="700,10,10") == \
        "((700, 10, 10), 'asyncio.unix_events') asyncio"


def test_thresholds_that_are_not_numbers_leave_the_default() -> None:
    assert probe(SWITCHBOARD_LOOP="asyncio", SWITCHBOARD_GC="lots") == \
        "((10000, 10, 10), 'asyncio.unix_events') asyncio"
