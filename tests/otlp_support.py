"""A real OTLP/HTTP receiver on 127.0.0.1: aiohttp, decoding the protobuf with opentelemetry-proto.

`OtlpReceiver.hold()` makes it take requests and answer none until
`release()` (a collector that answers late); `stop()` closes it (a collector
that is down).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value_of(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind is None:
        return None
    return getattr(v, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: value_of(kv.value) for kv in kvs}


@dataclass
class SpanView:
    name: str
    kind: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    attrs: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    resource: dict[str, Any]


@dataclass
class OtlpReceiver:
    raw: list[bytes] = field(default_factory=list)
    spans: list[SpanView] = field(default_factory=list)
    metrics: dict[str, list[tuple[dict[str, Any], Any]]] = field(default_factory=dict)
    held: int = 0
    _runner: web.AppRunner | None = None
    _gate: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def __post_init__(self) -> None:
        self._gate.set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self._gate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def _wait_gate(self) -> None:
        if not self._gate.is_set():
            self.held += 1
            try:  # a collector that answers after 10 s (or when released)
                await asyncio.wait_for(self._gate.wait(), 10.0)
            except TimeoutError:
                pass

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self._wait_gate()
        self.raw.append(body)
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(SpanView(
                        s.name, s.kind, s.trace_id, s.span_id, s.parent_span_id,
                        attributes(s.attributes),
                        [(e.name, attributes(e.attributes)) for e in s.events],
                        s.status.code, resource))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await request.read()
        await self._wait_gate()
        self.raw.append(body)
        req = ExportMetricsServiceRequest.FromString(body)
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points = getattr(m, kind).data_points
                    for p in points:
                        self.metrics.setdefault(m.name, []).append((attributes(p.attributes), p))
        return web.Response(body=ExportMetricsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def turn_spans(self) -> list[SpanView]:
        return [s for s in self.spans if s.name.startswith("chat ")]

    def children(self, parent: SpanView) -> list[SpanView]:
        """The parent's child spans, each once: an exporter that timed out waiting for
        this receiver sends the batch again, and a collector keys spans by their id."""
        once = {s.span_id: s for s in reversed(self.spans) if s.parent_span_id == parent.span_id}
        return sorted(once.values(), key=lambda s: s.attrs.get("switchboard.attempt", 0))
