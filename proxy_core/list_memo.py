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
    stay theirs while kept.
    """

    def __init__(self, starts: int = 16, per_start: int = 1) -> None:
        self.starts = starts
        self.per_start = per_start
        self._kept: OrderedDict[tuple[str, int], list[tuple[tuple[Any, ...], V]]] = \
            OrderedDict()

    def find(self, field: str, items: Sequence[Any]) -> tuple[int, V] | None:
        """The length and value of the longest kept list `items` starts with, if any."""
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
        return len(best[0]), best[1]

    def keep(self, field: str, items: Sequence[Any], value: V) -> None:
        """Keep `value` for `items` (an empty list is not kept)."""
        if not items:
            return
        key = (field, id(items[0]))
        held = tuple(items)
        kept = [k for k in self._kept.get(key, ()) if not starts_with(held, k[0])]
        kept.append((held, value))
        self._kept[key] = kept[-self.per_start:]
        self._kept.move_to_end(key)
        while len(self._kept) > self.starts:
            self._kept.popitem(last=False)

    def clear(self) -> None:
        self._kept.clear()

    def sizes(self) -> list[int]:
        """How many lists are kept under each first item (oldest first)."""
        return [len(kept) for kept in self._kept.values()]
