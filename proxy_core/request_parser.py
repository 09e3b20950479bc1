"""Chat requests parsed once per message, however many turns resend them.

An agent sends its whole conversation on every turn, and each turn's body
is the previous one with a message or two added: byte for byte the same up
to the end of the last message it had, then the new messages, then the
same closing fields (`tools`, `stream`, ...). `RequestParser` keeps, for a
few recent bodies, where the last message ended and where the messages
array closed. A body that starts with the first part of one of them and
ends with the second is that request plus what lies between: only the new
messages are parsed and checked, and the request reuses the earlier one's
parsed messages, which are then the same objects in both turns.

A body can also be a recent one cut back: the same bytes up to the end of
one of its messages, then the same closing fields. That is an agent's
history after an undo (opencode's `/undo`, a revert) or an earlier turn
sent again. Its messages are the first ones of the earlier request, as
the same objects, and nothing is parsed. Where each message of the earlier
body ends is worked out when first needed (msgspec splits the array into
raw values) and kept.

Exact, not heuristic: identical bytes up to the end of a complete value
leave a JSON parser in the same state, so the prefix means what it meant
before; the new messages must parse on their own as a comma-led list of
values, and the suffix then closes the array as it did before. Anything
else (an edited or compacted history, another model, a changed option)
is parsed whole, as the first request of a session is.

Such a body is parsed whole, but message by message: msgspec
splits its messages array into each message's bytes, and a message whose
bytes were read lately (new messages of an extended body too) is that very
object again, not parsed again. That is a history whose early message
changed (an edited first prompt, the date in opencode's system prompt
turning at midnight) or a session whose body is no longer kept (more
than `max_bodies` at once): its known messages keep their identity, so
what was worked out for each message object downstream (its repairs,
encoding and name in the journal) is found again. Identical bytes of a
complete value parse to an equal value; anything else is read as before.

Where a body's messages sit is learned from that whole parse: msgspec
splits the top-level object into raw values, and the positions are checked
byte for byte against the body. That needs the top level's keys written
plainly (no escapes, none repeated), as `JSON.stringify` (opencode, the
Vercel AI SDK) and Python's `json.dumps` (with or without spaces) write
them; for other bodies nothing is kept and every turn is parsed whole,
which is correct, only slower.
"""

from __future__ import annotations

import bisect
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from .errors import ClientRequestError
from .lru import LRU
from .openai_wire import ChatRequest, check_message, loads_clean, parse_chat_request

#: JSON's whitespace (bytes.strip() would also take \x0b and \x0c, which JSON refuses).
_WS = b" \t\n\r"
_SPLIT: msgspec.json.Decoder[dict[str, msgspec.Raw]] = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ITEMS: msgspec.json.Decoder[list[msgspec.Raw]] = msgspec.json.Decoder(list[msgspec.Raw])


def parse_json_body(raw: bytes) -> object:
    """The body as JSON, or a `ClientRequestError` that says why not."""
    return _read_body(raw)[0]


def _read_body(raw: bytes) -> tuple[object, bool]:
    """`parse_json_body`, and whether orjson read the body as written."""
    if not raw:
        raise ClientRequestError("request body is empty; expected JSON")
    try:
        return _loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientRequestError(f"request body is not valid JSON: {exc}",
                                 code="invalid_json") from None


def _loads(raw: bytes) -> tuple[Any, bool]:
    """`loads_clean(raw)`, and whether orjson read it as written: the bytes then say
    exactly what the value says (`ChatRequest.raw`)."""
    try:
        return orjson.loads(raw), True
    except orjson.JSONDecodeError:  # `loads_clean`'s other paths, or its error
        return loads_clean(raw), False


@dataclass(slots=True)
class _Known:
    """A body seen recently, and where in it its messages end."""

    raw: bytes
    open: int     # the `[` that opens the messages array
    end: int      # just after the last message
    close: int    # the `]` that closes the messages array: raw[close:] is the suffix
    request: ChatRequest
    #: Just after each message, once a cut-back body asked (see `_message_ends`).
    ends: list[int] | None = None


class RequestParser:
    """Parses chat request bodies, reusing the parse of a recent body each extends.

    Remembers up to `max_bodies` bodies and `max_bytes` of them (most
    recently used kept; none larger than a quarter of that), plus the
    parsed requests, which the turns in memory hold anyway; and the
    messages read lately by their bytes, up to `max_message_bytes` of
    bytes and `max_messages` messages (least recently used dropped first;
    none larger than a sixteenth of the bytes), with the parsed messages,
    which those requests hold too.
    `hits` and `misses` count the requests that reused an earlier parse
    and those parsed whole; `reused_messages` the messages found by their
    bytes. Used from the event loop only.
    """

    def __init__(self, max_bodies: int = 16, max_bytes: int = 32 * 1024 * 1024,
                 max_message_bytes: int = 16 * 1024 * 1024, max_messages: int = 16_384) -> None:
        self.max_bodies = max_bodies
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._known: OrderedDict[int, _Known] = OrderedDict()
        self._next = 0
        #: messages read lately, by their bytes as written
        self._messages: LRU[bytes, Any] = LRU(max_message_bytes, max_messages)
        self.reused_messages = 0

    def parse(self, raw: bytes) -> ChatRequest:
        """The request in `raw`; raises `ClientRequestError` for a body that is not one."""
        for slot in reversed(self._known):
            known = self._known[slot]
            extended = _extend(known, raw, self._read_messages)
            if extended is not None:
                request, end, close = extended
                self._forget(slot)  # what it knew, the new one knows too
                self._remember(_Known(raw, known.open, end, close, request))
                self.hits += 1
                return request
            cut = _cut_back(known, raw)
            if cut is not None:  # the longer one stays: the agent may go back to it
                request, ends, close = cut
                self._remember(_Known(raw, known.open, ends[-1], close, request, ends))
                self.hits += 1
                return request
        top = _top_level(raw)
        whole = self._by_message(raw, top[0]) if top is not None else None
        if whole is None:  # not split, or wrong: the whole parse says what it says
            payload, exact = _read_body(raw)
            whole = parse_chat_request(payload, raw if exact else None)
        self.misses += 1
        if top is not None:
            self._remember(_Known(raw, *top[1], whole))
        return whole

    def _by_message(self, raw: bytes, fields: dict[str, msgspec.Raw]) -> ChatRequest | None:
        """A whole parse of the split top level, each message read or found by its bytes;
        None for a body that is not a request or that orjson cannot read outside its
        messages (the whole parse then says what is wrong, or reads it)."""
        try:
            messages, exact = self._read_messages(fields["messages"], 0)
            body = {name: messages if name == "messages" else orjson.loads(memoryview(value))
                    for name, value in fields.items()}
        except (ValueError, UnicodeDecodeError, ClientRequestError):
            return None
        return parse_chat_request(body, raw if exact else None, messages_checked=True)

    def _read_messages(self, array: bytes | msgspec.Raw, first: int) -> tuple[list[Any], bool]:
        """The messages of a JSON array (the first one at index `first` of its request),
        checked, and whether each was read as written. A message whose bytes were read
        lately is that very object again. Raises `ValueError` for an array that is not
        JSON and `ClientRequestError` for an item that is not a message."""
        try:
            items = _ITEMS.decode(array)
        except (msgspec.DecodeError, RecursionError):  # what only `loads_clean` reads (a
            # lone surrogate), or nests too deep for msgspec
            messages, exact = _loads(bytes(array))
            if not isinstance(messages, list):
                raise ValueError("not an array") from None
            for i, message in enumerate(messages, start=first):
                check_message(i, message)
            return messages, exact
        kept = self._messages
        messages = []
        exact = True
        for i, item in enumerate(items, start=first):
            data = bytes(item)
            message = kept.get(data)
            if message is not None:
                self.reused_messages += 1
            else:
                message, as_written = _loads(data)
                check_message(i, message)
                if as_written:
                    kept.put(data, message, len(data))
                exact = exact and as_written
            messages.append(message)
        return messages, exact

    def clear(self) -> None:
        self._known.clear()
        self.bytes = 0
        self._messages.clear()

    def __len__(self) -> int:
        return len(self._known)

    def _forget(self, slot: int) -> None:
        self.bytes -= len(self._known.pop(slot).raw)

    def _remember(self, known: _Known) -> None:
        if len(known.raw) > self.max_bytes // 4:
            return
        self._known[self._next] = known
        self._next += 1
        self.bytes += len(known.raw)
        while len(self._known) > self.max_bodies or self.bytes > self.max_bytes:
            self._forget(next(iter(self._known)))


_ReadMessages = Callable[[bytes | msgspec.Raw, int], tuple[list[Any], bool]]


def _extend(known: _Known, raw: bytes, read: _ReadMessages
            ) -> tuple[ChatRequest, int, int] | None:
    """`raw` as `known`'s request plus messages, with where they end; None if it is not."""
    old = known.raw
    suffix = len(old) - known.close
    stop = len(raw) - suffix
    if stop < known.end:
        return None
    view = memoryview(old)
    if not (raw.startswith(view[:known.end]) and raw.endswith(view[known.close:])):
        return None
    middle = raw[known.end:stop]
    added = middle.strip(_WS)
    before = known.request
    exact = True  # nothing new, or the new part read as written
    if not added:
        messages = before.messages
        end = known.end
    else:
        if added[:1] != b",":
            return None
        try:
            new, exact = read(b"[" + added[1:] + b"]", len(before.messages))
        except (ValueError, UnicodeDecodeError):
            return None  # parsed whole, for the error message a whole parse gives
        if not new:  # "[...,]": a trailing comma is not JSON
            return None
        messages = before.messages + new
        end = known.end + len(middle.rstrip(_WS))
    return _with_messages(before, messages, raw if exact else None), end, stop


def _cut_back(known: _Known, raw: bytes) -> tuple[ChatRequest, list[int], int] | None:
    """`raw` as `known`'s request with only its first messages, with where they end and
    where the array closes; None if it is not that.

    `raw` must be `known.raw` up to just after one of its messages (not the
    last: that is `_extend`'s case), JSON whitespace, then its suffix.
    """
    old = known.raw
    stop = len(raw) - (len(old) - known.close)
    if stop <= known.open or not raw.endswith(memoryview(old)[known.close:]):
        return None
    cut = _skip_back(raw, stop, known.open)
    if not (known.open + 1 < cut < known.end and raw.startswith(memoryview(old)[:cut])):
        return None
    ends = _message_ends(known)
    if ends is None:
        return None
    count = bisect.bisect_left(ends, cut)
    if count == len(ends) or ends[count] != cut:
        return None  # cut inside a message
    request = known.request
    return _with_messages(request, request.messages[:count + 1], raw), ends[:count + 1], stop


def _message_ends(known: _Known) -> list[int] | None:
    """Where each message of `known.raw` ends (kept on `known`); None if they cannot be
    matched to the bytes."""
    if known.ends is not None:
        return known.ends
    raw = known.raw
    try:
        items = _ITEMS.decode(memoryview(raw)[known.open:known.close + 1])
    except msgspec.DecodeError:
        return None
    if len(items) != len(known.request.messages):
        return None
    ends: list[int] = []
    pos = known.open + 1
    for i, item in enumerate(items):
        if i and (pos := _after(raw, pos, b",")) < 0 or (pos := _after(raw, pos, item)) < 0:
            return None
        ends.append(pos)
    known.ends = ends
    return ends


def _with_messages(before: ChatRequest, messages: list[dict[str, Any]], raw: bytes | None
                   ) -> ChatRequest:
    """`before` with these messages, read from `raw` (None: not exactly as written, when
    `before` was not either or the new part was not)."""
    body = dict(before.body)
    body["messages"] = messages
    return ChatRequest(before.model, messages, before.stream, before.include_usage, body,
                       raw if before.raw is not None else None)


def _top_level(raw: bytes) -> tuple[dict[str, msgspec.Raw], tuple[int, int, int]] | None:
    """The top level's raw values, and where the messages array opens, its messages end
    and it closes in `raw`; None if not found.

    The top level is split into raw values by msgspec, then walked as
    `{"key": value, ...}` with each key and value compared in place, JSON
    whitespace allowed around the top level's braces, colons and commas
    (`JSON.stringify` writes none; Python's `json.dumps`, which `requests`
    and aiohttp send, writes `", "` and `": "`). An escaped or repeated key
    at the top level fails the comparison, and the body is simply not
    remembered.
    """
    try:
        fields = _SPLIT.decode(raw)
    except (msgspec.DecodeError, RecursionError):  # too deep for msgspec: the whole parse
        return None
    pos = _skip(raw, 0)
    if raw[pos:pos + 1] != b"{":
        return None
    pos += 1
    where: tuple[int, int, int] | None = None
    for i, (key, value) in enumerate(fields.items()):
        if i and (pos := _after(raw, pos, b",")) < 0 \
                or (pos := _after(raw, pos, orjson.dumps(key))) < 0 \
                or (pos := _after(raw, pos, b":")) < 0:
            return None
        start = _skip(raw, pos)
        if (pos := _after(raw, start, value)) < 0:
            return None
        if key == "messages":
            close = pos - 1
            if raw[close:close + 1] != b"]":
                return None
            where = (start, _skip_back(raw, close, start + 1), close)
    pos = _skip(raw, pos)
    if where is None or raw[pos:pos + 1] != b"}" or _skip(raw, pos + 1) != len(raw):
        return None
    return fields, where


_WHITESPACE = re.compile(rb"[ \t\n\r]*")


def _after(raw: bytes, pos: int, token: bytes | msgspec.Raw) -> int:
    """Just after `token`, if it comes next in `raw` from `pos` (after JSON whitespace);
    -1 if something else does."""
    pos = _skip(raw, pos)
    data = memoryview(token)
    return pos + len(data) if raw.startswith(data, pos) else -1


def _skip_back(raw: bytes, pos: int, floor: int) -> int:
    """The first position of the JSON whitespace that ends at `pos` (not before `floor`)."""
    while pos > floor and raw[pos - 1] in _WS:
        pos -= 1
    return pos


def _skip(raw: bytes, pos: int) -> int:
    """The first position at or after `pos` that is not JSON whitespace."""
    match = _WHITESPACE.match(raw, pos)
    assert match is not None  # `*` matches the empty run
    return match.end()
