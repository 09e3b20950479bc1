"""Converse translation, both ways: OpenAI bodies → Converse kwargs, Converse events → parts.

Pure functions, no I/O: every event type and stop reason of reference §4,
request translation (system, tools, tool_choice, tool results, images,
inference parameters, same-role merging, ids and names), and the repair
engine running on a decoded Converse stream.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fuzz_support import conversations
from proxy_core.errors import (
    ClientRequestError, RunawayAnswer, UpstreamProtocolError, UpstreamStreamError,
)
from proxy_core.openai_wire import parse_chat_request
from proxy_core.repairs.history import Note, repair_history
from proxy_core.repairs.profiles import KIMI, STRUCTURAL, RepairPlan
from proxy_core.simulator import converse_face
from proxy_core.repairs.stream_repair import StreamRepairer
from proxy_core.repairs.tool_names import ToolCatalog
from proxy_core.stream import FinishPart, ReasoningPart, TextPart, ToolCallPart, UsagePart
from proxy_core.upstreams.converse import (
    CONTINUED, NO_OUTPUT, ConverseStreamDecoder, ConverseTranslationError,
    converse_response_parts, status_error, to_converse,
)

MODEL = "moonshotai.kimi-k2.5"
PNG = b"\x89PNG\r\n\x1a\nfake-image-bytes"

TOOLS = [
    {"type": "function", "function": {
        "name": "read", "description": "Read a file",
        "parameters": {"type": "object", "properties": {"filePath": {"type": "string"}},
                       "required": ["filePath"]}}},
    {"type": "function", "function": {"name": "bash", "description": "",
                                      "parameters": {}}},
]


def convert(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return to_converse({"model": "kimi-k2.5", "messages": messages, **extra}, MODEL).kwargs


def all_blocks(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = list(kwargs.get("system", []))
    for message in kwargs["messages"]:
        for block in message["content"]:
            blocks.append(block)
            for inner in block.get("toolResult", {}).get("content", []):
                blocks.append(inner)
    return blocks


def assert_converse_valid(kwargs: dict[str, Any]) -> None:
    """What Bedrock insists on: alternation from the user, no empty content or blank text."""
    roles = [m["role"] for m in kwargs["messages"]]
    assert roles[0] == "user"
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles
    assert all(m["content"] for m in kwargs["messages"])
    for block in all_blocks(kwargs):
        if "text" in block:
            assert isinstance(block["text"], str) and block["text"].strip(), block


# -- request: messages ------------------------------------------------------------------

def test_system_and_developer_messages_become_the_system_list_in_order() -> None:
    kwargs = convert([
        {"role": "system", "content": "You are opencode."},
        {"role": "system", "content": [{"type": "text", "text": "Working directory: /w"},
                                       {"type": "text", "text": "  "}]},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": ""},
    ])
    assert kwargs["modelId"] == MODEL
    assert kwargs["system"] == [{"text": "You are opencode."}, {"text": "Working directory: /w"},
                                {"text": "Be brief."}]
    assert kwargs["messages"] == [{"role": "user", "content": [{"text": "hi"}]}]
    assert "toolConfig" not in kwargs and "inferenceConfig" not in kwargs


def test_a_tool_round_trip_becomes_tool_use_and_tool_result_blocks() -> None:
    kwargs = convert([
        {"role": "user", "content": "read calc.py"},
        {"role": "assistant", "content": "Reading it.", "reasoning_content": "need the file",
         "tool_calls": [{"id": "functions.read:0", "type": "function",
                         "function": {"name": "read", "arguments": '{"filePath": "calc.py"}'}}]},
        {"role": "tool", "tool_call_id": "functions.read:0", "content": "def add(a, b): ..."},
    ], tools=TOOLS)
    assert kwargs["messages"] == [
        {"role": "user", "content": [{"text": "read calc.py"}]},
        # reasoning_content is not sent: Converse reasoning needs the model's signature
        {"role": "assistant", "content": [
            {"text": "Reading it."},
            {"toolUse": {"toolUseId": "functions.read:0", "name": "read",
                         "input": {"filePath": "calc.py"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "functions.read:0",
                            "content": [{"text": "def add(a, b): ..."}]}}]},
    ]
    assert_converse_valid(kwargs)


def test_consecutive_same_role_messages_are_merged() -> None:
    kwargs = convert([
        {"role": "user", "content": "Generate a title for this conversation:\n"},
        {"role": "user", "content": [{"type": "text", "text": '"build a calculator"'}]},
        {"role": "assistant", "content": "One."},
        {"role": "assistant", "content": [{"type": "text", "text": "Two."}],
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "bash", "arguments": "{}"}},
                        {"id": "c2", "type": "function",
                         "function": {"name": "read", "arguments": '{"filePath": "a"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "body"}]},
        {"role": "user", "content": "and now?"},
    ], tools=TOOLS)
    assert [m["role"] for m in kwargs["messages"]] == ["user", "assistant", "user"]
    first, assistant, results = kwargs["messages"]
    assert [b["text"] for b in first["content"]] == [
        "Generate a title for this conversation:\n", '"build a calculator"']
    assert assistant["content"][:2] == [{"text": "One."}, {"text": "Two."}]
    assert [b["toolUse"]["toolUseId"] for b in assistant["content"][2:]] == ["c1", "c2"]
    # tool results first, in call order, then the user's own text
    assert [next(iter(b)) for b in results["content"]] == ["toolResult", "toolResult", "text"]
    assert results["content"][1]["toolResult"]["content"] == [{"text": "body"}]
    assert results["content"][2] == {"text": "and now?"}
    assert_converse_valid(kwargs)


def test_empty_content_never_becomes_an_empty_block() -> None:
    kwargs = convert([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": ""},                      # dropped
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "x"}]},
        {"role": "assistant", "content": [{"type": "text", "text": " \n"}],
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "bash", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": ""},
        {"role": "assistant", "content": None},                    # dropped
        {"role": "user", "content": "   "},                        # dropped
    ], tools=TOOLS)
    assert kwargs["messages"] == [
        {"role": "user", "content": [{"text": "go"}, {"text": "x"}]},
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "c1", "name": "bash", "input": {}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "c1", "content": [{"text": NO_OUTPUT}]}}]},
    ]
    assert_converse_valid(kwargs)


def test_a_conversation_starting_with_the_assistant_gets_a_user_message_first() -> None:
    kwargs = convert([{"role": "system", "content": "s"},
                      {"role": "assistant", "content": "Hello again."},
                      {"role": "user", "content": "hi"}])
    assert kwargs["messages"][0] == {"role": "user", "content": [{"text": CONTINUED}]}
    assert_converse_valid(kwargs)


def test_nothing_to_send_and_unknown_roles_are_clear_errors() -> None:
    with pytest.raises(ConverseTranslationError, match="no message with content"):
        convert([{"role": "system", "content": "s"}, {"role": "user", "content": " "}])
    with pytest.raises(ConverseTranslationError, match="role 'critic'"):
        convert([{"role": "critic", "content": "hm"}])


def test_malformed_arguments_are_mended_into_an_object() -> None:
    kwargs = convert([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "read", "arguments": '{"filePath": "x"'}},
            {"id": "b", "type": "function", "function": {"name": "read", "arguments": "[1, 2]"}},
            {"id": "c", "type": "function", "function": {"name": "read", "arguments": {"filePath": "y"}}},
        ]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"},
        {"role": "tool", "tool_call_id": "c", "content": "3"},
    ], tools=TOOLS)
    inputs = [b["toolUse"]["input"] for b in kwargs["messages"][1]["content"]]
    assert inputs == [{"filePath": "x"}, {"_raw": "[1, 2]"}, {"filePath": "y"}]


def test_without_tools_tool_history_is_sent_as_text() -> None:
    kwargs = convert([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "calc.py"},
        {"role": "user", "content": "Generate a title"},
    ])
    assert "toolConfig" not in kwargs
    blocks = all_blocks(kwargs)
    assert not any("toolUse" in b or "toolResult" in b for b in blocks)
    assert kwargs["messages"][1]["content"] == [{"text": '[called tool bash with {"command": "ls"}]'}]
    assert kwargs["messages"][2]["content"] == [{"text": "[result of bash]\ncalc.py"},
                                                {"text": "Generate a title"}]
    assert_converse_valid(kwargs)


# -- request: ids and names ----------------------------------------------------------------

ID_PATTERN = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")


def test_tool_use_ids_are_kept_when_valid_and_mapped_deterministically_when_not() -> None:
    long_id = "call_" + "x" * 80
    odd = ["functions.read:0", "call_59ad/ef", "call 59ad#ef", long_id, "call_59ad_ef"]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "go"}]
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": "read", "arguments": "{}"}} for i in odd]})
    messages += [{"role": "tool", "tool_call_id": i, "content": f"r{n}"} for n, i in enumerate(odd)]
    kwargs = convert(messages, tools=TOOLS)
    uses = [b["toolUse"]["toolUseId"] for b in kwargs["messages"][1]["content"]]
    results = [b["toolResult"]["toolUseId"] for b in kwargs["messages"][2]["content"]]
    assert uses == results, "each call and its result keep one id"
    assert all(ID_PATTERN.match(i) for i in uses), uses
    assert len(set(uses)) == len(odd), "no two ids collide"
    assert uses[0] == "functions.read:0", "Kimi's native ids pass unchanged"
    assert uses[1] == "call_59ad_ef"
    assert uses[4] != "call_59ad_ef" and uses[4].startswith("call_59ad_ef-")
    assert convert(messages, tools=TOOLS) == kwargs, "deterministic"


def test_tool_names_outside_the_converse_pattern_are_mapped_both_ways() -> None:
    tools = [{"type": "function", "function": {"name": "github.create_issue", "parameters": {
        "type": "object", "properties": {}}}}]
    call = to_converse({"messages": [
        {"role": "user", "content": "file it"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "github.create_issue", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}],
        "tools": tools, "tool_choice": {"type": "function", "function": {"name": "github.create_issue"}}},
        MODEL)
    spec = call.kwargs["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["name"] == "github_create_issue"
    assert call.kwargs["toolConfig"]["toolChoice"] == {"tool": {"name": "github_create_issue"}}
    assert call.kwargs["messages"][1]["content"][0]["toolUse"]["name"] == "github_create_issue"
    assert call.tool_names == {"github_create_issue": "github.create_issue"}
    decoder = ConverseStreamDecoder(call.tool_names)
    decoder.feed({"contentBlockStart": {"contentBlockIndex": 0, "start": {
        "toolUse": {"toolUseId": "t1", "name": "github_create_issue"}}}})
    parts = decoder.feed({"contentBlockStop": {"contentBlockIndex": 0}})
    assert parts == [ToolCallPart("t1", "github.create_issue", "{}")]


# -- request: tools, tool_choice, images, inference ------------------------------------------

def test_tools_become_tool_specs() -> None:
    kwargs = convert([{"role": "user", "content": "go"}], tools=TOOLS, tool_choice="auto")
    assert kwargs["toolConfig"] == {"tools": [
        {"toolSpec": {"name": "read", "description": "Read a file", "inputSchema": {"json": {
            "type": "object", "properties": {"filePath": {"type": "string"}},
            "required": ["filePath"]}}}},
        {"toolSpec": {"name": "bash", "inputSchema": {"json": {"type": "object", "properties": {}}}}},
    ]}


@pytest.mark.parametrize(("choice", "expected"), [
    (None, None), ("auto", None), ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "read"}}, {"tool": {"name": "read"}}),
])
def test_tool_choice(choice: Any, expected: Any) -> None:
    kwargs = convert([{"role": "user", "content": "go"}], tools=TOOLS, tool_choice=choice)
    assert kwargs["toolConfig"].get("toolChoice") == expected


def test_tool_choice_none_drops_tools_unless_history_needs_them() -> None:
    plain = convert([{"role": "user", "content": "go"}], tools=TOOLS, tool_choice="none")
    assert "toolConfig" not in plain
    history = convert([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}], tools=TOOLS, tool_choice="none")
    assert "toolChoice" not in history["toolConfig"] and len(history["toolConfig"]["tools"]) == 2
    with pytest.raises(ConverseTranslationError, match="tool_choice"):
        convert([{"role": "user", "content": "go"}], tools=TOOLS, tool_choice="sometimes")


def test_images_become_converse_image_blocks() -> None:
    data = base64.b64encode(PNG).decode()
    kwargs = convert([{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "s3://bucket/shot.webp"}},
    ]}])
    assert kwargs["messages"][0]["content"] == [
        {"text": "what is this?"},
        {"image": {"format": "png", "source": {"bytes": PNG}}},
        {"image": {"format": "jpeg", "source": {"bytes": PNG}}},
        {"image": {"format": "webp", "source": {"s3Location": {"uri": "s3://bucket/shot.webp"}}}},
    ]


@pytest.mark.parametrize(("url", "problem"), [
    ("https://example.com/cat.png", "does not fetch image URLs"),
    ("data:image/bmp;base64,AAAA", "not one of png"),
    ("data:image/png,rawbytes", "base64"),
])
def test_images_converse_cannot_take_are_refused_clearly(url: str, problem: str) -> None:
    with pytest.raises(ConverseTranslationError, match=problem):
        convert([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])


def test_inference_parameters() -> None:
    kwargs = convert([{"role": "user", "content": "go"}], max_tokens=32000, temperature=0,
                     top_p=0.95, stop=["</end>", ""], n=1, presence_penalty=0.5)
    assert kwargs["inferenceConfig"] == {"maxTokens": 32000, "temperature": 0.0, "topP": 0.95,
                                         "stopSequences": ["</end>"]}
    newer = convert([{"role": "user", "content": "go"}], max_tokens=10, max_completion_tokens=20,
                    stop="STOP")
    assert newer["inferenceConfig"] == {"maxTokens": 20, "stopSequences": ["STOP"]}


# -- stream: every event type and stop reason ----------------------------------------------

def feed_all(events: list[dict[str, Any]], decoder: ConverseStreamDecoder | None = None) -> list[Any]:
    decoder = decoder or ConverseStreamDecoder()
    parts: list[Any] = []
    for event in events:
        parts += decoder.feed(event)
    return parts


def tool_events(index: int, use_id: str, name: str, *fragments: str) -> list[dict[str, Any]]:
    events = [{"contentBlockStart": {"contentBlockIndex": index,
                                     "start": {"toolUse": {"toolUseId": use_id, "name": name}}}}]
    events += [{"contentBlockDelta": {"contentBlockIndex": index,
                                      "delta": {"toolUse": {"input": f}}}} for f in fragments]
    return events + [{"contentBlockStop": {"contentBlockIndex": index}}]


def test_a_full_stream_of_every_event_type() -> None:
    decoder = ConverseStreamDecoder()
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "think"}}}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"reasoningContent": {"redactedContent": b"\x00"}}}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"text": "Let me "}}},
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"text": ""}}},
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"text": "look."}}},
        {"contentBlockStop": {"contentBlockIndex": 1}},
        *tool_events(2, "tooluse_1", "read", '{"filePath"', ': "calc.py"}'),
        *tool_events(3, "tooluse_2", "bash", ""),
        {"messageStop": {"stopReason": "tool_use", "additionalModelResponseFields": {}}},
        {"metadata": {"usage": {"inputTokens": 120, "outputTokens": 30, "totalTokens": 150},
                      "metrics": {"latencyMs": 812}}},
    ]
    assert feed_all(events, decoder) == [
        ReasoningPart("think"), TextPart("Let me "), TextPart("look."),
        ToolCallPart("tooluse_1", "read", '{"filePath": "calc.py"}'),
        ToolCallPart("tooluse_2", "bash", "{}"),
        FinishPart("tool_calls"), UsagePart(120, 30, 150),
    ]
    assert decoder.finished and decoder.stop_reason == "tool_use"


def test_tool_input_held_past_the_limits_is_a_runaway(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("proxy_core.errors.HELD_CALL_LIMIT", 100)
    monkeypatch.setattr("proxy_core.errors.HELD_CALLS_LIMIT", 3)
    # Whole calls release what they held: many of them, one after another, are fine.
    assert len(feed_all([e for i in range(10) for e in tool_events(i, f"t{i}", "bash", "x" * 90)
                         ])) == 10
    with pytest.raises(RunawayAnswer, match="101 characters in 1 unfinished"):
        feed_all(tool_events(0, "t", "bash", "x" * 60, "x" * 41))
    with pytest.raises(RunawayAnswer, match="in 4 unfinished"):
        feed_all([tool_events(i, f"t{i}", "bash")[0] for i in range(4)])


def test_a_tool_call_is_emitted_whole_only_when_its_block_stops() -> None:
    decoder = ConverseStreamDecoder()
    events = tool_events(0, "t", "read", '{"file', 'Path": "a"}')
    for event in events[:-1]:
        assert decoder.feed(event) == []
    assert decoder.feed(events[-1]) == [ToolCallPart("t", "read", '{"filePath": "a"}')]


def test_tool_calls_still_open_at_message_stop_are_flushed_before_the_finish() -> None:
    events = tool_events(0, "t", "bash", '{"command": "ls"}')[:-1]
    events.append({"messageStop": {"stopReason": "tool_use"}})
    assert feed_all(events) == [ToolCallPart("t", "bash", '{"command": "ls"}'),
                                FinishPart("tool_calls")]


@pytest.mark.parametrize(("stop_reason", "finish"), [
    ("end_turn", "stop"), ("tool_use", "tool_calls"), ("max_tokens", "length"),
    ("stop_sequence", "stop"), ("guardrail_intervened", "content_filter"),
    ("content_filtered", "content_filter"), ("model_context_window_exceeded", "length"),
])
def test_stop_reasons_map_to_openai_finish_reasons(stop_reason: str, finish: str) -> None:
    assert feed_all([{"messageStop": {"stopReason": stop_reason}}]) == [FinishPart(finish)]


@pytest.mark.parametrize("stop_reason", ["malformed_model_output", "malformed_tool_use"])
def test_malformed_output_is_a_retryable_error_not_a_silent_stop(stop_reason: str) -> None:
    decoder = ConverseStreamDecoder()
    decoder.feed({"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "x"}}})
    with pytest.raises(UpstreamStreamError, match=stop_reason) as caught:
        decoder.feed({"messageStop": {"stopReason": stop_reason}})
    assert caught.value.retryable


@pytest.mark.parametrize(("event", "status", "retryable"), [
    ("modelStreamErrorException", 424, True), ("throttlingException", 429, True),
    ("validationException", 400, False), ("internalServerException", 500, True),
    ("serviceUnavailableException", 503, True),
])
def test_exception_events_are_clear_errors(event: str, status: int, retryable: bool) -> None:
    decoder = ConverseStreamDecoder()
    decoder.feed({"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "partial"}}})
    with pytest.raises(UpstreamStreamError) as caught:
        decoder.feed({event: {"message": "it broke", "originalStatusCode": 500}})
    error = caught.value
    assert event in error.message and "it broke" in error.message
    assert (error.status, error.retryable) == (status, retryable)
    assert error.code == "upstream_stream_error"


@pytest.mark.parametrize(("status", "code", "retryable"), [
    (429, "ThrottlingException", True), (400, "ValidationException", False),
    (403, "AccessDeniedException", False), (424, "ModelErrorException", True),
    (408, "ModelTimeoutException", True), (500, "InternalServerException", True),
    (503, "ServiceUnavailableException", True),
])
def test_refusals_keep_bedrocks_status_and_say_whether_to_retry(status: int, code: str,
                                                                retryable: bool) -> None:
    error = status_error(status, code, "why")
    assert (error.status, error.retryable) == (status, retryable)
    assert error.message == f"Bedrock {code}: why"


def test_a_tool_delta_without_its_start_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError, match="never started"):
        feed_all([{"contentBlockDelta": {"contentBlockIndex": 4, "delta": {"toolUse": {"input": "{}"}}}}])


def test_unknown_events_and_text_block_stops_produce_nothing() -> None:
    assert feed_all([{"messageStart": {"role": "assistant"}},
                     {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"citation": {"x": 1}}}},
                     {"contentBlockStop": {"contentBlockIndex": 0}},
                     {"somethingNew": {"a": 1}}]) == []


def test_usage_without_a_total_adds_input_and_output() -> None:
    assert feed_all([{"metadata": {"usage": {"inputTokens": 3, "outputTokens": 4}}}]) == [
        UsagePart(3, 4, 7)]


def test_a_whole_converse_answer_gives_the_same_parts_as_a_stream() -> None:
    response = {
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "think", "signature": "s"}}},
            {"text": "Reading."},
            {"toolUse": {"toolUseId": "t1", "name": "read", "input": {"filePath": "a"}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11},
        "metrics": {"latencyMs": 10},
    }
    assert converse_response_parts(response) == [
        ReasoningPart("think"), TextPart("Reading."),
        ToolCallPart("t1", "read", '{"filePath": "a"}'), FinishPart("tool_calls"),
        UsagePart(5, 6, 11)]


# -- the repair engine on a Converse stream ------------------------------------------------

def test_leaked_kimi_tokens_in_converse_text_are_repaired_into_a_tool_call() -> None:
    """Seed 000: Kimi on Converse leaks its call into the text and stops with end_turn."""
    leak = ('I will read it.<|tool_calls_section_begin|><|tool_call_begin|>functions.read:3'
            '<|tool_call_argument_begin|>{"filePath": "calc.py"}<|tool_call_end|>'
            '<|tool_calls_section_end|>')
    events = [{"messageStart": {"role": "assistant"}}]
    events += [{"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": leak[i:i + 7]}}}
               for i in range(0, len(leak), 7)]
    events += [{"contentBlockStop": {"contentBlockIndex": 0}},
               {"messageStop": {"stopReason": "end_turn"}},
               {"metadata": {"usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3}}}]
    notes: list[Note] = []
    repairer = StreamRepairer(KIMI, ToolCatalog.from_openai(TOOLS[:1]), notes.append)
    parts = [out for part in feed_all(events) for out in repairer.feed(part)]
    text = "".join(p.text for p in parts if isinstance(p, TextPart))
    calls = [p for p in parts if isinstance(p, ToolCallPart)]
    assert text == "I will read it."
    assert len(calls) == 1 and calls[0].name == "read"
    assert json.loads(calls[0].arguments) == {"filePath": "calc.py"}
    assert calls[0].upstream_id == "functions.read:3" and calls[0].id.startswith("call_")
    assert FinishPart("tool_calls") in parts
    assert {n.kind for n in notes} >= {"leaked_tool_call", "finish_reason"}


# -- request: any history, generated ------------------------------------------------------

TOOL_LISTS = st.none() | st.just(TOOLS) | st.lists(st.fixed_dictionaries({
    "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.sampled_from(["read", "bash", "edit", "a b!"]),
                                       "parameters": st.just({"type": "object"})})}),
    max_size=3)


def _call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": "read", "arguments": '{"path": "a.py"'}}


@settings(max_examples=400, deadline=None)
@given(messages=conversations(), tools=TOOL_LISTS, plan=st.sampled_from([KIMI, STRUCTURAL]),
       choice=st.sampled_from([None, "auto", "none", "required"]))
# What it found first: two calls of one message with one id (their native ids went to
# one of them, and both results answered it)...
@example(messages=[{"role": "assistant", "content": None, "tool_calls": [_call("x"), _call("x")]}],
         tools=TOOLS, plan=KIMI, choice=None)
# ...and a result that answers a call of an earlier message than the one it follows.
@example(messages=[{"role": "assistant", "content": None,
                    "tool_calls": [_call("functions.read:0"), _call("call_2_1")]},
                   {"role": "assistant", "content": None, "tool_calls": [_call("call_3_0")]},
                   {"role": "tool", "content": None, "tool_call_id": "functions.read:0"}],
         tools=TOOLS, plan=KIMI, choice=None)
# Bedrock's own rules on ids: no two tool uses of a message share one (the structural
# repairs keep the client's ids), and no two results of a message answer one call.
@example(messages=[{"role": "assistant", "content": None, "tool_calls": [_call("x"), _call("x")]},
                   {"role": "tool", "content": "one", "tool_call_id": "x"},
                   {"role": "tool", "content": "two", "tool_call_id": "x"}],
         tools=TOOLS, plan=STRUCTURAL, choice=None)
@example(messages=[{"role": "user", "content": "go"},
                   {"role": "assistant", "content": None, "tool_calls": [_call("c1")]},
                   {"role": "tool", "content": "denied", "tool_call_id": "c1"},
                   {"role": "tool", "content": "denied again", "tool_call_id": "c1"}],
         tools=TOOLS, plan=KIMI, choice=None)
def test_any_history_the_proxy_accepts_is_repaired_into_one_bedrock_accepts(
        messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, plan: RepairPlan,
        choice: str | None) -> None:
    """With repairs on, what reaches Converse passes Bedrock's checks (as the simulator's
    Bedrock face makes them: alternation, no empty content or blank text, tool results
    answering the previous turn's tool uses, a tool config when tools are used), or
    the client gets a 400 that names the problem; never a request Bedrock refuses."""
    body: dict[str, Any] = {"model": "kimi-k2.5", "messages": messages}
    if tools is not None:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    try:
        request = parse_chat_request(body)
    except ClientRequestError:
        return  # refused at the front door, by name
    sent, _ = repair_history(request.messages, plan)
    try:
        call = to_converse({**body, "messages": sent}, MODEL)
    except ConverseTranslationError:
        return  # a 400 that says why
    assert_converse_valid(call.kwargs)
    converse_face.to_openai(json.loads(json.dumps(call.kwargs)))  # raises as Bedrock would
