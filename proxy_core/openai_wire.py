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
import re
import time
import uuid
from dataclasses import dataclass, field
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

import orjson

from .contents import MAX_DEPTH, encode
from .errors import ClientRequestError, RunawayAnswer, UpstreamProtocolError, UpstreamStreamError
from .stream import (
    FinishPart, KeepAlivePart, ReasoningPart, StreamPart, TextPart, ToolCallPart, UsagePart,
)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated client request. `body` is the client's JSON, untouched.

    `raw` is the body as the client sent it, when `body` is exactly what it
    says: orjson read it as written (`loads_clean` replaced no lone
    surrogate). `RequestParser` sets it; None where unknown.
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    body: dict[str, Any]
    raw: bytes | None = field(default=None, compare=False, repr=False)


#: Message roles of the chat-completions API (`function` is the legacy one).
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def parse_chat_request(body: Any, raw: bytes | None = None, *,
                       messages_checked: bool = False) -> ChatRequest:
    """Check the shape of a chat-completions body; raise `ClientRequestError` if wrong.
    `raw`: the bytes it was read from exactly as written, if known (`ChatRequest.raw`).
    `messages_checked`: each message passed `check_message` already (`RequestParser`).

    Only what Switchboard itself relies on is checked (it forwards the rest
    untouched): the model, the stream flags, and each message's role, content
    and tool calls. Each problem gets a message naming the field.
    """
    if not isinstance(body, dict):
        raise ClientRequestError("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ClientRequestError("'model' is required and must be a non-empty string",
                                 code="invalid_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ClientRequestError("'messages' is required and must be a non-empty array")
    if not messages_checked:
        for i, message in enumerate(messages):
            check_message(i, message)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ClientRequestError("'stream' must be a boolean")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ClientRequestError("'stream_options' must be an object")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ClientRequestError("'tools' must be an array")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise ClientRequestError(f"tools[{i}] must be an object")
    include_usage = bool(options and options.get("include_usage"))
    return ChatRequest(model, messages, stream, include_usage, body, raw)


def check_message(i: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise ClientRequestError(f"messages[{i}] must be an object")
    role = message.get("role")
    if not isinstance(role, str):
        raise ClientRequestError(f"messages[{i}].role is required and must be a string")
    if role not in ROLES:
        raise ClientRequestError(f"messages[{i}].role {role[:40]!r} is not one of: "
                                 f"{', '.join(ROLES)}", code="invalid_role")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise ClientRequestError(f"messages[{i}].content must be a string, an array of "
                                 "content parts or null")
    if isinstance(content, list):
        for j, block in enumerate(content):
            if not isinstance(block, dict):
                raise ClientRequestError(f"messages[{i}].content[{j}] must be an object")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise ClientRequestError(f"messages[{i}].tool_calls must be an array")
        for j, call in enumerate(calls):
            where = f"messages[{i}].tool_calls[{j}]"
            if not isinstance(call, dict):
                raise ClientRequestError(f"{where} must be an object")
            if not isinstance(call.get("id", ""), str):
                raise ClientRequestError(f"{where}.id must be a string")
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ClientRequestError(f"{where}.function must be an object with a string name")
    call_id = message.get("tool_call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise ClientRequestError(f"messages[{i}].tool_call_id must be a string")


#: A JSON escape of a UTF-16 surrogate (`\\ud800`): JSON allows unpaired ones,
#: UTF-8 cannot carry them. Checked on raw bytes so clean bodies cost one scan.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads_clean(raw: bytes | str) -> Any:
    """`json.loads`, with unpaired surrogates (legal JSON, not UTF-8) replaced by U+FFFD.

    Everything Switchboard records or relays is UTF-8; a lone `\\ud800` in a
    client's history or an upstream's delta would otherwise fail deep inside
    the journal or an event stream. Valid pairs are already joined by `json`.
    This parses every request body and every upstream chunk, so it tries
    orjson first (4-5x faster than `json` on agent-sized bodies, measured
    against msgspec too: bench/README.md); what orjson refuses (lone
    surrogates, a byte-order mark, NaN, huge integers, invalid JSON) takes
    the `json` path, which accepts what `json.loads` accepts and raises its
    error messages.
    """
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    text = raw.decode() if isinstance(raw, bytes) else raw  # bad UTF-8: a ValueError
    if text[:1] == "\ufeff":  # a byte-order mark, as json.loads(bytes) allows
        text = text[1:]
    try:
        try:
            value, end = _DECODER.raw_decode(text)
        except ValueError:
            value, end = json.loads(text), len(text)  # raises, with the position
        if end != len(text) and text[end:].strip():
            json.loads(text)  # raises "Extra data"
        if "\\u" in text and _SURROGATE_ESCAPE.search(text):
            value = _scrub(value)
    except RecursionError:  # deeper than orjson's 1,024 levels: a ValueError like the rest
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    return value


_DECODER = json.JSONDecoder()


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    return value


def internal_error_body() -> dict[str, Any]:
    """What a client gets when Switchboard itself failed (the details go to the log)."""
    return error_body("internal error in Switchboard; see its log", type_="server_error",
                      code="internal_error")


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
        self._held = 0  # characters of arguments held in `_calls`

    def feed(self, chunk: Any) -> list[StreamPart]:
        if type(chunk) is not dict:
            raise UpstreamProtocolError(f"stream chunk is not a JSON object: {str(chunk)[:200]}")
        if chunk.get("error"):
            raise UpstreamStreamError(error_message_from(chunk, "error inside the stream"))
        parts: list[StreamPart] = []
        choices = chunk.get("choices")
        if choices:
            if type(choices) is not list:
                raise UpstreamProtocolError("'choices' is not an array")
            choice = choices[0]
            if type(choice) is not dict:
                raise UpstreamProtocolError("a choice is not an object")
            delta = choice.get("delta") or choice.get("message") or {}
            if type(delta) is not dict:
                raise UpstreamProtocolError("'delta' is not an object")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and type(reasoning) is str:
                    parts.append(ReasoningPart(reasoning))
                content = delta.get("content")
                if content and type(content) is str:
                    parts.append(TextPart(content))
                calls = delta.get("tool_calls")
                if calls:
                    if type(calls) is not list:
                        raise UpstreamProtocolError("'tool_calls' is not an array")
                    for call in calls:
                        self._add_call_fragment(call)
            finish = choice.get("finish_reason")
            if finish:
                parts += self._flush_calls()
                answer_id = chunk.get("id")
                parts.append(FinishPart(str(finish),
                                        answer_id if type(answer_id) is str and answer_id else None))
        usage = chunk.get("usage")
        if usage and type(usage) is dict:
            parts.append(_usage_part(usage))
        return parts

    def _add_call_fragment(self, call: Any) -> None:
        if not isinstance(call, dict):
            raise UpstreamProtocolError("a tool_calls entry is not an object")
        index = call.get("index", len(self._calls))
        if type(index) is not int:
            raise UpstreamProtocolError("tool call index is not an integer")
        pending = self._calls.setdefault(index, _PendingCall())
        if isinstance(call.get("id"), str) and call["id"]:
            pending.id = call["id"]
        function = call.get("function") or {}
        if isinstance(function, dict):
            if isinstance(function.get("name"), str) and function["name"]:
                pending.name = pending.name or function["name"]
            args = function.get("arguments")
            if isinstance(args, dict):
                args = json.dumps(args)
            if isinstance(args, str):
                pending.arguments.append(args)
                self._held += len(args)
        RunawayAnswer.check(self._held, len(self._calls))

    def _flush_calls(self) -> list[StreamPart]:
        parts: list[StreamPart] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
            parts.append(ToolCallPart(call_id, call.name, "".join(call.arguments)))
        self._calls.clear()
        self._held = 0
        return parts

    def finish(self) -> list[StreamPart]:
        """End of stream: tool calls still held (a stream that never gave a finish reason)."""
        return self._flush_calls()


def _usage_part(usage: dict[str, Any]) -> UsagePart:
    """`usage`, with the cache and reasoning counts of its `*_details` when given."""
    def num(table: Any, key: str) -> int:
        value = table.get(key) if type(table) is dict else None
        return value if type(value) is int and value > 0 else 0
    prompt, completion = num(usage, "prompt_tokens"), num(usage, "completion_tokens")
    details = usage.get("prompt_tokens_details")
    # Moonshot reports `cached_tokens` at the top level; OpenAI and OpenRouter in the details.
    cached = num(details, "cached_tokens") or num(usage, "cached_tokens")
    return UsagePart(prompt, completion, num(usage, "total_tokens") or prompt + completion,
                     cached_tokens=min(cached, prompt),
                     cache_write_tokens=min(num(details, "cache_write_tokens"), prompt),
                     reasoning_tokens=min(num(usage.get("completion_tokens_details"),
                                              "reasoning_tokens"), completion))


def usage_dict(part: UsagePart) -> dict[str, Any]:
    """`usage` for the client, with the cache and reasoning details when the host gave
    them (the AI SDK reads them for its cached-input and reasoning token counts)."""
    usage: dict[str, Any] = {"prompt_tokens": part.prompt_tokens,
                             "completion_tokens": part.completion_tokens,
                             "total_tokens": part.total_tokens}
    if part.cached_tokens or part.cache_write_tokens:
        details = {"cached_tokens": part.cached_tokens}
        if part.cache_write_tokens:
            details["cache_write_tokens"] = part.cache_write_tokens
        usage["prompt_tokens_details"] = details
    if part.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": part.reasoning_tokens}
    return usage


def decode_completion(payload: Any) -> list[StreamPart]:
    """Parts of a whole (non-streamed) `chat.completion` response."""
    decoder = ChunkDecoder()
    return decoder.feed(payload) + decoder.finish()


def _json_string(text: str) -> bytes:
    """`text` as a JSON string literal, UTF-8 (lone surrogates escaped as ASCII)."""
    try:
        return encode_basestring(text).encode()
    except UnicodeEncodeError:
        return encode_basestring_ascii(text).encode()


class ChunkEncoder:
    """Encode parts as `chat.completion.chunk` events for a streaming client.

    `event(part)` gives the SSE bytes (`data: {...}\\n\\n`) straight from
    templates made once per stream, so relaying a text delta costs one string
    escape and a few concatenations; `encode(part)` gives the same chunk as a dict.
    """

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._role_sent = False
        self._tool_index = 0
        head = encode({"id": self.id, "object": "chat.completion.chunk",
                            "created": self.created, "model": model})[:-1]
        self._head = b"data: " + head + b","
        self._delta = self._head + b'"choices":[{"index":0,"delta":'
        self._open = self._delta + b'{"role":"assistant",'

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def _prefix(self) -> bytes:
        """The event up to the inside of `delta` (the first one also carries the role)."""
        if self._role_sent:
            return self._delta + b"{"
        self._role_sent = True
        return self._open

    def event(self, part: StreamPart) -> bytes | None:
        """The SSE event for `part`, or None when the client gets nothing for it."""
        kind = type(part)
        if kind is TextPart:
            return (self._prefix() + b'"content":' + _json_string(part.text)  # type: ignore[union-attr]
                    + b'},"finish_reason":null}]}\n\n')
        if kind is ReasoningPart:
            return (self._prefix() + b'"reasoning_content":' + _json_string(part.text)  # type: ignore[union-attr]
                    + b'},"finish_reason":null}]}\n\n')
        if kind is FinishPart:
            prefix = self._prefix()
            if prefix[-1:] == b",":  # the role alone: no trailing comma
                prefix = prefix[:-1]
            return prefix + b'},"finish_reason":' + _json_string(part.reason) + b"}]}\n\n"  # type: ignore[union-attr]
        if kind is KeepAlivePart:
            return None
        if kind is UsagePart and not self.include_usage:
            return None
        chunk = self.encode(part)
        return None if chunk is None else b"data: " + encode(chunk) + b"\n\n"

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
                    "model": self.model, "choices": [], "usage": usage_dict(part)}
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
                "usage": usage_dict(self.usage)}
