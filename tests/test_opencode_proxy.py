"""The real opencode client, through `switchboard serve`, against the simulator.

The acceptance runs of the product: one `opencode run` finishes the whole
10-tool-call task through Switchboard — against a clean host, a host that
leaks tool calls on most steps, a host enforcing Moonshot's
`reasoning_content` rule and a host that hangs — and the turns API and the
journal account for every model call. The same faulty hosts without
Switchboard are in `test_opencode_simulator.py` (they stop early).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from opencode_runner import run_opencode
from serve_runner import Served, check_session, start_serve

pytestmark = pytest.mark.opencode

PROMPT = "Create a small calculator module with tests, then extend it with multiplication."


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start `switchboard serve` on a free port with a simulator upstream."""
    started: list[Served] = []

    def start(sim: str, watchdog: str = "") -> Served:
        started.append(start_serve(f"""
[proxy]
journal = "{{journal}}"
[watchdog]
{watchdog}
[upstreams.sim]
kind = "simulator"
{sim}
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
repairs = "auto"
""", tmp_path))
        return started[-1]

    yield start
    for served in started:
        assert served.stop() == 0, "serve stops cleanly on SIGTERM"


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


def test_host_leaking_every_step_in_wild_shapes_whole_task_in_one_run(serve, tmp_path: Path) -> None:
    """Issue 11: every tool call leaks in a shape drawn from the mutated grammar
    (markers dropped or respelled, ids mangled or nameless, split between
    reasoning and content). The same host stops opencode at step 0 on its own
    (`test_opencode_simulator.py`)."""
    served = serve('faults = ["leak_wild"]\nfault_rate = 1.0\nseed = 11')
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    repaired = [r for t in turns for r in t["repairs"] if r["kind"] == "leaked_tool_call"]
    assert len(repaired) == 10, [t["repairs"] for t in turns]
    assert any("tool from the arguments" in r["after"] for r in repaired), "some ids named no tool"
    assert not any(r["kind"] == "call_as_text" for t in turns for r in t["repairs"])
    assert not any("tool_call" in t["text"].lower() for t in turns)


def test_host_that_goes_silent_after_thinking_whole_task_in_one_run(serve, tmp_path: Path) -> None:
    """Kimi K2.6 ends some tool follow-ups right after its reasoning: no text,
    no call. Each such attempt is retried before the client sees an answer."""
    served = serve('faults = ["empty_reply"]\nfault_rate = 0.6\nseed = 2')
    workdir = tmp_path / "work"
    result = run_opencode(f"{served.base_url}/v1", PROMPT, workdir, timeout=240)
    turns = check_session(result, served, workdir)
    retried = [t for t in turns if len(t["attempts"]) > 1]
    assert retried, "some follow-ups came back empty"
    assert all("empty reply" in (t["attempts"][0]["error"] or "") for t in retried)


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
