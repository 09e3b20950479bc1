"""Turns as OpenTelemetry GenAI spans and metrics, exported over OTLP/HTTP protobuf.

An event-bus observer that does almost nothing on the event loop: when a turn
ends it copies the few fields telemetry needs from the `Turn` record (attempts,
repairs, usage, timings; one record per turn, so the spans are a projection of
it) and puts them on a bounded queue. One worker thread turns each entry into
a `chat {model}` span (kind CLIENT) covering every attempt, a child span per
attempt, span events for repairs and stalls, and the `gen_ai.client.*`
metrics, and exports spans in batches through the SDK's OTLP/HTTP exporter.

Why not the SDK's live spans and batch processor: creating spans and
recording metrics costs ~100-400 µs of SDK work per turn (attribute cleaning,
view matching), which on the loop sits in front of the next request's first
byte. Built after the fact from the record, the same spans cost the loop one
copy and one queue put. Turns the queue has no room for (a collector that
is down or slow holds the worker in `export_timeout`) are dropped and their
spans counted, as are spans whose export failed, for `/switchboard/api/health`.
Everything exported that could carry a secret passes through the redactor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span as SdkSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context

from ..events import StreamHeartbeat, TurnFailed, TurnFinished
from ..record import Attempt, RepairRecord

if TYPE_CHECKING:
    from ..config import Config
    from ..secrets import Redactor
    from ..store import TurnStore
    from .export_plan import ExportPlan

log = logging.getLogger(__name__)

#: Longest before/after excerpt of a repair put on a span event.
EXCERPT = 200
#: Longest captured message content (`capture_content`), per attribute.
CONTENT_LIMIT = 64 * 1024
SHUTDOWN_WAIT = 2.0
#: Spans per export request at most (the SDK batch processor's default).
MAX_BATCH = 512

#: What an attempt span says of its target (the rest is on the turn span).
_ATTEMPT_TARGET_KEYS = ("switchboard.target", "server.address")

PROVIDERS = {"bedrock": "aws.bedrock", "simulator": "switchboard.simulator"}


def _ns(at: float) -> int:
    return int(at * 1e9)


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans_exported = 0
        self.spans_failed = 0       # lost in an export that failed (down, slow, refused)
        self.spans_dropped = 0      # lost because the queue was full
        self.metric_exports_failed = 0
        self.spans_queued = 0       # in the queue now, not yet built

    def add(self, name: str, n: int) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class _CountingMetricExporter(OTLPMetricExporter):
    counts: _Counts

    def export(self, metrics_data: Any, timeout_millis: float | None = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            log.debug("metric export raised", exc_info=True)
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self.counts.add("metric_exports_failed", 1)
        return result


class _Collect(SpanProcessor):
    """Ended spans into the worker's batch (spans end only on the worker thread)."""

    def __init__(self, batch: list[ReadableSpan], exporter: SpanExporter) -> None:
        self.batch, self.exporter = batch, exporter

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.batch.append(span)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class _Stall:
    at: float
    since_last: float
    keepalives: int


@dataclass(frozen=True, slots=True)
class _Ended:
    """What a finished turn leaves for the worker: copies, so the record may change on."""

    turn_id: str
    model: str
    session_id: str
    route: str
    stream: bool
    rerun_of: str | None
    started_at: float
    ended_at: float
    ttfb: float | None
    attempts: tuple[Attempt, ...]
    repairs: tuple[RepairRecord, ...]
    stalls: dict[int, _Stall]
    failed: TurnFailed | None
    finished: TurnFinished | None
    tool_calls: int
    input_messages: Any = None      # only with capture_content
    output_message: Any = None      # only with capture_content

    @property
    def spans(self) -> int:
        return 1 + len(self.attempts)


_STOP = object()


class OtelExporter:
    """Event-bus observer exporting each turn as a GenAI client span, from a worker thread."""

    def __init__(self, plan: ExportPlan, config: Config, store: TurnStore, redactor: Redactor) -> None:
        s = plan.settings
        self.plan, self.config, self.store, self.redactor = plan, config, store, redactor
        self.capture_content = s.capture_content
        self.max_queue = s.max_queue_size
        self.schedule_delay = s.schedule_delay
        self.counts = _Counts()
        resource = Resource.create({"service.name": plan.service_name})
        self.span_exporter = OTLPSpanExporter(endpoint=f"{plan.endpoint}/v1/traces",
                                              headers=plan.headers, timeout=s.export_timeout)
        self._batch: list[ReadableSpan] = []
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(_Collect(self._batch, self.span_exporter))
        metric_exporter = _CountingMetricExporter(endpoint=f"{plan.endpoint}/v1/metrics",
                                                  headers=plan.headers, timeout=s.export_timeout)
        metric_exporter.counts = self.counts
        reader = PeriodicExportingMetricReader(metric_exporter,
                                               export_interval_millis=s.metric_interval * 1000,
                                               export_timeout_millis=s.export_timeout * 1000)
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[reader],
                                           shutdown_on_exit=False)
        self.tracer = self.tracer_provider.get_tracer("switchboard")
        meter = self.meter_provider.get_meter("switchboard")
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration")
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Tokens used per turn")
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", unit="s",
            description="Time from request to the first chunk of the answer")
        self._stalls: dict[str, dict[int, _Stall]] = {}   # loop side: first stall per attempt
        self._target_cache: dict[str, dict[str, Any]] = {}  # worker side
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._run, name="switchboard otel", daemon=True)
        self._worker.start()

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, object]:
        c = self.counts
        with c.lock:
            return {"enabled": True, "endpoint": self.plan.endpoint,
                    "spans_exported": c.spans_exported,
                    "spans_dropped": c.spans_dropped + c.spans_failed,
                    "spans_dropped_queue_full": c.spans_dropped,
                    "spans_failed_export": c.spans_failed,
                    "spans_queued": c.spans_queued,
                    "metric_exports_failed": c.metric_exports_failed}

    async def aclose(self) -> None:
        """Export what is queued and stop, waiting a bounded time: a slow collector never
        holds stop()."""
        self._jobs.put(_STOP)

        def shutdown() -> None:
            self._worker.join(SHUTDOWN_WAIT)
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown(timeout_millis=SHUTDOWN_WAIT * 1000)

        thread = threading.Thread(target=shutdown, name="switchboard otel shutdown", daemon=True)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 2 * SHUTDOWN_WAIT)

    def force_flush(self, timeout: float = 10.0) -> bool:
        """Build and export what is queued now (blocking: call it off the loop)."""
        done = threading.Event()
        self._jobs.put(done)
        return done.wait(timeout) and self.meter_provider.force_flush()

    # -- observer (on the event loop: copy and enqueue, nothing more) ----------

    def on_StreamHeartbeat(self, e: StreamHeartbeat) -> None:
        if e.stalled:
            self._stalls.setdefault(e.turn_id, {}).setdefault(
                e.attempt, _Stall(e.at, e.since_last, e.keepalives))

    def on_TurnFinished(self, e: TurnFinished) -> None:
        self._enqueue(e.turn_id, finished=e)

    def on_TurnFailed(self, e: TurnFailed) -> None:
        self._enqueue(e.turn_id, failed=e)

    def _enqueue(self, turn_id: str, *, finished: TurnFinished | None = None,
                 failed: TurnFailed | None = None) -> None:
        stalls = self._stalls.pop(turn_id, {})
        turn = self.store.get(turn_id)
        if turn is None:
            return
        spans = 1 + len(turn.attempts)
        c = self.counts
        with c.lock:
            if c.spans_queued + spans > self.max_queue:
                c.spans_dropped += spans
                return
            c.spans_queued += spans
        event = finished or failed
        assert event is not None
        input_messages = output_message = None
        if self.capture_content:
            input_messages = turn.request.get("messages")
            parts: list[dict[str, Any]] = []
            if turn.text:
                parts.append({"type": "text", "content": turn.text})
            for call in turn.tool_calls:
                parts.append({"type": "tool_call", "id": call.id, "name": call.name,
                              "arguments": call.arguments})
            output_message = [{"role": "assistant", "parts": parts,
                               "finish_reason": finished.finish_reason if finished else None}]
        self._jobs.put(_Ended(
            turn_id=turn.id, model=turn.model, session_id=turn.session_id, route=turn.route,
            stream=turn.stream, rerun_of=turn.rerun_of, started_at=turn.started_at,
            ended_at=event.at, ttfb=turn.ttfb,
            attempts=tuple(replace(a) for a in turn.attempts),
            repairs=tuple(turn.repairs), stalls=stalls, failed=failed, finished=finished,
            tool_calls=len(turn.tool_calls), input_messages=input_messages,
            output_message=output_message))

    # -- worker thread ----------------------------------------------------------

    def _run(self) -> None:
        due: float | None = None  # when the batch in hand must go, at the latest
        while True:
            try:
                job = self._jobs.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
            except queue.Empty:
                job = None
            if isinstance(job, _Ended):
                try:
                    self._build(job)
                except Exception:
                    log.exception("could not build the spans of turn %s", job.turn_id)
                finally:
                    self.counts.add("spans_queued", -job.spans)
                if due is None:
                    due = time.monotonic() + self.schedule_delay
                if len(self._batch) < MAX_BATCH:
                    continue
            self._export()
            due = None
            if isinstance(job, threading.Event):
                job.set()
            elif job is _STOP:
                return

    def _export(self) -> None:
        while self._batch:
            batch = self._batch[:MAX_BATCH]
            del self._batch[:MAX_BATCH]
            try:
                result = self.span_exporter.export(batch)
            except Exception:
                log.debug("span export raised", exc_info=True)
                result = SpanExportResult.FAILURE
            self.counts.add("spans_exported" if result is SpanExportResult.SUCCESS
                            else "spans_failed", len(batch))

    def _clean(self, text: str, limit: int) -> str:
        text = self.redactor(text)
        return text if len(text) <= limit else text[:limit] + "…"

    def _target_attrs(self, target: str) -> dict[str, Any]:
        cached = self._target_cache.get(target)
        if cached is not None:
            return cached
        upstream_name, _, model = target.partition(":")
        upstream = self.config.upstreams.get(upstream_name)
        kind = upstream.kind if upstream is not None else "unknown"
        attrs: dict[str, Any] = {"switchboard.target": target, "gen_ai.response.model": model}
        if upstream is not None and upstream.base_url:
            url = urlsplit(upstream.base_url)
            host = url.hostname or ""
            attrs["server.address"] = host
            if url.port:
                attrs["server.port"] = url.port
            attrs["gen_ai.provider.name"] = _provider_for_host(host)
        else:
            attrs["gen_ai.provider.name"] = PROVIDERS.get(kind, kind)
        if len(self._target_cache) < 1024:
            self._target_cache[target] = attrs
        return attrs

    def _build(self, t: _Ended) -> None:
        target = self._target_attrs(t.attempts[-1].target) if t.attempts else {}
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": t.model,
            "gen_ai.conversation.id": t.session_id, "switchboard.route": t.route,
            "switchboard.turn_id": t.turn_id, "switchboard.stream": t.stream,
            **target, "switchboard.attempts": len(t.attempts), "switchboard.repairs": len(t.repairs),
        }
        if t.rerun_of:
            attrs["switchboard.rerun_of"] = t.rerun_of
        if t.repairs:
            attrs["switchboard.repair_kinds"] = sorted({r.kind for r in t.repairs})
        if t.ttfb is not None:
            attrs["switchboard.time_to_first_chunk"] = t.ttfb
        if t.input_messages is not None:
            attrs["gen_ai.input.messages"] = self._clean(
                json.dumps(t.input_messages, ensure_ascii=False, default=str), CONTENT_LIMIT)
        if t.finished is not None:
            f = t.finished
            attrs.update({
                "gen_ai.response.finish_reasons": [f.finish_reason],
                "gen_ai.response.id": t.turn_id,
                "gen_ai.usage.input_tokens": f.prompt_tokens,
                "gen_ai.usage.output_tokens": f.completion_tokens,
                "switchboard.tool_calls": f.tool_calls,
            })
            if t.output_message is not None:
                attrs["gen_ai.output.messages"] = self._clean(
                    json.dumps(t.output_message, ensure_ascii=False), CONTENT_LIMIT)
        span = self.tracer.start_span(f"chat {t.model}", kind=SpanKind.CLIENT, attributes=attrs,
                                      start_time=_ns(t.started_at))
        parent = set_span_in_context(span)
        for i, attempt in enumerate(t.attempts):
            following = t.attempts[i + 1] if i + 1 < len(t.attempts) else None
            self._attempt_span(t, span, parent, attempt, following)
        for r in t.repairs:
            span.add_event("switchboard.repair", {
                "switchboard.repair.kind": r.kind,
                "switchboard.repair.before": self._clean(r.before, EXCERPT),
                "switchboard.repair.after": self._clean(r.after, EXCERPT)}, _ns(r.at))
        metric_attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": t.model,
                        **{k: v for k, v in target.items() if k != "server.port"}}
        if t.failed is not None:
            e = t.failed
            error_type = _end_reason(e.error) if e.status >= 500 or e.status == 0 else str(e.status)
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, self._clean(e.error, EXCERPT)))
            span.end(_ns(t.ended_at))
            self.duration.record(e.duration, {**metric_attrs, "error.type": error_type})
            return
        span.end(_ns(t.ended_at))
        assert t.finished is not None
        self.duration.record(t.finished.duration, metric_attrs)
        self.tokens.record(t.finished.prompt_tokens, {**metric_attrs, "gen_ai.token.type": "input"})
        self.tokens.record(t.finished.completion_tokens, {**metric_attrs, "gen_ai.token.type": "output"})
        if t.ttfb is not None:
            self.first_chunk.record(t.ttfb, metric_attrs)

    def _attempt_span(self, t: _Ended, turn_span: Span, parent: Any, a: Attempt,
                      following: Attempt | None) -> None:
        # The target and its host; the provider and model are the turn span's (fewer
        # attributes: each costs the worker ~5 µs to clean and encode).
        target = self._target_attrs(a.target)
        attrs = {k: target[k] for k in _ATTEMPT_TARGET_KEYS if k in target}
        attrs.update({"switchboard.attempt": a.number, "switchboard.attempt.reason": a.reason})
        error = a.error
        if a.outcome == "abandoned" and error is None and following is not None:
            error = following.reason  # ended because the next attempt began (retry, reroute)
        outcome = "failed" if a.outcome == "live" else a.outcome
        attrs["switchboard.attempt.outcome"] = outcome
        if a.first_byte_at is not None:
            attrs["switchboard.time_to_first_chunk"] = a.first_byte_at - a.started_at
        span = self.tracer.start_span(f"attempt {a.number} {a.target}", context=parent,
                                      kind=SpanKind.CLIENT, start_time=_ns(a.started_at),
                                      attributes=attrs)
        stall = t.stalls.get(a.number)
        if stall is not None:
            stall_attrs: dict[str, Any] = {
                "switchboard.attempt": a.number, "switchboard.target": a.target,
                "switchboard.since_last": stall.since_last, "switchboard.keepalives": stall.keepalives}
            turn_span.add_event("switchboard.stall", stall_attrs, _ns(stall.at))
            span.add_event("switchboard.stall", stall_attrs, _ns(stall.at))
        elif error is not None and _end_reason(error) == "stall":
            turn_span.add_event("switchboard.stall", {"switchboard.attempt": a.number,
                                                      "switchboard.target": a.target},
                                _ns(a.ended_at or t.ended_at))
        if error is not None and outcome != "ok":
            reason = _end_reason(error)
            span.set_attribute("switchboard.attempt.end_reason", reason)
            span.set_attribute("error.type", reason)
            span.set_status(Status(StatusCode.ERROR, self._clean(error, EXCERPT)))
        span.end(_ns(a.ended_at if a.ended_at is not None else t.ended_at))


def _end_reason(error: str) -> str:
    """A low-cardinality name for why an attempt ended."""
    text = error.lower()
    if "no first token" in text or "stalled" in text or "no output" in text:
        return "stall"
    if text.startswith(("manual", "retry", "reroute", "initial")):
        return text.split()[0]
    if "refused" in text or "connect" in text or "unreachable" in text:
        return "connection_error"
    if "cancel" in text or "client" in text and "gone" in text:
        return "cancelled"
    if "timeout" in text or "timed out" in text:
        return "timeout"
    return "upstream_error"


def _provider_for_host(host: str) -> str:
    for needle, name in (("openrouter", "openrouter"), ("moonshot", "moonshot"),
                         ("openai.com", "openai"), ("amazonaws", "aws.bedrock")):
        if needle in host:
            return name
    return "openai"
