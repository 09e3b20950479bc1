"""OpenTelemetry export of turns, off by default.

Turned on by `[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
This module only decides whether export is on; `proxy_core.telemetry.otel`
(imported only then) needs the `otel` extra: `pip install 'agent-switchboard[otel]'`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..config import TelemetrySettings
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..bus import EventBus
    from ..config import Config
    from ..secrets import Redactor
    from ..store import TurnStore


@dataclass(frozen=True, slots=True)
class ExportPlan:
    """Where and how to export, resolved from the config and the OTEL_* variables."""

    endpoint: str
    headers: dict[str, str] | None  # None: the exporter reads OTEL_EXPORTER_OTLP_HEADERS
    service_name: str
    settings: TelemetrySettings


class Exporter(Protocol):
    def status(self) -> dict[str, object]: ...
    async def aclose(self) -> None: ...


def plan(settings: TelemetrySettings, environ: dict[str, str] | None = None) -> ExportPlan | None:
    env = os.environ if environ is None else environ
    endpoint = settings.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if not endpoint:
        return None
    return ExportPlan(
        endpoint=endpoint.rstrip("/"),
        headers=dict(settings.headers) if settings.headers else None,
        service_name=settings.service_name or env.get("OTEL_SERVICE_NAME") or "switchboard",
        settings=settings)


def start(config: Config, bus: EventBus, store: TurnStore, redactor: Redactor) -> Exporter | None:
    """Attach an exporting observer to `bus` if telemetry is on; None if off."""
    export = plan(config.telemetry)
    if export is None:
        return None
    try:
        from .otel import OtelExporter
    except ImportError as exc:
        raise ConfigError(
            f"telemetry export to {export.endpoint} needs the otel extra: "
            f"pip install 'agent-switchboard[otel]' ({exc})") from None
    for value in (export.headers or {}).values():
        redactor.add(value)
    exporter = OtelExporter(export, config, store, redactor)
    bus.add_observer(exporter)
    return exporter
