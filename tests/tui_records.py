"""Fixed turn records and events for the dashboard's snapshot and unit tests.

Everything is pinned: ids, times (around `NOW`, a fixed clock) and text, so
the screenshots are the same on every run (with TZ=UTC).
"""

from __future__ import annotations

from proxy_core.events import AttemptStarted, Chunk, FirstByte, TurnStarted
from proxy_core.record import Attempt, RepairRecord, ToolCallRecord, Turn, Usage
from tui.model import StallRule

#: 2026-01-02 10:00:00 UTC
NOW = 1_767_348_000.0
STALL = StallRule(first_token=5.0, idle=5.0)
SYSTEM = "You are opencode, an interactive CLI coding agent.\nWorking directory: /work/calc"
PROMPT = "Create a small calculator module with tests."


def _call(call_id: str, name: str, args: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def paired_and_orphaned() -> Turn:
    """A turn whose history has a paired call, an orphaned result, a result whose call
    Switchboard restored, an unanswered call it answered; its response recovered a leak."""
    request = {"model": "kimi-k2.5", "stream": True, "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
        {"role": "assistant", "content": "I'll write the module.",
         "tool_calls": [_call("call_write01", "write",
                              '{"filePath": "calc.py", "content": "def add(a, b): ..."}')]},
        {"role": "tool", "tool_call_id": "call_write01", "content": "Wrote file successfully."},
        {"role": "tool", "tool_call_id": "call_ghost99", "content": "stale output from nowhere"},
        {"role": "assistant", "content": "Now the test."},
        {"role": "tool", "tool_call_id": "call_lost02", "content": "Wrote file successfully."},
        {"role": "assistant", "content": None,
         "tool_calls": [_call("call_read03", "read", '{"filePath": "calc.py"}')]},
        {"role": "user", "content": "Also add multiplication."},
    ]}
    turn = Turn(id="turn_pairs000000001", session_id="ses_pairs", model="kimi-k2.5",
                route="kimi-k2.5", stream=True, request=request, started_at=NOW - 40.0,
                first_byte_at=NOW - 39.4, finished_at=NOW - 38.0, state="finished",
                finish_reason="tool_calls", usage=Usage(2210, 64, 2274))
    turn.attempts = [Attempt(1, "sim:kimi-k2.5", "initial", NOW - 40.0, NOW - 39.4, NOW - 38.0, "ok",
                             prepared_in=0.00142)]
    turn.text_parts = ["Running the tests next."]
    turn.tool_calls = [ToolCallRecord("call_bash04", "bash", '{"command": "python3 test_calc.py"}',
                                      "functions.bash:3")]
    turn.repairs = [
        RepairRecord("restored_tool_call", "tool result call_lost02 with no call",
                     'write({"filePath": "test_calc.py"})', NOW - 40.0, "call_lost02"),
        RepairRecord("orphan_tool_result",
                     '{"role": "tool", "tool_call_id": "call_ghost99", "content": "stale…"}',
                     "tool result turned into context text", NOW - 40.0, "call_ghost99"),
        RepairRecord("missing_tool_result", "call call_read03 has no result",
                     "placeholder result added", NOW - 40.0, "call_read03"),
        RepairRecord("leaked_tool_call",
                     '<|tool_calls_section_begin|><|tool_call_begin|>functions.bash:3'
                     '<|tool_call_argument_begin|>{"command": "python3 test_calc.py"}'
                     '<|tool_call_end|><|tool_calls_section_end|>',
                     'bash({"command": "python3 test_calc.py"}) from text', NOW - 38.5,
                     "call_bash04"),
    ]
    return turn


def _finished(n: int, session: str, target: str, *, at: float, reason: str = "tool_calls",
              attempts: list[Attempt] | None = None, repairs: int = 0) -> Turn:
    turn = Turn(id=f"turn_fixed{n:09d}", session_id=session, model="kimi-k2.5",
                route="kimi-k2.5", stream=True,
                request={"model": "kimi-k2.5", "messages": [
                    {"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]},
                started_at=at, first_byte_at=at + 0.4, finished_at=at + 1.6, state="finished",
                finish_reason=reason, usage=Usage(1800 + n * 120, 40 + n))
    turn.attempts = attempts or [Attempt(1, target, "initial", at, at + 0.4, at + 1.6, "ok",
                                         prepared_in=0.0006 + n * 0.0001)]
    turn.text_parts = ["Done." if reason == "stop" else "Next step."]
    if reason == "tool_calls":
        turn.tool_calls = [ToolCallRecord(f"call_fixed{n:04d}", "bash", '{"command": "ls"}')]
    turn.repairs = [RepairRecord("reasoning_content", "assistant tool-call message without "
                                 "reasoning_content", "a single space", at)] * repairs
    return turn


def history() -> list[Turn]:
    """Finished, retried, rerouted and failed turns in two sessions."""
    retried = [Attempt(1, "sim:kimi-k2.5", "initial", NOW - 30.0, None, NOW - 27.0, "failed",
                       "no first token from sim:kimi-k2.5 within 3s"),
               Attempt(2, "sim:kimi-k2.5", "retry", NOW - 27.0, NOW - 26.6, NOW - 25.5, "ok")]
    rerouted = [Attempt(1, "mantle:kimi-k2.5", "initial", NOW - 20.0, None, NOW - 20.0, "failed",
                        "mantle: cannot connect"),
                Attempt(2, "mantle:kimi-k2.5", "retry", NOW - 20.0, None, NOW - 19.9, "failed",
                        "mantle: cannot connect"),
                Attempt(3, "sim:kimi-k2.5", "reroute", NOW - 19.9, NOW - 19.5, NOW - 18.4, "ok")]
    failed = Turn(id="turn_fixed000000009", session_id="ses_beta", model="kimi-k2.5",
                  route="kimi-k2.5", stream=True, request={}, started_at=NOW - 15.0,
                  finished_at=NOW - 14.0, state="failed", status=400,
                  error="reasoning_content is missing in assistant tool call message at index 4")
    failed.attempts = [Attempt(1, "sim:kimi-k2.5", "initial", NOW - 15.0, None, NOW - 14.0,
                               "failed", "HTTP 400")]
    return [
        paired_and_orphaned(),
        _finished(2, "ses_alpha", "sim:kimi-k2.5", at=NOW - 35.0),
        _finished(3, "ses_alpha", "sim:kimi-k2.5", at=NOW - 30.0, attempts=retried, repairs=1),
        _finished(4, "ses_beta", "sim:kimi-k2.5", at=NOW - 20.0, attempts=rerouted, repairs=2),
        failed,
        _finished(5, "ses_alpha", "sim:kimi-k2.5", at=NOW - 12.0, reason="stop"),
    ]


def live_turns() -> tuple[list[Turn], list[object]]:
    """Two live turns and the events that made them: one streaming now, one stalled."""
    streaming = Turn(id="turn_live00000000001", session_id="ses_alpha", model="kimi-k2.5",
                     route="kimi-k2.5", stream=True, request={}, started_at=NOW - 6.0)
    stalled = Turn(id="turn_stall0000000001", session_id="ses_beta", model="kimi-k2.5",
                   route="kimi-k2.5", stream=True, request={}, started_at=NOW - 22.0)
    events: list[object] = []
    for turn in (stalled, streaming):
        events.append(TurnStarted(turn_id=turn.id, at=turn.started_at, session_id=turn.session_id,
                                  model=turn.model, route=turn.route, stream=True))
        events.append(AttemptStarted(turn_id=turn.id, at=turn.started_at, attempt=1,
                                     target="sim:kimi-k2.5"))
        turn.attempts = [Attempt(1, "sim:kimi-k2.5", "initial", turn.started_at)]
    # The stalled one spoke for three seconds, then went silent 16 s ago.
    stalled.first_byte_at = NOW - 21.0
    stalled.attempts[0].first_byte_at = NOW - 21.0
    events.append(FirstByte(turn_id=stalled.id, at=NOW - 21.0, attempt=1, latency=1.0))
    for i in range(30):
        at = NOW - 21.0 + i * 0.17
        events.append(Chunk(turn_id=stalled.id, at=at, kind="text", text="word "))
        stalled.append_text("word ")
    # The streaming one has been talking, faster and faster, until now.
    streaming.first_byte_at = NOW - 5.5
    streaming.attempts[0].first_byte_at = NOW - 5.5
    events.append(FirstByte(turn_id=streaming.id, at=NOW - 5.5, attempt=1, latency=0.5))
    for second in range(6):
        for i in range(4 + second * 6):
            at = NOW - 5.5 + second + i / (4 + second * 6)
            if at > NOW - 0.2:
                break
            events.append(Chunk(turn_id=streaming.id, at=at, kind="text", text="tok "))
            streaming.append_text("tok ")
    return [stalled, streaming], events
