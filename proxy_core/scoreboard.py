"""The host scoreboard: how each upstream target (`upstream:model`) is doing.

One fold, two readers: the control API (`GET /switchboard/api/scoreboard`)
and the dashboard's scoreboard panel both keep a `Scoreboard` and feed it
the same things: finished `Turn` records (from the journal at start, then
as turns end) and a few live events, so "a host that just went bad" shows
at the first stalled heartbeat or failed attempt, not when its turn ends.

What is counted where:
- per attempt, on the attempt's target: stalls (the watchdog gave up on a
  silent stream), errors (any other failed attempt), retries (an attempt
  made again on the same target), reroutes (a turn moved *away* from it),
  time to first token, and Switchboard's own time before the request left
  (`Attempt.prepared_in`: routing, history repairs, encoding);
- per turn, on the target that answered last: turns, turns with tool
  calls, leaked calls repaired, history repairs, tokens in and out.

A target's `status` says at a glance what the numbers would: `cooling`
(the health check is skipping it), `stalling` (a stream on it is silent
now), `failing` (it stalled or failed within `BAD_FOR` seconds and has not
answered since), `ok`, or `idle` (nothing counted yet).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .record import Turn

#: Repair kinds that are a leaked tool call turned back into a real call.
LEAK_KINDS = frozenset({"leaked_tool_call"})
#: Repair kinds made to the conversation history before it went upstream.
HISTORY_KINDS = frozenset({"orphan_tool_result", "restored_tool_call", "missing_tool_result",
                           "reasoning_content", "empty_content", "duplicate_tool_call_id"})
#: How the pipeline words a watchdog timeout (`Pipeline._stalled`).
STALL_ERRORS = ("no first token from", "no output from")
#: Time-to-first-token samples kept per target (for p50/p95).
TTFT_SAMPLES = 512
#: A target stays `failing` this long after a stall or error, unless it answers since.
BAD_FOR = 60.0
#: Turn ids remembered so a turn is never counted twice (journal seed, then live).
COUNTED_IDS = 50_000
#: Targets kept (a reroute by hand may name any model): the longest quiet one goes first.
MAX_TARGETS = 256

STATUSES = ("cooling", "stalling", "failing", "ok", "idle")
#: Sort keys for `Scoreboard.rows` (besides the numeric fields of `TargetStats`).
SORT_KEYS = ("status", "target", "turns", "tool_turns", "leaks", "history_repairs", "stalls",
             "retries", "reroutes", "hedges", "errors", "ttft_p50", "ttft_p95", "prep_p50",
             "tokens_in", "tokens_out")

Lookup = Callable[[str], Turn | None]


def is_stall(error: str | None) -> bool:
    return bool(error) and any(str(error).startswith(m) for m in STALL_ERRORS)


def percentile(samples: Iterable[float], share: float) -> float | None:
    """The nearest-rank percentile, or None without samples."""
    ordered = sorted(samples)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1))
    return ordered[rank]


@dataclass(slots=True)
class TargetStats:
    """The counts for one target."""

    target: str
    turns: int = 0
    tool_turns: int = 0
    leaks: int = 0
    history_repairs: int = 0
    stalls: int = 0
    retries: int = 0
    reroutes: int = 0
    hedges: int = 0           # hedged attempts sent to it (`[watchdog] hedge_after`)
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    ttft: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))
    #: Switchboard's own seconds before each attempt's request left (as many samples).
    prep: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))
    cooling_until: float | None = None
    #: Turns whose stream on this target is silent right now (from heartbeats).
    stalling: set[str] = field(default_factory=set)
    last_bad_at: float = 0.0
    last_ok_at: float = 0.0

    def status(self, now: float) -> str:
        if self.cooling_until is not None and now < self.cooling_until:
            return "cooling"
        if self.stalling:
            return "stalling"
        if self.last_bad_at > self.last_ok_at and now - self.last_bad_at < BAD_FOR:
            return "failing"
        if not (self.turns or self.errors or self.stalls or self.last_ok_at):
            return "idle"
        return "ok"

    @property
    def ttft_p50(self) -> float | None:
        return percentile(self.ttft, 0.5)

    @property
    def ttft_p95(self) -> float | None:
        return percentile(self.ttft, 0.95)

    @property
    def prep_p50(self) -> float | None:
        return percentile(self.prep, 0.5)

    @property
    def prep_p95(self) -> float | None:
        return percentile(self.prep, 0.95)

    def to_dict(self, now: float) -> dict[str, Any]:
        cooling = (max(0.0, self.cooling_until - now)
                   if self.cooling_until is not None and now < self.cooling_until else 0.0)
        return {"target": self.target, "status": self.status(now), "turns": self.turns,
                "tool_turns": self.tool_turns, "leaks": self.leaks,
                "history_repairs": self.history_repairs, "stalls": self.stalls,
                "retries": self.retries, "reroutes": self.reroutes, "hedges": self.hedges,
                "errors": self.errors,
                "ttft_p50": self.ttft_p50, "ttft_p95": self.ttft_p95,
                "prep_p50": self.prep_p50, "prep_p95": self.prep_p95,
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "cooling_for": cooling, "stalling_now": len(self.stalling)}


class Scoreboard:
    """Per-target stats folded from turn records and live events."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.targets: dict[str, TargetStats] = {}
        self._counted: OrderedDict[str, None] = OrderedDict()
        #: Bumped on every change, so a view redraws only when it moved.
        self.version = 0

    def stats(self, target: str) -> TargetStats:
        stats = self.targets.get(target)
        if stats is None:
            if len(self.targets) >= MAX_TARGETS:
                quiet = min(self.targets.values(), key=lambda s: max(s.last_ok_at, s.last_bad_at))
                del self.targets[quiet.target]
            stats = self.targets[target] = TargetStats(target)
        return stats

    # -- turn records ------------------------------------------------------------------

    def count(self, turn: Turn) -> bool:
        """Add an ended turn's numbers (once per turn id); False if live or already counted."""
        if turn.state == "live" or turn.id in self._counted:
            return False
        self._counted[turn.id] = None
        if len(self._counted) > COUNTED_IDS:
            self._counted.popitem(last=False)
        previous: str | None = None
        for attempt in turn.attempts:
            stats = self.stats(attempt.target)
            stats.stalling.discard(turn.id)
            if attempt.reason in ("retry", "manual-retry"):
                stats.retries += 1
            elif attempt.reason in ("reroute", "manual-reroute") and previous is not None:
                self.stats(previous).reroutes += 1
            elif attempt.reason == "hedge":
                stats.hedges += 1
            if attempt.first_byte_at is not None:
                stats.ttft.append(max(0.0, attempt.first_byte_at - attempt.started_at))
            if attempt.prepared_in is not None:
                stats.prep.append(attempt.prepared_in)
            ended = attempt.ended_at or turn.finished_at or attempt.started_at
            if attempt.outcome == "failed":
                if is_stall(attempt.error):
                    stats.stalls += 1
                else:
                    stats.errors += 1
                stats.last_bad_at = max(stats.last_bad_at, ended)
            elif attempt.outcome == "ok":
                stats.last_ok_at = max(stats.last_ok_at, ended)
            previous = attempt.target
        if turn.target is not None:
            stats = self.stats(turn.target)
            stats.turns += 1
            stats.tool_turns += bool(turn.tool_calls)
            stats.leaks += sum(1 for r in turn.repairs if r.kind in LEAK_KINDS)
            stats.history_repairs += sum(1 for r in turn.repairs if r.kind in HISTORY_KINDS)
            stats.tokens_in += turn.usage.prompt_tokens
            stats.tokens_out += turn.usage.completion_tokens
        self.version += 1
        return True

    def count_all(self, turns: Iterable[Turn]) -> None:
        for turn in turns:
            self.count(turn)

    def count_records(self, records: Iterable[dict[str, Any]]) -> None:
        """`Turn.to_dict` records (the journal's); a newer format's are skipped."""
        for data in records:
            try:
                turn = Turn.from_dict(data)
            except (ValueError, TypeError):
                continue
            self.count(turn)

    # -- live events ---------------------------------------------------------------------

    def observe(self, event: Any, lookup: Lookup) -> None:
        """Apply one core event (others are ignored); `lookup` finds an ended turn's record."""
        name = type(event).__name__
        if name == "StreamHeartbeat":
            stats = self.stats(event.target)
            if event.stalled and event.turn_id not in stats.stalling:
                stats.stalling.add(event.turn_id)
                stats.last_bad_at = max(stats.last_bad_at, event.at)
                self.version += 1
            elif not event.stalled and event.turn_id in stats.stalling:
                stats.stalling.discard(event.turn_id)
                self.version += 1
        elif name == "AttemptFailed":
            stats = self.stats(event.target)
            stats.stalling.discard(event.turn_id)
            stats.last_bad_at = max(stats.last_bad_at, event.at)
            self.version += 1
        elif name == "UpstreamHealthChanged":
            self.stats(event.target).cooling_until = None if event.healthy else event.until
            self.version += 1
        elif name in ("TurnFinished", "TurnFailed"):
            turn = lookup(event.turn_id)
            if turn is not None:
                self.count(turn)
            for stats in self.targets.values():
                stats.stalling.discard(event.turn_id)

    # -- reading ---------------------------------------------------------------------------

    def rows(self, sort: str = "status", *, now: float | None = None) -> list[TargetStats]:
        """Targets, worst first by `status`, or by a column (largest first; target A-Z)."""
        now = self.clock() if now is None else now
        items = list(self.targets.values())
        if sort == "target":
            return sorted(items, key=lambda s: s.target)
        if sort == "status":
            return sorted(items, key=lambda s: (STATUSES.index(s.status(now)), s.target))

        def number(stats: TargetStats) -> float:
            value = getattr(stats, sort, 0)
            return -1.0 if value is None else float(value)

        return sorted(items, key=lambda s: (-number(s), s.target))

    def to_dict(self, sort: str = "status") -> dict[str, Any]:
        now = self.clock()
        return {"targets": [s.to_dict(now) for s in self.rows(sort, now=now)], "at": now}


class ScoreboardObserver:
    """Feeds a proxy's `Scoreboard` from its bus (no `Chunk` handler: it costs the relay nothing)."""

    def __init__(self, board: Scoreboard, lookup: Lookup) -> None:
        self.board = board
        self.lookup = lookup

    def _observe(self, event: Any) -> None:
        self.board.observe(event, self.lookup)

    on_StreamHeartbeat = on_AttemptFailed = on_UpstreamHealthChanged = _observe
    on_TurnFinished = on_TurnFailed = _observe
