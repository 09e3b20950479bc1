"""A short soak: 50 concurrent agent sessions through `switchboard serve` with faults.

The same run as `bench/soak.py` (which defaults to 300 sessions for a
minute), one session per worker: the simulated host leaks tool calls into
text, hangs after tool results and rejects history without reasoning; every
session must still reach its final answer, every turn must be in the
journal as finished, no raw tool-call token may reach an agent, and the
proxy's memory must stay bounded.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from soak import run_soak  # noqa: E402

SESSIONS = 50
STEPS = 5
#: Generous bounds: the proxy starts at ~45 MB; 50 sessions add a few MB.
PEAK_RSS_LIMIT = 250 * 2**20
GROWTH_LIMIT = 100 * 2**20


async def test_fifty_faulty_sessions_all_finish_with_bounded_memory(tmp_path: Path) -> None:
    report = await run_soak(SESSIONS, duration=0.0, grace=25.0, steps=STEPS, fault_rate=0.3,
                            timeout=1.0, one_round=True, workdir=tmp_path)
    summary = "\n".join(report.lines())
    assert report.sessions_started == SESSIONS, summary
    assert report.sessions_completed == SESSIONS, summary
    assert report.turns_completed == SESSIONS * (STEPS + 1), summary  # each call, then the answer
    assert report.journal_turns == {"finished": report.turns_completed}, summary
    assert report.client_retries == 0 and not report.errors, summary
    assert report.leaked_markers == 0, summary
    # The faults really happened, and were absorbed.
    assert report.repairs.get("leaked_tool_call", 0) > 0, summary
    assert report.repairs.get("reasoning_content", 0) > 0, summary
    assert report.retries.get("retry", 0) > 0, summary
    assert report.peak_rss is not None and report.start_rss is not None, summary
    assert report.peak_rss < PEAK_RSS_LIMIT, summary
    assert report.peak_rss - report.start_rss < GROWTH_LIMIT, summary
