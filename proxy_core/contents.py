"""Requests split into content-addressed parts, so a session's history is kept once.

An agent sends its whole conversation on every turn: the system prompt, the
tool schemas and every message so far, each turn one or two messages longer
than the last. `split` cuts a request into a *skeleton* (everything but the
lists in `PART_FIELDS`, which keep their place as empty lists) and its
*parts* (each message, each tool schema), and names every part by a digest
of its encoding. The journal stores a part once however many turns send it,
and `Interner` lets the turns in memory share one object per part.

The encoding is compact JSON with the keys in the order the client sent
them (so a record reads exactly as it arrived): agents resend their history
byte for byte, so the same message gets the same name every time.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from .list_memo import ListMemo
from .lru import LRU
from .secrets import Redactor

#: The request fields whose list items are stored as parts, in this order.
PART_FIELDS = ("messages", "tools", "system")


#: The deepest nesting Switchboard reads: orjson's (deeper is refused by name, see
#: `openai_wire.loads_clean`). Whatever is read must encode again (`encode`).
MAX_DEPTH = 1024
#: Python's recursion limit while `json` encodes: enough for `MAX_DEPTH` levels below
#: whatever stack the caller already has (an event loop and its coroutines).
_ENCODING_RECURSION = 4 * MAX_DEPTH


def encode(value: Any) -> bytes:
    """Compact JSON as UTF-8, keys in their order: orjson (10x faster than `json` here).

    What orjson refuses (an integer beyond 64 bits, a lone surrogate, more
    than 254 levels of nesting) is encoded by `json`, with a lone surrogate
    escaped: UTF-8 cannot hold it. `json` recurses once per level, and at
    Python's default limit of 1,000 frames a value nested 1,000 deep, which
    the parser reads, would fail; so the limit is raised first, once and for
    good (setting it back from one thread could cut short another's encoding).
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        pass
    allow_deep_json()
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"),
                          default=str).encode()


def readable(value: Any, indent: int | None = 2) -> str:
    """`value` as JSON for a person (the dashboard's views, exports), indented, however
    deep it nests: `json` indents in Python, a few frames per level."""
    allow_deep_json()
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


def allow_deep_json() -> None:
    """Let `json` write values as deep as Switchboard reads (`MAX_DEPTH`) from here on.

    Every front end calls it when it starts (`runner.run`): session
    fingerprints, telemetry, Bedrock's translation, history repairs and the
    dashboard write request values with `json` too. `encode` and `readable`
    call it as well, for code that runs without a front end (tests, library
    use). Never lowered: see `encode`.
    """
    if sys.getrecursionlimit() < _ENCODING_RECURSION:
        sys.setrecursionlimit(_ENCODING_RECURSION)


def digest(data: bytes) -> str:
    """The name of a part: 128 bits of BLAKE2b, in hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def split(request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The skeleton (part lists emptied, in place) and the parts by field."""
    skeleton = dict(request)
    parts: dict[str, list[Any]] = {}
    for name in PART_FIELDS:
        value = request.get(name)
        if isinstance(value, list):
            parts[name] = value
            skeleton[name] = []
    return skeleton, parts


@dataclass(frozen=True, slots=True)
class Part:
    """One part, ready for the journal.

    `key` names the part as the client sent it (for sharing in memory);
    `name` names what is stored, after redaction. `size` is its encoded
    size. The stored text of a part no earlier request had is in its
    request's `PreparedRequest.bodies`: a part is the same object turn
    after turn while its list is remembered (`Namer`), so the journal can
    tell a list it wrote before by identity.
    """

    field: str
    position: int
    key: str
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request as the journal writes it: the redacted skeleton, its parts per field
    (in `PART_FIELDS` order), and the redacted text of the parts new to the namer
    (by name; the others were stored by then)."""

    skeleton: str
    fields: dict[str, tuple[Part, ...]]
    bodies: dict[str, str]

    @property
    def parts(self) -> tuple[Part, ...]:
        """Every part, field after field."""
        return tuple(part for parts in self.fields.values() for part in parts)


class Namer:
    """Names and redacts parts, remembering what it has done.

    A part seen before (by its encoding, compared whole) is neither hashed,
    redacted nor kept as text again: an agent resends its history on every
    turn, and that work is done once per part, not once per turn. A part
    that is the very object named before (`RequestParser` hands each turn
    the earlier turn's parsed messages) is not even encoded again: message
    objects are never changed once parsed, and the object is held while
    remembered, so its id cannot be reused; and a part list that starts with
    the very items of a list named lately takes their parts whole (lists
    are kept for the last 16 first items, up to `LISTS_PER_START` each).
    Up to `max_bytes` of encodings and `max_items` parts are remembered,
    each way, least recently used dropped first (parts above
    `max_bytes / 16` are not). It starts afresh
    when the redactor learns a secret (text redacted before may hold it)
    and after `forget()` (the journal dropped parts). Runs on one thread at
    a time (the journal's writer); `forget` may come from any.
    """

    #: Part lists kept per first item (see `_lists`; 16 first items are kept).
    LISTS_PER_START = 4

    def __init__(self, redactor: Redactor, max_bytes: int = 32 * 1024 * 1024,
                 max_items: int = 16_384) -> None:
        self.redactor = redactor
        #: a part's encoding -> (key, name)
        self._known: LRU[bytes, tuple[str, str]] = LRU(max_bytes, max_items)
        #: id(item) -> (item, its Part), for parts named as that very object
        self._objects: LRU[int, tuple[Any, Part]] = LRU(max_bytes, max_items)
        #: Part lists named lately, with their parts: the next turn's list starts with the
        #: very items of one, whose parts are then taken whole. Several per first item: a
        #: turn's request and the repaired messages it sent start with the same system
        #: prompt and part ways at the first repaired message.
        self._lists: ListMemo[tuple[Part, ...]] = ListMemo(per_start=self.LISTS_PER_START,
                                                            max_bytes=max_bytes)
        self._generation = redactor.generation
        self._forget = False

    def forget(self) -> None:
        self._forget = True

    def prepare(self, request: dict[str, Any]) -> PreparedRequest:
        if self._forget or self._generation != self.redactor.generation:
            self._forget = False
            self._generation = self.redactor.generation
            self._known.clear()
            self._objects.clear()
            self._lists.clear()
        skeleton, fields = split(request)
        named: dict[str, tuple[Part, ...]] = {}
        bodies: dict[str, str] = {}
        known = self._known
        objects = self._objects
        for field_name, items in fields.items():
            prefix, size = self._named_prefix(field_name, items)
            parts: list[Part] = []
            for position in range(len(prefix), len(items)):
                item = items[position]
                same = objects.get(id(item))
                if same is not None and same[0] is item:
                    part = same[1]  # as it was named last time: usually at the same place
                    if part.position != position or part.field != field_name:
                        part = Part(field_name, position, part.key, part.name, part.size)
                        objects.put(id(item), (item, part), part.size)
                    parts.append(part)
                    continue
                data = encode(item)
                seen = known.get(data)
                if seen is None:
                    key = digest(data)
                    text = data.decode()
                    body = self.redactor(text)
                    name = key if body == text else digest(body.encode())
                    known.put(data, (key, name), len(data))
                    bodies[name] = body
                else:
                    key, name = seen
                part = Part(field_name, position, key, name, len(data))
                if isinstance(item, dict):
                    objects.put(id(item), (item, part), part.size)
                parts.append(part)
            named[field_name] = prefix + tuple(parts) if parts else prefix
            size += sum(part.size for part in parts)
            self._lists.keep(field_name, items, named[field_name], size)
        return PreparedRequest(self.redactor(encode(skeleton).decode()), named, bodies)

    def _named_prefix(self, field_name: str, items: list[Any]) -> tuple[tuple[Part, ...], int]:
        """The parts of the longest list named lately that `items` starts with (or none),
        and their size."""
        found = self._lists.find(field_name, items)
        return (found[1], found[2]) if found is not None else ((), 0)

    def body_of(self, request: dict[str, Any], part: Part) -> str:
        """The stored text of one part, made again (the journal lost the one it had)."""
        return self.redactor(encode(request[part.field][part.position]).decode())


class Interner:
    """One shared object per distinct part, so turns in memory share their history.

    Holds up to `max_bytes` of parts (by encoded size) and `max_items`
    parts, least recently used dropped first: a dropped part stays alive
    in the turns that hold it, later turns just get their own copy.
    `share` does a whole part list, and remembers the last `LISTS` it did:
    a list whose parts start with the very parts of one (`Namer` hands a
    turn the last turn's) takes that one's shared items whole, and only its
    new items are looked up.
    """

    LISTS = 16

    def __init__(self, max_bytes: int = 64 * 1024 * 1024, max_items: int = 16_384) -> None:
        #: a part's key -> its shared object
        self._parts: LRU[str, Any] = LRU(max_bytes, max_items, largest=max_bytes)
        #: part lists shared lately -> the shared items they stand for (at most
        #: `max_bytes` of them: the items are held, whatever `_parts` dropped)
        self._lists: ListMemo[list[Any]] = ListMemo(starts=self.LISTS, max_bytes=max_bytes)

    def intern(self, key: str, value: Any, size: int) -> Any:
        held = self._parts.get(key)
        if held is not None:
            return held
        self._parts.put(key, value, size)
        return value

    def share(self, field: str, parts: tuple[Part, ...], items: list[Any]) -> list[Any]:
        """`items` (named as `parts`) with each item replaced by its shared object."""
        shared = list(items)
        start = size = 0
        found = self._lists.find(field, parts)
        if found is not None:
            start, size = found[0], found[2]
            shared[:start] = found[1]
        intern = self.intern
        for part in parts[start:]:
            shared[part.position] = intern(part.key, shared[part.position], part.size)
            size += part.size
        self._lists.keep(field, parts, shared, size)
        return shared

    def __len__(self) -> int:
        return len(self._parts)
