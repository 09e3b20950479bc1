"""The turn record: one per client request, built only by the core.

Like mitmproxy's Flow, a `Turn` is the single canonical account of one
transaction: what the client asked, every attempt made upstream, what was
streamed back, tool calls, stop reason, usage, timings, repairs and errors.
Every view (dashboard, control API, journal, logs) reads this record or the
events that describe its changes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from .capture import WireCapture

TurnState = Literal["live", "finished", "failed"]

#: The version of `Turn.to_dict`'s layout, carried in its `format` key (as mitmproxy's
#: flows carry FLOW_FORMAT_VERSION). Adding a field keeps it; renaming or removing
#: one, or changing what a field means, raises it.
TURN_FORMAT = 1


def new_turn_id() -> str:
    return "turn_" + os.urandom(8).hex()


@dataclass(slots=True)
class ToolCallRecord:
    """A tool call the model made, as delivered to the client."""

    id: str
    name: str
    arguments: str
    upstream_id: str | None = None


@dataclass(slots=True)
class RepairRecord:
    """One repair applied to the request or the stream: short before/after excerpts for
    people, and the id of the tool call it concerns (the client's id), if any."""

    kind: str
    before: str
    after: str
    at: float = field(default_factory=time.time)
    call_id: str | None = None


@dataclass(slots=True)
class Attempt:
    """One try at the turn against one upstream target."""

    number: int
    target: str
    reason: str = "initial"
    started_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    ended_at: float | None = None
    #: live | ok | failed | abandoned | interrupted | cancelled (lost a hedge race:
    #: another attempt of the turn produced output first; none of this one's reached the client)
    outcome: str = "live"
    error: str | None = None  # why it ended, when not "ok"
    chunks: int = 0           # model outputs received (text, reasoning, tool calls)
    keepalives: int = 0       # upstream keep-alives seen
    last_output_at: float | None = None
    response_id: str | None = None  # the host's id for its answer (`chatcmpl-…`), if given
    #: The watchdog deadlines this attempt ran under (seconds before the first
    #: output, and between outputs) and why: "learned from N turns" or "configured ...".
    first_output_deadline: float | None = None
    first_output_basis: str = ""
    idle_deadline: float | None = None
    idle_basis: str = ""
    request_bytes: int = 0    # the size of the request, which time to first output grows with
    max_gap: float | None = None  # the longest silence between two outputs (seconds)
    #: Seconds Switchboard took before handing the request to the HTTP client: routing,
    #: history repairs and encoding, from the body's last byte (the first attempt) or
    #: from the attempt's start (a retry, a reroute, a hedge). None: never sent.
    prepared_in: float | None = None


@dataclass(slots=True)
class Usage:
    """Tokens the host reported for the turn (zero when it reported none).

    `prompt_tokens` counts every input token, cached or not; `cached_tokens`
    (read from the host's prompt cache) and `cache_write_tokens` (written to
    it) are parts of it. `completion_tokens` counts every output token;
    `reasoning_tokens` is the part spent thinking.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(slots=True)
class Turn:
    """Everything Switchboard knows about one client request."""

    id: str
    session_id: str
    model: str
    route: str
    stream: bool
    request: dict[str, Any]
    client: str = ""
    started_at: float = field(default_factory=time.time)
    first_byte_at: float | None = None
    finished_at: float | None = None
    state: TurnState = "live"
    attempts: list[Attempt] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list, repr=False)
    reasoning_parts: list[str] = field(default_factory=list, repr=False)
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    repairs: list[RepairRecord] = field(default_factory=list)
    error: str | None = None
    status: int = 200
    rerun_of: str | None = None
    #: The session this turn's session was started from (opencode's subagents), if known.
    parent_session_id: str | None = None
    request_bytes: int = 0    # the client's request body, as received
    hedges: int = 0           # hedged attempts started (`[watchdog] hedge_after`)
    #: What the turn cost, from `[prices]` and the usage (None: no price, or no usage).
    cost: float | None = None
    #: Raw upstream bytes per attempt (`capture.py`), until the journal has written them.
    wire: list[WireCapture] = field(default_factory=list, repr=False)
    #: Characters of text and reasoning relayed to the client but not kept: past the
    #: limit `append_text` and `append_reasoning` were given (`[proxy] record_text_kb`).
    unrecorded_chars: int = 0
    kept_chars: int = field(default=0, repr=False)  # of text and reasoning together

    @property
    def text(self) -> str:
        """The assistant text relayed so far."""
        if len(self.text_parts) > 1:
            self.text_parts[:] = ["".join(self.text_parts)]
        return self.text_parts[0] if self.text_parts else ""

    @property
    def reasoning(self) -> str:
        if len(self.reasoning_parts) > 1:
            self.reasoning_parts[:] = ["".join(self.reasoning_parts)]
        return self.reasoning_parts[0] if self.reasoning_parts else ""

    def append_text(self, text: str, limit: int | None = None) -> None:
        """Keep `text`, or as much of it as fits under `limit` characters of text and
        reasoning together (a host that never stops talking must not fill memory)."""
        self.text_parts.append(self._room(text, limit))

    def append_reasoning(self, text: str, limit: int | None = None) -> None:
        self.reasoning_parts.append(self._room(text, limit))

    def _room(self, text: str, limit: int | None) -> str:
        kept = self.kept_chars + len(text)
        if limit is not None and kept > limit:
            room = max(0, limit - self.kept_chars)
            self.unrecorded_chars += len(text) - room
            text, kept = text[:room], self.kept_chars + room
        self.kept_chars = kept
        return text

    @property
    def duration(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.time()
        return end - self.started_at

    @property
    def ttfb(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.started_at

    @property
    def target(self) -> str | None:
        """Where the turn is (or was last) served: a hedge that lost does not count."""
        for attempt in reversed(self.attempts):
            if attempt.outcome != "cancelled":
                return attempt.target
        return self.attempts[-1].target if self.attempts else None

    def to_dict(self, *, include_request: bool = True) -> dict[str, Any]:
        """A JSON-ready snapshot. The request is shared, not copied: don't mutate it."""
        data: dict[str, Any] = {}
        for name in _field_names(Turn):
            if name in _NOT_IN_DICT or (name == "request" and not include_request):
                continue
            value = getattr(self, name)
            if name in _RECORD_LISTS:
                value = [_flat(item) for item in value]
            elif name == "usage":
                value = _flat(value)
            data[name] = value
        data["text"] = self.text
        data["reasoning"] = self.reasoning
        data["duration"] = self.duration
        data["ttfb"] = self.ttfb
        data["format"] = TURN_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        """The record `to_dict` made, from this build or another of the same format.

        Keys this build does not know (fields a newer core added) are ignored;
        records written before `format` existed are format 1. A newer format
        raises `ValueError`: its fields may mean something else.
        """
        version = data.get("format", 1)
        if not isinstance(version, int) or version > TURN_FORMAT:
            raise ValueError(f"turn record format {version!r} is newer than this build's "
                             f"({TURN_FORMAT}): upgrade Switchboard to read it")
        text, reasoning = data.get("text") or "", data.get("reasoning") or ""
        fields = {k: v for k, v in data.items()
                  if k in _field_names(cls) and k not in _NOT_IN_DICT | _RECORD_LISTS
                  and k != "usage"}
        fields["request"] = data.get("request") or {}
        turn = cls(**fields)
        turn.text_parts = [text] if text else []
        turn.reasoning_parts = [reasoning] if reasoning else []
        turn.kept_chars = len(text) + len(reasoning)
        turn.attempts = [_known(Attempt, a) for a in data.get("attempts") or []]
        turn.tool_calls = [_known(ToolCallRecord, c) for c in data.get("tool_calls") or []]
        turn.usage = _known(Usage, data.get("usage") or {})
        turn.repairs = [_known(RepairRecord, r) for r in data.get("repairs") or []]
        return turn


_NOT_IN_DICT = frozenset({"text_parts", "reasoning_parts", "wire", "kept_chars"})
_RECORD_LISTS = frozenset({"attempts", "tool_calls", "repairs"})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_R = TypeVar("_R")


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _known(cls: type[_R], data: dict[str, Any]) -> _R:
    """`cls(**data)` without the keys `cls` lacks (a newer core's fields)."""
    names = _field_names(cls)
    return cls(**{k: v for k, v in data.items() if k in names})


def _flat(item: Any) -> dict[str, Any]:
    """`dataclasses.asdict` for the record's flat dataclasses, without its deep copies.

    Their fields hold only scalars (and `None`), so a shallow read is a snapshot.
    """
    return {name: getattr(item, name) for name in _field_names(type(item))}
