"""`ChunkEncoder`'s two paths give the same chunks: `event()` writes the SSE bytes of
text, reasoning and finish parts from templates; `encode()` (and `event()` for every
other part) builds the chunk as a dict. Parsed, the bytes must equal the dict."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy_core.openai_wire import ChunkEncoder
from proxy_core.stream import (
    FinishPart,
    KeepAlivePart,
    ReasoningPart,
    StreamPart,
    TextPart,
    ToolCallPart,
    UsagePart,
)

HARD_TEXT = ['plain', '', 'quote " backslash \\ slash /', 'line\nbreak\ttab\r\x00\x1f',
             'ünïcödé 日本語 🙂', '\u2028\u2029', 'lone \ud800 surrogate', '</script>']


def pair(include_usage: bool = True) -> tuple[ChunkEncoder, ChunkEncoder]:
    """Two encoders for the same stream (same id and timestamp), one per path."""
    fast = ChunkEncoder("kimi-k2.5", include_usage=include_usage)
    plain = ChunkEncoder("kimi-k2.5", include_usage=include_usage)
    plain.id, plain.created = fast.id, fast.created
    return fast, plain


def parse(event: bytes) -> object:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    return json.loads(event[len(b"data: "):-2])


def both(parts: list[StreamPart], include_usage: bool = True) -> list[tuple[object, object]]:
    fast, plain = pair(include_usage)
    out = []
    for part in parts:
        event = fast.event(part)
        out.append((None if event is None else parse(event), plain.encode(part)))
    return out


def test_text_first_carries_the_role_once() -> None:
    (first, second) = both([TextPart("a"), TextPart("b")])
    assert first[0] == first[1]
    assert first[0]["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "a"},  # type: ignore[index]
                                    "finish_reason": None}]
    assert second[0] == second[1] and second[0]["choices"][0]["delta"] == {"content": "b"}  # type: ignore[index]


def test_a_finish_alone_carries_only_the_role_and_the_reason() -> None:
    ((event, chunk),) = both([FinishPart("stop")])
    assert event == chunk
    assert event["choices"][0] == {"index": 0, "delta": {"role": "assistant"},  # type: ignore[index]
                                   "finish_reason": "stop"}


def test_every_kind_of_part_agrees_and_the_head_is_the_streams() -> None:
    parts: list[StreamPart] = [
        ReasoningPart("think"), TextPart("say"),
        ToolCallPart("functions.read:0", "read", '{"filePath": "a.py"}'),
        ToolCallPart("call_2", "bash", "{}"), KeepAlivePart(),
        FinishPart("tool_calls"), UsagePart(10, 5, 15)]
    pairs = both(parts)
    for (event, chunk), part in zip(pairs, parts, strict=False):
        assert event == chunk, part
    fast, _ = pair()
    chunks = [c for _, c in pairs if c is not None]
    assert all(c["id"].startswith("chatcmpl-") and c["object"] == "chat.completion.chunk"  # type: ignore[index]
               and c["model"] == "kimi-k2.5" for c in chunks)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[2:4]]  # type: ignore[index]
    assert [c["index"] for c in calls] == [0, 1] and calls[0]["function"]["name"] == "read"
    assert pairs[4] == (None, None)  # a keep-alive gives the client nothing
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 15  # type: ignore[index]


def test_usage_is_sent_only_when_asked_for() -> None:
    assert both([UsagePart(1, 2, 3)], include_usage=False) == [(None, None)]


@given(st.lists(st.one_of(
    st.builds(TextPart, st.one_of(st.sampled_from(HARD_TEXT), st.text())),
    st.builds(ReasoningPart, st.one_of(st.sampled_from(HARD_TEXT), st.text())),
    st.builds(ToolCallPart, st.text(min_size=1), st.text(min_size=1), st.text()),
    st.builds(FinishPart, st.sampled_from(["stop", "length", "tool_calls", 'odd "reason"'])),
    st.builds(UsagePart, st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9)),
    st.just(KeepAlivePart())), max_size=12), st.booleans())
def test_both_paths_agree_on_any_stream(parts: list[StreamPart], include_usage: bool) -> None:
    for event, chunk in both(parts, include_usage):
        assert event == chunk
