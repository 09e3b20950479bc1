"""Run `switchboard serve` as a subprocess for end-to-end tests, and check sessions.

`start_serve(config_text, tmp_path)` starts it on a free port and returns a
`Served` (base URL, journal path, log file); `check_session` asserts that an
opencode run finished the simulator's whole task and that the turns API and
the journal account for every model call.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from opencode_runner import OpencodeResult
from proxy_core.simulator.script import EXPECTED_FILES
from tools import tool_path

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

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)


def start_serve(config_text: str, tmp_path: Path) -> Served:
    """`switchboard serve` with `config_text` (`{journal}` is filled in) on a free port."""
    journal = tmp_path / "journal.sqlite3"
    config = tmp_path / "switchboard.toml"
    config.write_text(config_text.replace("{journal}", str(journal)))
    log = tmp_path / "switchboard.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "PATH": tool_path()}
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=REPO, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+)", line)
    assert match, f"switchboard did not start: {line!r} {log.read_text()}"
    return Served(process, match.group(1), journal, log)


def files_done(workdir: Path) -> bool:
    return all((workdir / name).exists() and (workdir / name).read_text() == text
               for name, text in EXPECTED_FILES.items())


def check_session(result: OpencodeResult, served: Served, workdir: Path) -> list[dict]:
    """The whole task done in one run; every model call a finished turn, journaled."""
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
