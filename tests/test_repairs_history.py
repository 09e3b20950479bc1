"""Unit tests of the history repairs (reference F3, F4, F5, malformed arguments, ids)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz_support import conversations
from proxy_core.errors import ClientRequestError
from proxy_core.openai_wire import parse_chat_request
from proxy_core.repairs.history import PLACEHOLDER_RESULT, repair_history
from proxy_core.repairs.memory import RememberedCall, ToolCallMemory
from proxy_core.repairs.profiles import KIMI, NONE, STRUCTURAL, RepairPlan, plan_for
from proxy_core.simulator.config import SimulatorConfig
from proxy_core.simulator.faults import validate


def call(call_id: str, name: str = "bash", args: str = '{"command": "ls"}') -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def kinds(notes) -> list[str]:
    return [n.kind for n in notes]


def test_nothing_to_repair_is_left_alone() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok", "reasoning_content": "think",
         "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "out"},
    ]
    out, notes = repair_history(messages, STRUCTURAL)
    assert out == messages and notes == []


def test_stripped_tool_calls_come_back_from_memory() -> None:
    """Seed 003: the assistant message lost its tool_calls; the result kept its id."""
    memory = ToolCallMemory()
    memory.remember(RememberedCall("c1", "bash", '{"command": "ls"}', reasoning="look around"))
    messages = [
        {"role": "user", "content": "list files"},
        {"role": "assistant", "content": "I'll look."},
        {"role": "tool", "tool_call_id": "c1", "content": "a.py"},
    ]
    out, notes = repair_history(messages, KIMI, memory)
    assert kinds(notes) == ["restored_tool_call", "reasoning_content"]
    assistant = out[1]
    assert assistant["content"] == "I'll look."
    assert assistant["tool_calls"][0]["function"] == {"name": "bash", "arguments": '{"command": "ls"}'}
    # F3 uses the remembered reasoning, and ids are in Kimi's native form.
    assert assistant["reasoning_content"] == "look around"
    assert assistant["tool_calls"][0]["id"] == "functions.bash:0"
    assert out[2]["tool_call_id"] == "functions.bash:0"
    assert messages[1] == {"role": "assistant", "content": "I'll look."}, "client's list untouched"


def test_result_with_no_assistant_before_it_gets_a_synthetic_call() -> None:
    memory = ToolCallMemory()
    memory.remember(RememberedCall("c9", "read", '{"filePath": "x"}'))
    messages = [{"role": "user", "content": "go"}, {"role": "tool", "tool_call_id": "c9", "content": "x"}]
    out, _ = repair_history(messages, STRUCTURAL, memory)
    assert [m["role"] for m in out] == ["user", "assistant", "tool"]
    assert out[1]["tool_calls"][0]["id"] == "c9"


def test_unknown_orphan_becomes_context_text() -> None:
    messages = [{"role": "user", "content": "go"},
                {"role": "assistant", "content": "done"},
                {"role": "tool", "tool_call_id": "nobody", "content": "RESULT"}]
    out, notes = repair_history(messages, STRUCTURAL, ToolCallMemory())
    assert kinds(notes) == ["orphan_tool_result"]
    assert out[2]["role"] == "user" and "RESULT" in out[2]["content"] and "nobody" in out[2]["content"]
    assert all(m["role"] != "tool" for m in out)


def test_unanswered_call_gets_placeholder_before_next_user_message() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None, "tool_calls": [call("c1"), call("c2")]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "user", "content": "b"},
    ]
    out, notes = repair_history(messages, STRUCTURAL)
    assert kinds(notes) == ["missing_tool_result"]
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "tool", "user"]
    assert out[3] == {"role": "tool", "tool_call_id": "c2", "content": PLACEHOLDER_RESULT}


def test_malformed_arguments_are_mended() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("c1", args='{"command": "ls'), call("c2", args='{"a": 1}{"b": 2}'),
            call("c3", args='{"fine": true}')]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
        {"role": "tool", "tool_call_id": "c3", "content": "3"},
    ]
    out, notes = repair_history(messages, STRUCTURAL)
    assert kinds(notes) == ["tool_arguments", "tool_arguments"]
    for c in out[1]["tool_calls"]:
        assert isinstance(json.loads(c["function"]["arguments"]), dict)
    assert json.loads(out[1]["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}
    assert out[1]["tool_calls"][2]["function"]["arguments"] == '{"fine": true}'


def test_reasoning_content_filled_with_space_when_unknown() -> None:
    """F3: Moonshot rejects a missing or empty reasoning_content; one space passes."""
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "x", "reasoning_content": "", "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "assistant", "content": "plain answer"},
    ]
    out, notes = repair_history(messages, KIMI, ToolCallMemory())
    assert kinds(notes) == ["reasoning_content"]
    assert out[1]["reasoning_content"] == " "
    assert "reasoning_content" not in out[3], "only tool-call messages need it"


def test_empty_assistant_content_removed_or_nulled() -> None:
    """F5: Bedrock rejects empty content and empty text blocks."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": ""}]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": [{"type": "text", "text": ""}], "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    out, notes = repair_history(messages, STRUCTURAL)
    assert [m["role"] for m in out] == ["user", "user", "assistant", "tool"]
    assert out[0]["content"] == [{"type": "text", "text": "hi"}]
    assert out[2]["content"] is None and out[2]["tool_calls"]
    assert set(kinds(notes)) == {"empty_content"}


def test_native_ids_count_every_call_in_the_dialog() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None, "tool_calls": [call("x1", "read"), call("x2", "github.create_issue")]},
        {"role": "tool", "tool_call_id": "x1", "content": "1"},
        {"role": "tool", "tool_call_id": "x2", "content": "2"},
        {"role": "assistant", "content": None, "tool_calls": [call("x3", "mcp-server_tool")]},
        {"role": "tool", "tool_call_id": "x3", "content": "3"},
    ]
    out, notes = repair_history(messages, KIMI, ToolCallMemory())
    ids = [c["id"] for m in out if m["role"] == "assistant" for c in m["tool_calls"]]
    assert ids == ["functions.read:0", "functions.github.create_issue:1", "functions.mcp-server_tool:2"]
    assert [m["tool_call_id"] for m in out if m["role"] == "tool"] == ids
    assert "native_ids" not in kinds(notes), "translation, not a repair"


def test_profiles() -> None:
    assert plan_for("none", "kimi-k2.5", "openai") == NONE
    assert plan_for("kimi", "gpt-4o", "openai") == KIMI
    assert plan_for("auto", "moonshotai.kimi-k2.5", "openai") == KIMI
    assert plan_for("auto", "gpt-4o", "openai") == STRUCTURAL
    assert plan_for("auto", "anything", "simulator") == KIMI
    out, notes = repair_history([{"role": "assistant", "content": ""}], NONE)
    assert out == [{"role": "assistant", "content": ""}] and notes == []


def _session(turns: int) -> list[dict]:
    """A history that needs every kind of repair on every turn."""
    messages: list[dict] = [{"role": "system", "content": "agent"},
                            {"role": "user", "content": [{"type": "text", "text": "go"},
                                                         {"type": "text", "text": " "}]}]
    for i in range(turns):
        messages += [{"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": "read", "arguments": "{'path': 'a'"}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": f"file {i}"}]
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_last", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]})
    return messages


def test_the_same_message_repaired_again_is_the_same_object() -> None:
    """An agent resends its history: each turn's repairs give back the objects of the turn
    before for the messages both sent, so work keyed by identity downstream is done once."""
    history = _session(4)
    first, notes = repair_history(history, KIMI)
    assert {n.kind for n in notes} >= {"tool_arguments", "reasoning_content", "empty_content",
                                       "missing_tool_result"}
    longer = history[:-1] + _session(6)[len(history) - 1:]  # the same objects, then more
    second, _ = repair_history(longer, KIMI)
    assert second[:len(first) - 2] == first[:len(first) - 2]
    assert all(a is b for a, b in zip(first[:len(first) - 2], second, strict=False))
    assert second[-1]["tool_call_id"] == "functions.bash:6"  # the new tail, repaired anew
    assert all(m is not o for m, o in zip(first, history, strict=False) if m != o)


def test_a_message_with_native_ids_already_is_passed_through_as_is() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "reasoning_content": "r", "tool_calls": [
                    {"id": "functions.read:0", "type": "function",
                     "function": {"name": "read", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.read:0", "content": "x"}]
    out, notes = repair_history(messages, KIMI)
    assert notes == [] and all(a is b for a, b in zip(out, messages, strict=True))


def test_a_call_unknown_to_memory_and_journal_is_looked_up_once_until_delivered() -> None:
    class Store:
        def __init__(self) -> None:
            self.loads = 0
            self.saved: dict[str, RememberedCall] = {}

        def save_call(self, call: RememberedCall) -> None:
            self.saved[call.id] = call

        def load_call(self, call_id: str) -> RememberedCall | None:
            self.loads += 1
            return self.saved.get(call_id)

    store = Store()
    memory = ToolCallMemory(store)
    assert memory.recall("call_x") is None and memory.recall("call_x") is None
    assert store.loads == 1
    call = RememberedCall("call_x", "read", "{}", "thought")
    memory.remember(call)
    assert memory.recall("call_x") is call


# -- any history, generated --------------------------------------------------------------

def openai_pairing_errors(messages: list[dict[str, Any]]) -> list[str]:
    """What OpenAI's API (and a strict host) refuses about tool messages: each must answer
    a call of the assistant message its group follows, and each of those calls must get
    exactly one answer before the next message that is not a tool result."""
    errors: list[str] = []
    open_calls: list[str] = []
    for index, message in enumerate(messages):
        if message.get("role") == "tool":
            if message.get("tool_call_id") in open_calls:
                open_calls.remove(message["tool_call_id"])
            else:
                errors.append(f"messages[{index}] answers no call of the message it follows")
            continue
        if open_calls:
            errors.append(f"calls {open_calls} unanswered before messages[{index}]")
        calls = message.get("tool_calls") if message.get("role") == "assistant" else None
        open_calls = [c["id"] for c in calls or ()]
    if open_calls:
        errors.append(f"calls {open_calls} unanswered at the end")
    return errors


@settings(max_examples=400, deadline=None)
@given(messages=conversations(), plan=st.sampled_from([KIMI, STRUCTURAL]))
def test_any_history_the_proxy_accepts_is_repaired_into_one_a_strict_host_accepts(
        messages: list[dict[str, Any]], plan: RepairPlan) -> None:
    try:
        request = parse_chat_request({"model": "kimi-k2.5", "messages": messages})
    except ClientRequestError:
        return  # refused at the front door, by name
    sent, _ = repair_history(request.messages, plan)
    assert openai_pairing_errors(sent) == [], sent
    # The simulator's OpenAI face, with every rule it has (Moonshot's reasoning rule
    # only under `kimi`, which fills reasoning_content).
    rules = ("strict", "orphan", "empty") if plan is KIMI else ("orphan", "empty")
    assert validate(SimulatorConfig(faults=rules), sent) is None
