"""The OpenAI chat-completions wire format, both directions.

- `parse_chat_request` validates what a client sent.
- `ChunkDecoder` turns upstream `chat.completion.chunk` dicts into stream
  parts, assembling tool-call fragments into whole calls.
- `ChunkEncoder` turns stream parts into chunks for the client.
- `CompletionBuilder` turns stream parts into one `chat.completion` for
  clients that did not ask for a stream.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import ClientRequestError, UpstreamProtocolError, UpstreamStreamError
from .stream import (
    FinishPart, KeepAlivePart, ReasoningPart, StreamPart, TextPart, ToolCallPart, UsagePart,
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated client request. `body` is the client's JSON, untouched."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    body: dict[str, Any]


def parse_chat_request(body: Any) -> ChatRequest:
    """Check the shape of a chat-completions body; raise `ClientRequestError` if wrong."""
    if not isinstance(body, dict):
        raise ClientRequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ClientRequestError("'model' is required and must be a non-empty string",
                                 code="invalid_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientRequestError("'messages' is required and must be a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ClientRequestError(f"messages[{i}] must be an object")
        if not isinstance(message.get("role"), str):
            raise ClientRequestError(f"messages[{i}].role is required and must be a string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ClientRequestError("'stream' must be a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ClientRequestError("'stream_options' must be an object")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ClientRequestError("'tools' must be an array")
    include_usage = bool(options and options.get("include_usage"))
    return ChatRequest(model, messages, stream, include_usage, body)


def error_body(message: str, *, type_: str = "invalid_request_error",
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_message_from(payload: Any, fallback: str) -> str:
    """Pull a human message out of an upstream error payload of any common shape."""
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("Message") or err.get("detail")
            if isinstance(msg, str) and msg:
                return msg
        if isinstance(err, str) and err:
            return err
        msg = payload.get("message")
        if isinstance(msg, str) and msg:
            return msg
    return fallback


class _PendingCall:
    __slots__ = ("id", "name", "arguments")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


class ChunkDecoder:
    """Decode upstream chunks into parts.

    Tool-call fragments are held and emitted whole, just before the finish
    reason (or at the end of a stream that never gave one).
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PendingCall] = {}

    def feed(self, chunk: Any) -> list[StreamPart]:
        if not isinstance(chunk, dict):
            raise UpstreamProtocolError(f"stream chunk is not a JSON object: {str(chunk)[:200]}")
        if "error" in chunk and chunk["error"]:
            raise UpstreamStreamError(error_message_from(chunk, "error inside the stream"))
        parts: list[StreamPart] = []
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise UpstreamProtocolError("'choices' is not an array")
        for choice in choices[:1]:
            if not isinstance(choice, dict):
                raise UpstreamProtocolError("a choice is not an object")
            delta = choice.get("delta") or choice.get("message") or {}
            if not isinstance(delta, dict):
                raise UpstreamProtocolError("'delta' is not an object")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                parts.append(ReasoningPart(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                parts.append(TextPart(content))
            for call in delta.get("tool_calls") or ():
                self._add_call_fragment(call)
            if choice.get("finish_reason"):
                parts += self._flush_calls()
                parts.append(FinishPart(str(choice["finish_reason"])))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            parts.append(_usage_part(usage))
        return parts

    def _add_call_fragment(self, call: Any) -> None:
        if not isinstance(call, dict):
            raise UpstreamProtocolError("a tool_calls entry is not an object")
        index = call.get("index", len(self._calls))
        if not isinstance(index, int):
            raise UpstreamProtocolError("tool call index is not an integer")
        pending = self._calls.setdefault(index, _PendingCall())
        if isinstance(call.get("id"), str) and call["id"]:
            pending.id = call["id"]
        function = call.get("function") or {}
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"]:
                pending.name = pending.name or function["name"]
            args = function.get("arguments")
            if isinstance(args, str):
                pending.arguments.append(args)
            elif isinstance(args, dict):
                pending.arguments.append(json.dumps(args))

    def _flush_calls(self) -> list[StreamPart]:
        parts: list[StreamPart] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
            parts.append(ToolCallPart(call_id, call.name, "".join(call.arguments)))
        self._calls.clear()
        return parts

    def finish(self) -> list[StreamPart]:
        """End of stream: tool calls still held (a stream that never gave a finish reason)."""
        return self._flush_calls()


def _usage_part(usage: dict[str, Any]) -> UsagePart:
    def num(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) else 0
    prompt, completion = num("prompt_tokens"), num("completion_tokens")
    return UsagePart(prompt, completion, num("total_tokens") or prompt + completion)


def decode_completion(payload: Any) -> list[StreamPart]:
    """Parts of a whole (non-streamed) `chat.completion` response."""
    decoder = ChunkDecoder()
    return decoder.feed(payload) + decoder.finish()


class ChunkEncoder:
    """Encode parts as `chat.completion.chunk` dicts for a streaming client."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._role_sent = False
        self._tool_index = 0

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def encode(self, part: StreamPart) -> dict[str, Any] | None:
        if isinstance(part, TextPart):
            return self._chunk({"content": part.text})
        if isinstance(part, ReasoningPart):
            return self._chunk({"reasoning_content": part.text})
        if isinstance(part, ToolCallPart):
            index = self._tool_index
            self._tool_index += 1
            return self._chunk({"tool_calls": [{
                "index": index, "id": part.id, "type": "function",
                "function": {"name": part.name, "arguments": part.arguments}}]})
        if isinstance(part, FinishPart):
            return self._chunk({}, part.reason)
        if isinstance(part, UsagePart):
            if not self.include_usage:
                return None
            return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [],
                    "usage": {"prompt_tokens": part.prompt_tokens,
                              "completion_tokens": part.completion_tokens,
                              "total_tokens": part.total_tokens}}
        if isinstance(part, KeepAlivePart):
            return None
        raise TypeError(f"cannot encode {part!r}")


class CompletionBuilder:
    """Collect parts into one `chat.completion` response body."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCallPart] = []
        self.finish = "stop"
        self.usage = UsagePart()

    def add(self, part: StreamPart) -> None:
        if isinstance(part, TextPart):
            self.text.append(part.text)
        elif isinstance(part, ReasoningPart):
            self.reasoning.append(part.text)
        elif isinstance(part, ToolCallPart):
            self.calls.append(part)
        elif isinstance(part, FinishPart):
            self.finish = part.reason
        elif isinstance(part, UsagePart):
            self.usage = part

    def build(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls]
        return {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "object": "chat.completion",
                "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish}],
                "usage": {"prompt_tokens": self.usage.prompt_tokens,
                          "completion_tokens": self.usage.completion_tokens,
                          "total_tokens": self.usage.total_tokens}}
