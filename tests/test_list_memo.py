"""`ListMemo`: what was worked out for a list is found again for a list that starts with
its very items — the longest such, never one that merely looks the same."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.list_memo import ListMemo, starts_with


def test_the_longest_kept_list_a_list_starts_with_is_found() -> None:
    a, b, c, d = ({"n": i} for i in range(4))
    memo: ListMemo[str] = ListMemo(per_start=4)
    memo.keep("messages", [a, b], "two")
    memo.keep("messages", [a, c], "other two")
    memo.keep("messages", [a, b, c], "three")  # extends [a, b]: that one is dropped
    assert memo.find("messages", [a, b, c, d]) == (3, "three", 0)
    assert memo.find("messages", [a, c, d]) == (2, "other two", 0)
    assert memo.find("messages", [a, b]) is None  # shorter than every kept list it begins
    assert memo.find("tools", [a, b, c]) is None  # another field
    assert memo.find("messages", [{"n": 0}, b, c]) is None  # equal is not the same
    assert memo.sizes() == [2]
    memo.keep("messages", [a, b], "two again")  # a shorter one kept after a longer one
    assert memo.find("messages", [a, b, c, d]) == (3, "three", 0)
    assert memo.find("messages", [a, b, d]) == (2, "two again", 0)


def test_what_is_kept_is_bounded() -> None:
    memo: ListMemo[int] = ListMemo(starts=3, per_start=2)
    firsts = [{"first": i} for i in range(5)]
    for i, first in enumerate(firsts):
        for branch in range(4):
            memo.keep("messages", [first, {"branch": branch}], i)
    assert memo.sizes() == [2, 2, 2]
    assert memo.find("messages", [firsts[0], {}]) is None  # the oldest first items went
    memo.clear()
    assert memo.sizes() == []


def test_the_lists_kept_are_bounded_by_their_size_too() -> None:
    memo: ListMemo[str] = ListMemo(starts=8, per_start=2, max_bytes=100)
    firsts = [{"first": i} for i in range(4)]
    memo.keep("messages", [firsts[0], {}], "a", 40)
    memo.keep("messages", [firsts[1], {}], "b", 40)
    assert memo.bytes == 80
    memo.keep("messages", [firsts[2], {}], "c", 40)  # 120: the oldest start goes
    assert memo.bytes == 80 and memo.find("messages", [firsts[0], {}]) is None
    memo.keep("messages", [firsts[3], {}], "huge", 101)  # larger than all: never kept
    assert memo.bytes == 80 and memo.find("messages", [firsts[3], {}]) is None
    grown = [firsts[1], {}, {}]
    memo.keep("messages", grown, "b grown", 60)  # replaces the list it extends
    assert memo.bytes == 100 and memo.find("messages", [*grown, {}]) == (3, "b grown", 60)
    start, other = {"first": "big"}, {"other": 1}
    memo.keep("messages", [start, {}], "x", 60)
    memo.keep("messages", [start, other], "y", 60)  # its own older list goes, not all
    assert memo.find("messages", [start, other, {}]) == (2, "y", 60)
    assert memo.bytes <= 100
    memo.clear()
    assert memo.bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=6), st.lists(st.integers(0, 5), max_size=6))
def test_starts_with_is_identity_of_every_item(named: list[int], items: list[int]) -> None:
    pool = [object() for _ in range(6)]
    a, b = [pool[i] for i in named], [pool[i] for i in items]
    expected = 0 < len(a) <= len(b) and all(x is y for x, y in zip(a, b, strict=False))
    assert (bool(a) and starts_with(b, a)) == expected


def test_an_empty_list_is_neither_kept_nor_found() -> None:
    memo: ListMemo[Any] = ListMemo()
    memo.keep("messages", [], "nothing")
    assert memo.find("messages", []) is None and memo.sizes() == []
