"""What the proxy hands the telemetry process for each ended turn.

Plain frozen records of primitives, copied from the `Turn` record when the
turn ends, already redacted: the telemetry process never sees a secret it
could export, and nothing it holds points back into the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Indexes of the counters the telemetry process keeps in shared memory.
EXPORTED, FAILED, METRIC_FAILED = range(3)


@dataclass(frozen=True, slots=True)
class StallJob:
    at: float
    since_last: float
    keepalives: int


@dataclass(frozen=True, slots=True)
class AttemptJob:
    number: int
    target: str
    reason: str
    started_at: float
    first_byte_at: float | None
    ended_at: float | None
    outcome: str
    error: str | None          # redacted
    stall: StallJob | None     # the first heartbeat that found it stalled
    response_id: str | None = None
    prepared_in: float | None = None  # Switchboard's own seconds before it was sent


@dataclass(frozen=True, slots=True)
class RepairJob:
    kind: str
    before: str                # redacted excerpt
    after: str                 # redacted excerpt
    at: float


@dataclass(frozen=True, slots=True)
class TurnJob:
    turn_id: str
    model: str
    session_id: str
    route: str
    stream: bool
    rerun_of: str | None
    started_at: float
    ended_at: float
    duration: float
    ttfb: float | None
    attempts: tuple[AttemptJob, ...]
    repairs: tuple[RepairJob, ...]
    # finished turns
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0
    cached_tokens: int = 0        # of prompt_tokens, read from the host's prompt cache
    cache_write_tokens: int = 0   # of prompt_tokens, written to it
    reasoning_tokens: int = 0     # of completion_tokens, spent thinking
    cost: float | None = None     # from `[prices]`
    # failed turns
    error: str | None = None   # redacted
    status: int = 0
    # capture_content only, redacted JSON
    input_messages: str | None = None
    output_messages: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def spans(self) -> int:
        return 1 + len(self.attempts)
