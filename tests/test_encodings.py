"""`PartEncodings`: the upstream body is byte for byte what encoding it whole gives,
however the parts are shared between turns, and only new parts are encoded."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.contents import encode
from proxy_core.encodings import PartEncodings

_text = st.text(max_size=20)
_value = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(
    allow_nan=False) | _text, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
_part = st.dictionaries(_text, _value, max_size=4) | _value


def whole(body: dict[str, Any]) -> bytes:
    """The body encoded whole: orjson, or what orjson refuses (integers past 64 bits)
    as `contents.encode` writes it, UTF-8 like orjson's."""
    return encode(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(_part, max_size=6), st.lists(_part, max_size=6),
       st.dictionaries(st.sampled_from(["model", "stream", "temperature"]), _value))
def test_a_body_sharing_parts_with_the_last_encodes_as_a_whole_body_does(
        first: list[Any], more: list[Any], top: dict[str, Any]) -> None:
    encodings = PartEncodings()
    turn1 = {**top, "messages": first, "tools": first[:2]}
    turn2 = {**top, "messages": first + more, "tools": first[:2]}
    assert encodings.body(turn1) == whole(turn1)
    assert encodings.body(turn2) == whole(turn2)


def test_only_parts_not_seen_before_are_encoded() -> None:
    encodings = PartEncodings()
    history = [{"role": "user", "content": f"message {i}"} for i in range(50)]
    encodings.body({"model": "m", "messages": history})
    with mock.patch("proxy_core.encodings.orjson.dumps", wraps=orjson.dumps) as dumps:
        new = {"role": "user", "content": "new"}
        out = encodings.body({"model": "m", "messages": [*history, new]})
    assert out == orjson.dumps({"model": "m", "messages": [*history, new]})
    assert dumps.call_count == 2  # the new message, and the body around the kept ones


def test_kept_encodings_are_bounded() -> None:
    encodings = PartEncodings(max_bytes=4096)
    for i in range(200):
        encodings.body({"messages": [{"role": "user", "content": f"{i:0>100}"}]})
    assert encodings._kept.bytes <= 4096 and 1 < len(encodings) < 200
    by_count = PartEncodings(max_items=10)
    for i in range(200):
        by_count.body({"messages": [{"role": "user", "content": f"{i}"}]})
    assert len(by_count) == 10


def test_a_lone_surrogate_is_escaped_as_before() -> None:
    body = {"messages": [{"role": "user", "content": "bad \ud800 half"}]}
    assert PartEncodings().body(body) == json.dumps(body, separators=(",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(_part, min_size=1, max_size=8),
       st.lists(st.tuples(st.sampled_from(["grow", "cut", "edit", "copy", "other"]),
                          st.integers(0, 8)), max_size=8))
def test_lists_that_grow_shrink_and_are_parsed_anew_encode_as_whole_bodies_do(
        first: list[Any], steps: list[tuple[str, int]]) -> None:
    """Turn after turn: a list one step longer (the kept encodings plus the new items),
    cut short, with an item in the middle changed, parsed anew (equal items, new
    objects), or another list."""
    encodings = PartEncodings()
    messages = list(first)
    for op, n in [("grow", 0), *steps]:
        if op == "grow":
            messages = messages + first[:n]
        elif op == "cut":
            messages = messages[:n]
        elif op == "edit" and 0 < n < len(messages) - 1:  # the same first and last item
            messages = [*messages[:n], {"edited": n}, *messages[n + 1:]]
        elif op == "copy":
            messages = json.loads(json.dumps(messages)) if n % 2 else list(messages)
        else:
            messages = [{"role": "user", "content": str(n)}, *messages]
        turn = {"model": "m", "messages": messages, "tools": messages[:1]}
        assert encodings.body(turn) == whole(turn)


def test_a_longer_list_takes_the_last_ones_encodings_and_looks_up_only_its_new_items() -> None:
    encodings = PartEncodings()
    history = [{"role": "user", "content": f"message {i}"} for i in range(50)]
    encodings.body({"model": "m", "messages": history})
    new = {"role": "user", "content": "new"}
    with mock.patch.object(PartEncodings, "_fragment", wraps=encodings._fragment) as encoded:
        out = encodings.body({"model": "m", "messages": [*history, new]})
    assert out == orjson.dumps({"model": "m", "messages": [*history, new]})
    assert [call.args for call in encoded.call_args_list] == [(new,)]


def test_kept_lists_are_bounded() -> None:
    encodings = PartEncodings()
    for i in range(100):  # a new list each time (another first item)
        encodings.body({"messages": [{"role": "user", "content": f"{i}"}]})
    assert len(encodings._lists.sizes()) == encodings.LISTS
