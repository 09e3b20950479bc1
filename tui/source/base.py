"""The `TurnSource` interface, and the event buffering every source shares."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from proxy_core.events import Chunk
from proxy_core.record import Turn
from proxy_core.usage import summarize

from ..messages import EventsReady
from ..model import DEFAULT_STALL_RULE, Batch, ChunkTally, StallRule

if TYPE_CHECKING:
    from textual.message_pump import MessagePump

#: Non-chunk events buffered before the source gives up on them and asks for a resync.
MAX_PENDING = 20_000
#: A drain with more events than this means a busy proxy: the next flush waits
#: `BUSY_SLOWDOWN` times longer, so redraws take less of the loop the proxy shares.
BUSY_EVENTS = 1000
BUSY_SLOWDOWN = 4


class SourceError(Exception):
    """A source could not do what was asked (unknown turn, bad target, no connection...)."""


class TurnSource(ABC):
    """Turns, events and actions for the dashboard."""

    kind = "source"

    def __init__(self) -> None:
        self._events: list[Any] = []
        self._chunks: dict[str, ChunkTally] = {}
        self._resync = False
        self._target: MessagePump | None = None
        self._flush_interval = 1 / 12
        self._interval = self._flush_interval
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- what the status line shows ------------------------------------------------

    @property
    @abstractmethod
    def base_url(self) -> str:
        """The proxy's address, without `/v1`."""

    @property
    def stall_after(self) -> StallRule:
        return DEFAULT_STALL_RULE

    def describe(self) -> str:
        return self.kind

    def health(self) -> dict[str, Any]:
        """The proxy's health as `/switchboard/api/health` says it, as far as known: the
        status line reads `journal`, `telemetry` and `request_bytes` from it. No I/O,
        never waits."""
        return {}

    @property
    def owns_proxy(self) -> bool:
        """Quitting the dashboard stops the proxy (it runs in this process)."""
        return False

    def redact(self, text: str) -> str:
        """Scrub secrets from text about to reach the screen or a file."""
        return text

    # -- life cycle ------------------------------------------------------------------

    def connect(self, target: MessagePump, flush_interval: float) -> None:
        """Post `EventsReady` to `target`, at most every `flush_interval` seconds."""
        self._target = target
        self._flush_interval = self._interval = flush_interval
        self._loop = asyncio.get_running_loop()
        if self._events or self._chunks or self._resync:
            self._schedule()

    async def start(self) -> None:  # noqa: B027 - an optional hook: most sources need none
        """Begin collecting events (the proxy itself is started by its owner)."""

    async def stop(self) -> None:
        """Stop collecting events."""
        self._target = None

    # -- events ------------------------------------------------------------------------

    def _push(self, event: Any) -> None:
        """Called for every event, in the proxy's code path: keep it cheap."""
        if type(event) is Chunk:
            tally = self._chunks.get(event.turn_id)
            if tally is None:
                tally = self._chunks[event.turn_id] = ChunkTally()
            tally.count += 1
            tally.last_at = event.at
        elif len(self._events) < MAX_PENDING:
            self._events.append(event)
        else:  # nobody drains (a stuck UI): stop queueing, rebuild from records later
            self._resync = True
        if not self._scheduled and self._target is not None:
            self._schedule()

    def _schedule(self) -> None:
        if self._loop is None or self._scheduled:
            return
        self._scheduled = True
        self._loop.call_later(self._interval, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._target is not None:
            self._target.post_message(EventsReady())

    def drain(self) -> Batch:
        batch = Batch(self._events, self._chunks, self._resync)
        self._events, self._chunks, self._resync = [], {}, False
        size = len(batch.events) + sum(t.count for t in batch.chunks.values())
        self._interval = self._flush_interval * (BUSY_SLOWDOWN if size > BUSY_EVENTS else 1)
        return batch

    # -- records -------------------------------------------------------------------------

    @abstractmethod
    def turn(self, turn_id: str) -> Turn | None:
        """The record held in memory, if any (no I/O)."""

    @abstractmethod
    def recent(self, limit: int) -> list[Turn]:
        """The records held in memory, oldest first (no I/O)."""

    @abstractmethod
    async def load_turn(self, turn_id: str) -> Turn | None:
        """The full record, request included (memory, journal or API)."""

    @abstractmethod
    async def older(self, known: set[str], limit: int, session: str | None = None) -> list[Turn]:
        """Up to `limit` turns not in `known`, newest first among the older ones."""

    async def session_export(self, session_id: str) -> dict[str, Any]:
        """A session as JSON: every turn (without requests) and the last turn's request."""
        turns = await self.older(set(), 1000, session_id)
        turns.sort(key=lambda t: t.started_at)
        last_request: dict[str, Any] = {}
        if turns:
            last = await self.load_turn(turns[-1].id)
            last_request = last.request if last is not None else {}
        records = [t.to_dict(include_request=False) for t in turns]
        total, _ = summarize(records)
        return {"session_id": session_id, "proxy": self.base_url, "usage": total.to_dict(),
                "turns": records, "last_request": last_request}

    async def repro(self, turn_id: str) -> dict[str, Any]:
        """The turn as a repro fixture (`proxy_core.repro`): needs a proxy with a journal."""
        raise SourceError("repro fixtures come from a running proxy's journal; "
                          "this view has none")

    # -- actions ---------------------------------------------------------------------------

    @abstractmethod
    async def retry(self, turn_id: str) -> str:
        """Retry the turn; returns the id of the turn that now carries the work."""

    @abstractmethod
    async def reroute(self, turn_id: str, target: str) -> str:
        """Re-run the turn on `target` ("upstream:model"); returns the carrying turn's id."""

    @abstractmethod
    async def targets_for(self, turn_id: str) -> list[str]:
        """The route's targets, then other upstreams' targets."""


def config_targets(routes: Iterable[tuple[str, list[str]]], route: str | None) -> list[str]:
    """Fallback for reroute targets: the turn's route first, then every other route's."""
    ordered: list[str] = []
    routes = list(routes)
    for _model, targets in sorted(routes, key=lambda r: r[0] != route):
        for target in targets:
            if target not in ordered:
                ordered.append(target)
    return ordered
