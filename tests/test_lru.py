"""`LRU`: the caches of an agent's history keep what was used most recently, within both
of their bounds, whatever order entries come and go in."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy_core.lru import LRU


def test_the_least_recently_used_entry_goes_first() -> None:
    cache: LRU[str, int] = LRU(max_bytes=100, max_items=3, largest=100)
    for key in "abc":
        cache.put(key, ord(key), 10)
    assert cache.get("a") == ord("a")  # now the most recently used
    cache.put("d", 4, 10)
    assert list(cache) == ["c", "a", "d"] and cache.get("b") is None
    cache.put("c", 5, 60)  # replaced: counted at its new size, and used last
    assert list(cache) == ["a", "d", "c"] and cache.bytes == 80
    cache.put("e", 6, 40)  # over the bytes: the oldest go until it fits
    assert list(cache) == ["c", "e"] and cache.bytes == 100


def test_an_entry_over_its_share_is_not_kept() -> None:
    cache: LRU[str, str] = LRU(max_bytes=160, max_items=10)
    cache.put("small", "kept", 10)
    cache.put("large", "not kept", 11)  # over 160 / 16
    assert cache.get("large") is None and list(cache) == ["small"]
    whole: LRU[str, str] = LRU(max_bytes=160, max_items=10, largest=160)
    whole.put("large", "kept", 160)
    assert whole.get("large") == "kept"
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


_OPS = st.lists(st.tuples(st.sampled_from(("put", "get")), st.integers(0, 12),
                          st.integers(0, 40)), max_size=120)


@given(_OPS, st.integers(1, 200), st.integers(1, 8))
def test_it_behaves_as_a_list_ordered_by_last_use(ops: list[tuple[str, int, int]],
                                                  max_bytes: int, max_items: int) -> None:
    """Against a plain model: an ordered list of (key, size), trimmed from the front."""
    cache: LRU[int, int] = LRU(max_bytes, max_items)
    model: list[tuple[int, int]] = []
    for op, key, size in ops:
        held = [k for k, _ in model]
        if op == "get":
            assert cache.get(key) == (key * 1000 + dict(model)[key] if key in held else None)
            if key in held:
                model.append(model.pop(held.index(key)))
            continue
        cache.put(key, key * 1000 + size, size)
        if size > max_bytes // 16:
            continue
        model = [(k, s) for k, s in model if k != key] + [(key, size)]
        while sum(s for _, s in model) > max_bytes or len(model) > max_items:
            model.pop(0)
        assert cache.bytes <= max_bytes and len(cache) <= max_items
    assert list(cache) == [k for k, _ in model]
    assert cache.bytes == sum(s for _, s in model)
