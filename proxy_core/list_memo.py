"""Work kept for a list, found again for a list that starts with the very same items.

An agent sends its whole conversation every turn, and this turn's lists
(messages, tool schemas, their parts) are the last turn's with an item or
two added, as the very objects (`RequestParser` hands each turn the last
turn's parsed messages). Whatever was worked out for the last turn's list
(its encodings, its stored names, its row ids, its shared objects) holds
for that much of this one, and only the new items need work. Lists are
compared by the identity of their items, in C.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from operator import is_
from typing import Any, Generic, TypeVar

V = TypeVar("V")


def starts_with(items: Sequence[Any], named: Sequence[Any]) -> bool:
    """Whether `items` starts with the very objects of `named` (not empty); compared in C."""
    return (len(named) <= len(items) and named[-1] is items[len(named) - 1]
            and all(map(is_, named, items)))


class ListMemo(Generic[V]):
    """A value kept for each of a few recent lists; `find` gives the longest kept list
    that a list starts with, and its value.

    Lists are filed under a field name and their first item's identity: up
    to `per_start` for each (the newest kept; keeping a list drops those it
    extends), and `starts` such first items, the least recently used
    dropped first. A kept list's items are held (as a tuple), so their ids
    stay theirs while kept. With `max_bytes`, the lists kept also add up to
    at most that many bytes, each counted at the size it was kept with (what
    its items take, as the caller measures it): a list is the very objects
    of a request, which may be large and which nothing else may still hold.
    """

    def __init__(self, starts: int = 16, per_start: int = 1,
                 max_bytes: int | None = None) -> None:
        self.starts = starts
        self.per_start = per_start
        self.max_bytes = max_bytes
        self.bytes = 0
        self._kept: OrderedDict[tuple[str, int], list[tuple[tuple[Any, ...], V, int]]] = \
            OrderedDict()

    def find(self, field: str, items: Sequence[Any]) -> tuple[int, V, int] | None:
        """The length, value and size of the longest kept list `items` starts with, if any."""
        if not items:
            return None
        key = (field, id(items[0]))
        kept = self._kept.get(key)
        if not kept:
            return None
        best = max((k for k in kept if starts_with(items, k[0])),
                   key=lambda k: len(k[0]), default=None)
        if best is None:
            return None
        self._kept.move_to_end(key)
        return len(best[0]), best[1], best[2]

    def keep(self, field: str, items: Sequence[Any], value: V, size: int = 0) -> None:
        """Keep `value` for `items`, of `size` bytes (an empty list, or one larger than
        `max_bytes` alone, is not kept)."""
        if not items or (self.max_bytes is not None and size > self.max_bytes):
            return
        key = (field, id(items[0]))
        held = tuple(items)
        before = self._kept.pop(key, [])
        kept = [k for k in before if not starts_with(held, k[0])]
        kept.append((held, value, size))
        kept = kept[-self.per_start:]
        while self.max_bytes is not None and sum(k[2] for k in kept) > self.max_bytes:
            kept.pop(0)  # its own oldest lists go before other starts' do
        self.bytes += sum(k[2] for k in kept) - sum(k[2] for k in before)
        self._kept[key] = kept
        while len(self._kept) > self.starts or (
                self.max_bytes is not None and self.bytes > self.max_bytes):
            _, dropped = self._kept.popitem(last=False)
            self.bytes -= sum(k[2] for k in dropped)

    def clear(self) -> None:
        self._kept.clear()
        self.bytes = 0

    def sizes(self) -> list[int]:
        """How many lists are kept under each first item (oldest first)."""
        return [len(kept) for kept in self._kept.values()]
