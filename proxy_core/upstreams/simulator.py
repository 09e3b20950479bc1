"""The built-in simulated host (`kind = "simulator"`), as an upstream.

The simulator is a real HTTP server (`proxy_core.simulator`) started on an
ephemeral loopback port inside the proxy's event loop; this adapter is the
OpenAI adapter pointed at it. So the simulator exercises exactly the wire
path a real OpenAI-compatible host does, hangs and all.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ..config import UpstreamSettings
from ..simulator import RunningSimulator, SimulatorConfig, start_simulator
from ..stream import StreamPart
from .base import UpstreamRequest
from .openai import OpenAIUpstream


class SimulatorUpstream:
    kind = "simulator"
    captures_wire = True  # through its OpenAI adapter

    def __init__(self, settings: UpstreamSettings,
                 models: tuple[str, ...] = ("kimi-k2.5",)) -> None:
        self.name = settings.name
        self.settings = settings
        self.sim_config = SimulatorConfig(
            faults=settings.faults, fault_rate=settings.fault_rate, seed=settings.seed,
            steps=settings.steps, chunk_delay=settings.chunk_delay, models=models,
            hang_repeats=settings.hang_repeats, ttfb=settings.ttfb,
            ttfb_per_kb=settings.ttfb_per_kb, ttfb_jitter=settings.ttfb_jitter)
        self._running: RunningSimulator | None = None
        self._http: OpenAIUpstream | None = None

    async def start(self) -> None:
        if self._running is None:
            self._running = await start_simulator(self.sim_config)
            self._http = OpenAIUpstream(self.settings, base_url=self._running.base_url)

    async def aclose(self) -> None:
        if self._http is not None:  # its connection pool
            await self._http.aclose()
        if self._running is not None:
            await self._running.close()
            self._running = None

    async def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamPart, None]:
        if self._http is None:
            await self.start()
        assert self._http is not None
        async for part in self._http.stream(request):
            yield part
