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
            for turn_id, old in list(self._turns.items()):
                if len(self._turns) <= self.capacity:
                    break
                if old.state != "live":
                    del self._turns[turn_id]

    def get(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    def recent(self, limit: int = 100) -> list[Turn]:
        turns = list(self._turns.values())
        return turns[-limit:] if limit else turns

    def __len__(self) -> int:
        return len(self._turns)
