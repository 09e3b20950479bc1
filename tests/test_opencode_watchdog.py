"""Seed 001 end to end: hangs after tool results, recovered by the watchdog.

Through `switchboard serve`, the real opencode client finishes the whole
task against a host that hangs after 40% of tool results — each hang costing
about one `first_token_timeout` — and against a route whose first target is
broken every way at once (hangs, leaks, strict 400s) and whose second is
clean. Without Switchboard the same hanging host leaves opencode waiting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencode_runner import run_opencode
from serve_runner import REPO, check_session, start_serve

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."
HANG = ["--faults", "hang", "--fault-rate", "0.4", "--seed", "4"]
FIRST_TOKEN_TIMEOUT = 2.0


@pytest.fixture
def standalone_simulator() -> Iterator[str]:
    """The hanging host on its own (no Switchboard), as `python -m proxy_core.simulator`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "proxy_core.simulator", "--port", "0", *HANG],
                               stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
    assert process.stdout is not None
    match = re.search(r"(http://\S+/v1)", process.stdout.readline())
    assert match
    yield match.group(1)
    process.terminate()
    process.wait(timeout=10)


def test_without_switchboard_opencode_waits_on_the_hang(standalone_simulator: str, tmp_path: Path) -> None:
    # opencode's defaults: no chunk timeout; the test gives up after 25 s.
    result = run_opencode(standalone_simulator, PROMPT, tmp_path, timeout=25,
                          chunk_timeout_ms=None, request_timeout_ms=None)
    assert result.timed_out, result.describe()
    assert result.completed_tool_calls < 10


def test_hangs_after_tool_results_cost_one_timeout_each(tmp_path: Path) -> None:
    served = start_serve(f"""
[proxy]
journal = "{{journal}}"
[watchdog]
first_token_timeout = {FIRST_TOKEN_TIMEOUT}
idle_timeout = 5.0
[upstreams.sim]
kind = "simulator"
faults = ["hang"]
fault_rate = 0.4
seed = 4
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
""", tmp_path)
    try:
        workdir = tmp_path / "work"
        result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240,
                              chunk_timeout_ms=None, request_timeout_ms=None)
        turns = check_session(result, served, workdir)
    finally:
        assert served.stop() == 0
    hung = [a for t in turns for a in t["attempts"] if a["outcome"] == "failed"]
    # Which steps hang depends on the request (opencode's prompt names the
    # working folder), so the count varies run to run around 40% of ~11.
    assert hung, "the host hung"
    for attempt in hung:
        assert "no first token" in attempt["error"]
        # About one first_token_timeout each (slack for a loaded CI machine), not minutes.
        assert attempt["ended_at"] - attempt["started_at"] < FIRST_TOKEN_TIMEOUT + 3.0


def test_broken_first_target_clean_second(tmp_path: Path) -> None:
    served = start_serve(f"""
[proxy]
journal = "{{journal}}"
[watchdog]
first_token_timeout = {FIRST_TOKEN_TIMEOUT}
idle_timeout = 5.0
[upstreams.broken]
kind = "simulator"
faults = ["hang", "leak", "strict"]
fault_rate = 0.6
hang_repeats = 100   # a hang on this host is not cured by asking again
seed = 9
[upstreams.clean]
kind = "simulator"
[[routes]]
model = "kimi-k2.5"
targets = ["broken:kimi-k2.5", "clean:kimi-k2.5"]
repairs = "kimi"
""", tmp_path)
    try:
        workdir = tmp_path / "work"
        result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
        turns = check_session(result, served, workdir)
    finally:
        assert served.stop() == 0
    attempts = [a for t in turns for a in t["attempts"]]
    assert any(a["reason"] == "reroute" and a["target"] == "clean:kimi-k2.5" for a in attempts)
    kinds = {r["kind"] for t in turns for r in t["repairs"]}
    assert kinds & {"leaked_tool_call", "reasoning_content"}, kinds
