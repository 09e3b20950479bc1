"""The relay benchmark with the dashboard attached prints throughput as a ratio to headless."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_dashboard_prints_the_ratio_to_headless() -> None:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_dashboard.py"), "--smoke"],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    line = next(line for line in out.splitlines() if "as a ratio to headless" in line)
    ratios = [int(r) for r in re.findall(r"(\d+)%", line)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios), out
    events, batches = (int(n.replace(",", "")) for n in re.search(
        r"dashboard: ([\d,]+) events in ([\d,]+) redraw batches", out).groups())
    assert events > 5000 and 0 < batches * 50 < events, out  # batched, never per chunk
