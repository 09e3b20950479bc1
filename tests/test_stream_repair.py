"""Unit tests of the stream repairer (leaks in text and reasoning, ids, finish reason)."""

from __future__ import annotations

from proxy_core.repairs.history import Note
from proxy_core.repairs.profiles import KIMI, STRUCTURAL
from proxy_core.repairs.stream_repair import StreamRepairer
from proxy_core.stream import FinishPart, ReasoningPart, StreamPart, TextPart, ToolCallPart, UsagePart


def run(parts: list[StreamPart], plan=KIMI) -> tuple[list[StreamPart], list[Note]]:
    notes: list[Note] = []
    repairer = StreamRepairer(plan, {}, notes.append)
    out: list[StreamPart] = []
    for part in parts:
        out += repairer.feed(part)
    out += repairer.flush()
    return out, notes


def text(parts: list[StreamPart], kind=TextPart) -> str:
    return "".join(p.text for p in parts if isinstance(p, kind))


def test_stray_marker_dropped_and_reported_finish_untouched() -> None:
    out, notes = run([TextPart("hello <|tool_calls_section_end|>"), TextPart(" world"),
                      FinishPart("stop")])
    assert text(out) == "hello  world"
    assert [n.kind for n in notes] == ["stray_marker"]
    assert out[-1] == FinishPart("stop")


def test_leak_in_reasoning_becomes_a_call_and_reasoning_stays() -> None:
    leak = 'I should read it. <|tool_call_begin|>functions.read:4<|tool_call_argument_begin|>{"filePath": "x"}<|tool_call_end|>'
    parts = [ReasoningPart(leak[i:i + 7]) for i in range(0, len(leak), 7)]
    out, notes = run([*parts, TextPart("Reading."), FinishPart("stop"), UsagePart(1, 2, 3)])
    calls = [p for p in out if isinstance(p, ToolCallPart)]
    assert len(calls) == 1 and calls[0].name == "read" and calls[0].arguments == '{"filePath": "x"}'
    assert calls[0].upstream_id == "functions.read:4" and calls[0].id.startswith("call_")
    assert text(out, ReasoningPart) == "I should read it. "
    assert text(out) == "Reading."
    assert [n.kind for n in notes] == ["leaked_tool_call", "finish_reason"]
    assert out[-2:] == [FinishPart("tool_calls"), UsagePart(1, 2, 3)]


def test_native_ids_mapped_only_when_the_plan_says_so() -> None:
    call = ToolCallPart("functions.bash:0", "bash", "{}")
    out, _ = run([call, FinishPart("tool_calls")], KIMI)
    assert out[0].id.startswith("call_") and out[0].upstream_id == "functions.bash:0"
    out, _ = run([call, FinishPart("tool_calls")], STRUCTURAL)
    assert out[0] == call


def test_structural_plan_leaves_text_alone() -> None:
    leak = '<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{}<|tool_call_end|>'
    out, notes = run([TextPart(leak), FinishPart("stop")], STRUCTURAL)
    assert text(out) == leak and notes == [] and out[-1] == FinishPart("stop")
