"""Streaming recogniser for Kimi K2 tool calls leaked into streamed text.

Kimi's native tool-call tokens sometimes reach the client inside ``content``
(or ``reasoning_content``) instead of being parsed into ``tool_calls``, and
hosts drop, respell or mangle parts of the grammar on the way.
:class:`LeakParser` receives text in arbitrary deltas and splits it into
plain text, recovered calls and consumed marker text. Pure Python, stdlib
only, no I/O. Which tool a call names is not decided here: the parser
reports the id text as written, and :mod:`.tool_names` resolves it against
the tools the request offered.

The grammar, as a host may emit it (reference §2 and §6)::

    leak    := SECTION_BEGIN? call (ws call)* SECTION_END?
    call    := CALL_BEGIN? id? ARG_BEGIN? args CALL_END?
    args    := a JSON object (possibly several lines), or text up to a marker

Every part may be missing; what makes text a call is **evidence**: a call
begin marker, an argument-begin marker, or a call-end marker right after a
JSON object. Without any of the three, ``write:0{"a": 1}`` is text.

Markers are recognised by their structure, not from a list: ``<|`` (or the
full-width ``<｜``), optional spaces, ``tool``, a separator (``_``, ``-``,
space, ``▁`` or none), ``call`` or ``calls``, optionally ``section`` or
``argument``/``args``, then ``begin``/``start``/``end``, optional spaces and
``|>``; case-insensitive. ``section`` (or the plural ``calls`` without an
argument part) makes a section marker. So ``<|tool_calls_section_begin|>``,
``<|tool_call_section_begin|>``, ``<| tool call begin |>`` and
``<|TOOL_CALLS_BEGIN|>`` are all markers; ``<|tool_call_beginning|>``,
``<|im_end|>`` and ``<tool_call_begin|>`` are text. A marker immediately
preceded by a backtick (inline code in prose) is text.

Decisions:

* **Ids.** The id is the run of id characters (no whitespace, quotes,
  brackets, ``<>``, ``,;|\\`` or backtick; at most 256) before the
  argument-begin marker or the JSON object, after a call begin marker or in
  front of either. It may be ``functions.NAME:IDX``, ``NAME:IDX``,
  ``functionsNAMEIDX``, ``callNNNNN``, a UUID or anything else. To find an
  id that precedes an argument-begin marker with no call begin, text keeps
  its last word (and the whitespace after it) back until the next delta
  shows it is not followed by one: one word of delay, never more.
* **Arguments** that start with ``{`` end where that object closes (strings
  and escapes respected); a second object right after it stays part of the
  same call (``json_args`` keeps the first: a duplicated stream). Other
  arguments run to the next marker. A marker always ends the arguments,
  even inside an unclosed string. A JSON object in prose is held only until
  it closes and the next non-blank character shows no marker follows.
* **End of stream.** A call cut by the end of the stream is a call only if
  its arguments are a complete JSON object; otherwise all its text is text.
* **Stray markers.** Section markers, argument-begin or call-end markers
  that belong to no call, whitespace between tokens inside a section or
  between calls, and a call begin marker not followed by a valid id are
  consumed as :class:`StrayMarker` segments, never shown as text.
  Whitespace between a marker and following prose stays text.
* **Invariant.** Concatenating ``TextSegment.text``, ``LeakedCall.raw`` and
  ``StrayMarker.raw`` in order reproduces the input exactly, and the
  segments do not depend on how the input was chunked once adjacent
  ``TextSegment`` s are merged (stray markers are merged already).
* **XML form** ``<function=NAME><parameter=K>V</parameter></function>``
  (optionally inside ``<tool_call>``) is recognised only when complete. One
  leading and one trailing newline of each value is dropped (Qwen3-Coder
  convention). With a schema for the tool, a parameter whose type includes
  ``string`` stays a string and other typed parameters are JSON-decoded
  when possible; without one, only exact JSON numbers and ``true``/``false``
  are decoded, since a file's content that happens to look like JSON is far
  more common than an object-typed parameter.
* ``</think>`` and other tags are left alone.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal

from .json_args import normalise_json_object, repair_json_arguments_detailed

__all__ = [
    "ARG_BEGIN",
    "CALL_BEGIN",
    "CALL_END",
    "KIMI_MARKERS",
    "MARKER_RE",
    "SECTION_BEGIN",
    "SECTION_BEGIN_SINGULAR",
    "SECTION_END",
    "SECTION_END_SINGULAR",
    "LeakParser",
    "LeakedCall",
    "Segment",
    "StrayMarker",
    "TextSegment",
    "merge_text",
    "normalise_tool_name",
    "parse_leaks",
    "schemas_from_openai_tools",
    "strip_markers",
]

#: The canonical spellings (Moonshot's tokenizer); the recogniser accepts more.
SECTION_BEGIN: Final = "<|tool_calls_section_begin|>"
SECTION_BEGIN_SINGULAR: Final = "<|tool_call_section_begin|>"
SECTION_END: Final = "<|tool_calls_section_end|>"
SECTION_END_SINGULAR: Final = "<|tool_call_section_end|>"
CALL_BEGIN: Final = "<|tool_call_begin|>"
ARG_BEGIN: Final = "<|tool_call_argument_begin|>"
CALL_END: Final = "<|tool_call_end|>"
KIMI_MARKERS: Final = (
    SECTION_BEGIN,
    SECTION_BEGIN_SINGULAR,
    SECTION_END,
    SECTION_END_SINGULAR,
    CALL_BEGIN,
    ARG_BEGIN,
    CALL_END,
)
_XML_FUNC: Final = "<function="
_XML_WRAP: Final = "<tool_call>"
_XML_WRAP_CLOSE: Final = "</tool_call>"
_XML_FUNC_CLOSE: Final = "</function>"
_XML_PARAM: Final = "<parameter="
_XML_PARAM_CLOSE: Final = "</parameter>"

# ----------------------------------------------------------------------------- segments


@dataclass(frozen=True, slots=True)
class TextSegment:
    """Plain text to pass on unchanged."""

    text: str


@dataclass(frozen=True, slots=True)
class LeakedCall:
    """A tool call recovered from leaked tokens.

    Attributes:
        name: the tool name as the id spells it (``functions.`` prefix and a
            trailing ``:N`` stripped); ``""`` when there was no id. Resolve it
            against the offered tools with :mod:`.tool_names`.
        arguments: JSON object text (normalised or repaired); when
            ``args_ok`` is false, the ``{"_raw": ...}`` wrapping of text that
            is no JSON object.
        raw_id: the id text as written (stripped), or ``None`` if there was none.
        raw: the exact leaked text the call was parsed from.
        form: ``"kimi"`` (special tokens) or ``"xml"`` (``<function=...>``).
        args_repaired: whether the arguments needed a repair (not merely
            re-serialisation).
        args_ok: whether the arguments are a JSON object, as sent or repaired.
        lead: with no call begin marker, how many characters at the start of
            ``raw`` are the word (and blanks) taken from the text before the
            arguments as the id; 0 otherwise. A caller that finds the word
            names no tool may give it back to the text.
    """

    name: str
    arguments: str
    raw_id: str | None
    raw: str
    form: str = "kimi"
    args_repaired: bool = False
    args_ok: bool = True
    lead: int = 0


@dataclass(frozen=True, slots=True)
class StrayMarker:
    """Marker text consumed outside any call (section tokens, whitespace
    between tokens, orphan ``<|tool_call_end|>`` ...). Never shown as text."""

    raw: str


Segment = TextSegment | LeakedCall | StrayMarker


# ----------------------------------------------------------------------------- the marker grammar


class _Tok(Enum):
    """Kinds of opener tokens."""

    SECTION_BEGIN = "section_begin"
    SECTION_END = "section_end"
    CALL_BEGIN = "call_begin"
    ARG_BEGIN = "arg_begin"
    CALL_END = "call_end"
    XML_FUNC = "xml_func"
    XML_WRAP = "xml_wrap"
    BRACE = "brace"


_BAR = "[|\uff5c]"
_SEP = "[\\s_\\-\u2581]*"
# After the "<"; the "<" stays outside the case-insensitive group so that
# the regex engine can skip to it at C speed.
_MARKER_REST: Final = (
    "(?i:" + _BAR + r"\s*tool" + _SEP + "calls?" + _SEP
    + "(?:section" + _SEP + "|arg(?:ument)?s?" + _SEP + ")?"
    + r"(?:begin|start|end)\s*" + _BAR + ">)"
)
#: One Kimi marker, in any spelling the grammar allows.
MARKER_RE: Final = re.compile("<" + _MARKER_REST)
_OPENER_RE: Final = re.compile("<(?:" + _MARKER_REST + "|function=|tool_call>)")
_PARTIAL_SHAPE_RE: Final = re.compile(
    "<" + _BAR + "(?P<body>[\\w\\s\\-▁]{0,40}?)(?P<close>" + _BAR + ")?\\Z")
_XML_PREFIXES: Final = frozenset(w[:i] for w in (_XML_FUNC, _XML_WRAP) for i in range(1, len(w)))
#: Every marker with separators and spaces taken out, and their prefixes.
_SKELETONS: Final = frozenset(
    f"toolcall{plural}{middle}{edge}"
    for plural in ("", "s")
    for middle in ("", "section", "arg", "args", "argument", "arguments")
    for edge in ("begin", "start", "end"))
_SKELETON_PREFIXES: Final = frozenset(w[:i] for w in _SKELETONS for i in range(len(w) + 1))
_PARTIAL_MAX: Final = 45
_NONWS_RE: Final = re.compile(r"\S")
_IDCHARS = "[^\\s<>{}()\\[\\]\"'`,;|\\\\]"
_ID_MAX: Final = 256
_WS_MAX: Final = 16
#: The end of a text read backwards: whitespace, then an id (what an
#: argument-begin marker may follow).
_TRAIL_REV_RE: Final = re.compile(r"\s{0,%d}%s{0,%d}" % (_WS_MAX, _IDCHARS, _ID_MAX))
_TRAIL_REV_MAX: Final = _WS_MAX + _ID_MAX
_NAME_RE: Final = re.compile(r"\s*(%s{1,%d})\s*\Z" % (_IDCHARS, _ID_MAX))
_NAME_PREFIX_RE: Final = re.compile(r"\s*%s{0,%d}\s*\Z" % (_IDCHARS, _ID_MAX))
# An object's start: "{" then "}" or a whole key and its colon (so "{" in
# prose or code is not held back on the chance of a call).
_OBJECT_START_RE: Final = re.compile(r'\{\s*(?:\}|"(?:[^"\\\n]|\\.){0,256}"\s*:)')
_OBJECT_PREFIX_RE: Final = re.compile(r'\{\s*(?:"(?:[^"\\\n]|\\.){0,256}(?:\\|"\s*)?)?\Z')
_XML_OPENER_RE: Final = re.compile(r"<(?:function=|tool_call>)")
_STRUCT_RE: Final = re.compile(r'[{}"]')
_STRING_RE: Final = re.compile(r'["\\]')
_ID_SUFFIX_RE: Final = re.compile(r":\d+\Z")
_XML_NAME_RE: Final = re.compile(r"([^\s<>]{1,256})>")
_XML_NAME_PREFIX_RE: Final = re.compile(r"[^\s<>]{0,256}")
_XML_PNAME_RE: Final = re.compile(r"([^<>\n]{1,256})>")
_XML_PNAME_PREFIX_RE: Final = re.compile(r"[^<>\n]{0,256}")
_SCALAR_RE: Final = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false")
_KINDS: dict[str, _Tok] = {_XML_FUNC: _Tok.XML_FUNC, _XML_WRAP: _Tok.XML_WRAP, "{": _Tok.BRACE}
_DECODER: Final = json.JSONDecoder(strict=False)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: What `json_args` calls valid: strict JSON without NaN or Infinity.
_STRICT_DECODER: Final = json.JSONDecoder(parse_constant=_no_constants)
_SPACES: Final = frozenset(" \t\r\n\f\v")
#: Largest JSON object held back on the chance that a call-end marker follows it.
_CANDIDATE_MAX: Final = 1 << 18


def _kind(token: str) -> _Tok:
    """The kind of an opener token (markers classified by their words, once each)."""
    kind = _KINDS.get(token)
    if kind is None:
        words = re.sub(r"[^a-z]", "", token.lower())  # e.g. "toolcallssectionbegin"
        begins = not words.endswith("end")
        if "section" in words or (words.startswith("toolcalls") and "arg" not in words):
            kind = _Tok.SECTION_BEGIN if begins else _Tok.SECTION_END
        elif "arg" in words:
            kind = _Tok.ARG_BEGIN if begins else _Tok.CALL_END
        else:
            kind = _Tok.CALL_BEGIN if begins else _Tok.CALL_END
        if len(_KINDS) < 4096:
            _KINDS[token] = kind
    return kind


def _partial(buf: str, q: int) -> bool:
    """Whether ``buf[q:]`` (which starts with ``<``) may still grow into a marker or XML opener."""
    return q >= 0 and len(buf) - q <= _PARTIAL_MAX and _partial_tail(buf[q:])


@functools.lru_cache(maxsize=4096)
def _partial_tail(tail: str) -> bool:
    if not tail.startswith("<"):
        return False
    if len(tail) == 1 or tail in _XML_PREFIXES:
        return True
    m = _PARTIAL_SHAPE_RE.match(tail)
    if m is None:
        return False
    skeleton = re.sub("[\\s_\\-\u2581]", "", m.group("body")).lower()
    return skeleton in (_SKELETONS if m.group("close") else _SKELETON_PREFIXES)


def _id_end(char: str) -> bool:
    """Whether an id may end with ``char``: ids end in a letter, a digit, ``_`` or ``-``
    (``functions.read:3``, ``call00003``, a uuid); a word that ends in sentence
    punctuation is prose."""
    return char.isalnum() or char in "_-"


def _inert(delta: str) -> bool:
    """Whether a ``<`` or ``{`` in ``delta`` can open nothing, now or with more text
    (code and markup are full of both: they take the fast path too)."""
    if "<" in delta:
        if _OPENER_RE.search(delta) is not None:
            return False
        q = delta.rfind("<", max(0, len(delta) - _PARTIAL_MAX))
        if q >= 0 and _partial(delta, q):
            return False
    b = delta.find("{")
    while b >= 0:
        if _OBJECT_START_RE.match(delta, b) or (
                len(delta) - b < 300 and _OBJECT_PREFIX_RE.match(delta, b)):
            return False
        b = delta.find("{", b + 1)
    return True


def strip_markers(text: str) -> str:
    """``text`` without any Kimi marker (what a call looks like as plain text)."""
    return MARKER_RE.sub("", text)


def normalise_tool_name(raw: str) -> tuple[str, str | None]:
    """Return ``(name, raw_id)`` for a leaked ``functions.name:N`` string.

    >>> normalise_tool_name("functions.github.create_issue:2")
    ('github.create_issue', 'functions.github.create_issue:2')
    >>> normalise_tool_name("mcp-server_tool")
    ('mcp-server_tool', None)
    """
    s = raw.strip()
    m = _ID_SUFFIX_RE.search(s)
    raw_id = s if m else None
    name = s[: m.start()] if m else s
    if name.startswith("functions.") and len(name) > len("functions."):
        name = name[len("functions.") :]
    return name, raw_id


def schemas_from_openai_tools(tools: Iterable[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    """Map tool name -> JSON schema of its parameters from an OpenAI ``tools`` list."""
    out: dict[str, Mapping[str, Any]] = {}
    for tool in tools or ():
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(fn, Mapping) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out[fn["name"]] = params if isinstance(params, Mapping) else {}
    return out


def _schema_types(schema: Mapping[str, Any] | None, param: str) -> set[str] | None:
    """JSON-schema types declared for ``param``, or ``None`` if unknown."""
    if not schema:
        return None
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return None
    spec = props.get(param)
    if not isinstance(spec, Mapping):
        return None
    types: set[str] = set()
    for s in (spec, *(spec.get("anyOf") or ()), *(spec.get("oneOf") or ())):
        if isinstance(s, Mapping):
            t = s.get("type")
            if isinstance(t, str):
                types.add(t)
            elif isinstance(t, list):
                types.update(x for x in t if isinstance(x, str))
            elif "enum" in s and all(isinstance(v, str) for v in s["enum"]):
                types.add("string")
    return types or None


def _xml_value(value: str, types: set[str] | None) -> Any:
    """Type one XML parameter value (see module docstring)."""
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    if types is None:
        if _SCALAR_RE.fullmatch(value):
            return json.loads(value)
        return value
    if "string" in types:
        return value
    try:
        return json.loads(value.strip())
    except ValueError:
        return value


# ----------------------------------------------------------------------------- JSON object extent


class _ObjectScan:
    """Finds where a JSON object closes, fed in pieces (strings and escapes respected)."""

    __slots__ = ("depth", "in_string", "escape")

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False

    def scan(self, text: str, i: int, end: int) -> int:
        """Consume ``text[i:end]``; return the index after the closing brace, or -1."""
        if self.escape:
            if i >= end:
                return -1
            self.escape = False
            i += 1
        while i < end:
            if self.in_string:
                m = _STRING_RE.search(text, i, end)
                if m is None:
                    return -1
                if m.group() == "\\":
                    if m.end() >= end:
                        self.escape = True
                        return -1
                    i = m.end() + 1
                    continue
                self.in_string = False
                i = m.end()
                continue
            m = _STRUCT_RE.search(text, i, end)
            if m is None:
                return -1
            ch = m.group()
            i = m.end()
            if ch == '"':
                self.in_string = True
            elif ch == "{":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth <= 0:
                    return i
        return -1


# ----------------------------------------------------------------------------- parser


class _S(Enum):
    """Parser states."""

    TEXT = "text"
    BETWEEN = "between"  # after a section begin or a call: whitespace is held
    NAME = "name"        # after a call begin: the id
    ARGS = "args"        # arguments that run to the next marker
    OBJECT = "object"    # arguments that are a JSON object, until it closes
    AFTER = "after"      # the object closed: what follows decides
    XML = "xml"


class _X(Enum):
    """Phases of the XML sub-parser."""

    WRAP = "wrap"  # after <tool_call>, expecting <function=
    NAME = "name"
    BODY = "body"  # expecting <parameter= or </function>
    PNAME = "pname"
    PVALUE = "pvalue"
    AFTER = "after"  # after </function>, optional </tool_call>


class LeakParser:
    """Incremental splitter of text and leaked tool calls.

    ``feed`` returns only what is certain; it holds back a possible partial
    marker, the last word of text, a JSON object that a call-end marker may
    follow, and any unfinished call. ``finish`` flushes at end of stream.
    """

    __slots__ = (
        "_buf", "_pos", "_prev", "_state", "_in_section", "_out", "_stray", "_saw", "_calls",
        "_word", "_cur", "_scan", "_begin", "_argmark", "_id", "_lead", "_args_from", "_args_pieces",
        "_obj", "_obj_end", "_x_phase", "_x_open", "_x_open_end", "_x_params", "_x_pname",
        "_x_vstart", "_x_name", "_schemas", "_finished", "_parts", "_parts_len", "_tail",
        "_unscanned", "_parsed", "_obj_start",
    )

    def __init__(self, tool_schemas: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Create a parser.

        Args:
            tool_schemas: optional tool name -> parameters JSON schema (see
                :func:`schemas_from_openai_tools`), used to type XML-form
                parameter values.
        """
        self._schemas = tool_schemas or {}
        self._buf = ""
        self._pos = 0
        self._prev = ""  # last character before the buffer
        self._state = _S.TEXT
        self._in_section = False
        self._out: list[Segment] = []
        self._stray: list[str] = []
        self._saw = False
        self._calls = 0
        # In the text state with at most the last word of text held (no partial
        # marker, no object), so a delta without "<" or "{" takes the fast path.
        self._word = True
        # The call being read: where its raw text starts (``_pos``), whether
        # a call begin / argument-begin marker opened it, its id.
        self._cur = 0
        self._scan = 0
        self._begin = False
        self._argmark = False
        self._id = ""
        self._lead = 0
        self._args_from = 0
        self._args_pieces: list[str] = []
        self._obj = _ObjectScan()
        self._obj_end = 0
        self._obj_start = 0
        self._x_phase = _X.NAME
        self._x_open = 0
        self._x_open_end = 0
        self._x_params: dict[str, Any] = {}
        self._x_pname = ""
        self._x_vstart = 0
        self._x_name = ""
        self._finished = False
        # Deltas received while a long call body is held, not yet joined into
        # ``_buf`` (avoids quadratic re-concatenation), and the last few
        # characters of all held text (to detect a terminator cheaply).
        self._parts: list[str] = []
        self._unscanned: list[str] = []  # parked deltas of an object, not yet scanned
        self._parts_len = 0
        self._parsed: dict[str, Any] | None = None  # the arguments' object, when decoded whole
        self._tail = ""

    # ------------------------------------------------------------------ public API

    @property
    def saw_markers(self) -> bool:
        """True once any marker was consumed (a call or a stray marker)."""
        return self._saw

    @property
    def calls_found(self) -> int:
        """Number of :class:`LeakedCall` emitted so far."""
        return self._calls

    @property
    def buffered(self) -> int:
        """Characters currently held back."""
        return len(self._buf) - self._pos + self._parts_len

    def feed(self, delta: str) -> list[Segment]:
        """Add a stream delta; return the segments that are now certain."""
        if self._word and (("<" not in delta and "{" not in delta) or _inert(delta)):
            # Fast path, plain text. An argument-begin marker in a later delta
            # would take the word before it as its id, so that word (and the
            # blanks after it) must still be here; all before it goes out now.
            # A delta that starts one word (a token: " quick") is held whole,
            # and what was held goes out as it is: nothing is copied. A delta of
            # several words goes out but for its last; one that continues a
            # word joins what is held (up to the longest id). No marker can
            # open the held text (any "<" or "{" in it is inert), so `_prev`
            # needs no update here.
            held = self._buf
            space = delta.rstrip().rfind(" ")  # the delta's last word starts after it
            if space >= 0 and len(delta) <= _TRAIL_REV_MAX:
                if space == 0 or (head := delta[:space + 1]).isspace():  # one word starts
                    self._buf = delta
                    if not held:
                        return []
                    shown = held
                else:  # what the join below gives, without it: ~30% fewer instructions
                    shown = held + head if held else head
                    self._buf = delta[space + 1:]
            else:
                text = held + delta
                k = max(text.rstrip().rfind(" ") + 1, len(text) - _TRAIL_REV_MAX)
                if k <= 0:
                    self._buf = text
                    return []
                shown = text[:k]
                self._buf = text[k:]
            if self._stray:
                out: list[Segment] = [StrayMarker("".join(self._stray)), TextSegment(shown)]
                self._stray.clear()
                return out
            return [TextSegment(shown)]
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not delta:
            return []
        state = self._state
        if state is _S.ARGS or state is _S.OBJECT or (state is _S.XML and self._x_phase is _X.PVALUE):
            # Inside a (possibly huge) call body: only look closer when the
            # delta could end it.
            if self._park(delta):
                return []
        self._buf = self._joined() + delta
        self._word = False
        self._run(eof=False)
        return self._take()

    def finish(self) -> list[Segment]:
        """End of stream: resolve everything held and return the rest."""
        if self._finished:
            return []
        self._buf = self._joined()
        self._word = False
        self._run(eof=True)
        self._finished = True
        self._flush_stray()
        return self._take()

    # ------------------------------------------------------------------ call bodies

    def _park(self, delta: str) -> bool:
        """Keep ``delta`` aside if it cannot end the call body being read."""
        probe = self._tail + delta
        # A marker split across deltas shows whole in the probe once its last
        # piece arrives (a partial one waits, parked, in `_tail`).
        if "<" in probe and (MARKER_RE.search(probe) is not None or _XML_PARAM_CLOSE in probe):
            return False
        if self._state is _S.OBJECT:
            if not self._evidence() and self.buffered > _CANDIDATE_MAX:
                return False
            if self._scan < len(self._buf):
                return False  # held text not yet scanned
            if "}" in delta:  # it may close here: bring the scan up to date
                for piece in self._unscanned:
                    self._obj.scan(piece, 0, len(piece))  # no "}" in it: cannot close
                    self._scan += len(piece)
                self._unscanned.clear()
                close = self._obj.scan(delta, 0, len(delta))
                if close != -1:
                    if delta[close:].strip():
                        return self._unpark_scan(delta)  # something follows: decide now
                    # Only blanks after it: what follows decides, in a later delta.
                    self._obj_end = self._scan = self._scan + close
                    self._state = _S.AFTER
                else:
                    self._scan += len(delta)
            else:
                self._unscanned.append(delta)
        self._parts.append(delta)
        self._parts_len += len(delta)
        self._tail = probe[-_PARTIAL_MAX:]
        return True

    def _unpark_scan(self, delta: str) -> bool:
        """The object closes in ``delta``: let the slow path read it afresh (decoded whole)."""
        self._scan = -1
        return False

    def _joined(self) -> str:
        """``_buf`` with the parked deltas appended (and the parking emptied)."""
        if not self._parts:
            return self._buf
        buf = self._buf + "".join(self._parts)
        self._parts.clear()
        self._unscanned.clear()  # the slow path scans from `_scan`
        self._parts_len = 0
        return buf

    # ------------------------------------------------------------------ output helpers

    def _take(self) -> list[Segment]:
        """Return the pending output and compact the buffer."""
        if self._pos:
            self._prev = self._buf[self._pos - 1]
            self._buf = self._buf[self._pos :]
            shift = self._pos
            self._pos = 0
        else:
            shift = 0
        if shift and self._state is not _S.TEXT and self._state is not _S.BETWEEN:
            # Positions inside a call; in text they are set afresh when one opens.
            self._cur -= shift
            self._scan -= shift
            self._args_from -= shift
            self._obj_end -= shift
            self._obj_start -= shift
            self._x_open -= shift
            self._x_open_end -= shift
            self._x_vstart -= shift
        if self._state is _S.ARGS or self._state is _S.OBJECT or self._state is _S.XML:
            self._tail = self._buf[-_PARTIAL_MAX:]  # for `_park`
        out = self._out
        self._out = []
        return out

    def _flush_stray(self) -> None:
        """Emit accumulated stray marker text as one segment."""
        if self._stray:
            self._out.append(StrayMarker("".join(self._stray)))
            self._stray.clear()

    def _text(self, s: str) -> None:
        """Emit text (merging with a preceding text segment)."""
        if not s:
            return
        self._flush_stray()
        out = self._out
        if out and type(out[-1]) is TextSegment:
            out[-1] = TextSegment(out[-1].text + s)
        else:
            out.append(TextSegment(s))

    def _text_to(self, end: int) -> None:
        """Emit ``buf[_pos:end]`` as text and move on."""
        self._text(self._buf[self._pos : end])
        self._pos = end

    def _stray_to(self, end: int) -> None:
        """Account ``buf[_pos:end]`` as consumed marker text that belongs to no call."""
        if end > self._pos:
            self._stray.append(self._buf[self._pos : end])
            self._pos = end

    def _call(self, name: str, args_text: str, raw_id: str | None, end: int, form: str,
              lead: int = 0, parsed: dict[str, Any] | None = None) -> None:
        """Emit the call whose raw text is ``buf[_pos:end]``; arguments are repaired here
        (or, when ``parsed`` is given, were a valid JSON object and are only normalised)."""
        if parsed is not None:
            args, repaired, ok = normalise_json_object(parsed), False, True
        else:
            repair = repair_json_arguments_detailed(args_text)
            args, repaired, ok = repair.text, repair.status != "valid", repair.status != "wrapped"
        self._flush_stray()
        self._out.append(LeakedCall(name, args, raw_id, self._buf[self._pos : end], form,
                                    repaired, ok, lead))
        self._pos = end
        self._calls += 1
        self._saw = True

    def _prev_char(self, i: int) -> str:
        """Character before buffer index ``i``."""
        return self._buf[i - 1] if i > 0 else self._prev

    # ------------------------------------------------------------------ state machine

    def _run(self, *, eof: bool) -> None:
        """Advance while progress is possible."""
        while self._pos < len(self._buf):
            state = self._state
            if state is _S.TEXT:
                progressed = self._step_text(eof)
            elif state is _S.ARGS:
                progressed = self._step_args(eof)
            elif state is _S.NAME:
                progressed = self._step_name(eof)
            elif state is _S.BETWEEN:
                progressed = self._step_between(eof)
            elif state is _S.OBJECT:
                progressed = self._step_object(eof)
            elif state is _S.AFTER:
                progressed = self._step_after(eof)
            else:
                progressed = self._step_xml(eof)
            if not progressed:
                break
        if eof and self._pos < len(self._buf):  # pragma: no cover - defensive
            self._text_to(len(self._buf))

    def _next_opener(self, pos: int, eof: bool) -> tuple[int, str] | int | None:
        """The next opener at or after ``pos``: ``(index, token)``, None, or the
        index of a ``{`` that may yet open an object (more input will tell).

        Markers and XML openers (which all start with ``<``) and objects are
        searched apart: one regex with both first characters is four times
        slower, the engine no longer skipping to ``<`` at C speed.
        """
        buf = self._buf
        m = _OPENER_RE.search(buf, pos)
        while m is not None and self._prev_char(m.start()) == "`":
            m = _OPENER_RE.search(buf, m.start() + 1)
        end = m.start() if m is not None else len(buf)
        b = buf.find("{", pos, end)
        while b != -1:
            start = self._object_start(b, eof)
            if start is not None:
                return (b, "{") if start >= 0 else b
            b = buf.find("{", b + 1, end)
        return (m.start(), m.group()) if m is not None else None

    def _step_text(self, eof: bool) -> bool:
        buf, pos = self._buf, self._pos
        found = self._next_opener(pos, eof)
        if type(found) is int:  # an object may start here: cannot tell yet
            self._text_to(self._word_start(found))
            return False
        if found is None:
            hold = len(buf)
            if not eof:
                hold = self._hold_from(pos)
            self._text_to(hold)
            self._word = buf.find("<", self._pos) < 0
            return False
        assert isinstance(found, tuple)
        j, token = found
        end = j + len(token)
        kind = _kind(token)
        if kind is _Tok.BRACE or kind is _Tok.ARG_BEGIN:
            # An object in text (a call if a call-end marker follows it), or an
            # argument-begin marker: either way, the word before is the id.
            k = self._word_start(j)
            self._text_to(k)
            argmark = kind is _Tok.ARG_BEGIN
            self._open_call(begin=False, argmark=argmark, id_from=k, id_to=j)
            if argmark:
                self._open_args(end)
            else:
                self._open_object(j)
            return True
        self._text_to(j)
        self._open(kind, j, end)
        return True

    def _hold_from(self, pos: int) -> int:
        """Where the held-back tail of text starts: a possible partial opener, or the last word."""
        buf = self._buf
        q = buf.rfind("<", max(pos, len(buf) - _PARTIAL_MAX))
        end = q if q != -1 and _partial(buf, q) else len(buf)
        # The word an argument-begin marker would take, or a little more: from
        # the last space before it (at most the longest id and its blanks).
        while end > pos and buf[end - 1] <= " ":
            end -= 1
        return max(buf.rfind(" ", pos, end) + 1, pos, end - _TRAIL_REV_MAX)

    def _word_start(self, j: int, lo: int | None = None) -> int:
        """Start of the id (and the whitespace after it) that ends at ``buf[j]``."""
        lo = self._pos if lo is None else lo
        if j <= lo:
            return j
        start = max(lo, j - _TRAIL_REV_MAX)
        back = self._buf[start:j][::-1]
        run = _TRAIL_REV_RE.match(back)
        assert run is not None  # every part of the pattern is optional
        blanks = len(back) - len(back.lstrip())
        if run.end() > blanks and not _id_end(back[blanks]):
            return j - blanks  # "Done. <marker>", "glob:\n{": a sentence's end, not an id
        return j - run.end()

    def _object_start(self, j: int, eof: bool) -> int | None:
        """Whether the ``{`` at ``j`` opens a JSON object: ``j``, ``None`` (no), or -1 (can't tell)."""
        buf = self._buf
        if _OBJECT_START_RE.match(buf, j):
            return j
        if not eof and len(buf) - j < 300 and _OBJECT_PREFIX_RE.match(buf, j):
            return -1
        return None

    def _open(self, kind: _Tok, j: int, end: int) -> None:
        """Handle an opener token at ``buf[j:end]``; ``buf[_pos:j]`` is whitespace (or empty)."""
        if kind is _Tok.XML_FUNC or kind is _Tok.XML_WRAP:
            self._state = _S.XML
            self._x_open = j
            self._x_open_end = end
            self._x_params = {}
            self._x_phase = _X.NAME if kind is _Tok.XML_FUNC else _X.WRAP
            self._cur = end
            return
        self._saw = True
        if kind is _Tok.CALL_BEGIN:
            self._stray_to(j)
            self._open_call(begin=True, argmark=False, id_from=end, id_to=end)
            self._state = _S.NAME
            self._cur = self._scan = end
            return
        if kind is _Tok.ARG_BEGIN:  # after a section begin or a call: a call with no id
            self._stray_to(j)
            self._open_call(begin=False, argmark=True, id_from=end, id_to=end)
            self._open_args(end)
            return
        self._stray_to(end)
        if kind is _Tok.SECTION_BEGIN:
            self._in_section = True
            self._state = _S.BETWEEN
        elif kind is _Tok.SECTION_END:
            self._in_section = False
            self._state = _S.TEXT
        # CALL_END outside a call: stray, state unchanged.

    def _open_call(self, *, begin: bool, argmark: bool, id_from: int, id_to: int) -> None:
        """Start reading a call whose raw text starts at ``_pos``."""
        self._begin = begin
        self._argmark = argmark
        self._id = self._buf[id_from:id_to].strip()
        self._lead = 0 if begin else id_to - self._pos

    def _open_args(self, start: int) -> None:
        """Arguments start at ``start`` (after an argument-begin marker)."""
        self._args_pieces = []
        self._parsed = None
        self._args_from = self._scan = start
        self._state = _S.ARGS

    def _open_object(self, start: int) -> None:
        """Arguments are the JSON object that opens at ``start``."""
        self._args_pieces = []
        self._args_from = start
        self._object_at(start)

    def _object_at(self, start: int) -> None:
        """Read the JSON object that opens at ``start``.

        When the buffer already holds it whole and valid, the C decoder finds
        its end at once (the same end the scanner would find, unless a
        marker sits inside it: then the scanner decides).
        """
        self._obj = _ObjectScan()
        self._scan = self._obj_start = start
        self._state = _S.OBJECT
        self._parsed = None
        if self._buf.find("}", start) < 0:
            return  # not all here yet
        try:
            parsed, end = _STRICT_DECODER.raw_decode(self._buf, start)
            if start == self._args_from:
                self._parsed = parsed  # strict JSON: `_call` need not decode it again
        except (ValueError, RecursionError):
            try:
                end = _DECODER.raw_decode(self._buf, start)[1]
            except (ValueError, RecursionError):
                return
        if MARKER_RE.search(self._buf, start, end) is None:
            self._obj_end = self._scan = end
            self._state = _S.AFTER
        else:
            self._parsed = None

    def _evidence(self) -> bool:
        return self._begin or self._argmark

    def _emit_call(self, args: str, end: int, parsed: dict[str, Any] | None = None) -> None:
        """Emit the call read so far, ending at ``end``.

        Without a call begin marker, an argument-begin marker with nothing
        after it is no evidence of a call: it needs an object beside it.
        """
        if parsed is None and not self._begin and not args.strip():
            self._not_a_call(end)
            return
        name = normalise_tool_name(self._id)[0] if self._id else ""
        self._call(name, args, self._id or None, end, "kimi", self._lead if self._id else 0, parsed)
        self._state = _S.BETWEEN

    def _not_a_call(self, end: int) -> None:
        """What looked like a call is text up to ``end`` (its markers stay stray)."""
        for m in MARKER_RE.finditer(self._buf, self._pos, end):
            if self._prev_char(m.start()) != "`":
                self._text_to(m.start())
                self._stray_to(m.end())
                self._saw = True
        self._text_to(end)
        self._state = _S.TEXT

    def _step_between(self, eof: bool) -> bool:
        buf, pos = self._buf, self._pos
        m = _NONWS_RE.search(buf, pos)
        if m is None:
            if eof:  # whitespace after the last call is the gap between tokens
                self._stray_to(len(buf))
            return False
        j = m.start()
        t = _OPENER_RE.match(buf, j)
        if t is None:
            if not eof and _partial(buf, j):
                return False
            self._state = _S.TEXT  # prose: the whitespace before it is text too
            return True
        self._open(_kind(t.group()), j, t.end())
        return True

    def _abort_call(self) -> None:
        """A call begin marker not followed by a valid id: the marker is stray."""
        self._stray_to(self._cur)
        self._state = _S.TEXT

    def _step_name(self, eof: bool) -> bool:
        buf, cur = self._buf, self._cur
        m = MARKER_RE.search(buf, self._scan)
        brace = buf.find("{", cur, m.start() if m is not None else len(buf))
        stop = brace if brace != -1 else (m.start() if m is not None else len(buf))
        region = buf[cur:stop]
        if brace == -1 and m is None:
            if eof:
                self._not_a_call(len(buf))
                return False
            q = buf.rfind("<", max(cur, len(buf) - _PARTIAL_MAX))
            held = q if q != -1 and _partial(buf, q) else len(buf)
            if not _NAME_PREFIX_RE.match(buf[cur:held]):
                self._abort_call()
                return True
            self._scan = max(cur, len(buf) - _PARTIAL_MAX)
            return False
        name = _NAME_RE.match(region)
        if brace != -1:
            if region.strip() and name is None:
                self._abort_call()
                return True
            if self._object_start(brace, eof) is None:
                self._abort_call()
                return True
            if self._object_start(brace, eof) == -1:
                return False
            self._id = region.strip()
            self._open_object(brace)
            return True
        assert m is not None
        if name is None:
            self._abort_call()
            return True
        self._id = region.strip()
        kind = _kind(m.group())
        if kind is _Tok.ARG_BEGIN:
            self._argmark = True
            self._open_args(m.end())
            return True
        self._emit_call("", m.end() if kind is _Tok.CALL_END else m.start())
        return True

    def _step_args(self, eof: bool) -> bool:
        """Arguments after an argument-begin marker: up to the next marker (or the end).

        Parked cheaply until a marker arrives, as most leaked calls end with
        a call-end marker. Then, if they are an object followed by more than
        blanks or another object (a call-end marker lost before prose or the
        next call's id), the call ends where the object closes and what
        follows is read again.
        """
        buf = self._buf
        m = MARKER_RE.search(buf, self._scan)
        if m is None and not eof:
            self._scan = max(self._args_from, len(buf) - _PARTIAL_MAX)
            return False
        stop = m.start() if m is not None else len(buf)
        kind = _kind(m.group()) if m is not None else None
        if m is not None and kind is _Tok.ARG_BEGIN and not buf[self._args_from : stop].strip():
            # A repeated argument-begin inside a call: part of raw, not of args.
            self._args_pieces.append(buf[self._args_from : stop])
            self._args_from = self._scan = m.end()
            return True
        if not "".join(self._args_pieces).strip():
            cut = self._object_cut(self._args_from, stop)
            if cut is not None and (kind is not _Tok.CALL_END or buf[cut:stop].strip()):
                # The call ends with its object; blanks before the next marker are the gap.
                self._emit_call(buf[self._args_from : cut], cut, self._parsed)
                return True
        args = "".join(self._args_pieces) + buf[self._args_from : stop]
        if m is None:  # end of stream: a call only if its arguments are a whole object
            if self._parsed is not None or _parses_as_object(args):
                self._emit_call(args, len(buf), self._parsed)
            else:
                self._not_a_call(len(buf))
            return False
        if kind is _Tok.ARG_BEGIN:  # text, then another argument-begin: still this call's
            self._args_pieces.append(buf[self._args_from : stop])
            self._args_from = self._scan = m.end()
            return True
        self._emit_call(args, m.end() if kind is _Tok.CALL_END else stop, self._parsed)
        return True

    def _object_cut(self, start: int, stop: int) -> int | None:
        """Where the object that ``buf[start:stop]`` starts with closes; None when
        it does not start with one, does not close before ``stop``, or another
        object follows it (then the arguments run to ``stop``).

        Sets ``_parsed`` when the arguments are one strict JSON object and blanks.
        """
        buf = self._buf
        self._parsed = None
        first = _NONWS_RE.search(buf, start, stop)
        if first is None or buf[first.start()] != "{":
            return None
        j = first.start()
        parsed: dict[str, Any] | None = None
        try:
            parsed, end = _STRICT_DECODER.raw_decode(buf, j)
        except (ValueError, RecursionError):
            try:
                end = _DECODER.raw_decode(buf, j)[1]
            except (ValueError, RecursionError):
                end = _ObjectScan().scan(buf, j, stop)
        if end == -1 or end > stop:
            return None  # not closed before the marker
        rest = buf[end:stop].lstrip()
        if rest.startswith("{"):
            return None  # two objects: one call's (json_args keeps the first)
        if not rest:
            self._parsed = parsed  # blanks around one strict object: decoded already
        return end

    def _step_object(self, eof: bool) -> bool:
        """Arguments that are a JSON object: read to where it closes (or a marker cuts it)."""
        if self._scan < 0:  # it closed in a parked delta: read it again, whole
            self._object_at(self._obj_start)
            return True
        buf = self._buf
        m = MARKER_RE.search(buf, max(self._args_from, self._scan - _PARTIAL_MAX))
        limit = m.start() if m is not None else len(buf)
        if not self._evidence():  # an object in text gives way to an XML-form call
            x = _XML_OPENER_RE.search(buf, max(self._args_from, self._scan - _PARTIAL_MAX), limit)
            if x is not None:
                self._not_a_call(x.start())
                return True
        if self._scan < limit:
            close = self._obj.scan(buf, self._scan, limit)
            self._scan = limit if close == -1 else close
            if close != -1:
                self._obj_end = close
                self._state = _S.AFTER
                return True
        if m is not None:
            # A marker before the object closed: the arguments end there.
            args = buf[self._args_from : m.start()]
            kind = _kind(m.group())
            if kind is _Tok.CALL_END or self._evidence():
                self._emit_call(args, m.end() if kind is _Tok.CALL_END else m.start())
            else:
                self._not_a_call(m.start())
            return True
        if eof:
            self._not_a_call(len(buf))
            return False
        if not self._evidence() and len(buf) - self._pos > _CANDIDATE_MAX:
            self._not_a_call(self._args_from + 1)  # too big to hold on a chance: text
            return True
        return False

    def _step_after(self, eof: bool) -> bool:
        """The arguments' object closed at ``_obj_end``: a marker, another object or text follows."""
        buf, end = self._buf, self._obj_end
        n = _NONWS_RE.search(buf, end)
        if n is None:
            if eof:
                self._finish_object(end)
            return eof
        j = n.start()
        t = MARKER_RE.match(buf, j)
        if t is not None:
            kind = _kind(t.group())
            if kind is _Tok.CALL_END:
                self._args_end(end, t.end())
            else:
                self._finish_object(end)
            return True
        if buf[j] == "{" and self._evidence():
            start = self._object_start(j, eof)
            if start == -1:
                return False
            if start is not None:  # a second object: the same call's (json_args keeps the first)
                self._object_at(j)
                return True
        if not eof and _partial(buf, j):
            return False
        self._finish_object(end)
        return True

    def _args_end(self, end: int, raw_end: int) -> None:
        if self._parsed is not None and end == self._obj_end and self._scan == end:
            self._emit_call("", raw_end, self._parsed)  # the one object, decoded already
        else:
            self._emit_call(self._buf[self._args_from : end], raw_end)

    def _finish_object(self, end: int) -> None:
        """The call ends with its object at ``end`` (no call-end marker)."""
        if self._evidence():
            self._args_end(end, end)
        else:
            self._not_a_call(end)

    # ------------------------------------------------------------------ XML form

    def _xml_fail(self) -> None:
        """Not an XML call after all: the opener (and whitespace before it) is text."""
        self._text_to(self._x_open_end)
        self._state = _S.TEXT

    def _xml_done(self, end: int) -> None:
        """Emit the completed XML call ending at ``end``."""
        self._stray_to(self._x_open)
        self._saw = True
        args = normalise_json_object(self._x_params)
        self._call(self._x_name, args, self._id or None, end, "xml")
        self._in_section = False
        self._state = _S.BETWEEN

    def _expect(self, eof: bool, options: tuple[str, ...]) -> tuple[int, str] | Literal[False] | None:
        """Skip whitespace from ``_cur`` and look for one of ``options``.

        Returns ``(index, option)`` when found, ``None`` when more input is
        needed, ``False`` when the text cannot match any option.
        """
        buf = self._buf
        m = _NONWS_RE.search(buf, self._cur)
        if m is None:
            return False if eof else None
        j = m.start()
        for opt in options:
            if buf.startswith(opt, j):
                return j, opt
        rest = buf[j:]
        if not eof and any(len(rest) < len(o) and o.startswith(rest) for o in options):
            return None
        return False

    def _step_xml(self, eof: bool) -> bool:
        buf = self._buf
        phase = self._x_phase
        if phase is _X.WRAP:
            r = self._expect(eof, (_XML_FUNC,))
            if r is None:
                return False
            if r is False:
                self._xml_fail()
                return True
            self._cur = r[0] + len(_XML_FUNC)
            self._x_phase = _X.NAME
            return True
        if phase is _X.NAME:
            m = _XML_NAME_RE.match(buf, self._cur)
            if m is None:
                if not eof and _XML_NAME_PREFIX_RE.fullmatch(buf, self._cur):
                    return False
                self._xml_fail()
                return True
            self._x_name, xml_id = normalise_tool_name(m.group(1))
            self._id = xml_id or ""
            self._cur = m.end()
            self._x_phase = _X.BODY
            return True
        if phase is _X.BODY:
            r = self._expect(eof, (_XML_PARAM, _XML_FUNC_CLOSE))
            if r is None:
                return False
            if r is False:
                self._xml_fail()
                return True
            j, opt = r
            self._cur = j + len(opt)
            self._x_phase = _X.PNAME if opt == _XML_PARAM else _X.AFTER
            return True
        if phase is _X.PNAME:
            m = _XML_PNAME_RE.match(buf, self._cur)
            if m is None:
                if not eof and _XML_PNAME_PREFIX_RE.fullmatch(buf, self._cur):
                    return False
                self._xml_fail()
                return True
            self._x_pname = m.group(1).strip()
            if not self._x_pname:
                self._xml_fail()
                return True
            self._cur = self._scan = self._x_vstart = m.end()
            self._x_phase = _X.PVALUE
            return True
        if phase is _X.PVALUE:
            k = buf.find(_XML_PARAM_CLOSE, self._scan)
            if k == -1:
                if eof:
                    self._xml_fail()
                    return True
                self._scan = max(self._x_vstart, len(buf) - len(_XML_PARAM_CLOSE) + 1)
                return False
            types = _schema_types(self._schemas.get(self._x_name), self._x_pname)
            self._x_params[self._x_pname] = _xml_value(buf[self._x_vstart : k], types)
            self._cur = k + len(_XML_PARAM_CLOSE)
            self._x_phase = _X.BODY
            return True
        # _X.AFTER
        r = self._expect(eof, (_XML_WRAP_CLOSE,))
        if r is None:
            return False
        if r is False:
            self._xml_done(self._cur)
        else:
            self._xml_done(r[0] + len(_XML_WRAP_CLOSE))
        return True


def _parses_as_object(text: str) -> bool:
    """Whether ``text`` is (leniently) a complete JSON object."""
    try:
        return isinstance(json.loads(text, strict=False), dict)
    except (ValueError, RecursionError):
        return False


def parse_leaks(text: str, tool_schemas: Mapping[str, Mapping[str, Any]] | None = None) -> list[Segment]:
    """Parse a complete text in one go (convenience for history and tests)."""
    p = LeakParser(tool_schemas)
    return p.feed(text) + p.finish()


def merge_text(segments: Iterable[Segment]) -> list[Segment]:
    """Merge adjacent :class:`TextSegment` and adjacent :class:`StrayMarker`."""
    out: list[Segment] = []
    for seg in segments:
        if out and type(seg) is type(out[-1]) and not isinstance(seg, LeakedCall):
            prev = out[-1]
            if isinstance(seg, TextSegment) and isinstance(prev, TextSegment):
                out[-1] = TextSegment(prev.text + seg.text)
            elif isinstance(seg, StrayMarker) and isinstance(prev, StrayMarker):
                out[-1] = StrayMarker(prev.raw + seg.raw)
        else:
            out.append(seg)
    return out
