"""OpenAI chat-completions wire format: SSE chunks and whole completions."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from .script import ToolCall

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": ping\n\n"


@dataclass(frozen=True)
class Outgoing:
    """What the host sends for one request, faults already applied."""

    completion_id: str
    model: str
    created: int
    content: str
    reasoning: str
    tool_call: ToolCall | None
    finish_reason: str
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        """A rough token count of everything generated."""
        args = self.tool_call.arguments_json if self.tool_call else ""
        return (len(self.content) + len(self.reasoning) + len(args)) // 4 + 1

    def usage(self) -> dict[str, int]:
        """The ``usage`` object."""
        completion = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }


def split_text(text: str, rng: random.Random, *, low: int = 1, high: int = 9) -> list[str]:
    """Cut text into small pieces at random places (markers get split too)."""
    pieces: list[str] = []
    position = 0
    while position < len(text):
        size = rng.randint(low, high)
        pieces.append(text[position : position + size])
        position += size
    return pieces


def _event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


def _chunk(out: Outgoing, delta: dict[str, object], finish_reason: str | None = None) -> bytes:
    return _event(
        {
            "id": out.completion_id,
            "object": "chat.completion.chunk",
            "created": out.created,
            "model": out.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def sse_events(out: Outgoing, rng: random.Random, *, include_usage: bool) -> list[bytes]:
    """Every SSE event of the streamed reply, ``data: [DONE]`` last."""
    events = [_chunk(out, {"role": "assistant", "content": ""})]
    events += [_chunk(out, {"reasoning_content": piece}) for piece in split_text(out.reasoning, rng, high=24)]
    events += [_chunk(out, {"content": piece}) for piece in split_text(out.content, rng)]
    call = out.tool_call
    if call is not None:
        head = {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        events.append(_chunk(out, {"tool_calls": [head]}))
        for piece in split_text(call.arguments_json, rng, low=8, high=64):
            events.append(_chunk(out, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    events.append(_chunk(out, {}, out.finish_reason))
    if include_usage:
        events.append(
            _event(
                {
                    "id": out.completion_id,
                    "object": "chat.completion.chunk",
                    "created": out.created,
                    "model": out.model,
                    "choices": [],
                    "usage": out.usage(),
                }
            )
        )
    events.append(DONE)
    return events


def cut_with_error(events: list[bytes], message: str) -> list[bytes]:
    """Half of the reply's events, then ``data: {"error": ...}`` and the end (F6)."""
    keep = max(2, (len(events) - 1) // 2)
    error = {"error": {"message": message, "type": "server_error", "code": "stream_error"}}
    return events[:keep] + [_event(error)]


def completion(out: Outgoing) -> dict[str, object]:
    """The non-streaming ``chat.completion`` object."""
    message: dict[str, object] = {"role": "assistant", "content": out.content}
    if out.reasoning:
        message["reasoning_content"] = out.reasoning
    if out.tool_call is not None:
        call = out.tool_call
        message["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json}}
        ]
    return {
        "id": out.completion_id,
        "object": "chat.completion",
        "created": out.created,
        "model": out.model,
        "choices": [{"index": 0, "message": message, "finish_reason": out.finish_reason}],
        "usage": out.usage(),
    }
