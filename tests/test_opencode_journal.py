"""A long real opencode session through `switchboard serve`: the journal grows with what is new.

opencode resends the whole conversation on every model call. A 30-step
session against the simulator (`steps = 30`: the scripted task, then
harmless reads, globs and test runs) goes through `switchboard serve`;
then the journal file must be within 3x of the unique bytes the session
sent — each distinct message and tool schema once, plus each request's
other fields — while storing every request whole would take many times more.
The raw upstream answers the journal keeps for repro fixtures are counted
apart (they are what the host sent, not requests) and must be compressed.

The project folder holds a package of 80 modules besides the task's two
files, as a real one would, so the globs list something: with nothing in
it every tool result is a few dozen bytes and each turn's own record (its
attempts, timings, tool calls: about 1.3 KB) would outweigh what is new in
its request.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from opencode_runner import run_opencode
from serve_runner import files_done, start_serve

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."
STEPS = 30


def compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def unique_and_sent(requests: list[dict[str, Any]], upstream: list[dict[str, Any]]
                    ) -> tuple[int, int]:
    """The unique bytes the journal must keep, and the bytes the client sent.

    Unique: each distinct message and tool schema the client sent, each
    distinct message Switchboard sent upstream in their place after history
    repairs (kept for repro fixtures), and each request's other fields.
    """
    parts: set[bytes] = set()
    unique = sent = 0
    for request in requests:
        sent += len(compact(request))
        rest = {k: v for k, v in request.items() if k not in ("messages", "tools")}
        unique += len(compact(rest))
        for name in ("messages", "tools"):
            parts.update(compact(item) for item in request.get(name) or [])
    for request in upstream:
        parts.update(compact(item) for item in request.get("messages") or [])
    return unique + sum(len(p) for p in parts), sent


def test_a_30_step_session_journal_stays_near_its_unique_bytes(tmp_path: Path) -> None:
    served = start_serve(f"""
[proxy]
journal = "{{journal}}"
[upstreams.sim]
kind = "simulator"
seed = 1
steps = {STEPS}
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
repairs = "auto"
""", tmp_path)
    try:
        workdir = tmp_path / "work"
        for i in range(80):
            module = workdir / "pkg" / f"module_{i:02d}.py"
            module.parent.mkdir(parents=True, exist_ok=True)
            module.write_text(f"def handle_{i}(request):\n    return request\n")
        result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=400)
        report = f"{result.describe()}\n--- switchboard log ---\n{served.log.read_text()[-3000:]}"
        assert result.returncode == 0 and not result.errors, report
        assert result.completed_tool_calls == STEPS and files_done(workdir), report
        turns = served.turns()
        assert all(t["state"] == "finished" for t in turns), report
        requests = [httpx.get(f"{served.base_url}/switchboard/api/turns/{t['id']}",
                              timeout=10).json()["request"] for t in turns]
        upstream = [httpx.get(f"{served.base_url}/switchboard/api/turns/{t['id']}/repro",
                              timeout=10).json()["upstream_request"] for t in turns]
    finally:
        assert served.stop() == 0
    assert len(requests) >= STEPS + 1  # the agent's calls (and opencode's title request)

    unique, sent = unique_and_sent(requests, upstream)
    size = sum(p.stat().st_size for p in tmp_path.glob("journal.sqlite3*"))
    # The raw upstream answers kept for repro fixtures (issue 14) are new content, not
    # requests: counted apart, and they must be stored compressed.
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        rows = [data for (data,) in conn.execute("SELECT data FROM wire")]
    wire, received = sum(map(len, rows)), sum(len(zlib.decompress(d)) for d in rows)
    assert len(rows) == len(turns) and wire * 4 < received, (wire, received)
    assert sent > 8 * unique, "the session resent its history many times"
    assert size - wire <= 3 * unique, \
        f"journal {size} B ({wire} B raw answers); unique {unique} B; sent {sent} B"
    print(f"30-step opencode session: sent {sent} B, unique {unique} B, journal {size} B "
          f"of which {wire} B raw upstream answers ({received} B uncompressed)")
