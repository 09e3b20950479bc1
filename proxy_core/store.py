"""The in-memory set of recent turns, shared by the pipeline and every view."""

from __future__ import annotations

from collections import OrderedDict

from .record import Turn


class TurnStore:
    """Recent turns by id, oldest evicted first once `capacity` is reached.

    Live turns are never evicted: only finished or failed ones make room.
    """

    def __init__(self, capacity: int = 500) -> None:
        self.capacity = capacity
        self._turns: OrderedDict[str, Turn] = OrderedDict()

    def add(self, turn: Turn) -> None:
        self._turns[turn.id] = turn
        if len(self._turns) > self.capacity:
            # One in, one out: the oldest turn that is no longer live.
            oldest = next((i for i, t in self._turns.items() if t.state != "live"), None)
            if oldest is not None:
                del self._turns[oldest]

    def get(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    def recent(self, limit: int = 100) -> list[Turn]:
        turns = list(self._turns.values())
        return turns[-limit:] if limit else turns

    def __len__(self) -> int:
        return len(self._turns)
