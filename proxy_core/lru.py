"""A cache of the entries used most recently, bounded by their total size and by their count.

The caches that hold an agent's history from one turn to the next (the
parser's messages by their bytes, their encodings, their stored names,
the journal's shared objects) would otherwise grow with every session
the proxy serves: each is one of these. Both bounds matter: the size
(an entry's encoded bytes) bounds a few large messages, the count bounds
many small ones, whose objects take several times their encoding.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """Up to `max_bytes` of entries (each counted at the size it was put with) and
    `max_items` entries, the least recently used dropped first.

    An entry larger than `largest` (by default a sixteenth of `max_bytes`) is
    not kept: it would push out many others, and is rarely sent twice. Not
    thread-safe: each cache is used from one thread.
    """

    __slots__ = ("max_bytes", "max_items", "largest", "bytes", "_entries")

    def __init__(self, max_bytes: int, max_items: int, largest: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.largest = max_bytes // 16 if largest is None else largest
        self.bytes = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value kept for `key`, now the most recently used; None if none is."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V, size: int) -> None:
        """Keep `value` for `key` (replacing what was kept for it), unless it is too large."""
        if size > self.largest:
            return
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes or len(entries) > self.max_items:
            _, (_, dropped) = entries.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first."""
        return iter(self._entries)
