"""`StaticSource`: a fixed set of records and events (exports, tests, snapshots)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy_core.record import Turn

from ..model import DEFAULT_STALL_RULE, StallRule
from .base import SourceError, TurnSource


class StaticSource(TurnSource):
    """A fixed set of turns and events: exported files, tests, snapshots.

    `feed(events)` pushes more events through the same buffered path the
    live sources use.
    """

    kind = "static"

    def __init__(self, turns: Iterable[Turn] = (), events: Iterable[Any] = (), *,
                 base_url: str = "http://127.0.0.1:4141",
                 stall_after: StallRule = DEFAULT_STALL_RULE,
                 targets: list[str] | None = None) -> None:
        super().__init__()
        self._turns = {t.id: t for t in turns}
        self._initial = list(events)
        self._base_url = base_url
        self._stall_after = stall_after
        self._targets = targets or []
        self.actions: list[tuple[str, str, str]] = []

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def stall_after(self) -> StallRule:
        return self._stall_after

    def describe(self) -> str:
        return "recorded turns"

    async def start(self) -> None:
        # Recorded chunks keep their own times (the live path only counts them).
        self._events.extend(self._initial)
        self._initial = []
        if self._events and self._target is not None:
            self._schedule()

    def feed(self, events: Iterable[Any]) -> None:
        for event in events:
            self._push(event)

    def add(self, turn: Turn) -> None:
        self._turns[turn.id] = turn

    def turn(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    def recent(self, limit: int) -> list[Turn]:
        turns = sorted(self._turns.values(), key=lambda t: t.started_at)
        return turns[-limit:] if limit else turns

    async def load_turn(self, turn_id: str) -> Turn | None:
        return self._turns.get(turn_id)

    async def older(self, known: set[str], limit: int, session: str | None = None) -> list[Turn]:
        turns = [t for t in self._turns.values()
                 if t.id not in known and (not session or t.session_id == session)]
        return sorted(turns, key=lambda t: t.started_at, reverse=True)[:limit]

    async def retry(self, turn_id: str) -> str:
        raise SourceError("recorded turns cannot be retried")

    async def reroute(self, turn_id: str, target: str) -> str:
        raise SourceError("recorded turns cannot be rerouted")

    async def targets_for(self, turn_id: str) -> list[str]:
        return list(self._targets)
