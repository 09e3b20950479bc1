"""OpenTelemetry export of turns, off by default.

Turned on by `[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
This module only decides whether export is on; the telemetry process
(`proxy_core.telemetry.otel`, started only then) needs the `otel` extra: `pip install 'agent-switchboard[otel]'`.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .export_plan import Exporter, ExportPlan, plan

__all__ = ["ExportPlan", "Exporter", "plan", "start"]

#: What the telemetry process imports (looked for, not imported, by the proxy).
SDK_MODULES = ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")

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
    missing = [name for name in SDK_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"telemetry export to {export.endpoint} needs the otel extra: "
            f"pip install 'agent-switchboard[otel]' (missing {', '.join(missing)})")
    if multiprocessing.current_process().daemon:
        raise ConfigError(
            "telemetry export runs in a process of its own, which a daemonic "
            "multiprocessing worker may not start: run the proxy in a non-daemonic process")
    from .observer import OtelExporter
    for value in (export.headers or {}).values():
        redactor.add(value)
    exporter = OtelExporter(export, config, store, redactor)
    bus.add_observer(exporter)
    return exporter
