"""Request bodies encoded for the upstream, each message encoded once, not once per turn.

A turn's body holds the same message objects as the turn before
(`RequestParser` shares them, and history repairs return the same repaired
object for the same message), plus a few new ones. `PartEncodings` keeps
the orjson encoding of each message and tool schema it has encoded, by
the object's identity, and writes a body with those encodings spliced in
as `orjson.Fragment`s: only new objects are encoded, and the rest is a
copy of bytes. Message objects are never changed once made (repairs build
new ones), and an object is held while its encoding is kept, so its id
cannot name another object meanwhile.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import orjson

from .contents import PART_FIELDS


class PartEncodings:
    """Encodes request bodies, reusing the encodings of part objects seen before.

    Keeps up to `max_bytes` of encodings, least recently used dropped first;
    parts larger than `max_bytes / 16` are encoded each time. Used from the
    event loop only.
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._kept: OrderedDict[int, tuple[Any, orjson.Fragment, int]] = OrderedDict()

    def body(self, body: dict[str, Any]) -> bytes:
        """`body` as compact JSON (orjson; what orjson refuses, `json` escapes)."""
        try:
            fields = {name: [self._fragment(item) for item in value]
                      for name in PART_FIELDS if isinstance(value := body.get(name), list)}
            return orjson.dumps({**body, **fields} if fields else body)
        except orjson.JSONEncodeError:  # a lone surrogate, a huge integer: let json escape it
            return json.dumps(body, separators=(",", ":")).encode()

    def __len__(self) -> int:
        return len(self._kept)

    def _fragment(self, item: Any) -> Any:
        if type(item) is not dict:
            return item
        kept = self._kept.get(id(item))
        if kept is not None and kept[0] is item:
            self._kept.move_to_end(id(item))
            return kept[1]
        data = orjson.dumps(item)
        fragment = orjson.Fragment(data)
        if len(data) <= self.max_bytes // 16:
            self._kept[id(item)] = (item, fragment, len(data))
            self.bytes += len(data)
            while self.bytes > self.max_bytes:
                _, (_, _, size) = self._kept.popitem(last=False)
                self.bytes -= size
        return fragment
