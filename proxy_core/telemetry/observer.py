"""The proxy's side of telemetry: an event-bus observer that hands ended turns
to a separate telemetry process.

Building spans, recording metrics and encoding them for OTLP costs the
OpenTelemetry SDK some hundreds of µs of Python per turn. Done in the proxy
(on the loop, or on a thread that shares its interpreter lock) that is time
taken from relaying; so the SDK runs in a child process (`otel.serve`), and
the proxy's part per turn is a copy of a few redacted fields into a
`TurnJob`. Jobs go to the child in batches, at most `FLUSH_DELAY` apart, on
a bounded queue (pickled by the queue's own feeder thread): one wake-up of
that thread and of the child per batch, not per turn, which is what a busy
proxy on a small machine notices. The child builds the spans from those
fields, so times are exact.

A full queue (the child stuck on a slow collector) drops the turn and counts
its spans; the child counts spans exported and spans whose export failed in
shared memory, read by `status()` for `/switchboard/api/health`. The child
exits when told, or on its own when the proxy is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import queue
from typing import TYPE_CHECKING, Any

from ..events import StreamHeartbeat, TurnFailed, TurnFinished
from .jobs import EXPORTED, FAILED, METRIC_FAILED, AttemptJob, RepairJob, StallJob, TurnJob

if TYPE_CHECKING:
    from ..config import Config
    from ..record import Turn
    from ..secrets import Redactor
    from ..store import TurnStore
    from .export_plan import ExportPlan

log = logging.getLogger(__name__)

#: Longest before/after excerpt of a repair put on a span event.
EXCERPT = 200
#: Longest captured message content (`capture_content`), per attribute.
CONTENT_LIMIT = 64 * 1024
#: How long stop() waits for the child to export what it holds.
SHUTDOWN_WAIT = 2.0
#: Most turns handed over together, and longest a turn waits to be handed over (s).
BATCH = 32
FLUSH_DELAY = 0.05


def _child_main(*args: Any) -> None:
    """The child's entry point; imports the SDK there, never in the proxy."""
    from .otel import serve
    serve(*args)


class OtelExporter:
    """Event-bus observer handing each ended turn to the telemetry process."""

    def __init__(self, plan: ExportPlan, config: Config, store: TurnStore, redactor: Redactor) -> None:
        self.plan, self.store, self.redactor = plan, store, redactor
        self.capture_content = plan.settings.capture_content
        # The queue holds turns; its bound is the configured span count, at two spans
        # (the turn and one attempt) a turn.
        self.max_turns = max(1, plan.settings.max_queue_size // 2)
        self._batch = min(BATCH, self.max_turns)
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with an event loop
        self._jobs: multiprocessing.Queue[list[TurnJob] | None] = ctx.Queue(
            -(-self.max_turns // self._batch))  # batches, holding at most max_turns turns
        self._pending: list[TurnJob] = []
        self._timer: asyncio.TimerHandle | None = None
        self._counts = ctx.Array("q", 3, lock=False)
        self._dropped = 0
        self._stalls: dict[str, dict[int, StallJob]] = {}
        upstreams = {name: (u.kind, u.base_url or "") for name, u in config.upstreams.items()}
        # Daemonic, so it never outlives the proxy.
        self._child = ctx.Process(target=_child_main, name="switchboard-otel", daemon=True,
                                  args=(plan, upstreams, self._jobs, self._counts))
        self._child.start()

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, object]:
        exported, failed = self._counts[EXPORTED], self._counts[FAILED]
        return {"enabled": True, "endpoint": self.plan.endpoint,
                "spans_exported": exported,
                "spans_dropped": self._dropped + failed,
                "spans_dropped_queue_full": self._dropped,
                "spans_failed_export": failed,
                "metric_exports_failed": self._counts[METRIC_FAILED],
                "exporter_running": self._child.is_alive()}

    async def aclose(self) -> None:
        """Tell the child to export what it holds and stop; wait a bounded time."""
        self._flush()
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass  # stuck on a collector: it is stopped below
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._child.join, 2 * SHUTDOWN_WAIT)
        if self._child.is_alive():
            self._child.terminate()
            await loop.run_in_executor(None, self._child.join, SHUTDOWN_WAIT)
        self._jobs.cancel_join_thread()  # what the child did not take is lost, not waited on
        self._jobs.close()

    # -- observer (on the event loop: copy and enqueue, nothing more) ----------

    def on_StreamHeartbeat(self, e: StreamHeartbeat) -> None:
        if e.stalled:
            self._stalls.setdefault(e.turn_id, {}).setdefault(
                e.attempt, StallJob(e.at, e.since_last, e.keepalives))

    def on_TurnFinished(self, e: TurnFinished) -> None:
        self._ended(e.turn_id, e.at, e.duration, finished=e)

    def on_TurnFailed(self, e: TurnFailed) -> None:
        self._ended(e.turn_id, e.at, e.duration, failed=e)

    def _ended(self, turn_id: str, at: float, duration: float, *,
               finished: TurnFinished | None = None, failed: TurnFailed | None = None) -> None:
        stalls = self._stalls.pop(turn_id, {})
        turn = self.store.get(turn_id)
        if turn is None:
            return
        self._pending.append(self._job(turn, stalls, at, duration, finished=finished,
                                       failed=failed))
        if len(self._pending) >= self._batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        """Hand the pending turns to the child; if its queue is full, count their spans lost."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._jobs.put_nowait(batch)
        except queue.Full:
            self._dropped += sum(job.spans for job in batch)

    def _clean(self, text: str, limit: int = EXCERPT) -> str:
        text = self.redactor(text)
        return text if len(text) <= limit else text[:limit] + "…"

    def _job(self, turn: Turn, stalls: dict[int, StallJob], at: float, duration: float, *,
             finished: TurnFinished | None, failed: TurnFailed | None) -> TurnJob:
        attempts = tuple(
            AttemptJob(a.number, a.target, a.reason, a.started_at, a.first_byte_at, a.ended_at,
                       a.outcome, self.redactor(a.error) if a.error else None, stalls.get(a.number),
                       a.response_id, a.prepared_in)
            for a in turn.attempts)
        repairs = tuple(RepairJob(r.kind, self._clean(r.before), self._clean(r.after), r.at)
                        for r in turn.repairs)
        content: dict[str, Any] = {}
        if self.capture_content:
            messages = turn.request.get("messages")
            if messages is not None:
                content["input_messages"] = self._clean(
                    json.dumps(messages, ensure_ascii=False, default=str), CONTENT_LIMIT)
            parts: list[dict[str, Any]] = []
            if turn.text:
                parts.append({"type": "text", "content": turn.text})
            for call in turn.tool_calls:
                parts.append({"type": "tool_call", "id": call.id, "name": call.name,
                              "arguments": call.arguments})
            output = [{"role": "assistant", "parts": parts,
                       "finish_reason": finished.finish_reason if finished else None}]
            content["output_messages"] = self._clean(json.dumps(output, ensure_ascii=False),
                                                     CONTENT_LIMIT)
        outcome: dict[str, Any] = {}
        if finished is not None:
            outcome = {"finish_reason": finished.finish_reason,
                       "prompt_tokens": finished.prompt_tokens,
                       "completion_tokens": finished.completion_tokens,
                       "tool_calls": finished.tool_calls,
                       "cached_tokens": turn.usage.cached_tokens,
                       "cache_write_tokens": turn.usage.cache_write_tokens,
                       "reasoning_tokens": finished.reasoning_tokens, "cost": finished.cost}
        elif failed is not None:
            outcome = {"error": self.redactor(failed.error), "status": failed.status}
        return TurnJob(
            turn_id=turn.id, model=turn.model, session_id=turn.session_id, route=turn.route,
            stream=turn.stream, rerun_of=turn.rerun_of, started_at=turn.started_at, ended_at=at,
            duration=duration, ttfb=turn.ttfb, attempts=attempts, repairs=repairs,
            **outcome, **content)

