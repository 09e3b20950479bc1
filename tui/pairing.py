"""The conversation of a turn, with every tool call paired to its result.

Reads the turn record only: the client's request (its history), the
response (text, reasoning, tool calls) and the repairs the core applied.
Each tool call and tool result gets a state:

- `paired`   — a call and its result, both present;
- `pending`  — a call with no result yet (or none in the history);
- `orphaned` — a result that answers no call;
- `repaired` — Switchboard fixed it: a call restored from memory for a
  result that lost it, a placeholder result for an unanswered call, or a
  call recovered from leaked tokens in the response.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from proxy_core.contents import readable
from proxy_core.record import Turn

PairState = Literal["paired", "pending", "orphaned", "repaired"]


@dataclass(slots=True)
class CallView:
    id: str
    name: str
    arguments: str
    state: PairState
    result: str | None = None
    note: str = ""


@dataclass(slots=True)
class MessageView:
    role: str
    text: str = ""
    reasoning: str = ""
    calls: list[CallView] = field(default_factory=list)
    #: For a tool result shown on its own (orphaned or restored): its state.
    state: PairState | None = None
    tool_call_id: str = ""
    note: str = ""
    #: The message is this turn's response, not part of the request history.
    response: bool = False


def content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
        return "".join(parts)
    return readable(content, indent=None)


def _calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _call_parts(call: dict[str, Any]) -> tuple[str, str, str]:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = readable(arguments, indent=None)
    return str(call.get("id", "")), str(function.get("name", "?")), arguments


def _results_by_id(messages: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "tool":
            out[str(message.get("tool_call_id", ""))] = content_text(message.get("content"))
    return out


def conversation(turn: Turn, next_request: dict[str, Any] | None = None) -> list[MessageView]:
    """The turn's history and response as messages with paired tool calls.

    `next_request` is the session's next turn's request, if known: it holds
    the results of this turn's own tool calls.
    """
    messages = [m for m in (turn.request or {}).get("messages", []) if isinstance(m, dict)]
    # The core names the call each repair concerns; the excerpts are only shown.
    restored: dict[str, str] = {}
    missing: set[str] = set()
    orphan_repaired: set[str] = set()
    leaked: set[str] = set()
    for repair in turn.repairs:
        if repair.call_id is None:
            continue
        if repair.kind == "restored_tool_call":
            restored[repair.call_id] = repair.after
        elif repair.kind == "missing_tool_result":
            missing.add(repair.call_id)
        elif repair.kind == "orphan_tool_result":
            orphan_repaired.add(repair.call_id)
        elif repair.kind == "leaked_tool_call":
            leaked.add(repair.call_id)

    call_ids = {_call_parts(c)[0] for m in messages if m.get("role") == "assistant"
                for c in _calls_of(m)}
    results = _results_by_id(messages)
    out: list[MessageView] = []
    for message in messages:
        role = str(message.get("role", "?"))
        if role == "tool":
            call_id = str(message.get("tool_call_id", ""))
            if call_id in call_ids:
                continue  # shown under its call
            view = MessageView("tool", content_text(message.get("content")), tool_call_id=call_id)
            if call_id in restored:
                view.state = "repaired"
                view.note = f"call restored from memory: {restored[call_id]}"
            else:
                view.state = "orphaned"
                view.note = ("answers no call; sent upstream as context text"
                             if call_id in orphan_repaired else "answers no call")
            out.append(view)
            continue
        view = MessageView(role, content_text(message.get("content")),
                           content_text(message.get("reasoning_content")))
        for call in _calls_of(message):
            call_id, name, arguments = _call_parts(call)
            if call_id in results:
                view.calls.append(CallView(call_id, name, arguments, "paired", results[call_id]))
            elif call_id in missing:
                view.calls.append(CallView(call_id, name, arguments, "repaired", None,
                                           "no result: placeholder result added"))
            else:
                view.calls.append(CallView(call_id, name, arguments, "pending"))
        out.append(view)

    response = MessageView("assistant", turn.text, turn.reasoning, response=True)
    if turn.unrecorded_chars:
        response.note = (f"{turn.unrecorded_chars:,} more characters reached the client but "
                         "were not recorded (past [proxy] record_text_kb)")
    later = _results_by_id((next_request or {}).get("messages", []))
    for call in turn.tool_calls:
        state: PairState = "pending"
        note = ""
        if call.id in leaked:
            state, note = "repaired", "recovered from leaked tool-call tokens"
        result = later.get(call.id)
        if result is not None and state == "pending":
            state = "paired"
        response.calls.append(CallView(call.id, call.name, call.arguments, state, result, note))
    if response.text or response.reasoning or response.calls or turn.state != "live":
        out.append(response)
    return out


def counts(views: list[MessageView]) -> dict[str, int]:
    """How many calls/results are in each state."""
    tally = {"paired": 0, "pending": 0, "orphaned": 0, "repaired": 0}
    for view in views:
        if view.state is not None:
            tally[view.state] += 1
        for call in view.calls:
            tally[call.state] += 1
    return tally
