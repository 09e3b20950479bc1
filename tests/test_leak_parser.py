"""Tests for proxy_core.repairs.leak_parser (leaked Kimi tool-call tokens)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from proxy_core.repairs.leak_parser import (
    ARG_BEGIN,
    CALL_BEGIN,
    CALL_END,
    KIMI_MARKERS,
    SECTION_BEGIN,
    SECTION_BEGIN_SINGULAR,
    SECTION_END,
    SECTION_END_SINGULAR,
    LeakedCall,
    LeakParser,
    Segment,
    StrayMarker,
    TextSegment,
    merge_text,
    normalise_tool_name,
    parse_leaks,
    schemas_from_openai_tools,
    strip_markers,
)
from proxy_core.repairs.leak_parser import _TRAIL_REV_MAX  # the longest id and its blanks

# ----------------------------------------------------------------------------- helpers


def run(chunks: list[str], **kw: Any) -> list[Segment]:
    """Feed ``chunks`` then finish; return merged segments."""
    p = LeakParser(**kw)
    out: list[Segment] = []
    for c in chunks:
        out += p.feed(c)
    out += p.finish()
    return merge_text(out)


def split_at(text: str, cuts: list[int]) -> list[str]:
    """Split ``text`` at the sorted positions ``cuts``."""
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def reassemble(segs: list[Segment]) -> str:
    """Concatenate text, call raw and stray raw: must equal the input."""
    parts: list[str] = []
    for s in segs:
        if isinstance(s, TextSegment):
            parts.append(s.text)
        elif isinstance(s, LeakedCall):
            parts.append(s.raw)
        else:
            parts.append(s.raw)
    return "".join(parts)


def texts(segs: list[Segment]) -> str:
    return "".join(s.text for s in segs if isinstance(s, TextSegment))


def calls(segs: list[Segment]) -> list[tuple[str, Any]]:
    return [(s.name, json.loads(s.arguments)) for s in segs if isinstance(s, LeakedCall)]


def check(text: str) -> list[Segment]:
    """Parse whole, one char at a time and at every 2-way split; all must agree."""
    whole = run([text])
    assert reassemble(whole) == text
    assert run(list(text)) == whole
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == whole, i
    return whole


# ----------------------------------------------------------------------------- grammar variants

BEDROCK_SPACED = (
    "I'll look at the entry point first. "
    "<|tool_calls_section_begin|> <|tool_call_begin|> functions.read:0 <|tool_call_argument_begin|> "
    '{"filePath": "/repo/src/index.ts"} <|tool_call_end|> <|tool_calls_section_end|>'
)


def test_canonical_section() -> None:
    text = (
        "Let me check.\n"
        "<|tool_calls_section_begin|>\n"
        '<|tool_call_begin|>functions.bash:3<|tool_call_argument_begin|>{"command": "ls -la", "description": "List"}<|tool_call_end|>\n'
        "<|tool_calls_section_end|>"
    )
    segs = check(text)
    assert texts(segs) == "Let me check.\n"
    assert calls(segs) == [("bash", {"command": "ls -la", "description": "List"})]
    call = next(s for s in segs if isinstance(s, LeakedCall))
    assert call.raw_id == "functions.bash:3"
    assert call.raw.startswith(CALL_BEGIN) and call.raw.endswith(CALL_END)
    assert call.form == "kimi" and not call.args_repaired
    assert segs[1] == StrayMarker("<|tool_calls_section_begin|>\n")
    assert segs[-1] == StrayMarker("\n<|tool_calls_section_end|>")


def test_singular_section_tokens() -> None:
    text = (
        "Reading.<|tool_call_section_begin|><|tool_call_begin|>functions.read:1"
        '<|tool_call_argument_begin|>{"filePath":"a.txt"}<|tool_call_end|><|tool_call_section_end|>Done.'
    )
    segs = check(text)
    assert texts(segs) == "Reading.Done."
    assert calls(segs) == [("read", {"filePath": "a.txt"})]


def test_spaces_and_newlines_between_every_token() -> None:
    segs = check(BEDROCK_SPACED)
    assert texts(segs) == "I'll look at the entry point first. "
    assert calls(segs) == [("read", {"filePath": "/repo/src/index.ts"})]
    text = BEDROCK_SPACED.replace(" <|", "\n\n  <|").replace("|> ", "|>\n \n")
    segs = check(text)
    assert calls(segs) == [("read", {"filePath": "/repo/src/index.ts"})]
    assert texts(segs) == "I'll look at the entry point first.\n\n  "  # text before the first marker stays text


def test_bare_call_without_section() -> None:
    text = 'Sure.<|tool_call_begin|>functions.glob:0<|tool_call_argument_begin|>{"pattern": "**/*.py"}<|tool_call_end|>'
    segs = check(text)
    assert texts(segs) == "Sure."
    assert calls(segs) == [("glob", {"pattern": "**/*.py"})]


def test_bare_calls_whitespace_between_is_consumed_but_prose_after_is_kept() -> None:
    one = '<|tool_call_begin|>functions.a:0<|tool_call_argument_begin|>{"x": 1}<|tool_call_end|>'
    two = '<|tool_call_begin|>functions.b:1<|tool_call_argument_begin|>{"y": 2}<|tool_call_end|>'
    segs = check(one + "\n" + two + "\n\nAll done.")
    assert calls(segs) == [("a", {"x": 1}), ("b", {"y": 2})]
    assert texts(segs) == "\n\nAll done."


def test_missing_section_end() -> None:
    text = (
        "Writing the file.\n<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.write:4"
        '<|tool_call_argument_begin|>{"filePath": "x.py", "content": "print(1)\\n"}<|tool_call_end|>\n'
    )
    p = LeakParser()
    segs = merge_text(p.feed(text) + p.finish())
    assert reassemble(segs) == text
    assert texts(segs) == "Writing the file.\n"  # trailing newline inside the open section is consumed
    assert calls(segs) == [("write", {"filePath": "x.py", "content": "print(1)\n"})]
    assert p.saw_markers and p.calls_found == 1
    check(text)


def test_several_calls_in_one_section() -> None:
    text = (
        "<|tool_calls_section_begin|>"
        '<|tool_call_begin|>functions.read:5<|tool_call_argument_begin|>{"filePath": "a"}<|tool_call_end|>'
        '<|tool_call_begin|>functions.read:6<|tool_call_argument_begin|>{"filePath": "b"}<|tool_call_end|>'
        '<|tool_call_begin|>functions.grep:7<|tool_call_argument_begin|>{"pattern": "TODO"}<|tool_call_end|>'
        "<|tool_calls_section_end|>"
    )
    segs = check(text)
    assert texts(segs) == ""
    assert calls(segs) == [("read", {"filePath": "a"}), ("read", {"filePath": "b"}), ("grep", {"pattern": "TODO"})]
    assert [s.raw_id for s in segs if isinstance(s, LeakedCall)] == [
        "functions.read:5",
        "functions.read:6",
        "functions.grep:7",
    ]


def test_json_arguments_spanning_lines() -> None:
    args = {"filePath": "/repo/a.py", "oldString": "def f():\n    pass", "newString": "def f():\n    return 1"}
    text = (
        "<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.edit:2<|tool_call_argument_begin|>"
        + json.dumps(args, indent=2)
        + "\n<|tool_call_end|>\n<|tool_calls_section_end|>"
    )
    segs = check(text)
    assert calls(segs) == [("edit", args)]


@pytest.mark.parametrize(
    ("raw_name", "name", "raw_id"),
    [
        ("functions.github.create_issue:2", "github.create_issue", "functions.github.create_issue:2"),
        ("functions.mcp-server_tool:1", "mcp-server_tool", "functions.mcp-server_tool:1"),
        ("read_file", "read_file", None),
        ("read_file:12", "read_file", "read_file:12"),
        ("functions.read", "read", None),
        ("  functions.web.fetch-page:0 \n", "web.fetch-page", "functions.web.fetch-page:0"),
        ("context7_resolve-library-id", "context7_resolve-library-id", None),
    ],
)
def test_names(raw_name: str, name: str, raw_id: str | None) -> None:
    assert normalise_tool_name(raw_name) == (name, raw_id)
    text = f"{CALL_BEGIN}{raw_name}{ARG_BEGIN}{{}}{CALL_END}"
    segs = check(text)
    (call,) = [s for s in segs if isinstance(s, LeakedCall)]
    # raw_id is the id as written; normalise_tool_name's second value says whether it had an index.
    assert (call.name, call.raw_id, call.arguments) == (name, raw_name.strip(), "{}")


def test_missing_call_end_before_next_call_and_before_section_end() -> None:
    text = (
        "<|tool_calls_section_begin|>"
        '<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{"filePath": "a"}\n'
        '<|tool_call_begin|>functions.read:1<|tool_call_argument_begin|>{"filePath": "b"}'
        "<|tool_calls_section_end|>after"
    )
    segs = check(text)
    assert calls(segs) == [("read", {"filePath": "a"}), ("read", {"filePath": "b"})]
    assert texts(segs) == "after"
    first = next(s for s in segs if isinstance(s, LeakedCall))
    assert first.raw.endswith('{"filePath": "a"}')  # the call ends where its object closes


def test_call_without_arguments() -> None:
    segs = check("<|tool_call_begin|>functions.todoread:0<|tool_call_end|>")
    assert calls(segs) == [("todoread", {})]
    segs = check("<|tool_call_begin|>functions.todoread:0<|tool_call_argument_begin|><|tool_call_end|>")
    assert calls(segs) == [("todoread", {})]


def test_tokens_in_reasoning_inside_unclosed_think() -> None:
    text = (
        "<think>I need the config. "
        '<|tool_call_begin|>functions.read:3<|tool_call_argument_begin|>{"filePath": "cfg.toml"}<|tool_call_end|>'
    )
    segs = check(text)
    assert texts(segs) == "<think>I need the config. "
    assert calls(segs) == [("read", {"filePath": "cfg.toml"})]
    assert texts(check("a</think>b")) == "a</think>b"


# ----------------------------------------------------------------------------- XML form

XML_FIXTURE = "<function=read_file>\n<parameter=target_file>FILE1</parameter>\n</function>"


def test_xml_form_from_vercel_fixture() -> None:
    segs = check("I'll read the file.\n\n" + XML_FIXTURE)
    assert texts(segs) == "I'll read the file.\n\n"
    (call,) = [s for s in segs if isinstance(s, LeakedCall)]
    assert call.name == "read_file" and json.loads(call.arguments) == {"target_file": "FILE1"}
    assert call.form == "xml" and call.raw == XML_FIXTURE and call.raw_id is None


def test_xml_wrapped_in_tool_call_and_multiline_values() -> None:
    text = (
        "Creating it now.\n<tool_call>\n<function=write>\n<parameter=filePath>\n/repo/hello.py\n</parameter>\n"
        "<parameter=content>\ndef main():\n    print('hi')\n\n</parameter>\n</function>\n</tool_call>\nDone."
    )
    segs = check(text)
    assert texts(segs) == "Creating it now.\n\nDone."
    assert calls(segs) == [("write", {"filePath": "/repo/hello.py", "content": "def main():\n    print('hi')\n"})]
    (call,) = [s for s in segs if isinstance(s, LeakedCall)]
    assert call.raw.startswith("<tool_call>") and call.raw.endswith("</tool_call>")


def test_xml_several_calls() -> None:
    text = (
        "<function=read><parameter=filePath>a</parameter></function>\n"
        "<function=functions.read:7><parameter=filePath>b</parameter></function>"
    )
    segs = check(text)
    assert calls(segs) == [("read", {"filePath": "a"}), ("read", {"filePath": "b"})]
    assert [s.raw_id for s in segs if isinstance(s, LeakedCall)] == [None, "functions.read:7"]
    assert texts(segs) == ""


def test_xml_value_typing_without_schema() -> None:
    text = (
        "<function=read><parameter=offset>10</parameter><parameter=replaceAll>true</parameter>"
        "<parameter=ratio>-1.5e3</parameter><parameter=obj>{\"a\": 1}</parameter>"
        "<parameter=nothing>null</parameter><parameter=padded> 7 </parameter></function>"
    )
    (call,) = [s for s in check(text) if isinstance(s, LeakedCall)]
    assert json.loads(call.arguments) == {
        "offset": 10,
        "replaceAll": True,
        "ratio": -1500.0,
        "obj": '{"a": 1}',
        "nothing": "null",
        "padded": " 7 ",
    }


def test_xml_value_typing_with_schema() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "write",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string"},
                        "todos": {"type": "array"},
                        "limit": {"type": ["integer", "null"]},
                        "mode": {"enum": ["a", "b"]},
                    },
                },
            },
        }
    ]
    schemas = schemas_from_openai_tools(tools)
    text = (
        "<function=write><parameter=content>42</parameter><parameter=todos>[1, 2]</parameter>"
        "<parameter=limit>5</parameter><parameter=mode>true</parameter></function>"
    )
    (call,) = [s for s in run([text], tool_schemas=schemas) if isinstance(s, LeakedCall)]
    assert json.loads(call.arguments) == {"content": "42", "todos": [1, 2], "limit": 5, "mode": "true"}


@pytest.mark.parametrize(
    "text",
    [
        "In Qwen's format you write <function=name> and then parameters.",
        "<function=read_file>\n<parameter=target_file>FILE1",  # unclosed at end of stream
        "<function=read_file> then prose",
        "<function=bad name>",
        "<tool_call> is how Hermes starts a call",
        "<tool_call>\n<function=x>\n<parameter=a>1</parameter>",
    ],
)
def test_xml_lookalikes_are_text(text: str) -> None:
    segs = check(text)
    assert segs == [TextSegment(text)]


# ----------------------------------------------------------------------------- stray markers & lookalikes


@pytest.mark.parametrize("marker", [SECTION_END, SECTION_END_SINGULAR, ARG_BEGIN, CALL_END])
def test_lone_markers_are_stray(marker: str) -> None:
    p = LeakParser()
    segs = merge_text(p.feed(f"Hello {marker}world") + p.finish())
    assert segs == [TextSegment("Hello "), StrayMarker(marker), TextSegment("world")]
    assert p.saw_markers and p.calls_found == 0


@pytest.mark.parametrize("marker", [SECTION_BEGIN, SECTION_BEGIN_SINGULAR])
def test_empty_section_is_stray(marker: str) -> None:
    end = SECTION_END if marker == SECTION_BEGIN else SECTION_END_SINGULAR
    segs = check(f"a {marker}\n{end} b")
    assert segs == [TextSegment("a "), StrayMarker(f"{marker}\n{end}"), TextSegment(" b")]


@pytest.mark.parametrize(
    "text",
    [
        "<|tool_call_beginning|>",
        "<|tool|> <|im_end|> <|im_middle|>",
        "if a <| b and c |> d",
        "x <|tool_call_begin| y",
        "<|tool_calls_section_begin",
        "html <div><p>x</p></div> and a<b>c",
        "use `<|tool_call_begin|>` to start, `<|tool_calls_section_end|>` to end",
        "<tool_call_begin|>",
        "",
    ],
)
def test_marker_lookalikes_pass_through(text: str) -> None:
    p = LeakParser()
    segs = merge_text(p.feed(text) + p.finish())
    assert segs == ([TextSegment(text)] if text else [])
    assert not p.saw_markers
    check(text)


def test_invalid_name_makes_call_begin_stray() -> None:
    text = "<|tool_call_begin|>this is not a name <|tool_call_argument_begin|>{}"
    segs = check(text)
    assert segs[0] == StrayMarker(CALL_BEGIN)
    # The argument-begin marker next to an object is evidence of its own: the
    # word before it is the id (which names no offered tool: tool_names decides).
    assert segs[1] == TextSegment("this is not a ")
    assert [(s.raw_id, s.arguments) for s in segs if isinstance(s, LeakedCall)] == [("name", "{}")]


def test_long_prose_after_call_begin_is_released_early() -> None:
    p = LeakParser()
    out = p.feed("<|tool_call_begin|>" + "word " * 200)
    assert texts(out).startswith("word word")
    assert p.buffered < 50


# ----------------------------------------------------------------------------- end of stream


def test_unterminated_call_with_json_args_is_a_call() -> None:
    text = 'Ok <|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{"filePath": "a"}\n'
    segs = check(text)
    assert calls(segs) == [("read", {"filePath": "a"})]
    assert texts(segs) == "Ok "


@pytest.mark.parametrize(
    "tail",
    [
        '<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{"filePath": "a',
        "<|tool_call_begin|>functions.read:0",
        "<|tool_call_begin|>",
        "<|tool_call_beg",
    ],
)
def test_unterminated_unparseable_call_is_returned_as_text(tail: str) -> None:
    p = LeakParser()
    first = p.feed("Ok " + tail)
    assert "Ok ".startswith(texts(first))  # the word before a partial marker may wait
    segs = merge_text(first + p.finish())
    # Its text goes on as text; the markers in it never do.
    assert texts(segs) == "Ok " + strip_markers(tail)
    assert reassemble(segs) == "Ok " + tail
    assert not calls(segs)


def test_malformed_arguments_are_repaired() -> None:
    text = (
        "<|tool_calls_section_begin|>"
        '<|tool_call_begin|>functions.read:0<|tool_call_argument_begin|>{"filePath": "a"}{"filePath": "b"}<|tool_call_end|>'
        '<|tool_call_begin|>functions.read:1<|tool_call_argument_begin|>{"filePath": "c", <|tool_call_end|>'
        "<|tool_call_begin|>functions.read:2<|tool_call_argument_begin|>garbage<|tool_call_end|>"
        "<|tool_calls_section_end|>"
    )
    segs = check(text)
    assert calls(segs) == [("read", {"filePath": "a"}), ("read", {"filePath": "c"}), ("read", {"_raw": "garbage"})]
    assert all(s.args_repaired for s in segs if isinstance(s, LeakedCall))


def test_repeated_argument_begin_is_dropped_from_arguments() -> None:
    text = '<|tool_call_begin|>functions.x:0<|tool_call_argument_begin|><|tool_call_argument_begin|>{"a": 1}<|tool_call_end|>'
    segs = check(text)
    assert calls(segs) == [("x", {"a": 1})]


# ----------------------------------------------------------------------------- streaming behaviour


def test_holds_back_only_a_possible_partial_marker() -> None:
    p = LeakParser()
    assert p.feed("Let me check <|tool_") == [TextSegment("Let me ")]
    assert p.buffered == len("check <|tool_")  # an argument-begin marker takes the word before it
    # No marker starts "<|tool_x", but it is the last word now: it waits for what follows.
    assert p.feed("x") == [TextSegment("check ")]
    assert p.buffered == len("<|tool_x")
    assert p.feed(" and more") == [TextSegment("<|tool_x and ")]


def held_back(fed: str, shown: str) -> str:
    assert fed.startswith(shown)
    return fed[len(shown):]


def test_plain_text_waits_for_at_most_its_last_word() -> None:
    p = LeakParser()
    # A host that sends several words a delta: all but the last go out at once.
    assert texts(p.feed(" the quick brown fox")) == " the quick brown "
    assert texts(p.feed(" jumps")) == "fox"  # a token: what was held goes, it waits
    assert texts(p.feed(" over the lazy dog ")) == " jumps over the lazy "
    assert p.buffered == len("dog ")
    assert texts(p.feed("y" * 300)) == "dog " + "y" * (300 - _TRAIL_REV_MAX)
    assert p.buffered == _TRAIL_REV_MAX  # a word longer than any id is not held whole
    assert texts(p.finish()) == "y" * _TRAIL_REV_MAX


plain_words = st.text(st.sampled_from(list("ab.:_- \n\t")), max_size=60)


@given(st.lists(plain_words, max_size=12))
@settings(max_examples=300)
def test_property_plain_text_holds_back_only_its_last_word(deltas: list[str]) -> None:
    """Whatever the deltas, text with no marker in it is shown up to its last word (a
    token's leading blank may wait with it): that word, and the blanks after it, is what
    an argument-begin marker in the next delta would take as its id."""
    p = LeakParser()
    fed = shown = ""
    for delta in deltas:
        fed += delta
        shown += texts(p.feed(delta))
        held = held_back(fed, shown)
        assert " " not in held.strip(), (fed, shown)
        assert len(held) <= _TRAIL_REV_MAX
    assert shown + texts(p.finish()) == fed and p.buffered == 0


def test_the_word_before_an_argument_begin_marker_is_the_id() -> None:
    p = LeakParser()
    out = p.feed("I'll reply. channel_reply:0")
    out += p.feed('<|tool_call_argument_begin|>{"text": "hi"}<|tool_call_end|>')
    out += p.finish()
    assert texts(out) == "I'll reply. "
    (call,) = [s for s in out if isinstance(s, LeakedCall)]
    assert (call.name, call.raw_id, json.loads(call.arguments)) == ("channel_reply", "channel_reply:0", {"text": "hi"})


def test_split_at_every_byte_of_a_realistic_stream() -> None:
    text = (
        "Let me look.\n\n<|tool_calls_section_begin|>\n<|tool_call_begin|>functions.github.create_issue:2"
        '<|tool_call_argument_begin|>{"title": "Bug: ünïcode", "body": "line1\\nline2"}<|tool_call_end|>\n'
        '<|tool_call_begin|>functions.mcp-server_tool:1<|tool_call_argument_begin|>{"q": "x"}<|tool_call_end|>\n'
        "<|tool_calls_section_end|>\n" + XML_FIXTURE + "\nThat's it."
    )
    segs = check(text)
    assert calls(segs) == [
        ("github.create_issue", {"title": "Bug: ünïcode", "body": "line1\nline2"}),
        ("mcp-server_tool", {"q": "x"}),
        ("read_file", {"target_file": "FILE1"}),
    ]
    assert texts(segs) == "Let me look.\n\n\n\nThat's it."
    # Every 3-way split too.
    for i in range(0, len(text), 7):
        for j in range(i, len(text), 11):
            assert run([text[:i], text[i:j], text[j:]]) == segs


def test_feed_after_finish_raises() -> None:
    p = LeakParser()
    p.finish()
    with pytest.raises(RuntimeError):
        p.feed("x")
    assert p.finish() == []


def test_parse_leaks_matches_streaming() -> None:
    assert merge_text(parse_leaks(BEDROCK_SPACED)) == run(list(BEDROCK_SPACED))


# ----------------------------------------------------------------------------- properties

FRAGMENTS = [
    *KIMI_MARKERS,
    *(m[:k] for m in KIMI_MARKERS for k in (1, 2, 5, 12)),
    "<function=read>",
    "<function=",
    "<parameter=path>",
    "<parameter=",
    "</parameter>",
    "</function>",
    "<tool_call>",
    "</tool_call>",
    "functions.read:0",
    "functions.github.create_issue:2",
    '{"a": 1}',
    '{"a": "',
    "}",
    " ",
    "\n",
    "`",
    "<",
    "|>",
    "<|im_end|>",
    "</think>",
]

soup = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=30).map("".join)


@st.composite
def chunkings(draw: st.DrawFn, text: str) -> list[str]:
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=12))
    return split_at(text, cuts)


@given(soup, st.data())
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_property_soup_never_crashes_never_loses_text_and_is_chunking_invariant(
    text: str, data: st.DataObject
) -> None:
    whole = run([text])
    assert reassemble(whole) == text
    chunked = run(data.draw(chunkings(text)))
    assert chunked == whole
    assert run(list(text)) == whole
    for s in whole:
        if isinstance(s, LeakedCall):
            assert isinstance(json.loads(s.arguments), dict)
            # Every call had evidence: a marker, or the complete XML form.
            assert s.form == "xml" or strip_markers(s.raw) != s.raw


@given(st.text(max_size=300), st.data())
@settings(max_examples=200)
def test_property_any_text_chunking_invariant(text: str, data: st.DataObject) -> None:
    whole = run([text])
    assert reassemble(whole) == text
    assert run(data.draw(chunkings(text))) == whole


# Round trip ------------------------------------------------------------------

OPENER_LIKE = ("<|tool_call", "<function=", "<tool_call>", "</tool_call>")
TEXT_ALPHABET = st.one_of(st.sampled_from(list("<>|{}\"\n `=/_:.abc ")), st.characters(blacklist_categories=("Cs",)))
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}(?:[.\-][a-z0-9_]{1,8}){0,2}", fullmatch=True)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=15),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=8,
)
SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false")
xml_values = st.text(max_size=30).filter(lambda v: "</parameter>" not in v and not SCALAR.fullmatch(v))
ws = st.sampled_from(["", " ", "\n", "\n\n", " \n ", "\t"])


def prose(min_nonws: bool) -> st.SearchStrategy[str]:
    """Surrounding text that contains no opener (and, if asked, some non-space)."""
    return st.text(TEXT_ALPHABET, max_size=25).filter(
        lambda t: not any(o in t for o in OPENER_LIKE) and (not min_nonws or t == "" or t.strip() != "")
    )


@st.composite
def kimi_block(draw: st.DrawFn, at_eof: bool) -> tuple[str, list[tuple[str, Any]]]:
    n = draw(st.integers(1, 3))
    section = draw(st.sampled_from([None, "plural", "singular"]))
    sec_end = section is not None and draw(st.booleans())
    gap = lambda: draw(ws)  # noqa: E731
    parts: list[str] = []
    expected: list[tuple[str, Any]] = []
    if section:
        parts += [SECTION_BEGIN if section == "plural" else SECTION_BEGIN_SINGULAR, gap()]
    for i in range(n):
        name = draw(names)
        args = draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))
        args_text = json.dumps(args, indent=draw(st.sampled_from([None, 1])), ensure_ascii=draw(st.booleans()))
        assume("<|" not in args_text)
        rendered = draw(st.sampled_from(["functions.{}:{}", "{}:{}", "functions.{}", "{}"])).format(name, i)
        last = i == n - 1
        may_skip_end = not last or sec_end or at_eof
        call_end = not may_skip_end or draw(st.booleans())
        parts += [CALL_BEGIN, gap(), rendered, gap(), ARG_BEGIN, gap(), args_text, gap()]
        if call_end:
            parts.append(CALL_END)
        if not last:
            parts.append(gap())
        expected.append((name, args))
    if sec_end:
        parts += [gap(), SECTION_END if section == "plural" else SECTION_END_SINGULAR]
    return "".join(parts), expected


@st.composite
def xml_block(draw: st.DrawFn) -> tuple[str, list[tuple[str, Any]]]:
    n = draw(st.integers(1, 2))
    parts: list[str] = []
    expected: list[tuple[str, Any]] = []
    for i in range(n):
        name = draw(names)
        params = draw(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), xml_values, max_size=3))
        wrapped = draw(st.booleans())
        body = [f"<function={name}>"]
        for k, v in params.items():
            raw_ok = not v.startswith("\n") and not v.endswith("\n")
            val = v if raw_ok and draw(st.booleans()) else f"\n{v}\n"
            body += [draw(ws), f"<parameter={k}>{val}</parameter>"]
        body += [draw(ws), "</function>"]
        call = "".join(body)
        if wrapped:
            call = "<tool_call>" + draw(ws) + call + draw(ws) + "</tool_call>"
        parts.append(call)
        if i < n - 1:
            parts.append(draw(ws))
        expected.append((name, params))
    return "".join(parts), expected


@given(st.data())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_property_round_trip(data: st.DataObject) -> None:
    n_blocks = data.draw(st.integers(1, 3))
    text_parts = [data.draw(prose(min_nonws=False))]
    expected_calls: list[tuple[str, Any]] = []
    expected_text = text_parts[0]
    for b in range(n_blocks):
        last = b == n_blocks - 1
        after = data.draw(prose(min_nonws=True))
        if not last:
            assume(after.strip())
        if data.draw(st.booleans()):
            block, exp = data.draw(kimi_block(at_eof=last and after == ""))
        else:
            block, exp = data.draw(xml_block())
        assume(not text_parts[-1].endswith("`"))
        text_parts += [block, after]
        expected_calls += exp
        expected_text += after
    text = "".join(text_parts)
    segs = run(data.draw(chunkings(text)))
    assert reassemble(segs) == text
    assert calls(segs) == expected_calls
    assert texts(segs) == expected_text


def test_huge_call_body_in_tiny_deltas_is_linear() -> None:
    import time

    content = "x = 1  # a line of code\n" * 80_000  # ~2 MB
    for text in (
        "ok <|tool_call_begin|>functions.write:0<|tool_call_argument_begin|>"
        + json.dumps({"filePath": "big.py", "content": content})
        + "<|tool_call_end|> after",
        "ok <function=write><parameter=content>\n" + content + "\n</parameter></function> after",
    ):
        p = LeakParser()
        t0 = time.perf_counter()
        out: list[Segment] = []
        for i in range(0, len(text), 20):
            out += p.feed(text[i : i + 20])
            assert p.buffered < len(text)
        out += p.finish()
        assert time.perf_counter() - t0 < 3.0
        segs = merge_text(out)
        assert texts(segs) == "ok  after"
        (call,) = [s for s in segs if isinstance(s, LeakedCall)]
        assert json.loads(call.arguments)["content"] == content
