"""Running one turn: route, attempt, watch, retry, relay, record.

`Pipeline.open_turn` validates routing and creates the turn record;
`Pipeline.run` is an async generator of the parts the client should
receive. Until the first model output is yielded (the commit boundary) a
stalled or failed attempt is retried on the same target, then rerouted down
the route's targets, up to the route's `max_attempts` (meanwhile the server
keeps a streaming client alive with SSE comments, see `server.KeepAlive`). After
the boundary a failure ends the turn with `TurnAborted`, which the server
turns into an in-stream error.

Each attempt runs under watchdog deadlines learned from its target's recent
turns (`learned.py`), recorded on the attempt with why. With `[watchdog]
hedge_after`, an attempt with no output by then races a second one (`_race`):
each runs to its first output in a task of its own, the first there wins and
the other is cancelled; only the winner's parts are recorded and relayed.

`retry` and `reroute` act on a turn by hand: a live turn that has sent
nothing yet restarts on its own client stream; any other turn is re-run in
the background as a new turn (`rerun_of` names the original) and recorded.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import operator
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .bus import EventBus
from .capture import WireCapture
from .config import Config, RouteSettings, Target
from .contents import encode
from .errors import ClientRequestError, EmptyReply, RunawayAnswer, UpstreamError, UpstreamTimeout
from .events import (
    AttemptCancelled, AttemptFailed, AttemptStarted, Chunk, FirstByte, Heartbeat, RepairApplied,
    ToolCallRelayed, TurnFailed, TurnFinished, TurnStarted, UpstreamHealthChanged,
)
from .deadline import Deadline
from .health import TargetHealth
from .learned import DeadlinePlan, LearnedDeadlines, Limits
from .openai_wire import ChatRequest
from .record import Attempt, RepairRecord, ToolCallRecord, Turn, new_turn_id
from .repairs.history import HistoryRepairs, Note
from .repairs.memory import RememberedCall, ToolCallMemory
from .repairs.profiles import plan_for
from .repairs.stream_repair import StreamRepairer
from .repairs.tool_names import ToolCatalog
from .sessions import parent_session_id_for, session_id_for
from .store import TurnStore
from .stream import (
    PROGRESS_PARTS, FinishPart, KeepAlivePart, ReasoningPart, StreamPart, TextPart, ToolCallPart,
    UsagePart,
)
from .upstreams import Upstream, UpstreamRequest

log = logging.getLogger(__name__)


class TurnAborted(Exception):
    """The turn failed. `committed` says whether the client already got output."""

    def __init__(self, message: str, *, status: int, code: str, committed: bool) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.committed = committed


@dataclass(frozen=True, slots=True)
class ManualAction:
    kind: str                     # "retry" | "reroute"
    target: Target | None = None  # reroute: where to; retry: None (same target)
    rerun_id: str | None = None   # set when the work moved to a new turn


class ManualInterrupt(Exception):
    """Raised inside an attempt when a person retried or rerouted the turn."""

    def __init__(self, action: ManualAction) -> None:
        super().__init__(action.kind)
        self.action = action


class LiveTurn:
    """The handle on a turn in flight: what manual actions and heartbeats need."""

    __slots__ = ("turn", "route", "committed", "action", "timeout", "attempt", "size",
                 "failures", "timeouts", "raw", "received")

    def __init__(self, turn: Turn, route: RouteSettings, size: int,
                 raw: bytes | None = None, received: float | None = None) -> None:
        self.turn = turn
        self.route = route
        self.committed = False
        self.action: ManualAction | None = None
        self.timeout: Deadline | None = None  # the attempt's watchdog deadline, while waiting
        #: The attempt whose output the client gets (during a hedge race: the first one).
        self.attempt: Attempt | None = None
        self.size = size          # the request's size in bytes, for learned deadlines
        self.failures = 0         # automatic attempts that failed (against max_attempts)
        self.timeouts: dict[str, int] = {}  # target -> attempts the watchdog ended
        self.raw = raw            # the request as the client sent it (`ChatRequest.raw`)
        self.received = received  # `time.perf_counter()` at the body's last byte, if known

    def interrupt(self, action: ManualAction) -> None:
        """Stop the current attempt at its next wait (or now, if it is waiting)."""
        self.action = action
        if self.timeout is not None and not self.timeout.expired():
            self.timeout.expire()


#: Finds a turn that is no longer in memory (the journal), for re-runs.
TurnLookup = Callable[[str], Awaitable[Turn | None]]
#: The writing of a turn's latest record, if one is under way (`Journal.recorded`):
#: waited for before the turn's first output and its end reach the client.
Recorded = Callable[[str], Awaitable[None] | None]


class Pipeline:
    def __init__(self, config: Config, upstreams: Mapping[str, Upstream], bus: EventBus,
                 store: TurnStore, memory: ToolCallMemory | None = None,
                 lookup: TurnLookup | None = None, recorded: Recorded | None = None, *,
                 capture_wire: bool = False) -> None:
        self.config = config
        #: Keep each attempt's raw upstream bytes on the turn until the journal has them.
        self.capture_wire = capture_wire
        #: Characters of text and reasoning a turn keeps; past them it only relays.
        self._text_limit = config.proxy.record_text_kb * 1024
        self.upstreams = upstreams
        self.bus = bus
        self.store = store
        self.memory = memory or ToolCallMemory()
        #: History repairs, each turn's from where the last turn's left off.
        self.history = HistoryRepairs(self.memory)
        self.lookup = lookup
        self.recorded = recorded
        self.health = TargetHealth(config.watchdog.cooldown, config.watchdog.cooldown_after,
                                   self._health_changed)
        #: Each target's healthy timings, for learned deadlines (`[watchdog] adaptive`).
        self.learned = LearnedDeadlines()
        #: Hedged attempts sent to each target since start, and those that won their race.
        self.hedges: Counter[str] = Counter()
        self.hedge_wins: Counter[str] = Counter()
        self.live: dict[str, LiveTurn] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Cancel background re-runs (at shutdown)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- opening -----------------------------------------------------------------

    def open_turn(self, request: ChatRequest, headers: Mapping[str, str],
                  size: int = 0) -> tuple[Turn, RouteSettings]:
        """Route the request and create (and store) its turn.

        Grouping it into a session and announcing it wait until the upstream
        request is out (`EventBus.defer`): the host starts thinking a little
        sooner. Both happen before any later event. Storing does not wait:
        a store that makes room while another turn is ending could drop that
        turn between its end and the journal hearing of it.
        """
        route = self._route(request.model)
        turn = self._new_turn(request.body, "", request.model, route, request.stream,
                              headers.get("user-agent", "")[:200])
        turn.request_bytes = size
        self.store.add(turn)

        def announce() -> None:
            turn.session_id = session_id_for(headers, request.messages)
            turn.parent_session_id = parent_session_id_for(headers)
            self._announce(turn)
        self.bus.defer(announce)
        return turn, route

    def _route(self, model: str) -> RouteSettings:
        route = self.config.route_for(model)
        if route is None:
            raise ClientRequestError(
                f"model {model!r} matches no route; known: {', '.join(self.model_ids())}",
                status=404, code="model_not_found")
        return route

    def _new_turn(self, body: dict[str, Any], session_id: str, model: str, route: RouteSettings,
                  stream: bool, client: str, rerun_of: str | None = None) -> Turn:
        return Turn(id=new_turn_id(), session_id=session_id, model=model, route=route.model,
                    stream=stream, request=body, client=client, rerun_of=rerun_of)

    def _announce(self, turn: Turn) -> None:
        self.bus.publish(TurnStarted(turn_id=turn.id, session_id=turn.session_id,
                                     model=turn.model, route=turn.route, stream=turn.stream,
                                     rerun_of=turn.rerun_of,
                                     parent_session_id=turn.parent_session_id))

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for route in self.config.routes:
            names = [route.model] if not route.is_pattern else [
                t.model for t in route.targets if t.model]
            ids.extend(n for n in names if n not in ids)
        return ids

    # -- running -----------------------------------------------------------------

    def _plan(self, route: RouteSettings, first: Target | None) -> Iterator[Target]:
        """Targets for successive automatic attempts, healthy ones first.

        With several targets each is tried twice (a retry, then a reroute);
        a lone target is retried every time.
        """
        ordered = self.health.order(route.targets)
        if first is not None:
            ordered = [first, *(t for t in ordered if t != first)]
        per_target = 2 if len(ordered) > 1 else 1
        return itertools.cycle([t for t in ordered for _ in range(per_target)])

    async def run(self, turn: Turn, route: RouteSettings, *,
                  first: Target | None = None, first_reason: str = "initial",
                  raw: bytes | None = None, received: float | None = None
                  ) -> AsyncGenerator[StreamPart, None]:
        """Yield the client's parts; raise `TurnAborted` when the turn cannot complete.

        `raw` is the request's body as the client sent it, when it says exactly
        what `turn.request` says (`ChatRequest.raw`): an attempt whose body is
        the client's unchanged sends it as is. `received` is `time.perf_counter()`
        when the body's last byte arrived: the first attempt's `prepared_in`
        counts from there.
        """
        # A rerun by hand has no body as received: its size is measured once, off the hot path.
        live = LiveTurn(turn, route, turn.request_bytes or len(encode(turn.request)), raw,
                        received)
        self.live[turn.id] = live
        watchdog = route.watchdog
        plan = self._plan(route, first)
        target, reason = next(plan), first_reason
        unrecorded = self.recorded is not None  # no output has waited for the journal yet
        try:
            while True:
                attempt = self._new_attempt(live, target, reason)
                parts = self._attempt(live, attempt, target)
                try:
                    head: list[StreamPart] = []
                    delay = self._hedge_delay(live, target)
                    if delay is not None:
                        racer = await self._race(live, _Racer(attempt, target, parts), delay)
                        attempt, target, parts = racer.attempt, racer.target, racer.parts
                        live.attempt = attempt
                        head = racer.head()  # raises what ended the last one standing
                    source = _chain(head, parts) if head else parts
                    async with aclosing(parts), aclosing(source):
                        async for part in source:
                            self._record(turn, part)
                            if not turn.stream:  # the client's answer is built whole
                                RunawayAnswer.check_whole(
                                    turn.kept_chars + turn.unrecorded_chars)
                            # Reasoning alone does not commit: an attempt that only
                            # thought can still be retried on the same client stream.
                            if not live.committed and isinstance(part, (TextPart, ToolCallPart)):
                                live.committed = True
                            if unrecorded:
                                unrecorded = False
                                await self._recorded(turn)
                            yield part
                    attempt.outcome, attempt.ended_at = "ok", time.time()
                    self.health.succeeded(target)
                    self._learn(attempt)
                    self._finish(turn)
                    await self._recorded(turn)
                    return
                except ManualInterrupt as interrupt:
                    action = interrupt.action
                    live.action = None
                    attempt.outcome, attempt.ended_at = "interrupted", time.time()
                    attempt.error = f"stopped by hand ({action.kind})"
                    self._learn(attempt)
                    self.bus.publish(AttemptFailed(
                        turn_id=turn.id, attempt=attempt.number, target=attempt.target,
                        error=attempt.error, will_retry=action.rerun_id is None))
                    if action.rerun_id is not None:
                        message = (f"stopped by hand after output had started; "
                                   f"re-run as {action.rerun_id}")
                        self._fail(turn, message, 409)
                        raise TurnAborted(message, status=409, code="manual_interrupt",
                                          committed=live.committed) from None
                    target, reason = action.target or target, f"manual-{action.kind}"
                except UpstreamError as exc:
                    will_retry = (exc.retryable and not live.committed
                                  and live.failures + 1 < watchdog.max_attempts)
                    self._attempt_failed(live, attempt, target, exc, will_retry)
                    if not will_retry:
                        status = exc.status if not live.committed else 502
                        self._fail(turn, exc.message, status)
                        raise TurnAborted(exc.message, status=status, code=exc.code,
                                          committed=live.committed) from None
                    previous, target = target, next(plan)
                    reason = "retry" if target == previous else "reroute"
        except TurnAborted:
            raise
        except Exception as exc:  # a bug of ours: fail this turn, keep serving
            log.exception("internal error in turn %s", turn.id)
            message = f"internal error in Switchboard: {type(exc).__name__}: {exc}"
            self._fail(turn, message, 500)
            raise TurnAborted(message, status=500, code="internal_error",
                              committed=live.committed) from None
        finally:
            self.live.pop(turn.id, None)
            if turn.state == "live":  # the client went away, or we were cancelled
                for attempt in turn.attempts:
                    if attempt.outcome == "live":
                        attempt.outcome, attempt.ended_at = "abandoned", time.time()
                self._fail(turn, "client disconnected before the turn finished", 499)

    def _new_attempt(self, live: LiveTurn, target: Target, reason: str) -> Attempt:
        turn = live.turn
        attempt = Attempt(number=len(turn.attempts) + 1, target=str(target), reason=reason,
                          request_bytes=live.size)
        plan = self._deadline_plan(live, target)
        attempt.first_output_deadline, attempt.first_output_basis = \
            plan.first_output, plan.first_output_basis
        attempt.idle_deadline, attempt.idle_basis = plan.idle, plan.idle_basis
        turn.attempts.append(attempt)
        if reason != "hedge":
            live.attempt = attempt
        self.bus.defer(self._attempt_started(turn, attempt))
        return attempt

    def _attempt_failed(self, live: LiveTurn, attempt: Attempt, target: Target,
                        exc: UpstreamError, will_retry: bool) -> None:
        """Record an attempt that ended in an upstream error (counted against max_attempts)."""
        attempt.outcome, attempt.error = "failed", exc.message
        attempt.ended_at = time.time()
        self.health.failed(target, exc.message)
        self._learn(attempt)
        live.failures += 1
        if isinstance(exc, UpstreamTimeout):
            live.timeouts[str(target)] = live.timeouts.get(str(target), 0) + 1
        self.bus.publish(AttemptFailed(turn_id=live.turn.id, attempt=attempt.number,
                                       target=attempt.target, error=exc.message,
                                       will_retry=will_retry))

    # -- deadlines and hedges --------------------------------------------------------

    def _deadline_plan(self, live: LiveTurn, target: Target) -> DeadlinePlan:
        """The watchdog deadlines for the next attempt at `target` (see `learned.py`)."""
        w = live.route.watchdog
        if not w.adaptive:
            return DeadlinePlan(w.first_token_timeout, "configured; adaptive off",
                                w.idle_timeout, "configured; adaptive off")
        plan = self.learned.plan(str(target), live.size,
                                 Limits(w.first_token_floor, w.first_token_timeout),
                                 Limits(w.idle_floor, w.idle_timeout))
        timeouts = live.timeouts.get(str(target), 0)
        if timeouts:  # the estimate was too tight for this turn, or the host hangs: widen it
            plan = plan.escalate(2.0 ** timeouts, (w.first_token_timeout, w.idle_timeout))
        return plan

    def _learn(self, attempt: Attempt) -> None:
        ttfb = (attempt.first_byte_at - attempt.started_at
                if attempt.first_byte_at is not None else None)
        self.learned.observe(attempt.target, attempt.request_bytes, ttfb,
                             attempt.max_gap if attempt.chunks > 1 else None)

    def _hedge_delay(self, live: LiveTurn, target: Target) -> float | None:
        """Seconds without output after which this attempt gets a hedge, or None."""
        w = live.route.watchdog
        if live.committed or live.action is not None:
            return None
        if w.hedge_after is not None:
            return w.hedge_after
        if w.hedge_quantile is not None:
            return self.learned.hedge_delay(str(target), live.size, w.hedge_quantile)
        return None

    async def _race(self, live: LiveTurn, first: _Racer, delay: float) -> _Racer:
        """Run `first` to its first output; if there is none after `delay`, start a hedge
        on the route's next target (or the same one) and race them.

        The first to produce output wins; the other is cancelled and its upstream
        request closed before anything of it is relayed (the racers' parts wait in
        their heads). A racer that fails drops out (recorded as a failed attempt);
        when the last one fails, it is returned and `head()` raises its error.
        """
        racers = [first]
        first.start()
        try:
            await asyncio.wait({first.task()}, timeout=delay)
            if not first.task().done() and live.action is None:
                racers.append(self._start_hedge(live, first.target))
            while True:
                done = [r for r in racers if r.task().done()]
                winner = next((r for r in done if not r.failed_upstream()), None)
                if winner is not None:
                    if winner.attempt.reason == "hedge" and not winner.failed():
                        self.hedge_wins[winner.attempt.target] += 1
                    for other in racers:
                        if other is not winner:
                            await self._cancel(live, other, winner)
                    return winner
                for racer in done:
                    if len(racers) == 1:
                        return racer
                    racers.remove(racer)
                    error = racer.task().exception()
                    assert isinstance(error, UpstreamError)
                    self._attempt_failed(live, racer.attempt, racer.target, error, True)
                    if live.attempt is racer.attempt:
                        live.attempt = racers[0].attempt
                await asyncio.wait({r.task() for r in racers}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            for racer in racers:
                await racer.stop()
            raise

    def _start_hedge(self, live: LiveTurn, current: Target) -> _Racer:
        others = [t for t in self.health.order(live.route.targets) if t != current]
        target = others[0] if others else current
        live.turn.hedges += 1
        self.hedges[str(target)] += 1
        attempt = self._new_attempt(live, target, "hedge")
        racer = _Racer(attempt, target, self._attempt(live, attempt, target))
        racer.start()
        return racer

    async def _cancel(self, live: LiveTurn, loser: _Racer, winner: _Racer) -> None:
        await loser.stop()
        attempt = loser.attempt
        if attempt.outcome != "live":
            return
        attempt.outcome, attempt.ended_at = "cancelled", time.time()
        attempt.error = f"lost the hedge race to attempt {winner.attempt.number}"
        self.bus.publish(AttemptCancelled(turn_id=live.turn.id, attempt=attempt.number,
                                          target=attempt.target, winner=winner.attempt.number))

    async def _attempt(self, live: LiveTurn, attempt: Attempt, target: Target
                       ) -> AsyncGenerator[StreamPart, None]:
        begun = live.received if attempt.number == 1 and live.received is not None \
            else time.perf_counter()

        def handed_over() -> None:  # the adapter hands the request to its HTTP client now
            attempt.prepared_in = time.perf_counter() - begun

        turn = live.turn
        upstream = self.upstreams[target.upstream]
        model = target.model_for(turn.model)
        body, remodelled = _upstream_body(turn.request, model)
        plan = plan_for(live.route.repairs, model, upstream.kind)
        repaired_messages = False
        if plan.any:
            placeholder = self.config.upstreams[target.upstream].reasoning_placeholder
            body["messages"], notes = self.history.repair(body["messages"], plan,
                                                          placeholder=placeholder,
                                                          size=live.size)
            if notes:  # recorded and announced once the request is out
                self.bus.defer(lambda: self._history_repaired(turn, notes))
            repaired_messages = bool(notes)
        capture = None
        # The raw answer, for repro fixtures (`capture.py`), from adapters that read the wire.
        if self.capture_wire and getattr(upstream, "captures_wire", False):
            spent = sum(c.size for c in turn.wire)
            capture = WireCapture(attempt.number, attempt.target,
                                  max(0, self.config.proxy.journal_wire_kb * 1024 - spent))
            if repaired_messages:
                capture.messages = body["messages"]
            turn.wire.append(capture)
        repairer = StreamRepairer(plan, ToolCatalog.for_tools(body.get("tools")),
                                  lambda note: self._repair(turn, note))
        answered = False  # text or a call reached the client (reasoning alone does not count)
        finished = False
        # The client's bytes say it all when only the repairs could have changed it, and
        # they changed no message (they make new objects for what they change).
        sent, asked = body["messages"], turn.request["messages"]
        raw = live.raw if live.raw is not None and not remodelled and (sent is asked or (
            len(sent) == len(asked) and all(map(operator.is_, sent, asked)))) else None
        parts = upstream.stream(UpstreamRequest(model=model, body=body, capture=capture, raw=raw,
                                                on_send=handed_over))
        idle = attempt.idle_deadline or live.route.watchdog.idle_timeout
        loop = asyncio.get_running_loop()
        watch = Deadline(loop.time() + (attempt.first_output_deadline
                                        or live.route.watchdog.first_token_timeout))
        try:
            while True:
                if live.action is not None:
                    raise ManualInterrupt(live.action)
                try:
                    live.timeout = watch
                    with watch:
                        part = await parts.__anext__()
                except StopAsyncIteration:
                    for repaired in repairer.flush():
                        answered = answered or _answers(repaired)
                        yield repaired
                    if plan.empty_reply and not answered and not finished:
                        raise _empty_reply(target) from None
                    return
                except TimeoutError:
                    if live.action is not None:
                        raise ManualInterrupt(live.action) from None
                    raise self._stalled(attempt, target) from None
                finally:
                    live.timeout = None
                if type(part) is FinishPart and part.response_id:
                    attempt.response_id = part.response_id[:200]
                if isinstance(part, KeepAlivePart):
                    attempt.keepalives += 1
                    self.bus.publish(Heartbeat(turn_id=turn.id))
                    continue
                if isinstance(part, PROGRESS_PARTS):
                    now = time.time()
                    attempt.chunks += 1
                    if attempt.last_output_at is not None:
                        gap = now - attempt.last_output_at
                        if attempt.max_gap is None or gap > attempt.max_gap:
                            attempt.max_gap = gap
                    attempt.last_output_at = now
                    if attempt.first_byte_at is None:
                        attempt.first_byte_at = now
                        turn.first_byte_at = turn.first_byte_at or now
                        # Observers hear of it once the part is on its way to the client.
                        self.bus.publish_soon(FirstByte(turn_id=turn.id, attempt=attempt.number,
                                                        latency=now - attempt.started_at))
                    watch.when = loop.time() + idle
                for repaired in repairer.feed(part):
                    if (plan.empty_reply and not answered and isinstance(repaired, FinishPart)
                            and repaired.reason in EMPTY_REPLY_REASONS):
                        raise _empty_reply(target)
                    answered = answered or _answers(repaired)
                    finished = finished or isinstance(repaired, FinishPart)
                    yield repaired
        finally:
            watch.close()
            await parts.aclose()

    async def _recorded(self, turn: Turn) -> None:
        """Wait until the journal has the turn as it is now (see `Recorded`)."""
        if self.recorded is not None:
            self.bus.flush()  # the events that make the record, if still deferred
            written = self.recorded(turn.id)
            if written is not None:
                await written

    def _attempt_started(self, turn: Turn, attempt: Attempt) -> Callable[[], None]:
        return lambda: self.bus.publish(AttemptStarted(
            turn_id=turn.id, attempt=attempt.number, target=attempt.target, reason=attempt.reason))

    @staticmethod
    def _stalled(attempt: Attempt, target: Target) -> UpstreamTimeout:
        if attempt.first_byte_at is None:
            return UpstreamTimeout(
                f"no first token from {target} within {attempt.first_output_deadline or 0:.3g}s"
                f" ({attempt.first_output_basis})")
        return UpstreamTimeout(
            f"no output from {target} for {attempt.idle_deadline or 0:.3g}s (stalled"
            f" mid-stream; {attempt.idle_basis})")

    # -- by hand -----------------------------------------------------------------

    async def retry(self, turn_id: str) -> str:
        """Retry a turn on its current target. Returns the id of the turn doing the work."""
        return await self._manual(turn_id, ManualAction("retry"))

    async def reroute(self, turn_id: str, target: str) -> str:
        """Move a turn to `target` ("upstream:model"). Returns the id doing the work."""
        parsed = Target.parse(target)
        if parsed.upstream not in self.upstreams:
            raise ClientRequestError(
                f"unknown upstream {parsed.upstream!r} in target {target!r}; "
                f"known: {', '.join(sorted(self.upstreams))}", code="unknown_target")
        return await self._manual(turn_id, ManualAction("reroute", parsed))

    def watchdog_figures(self, target: str) -> dict[str, Any]:
        """What the deadlines of `target` are learned from, and come to (control API)."""
        route = next((r for r in self.config.routes if any(str(t) == target for t in r.targets)),
                     None)
        w = route.watchdog if route is not None else self.config.watchdog
        figures = self.learned.figures(target, Limits(w.first_token_floor, w.first_token_timeout),
                                       Limits(w.idle_floor, w.idle_timeout))
        figures["adaptive"] = w.adaptive
        figures["hedges"] = self.hedges[target]
        figures["hedge_wins"] = self.hedge_wins[target]
        return figures

    async def targets_for(self, turn_id: str) -> list[str]:
        """Where a turn could be rerouted: its route's targets, then every other upstream."""
        turn = await self._find(turn_id)
        route = self._route(turn.model)
        targets = [str(t) for t in route.targets]
        models = list(dict.fromkeys(t.model_for(turn.model) for t in route.targets))
        for name in self.upstreams:
            for model in models:
                candidate = f"{name}:{model}"
                if candidate not in targets:
                    targets.append(candidate)
        return targets

    async def _find(self, turn_id: str) -> Turn:
        """The turn in memory, or else from the journal (`lookup`, read on its writer)."""
        turn = self.store.get(turn_id) or (await self.lookup(turn_id) if self.lookup else None)
        if turn is None:
            raise ClientRequestError(f"no turn {turn_id!r}", status=404, code="turn_not_found")
        return turn

    async def _manual(self, turn_id: str, action: ManualAction) -> str:
        live = self.live.get(turn_id)
        if live is not None and not live.committed:
            live.interrupt(action)  # restarts on the same client stream
            return turn_id
        original = live.turn if live is not None else await self._find(turn_id)
        rerun = self._rerun(original, action)
        if live is not None:
            live.interrupt(ManualAction(action.kind, action.target, rerun_id=rerun))
        return rerun

    def _rerun(self, original: Turn, action: ManualAction) -> str:
        route = self._route(original.model)
        first = action.target
        if first is None and original.attempts:
            first = Target.parse(original.attempts[-1].target)
        turn = self._new_turn(original.request, original.session_id, original.model, route,
                              original.stream, "switchboard (re-run by hand)", original.id)
        turn.parent_session_id = original.parent_session_id
        turn.request_bytes = original.request_bytes
        self.store.add(turn)
        self._announce(turn)

        async def drain() -> None:
            try:
                async with aclosing(self.run(turn, route, first=first,
                                             first_reason=f"manual-{action.kind}")) as parts:
                    async for _ in parts:
                        pass
            except TurnAborted:
                pass  # recorded on the turn

        task = asyncio.get_running_loop().create_task(drain(), name=f"rerun {turn.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return turn.id

    # -- recording ---------------------------------------------------------------

    def _record(self, turn: Turn, part: StreamPart) -> None:
        if isinstance(part, TextPart):
            turn.append_text(part.text, self._text_limit)
            if self.bus.wants(Chunk):
                self.bus.publish(Chunk(turn_id=turn.id, kind="text", text=part.text))
        elif isinstance(part, ReasoningPart):
            turn.append_reasoning(part.text, self._text_limit)
            if self.bus.wants(Chunk):
                self.bus.publish(Chunk(turn_id=turn.id, kind="reasoning", text=part.text))
        elif isinstance(part, ToolCallPart):
            turn.tool_calls.append(ToolCallRecord(part.id, part.name, part.arguments,
                                                  part.upstream_id))
            self.memory.remember(RememberedCall(
                id=part.id, name=part.name, arguments=part.arguments, reasoning=turn.reasoning,
                session_id=turn.session_id, turn_id=turn.id, upstream_id=part.upstream_id))
            self.bus.publish(ToolCallRelayed(turn_id=turn.id, call_id=part.id, name=part.name,
                                             arguments=part.arguments))
        elif isinstance(part, FinishPart):
            turn.finish_reason = part.reason
        elif isinstance(part, UsagePart):
            usage = turn.usage
            usage.prompt_tokens = part.prompt_tokens
            usage.completion_tokens = part.completion_tokens
            usage.total_tokens = part.total_tokens
            usage.cached_tokens = part.cached_tokens
            usage.cache_write_tokens = part.cache_write_tokens
            usage.reasoning_tokens = part.reasoning_tokens
            if self.config.prices and turn.attempts:
                target = turn.attempts[-1].target
                turn.cost = self.config.prices.cost(
                    usage, target, Target.parse(target).model_for(turn.model), turn.model)

    def _repair(self, turn: Turn, note: Note) -> None:
        """A repair to the stream: recorded and announced now, unless an attempt made it."""
        if any(r.kind == note.kind and r.before == note.before and r.after == note.after
               for r in turn.repairs):
            return  # the same repair, made again by a retry
        self._record_repair(turn, note)

    def _history_repaired(self, turn: Turn, notes: list[Note]) -> None:
        """Record an attempt's history repairs, but not again for a retry (one set, not a
        scan of the record per note: a long history can need a hundred)."""
        made = {(r.kind, r.before, r.after) for r in turn.repairs}
        for note in notes:
            if (note.kind, note.before, note.after) not in made:
                made.add((note.kind, note.before, note.after))
                self._record_repair(turn, note)

    def _record_repair(self, turn: Turn, note: Note) -> None:
        turn.repairs.append(RepairRecord(note.kind, note.before, note.after, call_id=note.call_id))
        self.bus.publish(RepairApplied(turn_id=turn.id, kind=note.kind, before=note.before,
                                       after=note.after, call_id=note.call_id))

    def _health_changed(self, target: str, healthy: bool, until: float | None,
                        reason: str) -> None:
        log.warning("upstream %s %s", target,
                    "is back" if healthy else f"cooling down until {time.ctime(until or 0)}: {reason}")
        self.bus.publish(UpstreamHealthChanged(turn_id="", target=target, healthy=healthy,
                                               until=until, reason=reason))

    def _finish(self, turn: Turn) -> None:
        turn.finished_at = time.time()
        turn.state = "finished"
        if turn.finish_reason is None:
            turn.finish_reason = "tool_calls" if turn.tool_calls else "stop"
        self.bus.publish(TurnFinished(
            turn_id=turn.id, finish_reason=turn.finish_reason,
            prompt_tokens=turn.usage.prompt_tokens, completion_tokens=turn.usage.completion_tokens,
            duration=turn.duration, tool_calls=len(turn.tool_calls),
            cached_tokens=turn.usage.cached_tokens, reasoning_tokens=turn.usage.reasoning_tokens,
            cost=turn.cost))

    def _fail(self, turn: Turn, message: str, status: int) -> None:
        turn.finished_at = time.time()
        turn.state = "failed"
        turn.error = message
        turn.status = status
        self.bus.publish(TurnFailed(turn_id=turn.id, error=message, status=status,
                                    duration=turn.duration))


class _Racer:
    """One attempt in a hedge race: its generator, run in a task up to its first output."""

    __slots__ = ("attempt", "target", "parts", "_task")

    def __init__(self, attempt: Attempt, target: Target,
                 parts: AsyncGenerator[StreamPart, None]) -> None:
        self.attempt = attempt
        self.target = target
        self.parts = parts
        self._task: asyncio.Task[list[StreamPart]] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            _head(self.parts), name=f"attempt {self.attempt.number} of a hedge race")

    def task(self) -> asyncio.Task[list[StreamPart]]:
        assert self._task is not None
        return self._task

    def failed_upstream(self) -> bool:
        """Done with an upstream error (a racer that drops out; others go on)."""
        task = self.task()
        return not task.cancelled() and isinstance(task.exception(), UpstreamError)

    def failed(self) -> bool:
        """Done with any error (or cancelled)."""
        task = self.task()
        return task.cancelled() or task.exception() is not None

    def head(self) -> list[StreamPart]:
        """Its parts up to the first output; raises what ended it, if something did."""
        return self.task().result()

    async def stop(self) -> None:
        """Cancel it (if still running) and close its upstream request."""
        task = self.task()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.parts.aclose()


async def _head(parts: AsyncGenerator[StreamPart, None]) -> list[StreamPart]:
    """The parts up to and including the first output (all of them, if it ends first)."""
    head: list[StreamPart] = []
    while True:
        try:
            part = await parts.__anext__()
        except StopAsyncIteration:
            return head
        head.append(part)
        if isinstance(part, PROGRESS_PARTS):
            return head


async def _chain(head: list[StreamPart], parts: AsyncGenerator[StreamPart, None]
                 ) -> AsyncGenerator[StreamPart, None]:
    for part in head:
        yield part
    async for part in parts:
        yield part


#: Finish reasons with which an empty reply counts as a failed attempt.
EMPTY_REPLY_REASONS = frozenset({"stop", "end_turn", "eos", ""})


def _answers(part: StreamPart) -> bool:
    """Whether a part is an answer: a call, or text that is not blank."""
    return isinstance(part, ToolCallPart) or (isinstance(part, TextPart) and not part.text.isspace())


def _empty_reply(target: Target) -> EmptyReply:
    return EmptyReply(f"empty reply from {target}: the turn ended with no text and no tool call")


def _upstream_body(client_body: dict[str, Any], model: str) -> tuple[dict[str, Any], bool]:
    """The client's body, re-modelled for the target and always streamed with usage; and
    whether that changed what it says (another model, or a stream or usage not asked
    for exactly so)."""
    body = copy.copy(client_body)
    options = client_body.get("stream_options")
    remodelled = (client_body.get("model") != model or client_body.get("stream") is not True
                  or type(options) is not dict or len(options) != 1
                  or options.get("include_usage") is not True)
    body["model"] = model
    body["stream"] = True
    options = dict(options or {})
    options["include_usage"] = True
    body["stream_options"] = options
    return body, remodelled
