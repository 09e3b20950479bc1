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
