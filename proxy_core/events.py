"""Typed events of the proxy core, published on the event bus.

Each event is a small frozen dataclass whose docstring says when it fires.
Events describe what happened to a turn; the turn record itself
(`proxy_core.record.Turn`) is the canonical state, and observers that need
more than the event carries look the turn up in the store.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any


def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class: every event names its turn and when it happened."""

    turn_id: str
    at: float = field(default_factory=_now)

    # No `name` property here: `ToolCallRelayed.name` (the tool) would shadow
    # it. The event's type is `type(event).__name__`, as in `to_dict`.

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["type"] = type(self).__name__
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnStarted(Event):
    """A client request was accepted and routed (or a turn is re-run by hand:
    `rerun_of` names the original); nothing sent upstream yet."""

    session_id: str
    model: str
    route: str
    stream: bool
    rerun_of: str | None = None
    parent_session_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptStarted(Event):
    """An attempt at the turn was sent to an upstream target."""

    attempt: int
    target: str
    reason: str = "initial"  # initial | retry | reroute | hedge | manual-retry | manual-reroute


@dataclass(frozen=True, slots=True, kw_only=True)
class FirstByte(Event):
    """The first model output (text, reasoning or a tool call) of an attempt arrived."""

    attempt: int
    latency: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk(Event):
    """A piece of text or reasoning was relayed to the client."""

    kind: str  # "text" | "reasoning"
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Event):
    """The upstream sent a keep-alive: the link is up, the model is silent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamHeartbeat(Event):
    """About once a second for every turn with an attempt in flight: its pulse.

    `chunks` counts model outputs (text, reasoning, tool calls) this attempt
    produced, `chunk_rate` those per second since the last heartbeat,
    `since_last` the seconds since the last output (or since the attempt
    started), `keepalives` the upstream keep-alives seen (signs of life, not
    progress). `deadline` is the watchdog deadline that applies to this silence
    (first output or idle, learned or configured: the attempt record says why);
    `stalled` is set once `since_last` passes half of it.
    """

    attempt: int
    target: str
    chunks: int
    chunk_rate: float
    since_last: float
    keepalives: int
    stalled: bool
    deadline: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpstreamHealthChanged(Event):
    """An upstream target started cooling down after repeated failures, or came back.

    `turn_id` is the turn whose failure tipped it (empty when it recovers).
    """

    target: str
    healthy: bool
    until: float | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallRelayed(Event):
    """A complete tool call was relayed to the client."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RepairApplied(Event):
    """A repair changed the request or the stream; before/after are short excerpts;
    `call_id` names the tool call it concerns, if any."""

    kind: str
    before: str
    after: str
    call_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptCancelled(Event):
    """A hedge race ended: `attempt` was cancelled because attempt `winner` of the
    same turn produced output first. Nothing of the cancelled one reached the client."""

    attempt: int
    target: str
    winner: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptFailed(Event):
    """An attempt ended in an error; `will_retry` says whether another follows."""

    attempt: int
    target: str
    error: str
    will_retry: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnFinished(Event):
    """The turn's response was delivered completely to the client."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    duration: float
    tool_calls: int
    cached_tokens: int = 0     # part of prompt_tokens read from the host's prompt cache
    reasoning_tokens: int = 0  # part of completion_tokens spent thinking
    cost: float | None = None  # from `[prices]`; None without a price or usage


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnFailed(Event):
    """The turn ended without a complete response; the client got an error."""

    error: str
    status: int
    duration: float


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (TurnStarted, AttemptStarted, FirstByte, Chunk, Heartbeat, StreamHeartbeat,
                ToolCallRelayed, RepairApplied, AttemptFailed, AttemptCancelled,
                UpstreamHealthChanged,
                TurnFinished, TurnFailed)
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from `Event.to_dict()` output (used by `attach`)."""
    data = dict(data)
    cls = EVENT_TYPES[data.pop("type")]
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
