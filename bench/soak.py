"""Soak: hundreds of simulated agent sessions through `switchboard serve`, with faults, for a bounded time.

Three kinds of process: the simulated Kimi host (`python -m proxy_core.simulator`,
leaking tool calls into text, hanging after tool results, and strict about
history), the proxy (`switchboard serve`, journal on, as a user runs it) and
this client, which runs N concurrent agent loops: send the conversation,
get a tool call (repaired by the proxy when it leaked), append a result,
repeat until the model's final answer — like opencode, minus the editor.

    .venv/bin/python bench/soak.py                       # 300 sessions, 60 s
    .venv/bin/python bench/soak.py --sessions 500 --duration 300

Reports sessions and turns completed, turns failed, repairs by kind, retries
(watchdog and manual), the proxy's peak and final memory, its CPU time, and
turn latencies. New sessions start until `--duration` has passed; sessions
in progress then get `--grace` seconds to finish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench_relay import cpu_seconds, rss_bytes  # the same /proc readings

ROOT = Path(__file__).resolve().parent.parent
MODEL = "kimi-k2.5"
#: The one tool the simulated task needs: it falls back to shell commands for every step.
TOOLS = [{"type": "function", "function": {
    "name": "bash", "description": "Run a shell command",
    "parameters": {"type": "object", "required": ["command", "description"],
                   "properties": {"command": {"type": "string"},
                                  "description": {"type": "string"}}}}}]


# ---------------------------------------------------------------------------
# The processes
# ---------------------------------------------------------------------------

async def start_process(args: list[str], ready: str, env: dict[str, str] | None = None
                        ) -> tuple[asyncio.subprocess.Process, str]:
    """Start a child whose first stdout line announces `ready ... URL`; return it and the URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = (await proc.stdout.readline()).decode()
    match = re.search(rf"{ready}.*?(http://\S+)", line)
    if match is None:
        proc.kill()
        err = (await proc.stderr.read()).decode() if proc.stderr else ""
        raise RuntimeError(f"{args[:3]} did not start: {line!r} {err[-2000:]}")
    return proc, match.group(1)


def proxy_toml(upstream_url: str, journal: Path, timeout: float) -> str:
    return f"""
[proxy]
journal = {json.dumps(str(journal))}

[watchdog]
first_token_timeout = {timeout}
idle_timeout = {timeout}
max_attempts = 4

[upstreams.sim]
kind = "openai"
base_url = {json.dumps(upstream_url if upstream_url.endswith("/v1") else upstream_url + "/v1")}

[[routes]]
model = "{MODEL}"
targets = ["sim:{MODEL}"]
repairs = "kimi"
"""


# ---------------------------------------------------------------------------
# The agents
# ---------------------------------------------------------------------------

@dataclass
class Tally:
    sessions_started: int = 0
    sessions_completed: int = 0
    turns: int = 0
    client_retries: int = 0        # turns the agent had to send again (the proxy gave up)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    leaked_markers: int = 0        # raw tool-call tokens that reached an agent (must stay 0)


async def turn(session: aiohttp.ClientSession, base: str, messages: list[dict[str, Any]],
               session_id: str) -> tuple[int, dict[str, Any]]:
    """One streamed completion, collected."""
    body = {"model": MODEL, "messages": messages, "tools": TOOLS, "stream": True}
    out: dict[str, Any] = {"text": "", "calls": [], "finish": None, "error": None}
    async with session.post(f"{base}/v1/chat/completions", json=body,
                            headers={"x-session-id": session_id}) as response:
        if response.status != 200:
            out["error"] = (await response.text())[:300]
            return response.status, out
        buffer = b""
        async for piece in response.content.iter_any():
            buffer += piece
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"].get("message")
                for choice in chunk.get("choices", []):
                    delta = choice.get("delta") or {}
                    out["text"] += delta.get("content") or ""
                    out["calls"] += delta.get("tool_calls") or []
                    out["finish"] = choice.get("finish_reason") or out["finish"]
    return 200, out


async def agent(number: int, session: aiohttp.ClientSession, base: str, tally: Tally,
                max_turns: int) -> None:
    """One agent session: tool calls until the final answer (or the turn budget runs out)."""
    tally.sessions_started += 1
    session_id = f"ses_soak_{number:05d}"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. Use the bash tool."},
        {"role": "user", "content": f"Session {number}: add a mul function with a test."}]
    for _ in range(max_turns):
        for _attempt in range(3):
            started = time.perf_counter()
            status, got = await turn(session, base, messages, session_id)
            if status == 200 and got["error"] is None:
                tally.latencies.append(time.perf_counter() - started)
                tally.turns += 1
                break
            tally.errors[f"HTTP {status}: {str(got['error'])[:80]}"] += 1
            tally.client_retries += 1
        else:
            return  # gave up on this session
        if "<|tool_call" in got["text"] or "<function=" in got["text"]:
            tally.leaked_markers += 1
        if got["finish"] != "tool_calls" or not got["calls"]:
            tally.sessions_completed += 1
            return
        messages.append({"role": "assistant", "content": got["text"] or None,
                         "tool_calls": [{"id": c["id"], "type": "function",
                                         "function": c["function"]} for c in got["calls"]]})
        for call in got["calls"]:
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "done"})


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------

@dataclass
class SoakReport:
    sessions: int
    duration: float
    sessions_started: int
    sessions_completed: int
    turns_completed: int          # answered to the agents
    journal_turns: dict[str, int]  # state -> count, from the journal
    repairs: dict[str, int]        # kind -> count
    retries: dict[str, int]        # attempt reason (retry, reroute, ...) -> count
    client_retries: int
    errors: dict[str, int]
    leaked_markers: int
    peak_rss: int | None           # the proxy's high-water mark, bytes
    start_rss: int | None
    end_rss: int | None
    proxy_cpu: float | None
    latency_p50: float
    latency_p99: float
    wall: float

    def lines(self) -> list[str]:
        def mb(v: int | None) -> str:
            return "n/a" if v is None else f"{v / 2**20:.1f} MB"
        turns_s = self.turns_completed / self.wall if self.wall else 0.0
        return [
            f"sessions: {self.sessions_completed} completed of {self.sessions_started} started "
            f"({self.sessions} concurrent, new ones for {self.duration:g} s; wall {self.wall:.1f} s)",
            f"turns: {self.turns_completed} completed ({turns_s:.1f}/s); journal: "
            + ", ".join(f"{n} {state}" for state, n in sorted(self.journal_turns.items())),
            "repairs: " + (", ".join(f"{n} {kind}" for kind, n in
                                     sorted(self.repairs.items(), key=lambda kv: -kv[1]))
                           or "none"),
            "retries by the proxy: " + (", ".join(f"{n} {reason}" for reason, n in
                                                  sorted(self.retries.items())) or "none")
            + f"; turns the agents had to resend: {self.client_retries}",
            f"proxy memory: start {mb(self.start_rss)}, peak {mb(self.peak_rss)}, "
            f"end {mb(self.end_rss)}; proxy CPU {self.proxy_cpu or 0:.1f} s",
            f"turn latency (client): p50 {self.latency_p50 * 1000:.0f} ms, "
            f"p99 {self.latency_p99 * 1000:.0f} ms",
            f"raw tool-call markers that reached an agent: {self.leaked_markers}",
        ] + [f"  error x{n}: {e}" for e, n in sorted(self.errors.items(), key=lambda kv: -kv[1])[:5]]


def read_journal(path: Path) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    states: Counter[str] = Counter()
    repairs: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    with sqlite3.connect(path) as conn:
        for state, data in conn.execute("SELECT state, data FROM turns"):
            states[state] += 1
            turn = json.loads(data)
            for repair in turn.get("repairs", []):
                repairs[repair["kind"]] += 1
            for attempt in turn.get("attempts", [])[1:]:
                retries[attempt["reason"]] += 1
    return dict(states), dict(repairs), dict(retries)


async def run_soak(sessions: int = 300, duration: float = 60.0, *, grace: float = 60.0,
                   faults: str = "leak,hang,strict", fault_rate: float = 0.3, steps: int = 6,
                   chunk_delay: float = 0.002, timeout: float = 1.5, seed: int = 1,
                   one_round: bool = False, workdir: Path | None = None) -> SoakReport:
    """Run the soak and return its report. `one_round`: each worker runs one session only."""
    with tempfile.TemporaryDirectory(prefix="switchboard-soak-") as tmp:
        work = workdir or Path(tmp)
        simulator, sim_url = await start_process(
            ["-m", "proxy_core.simulator", "--port", "0", "--faults", faults,
             "--fault-rate", str(fault_rate), "--seed", str(seed), "--steps", str(steps),
             "--chunk-delay", str(chunk_delay), "--models", MODEL], "listening on")
        journal = work / "journal.sqlite3"
        config = work / "soak.toml"
        config.write_text(proxy_toml(sim_url, journal, timeout))
        proxy, base = await start_process(
            ["-m", "tui.cli", "serve", "--config", str(config), "--port", "0"], "ready on")
        stderr_task = asyncio.create_task(_drain(proxy))
        tally = Tally()
        started = time.perf_counter()
        try:
            await asyncio.sleep(0.2)
            start_rss = rss_bytes(proxy.pid)
            cpu0 = cpu_seconds(proxy.pid)
            deadline = started + duration
            counter = iter(range(10**9))
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector,
                                             timeout=aiohttp.ClientTimeout(total=120)) as http:
                async def worker() -> None:
                    while True:
                        await agent(next(counter), http, base, tally, max_turns=steps + 3)
                        if one_round or time.perf_counter() >= deadline:
                            return

                workers = [asyncio.create_task(worker()) for _ in range(sessions)]
                done, pending = await asyncio.wait(workers, timeout=duration + grace)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            end_rss = rss_bytes(proxy.pid)
            peak_rss = rss_bytes(proxy.pid, "VmHWM")
            cpu1 = cpu_seconds(proxy.pid)
        finally:
            wall = time.perf_counter() - started
            for proc in (proxy, simulator):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (proxy, simulator):
                try:
                    async with asyncio.timeout(15):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
            stderr_task.cancel()
        states, repairs, retries = read_journal(journal)
        lat = sorted(tally.latencies) or [0.0]
        return SoakReport(
            sessions=sessions, duration=duration, sessions_started=tally.sessions_started,
            sessions_completed=tally.sessions_completed, turns_completed=tally.turns,
            journal_turns=states, repairs=repairs, retries=retries,
            client_retries=tally.client_retries, errors=dict(tally.errors),
            leaked_markers=tally.leaked_markers, peak_rss=peak_rss, start_rss=start_rss,
            end_rss=end_rss,
            proxy_cpu=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
            latency_p50=statistics.median(lat), latency_p99=lat[int(0.99 * (len(lat) - 1))],
            wall=wall)


async def _drain(proc: asyncio.subprocess.Process) -> None:
    """Keep the child's stderr pipe from filling up (its log is not needed here)."""
    assert proc.stderr is not None
    while await proc.stderr.read(65536):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=300, help="concurrent agent sessions")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds during which new sessions start")
    parser.add_argument("--grace", type=float, default=60.0,
                        help="seconds sessions in progress get to finish after that")
    parser.add_argument("--faults", default="leak,hang,strict")
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--steps", type=int, default=6, help="tool calls per session")
    parser.add_argument("--timeout", type=float, default=1.5,
                        help="the proxy's first-token and idle timeouts (s)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    report = asyncio.run(run_soak(args.sessions, args.duration, grace=args.grace,
                                  faults=args.faults, fault_rate=args.fault_rate,
                                  steps=args.steps, timeout=args.timeout, seed=args.seed))
    print(f"\nSwitchboard soak ({os.cpu_count()} CPUs; faults {args.faults} at rate "
          f"{args.fault_rate:g}; {args.steps} tool calls per session)")
    for line in report.lines():
        print(line)


if __name__ == "__main__":
    main()
