"""`switchboard` (proxy + dashboard) in a real terminal while the real opencode client
runs a task through it.

A pseudo-terminal gives the dashboard 220x60 cells; opencode (pinned, see
`opencode_runner.py`) runs the simulator's ten-step task against the
dashboard's proxy, on a host that hangs after some tool results (the
watchdog retries them). Everything asserted is read off the screen (the
terminal emulator of `terminal_support.py`): the turns, their stop reasons, the automatic retries,
and a retry by hand with the `r` key.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import pytest

from opencode_runner import run_opencode
from serve_runner import files_done
from terminal_support import SWITCHBOARD, Terminal, app_env

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(screen: str) -> list[str]:
    """The turn table's rows: lines with a clock time and a session id."""
    return [line for line in screen.splitlines()
            if re.search(r"\d\d:\d\d:\d\d\s+ses_", line)]


def test_dashboard_shows_opencodes_turns_stop_reasons_and_retries(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "switchboard.toml"
    config.write_text(f"""
[proxy]
journal = "{tmp_path / 'journal.sqlite3'}"
[watchdog]
first_token_timeout = 2.0
idle_timeout = 5.0
max_attempts = 4
[upstreams.sim]
kind = "simulator"
faults = ["hang"]
# Which requests hang depends on the seed and the dialog, not on the folder or the date.
fault_rate = 0.7
seed = 4
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
""")
    terminal = Terminal([str(SWITCHBOARD), "--config", str(config), "--port", str(port)],
                        cwd=tmp_path, env=app_env(tmp_path), width=220, height=60)
    try:
        terminal.wait_for(lambda s: f"http://127.0.0.1:{port}/v1" in s, timeout=15,
                          what="the dashboard's status line")
        workdir = tmp_path / "work"
        result = run_opencode(f"http://127.0.0.1:{port}/v1", PROMPT, workdir, timeout=240,
                              chunk_timeout_ms=None, request_timeout_ms=None)
        assert result.returncode == 0 and not result.errors, result.describe()
        assert result.completed_tool_calls == 10 and files_done(workdir), result.describe()
        api = httpx.get(f"http://127.0.0.1:{port}/switchboard/api/turns?limit=100",
                        timeout=10).json()["turns"]

        # Every model call is a row; read the stop reasons and retries off the screen.
        screen = terminal.wait_for(
            lambda s: len(rows(s)) == len(api) and "● live" not in s, timeout=15,
            what=f"{len(api)} settled rows")
        table = rows(screen)
        assert sum("tool_calls" in r for r in table) == 10, screen
        assert sum(re.search(r"✓ done\s+stop\b", r) is not None for r in table) >= 2, screen
        retried = [r for r in table if re.search(r"#[2-4] retry\b", r)]
        assert retried, (f"the host hung and the watchdog retried (attempts per turn:"
                         f" {[len(t['attempts']) for t in api]}):\n{screen}")
        assert len(retried) == sum(len(t["attempts"]) > 1 for t in api)
        session = api[0]["session_id"]
        assert all(session[:10] in r for r in table)
        assert "FOLLOW" in screen and f"{len(api)} turns" in screen

        # A retry by hand: `r` re-runs the selected (newest) turn as a new turn.
        terminal.send("r")
        screen = terminal.wait_for(
            lambda s: any(re.search(r"#1 retry\*\s+✓ done", r) for r in rows(s)), timeout=20,
            what="the re-run by hand, finished")
        assert len(rows(screen)) == len(api) + 1
        assert "retried: as turn_" in screen  # the notification names the new turn
        terminal.send("q")
        assert terminal.wait_exit(timeout=15) == 0  # a clean exit
    finally:
        terminal.close()
