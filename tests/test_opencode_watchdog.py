"""Seed 001 end to end: hangs after tool results, recovered by the watchdog.

Through `switchboard serve`, the real opencode client finishes the whole
task against a host that hangs after 40% of tool results — each hang costing
about one `first_token_timeout`, or, with the default config once the
target has history, about one learned deadline — and against a route whose
first target is broken every way at once (hangs, leaks, strict 400s) and
whose second is clean. Without Switchboard the same hanging host leaves
opencode waiting.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencode_runner import OpencodeResult, run_opencode
from serve_runner import REPO, check_session, files_done, start_serve

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."
#: Every answer after a tool result hangs: what this test shows, whatever the seed.
HANG = ["--faults", "hang", "--fault-rate", "1.0", "--seed", "4"]
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
    # Which steps hang depends on the seed and the dialog only, not on the folder
    # opencode runs in (`simulator/faults.py`): the same six of eleven, every run.
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


SIM_DEFAULTS = """
[proxy]
journal = "{journal}"
[upstreams.sim]
kind = "simulator"
{faults}
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
"""


def _run_task(served_url: str, workdir: Path) -> OpencodeResult:
    return run_opencode(f"{served_url}/v1", PROMPT, workdir, timeout=600,
                        chunk_timeout_ms=None, request_timeout_ms=None)


def test_learned_deadlines_bring_a_hanging_host_close_to_a_clean_one(tmp_path: Path) -> None:
    """The default config (no [watchdog] table): the first run against a host that
    hangs after 40% of tool results pays the configured 45 s per hang until the
    target has history, and teaches its deadlines through the journal; after a
    restart, the second run finishes within 20 s of a clean host's time."""
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    served = start_serve(SIM_DEFAULTS.replace("{faults}", ""), clean_dir)
    try:
        clean = _run_task(served.base_url, clean_dir / "work")
        check_session(clean, served, clean_dir / "work")
    finally:
        assert served.stop() == 0

    hang_dir = tmp_path / "hang"
    hang_dir.mkdir()
    config = SIM_DEFAULTS.replace("{faults}", 'faults = ["hang"]\nfault_rate = 0.4\nseed = 4')
    served = start_serve(config, hang_dir)
    try:
        first = _run_task(served.base_url, hang_dir / "first")
        taught = check_session(first, served, hang_dir / "first")
    finally:
        assert served.stop() == 0

    served = start_serve(config, hang_dir)  # the same journal: a restart
    try:
        second = _run_task(served.base_url, hang_dir / "second")
        report = f"{second.describe()}\n--- log ---\n{served.log.read_text()[-3000:]}"
        assert second.returncode == 0 and not second.errors, report
        assert second.completed_tool_calls == 10 and files_done(hang_dir / "second"), report
        turns = [t for t in served.turns() if t["id"] not in {u["id"] for u in taught}]
    finally:
        assert served.stop() == 0
    assert turns and all(t["state"] == "finished" for t in turns)
    attempts = [a for t in turns for a in t["attempts"]]
    # Every attempt of the second run ran under deadlines learned before it started.
    assert all(a["first_output_basis"].startswith("learned from") for a in attempts), attempts
    hung = [a for a in attempts if a["outcome"] == "failed"]
    assert hung, "the host hung in the second run too"
    for attempt in hung:
        assert "no first token" in attempt["error"] and "learned from" in attempt["error"]
        assert attempt["first_output_deadline"] < 45.0
        assert attempt["ended_at"] - attempt["started_at"] < attempt["first_output_deadline"] + 3.0
    print(f"clean {clean.duration:.1f}s, hanging host: first run {first.duration:.1f}s, "
          f"second run {second.duration:.1f}s with {len(hung)} hang(s)")
    assert second.duration <= clean.duration + 20.0, (clean.duration, second.duration)
