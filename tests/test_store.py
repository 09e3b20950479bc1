"""The in-memory turn store: bounded, and never drops a live turn."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from proxy_core.openai_wire import parse_chat_request
from proxy_core.record import Turn
from proxy_core.store import TurnStore
from support import FakeUpstream, chat_body, openai_config, wait_until


def turn(i: int, state: str = "finished") -> Turn:
    return Turn(id=f"t{i}", session_id="s", model="m", route="*", stream=True, request={},
                state=state)  # type: ignore[arg-type]


def test_oldest_finished_turn_makes_room() -> None:
    store = TurnStore(capacity=3)
    store.add(turn(0, "live"))
    for i in range(1, 6):
        store.add(turn(i))
    assert [t.id for t in store.recent(0)] == ["t0", "t4", "t5"]
    assert store.get("t0") is not None and len(store) == 3


def test_all_live_grows_past_capacity_rather_than_drop_one() -> None:
    store = TurnStore(capacity=2)
    for i in range(4):
        store.add(turn(i, "live"))
    assert len(store) == 4
    store.add(turn(9))
    assert len(store) == 4 and store.get("t9") is None, "the newest finished one goes"


def test_requests_past_the_byte_bound_make_room_too() -> None:
    store = TurnStore(capacity=10, max_request_bytes=100)
    sized = [turn(i) for i in range(5)]
    sized[0].state = "live"
    for t, size in zip(sized, (40, 30, 30, 30, 30), strict=True):
        t.request_bytes = size
        store.add(t)
    # 40 (live, kept) + 30 + 30 fit; each later one pushes the oldest finished one out.
    assert [t.id for t in store.recent(0)] == ["t0", "t3", "t4"] and store.request_bytes == 100
    store.add(sized[4])  # again: counted once
    assert store.request_bytes == 100
    huge = turn(9)
    huge.request_bytes = 1000
    store.add(huge)  # larger than the bound alone: it goes, the live one stays
    assert [t.id for t in store.recent(0)] == ["t0"] and store.request_bytes == 40


async def test_a_turn_ending_while_a_newer_one_opens_is_still_journaled(
        proxy_factory: Any, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    # Regression (found by bench/soak.py): with the store full, a new turn's
    # storing evicted an old turn in the moment between the old one ending and
    # its end reaching the journal, whose row then stayed "live" forever.
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    proxy.store.capacity = 1
    chat = parse_chat_request(chat_body())
    old, _ = proxy.pipeline.open_turn(chat, {})

    def state() -> str | None:
        with sqlite3.connect(tmp_path / "journal.sqlite3") as db:
            row = db.execute("SELECT state FROM turns WHERE id = ?", (old.id,)).fetchone()
        return row[0] if row else None

    await wait_until(lambda: state() == "live", what="the old turn's start journaled")
    proxy.pipeline.open_turn(chat, {})
    proxy.pipeline._finish(old)  # unit seam: a turn ending while another one opens
    assert proxy.journal is not None
    proxy.journal.settle()  # the journal's writer has done what it was handed
    assert state() == "finished"


async def test_turns_the_byte_bound_evicts_are_still_served_from_the_journal(
        proxy_factory: Any, fake_upstream: FakeUpstream) -> None:
    import httpx

    from support import api_turn, api_turns, stream_chat
    proxy = await proxy_factory(openai_config(fake_upstream.base_url))
    proxy.store.max_request_bytes = 2_500_000
    async with httpx.AsyncClient(timeout=10.0) as client:
        for i in range(5):
            response, _ = await stream_chat(client, proxy.base_url,
                                            chat_body(f"{i} " + "x" * 1_000_000))
            assert response.status_code == 200
        assert len(proxy.store) == 2 and proxy.store.request_bytes <= 2_500_000
        turns = await api_turns(client, proxy.base_url)
        assert len(turns) == 5  # the three evicted ones come from the journal
        oldest = await api_turn(client, proxy.base_url, turns[0]["id"])
        assert oldest["request"]["messages"][-1]["content"].startswith("0 ")
