"""Whether and where to export: the config and the OTEL_* variables resolved.

Kept apart from the package's `start` so that `otel` can import it without
importing the package that imports `otel`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from ..config import TelemetrySettings


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
