"""The pulse of every stream in flight, as `StreamHeartbeat` events.

One ticker for the whole proxy (not a timer per turn): about once a second
it looks at each live turn's current attempt and publishes how many outputs
it has produced, at what rate, how long it has been silent, the watchdog
deadline that silence runs against, and whether it is turning into a stall.
"""

from __future__ import annotations

import asyncio
import time

from .bus import EventBus
from .events import StreamHeartbeat
from .pipeline import Pipeline

#: A stream is shown as stalled once its silence passes this share of the limit.
STALLED_SHARE = 0.5


class HeartbeatTicker:
    def __init__(self, pipeline: Pipeline, bus: EventBus, interval: float = 1.0) -> None:
        self.pipeline = pipeline
        self.bus = bus
        self.interval = interval
        self._seen: dict[str, tuple[int, int, float]] = {}  # turn -> (attempt, chunks, at)

    async def run(self) -> None:
        """Tick every `interval` on a fixed grid: the time a tick takes does not add up."""
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.tick()
            next_at += self.interval
            if next_at <= loop.time():  # fell behind (a blocked loop): skip, don't burst
                next_at = loop.time() + self.interval

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        seen: dict[str, tuple[int, int, float]] = {}
        for turn_id, live in list(self.pipeline.live.items()):
            attempt = live.attempt  # during a hedge race, the first attempt
            if attempt is None or attempt.outcome != "live":
                continue
            number, chunks, at = self._seen.get(turn_id, (attempt.number, 0, attempt.started_at))
            if number != attempt.number:
                chunks, at = 0, attempt.started_at
            rate = (attempt.chunks - chunks) / max(now - at, 1e-6)
            since_last = now - (attempt.last_output_at or attempt.started_at)
            watchdog = live.route.watchdog
            limit = ((attempt.first_output_deadline or watchdog.first_token_timeout)
                     if attempt.first_byte_at is None
                     else (attempt.idle_deadline or watchdog.idle_timeout))
            self.bus.publish(StreamHeartbeat(
                turn_id=turn_id, attempt=attempt.number, target=attempt.target,
                chunks=attempt.chunks, chunk_rate=rate, since_last=since_last,
                keepalives=attempt.keepalives, stalled=since_last >= limit * STALLED_SHARE,
                deadline=limit))
            seen[turn_id] = (attempt.number, attempt.chunks, now)
        self._seen = seen
