"""Unit tests of the stream repairer (leaks in text and reasoning, ids, finish reason)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.repairs.history import Note
from proxy_core.repairs.profiles import KIMI, STRUCTURAL
from proxy_core.repairs.stream_repair import StreamRepairer
from proxy_core.repairs.tool_names import ToolCatalog
from proxy_core.stream import FinishPart, ReasoningPart, StreamPart, TextPart, ToolCallPart, UsagePart


def tool(name: str, *required: str, optional: tuple[str, ...] = ()) -> dict:
    props = {k: {"type": "string"} for k in (*required, *optional)}
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": props, "required": list(required)}}}


OFFERED = ToolCatalog.from_openai([tool("read", "filePath", optional=("offset", "limit")),
                                   tool("bash", "command", optional=("description",)),
                                   tool("write", "filePath", "content")])


def run(parts: list[StreamPart], plan=KIMI, tools: ToolCatalog = OFFERED) -> tuple[list[StreamPart], list[Note]]:
    notes: list[Note] = []
    repairer = StreamRepairer(plan, tools, notes.append)
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


def calls(parts: list[StreamPart]) -> list[tuple[str, str]]:
    return [(p.name, p.arguments) for p in parts if isinstance(p, ToolCallPart)]


def test_a_call_opened_in_reasoning_and_finished_in_content_is_one_call() -> None:
    out, notes = run([ReasoningPart("Let me write it. <|tool_calls_section_begin|><|tool_call_begin|>functions.wri"),
                      TextPart('te:7<|tool_call_argument_begin|>{"filePath": "a.py", "content": "x"}'),
                      TextPart("<|tool_call_end|><|tool_calls_section_end|>"), FinishPart("stop")])
    assert calls(out) == [("write", '{"filePath": "a.py", "content": "x"}')]
    assert text(out, ReasoningPart) == "Let me write it. " and text(out) == ""
    leaked = next(n for n in notes if n.kind == "leaked_tool_call")
    assert leaked.after.endswith("from reasoning and text")
    assert out[-1] == FinishPart("tool_calls")


def test_names_resolved_from_mangled_ids_and_from_arguments() -> None:
    leak = ("<|tool_call_begin|>functionsbash5<|tool_call_argument_begin|>{\"command\": \"ls\"}<|tool_call_end|>"
            "<|tool_call_begin|>call00003<|tool_call_argument_begin|>{\"filePath\": \"a\"}<|tool_call_end|>")
    out, notes = run([TextPart(leak), FinishPart("stop")])
    assert [name for name, _ in calls(out)] == ["bash", "read"]
    assert "tool from the arguments" in notes[1].after


def test_a_call_to_a_tool_nobody_offered_goes_on_as_text() -> None:
    leak = '<|tool_call_begin|>functions.deploy:0<|tool_call_argument_begin|>{"env": "prod"}<|tool_call_end|>'
    out, notes = run([TextPart("Deploying. " + leak), FinishPart("stop")])
    assert calls(out) == [] and text(out) == 'Deploying. functions.deploy:0{"env": "prod"}'
    assert [n.kind for n in notes] == ["call_as_text"]
    assert "names no tool the request offered" in notes[0].after
    assert out[-1] == FinishPart("stop")


def test_native_calls_resolved_or_sent_as_text_and_the_finish_reason_follows() -> None:
    out, notes = run([ToolCallPart("functions.Read:3", "functions.Read:3", '{"filePath": "a"}'),
                      FinishPart("tool_calls")])
    assert calls(out) == [("read", '{"filePath": "a"}')] and out[-1] == FinishPart("tool_calls")
    assert notes[0].kind == "tool_name"
    out, notes = run([ToolCallPart("call_1", "deploy", '{"env": "prod"}'), FinishPart("tool_calls")])
    assert calls(out) == [] and text(out) == 'deploy{"env": "prod"}'
    assert [n.kind for n in notes] == ["call_as_text", "finish_reason"] and out[-1] == FinishPart("stop")
    out, notes = run([ToolCallPart("call_2", "read", "not json at all"), FinishPart("tool_calls")])
    assert calls(out) == [] and "not a JSON object" in notes[0].after


def test_leaked_arguments_that_are_no_object_go_on_as_text() -> None:
    leak = "<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>garbage<|tool_call_end|>"
    out, notes = run([TextPart(leak), FinishPart("stop")])
    assert calls(out) == [] and text(out) == "functions.read:0garbage"
    assert notes[0].kind == "call_as_text"


def test_a_tools_list_gets_its_catalog_made_once() -> None:
    """An agent's turns share one parsed tools list: its catalog is made once, and a list
    that is another object (even an equal one) gets a catalog of its own."""
    tools = [{"type": "function", "function": {"name": "read", "parameters": {
        "type": "object", "properties": {"path": {}}, "required": ["path"]}}}]
    first = ToolCatalog.for_tools(tools)
    assert ToolCatalog.for_tools(tools) is first and "read" in first
    other = ToolCatalog.for_tools([dict(tools[0])])
    assert other is not first and "read" in other
    for _ in range(40):  # bounded: old lists are let go
        ToolCatalog.for_tools([dict(tools[0])])
    from proxy_core.repairs import tool_names
    assert len(tool_names._CATALOGS) <= 16


@given(st.lists(st.tuples(st.booleans(), st.text(st.sampled_from(list("ab. \n")), max_size=40)),
                max_size=12))
@settings(max_examples=300)
def test_property_prose_keeps_its_channels_however_the_words_are_held(
        deltas: list[tuple[bool, str]]) -> None:
    """The leak parser shows a delta's words but its last at once and holds the last: the
    pieces it gives back cut across deltas, and each still goes to the channel (reasoning
    or content) its characters came from."""
    parts: list[StreamPart] = [ReasoningPart(t) if thinking else TextPart(t)
                               for thinking, t in deltas]
    out, notes = run([*parts, FinishPart("stop")])
    assert text(out, ReasoningPart) == "".join(t for thinking, t in deltas if thinking)
    assert text(out) == "".join(t for thinking, t in deltas if not thinking)
    assert not notes and out[-1] == FinishPart("stop")
