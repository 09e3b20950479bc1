"""The in-memory set of recent turns, shared by the pipeline and every view."""

from __future__ import annotations

from collections import OrderedDict

from .record import Turn


class TurnStore:
    """Recent turns by id, oldest evicted first once `capacity` is reached, or once the
    turns' requests add up to more than `max_request_bytes`.

    Live turns are never evicted: only finished or failed ones make room. The
    byte bound counts each turn's whole request (`request_bytes`), although a
    session's turns share their history in memory: an agent's 1 MB session
    keeps all `capacity` turns, and only histories of several megabytes (or
    many large distinct requests, which nothing shares) leave fewer turns in
    memory. Older turns are read from the journal.
    """

    def __init__(self, capacity: int = 500, max_request_bytes: int = 512 * 1024 * 1024) -> None:
        self.capacity = capacity
        self.max_request_bytes = max_request_bytes
        self.request_bytes = 0  # of the turns held, each counted as it was added
        self._turns: OrderedDict[str, Turn] = OrderedDict()
        self._counted: dict[str, int] = {}

    def add(self, turn: Turn) -> None:
        self._drop(turn.id)
        self._turns[turn.id] = turn
        self._counted[turn.id] = turn.request_bytes
        self.request_bytes += turn.request_bytes
        # One in, as many out as it takes: the oldest turns that are no longer live.
        while len(self._turns) > self.capacity or self.request_bytes > self.max_request_bytes:
            oldest = next((i for i, t in self._turns.items() if t.state != "live"), None)
            if oldest is None:
                break
            self._drop(oldest)

    def _drop(self, turn_id: str) -> None:
        if self._turns.pop(turn_id, None) is not None:
            self.request_bytes -= self._counted.pop(turn_id)

    def get(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    def recent(self, limit: int = 100) -> list[Turn]:
        turns = list(self._turns.values())
        return turns[-limit:] if limit else turns

    def __len__(self) -> int:
        return len(self._turns)
