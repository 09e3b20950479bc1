"""Turns as OpenTelemetry GenAI spans and metrics, exported over OTLP/HTTP protobuf.

An event-bus observer: `chat {model}` (kind CLIENT) per turn covering every
attempt, a child span per attempt, span events for repairs and stalls, and
the `gen_ai.client.*` metrics. The SDK's batch processor exports from its own
thread with a bounded queue; spans it drops (queue full) or fails to deliver
(collector down, slow, refusing) are counted for `/switchboard/api/health`.
Everything exported that could carry a secret passes through the redactor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context

from ..events import (
    AttemptFailed,
    AttemptStarted,
    FirstByte,
    RepairApplied,
    StreamHeartbeat,
    TurnFailed,
    TurnFinished,
    TurnStarted,
)

if TYPE_CHECKING:
    from ..config import Config
    from ..secrets import Redactor
    from ..store import TurnStore
    from . import ExportPlan

log = logging.getLogger(__name__)

#: Longest before/after excerpt of a repair put on a span event.
EXCERPT = 200
#: Longest captured message content (`capture_content`), per attribute.
CONTENT_LIMIT = 64 * 1024
SHUTDOWN_WAIT = 2.0

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

    def add(self, name: str, n: int) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, counts: _Counts) -> None:
        self.inner, self.counts = inner, counts

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            log.debug("span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        self.counts.add("spans_exported" if result is SpanExportResult.SUCCESS else "spans_failed",
                        len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


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


class _DropCountingProcessor(SpanProcessor):
    """The batch processor, plus a count of spans its full queue pushes out."""

    def __init__(self, inner: BatchSpanProcessor, max_queue: int, counts: _Counts) -> None:
        self.inner, self.max_queue, self.counts = inner, max_queue, counts
        # The SDK's bounded deque; it drops the oldest span when full (and only logs it).
        self._queue = getattr(getattr(inner, "_batch_processor", None), "_queue", None)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self._queue is not None and len(self._queue) >= self.max_queue:
            self.counts.add("spans_dropped", 1)
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@dataclass(slots=True)
class _Live:
    span: Span
    model: str
    attempt: Span | None = None
    attempt_no: int = 0
    target: str = ""
    stalled: bool = False
    attrs: dict[str, Any] = field(default_factory=dict)


class OtelExporter:
    """Event-bus observer exporting each turn as a GenAI client span."""

    def __init__(self, plan: ExportPlan, config: Config, store: TurnStore, redactor: Redactor) -> None:
        s = plan.settings
        self.plan, self.config, self.store, self.redactor = plan, config, store, redactor
        self.capture_content = s.capture_content
        self.counts = _Counts()
        resource = Resource.create({"service.name": plan.service_name})
        span_exporter = OTLPSpanExporter(endpoint=f"{plan.endpoint}/v1/traces", headers=plan.headers,
                                         timeout=s.export_timeout)
        batch = BatchSpanProcessor(_CountingSpanExporter(span_exporter, self.counts),
                                   max_queue_size=s.max_queue_size,
                                   max_export_batch_size=min(512, s.max_queue_size),
                                   schedule_delay_millis=s.schedule_delay * 1000,
                                   export_timeout_millis=s.export_timeout * 1000)
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(_DropCountingProcessor(batch, s.max_queue_size,
                                                                       self.counts))
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
        self._live: dict[str, _Live] = {}

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, object]:
        c = self.counts
        with c.lock:
            return {"enabled": True, "endpoint": self.plan.endpoint,
                    "spans_exported": c.spans_exported,
                    "spans_dropped": c.spans_dropped + c.spans_failed,
                    "spans_dropped_queue_full": c.spans_dropped,
                    "spans_failed_export": c.spans_failed,
                    "metric_exports_failed": c.metric_exports_failed}

    async def aclose(self) -> None:
        """Flush and stop in a thread, waiting a bounded time: a slow collector never holds stop()."""
        for live in list(self._live.values()):
            self._end_attempt(live, "interrupted", None)
            live.span.end()
        self._live.clear()

        def shutdown() -> None:
            self.tracer_provider.shutdown()
            self.meter_provider.shutdown(timeout_millis=SHUTDOWN_WAIT * 1000)

        thread = threading.Thread(target=shutdown, name="switchboard otel shutdown", daemon=True)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, SHUTDOWN_WAIT)

    def force_flush(self) -> None:
        """Export what is queued now (blocking; tests call it in a thread)."""
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    # -- helpers --------------------------------------------------------------

    def _clean(self, text: str, limit: int) -> str:
        text = self.redactor(text)
        return text if len(text) <= limit else text[:limit] + "…"

    def _target_attrs(self, target: str) -> dict[str, Any]:
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
        return attrs

    def _end_attempt(self, live: _Live, outcome: str, error: str | None, at: float | None = None) -> None:
        span = live.attempt
        if span is None:
            return
        span.set_attribute("switchboard.attempt.outcome", outcome)
        if error is not None:
            span.set_attribute("switchboard.attempt.end_reason", _end_reason(error))
            span.set_attribute("error.type", _end_reason(error))
            span.set_status(Status(StatusCode.ERROR, self._clean(error, EXCERPT)))
        span.end(_ns(at) if at is not None else None)
        live.attempt = None

    # -- observer -------------------------------------------------------------

    def on_TurnStarted(self, e: TurnStarted) -> None:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": e.model,
            "gen_ai.conversation.id": e.session_id, "switchboard.route": e.route,
            "switchboard.turn_id": e.turn_id, "switchboard.stream": e.stream,
        }
        if e.rerun_of:
            attrs["switchboard.rerun_of"] = e.rerun_of
        turn = self.store.get(e.turn_id)
        if self.capture_content and turn is not None:
            messages = turn.request.get("messages")
            if messages is not None:
                attrs["gen_ai.input.messages"] = self._clean(
                    json.dumps(messages, ensure_ascii=False, default=str), CONTENT_LIMIT)
        span = self.tracer.start_span(f"chat {e.model}", kind=SpanKind.CLIENT, attributes=attrs,
                                      start_time=_ns(e.at))
        self._live[e.turn_id] = _Live(span=span, model=e.model)

    def on_AttemptStarted(self, e: AttemptStarted) -> None:
        live = self._live.get(e.turn_id)
        if live is None:
            return
        self._end_attempt(live, "abandoned", e.reason, e.at)
        attrs = self._target_attrs(e.target)
        live.attrs = attrs
        live.target, live.attempt_no, live.stalled = e.target, e.attempt, False
        live.attempt = self.tracer.start_span(
            f"attempt {e.attempt} {e.target}", context=set_span_in_context(live.span),
            kind=SpanKind.CLIENT, start_time=_ns(e.at),
            attributes={**attrs, "switchboard.attempt": e.attempt, "switchboard.attempt.reason": e.reason})
        live.span.set_attributes(attrs)

    def on_FirstByte(self, e: FirstByte) -> None:
        live = self._live.get(e.turn_id)
        if live is None:
            return
        if live.attempt is not None:
            live.attempt.set_attribute("switchboard.time_to_first_chunk", e.latency)
        turn = self.store.get(e.turn_id)
        if turn is not None and turn.ttfb is not None:
            live.span.set_attribute("switchboard.time_to_first_chunk", turn.ttfb)
            self.first_chunk.record(turn.ttfb, self._metric_attrs(live))

    def on_RepairApplied(self, e: RepairApplied) -> None:
        live = self._live.get(e.turn_id)
        if live is None:
            return
        attrs = {"switchboard.repair.kind": e.kind,
                 "switchboard.repair.before": self._clean(e.before, EXCERPT),
                 "switchboard.repair.after": self._clean(e.after, EXCERPT)}
        live.span.add_event("switchboard.repair", attrs, _ns(e.at))

    def on_StreamHeartbeat(self, e: StreamHeartbeat) -> None:
        if not e.stalled:
            return
        live = self._live.get(e.turn_id)
        if live is None or live.stalled or live.attempt_no != e.attempt:
            return
        live.stalled = True  # one event per stalled attempt
        attrs: dict[str, Any] = {"switchboard.attempt": e.attempt, "switchboard.target": e.target,
                                 "switchboard.since_last": e.since_last, "switchboard.keepalives": e.keepalives}
        live.span.add_event("switchboard.stall", attrs, _ns(e.at))
        if live.attempt is not None:
            live.attempt.add_event("switchboard.stall", attrs, _ns(e.at))

    def on_AttemptFailed(self, e: AttemptFailed) -> None:
        live = self._live.get(e.turn_id)
        if live is None:
            return
        if _end_reason(e.error) == "stall" and not live.stalled:
            live.span.add_event("switchboard.stall", {"switchboard.attempt": e.attempt,
                                                      "switchboard.target": e.target}, _ns(e.at))
        self._end_attempt(live, "failed", e.error, e.at)

    def _metric_attrs(self, live: _Live, error: str | None = None) -> dict[str, Any]:
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": live.model,
                 **{k: v for k, v in live.attrs.items() if k != "server.port"}}
        if error:
            attrs["error.type"] = error
        return attrs

    def _finish(self, turn_id: str) -> tuple[_Live, Any] | None:
        live = self._live.pop(turn_id, None)
        if live is None:
            return None
        turn = self.store.get(turn_id)
        if turn is not None:
            live.span.set_attribute("switchboard.attempts", len(turn.attempts))
            live.span.set_attribute("switchboard.repairs", len(turn.repairs))
            if turn.repairs:
                live.span.set_attribute("switchboard.repair_kinds",
                                        sorted({r.kind for r in turn.repairs}))
        return live, turn

    def on_TurnFinished(self, e: TurnFinished) -> None:
        done = self._finish(e.turn_id)
        if done is None:
            return
        live, turn = done
        self._end_attempt(live, "ok", None, e.at)
        span = live.span
        span.set_attributes({
            "gen_ai.response.finish_reasons": [e.finish_reason],
            "gen_ai.response.id": e.turn_id,
            "gen_ai.usage.input_tokens": e.prompt_tokens,
            "gen_ai.usage.output_tokens": e.completion_tokens,
            "switchboard.tool_calls": e.tool_calls,
        })
        if turn is not None and turn.usage.cached_tokens:
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", turn.usage.cached_tokens)
        if turn is not None and turn.usage.cache_write_tokens:
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens",
                               turn.usage.cache_write_tokens)
        if e.reasoning_tokens:
            span.set_attribute("switchboard.usage.reasoning_tokens", e.reasoning_tokens)
        if e.cost is not None:
            span.set_attribute("switchboard.cost", e.cost)
        if self.capture_content and turn is not None:
            parts: list[dict[str, Any]] = []
            if turn.text:
                parts.append({"type": "text", "content": turn.text})
            for call in turn.tool_calls:
                parts.append({"type": "tool_call", "id": call.id, "name": call.name,
                              "arguments": call.arguments})
            message = [{"role": "assistant", "parts": parts, "finish_reason": e.finish_reason}]
            span.set_attribute("gen_ai.output.messages",
                               self._clean(json.dumps(message, ensure_ascii=False), CONTENT_LIMIT))
        span.end(_ns(e.at))
        attrs = self._metric_attrs(live)
        self.duration.record(e.duration, attrs)
        self.tokens.record(e.prompt_tokens, {**attrs, "gen_ai.token.type": "input"})
        self.tokens.record(e.completion_tokens, {**attrs, "gen_ai.token.type": "output"})

    def on_TurnFailed(self, e: TurnFailed) -> None:
        done = self._finish(e.turn_id)
        if done is None:
            return
        live, _turn = done
        self._end_attempt(live, "failed", e.error, e.at)
        error_type = _end_reason(e.error) if e.status >= 500 or e.status == 0 else str(e.status)
        live.span.set_attribute("error.type", error_type)
        live.span.set_status(Status(StatusCode.ERROR, self._clean(e.error, EXCERPT)))
        live.span.end(_ns(e.at))
        self.duration.record(e.duration, self._metric_attrs(live, error_type))


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
