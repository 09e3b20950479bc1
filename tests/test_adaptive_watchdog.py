"""Learned watchdog deadlines and hedged attempts, through real servers.

Simulated hosts (`proxy_core.simulator`, real HTTP on 127.0.0.1) sit behind a
real proxy; httpx clients drive it. The turn records say which deadline each
attempt ran under and what it learned it from; these tests read them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_core.app import SwitchboardProxy
from proxy_core.learned import MIN_SAMPLES
from proxy_core.simulator import RunningSimulator, SimulatorConfig, start_simulator
from proxy_core.simulator.script import next_reply
from support import (
    API, CHAT_PATH, FakeUpstream, api_turns, chat_body, hang_reply,
    openai_config, stream_chat, text_reply, wait_until,
)

ProxyFactory = Callable[..., Awaitable[SwitchboardProxy]]
MODEL = "kimi-k2.5"


@pytest.fixture
async def simulators() -> AsyncIterator[Callable[..., Awaitable[RunningSimulator]]]:
    started: list[RunningSimulator] = []

    async def start(**settings: Any) -> RunningSimulator:
        sim = await start_simulator(SimulatorConfig(**settings))
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.close()


def sim_config(*hosts: RunningSimulator, watchdog: str = "") -> str:
    """A route `kimi-k2.5` → one `kind = "openai"` upstream per simulator (a, b, ...)."""
    lines = ["[proxy]", 'host = "127.0.0.1"', "port = 0", "", "[watchdog]", watchdog, ""]
    targets = []
    for name, sim in zip("ab", hosts, strict=False):
        lines += [f"[upstreams.{name}]", 'kind = "openai"', f"base_url = {json.dumps(sim.base_url)}",
                  ""]
        targets.append(f"{name}:{MODEL}")
    lines += ["[[routes]]", f"model = {json.dumps(MODEL)}", f"targets = {json.dumps(targets)}",
              'repairs = "none"']
    return "\n".join(lines)


async def chat(client: httpx.AsyncClient, proxy: SwitchboardProxy, body: dict[str, Any],
               timeout: float = 60.0) -> dict[str, Any]:
    """One streamed turn: its raw bytes, and what an agent assembles from them."""
    async with asyncio.timeout(timeout):
        async with client.stream("POST", proxy.base_url + CHAT_PATH, json=body) as response:
            assert response.status_code == 200, await response.aread()
            raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    out: dict[str, Any] = {"raw": raw, "text": "", "calls": [], "finishes": [], "done": 0}
    for line in raw.decode().splitlines():
        if line == "data: [DONE]":
            out["done"] += 1
        elif line.startswith("data: "):
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                out["text"] += delta.get("content") or ""
                out["calls"] += delta.get("tool_calls") or []
                if choice.get("finish_reason"):
                    out["finishes"].append(choice["finish_reason"])
    return out


# -- slow but healthy ------------------------------------------------------------------

FILLER = "The quick brown fox jumps over the lazy dog. " * 22  # about 1 KB


async def test_slow_but_healthy_host_is_never_cut_across_100_turns(
        simulators: Callable[..., Awaitable[RunningSimulator]], proxy_factory: ProxyFactory,
) -> None:
    # The host reads the whole prompt before answering: 0.5 s plus 10 ms per KB,
    # +-25%, then steady chunks. Ten sessions grow from a few KB to about 200 KB,
    # so most turns are larger than any the target has answered before. The floor
    # is set low so the learned figure, not the floor, is what holds.
    host = await simulators(ttfb=0.5, ttfb_per_kb=0.01, ttfb_jitter=0.25, chunk_delay=0.01,
                            seed=3)
    proxy = await proxy_factory(sim_config(host, watchdog="first_token_floor = 0.5"))

    async def session(index: int, client: httpx.AsyncClient) -> None:
        messages: list[dict[str, Any]] = [{"role": "system", "content": f"Session {index}."}]
        messages.append({"role": "user", "content": FILLER * (3 * index + 1)})
        for turn in range(10):
            answer = await chat(client, proxy, {"model": MODEL, "messages": messages,
                                                "stream": True})
            assert answer["finishes"] == ["stop"] and answer["text"]
            messages.append({"role": "assistant", "content": answer["text"]})
            messages.append({"role": "user", "content": FILLER * 20 + f"turn {turn}"})

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(session(i, client) for i in range(10)))

    turns = list(proxy.store.recent(0))
    assert len(turns) == 100 and all(t.state == "finished" for t in turns)
    attempts = [a for t in turns for a in t.attempts]
    assert len(attempts) == 100, [a.error for a in attempts if a.error]  # no attempt cut
    learned = [a for a in attempts if a.first_output_basis.startswith("learned")]
    assert len(learned) >= 75  # the first few of each session teach
    for attempt in learned:
        ttfb = attempt.first_byte_at - attempt.started_at
        assert ttfb < attempt.first_output_deadline
    # Learned deadlines follow the size of the request, and stay far below the
    # configured 45 s: a hang here would cost seconds, not 45 of them.
    biggest = max(learned, key=lambda a: a.request_bytes)
    smallest = min(learned, key=lambda a: a.request_bytes)
    assert biggest.request_bytes > 150_000
    assert biggest.first_output_deadline > smallest.first_output_deadline
    assert max(a.first_output_deadline for a in learned) < 15.0


# -- learned, remembered, shown -------------------------------------------------------

async def test_hang_costs_the_learned_deadline_and_the_journal_keeps_it_across_restarts(
        fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, client: httpx.AsyncClient,
        tmp_path: Path,
) -> None:
    config = openai_config(fake_upstream.base_url, first_token_timeout=20.0, idle_timeout=20.0)
    config = config.replace("[watchdog]", "[watchdog]\nfirst_token_floor = 0.3")
    proxy = await proxy_factory(config)
    fake_upstream.default = text_reply("fine")
    for i in range(MIN_SAMPLES):
        response, _ = await stream_chat(client, proxy.base_url, chat_body(f"q{i}"))
        assert response.status_code == 200
    turns = await api_turns(client, proxy.base_url)
    assert [t["attempts"][0]["first_output_basis"] for t in turns] == [
        f"configured; {i} of {MIN_SAMPLES} turns learned" for i in range(MIN_SAMPLES)]
    assert turns[0]["attempts"][0]["first_output_deadline"] == 20.0
    await proxy.stop()

    # A new proxy on the same journal knows the target already: the next hang
    # ends after the learned deadline (the floor, for this fast host), not 20 s.
    proxy = await proxy_factory(config)
    assert proxy.pipeline.learned.samples("primary:up-model") == MIN_SAMPLES
    fake_upstream.script(hang_reply())
    response, payloads = await stream_chat(client, proxy.base_url, chat_body("hang"))
    assert response.status_code == 200 and payloads[-1] == "[DONE]"
    turn = (await api_turns(client, proxy.base_url, limit=1))[-1]
    hung, retry = turn["attempts"]
    assert hung["first_output_basis"] == f"learned from {MIN_SAMPLES} turns"
    assert hung["first_output_deadline"] == 0.3
    assert "within 0.3s (learned from 8 turns)" in hung["error"]
    assert hung["ended_at"] - hung["started_at"] < 3.0
    # The retry after a timeout allows twice as long.
    assert retry["first_output_deadline"] == 0.6
    assert retry["first_output_basis"].endswith("x2 after a timeout")

    targets = (await client.get(proxy.base_url + API + "/targets")).json()
    assert targets["targets"] == ["primary:up-model"]
    figures = targets["watchdog"]["primary:up-model"]
    assert figures["adaptive"] is True
    assert figures["first_output"]["samples"] == MIN_SAMPLES + 1
    assert figures["first_output"]["deadline_at"]["10 KB"] == 0.3
    assert figures["first_output"]["ceiling"] == 20.0
    assert figures["idle"]["basis"].startswith("configured")  # one chunk per turn: no gaps
    by_turn = (await client.get(proxy.base_url + API + "/targets",
                                params={"turn": turn["id"]})).json()
    assert by_turn["targets"][0] == "primary:up-model"
    assert "primary:up-model" in by_turn["watchdog"]


async def test_adaptive_off_restores_the_fixed_timers(
        fake_upstream: FakeUpstream, proxy_factory: ProxyFactory, client: httpx.AsyncClient,
) -> None:
    config = openai_config(fake_upstream.base_url, first_token_timeout=1.5)
    proxy = await proxy_factory(config.replace("[watchdog]", "[watchdog]\nadaptive = false"))
    heartbeats: list[Any] = []
    proxy.bus.subscribe(lambda e: heartbeats.append(e)
                        if type(e).__name__ == "StreamHeartbeat" else None)
    for i in range(MIN_SAMPLES):
        await stream_chat(client, proxy.base_url, chat_body(f"q{i}"))
    fake_upstream.script(hang_reply())
    response, _ = await stream_chat(client, proxy.base_url, chat_body("hang"))
    assert response.status_code == 200
    hung = (await api_turns(client, proxy.base_url, limit=1))[-1]["attempts"][0]
    assert hung["first_output_deadline"] == 1.5
    assert hung["first_output_basis"] == "configured; adaptive off"
    assert hung["ended_at"] - hung["started_at"] >= 1.5
    # The heartbeat carries the deadline the silence runs against.
    await wait_until(lambda: heartbeats, what="a heartbeat")
    assert heartbeats[0].deadline == 1.5


# -- hedging -------------------------------------------------------------------------

HEDGE_AFTER = 0.5
TOOLS = [{"type": "function", "function": {
    "name": "bash", "description": "Run a shell command",
    "parameters": {"type": "object", "properties": {
        "command": {"type": "string"}, "description": {"type": "string"}},
        "required": ["command"]}}}]


def tool_dialog(index: int, calls: int) -> list[dict[str, Any]]:
    """A dialog ending in a tool result (where the simulated host may hang)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Task number {index}."}]
    for n in range(calls):
        call_id = f"functions.bash:{n}"
        messages.append({"role": "assistant", "content": "", "tool_calls": [{
            "id": call_id, "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": f"echo {n}"})}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": f"{n}\n"})
    return messages


async def test_hedged_turns_wait_at_most_the_hedge_delay_plus_the_other_host(
        simulators: Callable[..., Awaitable[RunningSimulator]], proxy_factory: ProxyFactory,
        tmp_path: Path,
) -> None:
    # Host a hangs after half the tool results (every time it sees them) and
    # otherwise answers in 0.3-0.9 s; host b answers in 0.15-0.45 s. The two play
    # different scripts (a: ten steps, b: two), so what a client received tells
    # which host it came from.
    a = await simulators(faults=("hang",), fault_rate=0.5, hang_repeats=100, seed=5, ttfb=0.6,
                         ttfb_jitter=0.5, steps=10)
    b = await simulators(seed=6, ttfb=0.3, ttfb_jitter=0.5, steps=2)
    proxy = await proxy_factory(sim_config(a, b, watchdog=f"hedge_after = {HEDGE_AFTER}"))
    answers: dict[str, dict[str, Any]] = {}

    async def one(index: int, client: httpx.AsyncClient) -> None:
        messages = tool_dialog(index, 3)
        body = {"model": MODEL, "messages": messages, "tools": TOOLS, "stream": True,
                "user": f"turn-{index}"}
        answers[f"turn-{index}"] = {"answer": await chat(client, proxy, body),
                                    "messages": messages}

    async with httpx.AsyncClient(timeout=60) as client:
        for start in range(0, 40, 8):
            await asyncio.gather(*(one(i, client) for i in range(start, start + 8)))
        targets = (await client.get(proxy.base_url + API + "/targets")).json()

    turns = {t.request["user"]: t for t in proxy.store.recent(0)}
    assert len(turns) == 40 and all(t.state == "finished" for t in turns.values())
    hedged = [t for t in turns.values() if t.hedges]
    assert sum(1 for t in hedged if t.target == f"b:{MODEL}") >= 5  # a's hangs, rescued
    slack = 0.5  # from the turn's start to its first attempt's, and the loop's own delays
    for key, turn in turns.items():
        assert turn.ttfb is not None
        # Bytes: exactly one host's reply, whole, from the attempt the record says won.
        winner = next(x for x in turn.attempts if x.outcome == "ok")
        steps = 10 if winner.target == f"a:{MODEL}" else 2
        expected = next_reply(answers[key]["messages"], TOOLS, steps)
        got = answers[key]["answer"]
        assert got["text"] == expected.text, got["raw"]
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                 for c in got["calls"]]
        assert calls == ([(expected.tool_call.name, expected.tool_call.arguments)]
                         if expected.tool_call else []), got["raw"]
        assert got["finishes"] == [expected.finish_reason] and got["done"] == 1, got["raw"]
        if not turn.hedges:
            assert turn.ttfb <= HEDGE_AFTER + slack
            continue
        assert turn.hedges == 1 and len(turn.attempts) == 2
        first, hedge = turn.attempts
        assert hedge.reason == "hedge" and hedge.target == f"b:{MODEL}"
        assert hedge.started_at - turn.started_at <= HEDGE_AFTER + slack
        loser = hedge if winner is first else first
        assert loser.outcome == "cancelled"
        assert loser.error == f"lost the hedge race to attempt {winner.number}"
        # The other target's time to first byte: measured if it won, else it was
        # still waiting when the first attempt answered (so it was longer than that).
        other_ttfb = ((hedge.first_byte_at if winner is hedge else hedge.ended_at)
                      - hedge.started_at)
        assert turn.ttfb <= HEDGE_AFTER + other_ttfb + slack
    # Cancelled attempts closed their upstream requests: nothing hangs on at a.
    await a.wait_for(lambda s: s.hangs_active == 0, timeout=10)

    # Counted on the turn, in the control API and in the journal.
    hedges = sum(t.hedges for t in turns.values())
    assert targets["watchdog"][f"b:{MODEL}"]["hedges"] == hedges
    assert targets["watchdog"][f"b:{MODEL}"]["hedge_wins"] == sum(
        1 for t in hedged if t.target == f"b:{MODEL}")
    await proxy.stop()
    with sqlite3.connect(tmp_path / "journal.sqlite3") as conn:
        rows = conn.execute("SELECT json_extract(data, '$.hedges') FROM turns").fetchall()
    assert sum(r[0] for r in rows) == hedges


async def test_hedge_after_a_quantile_waits_for_history_then_hedges_a_hang(
        make_fake_upstream: Callable[..., Awaitable[FakeUpstream]], proxy_factory: ProxyFactory,
        client: httpx.AsyncClient,
) -> None:
    primary, backup = await make_fake_upstream(), await make_fake_upstream()
    config = openai_config(primary.base_url, backup.base_url, first_token_timeout=5.0)
    proxy = await proxy_factory(config.replace("[watchdog]", '[watchdog]\nhedge_after = "p95"'))
    primary.default = text_reply("from primary")
    backup.default = text_reply("from backup")
    # Without history there is no p95 to hedge at: a hang costs the deadline.
    primary.script(hang_reply())
    response, payloads = await stream_chat(client, proxy.base_url, chat_body("first"))
    turn = (await api_turns(client, proxy.base_url, limit=1))[-1]
    assert turn["hedges"] == 0 and turn["attempts"][0]["outcome"] == "failed"
    for i in range(MIN_SAMPLES):
        await stream_chat(client, proxy.base_url, chat_body(f"q{i}"))
    # Now a hang is hedged after the learned p95 (here the 0.5 s minimum), and
    # the client gets the backup's answer only.
    primary.script(hang_reply())
    response, payloads = await stream_chat(client, proxy.base_url, chat_body("hedged"))
    assert response.status_code == 200
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads
                   if isinstance(p, dict) and p.get("choices")) == "from backup"
    turn = (await api_turns(client, proxy.base_url, limit=1))[-1]
    first, hedge = turn["attempts"]
    assert turn["hedges"] == 1
    assert (hedge["reason"], hedge["target"], hedge["outcome"]) == ("hedge", "backup:up-model", "ok")
    assert first["outcome"] == "cancelled" and first["error"] == "lost the hedge race to attempt 2"
    assert 0.5 <= hedge["started_at"] - first["started_at"] < 2.0
    await wait_until(lambda: primary.disconnects >= 2, what="the hedged hang to be closed")
