"""Repairs through a running proxy, against the simulator as a strict Kimi host.

Real servers on 127.0.0.1 (the proxy and its embedded simulator, plus a
standalone simulator for the "without Switchboard" comparison) and a real
httpx client playing an agent loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from proxy_core.app import SwitchboardProxy
from proxy_core.config import parse_config
from proxy_core.simulator import SimulatorConfig, start_simulator
from support import (
    collect_answer, content_of, deltas, finish_chunk, finish_reasons, openai_config, read_sse,
    reasoning_chunk, settled_turn, sse, stream_errors, text_chunk, tool_call_chunk,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "opencode_request.json").read_text())
MARKERS = ("<|tool_call", "<|tool_calls_section", "<function=")


def sim_toml(journal: Path, faults: list[str], profile: str = "kimi", rate: float = 1.0) -> str:
    return f"""
[proxy]
journal = "{journal}"
[upstreams.sim]
kind = "simulator"
faults = {json.dumps(faults)}
fault_rate = {rate}
seed = 7
chunk_delay = 0.0
[[routes]]
model = "kimi-k2.5"
targets = ["sim:kimi-k2.5"]
repairs = "{profile}"
"""


@asynccontextmanager
async def running_proxy(toml: str) -> AsyncIterator[SwitchboardProxy]:
    proxy = SwitchboardProxy(parse_config(toml), port=0)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def opening() -> list[dict[str, Any]]:
    """opencode's real system prompt and first user message."""
    return [dict(m) for m in FIXTURE["messages"][:2]]


async def chat(client: httpx.AsyncClient, base: str, messages: list[dict[str, Any]],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One streamed completion, collected: (status, {text, calls, finish, error})."""
    body = {"model": "kimi-k2.5", "messages": messages, "tools": FIXTURE["tools"],
            "stream": True, "stream_options": {"include_usage": True}}
    out: dict[str, Any] = {"text": "", "reasoning": "", "calls": [], "finish": None, "error": None}
    async with client.stream("POST", f"{base}/chat/completions", json=body,
                             headers=headers or {}) as response:
        if response.status_code != 200:
            out["error"] = json.loads(await response.aread())["error"]["message"]
            return response.status_code, out
        out.update(await collect_answer(response))
    return 200, out


async def test_leaked_calls_reach_the_client_as_tool_calls(tmp_path: Path) -> None:
    """F1 on every step: through Switchboard, ten proper tool calls; direct, none."""
    sim = await start_simulator(SimulatorConfig(faults=("leak",), fault_rate=1.0, seed=7,
                                                chunk_delay=0.0))
    try:
        async with running_proxy(sim_toml(tmp_path / "j.sqlite3", ["leak"])) as proxy, \
                httpx.AsyncClient(timeout=30) as client:
            status, direct = await chat(client, sim.base_url, opening())
            assert status == 200 and direct["calls"] == [] and direct["finish"] == "stop"
            leaked = direct["text"] + direct["reasoning"]
            assert any(m in leaked for m in MARKERS), "the simulator really leaks"

            messages = opening()
            for step in range(10):
                status, got = await chat(client, f"{proxy.base_url}/v1", messages)
                assert status == 200
                assert got["finish"] == "tool_calls", f"step {step}: {got}"
                assert len(got["calls"]) == 1
                assert not any(m in got["text"] + got["reasoning"] for m in MARKERS), got
                assert got["calls"][0]["id"].startswith("call_")
                messages.append({"role": "assistant", "content": got["text"] or None,
                                 "tool_calls": [{k: c[k] for k in ("id", "type", "function")}
                                                for c in got["calls"]]})
                messages.append({"role": "tool", "tool_call_id": got["calls"][0]["id"],
                                 "content": "ok"})
            status, final = await chat(client, f"{proxy.base_url}/v1", messages)
            assert status == 200 and final["finish"] == "stop" and not final["calls"]

            turns = (await client.get(f"{proxy.base_url}/switchboard/api/turns")).json()["turns"]
            assert len(turns) == 11
            leak_repairs = [r for t in turns for r in t["repairs"] if r["kind"] == "leaked_tool_call"]
            assert len(leak_repairs) == 10
            assert all("<|" in r["before"] or "<function=" in r["before"] for r in leak_repairs)
    finally:
        await sim.close()


async def test_stripped_history_gets_200_from_strict_host(tmp_path: Path) -> None:
    """Seed 003: a client replays assistant messages without their tool_calls.

    A strict host (orphaned tool results and Moonshot's reasoning_content rule
    enforced) rejects that history; through Switchboard every request passes,
    also after a restart, because delivered calls are kept in the journal.
    """
    journal = tmp_path / "journal.sqlite3"
    toml = sim_toml(journal, ["orphan", "strict"])
    sim = await start_simulator(SimulatorConfig(faults=("orphan", "strict"), seed=7, chunk_delay=0.0))
    messages = opening()
    try:
        async with running_proxy(toml) as proxy, httpx.AsyncClient(timeout=30) as client:
            base = f"{proxy.base_url}/v1"
            for _step in range(4):
                status, got = await chat(client, base, messages)
                assert status == 200, got["error"]
                assert got["finish"] == "tool_calls" and len(got["calls"]) == 1
                # The broken replay: tool_calls stripped, the result keeps its id.
                messages.append({"role": "assistant", "content": got["text"]})
                messages.append({"role": "tool", "tool_call_id": got["calls"][0]["id"],
                                 "content": "done"})
            status, got = await chat(client, base, messages)
            assert status == 200, got["error"]
            last = (await client.get(f"{proxy.base_url}/switchboard/api/turns?limit=1")).json()["turns"][-1]
            kinds = [r["kind"] for r in last["repairs"]]
            assert kinds.count("restored_tool_call") == 4
            assert "reasoning_content" in kinds

            status, direct = await chat(client, sim.base_url, messages)
            assert status == 400, "without Switchboard the strict host refuses this history"
            assert "must be a response to a preceding message with 'tool_calls'" in direct["error"]

        async with running_proxy(toml) as proxy, httpx.AsyncClient(timeout=30) as client:
            status, got = await chat(client, f"{proxy.base_url}/v1", messages)
            assert status == 200, f"after a restart: {got['error']}"
    finally:
        await sim.close()


async def test_moonshot_reasoning_rule_without_switchboard_fails(tmp_path: Path) -> None:
    """F3: history with tool calls but no reasoning_content; 400 direct, 200 through us."""
    sim = await start_simulator(SimulatorConfig(faults=("strict",), seed=1, chunk_delay=0.0))
    try:
        async with running_proxy(sim_toml(tmp_path / "j.sqlite3", ["strict"])) as proxy, \
                httpx.AsyncClient(timeout=30) as client:
            messages = opening()
            status, got = await chat(client, f"{proxy.base_url}/v1", messages)
            assert status == 200 and got["calls"]
            messages.append({"role": "assistant", "content": got["text"],
                             "tool_calls": [{k: c[k] for k in ("id", "type", "function")}
                                            for c in got["calls"]]})
            messages.append({"role": "tool", "tool_call_id": got["calls"][0]["id"], "content": "ok"})
            status, direct = await chat(client, sim.base_url, messages)
            assert status == 400 and "reasoning_content is missing" in direct["error"]
            status, via = await chat(client, f"{proxy.base_url}/v1", messages)
            assert status == 200, via["error"]
            assert via["calls"], "the session goes on to its next step"
    finally:
        await sim.close()


async def test_profile_none_relays_leaks_untouched(tmp_path: Path) -> None:
    toml = sim_toml(tmp_path / "j.sqlite3", ["leak"], profile="none")
    async with running_proxy(toml) as proxy, httpx.AsyncClient(timeout=30) as client:
        status, got = await chat(client, f"{proxy.base_url}/v1", opening())
        assert status == 200 and got["calls"] == [] and got["finish"] == "stop"
        assert any(m in got["text"] + got["reasoning"] for m in MARKERS)


# -- against the scriptable fake upstream (see support.py) -------------------------


def kimi_config(base_url: str) -> str:
    return openai_config(base_url).replace('repairs = "none"', 'repairs = "kimi"')


async def test_tool_call_ids_are_native_upstream_and_the_clients_own_downstream(
        fake_upstream, proxy_factory, client) -> None:
    proxy = await proxy_factory(kimi_config(fake_upstream.base_url))
    fake_upstream.script(sse(
        text_chunk("Running it."),
        tool_call_chunk(0, id="functions.bash:2", name="bash", arguments='{"command": "ls"}'),
        finish_chunk("tool_calls")))
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [
            {"id": "call_aaa", "type": "function", "function": {"name": "read", "arguments": "{}"}},
            {"id": "call_bbb", "type": "function", "function": {"name": "glob", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_aaa", "content": "1"},
        {"role": "tool", "tool_call_id": "call_bbb", "content": "2"},
    ]
    body = {"model": "test-model", "messages": history, "stream": True,
            "tools": FIXTURE["tools"]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        payloads = await read_sse(r)
    sent = fake_upstream.chat_requests[-1].body["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["functions.read:0", "functions.glob:1"]
    assert [m["tool_call_id"] for m in sent[2:]] == ["functions.read:0", "functions.glob:1"]
    calls = [c for d in deltas(payloads) for c in d.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["id"].startswith("call_")
    turn = (await client.get(f"{proxy.base_url}/switchboard/api/turns")).json()["turns"][-1]
    assert turn["tool_calls"][0] == {"id": calls[0]["id"], "name": "bash",
                                     "arguments": '{"command": "ls"}', "upstream_id": "functions.bash:2"}


async def test_every_repair_is_an_event_on_the_turn_in_journal_and_api(
        fake_upstream, proxy_factory, client, tmp_path: Path) -> None:
    proxy = await proxy_factory(kimi_config(fake_upstream.base_url))
    leak = ('Let me look.<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0'
            '<|tool_call_argument_begin|>{"filePath": "a.py"}<|tool_call_end|><|tool_calls_section_end|>')
    fake_upstream.script(sse(text_chunk(leak[:30]), text_chunk(leak[30:]), finish_chunk("stop")))
    events: list[dict[str, Any]] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with client.stream("GET", f"{proxy.base_url}/switchboard/api/events") as r:
            subscribed.set()  # the stream subscribes to the bus before its headers go out
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["type"] == "TurnFinished":
                        return

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 10)
    body = {"model": "test-model", "messages": [{"role": "user", "content": "go"}], "stream": True,
            "tools": FIXTURE["tools"]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        payloads = await read_sse(r)
    await asyncio.wait_for(listener, 5)
    assert content_of(payloads) == "Let me look."
    repairs = [e for e in events if e["type"] == "RepairApplied"]
    assert [e["kind"] for e in repairs] == ["leaked_tool_call", "finish_reason"]
    assert "<|tool_call_begin|>" in repairs[0]["before"] and repairs[0]["after"].startswith("read(")

    turn = (await client.get(f"{proxy.base_url}/switchboard/api/turns")).json()["turns"][-1]
    assert [r["kind"] for r in turn["repairs"]] == ["leaked_tool_call", "finish_reason"]
    assert turn["finish_reason"] == "tool_calls"
    stored = proxy.journal.turn(turn["id"])
    assert [r["kind"] for r in stored["repairs"]] == ["leaked_tool_call", "finish_reason"]


# -- Kimi K2.6: an empty reply after thinking -------------------------------------


async def test_an_empty_reply_after_thinking_is_retried_on_the_same_stream(
        fake_upstream, proxy_factory, client) -> None:
    proxy = await proxy_factory(kimi_config(fake_upstream.base_url))
    fake_upstream.script(
        sse(reasoning_chunk("The tests pass, "), reasoning_chunk("so I am done."), finish_chunk("stop")),
        sse(reasoning_chunk("Summarise."), text_chunk("All done."), finish_chunk("stop")))
    body = {"model": "test-model", "stream": True, "tools": FIXTURE["tools"],
            "messages": [{"role": "user", "content": "go"}]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        payloads = await read_sse(r)
    assert content_of(payloads) == "All done."
    assert [f for f in finish_reasons(payloads)] == ["stop"], "only the retry's finish reaches the client"
    turn = await settled_turn(client, proxy.base_url)
    assert [a["outcome"] for a in turn["attempts"]] == ["failed", "ok"]
    assert "empty reply" in turn["attempts"][0]["error"]
    assert turn["state"] == "finished" and len(fake_upstream.chat_requests) == 2


async def test_empty_replies_until_the_attempts_run_out_fail_the_turn_clearly(
        fake_upstream, proxy_factory, client) -> None:
    proxy = await proxy_factory(kimi_config(fake_upstream.base_url))
    empty = sse(reasoning_chunk("Hmm."), finish_chunk("stop"))
    fake_upstream.script(empty, empty, empty)
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        payloads = await read_sse(r)
    errors = stream_errors(payloads)
    assert errors and errors[0]["code"] == "empty_reply", payloads
    turn = await settled_turn(client, proxy.base_url)
    assert turn["state"] == "failed" and len(turn["attempts"]) == 3


async def test_a_reply_cut_for_length_is_not_an_empty_reply(
        fake_upstream, proxy_factory, client) -> None:
    proxy = await proxy_factory(kimi_config(fake_upstream.base_url))
    fake_upstream.script(sse(reasoning_chunk("A very long thought"), finish_chunk("length")))
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        payloads = await read_sse(r)
    assert finish_reasons(payloads) == ["length"] and len(fake_upstream.chat_requests) == 1


async def test_the_reasoning_placeholder_is_set_per_upstream(fake_upstream, proxy_factory, client) -> None:
    toml = kimi_config(fake_upstream.base_url).replace(
        'kind = "openai"', 'kind = "openai"\nreasoning_placeholder = "(no reasoning kept)"')
    proxy = await proxy_factory(toml)
    history = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_x", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_x", "content": "1"},
    ]
    body = {"model": "test-model", "messages": history, "stream": True, "tools": FIXTURE["tools"]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        await read_sse(r)
    sent = fake_upstream.chat_requests[-1].body["messages"]
    assert sent[1]["reasoning_content"] == "(no reasoning kept)"
