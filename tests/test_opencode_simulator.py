"""The real opencode client against the standalone simulator, with no proxy between.

The clean run shows the scripted task works end to end with opencode's
real tools. The faulty runs are evidence for the product: each known fault
breaks opencode on its own, which is what Switchboard exists to repair.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from opencode_runner import OpencodeResult, run_opencode
from proxy_core.simulator.script import EXPECTED_FILES, MODULE, TEST

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."
TASK_TOOLS = ["write", "write", "bash", "read", "edit", "read", "edit", "bash", "glob", "grep"]
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Standalone:
    """A ``python -m proxy_core.simulator`` process and its address."""

    process: subprocess.Popen[str]
    base_url: str

    def stats(self) -> dict[str, object]:
        """The simulator's counters, over HTTP."""
        root = self.base_url.removesuffix("/v1")
        return httpx.get(f"{root}/simulator/stats", timeout=5).json()


@pytest.fixture
def simulator() -> Iterator[Callable[..., Standalone]]:
    """Start standalone simulators on free ports; stop them afterwards."""
    started: list[Standalone] = []

    def start(*args: str) -> Standalone:
        command = [sys.executable, "-m", "proxy_core.simulator", "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the simulator is listening
        match = re.search(r"(http://\S+/v1)", line)
        assert match, f"simulator did not start: {line!r}"
        started.append(Standalone(process, match.group(1)))
        return started[-1]

    yield start
    for sim in started:
        sim.process.send_signal(signal.SIGTERM)
        sim.process.wait(timeout=10)


def _files_done(workdir: Path) -> dict[str, bool]:
    return {name: (workdir / name).exists() and (workdir / name).read_text() == text for name, text in EXPECTED_FILES.items()}


def _report(result: OpencodeResult, sim: Standalone) -> str:
    return f"{result.describe()} stats={json.dumps(sim.stats())[:800]}"


def test_opencode_completes_the_task_on_a_clean_host(simulator, tmp_path: Path) -> None:
    sim = simulator("--seed", "1")
    result = run_opencode(sim.base_url, PROMPT, tmp_path, timeout=240)
    stats = sim.stats()
    assert result.returncode == 0 and not result.errors, _report(result, sim)
    assert result.tools_used == TASK_TOOLS and result.completed_tool_calls == 10, _report(result, sim)
    assert _files_done(tmp_path) == {MODULE: True, TEST: True}
    assert stats["tool_results_seen"] == 10 and stats["tool_calls_emitted"] == 10 and stats["finals"] == 1
    assert stats["side_requests"] >= 1, "opencode asks for a session title"
    assert any("Done." in text for text in result.texts)


def test_leaks_stop_opencode_early_without_switchboard(simulator, tmp_path: Path) -> None:
    sim = simulator("--faults", "leak", "--fault-rate", "0.9", "--seed", "3")
    result = run_opencode(sim.base_url, PROMPT, tmp_path, timeout=240)
    stats = sim.stats()
    # opencode takes the leaked tokens for a final answer and ends the session "successfully".
    assert result.returncode == 0 and not result.errors, _report(result, sim)
    assert result.completed_tool_calls < 10 and not all(_files_done(tmp_path).values()), _report(result, sim)
    assert stats["fault_counts"] == {"leak": 1}, "the first leak ends the session"
    assert result.completed_tool_calls == stats["tool_calls_emitted"]
    variant = stats["faults"][0]["detail"]  # type: ignore[index]
    if variant != "reasoning":
        leaked = "".join(result.texts)
        assert "<|tool_call" in leaked or "<function=" in leaked, leaked


def test_wild_leaks_stop_opencode_at_step_0_without_switchboard(simulator, tmp_path: Path) -> None:
    """The host of the issue-11 acceptance run, with nothing between it and opencode."""
    sim = simulator("--faults", "leak_wild", "--fault-rate", "1.0", "--seed", "11")
    result = run_opencode(sim.base_url, PROMPT, tmp_path, timeout=240)
    stats = sim.stats()
    assert result.completed_tool_calls == 0, _report(result, sim)
    assert stats["fault_counts"] == {"leak_wild": 1}, "the first leak ends the session"
    assert not any(_files_done(tmp_path).values())


def test_strict_host_fails_opencode_on_the_second_call_without_switchboard(simulator, tmp_path: Path) -> None:
    sim = simulator("--faults", "strict", "--fault-rate", "1.0")
    result = run_opencode(sim.base_url, PROMPT, tmp_path, timeout=240)
    stats = sim.stats()
    assert result.returncode != 0, _report(result, sim)
    messages = [json.dumps(e.get("error")) for e in result.errors]
    assert any("reasoning_content is missing in assistant tool call message at index 2" in m for m in messages), messages
    assert result.completed_tool_calls == 1 and result.tools_used == ["write"]
    assert stats["tool_calls_emitted"] == 1 and stats["fault_counts"] == {"unthought": 1, "strict": 1}
    # One title request, then the agent's first call, then the rejected second call.
    assert stats["requests"] == 3


def test_hosts_that_keep_hanging_exhaust_opencodes_own_retries(simulator, tmp_path: Path) -> None:
    sim = simulator("--faults", "hang", "--fault-rate", "1.0", "--hang-repeats", "1000")
    result = run_opencode(sim.base_url, PROMPT, tmp_path, timeout=240, chunk_timeout_ms=1000, request_timeout_ms=10_000)
    stats = sim.stats()
    assert result.returncode != 0 and not result.timed_out, _report(result, sim)
    assert result.completed_tool_calls == 1, _report(result, sim)
    assert any("timed out" in json.dumps(e.get("error")) for e in result.errors), _report(result, sim)
    assert stats["fault_counts"]["hang"] >= 2 and stats["hangs_active"] == 0  # type: ignore[index]
