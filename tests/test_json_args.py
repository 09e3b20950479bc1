"""Tests for proxy_core.repairs.json_args (tool-call arguments repair)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.repairs.json_args import (
    normalise_json_object,
    repair_json_arguments,
    repair_json_arguments_detailed,
)


def loads(text: str) -> Any:
    """Parse strictly, the way a client would."""
    return json.loads(text)


# ----------------------------------------------------------------------------- valid input


def test_valid_object_is_unchanged() -> None:
    text, changed = repair_json_arguments('{"filePath": "/repo/a.py", "limit": 20}')
    assert not changed
    assert loads(text) == {"filePath": "/repo/a.py", "limit": 20}


def test_valid_object_with_whitespace_counts_as_unchanged() -> None:
    text, changed = repair_json_arguments('\n  {\n  "a": [1, 2],\n  "b": {"c": null}\n}\n ')
    assert not changed
    assert text == '{"a": [1, 2], "b": {"c": null}}'


def test_unicode_is_kept_readable() -> None:
    text, changed = repair_json_arguments('{"msg": "h\\u00e9llo 日本"}')
    assert not changed
    assert text == '{"msg": "héllo 日本"}'


def test_lone_surrogate_falls_back_to_ascii_escapes() -> None:
    text, _ = repair_json_arguments('{"s": "\\ud800"}')
    text.encode("utf-8")  # must not raise
    assert loads(text) == {"s": "\ud800"}


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_becomes_empty_object(text: str) -> None:
    assert repair_json_arguments(text) == ("{}", True)


def test_null_becomes_empty_object() -> None:
    assert repair_json_arguments("null") == ("{}", True)


def test_double_encoded_object_is_decoded() -> None:
    text, changed = repair_json_arguments(json.dumps(json.dumps({"command": "ls -la"})))
    assert changed
    assert loads(text) == {"command": "ls -la"}


@pytest.mark.parametrize("text", ["[1, 2]", "42", "true", '"just a string"'])
def test_valid_non_object_is_wrapped(text: str) -> None:
    result = repair_json_arguments_detailed(text)
    assert result.status == "wrapped"
    assert loads(result.text) == {"_raw": text}


# ----------------------------------------------------------------------------- repairs


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"filePath": "/repo/a.py"', {"filePath": "/repo/a.py"}),
        ('{"filePath": "/repo/a', {"filePath": "/repo/a"}),
        ('{"content": "line1\\nli', {"content": "line1\nli"}),
        ('{"content": "abc\\', {"content": "abc"}),
        ('{"content": "caf\\u00', {"content": "caf"}),
        ('{"a": {"b": [1, 2, {"c": "d"', {"a": {"b": [1, 2, {"c": "d"}]}}),
        ('{"a": 1, "b', {"a": 1}),
        ('{"a": 1, "b":', {"a": 1}),
        ('{"a": 1, "b": ', {"a": 1}),
        ('{"a": 1, "b": tru', {"a": 1}),
        ('{"a": 1,', {"a": 1}),
        ('{"a": [1, 2,', {"a": [1, 2]}),
        ("{", {}),
        ('{"a', {}),
    ],
)
def test_truncated_objects_are_closed(text: str, expected: dict[str, Any]) -> None:
    out, changed = repair_json_arguments(text)
    assert changed
    assert loads(out) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1,}', {"a": 1}),
        ('{"a": [1, 2,], "b": 3,}', {"a": [1, 2], "b": 3}),
    ],
)
def test_trailing_commas(text: str, expected: dict[str, Any]) -> None:
    out, changed = repair_json_arguments(text)
    assert changed and loads(out) == expected


def test_two_concatenated_objects_take_the_first() -> None:
    out, changed = repair_json_arguments('{"a":1}{"b":2}')
    assert changed and loads(out) == {"a": 1}


def test_same_object_twice_takes_one() -> None:
    out, _ = repair_json_arguments('{"path": "x"}\n{"path": "x"}')
    assert loads(out) == {"path": "x"}


@pytest.mark.parametrize(
    "text",
    [
        '{"path": "x"} <|tool_call_end|>',
        '{"path": "x"}}',
        '{"path": "x"}]',
        '{"path": "x"} trailing words',
        'functions.read:0 {"path": "x"}',
        'json\n{"path": "x"}',
    ],
)
def test_junk_around_one_object(text: str) -> None:
    out, changed = repair_json_arguments(text)
    assert changed and loads(out) == {"path": "x"}


def test_code_fence_removed() -> None:
    out, changed = repair_json_arguments('```json\n{"path": "x"}\n```')
    assert changed and loads(out) == {"path": "x"}


def test_raw_control_characters_in_strings() -> None:
    out, changed = repair_json_arguments('{"content": "line1\nline2\ttab"}')
    assert changed and loads(out) == {"content": "line1\nline2\ttab"}


def test_nan_becomes_null() -> None:
    out, changed = repair_json_arguments('{"x": NaN, "y": 1}')
    assert changed and loads(out) == {"x": None, "y": 1}


def test_python_literal_dict() -> None:
    out, changed = repair_json_arguments("{'path': 'x', 'recursive': True, 'depth': None}")
    assert changed and loads(out) == {"path": "x", "recursive": True, "depth": None}


@pytest.mark.parametrize("text", ["not json at all", "{]", "[1, 2", "<|tool_call_end|>", "{'a': set()}"])
def test_unrepairable_is_wrapped(text: str) -> None:
    result = repair_json_arguments_detailed(text)
    assert result.status == "wrapped" and result.changed
    assert loads(result.text) == {"_raw": text}


def test_detailed_notes() -> None:
    assert repair_json_arguments_detailed('{"a": 1}').status == "valid"
    assert repair_json_arguments_detailed('{"a": 1').status == "repaired"
    assert "trailing" in repair_json_arguments_detailed('{"a": 1} x').note


def test_normalise_json_object() -> None:
    assert normalise_json_object({"a": "é"}) == '{"a": "é"}'


# ----------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@given(st.text(max_size=200))
@settings(max_examples=400)
def test_property_always_returns_an_object(text: str) -> None:
    out, changed = repair_json_arguments(text)
    assert isinstance(loads(out), dict)
    if not changed:
        assert loads(out) == json.loads(text)


@given(json_objects, st.sampled_from([None, 2]), st.booleans())
def test_property_valid_objects_round_trip(obj: dict[str, Any], indent: int | None, ascii_: bool) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=ascii_)
    out, changed = repair_json_arguments(text)
    assert not changed
    assert loads(out) == obj


@given(json_objects, st.data())
@settings(max_examples=300)
def test_property_any_truncation_gives_an_object(obj: dict[str, Any], data: st.DataObject) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    cut = data.draw(st.integers(1, len(text)))
    out, changed = repair_json_arguments(text[:cut])
    parsed = loads(out)
    assert isinstance(parsed, dict)
    if cut == len(text):
        assert not changed and parsed == obj
    else:
        # Closing a truncation never invents keys.
        assert set(parsed) <= set(obj) or parsed == {"_raw": text[:cut]}


@given(json_objects, st.text(max_size=30))
def test_property_trailing_garbage_keeps_first_object(obj: dict[str, Any], tail: str) -> None:
    text = json.dumps(obj) + tail
    out, _ = repair_json_arguments(text)
    assert loads(out) == obj
