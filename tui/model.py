"""The dashboard's model of what it shows: turns, sessions, heartbeats, filters.

Plain Python, no Textual: the app applies batches of core events to a
`DashboardModel` and redraws what changed, at a steady rate. The model holds
the core's `Turn` records (the source's, read-only) plus what only the view
needs: a `Pulse` per turn (chunks, seconds since the last one, a per-second
chunk count for the sparkline, keep-alives, stalled or not).

Memory stays bounded: at most `max_turns` turns are held; the oldest
finished ones are dropped first and come back from the journal on demand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from proxy_core.record import Turn

#: Seconds of chunk-rate history kept per turn for the sparkline.
SPARK_SECONDS = 24
#: A heartbeat reported by the core (`StreamHeartbeat`) is trusted this long.
REPORT_FRESH = 2.5
#: A stream counts as stalled once its silence passes this share of the watchdog
#: limit that applies (the core's `StreamHeartbeat.stalled` uses the same rule).
STALLED_SHARE = 0.5

FILTER_STATES = ("all", "live", "stalled", "repaired", "retried", "failed")


@dataclass(frozen=True, slots=True)
class StallRule:
    """Seconds of silence before a live stream is shown as stalled: before its
    first output, and between outputs. Used when the core sends no heartbeat."""

    first_token: float = 45.0 * STALLED_SHARE
    idle: float = 30.0 * STALLED_SHARE

    @classmethod
    def from_watchdog(cls, first_token_timeout: float, idle_timeout: float) -> StallRule:
        return cls(first_token_timeout * STALLED_SHARE, idle_timeout * STALLED_SHARE)

    def limit(self, pulse: Pulse) -> float:
        return self.idle if pulse.output_seen else self.first_token

    def describe(self) -> str:
        return f"{self.first_token:g}s before the first output, {self.idle:g}s between outputs"


DEFAULT_STALL_RULE = StallRule()


# -- what a source hands over ----------------------------------------------------

@dataclass(slots=True)
class ChunkTally:
    """Chunks of one turn since the last drain (chunks are counted, not queued)."""

    count: int = 0
    last_at: float = 0.0


@dataclass(slots=True)
class Batch:
    """Everything a source collected since the last drain."""

    events: list[Any] = field(default_factory=list)
    chunks: dict[str, ChunkTally] = field(default_factory=dict)
    #: Events were lost (a slow UI, a reconnect): rebuild from the source's records.
    resync: bool = False


@dataclass(frozen=True, slots=True)
class ForeignEvent:
    """An event of a type this build does not know (from a newer proxy over `attach`)."""

    type: str
    turn_id: str
    at: float
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return self.type


def event_name(event: Any) -> str:
    return event.type if isinstance(event, ForeignEvent) else type(event).__name__


def event_field(event: Any, name: str, default: Any = None) -> Any:
    if isinstance(event, ForeignEvent):
        return event.data.get(name, default)
    return getattr(event, name, default)


# -- the heartbeat of one turn -------------------------------------------------------

class Pulse:
    """How a turn's stream is doing: derived from Chunk/Heartbeat events, or as
    reported by the core's `StreamHeartbeat` when it sends one."""

    __slots__ = ("chunks", "keepalives", "attempt", "last_progress", "output_seen", "_seconds",
                 "_counts", "reported_at", "reported_since", "reported_stalled", "reported_rate",
                 "reported_deadline")

    def __init__(self, started_at: float) -> None:
        self.chunks = 0
        self.keepalives = 0
        self.attempt = 1
        self.last_progress = started_at
        self.output_seen = False
        self._seconds: deque[int] = deque(maxlen=SPARK_SECONDS)
        self._counts: deque[int] = deque(maxlen=SPARK_SECONDS)
        self.reported_at: float | None = None
        self.reported_since = 0.0
        self.reported_stalled = False
        self.reported_rate = 0.0
        #: The watchdog deadline the core said the current silence runs against.
        self.reported_deadline: float | None = None

    def progress(self, at: float, chunks: int = 0) -> None:
        self.output_seen = True
        if at > self.last_progress:
            self.last_progress = at
        if chunks:
            self.chunks += chunks
            second = int(at)
            if self._seconds and self._seconds[-1] == second:
                self._counts[-1] += chunks
            else:
                self._seconds.append(second)
                self._counts.append(chunks)

    def new_attempt(self, at: float, number: int) -> None:
        self.attempt = number
        self.last_progress = max(self.last_progress, at)
        self.output_seen = False
        self.reported_at = None

    def report(self, at: float, since_last: float, stalled: bool, chunk_rate: float,
               keepalives: int | None, deadline: float | None = None) -> None:
        self.reported_at, self.reported_since = at, since_last
        self.reported_deadline = deadline
        self.reported_stalled, self.reported_rate = stalled, chunk_rate
        if keepalives is not None:
            self.keepalives = max(self.keepalives, keepalives)

    def _fresh(self, now: float) -> bool:
        return self.reported_at is not None and now - self.reported_at < REPORT_FRESH

    def since_last(self, now: float) -> float:
        if self._fresh(now):
            assert self.reported_at is not None
            return max(0.0, self.reported_since + (now - self.reported_at))
        return max(0.0, now - self.last_progress)

    def stalled(self, now: float, rule: StallRule) -> bool:
        if self._fresh(now):
            return self.reported_stalled
        return self.since_last(now) >= rule.limit(self)

    def series(self, now: float, seconds: int = SPARK_SECONDS) -> list[int]:
        """Chunks per second over the last `seconds` seconds, oldest first."""
        end = int(now)
        out = [0] * seconds
        for second, count in zip(self._seconds, self._counts, strict=False):
            index = seconds - 1 - (end - second)
            if 0 <= index < seconds:
                out[index] += count
        return out

    def rate(self, now: float) -> float:
        """Chunks per second over the last three whole seconds."""
        if self._fresh(now):
            return self.reported_rate
        return sum(self.series(now, 4)[:3]) / 3.0


SPARK_BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float]) -> str:
    values = list(values)
    top = max(values, default=0)
    if top <= 0:
        return SPARK_BLOCKS[0] * len(values) if values else ""
    steps = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[0 if v <= 0 else max(1, round(v / top * steps))] for v in values)


# -- the model -----------------------------------------------------------------------

@dataclass(eq=False, slots=True)
class TurnEntry:
    turn: Turn
    pulse: Pulse
    #: The record carries its request (the conversation); false for turns built
    #: from events or listed without requests, until loaded.
    full: bool = False
    #: What this turn adds to its session's counts now (state, repairs).
    counted: tuple[str, int] = ("", 0)


@dataclass(slots=True)
class SessionInfo:
    id: str
    model: str = ""
    turns: int = 0
    live: int = 0
    failed: int = 0
    repairs: int = 0
    last_at: float = 0.0
    #: The session this one was started from (an opencode subagent's parent).
    parent: str | None = None


@dataclass(frozen=True, slots=True)
class TurnFilter:
    state: str = "all"
    session: str | None = None
    model: str | None = None
    search: str = ""

    def describe(self) -> str:
        parts = []
        if self.state != "all":
            parts.append(self.state)
        if self.session:
            parts.append(f"session {self.session}")
        if self.model:
            parts.append(f"model {self.model}")
        if self.search:
            parts.append(f"/{self.search}")
        return ", ".join(parts)

    @property
    def active(self) -> bool:
        return bool(self.describe())

    def matches(self, entry: TurnEntry, now: float, stall_after: StallRule) -> bool:
        turn = entry.turn
        if self.session and turn.session_id != self.session:
            return False
        if self.model and turn.model != self.model:
            return False
        state = self.state
        if state == "live" and turn.state != "live":
            return False
        if state == "stalled" and not (turn.state == "live" and entry.pulse.stalled(now, stall_after)):
            return False
        if state == "repaired" and not turn.repairs:
            return False
        if state == "retried" and len(turn.attempts) < 2 and turn.rerun_of is None:
            return False
        if state == "failed" and turn.state != "failed":
            return False
        if self.search and not _search_hit(turn, self.search.lower()):
            return False
        return True


def _search_hit(turn: Turn, needle: str) -> bool:
    fields = [turn.id, turn.session_id, turn.model, turn.route, turn.finish_reason or "",
              turn.error or "", turn.target or "", turn.state]
    fields += [f"{c.name} {c.arguments}" for c in turn.tool_calls]
    fields += [r.kind for r in turn.repairs]
    if any(needle in f.lower() for f in fields):
        return True
    return needle in turn.text.lower()


Lookup = Callable[[str], Turn | None]


class DashboardModel:
    """Turns by id in start order, sessions, and what changed since the last redraw."""

    def __init__(self, max_turns: int = 500, stall_after: StallRule = DEFAULT_STALL_RULE) -> None:
        self.max_turns = max_turns
        self.stall_after = stall_after
        self.entries: dict[str, TurnEntry] = {}
        self.sessions: dict[str, SessionInfo] = {}
        self.upstream_health: dict[str, tuple[bool, float | None, str]] = {}
        #: Turn ids whose row must be redrawn.
        self.changed: set[str] = set()
        #: Rows were added or removed.
        self.structure_changed = False
        self.sessions_changed = False

    # -- reading ----------------------------------------------------------------

    def get(self, turn_id: str) -> TurnEntry | None:
        return self.entries.get(turn_id)

    def __len__(self) -> int:
        return len(self.entries)

    def live(self) -> list[TurnEntry]:
        return [e for e in self.entries.values() if e.turn.state == "live"]

    def visible(self, flt: TurnFilter, now: float) -> list[TurnEntry]:
        if not flt.active:
            return list(self.entries.values())
        return [e for e in self.entries.values() if flt.matches(e, now, self.stall_after)]

    def nearest(self, turn_id: str, shown: list[str]) -> str | None:
        """Of `shown` (ids in start order), the turn closest to `turn_id` in start order
        (the later one on a tie); None if nothing is shown. A turn no longer held
        counts as newer than all."""
        if not shown:
            return None
        order = {tid: i for i, tid in enumerate(self.entries)}
        at = order.get(turn_id, len(order))
        return min(reversed(shown), key=lambda tid: abs(order.get(tid, len(order)) - at))

    def models(self) -> list[str]:
        return sorted({e.turn.model for e in self.entries.values()})

    def next_in_session(self, turn: Turn) -> Turn | None:
        """The session's next turn (its request carries this turn's tool results)."""
        found = False
        for entry in self.entries.values():
            if found and entry.turn.session_id == turn.session_id:
                return entry.turn
            if entry.turn is turn:
                found = True
        return None

    # -- changing ---------------------------------------------------------------

    def add(self, turn: Turn, *, full: bool = False, count_session: bool = True,
            evict: bool = True) -> TurnEntry:
        entry = self.entries.get(turn.id)
        if entry is not None:
            entry.turn = turn
            entry.full = entry.full or full
            self._recount(entry)
            self.changed.add(turn.id)
            return entry
        pulse = Pulse(turn.attempts[-1].started_at if turn.attempts else turn.started_at)
        if turn.attempts:
            last = turn.attempts[-1]
            pulse.attempt = last.number
            if last.first_byte_at:
                pulse.output_seen = True
                pulse.last_progress = getattr(last, "last_output_at", None) or last.first_byte_at
        entry = TurnEntry(turn, pulse, full)
        if self.entries and turn.started_at < next(reversed(self.entries.values())).turn.started_at:
            self.entries[turn.id] = entry  # an older turn: keep start order
            self.entries = dict(sorted(self.entries.items(), key=lambda kv: kv[1].turn.started_at))
        else:
            self.entries[turn.id] = entry
        if count_session:
            self._count_session(entry)
        else:
            entry.counted = (turn.state, len(turn.repairs))
        self.structure_changed = True
        self.changed.add(turn.id)
        if evict:
            self._evict()
        return entry

    def add_older(self, turns: Iterable[Turn]) -> int:
        """Turns loaded from the journal on demand; returns how many were new.

        They may take the model past `max_turns` until new turns arrive: the
        oldest finished turns are dropped first again. They are not counted
        in the session list (which counts turns seen live).
        """
        added = 0
        for turn in turns:
            if turn.id not in self.entries:
                self.add(turn, count_session=False, evict=False)
                added += 1
        return added

    def _count_session(self, entry: TurnEntry) -> None:
        turn = entry.turn
        info = self.sessions.get(turn.session_id)
        if info is None:
            info = self.sessions[turn.session_id] = SessionInfo(turn.session_id)
            if len(self.sessions) > self.max_turns:
                oldest = min(self.sessions.values(), key=lambda s: s.last_at)
                del self.sessions[oldest.id]
        info.turns += 1
        info.model = turn.model
        info.parent = getattr(turn, "parent_session_id", None) or info.parent
        info.last_at = max(info.last_at, turn.started_at)
        entry.counted = ("", 0)
        self._recount(entry)

    def _recount(self, entry: TurnEntry) -> None:
        """Bring the session's live/failed/repair counts in line with the turn's state now."""
        turn = entry.turn
        now = (turn.state, len(turn.repairs))
        if now == entry.counted:
            return
        info = self.sessions.get(turn.session_id)
        if info is None:
            return
        (state, repairs), entry.counted = entry.counted, now
        info.live += (now[0] == "live") - (state == "live")
        info.failed += (now[0] == "failed") - (state == "failed")
        info.repairs += now[1] - repairs
        self.sessions_changed = True

    def _evict(self) -> None:
        excess = len(self.entries) - self.max_turns
        if excess <= 0:
            return
        for turn_id in [i for i, e in self.entries.items() if e.turn.state != "live"][:excess]:
            del self.entries[turn_id]
            self.changed.discard(turn_id)
        self.structure_changed = True

    def apply(self, batch: Batch, lookup: Lookup, now: float) -> None:
        for event in batch.events:
            self._apply(event, lookup)
        for turn_id, tally in batch.chunks.items():
            entry = self.entries.get(turn_id) or self._adopt(turn_id, lookup)
            if entry is not None:
                entry.pulse.progress(tally.last_at, tally.count)
                self.changed.add(turn_id)

    def _adopt(self, turn_id: str, lookup: Lookup) -> TurnEntry | None:
        turn = lookup(turn_id)
        return None if turn is None else self.add(turn, full=bool(turn.request))

    def _apply(self, event: Any, lookup: Lookup) -> None:
        name = event_name(event)
        if name == "UpstreamHealthChanged":
            target = event_field(event, "target") or event_field(event, "upstream_target", "")
            self.upstream_health[str(target)] = (
                bool(event_field(event, "healthy", True)), event_field(event, "until"),
                str(event_field(event, "reason", "") or ""))
            self.sessions_changed = True
            return
        turn_id = event.turn_id
        if name == "TurnStarted":
            turn = lookup(turn_id)
            if turn is None:
                turn = Turn(id=turn_id, session_id=event_field(event, "session_id", ""),
                            model=event_field(event, "model", ""),
                            route=event_field(event, "route", ""),
                            stream=bool(event_field(event, "stream", True)), request={},
                            started_at=event.at,
                            parent_session_id=event_field(event, "parent_session_id"))
            self.add(turn, full=bool(turn.request))
            return
        entry = self.entries.get(turn_id) or self._adopt(turn_id, lookup)
        if entry is None:
            return
        pulse = entry.pulse
        if name == "AttemptStarted":
            pulse.new_attempt(event.at, int(event_field(event, "attempt", 1)))
        elif name in ("FirstByte", "ToolCallRelayed"):
            pulse.progress(event.at)
        elif name == "Chunk":  # a source that passes chunks through as events
            pulse.progress(event.at, 1)
        elif name == "Heartbeat":
            pulse.keepalives += 1
        elif name == "StreamHeartbeat":
            keepalives = event_field(event, "keepalives")
            deadline = event_field(event, "deadline")
            pulse.report(event.at, float(event_field(event, "since_last", 0.0) or 0.0),
                         bool(event_field(event, "stalled", False)),
                         float(event_field(event, "chunk_rate", 0.0) or 0.0),
                         int(keepalives) if keepalives is not None else None,
                         float(deadline) if deadline is not None else None)
        self._recount(entry)
        self.changed.add(turn_id)

    def resync(self, turns: Iterable[Turn]) -> None:
        """Rebuild from the source's records after events were lost."""
        for turn in turns:
            entry = self.entries.get(turn.id)
            if entry is not None:
                if entry.turn is not turn:
                    entry.turn, entry.full = turn, bool(turn.request)
                self.changed.add(turn.id)
            else:
                self.add(turn, full=bool(turn.request))
        self.sessions = {}
        for entry in self.entries.values():
            self._count_session(entry)

    def tick(self) -> None:
        """Time passed: live rows (heartbeat, duration) need a redraw."""
        for turn_id, entry in self.entries.items():
            if entry.turn.state == "live":
                self.changed.add(turn_id)

    def take_changes(self) -> tuple[set[str], bool, bool]:
        changed, structure, sessions = self.changed, self.structure_changed, self.sessions_changed
        self.changed, self.structure_changed, self.sessions_changed = set(), False, False
        return changed, structure, sessions

