"""The internal stream: what upstream adapters produce and the pipeline relays.

Every upstream kind (OpenAI-compatible, Bedrock Converse, the simulator)
translates its wire format into these parts, so repairs, the watchdog and
the client encoder are written once. Tool calls arrive *whole*: adapters
hold argument fragments until the call is complete, which keeps a stall in
the middle of a tool call retryable and lets the client receive the
arguments in a single delta (the AI SDK finalises a call as soon as its
arguments parse as JSON).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TextPart:
    """A piece of assistant text (`delta.content`)."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    """A piece of model reasoning (`delta.reasoning_content`)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallPart:
    """One complete tool call: id, function name and whole JSON arguments.

    `upstream_id` is the id the upstream used, when Switchboard gave the
    client a different one (Kimi-native ids, calls recovered from leaks).
    """

    id: str
    name: str
    arguments: str
    upstream_id: str | None = None


@dataclass(frozen=True, slots=True)
class UsagePart:
    """Token usage reported by the upstream (see `record.Usage` for what each count means)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class FinishPart:
    """The upstream said why it stopped (OpenAI `finish_reason` vocabulary).

    `response_id` is the host's id for its answer (OpenAI's `chatcmpl-…`), when it
    gave one; it does not take part in comparisons.
    """

    reason: str
    response_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class KeepAlivePart:
    """The upstream sent a keep-alive. Shows the link is up; is not progress."""


StreamPart = TextPart | ReasoningPart | ToolCallPart | UsagePart | FinishPart | KeepAlivePart

#: Parts that count as the model making progress (for the idle watchdog and
#: for the commit boundary).
PROGRESS_PARTS = (TextPart, ReasoningPart, ToolCallPart)
