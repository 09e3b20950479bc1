"""Repairs name the tool call they concern (`call_id`, the client's id), so the dashboard
pairs calls and results from fields, never from the wording of a repair's excerpts."""

from __future__ import annotations

from typing import Any

from proxy_core.events import Event, RepairApplied
from proxy_core.repairs.history import repair_history
from proxy_core.repairs.memory import RememberedCall, ToolCallMemory
from proxy_core.repairs.profiles import KIMI, STRUCTURAL
from support import deltas, finish_chunk, openai_config, read_sse, sse, text_chunk


def call(call_id: str, name: str = "bash") -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": '{"command": "ls"}'}}


def test_history_repairs_name_the_call_they_concern() -> None:
    memory = ToolCallMemory()
    memory.remember(RememberedCall("call_lost", "bash", '{"command": "ls"}'))
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "Looking."},
        {"role": "tool", "tool_call_id": "call_lost", "content": "a.py"},  # call stripped
        {"role": "tool", "tool_call_id": "call_ghost", "content": "stale"},  # answers nothing
        {"role": "assistant", "content": None, "tool_calls": [call("call_open")]},  # unanswered
        {"role": "user", "content": "next"},
    ]
    _, notes = repair_history(messages, STRUCTURAL, memory)
    assert {(n.kind, n.call_id) for n in notes} == {
        ("restored_tool_call", "call_lost"), ("orphan_tool_result", "call_ghost"),
        ("missing_tool_result", "call_open")}


def test_the_clients_id_even_when_the_upstream_gets_native_ids() -> None:
    memory = ToolCallMemory()
    memory.remember(RememberedCall("call_c1", "bash", '{"command": "ls"}'))
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "ok"},
                {"role": "tool", "tool_call_id": "call_c1", "content": "a.py"}]
    out, notes = repair_history(messages, KIMI, memory)
    assert out[2]["tool_call_id"] == "functions.bash:0"
    assert [n.call_id for n in notes if n.kind == "restored_tool_call"] == ["call_c1"]


async def test_a_leaked_call_repair_names_the_call_the_client_received(
        fake_upstream, proxy_factory, client) -> None:
    proxy = await proxy_factory(openai_config(fake_upstream.base_url).replace(
        'repairs = "none"', 'repairs = "kimi"'))
    events: list[Event] = []
    proxy.bus.subscribe(events.append)
    leak = ('Let me look.<|tool_calls_section_begin|><|tool_call_begin|>functions.read:0'
            '<|tool_call_argument_begin|>{"filePath": "a.py"}<|tool_call_end|>'
            '<|tool_calls_section_end|>')
    fake_upstream.script(sse(text_chunk(leak), finish_chunk("stop")))
    tools = [{"type": "function", "function": {
        "name": "read", "parameters": {"type": "object",
                                       "properties": {"filePath": {"type": "string"}}}}}]
    body = {"model": "test-model", "stream": True, "tools": tools,
            "messages": [{"role": "user", "content": "read a.py"}]}
    async with client.stream("POST", f"{proxy.base_url}/v1/chat/completions", json=body) as r:
        payloads = await read_sse(r)
    (relayed,) = [c for d in deltas(payloads) for c in d.get("tool_calls", [])]
    (event,) = [e for e in events if isinstance(e, RepairApplied) and e.kind == "leaked_tool_call"]
    assert event.call_id == relayed["id"]
    turn = proxy.store.recent(1)[0]
    (record,) = [r for r in turn.repairs if r.kind == "leaked_tool_call"]
    assert record.call_id == relayed["id"] == turn.tool_calls[0].id
    stored = proxy.journal.turn(turn.id)
    assert [r["call_id"] for r in stored["repairs"] if r["kind"] == "leaked_tool_call"] == [
        relayed["id"]]
