"""Request bodies encoded for the upstream, each message encoded once, not once per turn.

A turn's body holds the same message objects as the turn before
(`RequestParser` shares them, and history repairs return the same repaired
object for the same message), plus a few new ones. `PartEncodings` keeps
the orjson encoding of each message and tool schema it has encoded, by
the object's identity, and writes a body with those encodings spliced in
as `orjson.Fragment`s: only new objects are encoded, and the rest is a
copy of bytes. Message objects are never changed once made (repairs build
new ones), and an object is held while its encoding is kept, so its id
cannot name another object meanwhile. Whole lists are kept the same way:
a turn's messages are the last turn's plus one or two.
"""

from __future__ import annotations

from typing import Any

import orjson

from .contents import PART_FIELDS, encode
from .list_memo import ListMemo
from .lru import LRU


class PartEncodings:
    """Encodes request bodies, reusing the encodings of part objects seen before.

    Keeps up to `max_bytes` of part encodings and `max_items` parts, least
    recently used dropped first (the count bounds what the kept objects hold
    in memory, which for small messages is several times their encoding);
    parts larger than `max_bytes / 16` are encoded each time. The
    last `LISTS` part lists (by field and first item) are kept with their
    encodings: the next turn's list, which starts with the very items of
    one, takes those whole (a copy of pointers, compared in C) and only its
    new items are looked up one by one. The encodings stay separate
    fragments that orjson copies into the body: joining them here would
    make and fault in another body-sized buffer per turn, which measured
    slower. Used from the event loop only.
    """

    LISTS = 16

    def __init__(self, max_bytes: int = 32 * 1024 * 1024, max_items: int = 16_384) -> None:
        #: id(item) -> (item, its encoding); the item is held, so its id stays its own
        self._kept: LRU[int, tuple[Any, orjson.Fragment, int]] = LRU(max_bytes, max_items)
        #: part lists encoded lately -> their encodings. A kept list holds its items and
        #: their encodings whatever the LRU dropped: together at most `max_bytes` / 2.
        self._lists: ListMemo[list[Any]] = ListMemo(starts=self.LISTS, max_bytes=max_bytes // 2)

    def body(self, body: dict[str, Any]) -> bytes:
        """`body` as compact JSON (orjson; what orjson refuses, `contents.encode`)."""
        try:
            fields = {name: self._array(name, value)
                      for name in PART_FIELDS if isinstance(value := body.get(name), list)}
            return orjson.dumps({**body, **fields} if fields else body)
        except orjson.JSONEncodeError:  # a lone surrogate, a huge integer, deep nesting
            return encode(body)

    def __len__(self) -> int:
        return len(self._kept)

    def _array(self, field: str, items: list[Any]) -> list[Any]:
        """The list's encodings, from the kept ones of the list it extends."""
        if not items:
            return items
        found = self._lists.find(field, items)
        start, encoded, size = found if found is not None else (0, [], 0)
        if start < len(items):
            new = [self._fragment(item) for item in items[start:]]
            encoded = encoded + [part for part, _ in new]
            size += sum(length for _, length in new)
        self._lists.keep(field, items, encoded, size)
        return encoded

    def _fragment(self, item: Any) -> tuple[Any, int]:
        """The item's encoding (kept or made), and its size."""
        if type(item) is not dict:
            return item, 0
        kept = self._kept.get(id(item))
        if kept is not None and kept[0] is item:
            return kept[1], kept[2]
        data = orjson.dumps(item)
        fragment = orjson.Fragment(data)
        self._kept.put(id(item), (item, fragment, len(data)), len(data))
        return fragment, len(data)
