"""The in-memory turn store: bounded, and never drops a live turn."""

from __future__ import annotations

from proxy_core.record import Turn
from proxy_core.store import TurnStore


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
