"""OpenTelemetry export of turns, off by default.

Turned on by `[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
This module only decides whether export is on; `proxy_core.telemetry.otel`
(imported only then) needs the `otel` extra: `pip install 'agent-switchboard[otel]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .export_plan import Exporter, ExportPlan, plan

__all__ = ["ExportPlan", "Exporter", "plan", "start"]

if TYPE_CHECKING:
    from ..bus import EventBus
    from ..config import Config
    from ..secrets import Redactor
    from ..store import TurnStore


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
