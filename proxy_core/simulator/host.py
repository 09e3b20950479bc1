"""The simulated host as one aiohttp application: the OpenAI face and the Converse face.

Both faces share the host's state (`server.CONFIG_KEY`, `server.STATE_KEY`);
this module only puts them together, so neither face imports the other's
assembly (`converse_face` builds on `server`, never the reverse).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from .config import SimulatorConfig
from .converse_face import add_converse_routes
from .server import CONFIG_KEY, STATE_KEY, chat_completions, list_models
from .stats import SimulatorState, SimulatorStats

StatsPredicate = Callable[[SimulatorStats], bool]


async def stats(request: web.Request) -> web.Response:
    """``GET /simulator/stats``: the counters, for tests and scripts."""
    return web.json_response(request.app[STATE_KEY].stats.to_json())


async def _on_shutdown(app: web.Application) -> None:
    app[STATE_KEY].shutdown.set()


#: The largest request the simulated host reads. aiohttp's default is 1 MB, which an
#: opencode session's history passes; real hosts take far more.
MAX_REQUEST_BYTES = 256 * 1024 * 1024


def make_simulator_app(config: SimulatorConfig) -> web.Application:
    """Build the simulated host's aiohttp application."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[CONFIG_KEY] = config
    app[STATE_KEY] = SimulatorState()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/simulator/stats", stats)
    app.on_shutdown.append(_on_shutdown)
    add_converse_routes(app)
    return app


@dataclass
class RunningSimulator:
    """A simulator serving inside the current event loop."""

    config: SimulatorConfig
    app: web.Application
    runner: web.AppRunner
    host: str
    port: int
    scheme: str = "http"

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` when serving TLS): the Bedrock ``endpoint_url``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.origin}/v1"

    @property
    def stats(self) -> SimulatorStats:
        """Live counters."""
        return self.app[STATE_KEY].stats

    async def wait_for(self, predicate: StatsPredicate, timeout: float = 30.0) -> None:
        """Wait until ``predicate(stats)`` holds."""
        await self.app[STATE_KEY].wait_for(predicate, timeout)

    async def close(self) -> None:
        """Stop serving; hanging streams end at once."""
        self.app[STATE_KEY].shutdown.set()
        await self.runner.cleanup()


async def start_simulator(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0,
                          ssl_context: ssl.SSLContext | None = None) -> RunningSimulator:
    """Start the simulator on ``host:port`` (0 picks a free port) in this loop.

    With ``ssl_context`` it serves HTTPS (botocore sends a Bedrock bearer
    token only over TLS).
    """
    app = make_simulator_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return RunningSimulator(config, app, runner, host, bound, "https" if ssl_context else "http")
