"""`RequestParser`: a body that extends a recent one is parsed from where that one ended.

The property that matters is that reuse never changes the answer: for any
sequence of bodies — a session growing turn by turn, histories edited,
options changed, bodies cut or corrupted anywhere, written compactly or
not — the parser returns exactly what a whole parse returns, or the same
error. Hypothesis drives that over generated sessions; the other tests pin
down that reuse actually happens where agents make it possible.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core.errors import ClientRequestError
from proxy_core.openai_wire import ChatRequest, parse_chat_request
from proxy_core.request_parser import RequestParser, parse_json_body


def whole(raw: bytes) -> tuple[Any, ...]:
    """What parsing `raw` from scratch gives: the request, or the error."""
    try:
        return ("ok", parse_chat_request(parse_json_body(raw)))
    except ClientRequestError as exc:
        return ("error", exc.status, exc.code, exc.message)


def reused(parser: RequestParser, raw: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", parser.parse(raw))
    except ClientRequestError as exc:
        return ("error", exc.status, exc.code, exc.message)


def compact(body: dict[str, Any]) -> bytes:
    """As `JSON.stringify` writes it (opencode, the Vercel AI SDK)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def step(i: int) -> list[dict[str, Any]]:
    call = f"functions.read:{i}"
    return [{"role": "assistant", "content": "", "reasoning_content": f"look at {i}",
             "tool_calls": [{"id": call, "type": "function",
                             "function": {"name": "read", "arguments": json.dumps({"n": i})}}]},
            {"role": "tool", "tool_call_id": call, "content": f"line {i}\n" * 20}]


def session_body(steps: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "you are an agent"},
                {"role": "user", "content": "fix the bug"}]
    for i in range(steps):
        messages += step(i)
    return {"model": "kimi", "max_tokens": 100, "messages": messages,
            "tools": [{"type": "function", "function": {"name": "read", "parameters": {}}}],
            "stream": True, "stream_options": {"include_usage": True}, **extra}


def test_a_growing_session_is_parsed_from_where_the_last_turn_ended() -> None:
    parser = RequestParser()
    previous: ChatRequest | None = None
    for turn in range(12):
        raw = compact(session_body(turn))
        request = parser.parse(raw)
        assert request == parse_chat_request(json.loads(raw))
        if previous is not None:  # the history is the same objects, not a copy
            assert all(a is b for a, b in zip(previous.messages, request.messages[:len(previous.messages)], strict=True))
        previous = request
    assert (parser.hits, parser.misses) == (11, 1)


def test_the_same_body_again_is_a_hit_with_nothing_new() -> None:
    parser = RequestParser()
    raw = compact(session_body(3))
    first, second = parser.parse(raw), parser.parse(raw)
    assert first == second and second.messages is first.messages
    assert second.body is not first.body  # each turn gets its own top level
    assert parser.hits == 1


def test_a_history_cut_back_is_the_earlier_parse_cut_back() -> None:
    """An undo, or an earlier turn sent again: the first messages of a body parsed lately,
    as the very objects, with nothing parsed; and the longer body is still known."""
    parser = RequestParser()
    long = parser.parse(compact(session_body(6)))
    for steps in (2, 0):
        raw = compact(session_body(steps))
        request = parser.parse(raw)
        assert request == parse_chat_request(json.loads(raw))
        assert all(a is b for a, b in zip(request.messages, long.messages, strict=False))
    assert (parser.hits, parser.misses) == (2, 1)
    parser = RequestParser(max_bodies=2)
    long = parser.parse(compact(session_body(6)))
    parser.parse(compact(session_body(6, model="other")))
    again = parser.parse(compact(session_body(3)))  # the longer one stayed
    assert all(a is b for a, b in zip(again.messages, long.messages, strict=False))
    assert (parser.hits, parser.misses) == (1, 2)


def test_a_cut_back_pretty_body_is_reused_and_a_cut_inside_a_message_is_not() -> None:
    parser = RequestParser()
    parser.parse(json.dumps(session_body(4), indent=1).encode())
    shorter = json.dumps(session_body(1), indent=1).encode()
    assert reused(parser, shorter) == whole(shorter) and parser.hits == 1
    parser = RequestParser()
    raw = compact(session_body(4))
    parser.parse(raw)
    close = raw.index(b'],"tools"')
    for cut in (raw.index(b'"content"', close - 200), raw.index(b"{", close - 200) + 1):
        inside = raw[:cut] + raw[close:]  # bytes of the earlier body, cut inside a message
        assert reused(parser, inside) == whole(inside)
        assert reused(parser, inside)[0] == "error"
    assert parser.hits == 0


def test_a_new_message_that_is_wrong_gets_the_index_a_whole_parse_gives() -> None:
    parser = RequestParser()
    parser.parse(compact(session_body(2)))
    body = session_body(2)
    body["messages"].append({"role": "wizard", "content": "x"})
    raw = compact(body)
    assert reused(parser, raw) == whole(raw)
    assert whole(raw)[3].startswith("messages[6].role 'wizard'")


@pytest.mark.parametrize("tail", [b",]", b",", b", ", b",{}", b',"x', b",{]"])
def test_bad_json_between_the_old_messages_and_the_suffix_is_a_whole_parse_error(
        tail: bytes) -> None:
    parser = RequestParser()
    raw = compact(session_body(2))
    parser.parse(raw)
    end = raw.index(b'],"tools"')
    bad = raw[:end] + tail + raw[end:]
    assert reused(parser, bad) == whole(bad)
    assert reused(parser, bad)[0] == "error"


def test_bodies_with_whitespace_at_the_top_level_are_reused_too() -> None:
    """Python's `json.dumps` (which `requests` and aiohttp send) writes `", "` and `": "`;
    pretty printers indent: both are learned from, and each turn reuses the last."""
    for dumps in (lambda b: json.dumps(b), lambda b: json.dumps(b, indent=1) + "\n"):
        parser = RequestParser()
        for turn in range(4):
            raw = dumps(session_body(turn)).encode()
            assert reused(parser, raw) == whole(raw)
        assert parser.hits == 3 and parser.misses == 1


def test_an_escaped_top_level_key_is_never_learned_from() -> None:
    parser = RequestParser()
    raw = compact(session_body(1)).replace(b'"messages"', b'"\\u006dessages"')
    assert reused(parser, raw) == whole(raw)
    assert len(parser) == 0


def test_a_repeated_top_level_key_is_never_learned_from() -> None:
    parser = RequestParser()
    raw = compact(session_body(1))
    twice = raw[:-1] + b',"messages":[{"role":"user","content":"other"}]}'
    assert reused(parser, twice) == whole(twice)
    assert len(parser) == 0


def test_remembers_a_bounded_number_of_bodies() -> None:
    parser = RequestParser(max_bodies=3)
    for model in "abcde":
        parser.parse(compact({**session_body(1), "model": model}))
    assert len(parser) == 3
    parser.parse(compact({**session_body(2), "model": "a"}))  # forgotten: parsed whole
    assert parser.hits == 0
    parser.parse(compact({**session_body(2), "model": "e"}))
    assert parser.hits == 1


def test_interleaved_sessions_each_extend_their_own() -> None:
    parser = RequestParser()
    for turn in range(5):
        for model in ("main", "subagent"):
            raw = compact({**session_body(turn), "model": model})
            assert parser.parse(raw) == parse_chat_request(json.loads(raw))
    assert parser.misses == 2 and parser.hits == 8


# -- generated sessions ------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30) | \
    st.sampled_from(['"', "\\", "]", "},{", '","tools":[', "\\u00e9", "\n", "", "𝄞"])
_value = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | _text,
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(_text, inner, max_size=3), max_leaves=6)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]),
     "content": _text | st.none() | st.lists(st.fixed_dictionaries(
         {"type": st.just("text"), "text": _text}), max_size=2)},
    optional={"tool_call_id": _text, "name": _text, "extra": _value})
_extra_keys = st.dictionaries(st.sampled_from(["temperature", "top_p", "tool_choice", "user",
                                               "metadata", "stream_options"]),
                              _value, max_size=3)


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """The bodies of one session, turn by turn, with what clients and accidents do to them."""
    head = draw(_extra_keys)
    tail = draw(_extra_keys)
    messages = draw(st.lists(_message, min_size=1, max_size=4))
    bodies: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["grow", "grow", "grow", "same", "edit", "option",
                                       "undo", "cut", "cut inside", "corrupt", "pretty"]))
        if action == "grow":
            messages = messages + draw(st.lists(_message, min_size=1, max_size=3))
        elif action == "undo":  # back to an earlier point of the history, even to nothing
            messages = messages[:draw(st.integers(0, len(messages)))]
        elif action == "edit" and messages:
            i = draw(st.integers(0, len(messages) - 1))
            messages = [*messages[:i], draw(_message), *messages[i + 1:]]
        elif action == "option":
            tail = {**tail, "temperature": draw(st.integers(0, 2))}
        body = {"model": "m", **head, "messages": messages, **tail}
        raw = (json.dumps(body, indent=1).encode() if action == "pretty"
               else orjson.dumps(body) if draw(st.booleans()) else compact(body))
        if action == "cut":
            raw = raw[:draw(st.integers(0, len(raw)))]
        elif action == "cut inside":  # the messages array cut anywhere, its closing kept
            raw = compact(body)
            empty = compact({**body, "messages": []})
            start = empty.index(b'"messages":[') + len(b'"messages":[')
            close = len(raw) - (len(empty) - start)
            raw = raw[:draw(st.integers(start, close))] + raw[close:]
        elif action == "corrupt" and raw:
            at = draw(st.integers(0, len(raw) - 1))
            raw = raw[:at] + draw(st.binary(max_size=4)) + raw[at + draw(st.integers(0, 4)):]
        bodies.append(raw)
    return bodies


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_reuse_never_changes_what_a_body_means(bodies: list[bytes]) -> None:
    parser = RequestParser()
    for raw in bodies:
        got = reused(parser, raw)
        assert got == whole(raw)
        if got[0] == "ok":  # the bytes go upstream as sent exactly when orjson reads them
            assert got[1].raw == (raw if _orjson_reads(raw) else None)


def _orjson_reads(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def test_a_body_with_a_lone_surrogate_is_never_sent_as_written() -> None:
    """`loads_clean` makes a lone surrogate U+FFFD: the bytes no longer say what the
    request says, for that turn and every turn that extends or cuts it back."""
    parser = RequestParser()
    clean = compact(session_body(2))
    assert parser.parse(clean).raw is clean
    body = session_body(3)
    body["messages"][-1]["content"] = "half a pair: \\ud800"  # as text, then made an escape
    lone = compact(body).replace(b"\\\\ud800", b"\\ud800")
    request = parser.parse(lone)
    assert request.messages[-1]["content"].endswith("\ufffd")  # what it now says
    assert request.raw is None and parser.hits == 1
    body["messages"] += step(3)
    longer = compact(body).replace(b"\\\\ud800", b"\\ud800")
    assert parser.parse(longer).raw is None and parser.hits == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(_message, min_size=1, max_size=5), st.lists(_message, min_size=1, max_size=5))
def test_compact_growth_is_always_reused(first: list[Any], more: list[Any]) -> None:
    parser = RequestParser()
    before = {"model": "m", "messages": first, "stream": True}
    parser.parse(compact(before))
    after = compact({**before, "messages": first + more})
    assert reused(parser, after) == whole(after)
    assert parser.hits == 1


def test_remembers_a_bounded_number_of_bytes() -> None:
    parser = RequestParser(max_bytes=4 * len(compact(session_body(6))))
    for model in "abcdefgh":
        parser.parse(compact({**session_body(5), "model": model}))
    assert parser.bytes <= parser.max_bytes and len(parser) < 8
    assert parser.bytes == sum(len(k.raw) for k in parser._known.values())
    parser.parse(compact({**session_body(200), "model": "big"}))  # over a quarter: not kept
    assert all(b"big" not in k.raw[:40] for k in parser._known.values())


# -- messages found again by their bytes ------------------------------------------------

def test_an_edited_history_keeps_the_very_objects_of_the_messages_it_did_not_change() -> None:
    """The first prompt edited (or the date in the system prompt turned): no body seen
    before starts like it, but every other message is the object read last time."""
    parser = RequestParser()
    for turn in range(4):
        before = parser.parse(compact(session_body(turn)))
    body = session_body(3)
    body["messages"][1] = {"role": "user", "content": "fix the other bug"}
    raw = compact(body)
    after = parser.parse(raw)
    assert after == parse_chat_request(json.loads(raw)) and after.raw is raw
    assert parser.misses == 2  # parsed whole, not as an extension
    assert after.messages[1] is not before.messages[1]
    same = [i for i, (a, b) in enumerate(zip(after.messages, before.messages, strict=True)) if a is b]
    assert same == [0, *range(2, len(before.messages))]
    assert parser.reused_messages == len(before.messages) - 1


def test_a_session_no_longer_kept_finds_its_messages_by_their_bytes() -> None:
    parser = RequestParser(max_bodies=1)
    first = parser.parse(compact(session_body(3)))
    parser.parse(compact({**session_body(1), "model": "other"}))  # pushes the first out
    again = parser.parse(compact(session_body(4)))
    assert parser.hits == 0
    assert all(a is b for a, b in zip(again.messages, first.messages, strict=False))
    assert again.messages[len(first.messages)] not in first.messages


def test_a_message_orjson_cannot_read_is_never_found_by_its_bytes() -> None:
    """`1e400` is read by `loads_clean` as infinity: what the message says is not what
    its bytes say, so they name no kept message, and the body is not sent as is."""
    parser = RequestParser()
    body = session_body(1)
    body["messages"][1] = {"role": "user", "content": "big", "n": 1}
    raw = compact(body).replace(b'"n":1', b'"n":1e400')
    first = parser.parse(raw)
    other = raw.replace(b'"model":"kimi"', b'"model":"other"')  # extends nothing
    second = parser.parse(other)
    for request, sent in ((first, raw), (second, other)):
        assert request == parse_chat_request(json.loads(sent)) and request.raw is None
    assert parser.misses == 2 and second.messages[1] is not first.messages[1]
    assert second.messages[0] is first.messages[0] and second.messages[2] is first.messages[2]


def test_the_messages_kept_are_bounded_by_their_bytes() -> None:
    one = len(compact(step(0)[1]))
    parser = RequestParser(max_message_bytes=40 * one)
    for turn in range(0, 60, 6):
        parser.parse(compact({**session_body(turn), "model": f"m{turn}"}))
    kept = parser._messages
    assert 0 < kept.bytes <= 40 * one and kept.bytes == sum(map(len, kept))
    huge = {"role": "user", "content": "x" * (3 * one)}  # over a sixteenth: never kept
    parser.parse(compact({"model": "m", "messages": [huge]}))
    assert all(len(data) <= 40 * one // 16 for data in kept)
    few = RequestParser(max_messages=10)
    for turn in range(0, 60, 6):
        few.parse(compact({**session_body(turn), "model": f"m{turn}"}))
    assert len(few._messages) == 10
    assert few._messages.bytes == sum(map(len, few._messages))
