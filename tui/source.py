"""Where the dashboard's turns come from. The UI talks only to a `TurnSource`.

- `LocalSource` wraps a `SwitchboardProxy` running in the same event loop:
  a bus subscription collects events, the store and journal give records,
  the pipeline retries and reroutes.
- `RemoteSource` (`switchboard attach URL`) reads the control API: the SSE
  event stream with the core's turn snapshots (so an attached dashboard holds
  the same records as a local one, and runs the same model on the same
  events), `/turns`, `/turns/{id}`, and the retry/reroute endpoints.
- `StaticSource` shows a fixed set of records and events (exported turns,
  tests, snapshots).

Every source buffers events instead of handing each one over: the bus
listener appends (chunks are only counted) and, at most every
`flush_interval` seconds, posts one `EventsReady` to the app, which calls
`drain()`. So a fast stream costs the proxy a counter increment per chunk,
and the UI redraws at a steady rate, slower while the proxy is very busy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import httpx

from proxy_core.errors import ClientRequestError
from proxy_core.events import EVENT_TYPES, Chunk, Event
from proxy_core.record import Turn

from .messages import EventsReady, SourceStatus
from .model import (
    DEFAULT_STALL_RULE, Batch, ChunkTally, ForeignEvent, StallRule,
)

if TYPE_CHECKING:
    from textual.message_pump import MessagePump

    from proxy_core.app import SwitchboardProxy

log = logging.getLogger(__name__)

API = "/switchboard/api"
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

    async def start(self) -> None:
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
        return {"session_id": session_id, "proxy": self.base_url,
                "turns": [t.to_dict(include_request=False) for t in turns],
                "last_request": last_request}

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


def _config_targets(routes: Iterable[tuple[str, list[str]]], route: str | None) -> list[str]:
    """Fallback for reroute targets: the turn's route first, then every other route's."""
    ordered: list[str] = []
    routes = list(routes)
    for model, targets in sorted(routes, key=lambda r: r[0] != route):
        for target in targets:
            if target not in ordered:
                ordered.append(target)
    return ordered


# -- in the same process -----------------------------------------------------------------------

class LocalSource(TurnSource):
    """A `SwitchboardProxy` in this event loop."""

    kind = "local"

    def __init__(self, proxy: SwitchboardProxy) -> None:
        super().__init__()
        self.proxy = proxy
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def base_url(self) -> str:
        return self.proxy.base_url

    @property
    def stall_after(self) -> StallRule:
        watchdog = self.proxy.config.watchdog
        return StallRule.from_watchdog(watchdog.first_token_timeout, watchdog.idle_timeout)

    def describe(self) -> str:
        return f"config {self.proxy.config.source}"

    def redact(self, text: str) -> str:
        return self.proxy.redactor(text)

    async def start(self) -> None:
        if self._unsubscribe is None:
            self._unsubscribe = self.proxy.bus.subscribe(self._push)

    async def stop(self) -> None:
        await super().stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def turn(self, turn_id: str) -> Turn | None:
        return self.proxy.store.get(turn_id)

    def recent(self, limit: int) -> list[Turn]:
        return self.proxy.store.recent(limit)

    async def load_turn(self, turn_id: str) -> Turn | None:
        turn = self.proxy.store.get(turn_id)
        if turn is not None:
            return turn
        journal = self.proxy.journal
        data = journal.turn(turn_id) if journal is not None else None
        return Turn.from_dict(data) if data is not None else None

    async def older(self, known: set[str], limit: int, session: str | None = None) -> list[Turn]:
        found = {t.id: t for t in reversed(self.proxy.store.recent(0))
                 if t.id not in known and (not session or t.session_id == session)}
        journal = self.proxy.journal
        if journal is not None and len(found) < limit:
            for data in reversed(journal.turns(limit + len(known), session)):
                if data["id"] not in known and data["id"] not in found:
                    found[data["id"]] = Turn.from_dict(data)
        turns = sorted(found.values(), key=lambda t: t.started_at, reverse=True)
        return turns[:limit]

    async def retry(self, turn_id: str) -> str:
        method = getattr(self.proxy.pipeline, "retry", None)
        if method is None:
            raise SourceError("this proxy core cannot retry turns yet (no Pipeline.retry)")
        try:
            return await method(turn_id)
        except ClientRequestError as exc:
            raise SourceError(exc.message) from None

    async def reroute(self, turn_id: str, target: str) -> str:
        method = getattr(self.proxy.pipeline, "reroute", None)
        if method is None:
            raise SourceError("this proxy core cannot reroute turns yet (no Pipeline.reroute)")
        try:
            return await method(turn_id, target)
        except ClientRequestError as exc:
            raise SourceError(exc.message) from None

    async def targets_for(self, turn_id: str) -> list[str]:
        method = getattr(self.proxy.pipeline, "targets_for", None)
        if method is not None:
            try:
                return list(method(turn_id))
            except ClientRequestError as exc:
                raise SourceError(exc.message) from None
        turn = await self.load_turn(turn_id)
        if turn is None:
            raise SourceError(f"no turn {turn_id!r}")
        routes = [(r.model, [str(t) for t in r.targets]) for r in self.proxy.config.routes]
        return _config_targets(routes, turn.route)


# -- over the control API ----------------------------------------------------------------------------

def parse_event(name: str, data: dict[str, Any]) -> Event | ForeignEvent:
    """An SSE event back into a core event (or a `ForeignEvent` for types this build lacks)."""
    cls = EVENT_TYPES.get(data.get("type", name))
    if cls is None:
        rest = {k: v for k, v in data.items() if k not in ("type", "turn_id", "at")}
        return ForeignEvent(str(data.get("type", name)), str(data.get("turn_id", "")),
                            float(data.get("at", 0.0)), rest)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class RemoteSource(TurnSource):
    """A proxy elsewhere (`switchboard serve`), through its control API."""

    kind = "remote"

    def __init__(self, url: str, *, max_turns: int = 500,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__()
        url = url.rstrip("/")
        for suffix in ("/v1", API):
            if url.endswith(suffix):
                url = url[: -len(suffix)]
        self.url = url
        self.max_turns = max_turns
        self._client = httpx.AsyncClient(base_url=url, transport=transport,
                                         timeout=httpx.Timeout(10.0, read=None))
        self._replicas: dict[str, Turn] = {}
        self._task: asyncio.Task[None] | None = None
        self.health: dict[str, Any] = {}
        self.connected = False

    @property
    def base_url(self) -> str:
        return self.url

    def describe(self) -> str:
        config = self.health.get("config")
        state = "attached" if self.connected else "disconnected"
        return f"{state}; config {config}" if config else state

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._read_events(), name="switchboard-attach")

    async def stop(self) -> None:
        await super().stop()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        await self._client.aclose()

    def _status(self, connected: bool, detail: str) -> None:
        self.connected = connected
        if self._target is not None:
            self._target.post_message(SourceStatus(connected, detail))

    async def _sync(self) -> None:
        self.health = (await self._client.get(f"{API}/health")).json()
        response = await self._client.get(f"{API}/turns", params={"limit": self.max_turns})
        response.raise_for_status()
        for data in response.json()["turns"]:
            turn = Turn.from_dict(data)
            known = self._replicas.get(turn.id)
            if known is None or known.state == "live":
                self._replicas[turn.id] = turn
        self._trim()

    async def _read_events(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._sync()
                async with self._client.stream("GET", f"{API}/events",
                                               params={"snapshots": "1"}) as response:
                    response.raise_for_status()
                    self._resync = True  # whatever happened while away: rebuild
                    self._status(True, self.url)
                    if not self._scheduled and self._target is not None:
                        self._schedule()
                    delay = 0.5
                    await self._read_stream(response)
                self._status(False, "event stream ended; reconnecting")
            except asyncio.CancelledError:
                raise
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self._status(False, f"cannot reach {self.url}: {type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _read_stream(self, response: httpx.Response) -> None:
        name, data = "", []
        async for line in response.aiter_lines():
            if not line:
                if data:
                    self._receive(name, "\n".join(data))
                name, data = "", []
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())

    def _receive(self, name: str, text: str) -> None:
        try:
            data = json.loads(text)
            if name == "TurnSnapshot":
                self._keep(Turn.from_dict(data))
                # Only to mark the row for a redraw: the record itself is in place.
                self._push(ForeignEvent(name, str(data["id"]), float(data["started_at"]), {}))
                return
            event = parse_event(name, data)
        except (ValueError, TypeError, KeyError):
            log.warning("attach: unreadable %s event: %.200s", name, text)
            return
        self._push(event)

    def _keep(self, turn: Turn) -> None:
        """The core's latest record of a turn, in place of the replica the dashboard holds."""
        replica = self._replicas.get(turn.id)
        if replica is None:
            self._replicas[turn.id] = turn
            self._trim()
            return
        request = replica.request
        for f in dataclasses.fields(Turn):
            setattr(replica, f.name, getattr(turn, f.name))
        replica.request = replica.request or request  # snapshots come without the request

    def _trim(self) -> None:
        excess = len(self._replicas) - self.max_turns
        if excess > 0:
            for turn_id in [i for i, t in self._replicas.items() if t.state != "live"][:excess]:
                del self._replicas[turn_id]

    def turn(self, turn_id: str) -> Turn | None:
        return self._replicas.get(turn_id)

    def recent(self, limit: int) -> list[Turn]:
        turns = sorted(self._replicas.values(), key=lambda t: t.started_at)
        return turns[-limit:] if limit else turns

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._client.request(method, f"{API}{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            if response.status_code in (404, 405) and "no such endpoint" in message:
                message = f"the proxy at {self.url} does not offer {method} {path.split('?')[0]}"
            raise SourceError(message)
        return response.json()

    async def load_turn(self, turn_id: str) -> Turn | None:
        """The record with its request (fetched once, when the dashboard shows it)."""
        replica = self._replicas.get(turn_id)
        if replica is not None and replica.request:
            return replica
        try:
            data = await self._call("GET", f"/turns/{turn_id}")
        except SourceError:
            return replica
        turn = Turn.from_dict(data)
        if replica is None:
            return turn
        if replica.state == "live":  # snapshots keep it current; give it its request
            replica.request = turn.request
        else:
            self._keep(turn)
        return replica

    async def older(self, known: set[str], limit: int, session: str | None = None) -> list[Turn]:
        params: dict[str, Any] = {"limit": min(1000, limit + len(known))}
        if session:
            params["session"] = session
        data = await self._call("GET", "/turns", params=params)
        turns = [Turn.from_dict(d) for d in data["turns"] if d["id"] not in known]
        turns.sort(key=lambda t: t.started_at, reverse=True)
        return turns[:limit]

    async def retry(self, turn_id: str) -> str:
        return str((await self._call("POST", f"/turns/{turn_id}/retry"))["turn_id"])

    async def reroute(self, turn_id: str, target: str) -> str:
        data = await self._call("POST", f"/turns/{turn_id}/reroute", json={"target": target})
        return str(data["turn_id"])

    async def targets_for(self, turn_id: str) -> list[str]:
        try:
            return list((await self._call("GET", "/targets", params={"turn": turn_id}))["targets"])
        except SourceError as exc:
            if "does not offer" not in str(exc):
                raise
        turn = self._replicas.get(turn_id)
        routes = [(r["model"], list(r["targets"])) for r in self.health.get("routes", [])]
        return _config_targets(routes, turn.route if turn else None)


# -- fixed records ---------------------------------------------------------------------------------------

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
