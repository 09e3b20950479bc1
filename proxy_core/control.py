"""The control API: health, recent turns and a live event stream.

Every answer passes through the redactor. Requests from web pages are
refused by the guard middleware in `app.py` (Host and Origin checks).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .errors import ClientRequestError
from .events import Chunk, Event
from .scoreboard import SORT_KEYS
from .sse import SSE_HEADERS, comment_line
from .repro import ReproError, build_fixture
from .request_body import read_body
from .usage import UsageTotals, summarize

if TYPE_CHECKING:
    from .body_budget import BodyBudget
    from .bus import EventBus
    from .config import Config
    from .journal import Journal
    from .pipeline import Pipeline
    from .scoreboard import Scoreboard
    from .secrets import Redactor
    from .store import TurnStore
    from .telemetry import Exporter

log = logging.getLogger(__name__)

PREFIX = "/switchboard/api"
#: Events buffered per SSE subscriber before it is considered too slow.
SUBSCRIBER_QUEUE = 10_000
PING_INTERVAL = 15.0
#: How often a turn's snapshot carries the text streamed since the last one (`?snapshots=1`).
SNAPSHOT_INTERVAL = 0.1


class ControlAPI:
    """Given the collaborators it reads, not the proxy that owns them."""

    def __init__(self, *, config: Config, pipeline: Pipeline, store: TurnStore, bus: EventBus,
                 redactor: Redactor, scoreboard: Scoreboard, journal: Journal | None = None,
                 telemetry: Exporter | None = None, budget: BodyBudget | None = None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.store = store
        self.bus = bus
        self.redactor = redactor
        self.board = scoreboard
        self.journal = journal
        self.telemetry = telemetry
        self.budget = budget
        self.started = time.time()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/health", self.health)
        app.router.add_get(f"{PREFIX}/turns", self.turns)
        app.router.add_get(f"{PREFIX}/turns/{{turn_id}}", self.turn)
        app.router.add_get(f"{PREFIX}/events", self.events)
        app.router.add_get(f"{PREFIX}/targets", self.targets)
        app.router.add_get(f"{PREFIX}/scoreboard", self.scoreboard)
        app.router.add_get(f"{PREFIX}/usage", self.usage)
        app.router.add_get(f"{PREFIX}/turns/{{turn_id}}/repro", self.repro)
        app.router.add_post(f"{PREFIX}/turns/{{turn_id}}/retry", self.retry)
        app.router.add_post(f"{PREFIX}/turns/{{turn_id}}/reroute", self.reroute)

    @staticmethod
    def _error(message: str, status: int, code: str | None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                            "code": code}}, status=status)

    async def retry(self, request: web.Request) -> web.Response:
        """Retry a turn by hand: restart a live one, or re-run a finished one."""
        turn_id = request.match_info["turn_id"]
        try:
            new_id = await self.pipeline.retry(turn_id)
        except ClientRequestError as exc:
            return self._error(exc.message, exc.status, exc.code)
        return self._json({"turn_id": new_id, "action": "retry", "of": turn_id}, 202)

    async def reroute(self, request: web.Request) -> web.Response:
        """Move a turn to `{"target": "upstream:model"}`."""
        turn_id = request.match_info["turn_id"]
        try:
            body = json.loads(await read_body(request))
        except ClientRequestError as exc:
            return self._error(exc.message, exc.status, exc.code)
        except (ValueError, RecursionError):
            return self._error('body must be JSON: {"target": "upstream:model"}', 400,
                               "invalid_json")
        target = body.get("target") if isinstance(body, dict) else None
        if not isinstance(target, str) or not target:
            return self._error('body must be {"target": "upstream:model"}', 400, "invalid_target")
        try:
            new_id = await self.pipeline.reroute(turn_id, target)
        except ClientRequestError as exc:
            return self._error(exc.message, exc.status, exc.code)
        return self._json({"turn_id": new_id, "action": "reroute", "of": turn_id,
                           "target": target}, 202)

    async def targets(self, request: web.Request) -> web.Response:
        """Where `?turn=ID` could be rerouted (route targets first); without `turn`, every
        route's targets. `watchdog` gives each listed target's learned deadline figures."""
        pipeline = self.pipeline
        turn_id = request.query.get("turn")
        if turn_id is None:
            targets = list(dict.fromkeys(str(t) for r in self.config.routes for t in r.targets))
        else:
            try:
                targets = await pipeline.targets_for(turn_id)
            except ClientRequestError as exc:
                return self._error(exc.message, exc.status, exc.code)
        return self._json({"targets": targets,
                           "watchdog": {t: pipeline.watchdog_figures(t) for t in targets}})

    async def scoreboard(self, request: web.Request) -> web.Response:
        """Per-target stats (`proxy_core/scoreboard.py`), worst first or `?sort=COLUMN`."""
        sort = request.query.get("sort", "status")
        if sort not in SORT_KEYS:
            return self._error(f"sort must be one of: {', '.join(SORT_KEYS)}", 400,
                               "invalid_parameter")
        return self._json(self.board.to_dict(sort))

    def _json(self, payload: Any, status: int = 200) -> web.Response:
        text = self.redactor(json.dumps(payload, ensure_ascii=False, default=str))
        return web.Response(text=text, status=status, content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        # Never waits for the journal's writer: a health check must not stall the proxy.
        journal = self.journal.status(settle=False) if self.journal is not None else None
        return self._json({
            # degraded: still proxying, but turns are not reaching the journal
            "status": "ok" if journal is None or journal["ok"] else "degraded",
            "uptime": time.time() - self.started,
            "config": self.config.source,
            "journal": journal,
            "turns": len(self.store),
            "live_turns": len(self.pipeline.live),
            # request bytes being handled, and requests waiting for room (`body_budget`)
            "request_bytes": self.budget.status() if self.budget is not None else None,
            "upstreams": {n: u.kind for n, u in self.config.upstreams.items()},
            "routes": [{"model": r.model, "targets": [str(t) for t in r.targets],
                        "repairs": r.repairs} for r in self.config.routes],
            "upstream_health": self.pipeline.health.snapshot(),
            "telemetry": (self.telemetry.status() if self.telemetry is not None
                          else {"enabled": False}),
        })

    async def turns(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(int(request.query.get("limit", "100")), 1000))
        except ValueError:
            return self._error("limit must be an integer", 400, "invalid_parameter")
        session = request.query.get("session")
        turns = [t for t in self.store.recent(0) if not session or t.session_id == session]
        if len(turns) < limit and self.journal is not None:
            # Older turns (or turns from before a restart) come from the journal.
            known = {t.id for t in turns}
            journal = self.journal
            older = [d for d in await journal.fetch(partial(journal.turns, limit, session))
                     if d["id"] not in known]
            items = older + [t.to_dict(include_request=False) for t in turns]
        else:
            items = [t.to_dict(include_request=False) for t in turns]
        return self._json({"turns": items[-limit:]})

    async def usage(self, request: web.Request) -> web.Response:
        """Tokens and cost in total and per session (`?session=ID`: that one only):
        over the journal, and the turns in memory it has not heard of yet."""
        journal = self.journal
        sessions = await journal.fetch(journal.usage) if journal is not None else {}
        if journal is None or not journal.ok:
            _, sessions = summarize(t.to_dict(include_request=False)
                                    for t in self.store.recent(0))
        wanted = request.query.get("session")
        total = UsageTotals()
        for name, totals in sessions.items():
            if not wanted or name == wanted:
                total.merge(totals)
        return self._json({"total": total.to_dict(),
                           "sessions": {name: totals.to_dict() for name, totals
                                        in sessions.items() if not wanted or name == wanted}})

    async def repro(self, request: web.Request) -> web.Response:
        """The turn as a repro fixture (`repro.py`): its request, the raw upstream bytes
        of each attempt with their timing, the repairs, the route and watchdog settings."""
        turn_id = request.match_info["turn_id"]
        journal = self.journal
        data = await self._turn_data(turn_id)
        if data is None:
            return self._error(f"no turn {turn_id!r}", 404, "turn_not_found")
        wire = await journal.fetch(partial(journal.wire, turn_id)) if journal else None
        try:
            fixture = build_fixture(data, wire, self.config)
        except ReproError as exc:
            return self._error(str(exc), 409, "turn_live")
        return self._json(fixture)

    async def _turn_data(self, turn_id: str) -> dict[str, Any] | None:
        """One turn's record: the one in memory, or else the journal's (read on its writer)."""
        turn, journal = self.store.get(turn_id), self.journal
        if turn is not None:
            return turn.to_dict()
        return await journal.fetch(partial(journal.turn, turn_id)) if journal else None

    async def turn(self, request: web.Request) -> web.Response:
        turn_id = request.match_info["turn_id"]
        data = await self._turn_data(turn_id)
        if data is None:
            return self._json({"error": {"message": f"no turn {turn_id!r}",
                                         "type": "not_found", "code": "turn_not_found"}}, 404)
        return self._json(data)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The bus's events as SSE. With `?snapshots=1`, each turn's record comes too
        (`event: TurnSnapshot`, `Turn.to_dict` without the request), as mitmweb sends
        whole flows: before every event of the turn except chunks, whose text
        arrives in a snapshot at most every `SNAPSHOT_INTERVAL` seconds. A reader
        keeps the latest snapshot of each turn and never rebuilds one from events."""
        snapshots = request.query.get("snapshots") in ("1", "true")
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        def listener(event: Event) -> None:
            if queue.qsize() >= SUBSCRIBER_QUEUE:
                # Too slow a reader: cut it off (after what it has) rather than grow forever.
                unsubscribe()
                queue.put_nowait(None)
            else:
                queue.put_nowait(event)

        unsubscribe = self.bus.subscribe(listener)
        response = web.StreamResponse(headers=SSE_HEADERS)
        loop = asyncio.get_running_loop()
        streaming: dict[str, None] = {}  # turns with chunks not yet in a snapshot
        sent_at = loop.time()

        async def send(name: str, data: dict[str, Any]) -> None:
            text = self.redactor(json.dumps(data, ensure_ascii=False))
            await response.write(f"event: {name}\ndata: {text}\n\n".encode())

        async def send_snapshot(turn_id: str) -> None:
            turn = self.store.get(turn_id)
            if turn is not None:
                await send("TurnSnapshot", turn.to_dict(include_request=False))

        async def send_streaming() -> None:
            nonlocal sent_at
            for turn_id in list(streaming):
                await send_snapshot(turn_id)
            streaming.clear()
            sent_at = loop.time()

        try:
            await response.prepare(request)
            await response.write(comment_line("switchboard events"))
            while True:
                wait = (max(0.0, sent_at + SNAPSHOT_INTERVAL - loop.time()) if streaming
                        else PING_INTERVAL)
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if streaming:
                        await send_streaming()
                    else:
                        await response.write(comment_line("ping"))
                    continue
                if event is None:
                    await response.write(comment_line("dropped: reader too slow"))
                    break
                if snapshots:
                    if type(event) is Chunk:
                        streaming[event.turn_id] = None
                    else:
                        streaming.pop(event.turn_id, None)
                        await send_snapshot(event.turn_id)
                await send(type(event).__name__, event.to_dict())
                if streaming and loop.time() - sent_at >= SNAPSHOT_INTERVAL:
                    await send_streaming()
        except ConnectionError:
            pass
        finally:
            unsubscribe()
        return response
