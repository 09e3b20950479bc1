"""Leaked tool calls in shapes nobody listed: the grammar fuzzed, names resolved, a corpus.

The fuzzer builds a call from Kimi's grammar with the simulator's own
generator (`proxy_core.simulator.leak_grammar`), driven by hypothesis: any
subset of markers dropped (but one that tells a call from prose), markers
respelled, the id mangled, the whole split across deltas at any character
and between reasoning and content. Whatever it draws, the client never sees
a marker, and either gets a call to an offered tool with arguments that
parse, or the text unchanged with a repair note; and the outcome does not
depend on the chunking.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core.repairs.history import Note
from proxy_core.repairs.leak_parser import MARKER_RE
from proxy_core.repairs.profiles import KIMI
from proxy_core.repairs.stream_repair import StreamRepairer
from proxy_core.repairs.tool_names import ToolCatalog
from proxy_core.simulator.leak_grammar import ID_FORMS, id_text, wild_leak
from proxy_core.simulator.script import plan_step
from proxy_core.stream import FinishPart, ReasoningPart, StreamPart, TextPart, ToolCallPart

FIXTURES = Path(__file__).parent / "fixtures"
OPENCODE_TOOLS = json.loads((FIXTURES / "opencode_request.json").read_text())["tools"]
OFFERED = ToolCatalog.from_openai(OPENCODE_TOOLS)
#: Examples per fuzz property (the issue asks for 10,000; SWITCHBOARD_FUZZ_EXAMPLES overrides).
EXAMPLES = int(os.environ.get("SWITCHBOARD_FUZZ_EXAMPLES", "10000"))


def _tool(name: str, *required: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    props = {k: {"type": "string"} for k in (*required, *optional)}
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": props, "required": list(required)}}}


EXTRA_TOOLS = {t["function"]["name"]: t for t in (
    _tool("exec", "command"), _tool("get_weather", "location"), _tool("channel_reply", "text"),
    _tool("read_file", "target_file"))}


def _catalog(names: list[str]) -> ToolCatalog:
    by_name = {t["function"]["name"]: t for t in OPENCODE_TOOLS} | EXTRA_TOOLS
    return ToolCatalog.from_openai([by_name[n] for n in names])


def repair(parts: list[StreamPart], tools: ToolCatalog = OFFERED) -> tuple[list[StreamPart], list[Note]]:
    notes: list[Note] = []
    repairer = StreamRepairer(KIMI, tools, notes.append)
    out = [p for part in parts for p in repairer.feed(part)]
    return out + repairer.flush(), notes


def merged(parts: list[StreamPart]) -> list[tuple[str, str]]:
    """The parts as (kind, text-or-call) with adjacent text of one kind merged."""
    out: list[tuple[str, str]] = []
    for part in parts:
        if isinstance(part, (TextPart, ReasoningPart)):
            kind = type(part).__name__
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] + part.text)
            else:
                out.append((kind, part.text))
        elif isinstance(part, ToolCallPart):
            out.append(("call", f"{part.name}{part.arguments}"))
        else:
            out.append((type(part).__name__, repr(part)))
    return out


def chunked(reasoning: str, content: str, cuts: random.Random) -> list[StreamPart]:
    """The two channels as deltas cut at random characters, reasoning first."""
    parts: list[StreamPart] = []
    for kind, text in ((ReasoningPart, reasoning), (TextPart, content)):
        i = 0
        while i < len(text):
            step = cuts.randint(1, 12)
            parts.append(kind(text[i:i + step]))
            i += step
    return parts


def calls_of(parts: list[StreamPart]) -> list[tuple[str, Any]]:
    return [(p.name, json.loads(p.arguments)) for p in parts if isinstance(p, ToolCallPart)]


def text_of(parts: list[StreamPart]) -> str:
    return "".join(p.text for p in parts if isinstance(p, (TextPart, ReasoningPart)))


def squeeze(text: str) -> str:
    return "".join(text.split())


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(("ids", "arguments", "name", "how"), [
    (["read"], {}, "read", "name"),
    (["functions.read:3"], {}, "read", "id"),
    (["functionsbash5"], {}, "bash", "id"),      # sglang 21377: both separators lost
    (["functions.webfetch12"], {}, "webfetch", "id"),
    (["Read"], {}, "read", "id"),
    (["TODO-WRITE:1"], {}, "todowrite", "id"),
    (["Done.glob:4"], {}, "glob", "id"),        # an id glued to the prose before it
    (["call00003"], {"filePath": "a"}, "read", "arguments"),   # sglang 25358
    (["3f2b8c1e-0d4e-4e0a-9b1a-2c3d4e5f6a7b"], {"filePath": "a", "content": "x"}, "write", "arguments"),
    ([None], {"filePath": "a", "oldString": "x", "newString": "y"}, "edit", "arguments"),
    ([""], {"pattern": "*.py"}, "glob", "arguments"),   # tighter than grep
    ([], {"pattern": "def", "include": "*.py"}, "grep", "arguments"),
    ([], {"url": "https://x"}, "webfetch", "arguments"),
])
def test_names_resolve_from_the_id_then_from_the_arguments(ids, arguments, name, how) -> None:
    resolved = OFFERED.resolve(ids, json.dumps(arguments))
    assert resolved is not None and (resolved.name, resolved.how) == (name, how)


@pytest.mark.parametrize(("ids", "arguments"), [
    (["deploy"], {"env": "prod"}),           # no such tool, and nothing fits the arguments
    (["call7"], {"path": "a"}),              # path alone: glob and grep both need pattern
    ([], {"filePath": "a", "bogus": 1}),     # a key no tool has
    (["x"], "not json"),
])
def test_no_offered_tool_fits(ids, arguments) -> None:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    assert OFFERED.resolve(ids, args) is None


def test_an_offered_name_with_digits_beats_the_same_name_without() -> None:
    tools = ToolCatalog.from_openai([_tool("exec", "command"), _tool("exec5", "command")])
    assert tools.resolve(["functionsexec5"], "{}").name == "exec5"  # type: ignore[union-attr]
    assert tools.resolve(["functionsexec7"], "{}").name == "exec"  # type: ignore[union-attr]


def test_two_tools_that_fold_alike_are_never_guessed_between() -> None:
    tools = ToolCatalog.from_openai([_tool("read_file", "path"), _tool("read-file", "path")])
    assert tools.resolve(["readfile"], "{}") is None
    assert tools.resolve(["read_file"], "{}").name == "read_file"  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- the corpus


def corpus() -> list[Path]:
    return sorted((FIXTURES / "leaks").glob("*.json"))


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.stem)
def test_corpus_shape(path: Path) -> None:
    shape = json.loads(path.read_text())
    assert shape["source"], "every shape names the public report it comes from"
    tools = _catalog(shape["tools"])
    if "deltas" in shape:
        variants = [[TextPart(d) for d in shape["deltas"]]]
        reasoning, content = "", "".join(shape["deltas"])
    else:
        reasoning, content = shape.get("reasoning", ""), shape["content"]
        variants = [chunked(reasoning, content, random.Random(seed)) for seed in range(25)]
        variants.append([ReasoningPart(reasoning), TextPart(content)])
    results = []
    for parts in variants:
        out, notes = repair([*parts, FinishPart("stop")], tools)
        assert calls_of(out) == [tuple(c) for c in shape["calls"]], path.stem
        assert "".join(p.text for p in out if isinstance(p, TextPart)) == shape["text"]
        assert "".join(p.text for p in out if isinstance(p, ReasoningPart)) == shape.get("reasoning_text", "")
        assert not MARKER_RE.search(text_of(out))
        assert out[-1] == FinishPart("tool_calls" if shape["calls"] else "stop")
        assert notes, "every repaired shape is reported"
        results.append(merged(out))
    if len({json.dumps([r for r in res if r[0] != "call"]) for res in results}) != 1:
        pytest.fail("the outcome depends on the chunking")


# ----------------------------------------------------------------------------- the fuzzer

TASK_CALLS = [(option.tool, option.arguments) for index in range(10)
              for option in plan_step(index, "/work").options[:1]]
words = st.text(st.sampled_from(list("abcdefghijklmnop")), min_size=1, max_size=7)
sentences = st.builds(lambda ws, end: " ".join(ws) + end, st.lists(words, min_size=1, max_size=5),
                      st.sampled_from([". ", "!\n", "? ", ".\n\n", ":\n"]))
prose = st.lists(sentences, max_size=3).map("".join)


def _expected(name: str, arguments: dict[str, Any], id_form: str) -> str | None:
    """The tool a correct repair calls, or None when the call must go on as text."""
    if name not in OFFERED:
        return None
    if id_form in ID_FORMS[:5]:
        return name
    resolved = OFFERED.resolve([], json.dumps(arguments))
    return resolved.name if resolved else None


@st.composite
def wild_turns(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any], str, str]:
    """(reasoning, content, tool, arguments, id form, prose) for one leaked call between prose."""
    rng = draw(st.randoms(use_true_random=False))
    if draw(st.integers(0, 9)) == 0:  # now and then a tool nobody offered
        name, arguments = "deploy", {"env": draw(st.text(max_size=8))}
    else:
        name, arguments = draw(st.sampled_from(TASK_CALLS))
    leak = wild_leak(name, arguments, draw(st.integers(0, 40)), rng)
    before = draw(prose)
    before = before + "\n" if before and not before[-1].isspace() else before
    after = draw(prose)
    if leak.reasoning:
        reasoning, content = before + leak.reasoning, leak.content + after
    else:
        reasoning, content = "", before + leak.content + after
    return reasoning, content, name, arguments, leak.id_form, before + after


@given(wild_turns(), st.randoms(use_true_random=False))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_wild_leaks_never_show_markers_and_never_call_what_was_not_offered(
        turn: tuple[str, str, str, dict[str, Any], str, str], cuts: random.Random) -> None:
    reasoning, content, name, arguments, id_form, prose_text = turn
    out, notes = repair([*chunked(reasoning, content, cuts), FinishPart("stop")])
    shown = text_of(out)
    assert not MARKER_RE.search(shown), shown
    expected = _expected(name, arguments, id_form)
    if expected is not None:
        assert calls_of(out) == [(expected, arguments)]
        assert squeeze(shown) == squeeze(prose_text)
        assert out[-1] == FinishPart("tool_calls")
        assert any(n.kind == "leaked_tool_call" for n in notes)
    else:
        assert calls_of(out) == []
        assert squeeze(shown) == squeeze(MARKER_RE.sub("", reasoning + content))
        assert notes and out[-1] == FinishPart("stop")
    # The same stream cut elsewhere gives the same result.
    again, _ = repair([*chunked(reasoning, content, random.Random(len(shown))), FinishPart("stop")])
    assert merged(again) == merged(out)


@given(st.randoms(use_true_random=False), st.sampled_from(TASK_CALLS), st.integers(0, 99))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_a_leak_is_parsed_the_same_however_it_is_chunked(
        rng: random.Random, call: tuple[str, dict[str, Any]], index: int) -> None:
    name, arguments = call
    leak = wild_leak(name, arguments, index, rng)
    whole, _ = repair([ReasoningPart(leak.reasoning), TextPart(leak.content), FinishPart("stop")])
    by_char = [ReasoningPart(c) for c in leak.reasoning] + [TextPart(c) for c in leak.content]
    split, _ = repair([*by_char, FinishPart("stop")])
    assert calls_of(split) == calls_of(whole)
    assert text_of(split) == text_of(whole)


def test_the_generator_covers_the_grammar() -> None:
    rng = random.Random(7)
    leaks = [wild_leak("read", {"filePath": "a"}, i, rng) for i in range(2000)]
    assert {leak.id_form for leak in leaks} == set(ID_FORMS)
    for part in ("section_begin", "call_begin", "arg_begin", "call_end", "section_end"):
        assert any(part in leak.kept for leak in leaks) and any(part not in leak.kept for leak in leaks)
    assert all(leak.kept & {"call_begin", "arg_begin", "call_end"} for leak in leaks)
    assert any(leak.reasoning and leak.content for leak in leaks)
    assert id_text("functions{name}{idx}", "exec", 5) == "functionsexec5"


@pytest.mark.parametrize(("content", "call", "shown"), [
    # Found by the fuzzer: a sentence that ends in a tool's name is prose, not the call's id.
    ('glob. <｜ tool call argument begin ｜>{"filePath": "/w/a.py", "content": "x"}<｜ tool_call_end ｜>',
     ("write", {"filePath": "/w/a.py", "content": "x"}), "glob."),
    ('Use glob:\n<|tool_call_argument_begin|>{"pattern": "*.py"}<|tool_call_end|>',
     ("glob", {"pattern": "*.py"}), "Use glob:"),
    ('glob! <|tool_call_argument_begin|>{"env": ""}<|tool_call_end|>', None, 'glob! {"env": ""}'),
])
def test_a_word_with_sentence_punctuation_before_a_marker_is_prose(
        content: str, call: tuple[str, dict[str, Any]] | None, shown: str) -> None:
    out, _notes = repair([*chunked("", content, random.Random(0)), FinishPart("stop")])
    assert calls_of(out) == ([call] if call else [])
    assert squeeze(text_of(out)) == squeeze(shown)
