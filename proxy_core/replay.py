"""`switchboard replay FILE`: a repro fixture played through the real proxy, offline.

A `ReplayHost` is a real HTTP server on 127.0.0.1 that answers the Nth
request with the bytes the Nth attempt of the live run received, with their
timing (or at once, `instant`): the recorded status and content type, the
recorded reads in order. An attempt that ended in a stall (the watchdog
fired), was abandoned, or was cut at the capture limit is left hanging after
its bytes, so the watchdog fires again; one whose connection broke is cut
off. A `SwitchboardProxy` (no journal) is started with the fixture's route,
repair profile and watchdog settings, every target pointing at the host, and
the client's request is sent to it; what comes back is what the client
would have received. So a replay runs the same adapter, repairs, watchdog,
retries and client encoder as the live run; only the bytes are canned.

`instant` drops the gaps between reads; a stall still lasts as long as the
recorded watchdog limit, since the stall is the watchdog firing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, fields
from typing import Any

import aiohttp
from aiohttp import web

from .app import SwitchboardProxy
from .capture import reads_of
from .config import Config, ProxySettings, RouteSettings, Target, UpstreamSettings, WatchdogSettings
from .repro import ReproError
from .simulator.host import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

#: Errors with which an attempt ended without the host ending it: replayed as a hang.
_STALL_PREFIXES = ("no first token from", "no output from", "stopped by hand")
#: How long a replay may take at most, beyond the recorded timing and watchdog limits.
SLACK = 30.0


def _outcome(turn: dict[str, Any], number: int) -> tuple[str, str]:
    for attempt in turn.get("attempts") or []:
        if attempt.get("number") == number:
            return str(attempt.get("outcome") or ""), str(attempt.get("error") or "")
    return "", ""


class ReplayHost:
    """Answers the Nth chat request with the Nth recorded attempt (see the module docstring)."""

    def __init__(self, fixture: dict[str, Any], *, instant: bool = False) -> None:
        self.attempts: list[dict[str, Any]] = list(fixture.get("wire") or [])
        self.turn: dict[str, Any] = fixture.get("turn") or {}
        self.instant = instant
        self.served = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)  # a long session's history
        app.router.add_post("/v1/chat/completions", self._answer)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        index, self.served = self.served, self.served + 1
        if index >= len(self.attempts):
            return web.json_response({"error": {
                "message": f"replay: the live run recorded {len(self.attempts)} attempt(s); "
                           f"this is attempt {index + 1}", "type": "replay_exhausted"}},
                status=500)
        recorded = self.attempts[index]
        outcome, error = _outcome(self.turn, int(recorded.get("attempt") or index + 1))
        hang = recorded.get("truncated") or outcome in ("abandoned", "interrupted") or (
            outcome == "failed" and error.startswith(_STALL_PREFIXES))
        if recorded.get("status") is None:  # no answer had come at all
            if not hang and request.transport is not None:
                request.transport.close()  # it failed at once: refused, reset
            await asyncio.Event().wait()  # until the proxy gives up and closes
        response = web.StreamResponse(status=int(recorded["status"]), headers={
            "Content-Type": str(recorded.get("content_type") or "text/event-stream")})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for at, data in reads_of(recorded):
            if not self.instant:
                await asyncio.sleep(max(0.0, start + at - loop.time()))
            if data:
                await response.write(data)
        if hang:
            await asyncio.Event().wait()
        if outcome == "failed" and "broke" in error and request.transport is not None:
            request.transport.close()  # the connection broke mid-answer
            return response
        await response.write_eof()
        return response


@dataclass(frozen=True, slots=True)
class ReplayResult:
    output: bytes   # what the client received, as received
    status: int
    requests: int   # attempts the replayed proxy made


def replay_config(fixture: dict[str, Any], base_url: str) -> Config:
    """The proxy's config for a replay: the fixture's route, every target at `base_url`."""
    route = fixture["route"]
    known = {f.name for f in fields(WatchdogSettings)}
    watchdog = WatchdogSettings(**{k: v for k, v in (fixture.get("watchdog") or {}).items()
                                   if k in known})
    targets = tuple(Target.parse(t) for t in route["targets"])
    upstreams = {t.upstream: UpstreamSettings(name=t.upstream, kind="openai", base_url=base_url)
                 for t in targets}
    settings = RouteSettings(model=route["model"], targets=targets,
                             repairs=route.get("replay_repairs") or route["repairs"],
                             watchdog=watchdog)
    return Config(ProxySettings(host="127.0.0.1", port=0), watchdog, upstreams, (settings,),
                  source="<replay>")


def _budget(fixture: dict[str, Any]) -> float:
    watchdog = fixture.get("watchdog") or {}
    per_attempt = float(watchdog.get("first_token_timeout", 45.0)) + float(
        watchdog.get("idle_timeout", 30.0))
    recorded = sum(float(a["reads"][-1][0]) for a in fixture.get("wire") or []
                   if a.get("reads"))
    return SLACK + recorded + per_attempt * max(1, len(fixture.get("wire") or []))


async def replay(fixture: dict[str, Any], *, instant: bool = False) -> ReplayResult:
    """Play `fixture` (from `repro.read_fixture`) and return what the client received."""
    if not fixture.get("wire_recorded"):
        raise ReproError("the fixture has no recorded upstream bytes (the turn went to a "
                         "Bedrock Converse upstream, or was recorded before they were kept)")
    host = ReplayHost(fixture, instant=instant)
    await host.start()
    proxy = SwitchboardProxy(replay_config(fixture, host.base_url), journal=False)
    try:
        await proxy.start()
        timeout = aiohttp.ClientTimeout(total=_budget(fixture))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            headers = {}
            session_id = (fixture.get("turn") or {}).get("session_id")
            if session_id:
                headers["x-session-id"] = str(session_id)
            async with session.post(proxy.base_url + "/v1/chat/completions",
                                    json=fixture["client_request"], headers=headers) as response:
                output = await response.read()
                status = response.status
    finally:
        await proxy.stop()
        await host.aclose()
    return ReplayResult(output=output, status=status, requests=host.served)
