"""Broken upstream streams, generated: the client always gets a well-formed answer.

First the SSE parser on its own: any split of a stream into network reads,
any of the three line endings, comments and multi-line data decode to the
same events; arbitrary bytes never raise anything but a protocol error.

Then through a running proxy: a fake upstream sends a valid stream cut into
arbitrary writes, or that stream corrupted (garbage bytes, invalid UTF-8,
broken JSON, a truncated body, an error event, a dropped connection). The
client gets either the model's text in a well-formed stream ending with
`[DONE]` — with an in-stream error if it broke after output — or an
OpenAI-shaped error status; never a 500; the turn is recorded as finished or
failed, and the proxy keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fuzz_support import BackgroundProxy, openai_error, running_proxy
from proxy_core.sse import COMMENT, SSEDecoder, SSEProtocolError
from support import CHAT_PATH, Drop, Sleep, chat_body, openai_config, sse

# -- the parser on its own ---------------------------------------------------------------

PAYLOAD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                  min_size=1, max_size=30).filter(lambda s: s.strip() != "")
EVENTS = st.lists(st.one_of(PAYLOAD.map(lambda p: ("data", p)),
                            st.lists(PAYLOAD, min_size=2, max_size=3).map(lambda ps: ("multi", ps)),
                            st.just(("comment", "ping")),
                            st.just(("field", "event: message"))),
                  max_size=12)
NEWLINES = st.sampled_from(["\n", "\r\n", "\r"])


def serialise(events: list[tuple[str, Any]], newline: str) -> tuple[bytes, list[Any]]:
    out: list[str] = []
    expected: list[Any] = []
    for kind, value in events:
        if kind == "data":
            out.append(f"data: {value}{newline}{newline}")
            expected.append(value.encode())
        elif kind == "multi":
            out.append("".join(f"data: {v}{newline}" for v in value) + newline)
            expected.append("\n".join(value).encode())
        elif kind == "comment":
            out.append(f": {value}{newline}")
            expected.append(COMMENT)
        else:
            out.append(f"{value}{newline}{newline}")
    return "".join(out).encode(), expected


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in zip(points, points[1:], strict=False)]


@settings(max_examples=400, deadline=None)
@given(events=EVENTS, newline=NEWLINES, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_any_split_and_line_ending_decode_to_the_same_events(
        events: list[tuple[str, Any]], newline: str, cuts: list[int]) -> None:
    raw, expected = serialise(events, newline)
    decoder = SSEDecoder()
    got: list[Any] = []
    for piece in split(raw, cuts):
        got += decoder.feed(piece)
    got += decoder.close()
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.binary(max_size=80), max_size=8))
def test_arbitrary_bytes_decode_or_raise_a_protocol_error_only(data: list[bytes]) -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    try:
        for piece in data:
            for item in decoder.feed(piece):
                assert item is COMMENT or isinstance(item, bytes)
        decoder.close()
    except SSEProtocolError:
        pass


def test_an_endless_line_is_refused_not_buffered() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: " + b"x" * 900)
    with pytest.raises(SSEProtocolError):
        decoder.feed(b"y" * 200)


# -- through the proxy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundProxy]:
    with running_proxy(
            lambda url: openai_config(url, first_token_timeout=2.0, idle_timeout=2.0,
                                      max_attempts=2),
            tmp_path_factory.mktemp("fuzz-upstream") / "journal.sqlite3") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20.0) as c:
        yield c


def chunk_event(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
#: How deep a value nests: within the JSON parsers' 1,024 levels, or past them (hypothesis
#: favours small integers, so each side is drawn on its own).
DEPTHS = st.integers(1, 1024) | st.integers(1025, 3000)
CORRUPTIONS = st.sampled_from([
    "none", "garbage", "invalid-utf8", "broken-json", "truncate", "drop", "error-event",
    "non-object", "bad-choices", "keepalive-only-tail", "deep",
])


@st.composite
def upstream_streams(draw: st.DrawFn) -> tuple[list[Any], str, str, bool]:
    """(steps for the fake upstream, the text a client should see, the corruption,
    whether a retry gets the same stream)."""
    pieces = draw(st.lists(TEXT, min_size=1, max_size=8))
    newline = draw(NEWLINES)
    events = [f"data: {json.dumps(chunk_event({'role': 'assistant', 'content': ''}))}"]
    for piece in pieces:
        events.append(f"data: {json.dumps(chunk_event({'content': piece}), ensure_ascii=False)}")
        if draw(st.integers(0, 4)) == 0:
            events.append(": keep-alive")
    events.append(f"data: {json.dumps(chunk_event({}, 'stop'))}")
    events.append("data: [DONE]")
    blocks = [(e + newline + (newline if not e.startswith(":") else "")).encode() for e in events]
    corruption = draw(CORRUPTIONS)
    nl = newline.encode()
    inserted = {
        "garbage": nl + draw(st.binary(min_size=1, max_size=40)) + nl * 2,
        "invalid-utf8": b"data: \xff\xfe\xc3(" + nl * 2,
        "broken-json": b'data: {"choices": [{"delta": {"content": "x"' + nl * 2,
        "error-event": b'data: {"error": {"message": "overloaded"}}' + nl * 2,
        "non-object": b"data: [1, 2, 3]" + nl * 2,
        "bad-choices": b'data: {"choices": {"delta": 1}}' + nl * 2,
        # a chunk with a field nested to any depth, past every JSON parser's limit or not
        "deep": b'data: {"choices": [{"index": 0, "delta": {"content": ""}, "x": %s}]}%s'
                % (b"[" * (depth := draw(DEPTHS)) + b"]" * depth, nl * 2),
    }.get(corruption)
    if inserted is not None:  # a bad event between two good ones
        blocks.insert(draw(st.integers(0, len(blocks))), inserted)
    data = b"".join(blocks)
    if corruption in ("truncate", "drop"):
        data = data[:draw(st.integers(0, len(data)))]
    elif corruption == "keepalive-only-tail":
        data = data[:draw(st.integers(0, len(data)))] + b": ping" + nl * 2
    steps: list[Any] = []
    for piece in split(data, draw(st.lists(st.integers(0, 10_000), max_size=6))):
        steps.append(piece)
        if draw(st.booleans()):
            steps.append(Sleep(0.002))
    if corruption == "drop":
        steps.append(Drop())
    return steps, "".join(pieces), corruption, draw(st.booleans())


def payloads_of(body: bytes) -> list[Any]:
    text = body.decode("utf-8")  # the client always gets valid UTF-8
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                data = line[6:]
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stream=upstream_streams())
def test_broken_upstream_streams_give_well_formed_answers(
        bg: BackgroundProxy, client: httpx.Client,
        stream: tuple[list[Any], str, str, bool]) -> None:
    steps, text, corruption, again = stream
    # A retry gets the same broken stream, or the fake's default "Hello world".
    bg.script(*[sse(*steps, done=False)] * (2 if again else 1))
    response = client.post(bg.base_url + CHAT_PATH, json=chat_body())
    event(f"{corruption}: HTTP {response.status_code}")
    if response.status_code != 200:
        assert response.status_code in (502, 504), (response.status_code, response.text)
        assert openai_error(response)["type"] == "upstream_error"
        turn = bg.api_turns(client)[-1]
        assert turn["state"] == "failed"
        return
    payloads = payloads_of(response.content)
    assert payloads[-1] == "[DONE]", payloads[-3:]
    errors = [p["error"] for p in payloads if isinstance(p, dict) and "error" in p]
    content = "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads
                      if isinstance(p, dict) and p.get("choices"))
    assert len(errors) <= 1
    for error in errors:
        assert error["code"] != "internal_error", error
        assert payloads[-2] == {"error": error}
    turn = bg.api_turns(client)[-1]
    if corruption == "none":
        assert content == text and not errors and turn["state"] == "finished"
    elif errors:  # broke after output had started: what came is the start of the text
        assert turn["state"] == "failed" and text.startswith(content), (content, text)
    else:  # relayed whole, or retried transparently after a failure before any output
        assert content in (text, "Hello world"), (content, text, corruption)
        assert turn["state"] == "finished"
    assert bg.journal_states().get(turn["id"]) == turn["state"]


def test_the_proxy_still_serves_after_the_broken_streams(bg: BackgroundProxy,
                                                         client: httpx.Client) -> None:
    bg.good_turn(client)
    assert "live" not in bg.journal_states().values()


# -- Bedrock ConverseStream events ---------------------------------------------------------
# botocore decodes the binary event-stream frames (and checks their CRCs); what reaches
# Switchboard are event dicts. Broken or hostile ones must give parts or an UpstreamError.

CONVERSE_KEYS = st.sampled_from([
    "messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop",
    "messageStop", "metadata", "modelStreamErrorException", "throttlingException",
    "validationException", "internalServerException", "serviceUnavailableException",
    "somethingNew"])
CONVERSE_VALUES = st.one_of(
    JSON_VALUES := st.recursive(
        st.none() | st.booleans() | st.integers(-2, 5) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                    max_size=3),
        max_leaves=8),
    st.fixed_dictionaries({}, optional={
        "contentBlockIndex": st.integers(-1, 3) | st.text(max_size=2),
        "start": st.fixed_dictionaries({"toolUse": st.fixed_dictionaries(
            {}, optional={"toolUseId": st.text(max_size=8), "name": st.text(max_size=8)})}),
        "delta": st.fixed_dictionaries({}, optional={
            "text": st.text(max_size=10), "toolUse": st.fixed_dictionaries(
                {}, optional={"input": st.text(max_size=10) | JSON_VALUES}),
            "reasoningContent": st.fixed_dictionaries({}, optional={"text": st.text(max_size=8)})}),
        "stopReason": st.sampled_from(["end_turn", "tool_use", "max_tokens", "weird"]),
        "usage": st.dictionaries(st.sampled_from(["inputTokens", "outputTokens"]),
                                 st.integers(0, 9) | st.text(max_size=2)),
        "message": st.text(max_size=10)}))


@settings(max_examples=400, deadline=None)
@given(events=st.lists(st.dictionaries(CONVERSE_KEYS, CONVERSE_VALUES, min_size=1, max_size=2),
                       max_size=10))
def test_broken_converse_events_give_parts_or_an_upstream_error(
        events: list[dict[str, Any]]) -> None:
    from proxy_core.errors import UpstreamError
    from proxy_core.stream import FinishPart, ReasoningPart, TextPart, ToolCallPart, UsagePart
    from proxy_core.upstreams.converse import ConverseStreamDecoder

    decoder = ConverseStreamDecoder()
    try:
        parts = [p for event in events for p in decoder.feed(event)] + decoder.finish()
    except UpstreamError:
        return
    for part in parts:
        assert isinstance(part, (TextPart, ReasoningPart, ToolCallPart, FinishPart, UsagePart))
        if isinstance(part, ToolCallPart):
            assert isinstance(part.id, str) and isinstance(part.arguments, str)
