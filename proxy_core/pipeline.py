"""Running one turn: route, attempt, watch, retry, relay, record.

`Pipeline.open_turn` validates routing and creates the turn record;
`Pipeline.run` is an async generator of the parts the client should
receive. Until the first model output is yielded (the commit boundary) a
stalled or failed attempt is retried on the same target, then rerouted down
the route's targets, up to the route's `max_attempts` (meanwhile the server
keeps a streaming client alive with SSE comments, see `server.KeepAlive`). After
the boundary a failure ends the turn with `TurnAborted`, which the server
turns into an in-stream error.

`retry` and `reroute` act on a turn by hand: a live turn that has sent
nothing yet restarts on its own client stream; any other turn is re-run in
the background as a new turn (`rerun_of` names the original) and recorded.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .bus import EventBus
from .capture import WireCapture
from .config import Config, RouteSettings, Target
from .errors import ClientRequestError, EmptyReply, UpstreamError, UpstreamTimeout
from .events import (
    AttemptFailed, AttemptStarted, Chunk, FirstByte, Heartbeat, RepairApplied, ToolCallRelayed,
    TurnFailed, TurnFinished, TurnStarted, UpstreamHealthChanged,
)
from .deadline import Deadline
from .health import TargetHealth
from .openai_wire import ChatRequest
from .record import Attempt, RepairRecord, ToolCallRecord, Turn, new_turn_id
from .repairs.history import Note, repair_history
from .repairs.memory import RememberedCall, ToolCallMemory
from .repairs.profiles import plan_for
from .repairs.stream_repair import StreamRepairer
from .repairs.tool_names import ToolCatalog
from .sessions import session_id_for
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

    __slots__ = ("turn", "route", "committed", "action", "timeout")

    def __init__(self, turn: Turn, route: RouteSettings) -> None:
        self.turn = turn
        self.route = route
        self.committed = False
        self.action: ManualAction | None = None
        self.timeout: Deadline | None = None  # the attempt's watchdog deadline, while waiting

    def interrupt(self, action: ManualAction) -> None:
        """Stop the current attempt at its next wait (or now, if it is waiting)."""
        self.action = action
        if self.timeout is not None and not self.timeout.expired():
            self.timeout.expire()


#: Finds a turn that is no longer in memory (the journal), for re-runs.
TurnLookup = Callable[[str], Turn | None]


class Pipeline:
    def __init__(self, config: Config, upstreams: Mapping[str, Upstream], bus: EventBus,
                 store: TurnStore, memory: ToolCallMemory | None = None,
                 lookup: TurnLookup | None = None, *, capture_wire: bool = False) -> None:
        self.config = config
        #: Keep each attempt's raw upstream bytes on the turn until the journal has them.
        self.capture_wire = capture_wire
        self.upstreams = upstreams
        self.bus = bus
        self.store = store
        self.memory = memory or ToolCallMemory()
        self.lookup = lookup
        self.health = TargetHealth(config.watchdog.cooldown, config.watchdog.cooldown_after,
                                   self._health_changed)
        self.live: dict[str, LiveTurn] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Cancel background re-runs (at shutdown)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- opening -----------------------------------------------------------------

    def open_turn(self, request: ChatRequest, headers: Mapping[str, str]) -> tuple[Turn, RouteSettings]:
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
        self.store.add(turn)

        def announce() -> None:
            turn.session_id = session_id_for(headers, request.messages)
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
                                     rerun_of=turn.rerun_of))

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
                  first: Target | None = None, first_reason: str = "initial"
                  ) -> AsyncGenerator[StreamPart, None]:
        """Yield the client's parts; raise `TurnAborted` when the turn cannot complete."""
        live = LiveTurn(turn, route)
        self.live[turn.id] = live
        watchdog = route.watchdog
        plan = self._plan(route, first)
        target, reason = next(plan), first_reason
        automatic = 0
        try:
            while True:
                attempt = Attempt(number=len(turn.attempts) + 1, target=str(target), reason=reason)
                turn.attempts.append(attempt)
                self.bus.defer(self._attempt_started(turn, attempt))
                try:
                    async with aclosing(self._attempt(live, attempt, target)) as parts:
                        async for part in parts:
                            # Reasoning alone does not commit: an attempt that only
                            # thought can still be retried on the same client stream.
                            if not live.committed and isinstance(part, (TextPart, ToolCallPart)):
                                live.committed = True
                            yield part
                    attempt.outcome, attempt.ended_at = "ok", time.time()
                    self.health.succeeded(target)
                    self._finish(turn)
                    return
                except ManualInterrupt as interrupt:
                    action = interrupt.action
                    live.action = None
                    attempt.outcome, attempt.ended_at = "interrupted", time.time()
                    attempt.error = f"stopped by hand ({action.kind})"
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
                    attempt.outcome, attempt.error = "failed", exc.message
                    attempt.ended_at = time.time()
                    self.health.failed(target, exc.message)
                    automatic += 1
                    will_retry = (exc.retryable and not live.committed
                                  and automatic < watchdog.max_attempts)
                    self.bus.publish(AttemptFailed(turn_id=turn.id, attempt=attempt.number,
                                                   target=attempt.target, error=exc.message,
                                                   will_retry=will_retry))
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

    async def _attempt(self, live: LiveTurn, attempt: Attempt, target: Target
                       ) -> AsyncGenerator[StreamPart, None]:
        turn = live.turn
        upstream = self.upstreams[target.upstream]
        model = target.model_for(turn.model)
        body = _upstream_body(turn.request, model)
        plan = plan_for(live.route.repairs, model, upstream.kind)
        repaired_messages = False
        if plan.any:
            placeholder = self.config.upstreams[target.upstream].reasoning_placeholder
            body["messages"], notes = repair_history(body["messages"], plan, self.memory,
                                                     placeholder=placeholder)
            for note in notes:
                self._repair(turn, note, soon=True)
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
        repairer = StreamRepairer(plan, ToolCatalog.from_openai(body.get("tools")),
                                  lambda note: self._repair(turn, note))
        answered = False  # text or a call reached the client (reasoning alone does not count)
        finished = False
        parts = upstream.stream(UpstreamRequest(model=model, body=body, capture=capture))
        watchdog = live.route.watchdog
        loop = asyncio.get_running_loop()
        watch = Deadline(loop.time() + watchdog.first_token_timeout)
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
                        self._record(turn, repaired)
                        yield repaired
                    if plan.empty_reply and not answered and not finished:
                        raise _empty_reply(target) from None
                    return
                except TimeoutError:
                    if live.action is not None:
                        raise ManualInterrupt(live.action) from None
                    raise self._stalled(attempt, target, watchdog) from None
                finally:
                    live.timeout = None
                if isinstance(part, KeepAlivePart):
                    attempt.keepalives += 1
                    self.bus.publish(Heartbeat(turn_id=turn.id))
                    continue
                if isinstance(part, PROGRESS_PARTS):
                    now = time.time()
                    attempt.chunks += 1
                    attempt.last_output_at = now
                    if attempt.first_byte_at is None:
                        attempt.first_byte_at = now
                        turn.first_byte_at = turn.first_byte_at or now
                        # Observers hear of it once the part is on its way to the client.
                        self.bus.publish_soon(FirstByte(turn_id=turn.id, attempt=attempt.number,
                                                        latency=now - attempt.started_at))
                    watch.when = loop.time() + watchdog.idle_timeout
                for repaired in repairer.feed(part):
                    if (plan.empty_reply and not answered and isinstance(repaired, FinishPart)
                            and repaired.reason in EMPTY_REPLY_REASONS):
                        raise _empty_reply(target)
                    answered = answered or _answers(repaired)
                    finished = finished or isinstance(repaired, FinishPart)
                    self._record(turn, repaired)
                    yield repaired
        finally:
            watch.close()
            await parts.aclose()

    def _attempt_started(self, turn: Turn, attempt: Attempt) -> Callable[[], None]:
        return lambda: self.bus.publish(AttemptStarted(
            turn_id=turn.id, attempt=attempt.number, target=attempt.target, reason=attempt.reason))

    @staticmethod
    def _stalled(attempt: Attempt, target: Target, watchdog: Any) -> UpstreamTimeout:
        if attempt.first_byte_at is None:
            return UpstreamTimeout(
                f"no first token from {target} within {watchdog.first_token_timeout:g}s")
        return UpstreamTimeout(
            f"no output from {target} for {watchdog.idle_timeout:g}s (stalled mid-stream)")

    # -- by hand -----------------------------------------------------------------

    async def retry(self, turn_id: str) -> str:
        """Retry a turn on its current target. Returns the id of the turn doing the work."""
        return self._manual(turn_id, ManualAction("retry"))

    async def reroute(self, turn_id: str, target: str) -> str:
        """Move a turn to `target` ("upstream:model"). Returns the id doing the work."""
        parsed = Target.parse(target)
        if parsed.upstream not in self.upstreams:
            raise ClientRequestError(
                f"unknown upstream {parsed.upstream!r} in target {target!r}; "
                f"known: {', '.join(sorted(self.upstreams))}", code="unknown_target")
        return self._manual(turn_id, ManualAction("reroute", parsed))

    def targets_for(self, turn_id: str) -> list[str]:
        """Where a turn could be rerouted: its route's targets, then every other upstream."""
        turn = self._find(turn_id)
        route = self._route(turn.model)
        targets = [str(t) for t in route.targets]
        models = list(dict.fromkeys(t.model_for(turn.model) for t in route.targets))
        for name in self.upstreams:
            for model in models:
                candidate = f"{name}:{model}"
                if candidate not in targets:
                    targets.append(candidate)
        return targets

    def _find(self, turn_id: str) -> Turn:
        turn = self.store.get(turn_id) or (self.lookup(turn_id) if self.lookup else None)
        if turn is None:
            raise ClientRequestError(f"no turn {turn_id!r}", status=404, code="turn_not_found")
        return turn

    def _manual(self, turn_id: str, action: ManualAction) -> str:
        live = self.live.get(turn_id)
        if live is not None and not live.committed:
            live.interrupt(action)  # restarts on the same client stream
            return turn_id
        original = live.turn if live is not None else self._find(turn_id)
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
            turn.append_text(part.text)
            if self.bus.wants(Chunk):
                self.bus.publish(Chunk(turn_id=turn.id, kind="text", text=part.text))
        elif isinstance(part, ReasoningPart):
            turn.append_reasoning(part.text)
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

    def _repair(self, turn: Turn, note: Note, soon: bool = False) -> None:
        if any(r.kind == note.kind and r.before == note.before and r.after == note.after
               for r in turn.repairs):
            return  # the same history repair, made again for a retry
        turn.repairs.append(RepairRecord(note.kind, note.before, note.after, call_id=note.call_id))
        event = RepairApplied(turn_id=turn.id, kind=note.kind, before=note.before, after=note.after,
                              call_id=note.call_id)
        if soon:  # a history repair: the request goes out first
            self.bus.publish_soon(event)
        else:
            self.bus.publish(event)

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


#: Finish reasons with which an empty reply counts as a failed attempt.
EMPTY_REPLY_REASONS = frozenset({"stop", "end_turn", "eos", ""})


def _answers(part: StreamPart) -> bool:
    """Whether a part is an answer: a call, or text that is not blank."""
    return isinstance(part, ToolCallPart) or (isinstance(part, TextPart) and not part.text.isspace())


def _empty_reply(target: Target) -> EmptyReply:
    return EmptyReply(f"empty reply from {target}: the turn ended with no text and no tool call")


def _upstream_body(client_body: dict[str, Any], model: str) -> dict[str, Any]:
    """The client's body, re-modelled for the target and always streamed."""
    body = copy.copy(client_body)
    body["model"] = model
    body["stream"] = True
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    body["stream_options"] = options
    return body
