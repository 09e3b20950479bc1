"""`RemoteSource` (`switchboard attach URL`): a proxy elsewhere, through its control API.

The event stream is read with the core's turn snapshots (`?snapshots=1`): the
records it holds are the core's own, never rebuilt from events here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

import httpx

from proxy_core.events import EVENT_TYPES, Event
from proxy_core.record import Turn

from ..messages import SourceStatus
from ..model import ForeignEvent
from ..tasks import cancel_and_wait
from .base import SourceError, TurnSource, config_targets

log = logging.getLogger(__name__)

API = "/switchboard/api"
#: How often an attached dashboard asks the proxy's health (seconds).
HEALTH_INTERVAL = 2.0


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
                 transport: httpx.AsyncBaseTransport | None = None,
                 health_interval: float = HEALTH_INTERVAL) -> None:
        super().__init__()
        url = url.rstrip("/")
        for suffix in ("/v1", API):
            if url.endswith(suffix):
                url = url[: -len(suffix)]
        self.url = url
        self.max_turns = max_turns
        self.health_interval = health_interval
        self._client = httpx.AsyncClient(base_url=url, transport=transport,
                                         timeout=httpx.Timeout(10.0, read=None))
        self._replicas: dict[str, Turn] = {}
        self._task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._health: dict[str, Any] = {}
        self.connected = False

    @property
    def base_url(self) -> str:
        return self.url

    def describe(self) -> str:
        config = self._health.get("config")
        state = "attached" if self.connected else "disconnected"
        return f"{state}; config {config}" if config else state

    def health(self) -> dict[str, Any]:
        return self._health

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._read_events(), name="switchboard-attach")
            self._health_task = asyncio.create_task(self._poll_health(),
                                                    name="switchboard-attach-health")

    async def stop(self) -> None:
        await super().stop()
        for task in (self._task, self._health_task):
            await cancel_and_wait(task)
        self._task = self._health_task = None
        await self._client.aclose()

    async def _poll_health(self) -> None:
        """The proxy's health (its config and routes too), now and every `health_interval`
        seconds; what cannot be read leaves the last known (the event stream says
        whether the proxy is reachable)."""
        while True:
            try:
                response = await self._client.get(f"{API}/health")
                response.raise_for_status()
                self._health = response.json()
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(self.health_interval)

    def _status(self, connected: bool, detail: str) -> None:
        self.connected = connected
        if self._target is not None:
            self._target.post_message(SourceStatus(connected, detail))

    async def _sync(self) -> None:
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

    async def repro(self, turn_id: str) -> dict[str, Any]:
        return dict(await self._call("GET", f"/turns/{turn_id}/repro"))

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
        routes = [(r["model"], list(r["targets"])) for r in self._health.get("routes", [])]
        return config_targets(routes, turn.route if turn else None)
