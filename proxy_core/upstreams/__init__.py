"""Upstream adapters: each turns one wire format into the internal stream."""

from __future__ import annotations

from ..config import Config, UpstreamSettings
from .base import Upstream, UpstreamRequest
from .bedrock import BedrockUpstream
from .openai import OpenAIUpstream
from .simulator import SimulatorUpstream

__all__ = ["Upstream", "UpstreamRequest", "OpenAIUpstream", "BedrockUpstream", "SimulatorUpstream",
           "build_upstreams"]


def build_upstream(settings: UpstreamSettings, models: tuple[str, ...] = ()) -> Upstream:
    if settings.kind == "openai":
        return OpenAIUpstream(settings)
    if settings.kind == "bedrock":
        return BedrockUpstream(settings)
    if settings.kind == "simulator":
        return SimulatorUpstream(settings, models or ("kimi-k2.5",))
    raise ValueError(f"unknown upstream kind {settings.kind!r}")


def build_upstreams(config: Config) -> dict[str, Upstream]:
    return {name: build_upstream(s, _models_served_by(config, name))
            for name, s in config.upstreams.items()}


def _models_served_by(config: Config, upstream: str) -> tuple[str, ...]:
    """Model names routes send to `upstream` (what a simulator must answer to)."""
    names: list[str] = []
    for route in config.routes:
        for target in route.targets:
            if target.upstream != upstream:
                continue
            name = target.model or (None if route.is_pattern else route.model)
            if name and name not in names:
                names.append(name)
    return tuple(names)
