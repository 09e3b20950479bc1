"""Repair of tool-call ``arguments`` text into a single JSON object.

Used by the leaked-tool-call parser (``leak_parser``) and by the history
repairs (malformed ``function.arguments`` sent back by the client).

Rules, applied in order; the first that yields a JSON *object* wins:

1. Empty / whitespace-only text becomes ``{}`` (repaired).
2. Text that already parses (strict ``json.loads``) as an object is *valid*:
   it is normalised with ``json.dumps`` and ``changed`` is ``False`` (the
   caller may keep its original text).  Valid JSON that is not an object:
   ``null`` becomes ``{}``; a JSON *string* whose content is itself a JSON
   object (double encoding, common in the wild) is decoded; anything else
   (array, number, bool, string) is wrapped as ``{"_raw": <original text>}``.
3. Markdown code fences around the text are removed.
4. Lenient parse: raw control characters inside strings (literal newlines,
   tabs) and ``NaN`` / ``Infinity`` (turned into ``null``) are accepted.
5. Leading junk before the first ``{`` is skipped and **trailing data after
   the first complete object is dropped**.  This covers trailing garbage and
   two concatenated objects: ``{"a":1}{"b":2}`` gives ``{"a": 1}``.  We take
   the first rather than merging: the first object is a complete call on its
   own, while a merge can build a parameter combination the model never
   meant (and a duplicated stream repeats the first object anyway).
6. Truncated objects are closed: an open string is closed (a dangling ``\\``
   or partial ``\\uXX`` escape is dropped), trailing commas are removed, open
   brackets are closed.  If that is still not valid (a key without value, a
   partial literal such as ``tru``), the text is cut back to the last
   complete member and closed again.
7. A Python-literal dict (single quotes, ``True``/``None``) is accepted via
   :func:`ast.literal_eval` (safe: literals only).
8. Otherwise the text is unrepairable and is wrapped as
   ``{"_raw": <original text>}`` so that nothing is lost and the tool sees
   (and reports) a clearly invalid call instead of silently empty arguments.

Normalised output is ``json.dumps(obj, ensure_ascii=False)`` (falling back to
ASCII escapes if the object holds lone surrogates that UTF-8 cannot encode).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "JsonArgsRepair",
    "RepairStatus",
    "normalise_json_object",
    "repair_json_arguments",
    "repair_json_arguments_detailed",
]

RepairStatus = Literal["valid", "repaired", "wrapped"]

_FENCE_RE: Final = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)\r?\n?[ \t]*```\Z", re.DOTALL)
# Body of a JSON string (no closing quote): runs of plain chars or escapes.
_STR_BODY_RE: Final = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_PARTIAL_ESCAPE_RE: Final = re.compile(r"\\u[0-9a-fA-F]{0,3}\Z")
_LITERAL_RE: Final = re.compile(r'[^ \t\r\n{}\[\],:"]+')
_WS: Final = frozenset(" \t\r\n")
_LITERAL_EVAL_LIMIT: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class JsonArgsRepair:
    """Outcome of :func:`repair_json_arguments_detailed`.

    Attributes:
        text: normalised JSON object text (always parses to a ``dict``).
        status: ``"valid"`` (input already was a JSON object), ``"repaired"``
            (a rule above fixed it) or ``"wrapped"`` (unrepairable; the text
            is ``{"_raw": original}``).
        note: short human-readable description of what was done.
    """

    text: str
    status: RepairStatus
    note: str

    @property
    def changed(self) -> bool:
        """True when the input was not already a valid JSON object."""
        return self.status != "valid"


def normalise_json_object(obj: dict[str, Any]) -> str:
    """Serialise a parsed arguments object the one way this package does."""
    out = json.dumps(obj, ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from \\udXXX escapes
        out = json.dumps(obj, ensure_ascii=True)
    return out


def repair_json_arguments(text: str) -> tuple[str, bool]:
    """Return ``(normalised JSON object text, changed)`` for tool arguments.

    ``changed`` is ``False`` exactly when ``text`` already was a valid JSON
    object (whitespace/formatting differences do not count as a change).
    See the module docstring for the repair rules.
    """
    result = repair_json_arguments_detailed(text)
    return result.text, result.changed


def repair_json_arguments_detailed(text: str) -> JsonArgsRepair:
    """Like :func:`repair_json_arguments` but says which rule applied."""
    s = text.strip()
    if not s:
        return JsonArgsRepair("{}", "repaired", "empty arguments")
    try:
        obj = json.loads(s, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        pass
    else:
        return _from_parsed(obj, text, strict=True)

    fenced = _FENCE_RE.match(s)
    if fenced:
        inner = fenced.group(1).strip()
        result = repair_json_arguments_detailed(inner)
        if result.status == "wrapped":
            return _wrap(text)
        note = "removed code fence" + ("" if result.status == "valid" else "; " + result.note)
        return JsonArgsRepair(result.text, "repaired", note)

    obj = _lenient_loads(s)
    if obj is not _FAIL:
        result = _from_parsed(obj, text, strict=False)
        if result.status != "wrapped":
            return JsonArgsRepair(result.text, "repaired", "lenient parse (control characters / NaN)")

    start = s.find("{")
    if start != -1:
        try:
            first, end = _LENIENT_DECODER.raw_decode(s, start)
        except (ValueError, RecursionError):
            pass
        else:
            if isinstance(first, dict):
                dropped = []
                if start:
                    dropped.append("leading junk")
                if s[end:].strip():
                    dropped.append("trailing data")
                return JsonArgsRepair(
                    normalise_json_object(first), "repaired", "dropped " + " and ".join(dropped)
                )
        closed = _close_truncated(s[start:])
        if closed is not None:
            return JsonArgsRepair(normalise_json_object(closed), "repaired", "closed truncated object")

    if len(s) <= _LITERAL_EVAL_LIMIT:
        try:
            lit = ast.literal_eval(s)
        except Exception:  # noqa: BLE001 - any failure just means "not a literal"
            lit = None
        if isinstance(lit, dict) and all(isinstance(k, str) for k in lit):
            try:
                return JsonArgsRepair(
                    normalise_json_object(_jsonable(lit)), "repaired", "python literal dict"
                )
            except (TypeError, ValueError):
                pass
    return _wrap(text)


# --------------------------------------------------------------------------- helpers


class _Fail:
    """Sentinel type for a failed parse."""


_FAIL: Final = _Fail()


def _reject_constant(name: str) -> Any:
    """``parse_constant`` hook for the strict pass: NaN/Infinity are not JSON."""
    raise ValueError(f"non-JSON constant {name}")


def _null_constant(name: str) -> None:
    """``parse_constant`` hook for the lenient passes: NaN/Infinity -> null."""
    return None


_LENIENT_DECODER: Final = json.JSONDecoder(strict=False, parse_constant=_null_constant)


def _lenient_loads(s: str) -> Any:
    """``json.loads`` accepting control characters and NaN; ``_FAIL`` on error."""
    try:
        return _LENIENT_DECODER.decode(s)
    except (ValueError, RecursionError):
        return _FAIL


def _wrap(text: str) -> JsonArgsRepair:
    """Wrap unrepairable text so that it is carried, not lost."""
    return JsonArgsRepair(normalise_json_object({"_raw": text}), "wrapped", "unrepairable; wrapped as _raw")


def _from_parsed(obj: Any, text: str, *, strict: bool) -> JsonArgsRepair:
    """Turn a successfully parsed JSON value into an arguments object."""
    if isinstance(obj, dict):
        return JsonArgsRepair(normalise_json_object(obj), "valid" if strict else "repaired", "ok")
    if obj is None:
        return JsonArgsRepair("{}", "repaired", "null arguments")
    if isinstance(obj, str):
        inner = _lenient_loads(obj.strip())
        if isinstance(inner, dict):
            return JsonArgsRepair(normalise_json_object(inner), "repaired", "double-encoded JSON")
    return _wrap(text)


def _jsonable(value: Any) -> Any:
    """Convert a ``literal_eval`` result to JSON-compatible types (or raise)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"not JSON-compatible: {type(value).__name__}")


def _close_truncated(s: str) -> dict[str, Any] | None:
    """Close a truncated (or trailing-comma) JSON object starting at ``s[0] == '{'``.

    Returns the parsed object or ``None``.  Scans with regexes over string
    bodies, so it is linear and does not loop per character inside strings.
    """
    out: list[str] = []
    stack: list[str] = []
    # Places where cutting the output and closing is a sensible fallback:
    # (length of ``out`` to keep, closers to append).
    cuts: list[tuple[int, str]] = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c in _WS:
            i += 1
            continue
        if c == '"':
            j = _STR_BODY_RE.match(s, i + 1).end()  # type: ignore[union-attr]
            if j < n and s[j] == '"':
                out.append(s[i : j + 1])
                i = j + 1
                continue
            body = _PARTIAL_ESCAPE_RE.sub("", s[i + 1 : j])  # j == n or a lone trailing backslash
            out.append('"' + body + '"')
            break
        if c in "{[":
            stack.append("}" if c == "{" else "]")
            out.append(c)
            cuts.append((len(out), "".join(reversed(stack))))
            i += 1
            continue
        if c in "}]":
            if not stack or stack[-1] != c:
                return None
            if out and out[-1] == ",":
                out.pop()
            stack.pop()
            out.append(c)
            i += 1
            if not stack:
                return _as_dict("".join(out))
            continue
        if c == ",":
            cuts.append((len(out), "".join(reversed(stack))))
            out.append(c)
            i += 1
            continue
        if c == ":":
            out.append(c)
            i += 1
            continue
        m = _LITERAL_RE.match(s, i)
        assert m is not None
        out.append(m.group())
        i = m.end()
    if not stack:
        return None
    tail = list(out)
    while tail and tail[-1] in (",", ":"):
        tail.pop()
    obj = _as_dict("".join(tail) + "".join(reversed(stack)))
    if obj is not None:
        return obj
    for keep, closers in reversed(cuts):
        obj = _as_dict("".join(out[:keep]) + closers)
        if obj is not None:
            return obj
    return None


def _as_dict(candidate: str) -> dict[str, Any] | None:
    """Leniently parse ``candidate``; return it when it is an object."""
    obj = _lenient_loads(candidate)
    return obj if isinstance(obj, dict) else None
