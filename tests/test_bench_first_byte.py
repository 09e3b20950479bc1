"""`bench/bench_first_byte.py` finds every step of a turn: its wrappers name functions of
the proxy, and a rename there must fail here rather than leave a step silently empty."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("read the body", "parse", "route, start attempt", "history repairs",
         "set up the stream", "encode", "build and write", "model and network",
         "chunk to first part", "open the response", "first write", "bookkeeping (beside)")


def _steps(*options: str) -> tuple[dict[str, list[float]], str]:
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_first_byte.py"), "--context-kb", "0,100",
         "--requests", "5", *options], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return {m.group(1).strip(): [float(v) for v in m.group(2).split()]
            for m in re.finditer(r"^([^\d\n]+?)[ ]+([\d.]+[ ]+[\d.]+)$", done.stdout, re.M)
            }, done.stdout


def test_every_step_of_the_first_byte_is_measured() -> None:
    rows, output = _steps()
    assert set(rows) == set(STEPS), output
    assert all(v > 0 for values in rows.values() for v in values), output
    assert all(v >= 20 for v in rows["model and network"]), output  # the 20 ms delay


def test_without_repairs_every_step_but_theirs_is_measured() -> None:
    """The client's bytes go upstream as sent there (100 KB here): the encode step is
    near nothing, but the steps after it are still found."""
    rows, output = _steps("--no-repairs")
    assert set(rows) == set(STEPS) - {"route, start attempt", "history repairs"}, output
    assert all(v >= 20 for v in rows["model and network"]), output
