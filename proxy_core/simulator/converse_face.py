"""The simulator's Bedrock face: Converse and ConverseStream on the same scripted host.

`POST /model/{modelId}/converse-stream` answers in Bedrock's binary event
stream (`application/vnd.amazon.eventstream`, reference §4), and
`POST /model/{modelId}/converse` with one JSON answer, so the real boto3
client can be pointed at the simulator with `endpoint_url`. The request is
translated back to OpenAI-shaped messages and played by the same script
(`next_reply`) with the same faults as the OpenAI face:

- `leak` puts Kimi's tool-call tokens into the text (or reasoning) deltas
  and stops with `end_turn` (seed 000);
- `hang` sends the 200 headers, then nothing until the client goes away;
- `throttle` answers 429 `ThrottlingException`;
- `stream_error` streams part of the reply, then an `exception` frame
  (`modelStreamErrorException`).

Bedrock's own validation is always on here (it is what the real service
does): alternating roles starting with the user, no empty content or blank
text (reference F5), tool results answering the previous turn's tool uses,
id and name patterns, `toolConfig` present when tool blocks are. A request
for an unknown model gets Bedrock's 400 `ValidationException`. The
OpenAI-face rules `strict`, `orphan` and `empty` do not apply.

Authentication: a request without `Authorization` is refused (403); with
`SimulatorConfig.bearer_token` set, only `Bearer <token>` is accepted. What
each request carried (`bearer`, or the SigV4 credential scope) is kept in
`converse_log(app)` with the request body, for tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .config import SimulatorConfig
from .faults import decide, fault_of, fingerprint, request_rng
from .script import next_reply
from .server import (
    _DISCONNECT_POLL, CONFIG_KEY, STATE_KEY, STREAM_ERROR_MESSAGE, THROTTLE_MESSAGE, _client_gone,
    _outgoing, _record, play,
)
from .stats import FaultRecord, SimulatorState
from .wire import Outgoing, split_text

EVENTSTREAM = "application/vnd.amazon.eventstream"
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_.:-]{1,64}$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SIGV4_SCOPE = re.compile(r"Credential=([^,\s]+)")
#: How many requests `converse_log` keeps.
_LOG_LIMIT = 200


# -- the binary event stream ----------------------------------------------------------

def encode_frame(headers: Sequence[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude, its CRC, string headers, payload, message CRC."""
    encoded = b""
    for name, value in headers:
        raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
        encoded += struct.pack(">B", len(raw_name)) + raw_name
        encoded += struct.pack(">BH", 7, len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event_frame(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """An `event` frame, e.g. `contentBlockDelta` with its JSON payload."""
    return encode_frame([(":event-type", event_type), (":content-type", "application/json"),
                         (":message-type", "event")], _json(payload))


def exception_frame(exception_type: str, payload: Mapping[str, Any]) -> bytes:
    """An `exception` frame, e.g. `modelStreamErrorException`."""
    return encode_frame([(":exception-type", exception_type),
                         (":content-type", "application/json"),
                         (":message-type", "exception")], _json(payload))


def _json(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- what was seen ---------------------------------------------------------------------

@dataclass(frozen=True)
class ConverseSeen:
    """One request to the Converse face."""

    operation: str  # "converse-stream" | "converse"
    model: str
    auth: str       # "bearer", "sigv4 <credential scope>" or "none"
    body: Any


@dataclass
class ConverseLog:
    """The latest requests to the Converse face, oldest first."""

    requests: list[ConverseSeen] = field(default_factory=list)

    def add(self, seen: ConverseSeen) -> None:
        self.requests.append(seen)
        del self.requests[:-_LOG_LIMIT]


LOG_KEY = web.AppKey("converse_log", ConverseLog)


def converse_log(app: web.Application) -> ConverseLog:
    """What the Converse face of `app` has received."""
    return app[LOG_KEY]


# -- errors ----------------------------------------------------------------------------

class BedrockError(Exception):
    """An error answer in Bedrock's REST-JSON shape."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> web.Response:
        return web.json_response({"message": self.message}, status=self.status,
                                 headers={"x-amzn-ErrorType": f"{self.code}:http://internal.amazon.com/coral/com.amazon.bedrock/"})


def _invalid(message: str) -> BedrockError:
    return BedrockError(400, "ValidationException", message)


# -- Converse request → OpenAI-shaped messages, validated as Bedrock does ----------------

def to_openai(body: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The messages and tools of a Converse request, as the script reads them.

    Raises `BedrockError` (400 `ValidationException`) where Bedrock would.
    """
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    tools = _tools(body.get("toolConfig"))
    messages: list[dict[str, Any]] = []
    for n, block in enumerate(_list(body.get("system"), "system")):
        text = block.get("text") if isinstance(block, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _invalid(f"The text field in the SystemContentBlock object at system.{n} is blank.")
        messages.append({"role": "system", "content": text})
    conversation = _list(body.get("messages"), "messages")
    if not conversation:
        raise _invalid("The messages field is required and must not be empty.")
    previous_uses: list[str] = []
    uses_tools = False
    for n, message in enumerate(conversation):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"messages.{n}.role must be user or assistant.")
        role = message["role"]
        if n == 0 and role != "user":
            raise _invalid("A conversation must start with a user message. Try again with a "
                           "conversation that starts with a user message.")
        if n > 0 and role == conversation[n - 1].get("role"):
            raise _invalid("A conversation must alternate between user and assistant roles. "
                           "Make sure the conversation alternates between user and assistant "
                           "roles and try again.")
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise _invalid(f"The content field in the Message object at messages.{n} is empty. "
                           "Add a ContentBlock object to the content field and try again.")
        if role == "assistant":
            converted, previous_uses = _assistant(n, content)
            messages.append(converted)
        else:
            converted_user, answered = _user(n, content)
            missing = [i for i in previous_uses if i not in answered]
            extra = [i for i in answered if i not in previous_uses]
            if extra:
                raise _invalid(f"The number of toolResult blocks at messages.{n}.content exceeds "
                               "the number of toolUse blocks of previous turn.")
            if missing:
                raise _invalid(f"Expected toolResult blocks at messages.{n}.content for the "
                               f"following Ids: {', '.join(missing)}")
            messages += converted_user
            previous_uses = []
        uses_tools = uses_tools or any("toolUse" in b or "toolResult" in b
                                       for b in content if isinstance(b, dict))
    if uses_tools and not tools:
        raise _invalid("The toolConfig field must be defined when using toolUse and toolResult "
                       "content blocks.")
    _check_inference(body.get("inferenceConfig"))
    return messages, tools


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{name} must be a list.")
    return value


def _text(block: Mapping[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _invalid(f"The text field in the ContentBlock object at {where} is blank. "
                       "Add text to the text field, and try again.")
    return text


def _assistant(n: int, content: list[Any]) -> tuple[dict[str, Any], list[str]]:
    texts, reasoning, calls, uses = [], [], [], []
    for k, block in enumerate(content):
        where = f"messages.{n}.content.{k}"
        if not isinstance(block, dict):
            raise _invalid(f"{where} must be an object.")
        if "text" in block:
            texts.append(_text(block, where))
        elif "toolUse" in block:
            use = block["toolUse"]
            use_id, name = use.get("toolUseId"), use.get("name")
            if not isinstance(use_id, str) or not _TOOL_USE_ID.match(use_id):
                raise _invalid(f"Value at '{where}.toolUse.toolUseId' failed to satisfy "
                               "constraint: Member must satisfy regular expression pattern: "
                               "[a-zA-Z0-9_.:-]+ and have length at most 64")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise _invalid(f"Value at '{where}.toolUse.name' failed to satisfy constraint: "
                               "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+")
            uses.append(use_id)
            calls.append({"id": use_id, "type": "function",
                          "function": {"name": name,
                                       "arguments": json.dumps(use.get("input", {}))}})
        elif "reasoningContent" in block:
            text = (block["reasoningContent"].get("reasoningText") or {}).get("text")
            if isinstance(text, str):
                reasoning.append(text)
        else:
            raise _invalid(f"{where}: unsupported content block {sorted(block)}")
    _no_duplicates(uses, f"The toolUse blocks at messages.{n}.content")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message, uses


def _user(n: int, content: list[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Tool results first (as `tool` messages), then the user's own text."""
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    answered: list[str] = []
    for k, block in enumerate(content):
        where = f"messages.{n}.content.{k}"
        if not isinstance(block, dict):
            raise _invalid(f"{where} must be an object.")
        if "text" in block:
            parts.append({"type": "text", "text": _text(block, where)})
        elif "image" in block:
            parts.append(_image(block["image"], where))
        elif "toolResult" in block:
            result = block["toolResult"]
            use_id = result.get("toolUseId")
            inner = result.get("content")
            if not isinstance(inner, list) or not inner:
                raise _invalid(f"The content field in the ToolResultBlock at {where} is empty.")
            texts = [_text(b, f"{where}.toolResult.content.{i}") if "text" in b
                     else json.dumps(b.get("json", b)) for i, b in enumerate(inner)]
            answered.append(use_id)
            results.append({"role": "tool", "tool_call_id": use_id, "content": "\n".join(texts)})
        else:
            raise _invalid(f"{where}: unsupported content block {sorted(block)}")
    _no_duplicates(answered, f"The toolResult blocks at messages.{n}.content")
    if parts:
        results.append({"role": "user", "content": parts})
    return results, answered


def _no_duplicates(ids: list[Any], where: str) -> None:
    """Bedrock refuses a message whose tool uses, or tool results, repeat an id."""
    repeated = sorted({i for i in ids if ids.count(i) > 1}, key=str)
    if repeated:
        raise _invalid(f"{where} contain duplicate Ids: {', '.join(map(str, repeated))}")


def _image(image: Any, where: str) -> dict[str, Any]:
    if not isinstance(image, dict) or image.get("format") not in ("png", "jpeg", "gif", "webp"):
        raise _invalid(f"{where}.image.format must be one of png, jpeg, gif, webp.")
    source = image.get("source") or {}
    if "s3Location" in source:
        return {"type": "image_url", "image_url": {"url": source["s3Location"].get("uri", "")}}
    try:
        data = base64.b64decode(source.get("bytes", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise _invalid(f"{where}.image.source.bytes is not valid base64.") from None
    if not data:
        raise _invalid(f"{where}.image.source.bytes is empty.")
    encoded = base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/{image['format']};base64,{encoded}"}}


def _tools(config: Any) -> list[dict[str, Any]]:
    if config is None:
        return []
    if not isinstance(config, dict) or not isinstance(config.get("tools"), list) or not config["tools"]:
        raise _invalid("toolConfig.tools must be a non-empty list.")
    tools = []
    for n, tool in enumerate(config["tools"]):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise _invalid(f"Value at 'toolConfig.tools.{n}.toolSpec.name' failed to satisfy "
                           "constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+")
        assert isinstance(spec, dict)  # a name was found in it
        schema = (spec.get("inputSchema") or {}).get("json")
        if not isinstance(schema, dict):
            raise _invalid(f"toolConfig.tools.{n}.toolSpec.inputSchema.json is required.")
        tools.append({"type": "function", "function": {
            "name": name, "description": spec.get("description", ""), "parameters": schema}})
    choice = config.get("toolChoice")
    if choice is not None and (not isinstance(choice, dict) or len(choice) != 1
                               or next(iter(choice)) not in ("auto", "any", "tool")):
        raise _invalid("toolConfig.toolChoice must be one of auto, any, tool.")
    return tools


def _check_inference(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict):
        raise _invalid("inferenceConfig must be an object.")
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and not 0 <= value <= 1:
            raise _invalid(f"inferenceConfig.{name} must be between 0 and 1.")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and max_tokens < 1:
        raise _invalid("inferenceConfig.maxTokens must be at least 1.")
    stops = config.get("stopSequences")
    if stops is not None and (len(stops) > 4 or not all(isinstance(s, str) and s for s in stops)):
        raise _invalid("inferenceConfig.stopSequences takes up to 4 non-empty strings.")


# -- replies → Converse -------------------------------------------------------------------

def stop_reason(finish_reason: str) -> str:
    return "tool_use" if finish_reason == "tool_calls" else "end_turn"


def _usage(out: Outgoing) -> dict[str, int]:
    usage = out.usage()
    return {"inputTokens": usage["prompt_tokens"], "outputTokens": usage["completion_tokens"],
            "totalTokens": usage["total_tokens"]}


def stream_frames(out: Outgoing, rng: Any, *, fail: bool = False) -> list[bytes]:
    """Every frame of the reply as ConverseStream sends it.

    Reasoning is block 0 when present, text the next block (with no
    `contentBlockStart`, as Bedrock sends text), the tool call the last
    block. With `fail`, about half the frames are sent and then a
    `modelStreamErrorException` frame ends the stream.
    """
    frames = [event_frame("messageStart", {"role": "assistant"})]
    index = 0
    if out.reasoning:
        for piece in split_text(out.reasoning, rng, high=24):
            frames.append(event_frame("contentBlockDelta", {
                "contentBlockIndex": index, "delta": {"reasoningContent": {"text": piece}}}))
        frames.append(event_frame("contentBlockDelta", {
            "contentBlockIndex": index, "delta": {"reasoningContent": {"signature": "sim-signature"}}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if out.content:
        for piece in split_text(out.content, rng):
            frames.append(event_frame("contentBlockDelta", {
                "contentBlockIndex": index, "delta": {"text": piece}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    call = out.tool_call
    if call is not None:
        frames.append(event_frame("contentBlockStart", {
            "contentBlockIndex": index,
            "start": {"toolUse": {"toolUseId": call.id, "name": call.name}}}))
        for piece in split_text(call.arguments_json, rng, low=8, high=64):
            frames.append(event_frame("contentBlockDelta", {
                "contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
    frames.append(event_frame("messageStop", {"stopReason": stop_reason(out.finish_reason)}))
    frames.append(event_frame("metadata", {"usage": _usage(out), "metrics": {"latencyMs": 1}}))
    if fail:
        keep = max(2, (len(frames) - 2) // 2)
        frames = frames[:keep] + [exception_frame("modelStreamErrorException", {
            "message": STREAM_ERROR_MESSAGE, "originalStatusCode": 500,
            "originalMessage": "upstream model failure"})]
    return frames


def whole_answer(out: Outgoing) -> dict[str, Any]:
    """The `converse` (non-streaming) answer."""
    content: list[dict[str, Any]] = []
    if out.reasoning:
        content.append({"reasoningContent": {"reasoningText": {"text": out.reasoning,
                                                               "signature": "sim-signature"}}})
    if out.content:
        content.append({"text": out.content})
    if out.tool_call is not None:
        content.append({"toolUse": {"toolUseId": out.tool_call.id, "name": out.tool_call.name,
                                    "input": out.tool_call.arguments}})
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason(out.finish_reason), "usage": _usage(out),
            "metrics": {"latencyMs": 1}}


# -- handlers ---------------------------------------------------------------------------

def _auth(config: SimulatorConfig, request: web.Request) -> tuple[str, BedrockError | None]:
    """What the request authenticated with, and the refusal when that is not good enough."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer ") and header[7:].strip():
        label = "bearer"
    elif header.startswith("AWS4-HMAC-SHA256"):
        scope = _SIGV4_SCOPE.search(header)
        label = f"sigv4 {scope.group(1) if scope else '?'}"
    else:
        return "none", BedrockError(403, "AccessDeniedException", "Missing Authentication Token")
    if config.bearer_token is not None and header != f"Bearer {config.bearer_token}":
        return label, BedrockError(403, "AccessDeniedException",
                                   "Authentication failed: Please make sure your API Key is valid.")
    return label, None


async def _hang(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """200 and event-stream headers, then nothing until the client goes away."""
    response = web.StreamResponse(headers={"Content-Type": EVENTSTREAM})
    await response.prepare(request)
    state.stats.hangs_active += 1
    await state.notify()
    try:
        while not state.shutdown.is_set() and not _client_gone(request):
            try:
                await asyncio.wait_for(state.shutdown.wait(), _DISCONNECT_POLL)
            except TimeoutError:
                pass
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        state.stats.hangs_active -= 1
        state.stats.disconnects += 1
        await state.notify()
    return response


async def _play(request: web.Request, operation: str) -> web.StreamResponse:
    config, state = request.app[CONFIG_KEY], request.app[STATE_KEY]
    model = request.match_info["model"]
    try:
        auth, refusal = _auth(config, request)
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise BedrockError(400, "SerializationException", "The request body is not valid JSON.") from None
        request.app[LOG_KEY].add(ConverseSeen(operation, model, auth, body))
        if refusal is not None:
            raise refusal
        if model not in config.models:
            raise _invalid("The provided model identifier is invalid.")
        messages, tools = to_openai(body)
    except BedrockError as exc:
        return exc.response()
    reply = next_reply(messages, tools, config.steps)
    _record(state, messages, reply)
    fp = fingerprint(messages)
    seen = state.sighting(fp)
    decision = decide(config, reply, messages, fp, seen)
    if decision.hang:
        state.stats.faults.append(FaultRecord("hang", "", reply.step))
        return await _hang(request, state)
    if decision.throttle:
        state.stats.faults.append(FaultRecord("throttle", "", reply.step))
        await state.notify()
        return BedrockError(429, "ThrottlingException", THROTTLE_MESSAGE).response()
    fault, detail = fault_of(decision)
    state.stats.played(reply.step, fault=fault, detail=detail,
                       tool_call=reply.tool_call is not None, final=reply.kind == "final")
    await state.notify()
    out = _outgoing(config, {"model": model, "messages": messages}, reply, decision, fp, seen)
    if operation == "converse":
        if decision.stream_error:
            return BedrockError(424, "ModelErrorException", STREAM_ERROR_MESSAGE).response()
        return web.json_response(whole_answer(out))
    frames = stream_frames(out, request_rng(config.seed, fp, seen, "chunks"),
                           fail=decision.stream_error)
    return await play(request, config, list(frames),
                      {"Content-Type": EVENTSTREAM,
                       "x-amzn-RequestId": f"sim-{int(time.time() * 1000)}"})


async def converse_stream(request: web.Request) -> web.StreamResponse:
    """`POST /model/{modelId}/converse-stream`."""
    return await _play(request, "converse-stream")


async def converse(request: web.Request) -> web.StreamResponse:
    """`POST /model/{modelId}/converse`."""
    return await _play(request, "converse")


def add_converse_routes(app: web.Application) -> None:
    """Mount the Converse face on a simulator app."""
    app[LOG_KEY] = ConverseLog()
    app.router.add_post("/model/{model}/converse-stream", converse_stream)
    app.router.add_post("/model/{model}/converse", converse)
