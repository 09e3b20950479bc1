"""The simulated host over HTTP: an aiohttp app and a runner for it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence

from aiohttp import web

from .config import SimulatorConfig
from .faults import (
    FaultDecision, HostError, decide, fault_of, fingerprint, render_leak, render_wild_leak, request_rng, validate,
)
from .script import Reply, next_reply
from .stats import FaultRecord, SimulatorState
from .wire import KEEPALIVE, Outgoing, completion, cut_with_error, sse_events

CONFIG_KEY = web.AppKey("simulator_config", SimulatorConfig)
STATE_KEY = web.AppKey("simulator_state", SimulatorState)


#: How often a silent hang checks whether its client went away.
_DISCONNECT_POLL = 0.05
#: What the ``throttle`` and ``stream_error`` faults say.
THROTTLE_MESSAGE = "Too many requests, please wait before trying again."
STREAM_ERROR_MESSAGE = "The model stream failed; retry your request."


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": code}}, status=status)


def _parse_messages(body: object) -> tuple[list[Mapping[str, object]], str | None]:
    """The request's messages, or an error message saying what is wrong."""
    if not isinstance(body, dict):
        return [], "request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [], "'messages' must be a non-empty array"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return [], f"messages.{index} must be an object with a string 'role'"
    return messages, None


def _record(state: SimulatorState, messages: Sequence[Mapping[str, object]], reply: Reply) -> None:
    stats = state.stats
    stats.requests += 1
    results = sum(1 for m in messages if m.get("role") == "tool")
    stats.tool_results_seen = max(stats.tool_results_seen, results)
    if reply.kind == "side":
        stats.side_requests += 1


def _outgoing(config: SimulatorConfig, body: Mapping[str, object], reply: Reply, decision: FaultDecision, fp: str, seen: int) -> Outgoing:
    content, reasoning, call = reply.text, reply.reasoning, reply.tool_call
    finish = reply.finish_reason
    keep_reasoning = config.streams_reasoning
    if decision.leak is not None:
        leaked = render_leak(reply, decision.leak)
        content, reasoning, call, finish = leaked.content, leaked.reasoning, None, "stop"
        keep_reasoning = keep_reasoning or decision.leak == "reasoning"
    elif decision.wild:
        leaked, leak = render_wild_leak(reply, config.seed, seen)
        content, reasoning, call, finish = leaked.content, leaked.reasoning, None, "stop"
        keep_reasoning = keep_reasoning or bool(leak.reasoning)
    elif decision.empty_reply:  # it thinks, then says nothing (Kimi K2.6)
        content, call, finish, keep_reasoning = "", None, "stop", True
    if decision.unthought or not keep_reasoning:
        reasoning = ""
    created = config.fixed_created if config.fixed_created is not None else int(time.time())
    digest = request_rng(config.seed, fp, seen, "id").getrandbits(96)
    return Outgoing(
        completion_id=f"chatcmpl-{digest:024x}",
        model=str(body.get("model")),
        created=created,
        content=content,
        reasoning=reasoning,
        tool_call=call,
        finish_reason=finish,
        prompt_tokens=len(json.dumps(body.get("messages"))) // 4,
    )


def bearer_refused(config: SimulatorConfig, request: web.Request) -> bool:
    """Whether ``bearer_token`` is set and the request does not carry it."""
    if config.bearer_token is None:
        return False
    return request.headers.get("Authorization", "") != f"Bearer {config.bearer_token}"


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _hang(request: web.Request, config: SimulatorConfig, state: SimulatorState, stream: bool) -> web.StreamResponse:
    """Send 200 headers, then nothing (or only ``: ping``) until the client leaves."""
    content_type = "text/event-stream" if stream else "application/json"
    response = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
    await response.prepare(request)
    state.stats.hangs_active += 1
    await state.notify()
    interval = config.keepalive_interval or _DISCONNECT_POLL
    try:
        while not state.shutdown.is_set() and not _client_gone(request):
            try:
                await asyncio.wait_for(state.shutdown.wait(), interval)
            except TimeoutError:
                if config.keepalive_interval and stream and not _client_gone(request):
                    await response.write(KEEPALIVE)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        state.stats.hangs_active -= 1
        state.stats.disconnects += 1
        await state.notify()
    return response


async def play(request: web.Request, config: SimulatorConfig, pieces: list[bytes],
               headers: Mapping[str, str], think: float = 0.0) -> web.StreamResponse:
    """Write `pieces` one by one, `chunk_delay` apart, as a real host streams, after
    `think` seconds with the headers sent and nothing else (reading the prompt)."""
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        if think > 0:
            await asyncio.sleep(think)
        for piece in pieces:
            await response.write(piece)
            if config.chunk_delay:
                await asyncio.sleep(config.chunk_delay)
        await response.write_eof()
    except ConnectionResetError:
        pass
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``: play the next step, faults included."""
    config, state = request.app[CONFIG_KEY], request.app[STATE_KEY]
    if bearer_refused(config, request):
        return _error(401, "Invalid Authentication", "invalid_api_key", "invalid_authentication_error")
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"request body is not valid JSON: {exc}", "invalid_json")
    messages, problem = _parse_messages(body)
    if problem is not None:
        return _error(400, problem, "invalid_request")
    model = body.get("model")
    if model not in config.models:
        return _error(404, f"The model `{model}` does not exist", "model_not_found")
    reply = next_reply(messages, body.get("tools"), config.steps)
    _record(state, messages, reply)
    error: HostError | None = validate(config, messages)
    if error is not None:
        state.stats.faults.append(FaultRecord(error.fault, error.message, reply.step))
        await state.notify()
        return web.json_response(error.body(), status=error.status)
    fp = fingerprint(messages)
    seen = state.sighting(fp)
    decision = decide(config, reply, messages, fp, seen)
    stream = body.get("stream") is True
    if decision.hang:
        state.stats.faults.append(FaultRecord("hang", "", reply.step))
        return await _hang(request, config, state, stream)
    if decision.throttle:
        state.stats.faults.append(FaultRecord("throttle", "", reply.step))
        await state.notify()
        return _error(429, THROTTLE_MESSAGE, "rate_limit_exceeded", "rate_limit_error")
    fault, detail = fault_of(decision)
    if fault is None and reply.tool_call is not None and decision.unthought:
        state.stats.faults.append(FaultRecord("unthought", reply.tool_call.id, reply.step))
    state.stats.played(reply.step, fault=fault, detail=detail,
                       tool_call=reply.tool_call is not None, final=reply.kind == "final")
    await state.notify()
    out = _outgoing(config, body, reply, decision, fp, seen)
    think = config.first_chunk_delay(len(raw), request_rng(config.seed, fp, seen, "ttfb").random())
    if not stream:
        if think > 0:
            await asyncio.sleep(think)
        if decision.stream_error:
            return _error(500, STREAM_ERROR_MESSAGE, "stream_error", "server_error")
        return web.json_response(completion(out))
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    events = sse_events(out, request_rng(config.seed, fp, seen, "chunks"), include_usage=include_usage)
    if decision.stream_error:
        events = cut_with_error(events, STREAM_ERROR_MESSAGE)
    return await play(request, config, events,
                      {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, think)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    config = request.app[CONFIG_KEY]
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "switchboard-simulator"} for name in config.models]
    return web.json_response({"object": "list", "data": data})
