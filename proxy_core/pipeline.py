"""Running one turn: route, attempt, watch, retry, relay, record.

`Pipeline.open_turn` validates routing and creates the turn record;
`Pipeline.run` is an async generator of the parts the client should
receive. Until the first part is yielded (the commit boundary) a stalled or
failed attempt is retried or rerouted transparently, up to
`watchdog.max_attempts`. After it, a failure ends the turn with
`TurnAborted`, which the server turns into an in-stream error.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from contextlib import aclosing
from collections.abc import AsyncIterator, Mapping
from typing import Any

from .bus import EventBus
from .config import Config, RouteSettings, Target
from .errors import ClientRequestError, UpstreamError, UpstreamTimeout
from .events import (
    AttemptFailed, AttemptStarted, Chunk, FirstByte, Heartbeat, ToolCallRelayed, TurnFailed,
    TurnFinished, TurnStarted,
)
from .openai_wire import ChatRequest
from .events import RepairApplied
from .record import Attempt, RepairRecord, ToolCallRecord, Turn, new_turn_id
from .repairs.history import Note, repair_history
from .repairs.leak_parser import schemas_from_openai_tools
from .repairs.memory import RememberedCall, ToolCallMemory
from .repairs.profiles import plan_for
from .repairs.stream_repair import StreamRepairer
from .sessions import session_id_for
from .store import TurnStore
from .stream import (
    FinishPart, KeepAlivePart, PROGRESS_PARTS, ReasoningPart, StreamPart, TextPart, ToolCallPart,
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


class Pipeline:
    def __init__(self, config: Config, upstreams: Mapping[str, Upstream], bus: EventBus,
                 store: TurnStore, memory: ToolCallMemory | None = None) -> None:
        self.config = config
        self.upstreams = upstreams
        self.bus = bus
        self.store = store
        self.memory = memory or ToolCallMemory()

    # -- opening -----------------------------------------------------------------

    def open_turn(self, request: ChatRequest, headers: Mapping[str, str]) -> tuple[Turn, RouteSettings]:
        route = self.config.route_for(request.model)
        if route is None:
            raise ClientRequestError(
                f"model {request.model!r} matches no route; known: {', '.join(self.model_ids())}",
                status=404, code="model_not_found")
        turn = Turn(
            id=new_turn_id(),
            session_id=session_id_for(headers, request.messages),
            model=request.model,
            route=route.model,
            stream=request.stream,
            request=request.body,
            client=headers.get("user-agent", "")[:200],
        )
        self.store.add(turn)
        self.bus.publish(TurnStarted(turn_id=turn.id, session_id=turn.session_id,
                                     model=turn.model, route=turn.route, stream=turn.stream))
        return turn, route

    def model_ids(self) -> list[str]:
        ids: list[str] = []
        for route in self.config.routes:
            names = [route.model] if not route.is_pattern else [
                t.model for t in route.targets if t.model]
            ids.extend(n for n in names if n not in ids)
        return ids

    # -- running -----------------------------------------------------------------

    async def run(self, turn: Turn, route: RouteSettings) -> AsyncIterator[StreamPart]:
        """Yield the client's parts; raise `TurnAborted` when the turn cannot complete."""
        committed = False
        max_attempts = self.config.watchdog.max_attempts
        previous: Target | None = None
        try:
            for number in range(1, max_attempts + 1):
                target = route.targets[(number - 1) % len(route.targets)]
                reason = "initial" if previous is None else (
                    "retry" if target == previous else "reroute")
                previous = target
                attempt = Attempt(number=number, target=str(target), reason=reason)
                turn.attempts.append(attempt)
                self.bus.publish(AttemptStarted(turn_id=turn.id, attempt=number,
                                                target=attempt.target, reason=reason))
                try:
                    async with aclosing(self._attempt(turn, route, attempt, target)) as parts:
                        async for part in parts:
                            committed = True
                            yield part
                    attempt.outcome = "ok"
                    attempt.ended_at = time.time()
                    self._finish(turn)
                    return
                except UpstreamError as exc:
                    attempt.outcome, attempt.error = "failed", exc.message
                    attempt.ended_at = time.time()
                    will_retry = exc.retryable and not committed and number < max_attempts
                    self.bus.publish(AttemptFailed(turn_id=turn.id, attempt=number,
                                                   target=attempt.target, error=exc.message,
                                                   will_retry=will_retry))
                    if not will_retry:
                        status = exc.status if not committed else 502
                        self._fail(turn, exc.message, status)
                        raise TurnAborted(exc.message, status=status, code=exc.code,
                                          committed=committed) from None
            raise AssertionError("unreachable: the last attempt either returns or raises")
        except TurnAborted:
            raise
        except Exception as exc:  # a bug of ours: fail this turn, keep serving
            log.exception("internal error in turn %s", turn.id)
            message = f"internal error in Switchboard: {type(exc).__name__}: {exc}"
            self._fail(turn, message, 500)
            raise TurnAborted(message, status=500, code="internal_error",
                              committed=committed) from None
        finally:
            if turn.state == "live":  # the client went away, or we were cancelled
                for attempt in turn.attempts:
                    if attempt.outcome == "live":
                        attempt.outcome, attempt.ended_at = "abandoned", time.time()
                self._fail(turn, "client disconnected before the turn finished", 499)

    async def _attempt(self, turn: Turn, route: RouteSettings, attempt: Attempt,
                       target: Target) -> AsyncIterator[StreamPart]:
        upstream = self.upstreams[target.upstream]
        model = target.model_for(turn.model)
        body = _upstream_body(turn.request, model)
        plan = plan_for(route.repairs, model, upstream.kind)
        if plan.any:
            body["messages"], notes = repair_history(body["messages"], plan, self.memory)
            for note in notes:
                self._repair(turn, note)
        repairer = StreamRepairer(plan, schemas_from_openai_tools(body.get("tools")),
                                  lambda note: self._repair(turn, note))
        parts = upstream.stream(UpstreamRequest(model=model, body=body)).__aiter__()
        watchdog = self.config.watchdog
        loop = asyncio.get_running_loop()
        deadline = loop.time() + watchdog.first_token_timeout
        waiting_for = "first token"
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        part = await parts.__anext__()
                except StopAsyncIteration:
                    for repaired in repairer.flush():
                        self._record(turn, repaired)
                        yield repaired
                    return
                except TimeoutError:
                    limit = (watchdog.first_token_timeout if waiting_for == "first token"
                             else watchdog.idle_timeout)
                    raise UpstreamTimeout(
                        f"no {waiting_for} from {target} within {limit:g}s") from None
                if isinstance(part, KeepAlivePart):
                    self.bus.publish(Heartbeat(turn_id=turn.id))
                    continue
                if isinstance(part, PROGRESS_PARTS):
                    now = time.time()
                    if attempt.first_byte_at is None:
                        attempt.first_byte_at = now
                        turn.first_byte_at = turn.first_byte_at or now
                        self.bus.publish(FirstByte(turn_id=turn.id, attempt=attempt.number,
                                                   latency=now - attempt.started_at))
                        waiting_for = "output"
                    deadline = loop.time() + watchdog.idle_timeout
                for repaired in repairer.feed(part):
                    self._record(turn, repaired)
                    yield repaired
        finally:
            await parts.aclose()

    # -- recording ---------------------------------------------------------------

    def _record(self, turn: Turn, part: StreamPart) -> None:
        if isinstance(part, TextPart):
            turn.append_text(part.text)
            self.bus.publish(Chunk(turn_id=turn.id, kind="text", text=part.text))
        elif isinstance(part, ReasoningPart):
            turn.append_reasoning(part.text)
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
            turn.usage.prompt_tokens = part.prompt_tokens
            turn.usage.completion_tokens = part.completion_tokens
            turn.usage.total_tokens = part.total_tokens

    def _repair(self, turn: Turn, note: Note) -> None:
        if any(r.kind == note.kind and r.before == note.before and r.after == note.after
               for r in turn.repairs):
            return  # the same history repair, made again for a retry
        turn.repairs.append(RepairRecord(note.kind, note.before, note.after))
        self.bus.publish(RepairApplied(turn_id=turn.id, kind=note.kind, before=note.before,
                                       after=note.after))

    def _finish(self, turn: Turn) -> None:
        turn.finished_at = time.time()
        turn.state = "finished"
        if turn.finish_reason is None:
            turn.finish_reason = "tool_calls" if turn.tool_calls else "stop"
        self.bus.publish(TurnFinished(
            turn_id=turn.id, finish_reason=turn.finish_reason,
            prompt_tokens=turn.usage.prompt_tokens, completion_tokens=turn.usage.completion_tokens,
            duration=turn.duration, tool_calls=len(turn.tool_calls)))

    def _fail(self, turn: Turn, message: str, status: int) -> None:
        turn.finished_at = time.time()
        turn.state = "failed"
        turn.error = message
        turn.status = status
        self.bus.publish(TurnFailed(turn_id=turn.id, error=message, status=status,
                                    duration=turn.duration))


def _upstream_body(client_body: dict[str, Any], model: str) -> dict[str, Any]:
    """The client's body, re-modelled for the target and always streamed."""
    body = copy.copy(client_body)
    body["model"] = model
    body["stream"] = True
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    body["stream_options"] = options
    return body
