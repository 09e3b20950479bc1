"""Streaming parser for Kimi K2 tool calls leaked into streamed text.

Kimi's native tool-call tokens sometimes reach the client inside ``content``
(or ``reasoning_content``) instead of being parsed into ``tool_calls``.
:class:`LeakParser` receives that text in arbitrary deltas and splits it into
plain text, recovered calls and consumed marker text.  Use one parser per
channel (content, reasoning).  Pure Python, stdlib only, no I/O.

Accepted forms (reference §2)::

    <|tool_calls_section_begin|>            (or singular <|tool_call_section_begin|>, or absent)
    <|tool_call_begin|>functions.{name}:{idx}<|tool_call_argument_begin|>{json}<|tool_call_end|>
    ...more calls...
    <|tool_calls_section_end|>              (or singular, or absent)

with any whitespace between tokens, a missing ``<|tool_call_end|>`` when the
next ``<|tool_call_begin|>`` or a section token arrives, and the XML form::

    <tool_call>                             (optional wrapper)
    <function=read_file>
    <parameter=target_file>FILE1</parameter>
    </function>
    </tool_call>

Decisions:

* **Markers.**  Exactly seven Kimi tokens are markers: the plural and
  singular section begin/end, ``<|tool_call_begin|>``,
  ``<|tool_call_argument_begin|>`` and ``<|tool_call_end|>``.  Anything else
  that merely looks like one (``<|tool_call_beginning|>``, ``<|im_end|>``,
  ``<|tool|>``, ``a <| b``) is text.  A marker immediately preceded by a
  backtick (`` `<|tool_call_begin|>` `` in prose or inline code) is text too.
* **Stray markers.**  A section begin/end, argument-begin or call-end token
  outside a call, whitespace between tokens inside a section or between
  consecutive calls, and the first token of a call whose name is invalid are
  consumed and reported as :class:`StrayMarker` segments, never as text.
  Whitespace between a marker and following prose stays text.
* **Invariant.**  Concatenating ``TextSegment.text``, ``LeakedCall.raw`` and
  ``StrayMarker.raw`` in order reproduces the input exactly.  The segment
  sequence does not depend on how the input was chunked, once adjacent
  ``TextSegment`` s are merged (stray markers are already merged: they are
  emitted lazily, just before the next text/call or at ``finish``).
* **Names.**  Whitespace is stripped, one leading ``functions.`` and one
  trailing ``:N`` are removed, dots/hyphens/slashes are kept.  A name must be
  1-256 characters with no whitespace, quotes, brackets or ``<>``.
  ``raw_id`` is the stripped original when it ends in ``:N``, else ``None``.
* **Kimi arguments** run to the first Kimi marker; they are normalised or
  repaired by :func:`~proxy_core.repairs.json_args.repair_json_arguments`.
  A call cut by end of stream is a call only if its arguments parse as a
  JSON object; otherwise all its text is returned as text.
* **XML form.**  Recognised only when complete (up to ``</function>``);
  anything else (``<function=`` in prose, an unclosed parameter at end of
  stream) is text.  One leading and one trailing newline of each parameter
  value is dropped (Qwen3-Coder convention); the rest, multi-line, is kept.
  Typing: with a schema for the tool (``tool_schemas``), a parameter whose
  schema type includes ``string`` stays a string and other typed parameters
  are JSON-decoded when possible.  Without a schema, values that are exactly
  a JSON number or ``true``/``false`` are decoded; everything else (including
  JSON-looking objects/arrays and ``null``) stays a string, because a
  ``content``/``newString`` value that happens to look like JSON is far more
  common than an object-typed parameter.
* ``</think>`` and other tags are left alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from .json_args import normalise_json_object, repair_json_arguments

__all__ = [
    "ARG_BEGIN",
    "CALL_BEGIN",
    "CALL_END",
    "KIMI_MARKERS",
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
]

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
_OPENERS: Final = (*KIMI_MARKERS, _XML_FUNC, _XML_WRAP)


# ----------------------------------------------------------------------------- segments


@dataclass(frozen=True, slots=True)
class TextSegment:
    """Plain text to pass on unchanged."""

    text: str


@dataclass(frozen=True, slots=True)
class LeakedCall:
    """A tool call recovered from leaked tokens.

    Attributes:
        name: tool name, ``functions.`` prefix and trailing ``:N`` stripped.
        arguments: JSON object text (normalised, or repaired).
        raw_id: the original ``functions.name:N`` text when it carried an
            index, else ``None``.
        raw: the exact leaked text the call was parsed from.
        form: ``"kimi"`` (special tokens) or ``"xml"`` (``<function=...>``).
        args_repaired: whether the arguments needed a repair (not merely
            re-serialisation).
    """

    name: str
    arguments: str
    raw_id: str | None
    raw: str
    form: str = "kimi"
    args_repaired: bool = False


@dataclass(frozen=True, slots=True)
class StrayMarker:
    """Marker text consumed outside any call (section tokens, whitespace
    between tokens, orphan ``<|tool_call_end|>`` ...).  Never shown as text."""

    raw: str


Segment = TextSegment | LeakedCall | StrayMarker


# ----------------------------------------------------------------------------- tables


class _Tok(Enum):
    """Kinds of opener tokens."""

    SECTION_BEGIN = "section_begin"
    SECTION_END = "section_end"
    CALL_BEGIN = "call_begin"
    ARG_BEGIN = "arg_begin"
    CALL_END = "call_end"
    XML_FUNC = "xml_func"
    XML_WRAP = "xml_wrap"


_KIND: Final[dict[str, _Tok]] = {
    SECTION_BEGIN: _Tok.SECTION_BEGIN,
    SECTION_BEGIN_SINGULAR: _Tok.SECTION_BEGIN,
    SECTION_END: _Tok.SECTION_END,
    SECTION_END_SINGULAR: _Tok.SECTION_END,
    CALL_BEGIN: _Tok.CALL_BEGIN,
    ARG_BEGIN: _Tok.ARG_BEGIN,
    CALL_END: _Tok.CALL_END,
    _XML_FUNC: _Tok.XML_FUNC,
    _XML_WRAP: _Tok.XML_WRAP,
}

_KIMI_RE: Final = re.compile(
    r"<\|tool_call(?:s_section_begin|_section_begin|s_section_end|_section_end|_begin|_argument_begin|_end)\|>"
)
_OPENER_RE: Final = re.compile(
    r"<(?:\|tool_call(?:s_section_begin|_section_begin|s_section_end|_section_end|_begin|_argument_begin|_end)\|>"
    r"|function=|tool_call>)"
)
_NONWS_RE: Final = re.compile(r"\S")


def _proper_prefixes(words: Iterable[str]) -> frozenset[str]:
    """All non-empty proper prefixes of ``words``."""
    return frozenset(w[:i] for w in words for i in range(1, len(w)))


_OPENER_PREFIXES: Final = _proper_prefixes(_OPENERS)
_OPENER_MAX: Final = max(map(len, _OPENERS))
_KIMI_PREFIXES: Final = _proper_prefixes(KIMI_MARKERS)
_KIMI_MAX: Final = max(map(len, KIMI_MARKERS))

_TAIL: Final = max(_KIMI_MAX, len(_XML_PARAM_CLOSE)) - 1
_NAME_MAX: Final = 256
# Name region between <|tool_call_begin|> and the next marker, as a prefix.
_NAME_REGION_RE: Final = re.compile(r"\s*[^\s<>{}()\[\]\"'`,;|\\]{0,256}\s*")
_XML_NAME_RE: Final = re.compile(r"([^\s<>]{1,256})>")
_XML_NAME_PREFIX_RE: Final = re.compile(r"[^\s<>]{0,256}")
_XML_PNAME_RE: Final = re.compile(r"([^<>\n]{1,256})>")
_XML_PNAME_PREFIX_RE: Final = re.compile(r"[^<>\n]{0,256}")
_ID_SUFFIX_RE: Final = re.compile(r":\d+\Z")
_SCALAR_RE: Final = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false")


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


# ----------------------------------------------------------------------------- parser


class _S(Enum):
    """Parser states."""

    TEXT = "text"
    BETWEEN = "between"  # after a section begin / a call: whitespace is held
    KIMI_NAME = "kimi_name"
    KIMI_ARGS = "kimi_args"
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
    marker and any unfinished call.  ``finish`` flushes at end of stream.
    """

    __slots__ = (
        "_buf",
        "_pos",
        "_prev",
        "_state",
        "_in_section",
        "_out",
        "_stray",
        "_saw",
        "_calls",
        "_cur",
        "_scan",
        "_name",
        "_raw_id",
        "_args_from",
        "_args_pieces",
        "_x_phase",
        "_x_open",
        "_x_open_end",
        "_x_params",
        "_x_pname",
        "_x_vstart",
        "_schemas",
        "_finished",
        "_parts",
        "_parts_len",
        "_tail",
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
        self._cur = 0
        self._scan = 0
        self._name = ""
        self._raw_id: str | None = None
        self._args_from = 0
        self._args_pieces: list[str] = []
        self._x_phase = _X.NAME
        self._x_open = 0
        self._x_open_end = 0
        self._x_params: dict[str, Any] = {}
        self._x_pname = ""
        self._x_vstart = 0
        self._finished = False
        # Deltas received while a long call body is held, not yet joined into
        # ``_buf`` (avoids quadratic re-concatenation), and the last few
        # characters of all held text (to detect a terminator cheaply).
        self._parts: list[str] = []
        self._parts_len = 0
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
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not delta:
            return []
        if self._state is _S.TEXT and not self._buf and "<" not in delta:
            # Fast path: plain text, nothing held.
            self._prev = delta[-1]
            if self._stray:
                out: list[Segment] = [StrayMarker("".join(self._stray)), TextSegment(delta)]
                self._stray.clear()
                return out
            return [TextSegment(delta)]
        if self._state is _S.KIMI_ARGS or (self._state is _S.XML and self._x_phase is _X.PVALUE):
            # Inside a (possibly huge) call body: only look closer when the
            # delta could complete a terminator.
            probe = self._tail + delta
            if self._state is _S.KIMI_ARGS:
                ends = _KIMI_RE.search(probe) is not None
            else:
                ends = _XML_PARAM_CLOSE in probe
            if not ends:
                self._parts.append(delta)
                self._parts_len += len(delta)
                self._tail = probe[-_TAIL:]
                return []
        self._buf = self._joined() + delta
        self._run(eof=False)
        return self._take()

    def _joined(self) -> str:
        """``_buf`` with the parked deltas appended (and the parking emptied)."""
        if not self._parts:
            return self._buf
        buf = self._buf + "".join(self._parts)
        self._parts.clear()
        self._parts_len = 0
        return buf

    def finish(self) -> list[Segment]:
        """End of stream: resolve everything held and return the rest."""
        if self._finished:
            return []
        self._buf = self._joined()
        self._run(eof=True)
        self._finished = True
        self._flush_stray()
        return self._take()

    # ------------------------------------------------------------------ output helpers

    def _take(self) -> list[Segment]:
        """Return the pending output and compact the buffer."""
        if self._pos:
            self._prev = self._buf[self._pos - 1]
            self._buf = self._buf[self._pos :]
            shift = self._pos
            self._pos = 0
            self._cur -= shift
            self._scan -= shift
            self._args_from -= shift
            self._x_open -= shift
            self._x_open_end -= shift
            self._x_vstart -= shift
        self._tail = self._buf[-_TAIL:]
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
            out[-1] = TextSegment(out[-1].text + s)  # type: ignore[union-attr]
        else:
            out.append(TextSegment(s))

    def _stray_raw(self, s: str) -> None:
        """Account consumed marker text that belongs to no call."""
        if s:
            self._stray.append(s)

    def _call(self, name: str, args_text: str, raw_id: str | None, raw: str, form: str) -> None:
        """Emit a recovered call; ``args_text`` is repaired here."""
        args, changed = repair_json_arguments(args_text)
        self._flush_stray()
        self._out.append(LeakedCall(name, args, raw_id, raw, form, changed))
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
            elif state is _S.BETWEEN:
                progressed = self._step_between(eof)
            elif state is _S.KIMI_ARGS:
                progressed = self._step_kimi_args(eof)
            elif state is _S.KIMI_NAME:
                progressed = self._step_kimi_name(eof)
            else:
                progressed = self._step_xml(eof)
            if not progressed:
                break
        if eof and self._pos < len(self._buf):  # pragma: no cover - defensive
            self._text(self._buf[self._pos :])
            self._pos = len(self._buf)

    def _step_text(self, eof: bool) -> bool:
        buf, pos = self._buf, self._pos
        m = _OPENER_RE.search(buf, pos)
        while m is not None and self._prev_char(m.start()) == "`":
            m = _OPENER_RE.search(buf, m.start() + 1)
        if m is None:
            hold = len(buf)
            if not eof:
                lo = max(pos, len(buf) - _OPENER_MAX + 1)
                q = buf.rfind("<", lo)
                if q != -1 and buf[q:] in _OPENER_PREFIXES:
                    hold = q
            self._text(buf[pos:hold])
            self._pos = hold
            return False
        j = m.start()
        self._text(buf[pos:j])
        self._pos = j
        self._open(m.group(), j, m.end())
        return True

    def _open(self, tok: str, j: int, end: int) -> None:
        """Handle an opener token at ``buf[j:end]``; ``buf[_pos:j]`` is whitespace (or empty)."""
        kind = _KIND[tok]
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
            self._stray_raw(self._buf[self._pos : j])
            self._pos = j
            self._state = _S.KIMI_NAME
            self._cur = self._scan = end
            return
        self._stray_raw(self._buf[self._pos : end])
        self._pos = end
        if kind is _Tok.SECTION_BEGIN:
            self._in_section = True
            self._state = _S.BETWEEN
        elif kind is _Tok.SECTION_END:
            self._in_section = False
            self._state = _S.TEXT
        # ARG_BEGIN / CALL_END outside a call: stray, state unchanged.

    def _step_between(self, eof: bool) -> bool:
        buf, pos = self._buf, self._pos
        m = _NONWS_RE.search(buf, pos)
        if m is None:
            if eof:
                if self._in_section:
                    self._stray_raw(buf[pos:])
                else:
                    self._text(buf[pos:])
                self._pos = len(buf)
            return False
        j = m.start()
        t = _OPENER_RE.match(buf, j)
        if t is None:
            rest = buf[j:]
            if not eof and len(rest) < _OPENER_MAX and rest in _OPENER_PREFIXES:
                return False
            self._text(buf[pos:j])
            self._pos = j
            self._state = _S.TEXT
            return True
        self._open(t.group(), j, t.end())
        return True

    def _abort_call(self) -> None:
        """The call begin token is not followed by a valid name: it is stray."""
        self._stray_raw(self._buf[self._pos : self._cur])
        self._pos = self._cur
        self._state = _S.TEXT

    def _step_kimi_name(self, eof: bool) -> bool:
        buf, cur = self._buf, self._cur
        m = _KIMI_RE.search(buf, self._scan)
        if m is None:
            if eof:
                self._text(buf[self._pos :])
                self._pos = len(buf)
                self._state = _S.TEXT
                return False
            lo = max(cur, len(buf) - _KIMI_MAX + 1)
            q = buf.rfind("<", lo)
            held = q if q != -1 and buf[q:] in _KIMI_PREFIXES else len(buf)
            region = buf[cur:held]
            if len(region) > 2 * _NAME_MAX or not _NAME_REGION_RE.fullmatch(region):
                self._abort_call()
                return True
            self._scan = max(cur, len(buf) - _KIMI_MAX + 1)
            return False
        region = buf[cur : m.start()]
        name_text = region.strip()
        if not name_text or len(region) > 2 * _NAME_MAX or not _NAME_REGION_RE.fullmatch(region):
            self._abort_call()
            return True
        self._name, self._raw_id = normalise_tool_name(name_text)
        kind = _KIND[m.group()]
        if kind is _Tok.ARG_BEGIN:
            self._state = _S.KIMI_ARGS
            self._args_from = self._scan = m.end()
            self._args_pieces = []
            return True
        end = m.end() if kind is _Tok.CALL_END else m.start()
        self._call(self._name, "", self._raw_id, buf[self._pos : end], "kimi")
        self._pos = end
        self._state = _S.BETWEEN
        return True

    def _step_kimi_args(self, eof: bool) -> bool:
        buf = self._buf
        m = _KIMI_RE.search(buf, self._scan)
        while m is not None and m.group() == ARG_BEGIN:
            # A repeated argument-begin inside a call: part of raw, not of args.
            self._args_pieces.append(buf[self._args_from : m.start()])
            self._args_from = self._scan = m.end()
            m = _KIMI_RE.search(buf, m.end())
        if m is None:
            if eof:
                args = "".join(self._args_pieces) + buf[self._args_from :]
                raw = buf[self._pos :]
                if _parses_as_object(args):
                    self._call(self._name, args, self._raw_id, raw, "kimi")
                else:
                    self._text(raw)
                self._pos = len(buf)
                self._state = _S.TEXT
                return False
            self._scan = max(self._args_from, len(buf) - _KIMI_MAX + 1)
            return False
        args = "".join(self._args_pieces) + buf[self._args_from : m.start()]
        end = m.end() if m.group() == CALL_END else m.start()
        self._call(self._name, args, self._raw_id, buf[self._pos : end], "kimi")
        self._pos = end
        self._state = _S.BETWEEN
        return True

    # ------------------------------------------------------------------ XML form

    def _xml_fail(self) -> None:
        """Not an XML call after all: the opener (and whitespace before it) is text."""
        self._text(self._buf[self._pos : self._x_open_end])
        self._pos = self._x_open_end
        self._state = _S.TEXT

    def _xml_done(self, end: int) -> None:
        """Emit the completed XML call ending at ``end``."""
        buf = self._buf
        self._stray_raw(buf[self._pos : self._x_open])
        self._saw = True
        args = normalise_json_object(self._x_params)
        self._call(self._name, args, self._raw_id, buf[self._x_open : end], "xml")
        self._pos = end
        self._in_section = False
        self._state = _S.BETWEEN

    def _expect(self, eof: bool, options: tuple[str, ...]) -> tuple[int, str] | None | bool:
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
            self._cur = r[0] + len(_XML_FUNC)  # type: ignore[index]
            self._x_phase = _X.NAME
            return True
        if phase is _X.NAME:
            m = _XML_NAME_RE.match(buf, self._cur)
            if m is None:
                if not eof and _XML_NAME_PREFIX_RE.fullmatch(buf, self._cur):
                    return False
                self._xml_fail()
                return True
            self._name, self._raw_id = normalise_tool_name(m.group(1))
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
            j, opt = r  # type: ignore[misc]
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
            types = _schema_types(self._schemas.get(self._name), self._x_pname)
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
            self._xml_done(r[0] + len(_XML_WRAP_CLOSE))  # type: ignore[index]
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
            if isinstance(seg, TextSegment):
                out[-1] = TextSegment(prev.text + seg.text)  # type: ignore[union-attr]
            else:
                out[-1] = StrayMarker(prev.raw + seg.raw)  # type: ignore[union-attr]
        else:
            out.append(seg)
    return out
