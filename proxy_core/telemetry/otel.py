"""The telemetry process: ended turns into OpenTelemetry GenAI spans and metrics,
exported over OTLP/HTTP protobuf by the SDK.

Runs in the child process `observer.OtelExporter` starts (`serve`), so the
SDK's work never shares the proxy's interpreter. For each `TurnJob`: a
`chat {model}` span (kind CLIENT) covering every attempt, a child span per
attempt, span events for repairs and stalls, and the `gen_ai.client.*`
metrics; spans are exported in batches (every `schedule_delay` seconds or
`MAX_BATCH` spans) through the SDK's OTLP exporter, metrics by its periodic
reader. Counts of spans exported and failed go to shared memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import time
from collections.abc import MutableSequence
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

from .jobs import EXPORTED, FAILED, METRIC_FAILED, AttemptJob, TurnJob

if TYPE_CHECKING:
    from multiprocessing import Queue

    from .export_plan import ExportPlan

log = logging.getLogger(__name__)

#: Spans per export request at most (the SDK batch processor's default).
MAX_BATCH = 512
#: How often the child looks whether the proxy is still there.
PARENT_CHECK = 1.0
#: The telemetry process's scheduling priority, relative to the proxy's (19 is the lowest).
NICENESS = 19

PROVIDERS = {"bedrock": "aws.bedrock", "simulator": "switchboard.simulator"}
#: What an attempt span says of its target (the rest is on the turn span).
_ATTEMPT_TARGET_KEYS = ("switchboard.target", "server.address")


def _ns(at: float) -> int:
    return int(at * 1e9)


class _CountingMetricExporter(OTLPMetricExporter):
    counts: MutableSequence[int]

    def export(self, metrics_data: Any, timeout_millis: float | None = 10_000, **kwargs: Any) -> MetricExportResult:
        try:
            result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception:
            log.debug("metric export raised", exc_info=True)
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self.counts[METRIC_FAILED] += 1
        return result


class _Collect(SpanProcessor):
    """Ended spans into the batch in hand (one thread builds and ends them all)."""

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


class SpanBuilder:
    """The SDK side: spans and metrics of each turn, and the batches of spans to export."""

    def __init__(self, plan: ExportPlan, upstreams: dict[str, tuple[str, str]],
                 counts: MutableSequence[int]) -> None:
        s = plan.settings
        self.upstreams, self.counts = upstreams, counts
        resource = Resource.create({"service.name": plan.service_name})
        self.span_exporter = OTLPSpanExporter(endpoint=f"{plan.endpoint}/v1/traces",
                                              headers=plan.headers, timeout=s.export_timeout)
        self.batch: list[ReadableSpan] = []
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(_Collect(self.batch, self.span_exporter))
        metric_exporter = _CountingMetricExporter(endpoint=f"{plan.endpoint}/v1/metrics",
                                                  headers=plan.headers, timeout=s.export_timeout)
        metric_exporter.counts = counts
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
        self._targets: dict[str, dict[str, Any]] = {}

    def export(self) -> None:
        while self.batch:
            batch = self.batch[:MAX_BATCH]
            del self.batch[:MAX_BATCH]
            try:
                result = self.span_exporter.export(batch)
            except Exception:
                log.debug("span export raised", exc_info=True)
                result = SpanExportResult.FAILURE
            self.counts[EXPORTED if result is SpanExportResult.SUCCESS else FAILED] += len(batch)

    def shutdown(self, timeout: float) -> None:
        self.export()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown(timeout_millis=timeout * 1000)

    def _target_attrs(self, target: str) -> dict[str, Any]:
        cached = self._targets.get(target)
        if cached is not None:
            return cached
        upstream_name, _, model = target.partition(":")
        kind, base_url = self.upstreams.get(upstream_name, ("unknown", ""))
        attrs: dict[str, Any] = {"switchboard.target": target, "gen_ai.response.model": model}
        if base_url:
            url = urlsplit(base_url)
            host = url.hostname or ""
            attrs["server.address"] = host
            if url.port:
                attrs["server.port"] = url.port
            attrs["gen_ai.provider.name"] = _provider_for_host(host)
        else:
            attrs["gen_ai.provider.name"] = PROVIDERS.get(kind, kind)
        if len(self._targets) < 1024:
            self._targets[target] = attrs
        return attrs

    def build(self, t: TurnJob) -> None:
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
            attrs["gen_ai.input.messages"] = t.input_messages
        if not t.failed:
            attrs.update({
                "gen_ai.response.finish_reasons": [t.finish_reason or ""],
                # The host's id for the answer the client got; the turn's where it gave none.
                "gen_ai.response.id": next((a.response_id for a in reversed(t.attempts)
                                            if a.outcome == "ok" and a.response_id), t.turn_id),
                "gen_ai.usage.input_tokens": t.prompt_tokens,
                "gen_ai.usage.output_tokens": t.completion_tokens,
                "switchboard.tool_calls": t.tool_calls,
            })
            if t.cached_tokens:
                attrs["gen_ai.usage.cache_read.input_tokens"] = t.cached_tokens
            if t.cache_write_tokens:
                attrs["gen_ai.usage.cache_creation.input_tokens"] = t.cache_write_tokens
            if t.reasoning_tokens:
                attrs["switchboard.usage.reasoning_tokens"] = t.reasoning_tokens
            if t.cost is not None:
                attrs["switchboard.cost"] = t.cost
            if t.output_messages is not None:
                attrs["gen_ai.output.messages"] = t.output_messages
        span = self.tracer.start_span(f"chat {t.model}", kind=SpanKind.CLIENT, attributes=attrs,
                                      start_time=_ns(t.started_at))
        parent = set_span_in_context(span)
        for i, attempt in enumerate(t.attempts):
            following = t.attempts[i + 1] if i + 1 < len(t.attempts) else None
            self._attempt_span(t, span, parent, attempt, following)
        for r in t.repairs:
            span.add_event("switchboard.repair", {"switchboard.repair.kind": r.kind,
                                                  "switchboard.repair.before": r.before,
                                                  "switchboard.repair.after": r.after}, _ns(r.at))
        metric_attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": t.model,
                        **{k: v for k, v in target.items() if k != "server.port"}}
        if t.error is not None:
            error_type = _end_reason(t.error) if t.status >= 500 or t.status == 0 else str(t.status)
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, _excerpt(t.error)))
            span.end(_ns(t.ended_at))
            self.duration.record(t.duration, {**metric_attrs, "error.type": error_type})
            return
        span.end(_ns(t.ended_at))
        self.duration.record(t.duration, metric_attrs)
        self.tokens.record(t.prompt_tokens, {**metric_attrs, "gen_ai.token.type": "input"})
        self.tokens.record(t.completion_tokens, {**metric_attrs, "gen_ai.token.type": "output"})
        if t.ttfb is not None:
            self.first_chunk.record(t.ttfb, metric_attrs)

    def _attempt_span(self, t: TurnJob, turn_span: Span, parent: Any, a: AttemptJob,
                      following: AttemptJob | None) -> None:
        # The target and its host; the provider and model are the turn span's (fewer
        # attributes: each costs ~5 µs to clean and encode).
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
        if a.prepared_in is not None:
            attrs["switchboard.prepared_in"] = a.prepared_in
        span = self.tracer.start_span(f"attempt {a.number} {a.target}", context=parent,
                                      kind=SpanKind.CLIENT, start_time=_ns(a.started_at),
                                      attributes=attrs)
        if a.stall is not None:
            stall_attrs: dict[str, Any] = {
                "switchboard.attempt": a.number, "switchboard.target": a.target,
                "switchboard.since_last": a.stall.since_last,
                "switchboard.keepalives": a.stall.keepalives}
            turn_span.add_event("switchboard.stall", stall_attrs, _ns(a.stall.at))
            span.add_event("switchboard.stall", stall_attrs, _ns(a.stall.at))
        elif error is not None and _end_reason(error) == "stall":
            turn_span.add_event("switchboard.stall", {"switchboard.attempt": a.number,
                                                      "switchboard.target": a.target},
                                _ns(a.ended_at or t.ended_at))
        if error is not None and outcome not in ("ok", "cancelled"):  # cancelled: lost a hedge race
            reason = _end_reason(error)
            span.set_attribute("switchboard.attempt.end_reason", reason)
            span.set_attribute("error.type", reason)
            span.set_status(Status(StatusCode.ERROR, _excerpt(error)))
        span.end(_ns(a.ended_at if a.ended_at is not None else t.ended_at))


def serve(plan: ExportPlan, upstreams: dict[str, tuple[str, str]],
          jobs: Queue[list[TurnJob] | None], counts: MutableSequence[int]) -> None:
    """The telemetry process's loop: build the spans of each batch of turns, export in
    batches, stop on `None` or when the proxy that started it is gone."""
    logging.basicConfig(level=logging.WARNING, format="switchboard telemetry: %(message)s")
    parent = os.getppid()
    # Telemetry yields the CPU to relaying: SCHED_IDLE (Linux) runs this process only on
    # CPU nothing else wants, nice 19 elsewhere; its queue absorbs bursts, and what it
    # cannot take is counted.
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    builder = SpanBuilder(plan, upstreams, counts)
    delay = plan.settings.schedule_delay
    due: float | None = None  # when the batch in hand must go, at the latest
    try:
        while True:
            wait = PARENT_CHECK if due is None else min(PARENT_CHECK, max(0.0, due - time.monotonic()))
            try:
                job = jobs.get(timeout=wait)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # the proxy is gone (killed): nobody left to report to
                if due is not None and time.monotonic() >= due:
                    builder.export()
                    due = None
                continue
            if job is None:
                return
            for turn in job:
                try:
                    builder.build(turn)
                except Exception:
                    log.exception("could not build the spans of turn %s", turn.turn_id)
            if due is None:
                due = time.monotonic() + delay
            if len(builder.batch) >= MAX_BATCH or time.monotonic() >= due:
                builder.export()
                due = None
    finally:
        builder.shutdown(timeout=2.0)


def _excerpt(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


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
