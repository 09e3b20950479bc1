"""The proxy, assembled: config → upstreams → pipeline → aiohttp app.

`SwitchboardProxy` is the one object a front end (headless `serve`, the
dashboard, tests) creates and starts. It runs inside the caller's event
loop (aiohttp's server: an `AppRunner` and a `TCPSite`), so a Textual app can host it.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .body_budget import JOURNAL_WAIT, BodyBudget
from .bus import EventBus
from .config import Config
from .control import ControlAPI, PREFIX
from .heartbeat import HeartbeatTicker
from .journal import Journal
from .retention import retention_of
from .scoreboard import Scoreboard, ScoreboardObserver
from .openai_wire import error_body, internal_error_body
from .pipeline import Pipeline
from .record import Turn
from .repairs.memory import ToolCallMemory
from .request_body import BODY_SHARE, BODY_TIMEOUT, expected_size
from .secrets import Redactor
from .server import OpenAIFront
from .store import TurnStore
from . import telemetry
from .upstreams import build_upstreams

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1"}
#: Where aiohttp's server logs the requests it could not parse.
_AIOHTTP_SERVER_LOG = "aiohttp.server"
#: Journal turns the scoreboard starts from.
SCOREBOARD_SEED = 5000


class SwitchboardProxy:
    def __init__(self, config: Config, *, host: str | None = None, port: int | None = None,
                 journal: bool = True) -> None:
        self.config = config
        self.host = host or config.proxy.host
        self.port = config.proxy.port if port is None else port
        self.bus = EventBus()
        self.store = TurnStore()
        self.redactor = Redactor(config.secret_env_vars())
        self.upstreams = build_upstreams(config)
        self.journal: Journal | None = None
        if journal:
            self.journal = Journal.open(config.proxy.journal, self.redactor, self.store,
                                        retention_of(config.proxy))
            self.bus.add_observer(self.journal)
        # OpenTelemetry export (off unless configured); imports the SDK only when on.
        self.telemetry = telemetry.start(config, self.bus, self.store, self.redactor)
        self.memory = ToolCallMemory(self.journal)
        # Per-target stats for the control API: the journal's recent turns, then live.
        self.scoreboard = Scoreboard()
        if self.journal is not None:
            self.scoreboard.count_records(self.journal.turns(SCOREBOARD_SEED))
        self.bus.add_observer(ScoreboardObserver(self.scoreboard, self.store.get))
        self.pipeline = Pipeline(config, self.upstreams, self.bus, self.store, self.memory,
                                 lookup=self.journaled_turn,
                                 recorded=self.journal.recorded if self.journal else None,
                                 capture_wire=(self.journal is not None
                                               and config.proxy.journal_wire_kb > 0))
        if self.journal is not None:  # learned deadlines survive a restart
            self.pipeline.learned.load(self.journal.recent_attempts())
        self.heartbeat = HeartbeatTicker(self.pipeline, self.bus)
        self._ticker: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.front = OpenAIFront(self.pipeline, self.redactor)
        #: Request bytes handled at once (`body_budget.py`), taken in `_front_door`.
        self.budget = BodyBudget(int(max(config.proxy.max_inflight_mb,
                                         config.proxy.max_body_mb) * 1024 * 1024))

    async def journaled_turn(self, turn_id: str) -> Turn | None:
        """A turn as the journal has it (one no longer in memory: to show, retry or
        reroute), read on the journal's writer: the event loop serves turns meanwhile."""
        journal = self.journal
        if journal is None:
            return None
        data = await journal.fetch(partial(journal.turn, turn_id))
        return Turn.from_dict(data) if data is not None else None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def make_app(self) -> web.Application:
        max_size = int(self.config.proxy.max_body_mb * 1024 * 1024)
        app = web.Application(client_max_size=max_size,
                              middlewares=[self._front_door])
        app[BODY_TIMEOUT] = self.config.proxy.body_timeout
        self.front.add_routes(app)
        ControlAPI(config=self.config, pipeline=self.pipeline, store=self.store, bus=self.bus,
                   redactor=self.redactor, scoreboard=self.scoreboard, journal=self.journal,
                   telemetry=self.telemetry, budget=self.budget).add_routes(app)
        return app

    async def start(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.start()
            for secret in getattr(upstream, "secret_values", tuple)():
                self.redactor.add(secret)
        # handler_cancellation: a client that goes away cancels its handler, so the
        # pipeline closes the upstream and fails the turn at once (no retries for
        # nobody, no handler outliving stop()). auto_decompress off: compressed bodies
        # are decoded by `request_body`, within the body limit, errors in OpenAI's shape.
        quiet_malformed_requests()
        self._runner = web.AppRunner(self.make_app(), access_log=None,
                                     handler_cancellation=True, shutdown_timeout=2.0,
                                     auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        if self.port == 0:  # pick up the OS-assigned port
            self.port = self._runner.addresses[0][1]
        self._ticker = asyncio.get_running_loop().create_task(self.heartbeat.run(),
                                                              name="switchboard heartbeat")
        log.info("switchboard listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._runner is not None:
            # Turns in flight end now, recorded as failed; then aiohttp stops listening
            # and closes the connections.
            await self.front.cancel_all(timeout=2.0)
            await self._runner.cleanup()
            self._runner = None
        await self.pipeline.aclose()
        for upstream in self.upstreams.values():
            await upstream.aclose()
        if self.journal is not None:
            self.journal.close()
        if self.telemetry is not None:
            await self.telemetry.aclose()

    # -- middleware --------------------------------------------------------------

    def refusal(self, host_header: str | None, origin: str | None) -> str | None:
        """Why a request with these Host and Origin headers must be refused, or None.

        Bound to loopback, only loopback names are accepted as Host (DNS
        rebinding); an Origin header, which browsers send, must be loopback too.
        """
        loopback_bind = self.host in LOOPBACK_NAMES
        host = _host_name(host_header or "")
        if loopback_bind and host not in LOOPBACK_NAMES:
            return f"Host {host_header!r} is not a loopback name"
        if origin is not None:
            origin_host = _host_name(origin, url=True)
            if origin_host not in LOOPBACK_NAMES:
                return f"Origin {origin!r} is not allowed"
        return None

    @web.middleware
    async def _front_door(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """Refuse what a web page could send us; every error in OpenAI's JSON shape.

        One middleware, not two: each is a coroutine layer on every request.
        Errors include aiohttp's own 404/405/413.
        """
        refusal = self.refusal(request.host, request.headers.get("Origin"))
        if refusal is not None:
            log.warning("refused %s %s: %s", request.method, request.path, refusal)
            return web.json_response(error_body(f"forbidden: {refusal}", type_="forbidden",
                                                code="forbidden"), status=403)
        share = await self.budget.take(expected_size(request))
        request[BODY_SHARE] = share
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
            if exc.status == 404:
                message = f"no such endpoint: {request.method} {request.path}"
                if not request.path.startswith(("/v1/", PREFIX)):
                    message += " (point your client at /v1)"
            return web.json_response(error_body(message, type_="invalid_request_error",
                                                code=str(exc.status)), status=exc.status)
        except Exception:
            log.exception("internal error handling %s %s", request.method, request.path)
            return web.json_response(internal_error_body(), status=500)
        finally:
            # The turn has ended; a large history is still the journal's to encode.
            if share.size >= JOURNAL_WAIT and self.journal is not None:
                share.release_after(self.journal.drained())
            else:
                share.release()


def _host_name(value: str, *, url: bool = False) -> str:
    """The host name in a Host header (`name[:port]`) or an Origin URL; "" if malformed."""
    try:
        return urlsplit(value if url else "//" + value).hostname or ""
    except ValueError:
        return ""


class MalformedRequestLog(logging.Filter):
    """aiohttp's log of a request it could not parse, as one warning line.

    aiohttp's server answers a malformed request (a header line over 8 KB,
    a bad chunk size, TLS spoken to the plain port) with a plain-text 400
    before any handler sees it, and logs it as an error with a traceback: a
    client that keeps sending one would fill the log with tracebacks of
    aiohttp's parser. What is left is the peer and the parser's reason,
    without the bytes it quotes (a header line could carry a token).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = (exc.message or type(exc).__name__).strip().splitlines()[0]
            reason = reason.split(" b'", 1)[0].split(" bytearray(", 1)[0].rstrip(": ")
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args, record.exc_info, record.exc_text = (
                "refused a malformed HTTP request from %s: %s (%d)",
                (peer, reason[:200], exc.code), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_malformed_requests() -> None:
    """Put `MalformedRequestLog` on aiohttp's server log (once per process)."""
    logger = logging.getLogger(_AIOHTTP_SERVER_LOG)
    if not any(isinstance(f, MalformedRequestLog) for f in logger.filters):
        logger.addFilter(MalformedRequestLog())
