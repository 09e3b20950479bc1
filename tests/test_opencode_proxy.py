"""The real opencode client, through `switchboard serve`, against the simulator.

The acceptance runs of the product: one `opencode run` finishes the whole
10-tool-call task through Switchboard — against a clean host, a host that
leaks tool calls on most steps, a host enforcing Moonshot's
`reasoning_content` rule and a host that hangs — and the turns API and the
journal account for every model call. The same faulty hosts without
Switchboard are in `test_opencode_simulator.py` (they stop early).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from opencode_runner import OpencodeResult, run_opencode
from proxy_core.simulator.script import EXPECTED_FILES

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Served:
    """A `switchboard serve` process."""

    process: subprocess.Popen[str]
    base_url: str
    journal: Path
    log: Path

    def turns(self) -> list[dict]:
        return httpx.get(f"{self.base_url}/switchboard/api/turns?limit=1000", timeout=10).json()["turns"]

    def journal_rows(self) -> list[tuple[str, str, str]]:
        with sqlite3.connect(self.journal) as conn:
            return conn.execute("SELECT id, state, session_id FROM turns").fetchall()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `switchboard serve` on a free port with a simulator upstream."""
    started: list[Served] = []

    def start(sim: str, watchdog: str = "") -> Served:
        journal = tmp_path / "journal.sqlite3"
        config = tmp_path / "switchboard.toml"
        config.write_text(f"""
[proxy]
journal = "{journal}"
[watchdog]
{watchdog}
[upstreams.sim]
kind = "simulator"
{sim}
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
repairs = "auto"
""")
        log = tmp_path / "switchboard.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tui.cli", "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=REPO, env=env)
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        assert match, f"switchboard did not start: {line!r} {log.read_text()}"
        started.append(Served(process, match.group(1), journal, log))
        return started[-1]

    yield start
    for served in started:
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(timeout=15) == 0, "serve stops cleanly on SIGTERM"


def files_done(workdir: Path) -> bool:
    return all((workdir / name).exists() and (workdir / name).read_text() == text
               for name, text in EXPECTED_FILES.items())


def check_session(result: OpencodeResult, served: Served, workdir: Path) -> list[dict]:
    report = f"{result.describe()}\n--- switchboard log ---\n{served.log.read_text()[-3000:]}"
    assert result.returncode == 0 and not result.errors, report
    assert result.completed_tool_calls == 10, report
    assert files_done(workdir), report
    turns = served.turns()
    # Every model call is a finished turn: the agent's 11 (10 tool steps and
    # the final answer) plus opencode's title request, in one session.
    assert len(turns) >= 12 and all(t["state"] == "finished" for t in turns), report
    assert len({t["session_id"] for t in turns}) == 1 and turns[0]["session_id"].startswith("ses_")
    assert sum(len(t["tool_calls"]) for t in turns) == 10
    rows = served.journal_rows()
    assert sorted(r[0] for r in rows) == sorted(t["id"] for t in turns)
    assert {r[1] for r in rows} == {"finished"}
    return turns


def test_clean_host_whole_task_in_one_run(serve, tmp_path: Path) -> None:
    served = serve("seed = 1")
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    assert all(len(t["attempts"]) == 1 for t in turns)
    assert "finish=tool_calls" in served.log.read_text(), "one log line per finished turn"


def test_leaky_host_whole_task_in_one_run(serve, tmp_path: Path) -> None:
    """F1 at rate 0.9 (the same host stops opencode after 0 calls on its own)."""
    served = serve('faults = ["leak"]\nfault_rate = 0.9\nseed = 3')
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    repaired = [r for t in turns for r in t["repairs"] if r["kind"] == "leaked_tool_call"]
    assert len(repaired) >= 5, "most steps leaked and were repaired"
    assert not any("<|tool_call" in t["text"] or "<function=" in t["text"] for t in turns)


def test_strict_reasoning_host_whole_task_in_one_run(serve, tmp_path: Path) -> None:
    """F3 (the same host fails opencode on its second call on its own)."""
    served = serve('faults = ["strict"]\nfault_rate = 1.0')
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    assert any(r["kind"] == "reasoning_content" for t in turns for r in t["repairs"])


def test_hanging_host_retried_transparently(serve, tmp_path: Path) -> None:
    """F2: streams that hang after a tool result are retried before any byte reaches opencode."""
    served = serve('faults = ["hang"]\nfault_rate = 0.5\nseed = 2',
                   watchdog="first_token_timeout = 1.5\nidle_timeout = 5.0\nmax_attempts = 4")
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    retried = [t for t in turns if len(t["attempts"]) > 1]
    assert retried, "some steps hung and were retried"
    for turn in retried:
        assert turn["attempts"][0]["outcome"] == "failed"
        assert "no first token" in turn["attempts"][0]["error"]
        assert turn["attempts"][-1]["reason"] == "retry" and turn["attempts"][-1]["outcome"] == "ok"
