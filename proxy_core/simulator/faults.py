"""Fault injection: which faults fire on a request, and what they look like.

Every decision is a pure function of the seed, a fingerprint of the
request's conversation and how many times that same fingerprint was seen
before, so a run repeats byte for byte and a retry of an identical request
can succeed where the first attempt hung. The fingerprint leaves out where
and when the agent runs (its system prompt, which names the working folder
and the date, and the folder wherever the conversation repeats it): the
same task in any folder, on any day, meets the same faults.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from .config import SimulatorConfig
from .leak_grammar import WildLeak, wild_leak
from .script import Reply, ToolCall, text_of, working_directory

LeakVariant = Literal[
    "canonical",
    "spaced",
    "singular",
    "bare",
    "no_section_end",
    "multiline_json",
    "xml",
    "reasoning",
    "think",
]

#: Every leak form of reference §2, cycled through by tool-call index.
LEAK_VARIANTS: tuple[LeakVariant, ...] = get_args(LeakVariant)

ORPHAN_MESSAGE = "messages with role 'tool' must be a response to a preceding message with 'tool_calls'"


@dataclass(frozen=True)
class HostError:
    """An error the host answers instead of a completion."""

    status: int
    message: str
    code: str
    fault: str

    def body(self) -> dict[str, dict[str, str]]:
        """The OpenAI-shaped error body."""
        return {"error": {"message": self.message, "type": "invalid_request_error", "code": self.code}}


@dataclass(frozen=True)
class FaultDecision:
    """The faults chosen for one request."""

    hang: bool = False
    #: Answer 429 (rate limited) instead of playing the step.
    throttle: bool = False
    #: Stream part of the reply, then an error inside the 200 stream (F6).
    stream_error: bool = False
    leak: LeakVariant | None = None
    #: The tool call leaks in a shape drawn from the mutated grammar.
    wild: bool = False
    #: Reasoning, then the turn ends: no text, no call (Kimi K2.6 on a tool follow-up).
    empty_reply: bool = False
    #: Under ``strict``: the step calls its tool without thinking first, so
    #: a client that replays history as-is sends no ``reasoning_content``.
    unthought: bool = False


def fault_of(decision: FaultDecision) -> tuple[str | None, str]:
    """The fault a decision plays instead of the reply (kind, detail), for the stats."""
    if decision.stream_error:
        return "stream_error", ""
    if decision.leak is not None:
        return "leak", decision.leak
    if decision.wild:
        return "leak_wild", ""
    if decision.empty_reply:
        return "empty_reply", ""
    return None, ""


@dataclass(frozen=True)
class LeakedText:
    """A tool call rendered as leaked tokens, and where each part goes."""

    content: str
    reasoning: str


def fingerprint(messages: Sequence[Mapping[str, object]]) -> str:
    """A stable digest of the request's conversation: its messages but the system
    prompt, with the working folder written as `{workdir}`."""
    conversation = [m for m in messages if m.get("role") != "system"]
    canonical = json.dumps(conversation, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    folder = working_directory(messages)
    if folder and folder != "/":
        canonical = canonical.replace(json.dumps(folder, ensure_ascii=False)[1:-1], "{workdir}")
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def request_rng(seed: int, fp: str, seen: int, purpose: str) -> random.Random:
    """A random generator for one purpose on one sighting of one request."""
    return random.Random(f"{seed}:{fp}:{seen}:{purpose}")


def call_index(call: ToolCall) -> int:
    """The dialog-wide counter at the end of a Kimi id ``functions.name:N``."""
    _, _, tail = call.id.rpartition(":")
    return int(tail) if tail.isdigit() else 0


def decide(config: SimulatorConfig, reply: Reply, messages: Sequence[Mapping[str, object]], fp: str, seen: int) -> FaultDecision:
    """Choose the faults for a request.

    ``hang`` fires only right after a tool result and on at most
    ``hang_repeats`` sightings of a fingerprint, so a retry goes through;
    ``throttle`` and ``stream_error`` fire on any request, on at most
    ``hang_repeats`` sightings too. ``leak``
    fires only on a tool-call step; its variant cycles with the call index.
    ``unthought`` (under ``strict``) drops a tool-call step's reasoning, the
    bait for the next request's ``reasoning_content is missing`` error.
    """
    after_tool = bool(messages) and messages[-1].get("role") == "tool"
    if config.has("hang") and after_tool and seen < config.hang_repeats:
        if request_rng(config.seed, fp, seen, "hang").random() < config.fault_rate:
            return FaultDecision(hang=True)
    if config.has("empty_reply") and after_tool and seen < config.hang_repeats:
        if request_rng(config.seed, fp, seen, "empty_reply").random() < config.fault_rate:
            return FaultDecision(empty_reply=True)
    for fault in ("throttle", "stream_error"):
        if config.has(fault) and seen < config.hang_repeats:
            if request_rng(config.seed, fp, seen, fault).random() < config.fault_rate:
                return FaultDecision(throttle=True) if fault == "throttle" else \
                    FaultDecision(stream_error=True)
    if config.has("leak_wild") and reply.tool_call is not None:
        if request_rng(config.seed, fp, seen, "leak_wild").random() < config.fault_rate:
            return FaultDecision(wild=True)
    if config.has("leak") and reply.tool_call is not None:
        if request_rng(config.seed, fp, seen, "leak").random() < config.fault_rate:
            index = (config.seed + call_index(reply.tool_call)) % len(LEAK_VARIANTS)
            return FaultDecision(leak=LEAK_VARIANTS[index])
    if config.has("strict") and reply.tool_call is not None:
        if request_rng(config.seed, fp, seen, "strict").random() < config.fault_rate:
            return FaultDecision(unthought=True)
    return FaultDecision()


def _kimi_tokens(call: ToolCall, *, sep: str = "", section: tuple[str, str] | None, multiline: bool = False) -> str:
    """The Kimi native grammar for one call, with variations."""
    args = json.dumps(call.arguments, ensure_ascii=False, indent=2 if multiline else None)
    parts = []
    if section is not None:
        parts.append(section[0])
    parts += ["<|tool_call_begin|>", call.id, "<|tool_call_argument_begin|>", args, "<|tool_call_end|>"]
    if section is not None and section[1]:
        parts.append(section[1])
    return sep.join(parts)


def _xml_form(call: ToolCall) -> str:
    lines = [f"<function={call.name}>"]
    for key, value in call.arguments.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        lines.append(f"<parameter={key}>{text}</parameter>")
    lines.append("</function>")
    return "\n".join(lines)


_PLURAL = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>")
_SINGULAR = ("<|tool_call_section_begin|>", "<|tool_call_section_end|>")


def render_leak(reply: Reply, variant: LeakVariant) -> LeakedText:
    """Render the reply's tool call as text that leaked Kimi's tokens."""
    call = reply.tool_call
    if call is None:
        raise ValueError("only a tool-call reply can leak")
    text, reasoning = reply.text, reply.reasoning
    if variant == "canonical":
        return LeakedText(f"{text}{_kimi_tokens(call, section=_PLURAL)}", reasoning)
    if variant == "spaced":
        return LeakedText(f"{text}\n{_kimi_tokens(call, sep=chr(10) + ' ', section=_PLURAL)}\n", reasoning)
    if variant == "singular":
        return LeakedText(f"{text} {_kimi_tokens(call, section=_SINGULAR)}", reasoning)
    if variant == "bare":
        return LeakedText(f"{text}\n{_kimi_tokens(call, section=None)}", reasoning)
    if variant == "no_section_end":
        return LeakedText(f"{text}{_kimi_tokens(call, section=(_PLURAL[0], ''))}", reasoning)
    if variant == "multiline_json":
        return LeakedText(f"{text}\n{_kimi_tokens(call, sep=chr(10), section=_PLURAL, multiline=True)}", reasoning)
    if variant == "xml":
        return LeakedText(f"{text}\n{_xml_form(call)}", reasoning)
    if variant == "reasoning":
        return LeakedText(text, f"{reasoning}\n{_kimi_tokens(call, section=_PLURAL)}")
    # "think": the reasoning and the call inside an unclosed <think> in the text.
    return LeakedText(f"<think>{reasoning}\n{_kimi_tokens(call, sep=' ', section=_PLURAL)}", "")


def render_wild_leak(reply: Reply, seed: int, seen: int) -> tuple[LeakedText, WildLeak]:
    """Render the reply's tool call in a shape drawn from the mutated grammar.

    A leak that starts in the reasoning ends the reasoning and opens the
    content; otherwise it follows the reply's text. A newline always
    separates it from the prose before it. The shape is drawn for the step
    (its call's index, as `leak` picks its variant), not for the request's
    text: a task leaks the same shapes for a seed whatever the client's
    prompt says about its machine (opencode's names its working directory).
    """
    call = reply.tool_call
    if call is None:
        raise ValueError("only a tool-call reply can leak")
    index = call_index(call)
    rng = request_rng(seed, f"call {index}", seen, "wild_shape")
    leak = wild_leak(call.name, call.arguments, index, rng)
    if leak.reasoning:
        return LeakedText(leak.content, f"{reply.reasoning}\n{leak.reasoning}"), leak
    return LeakedText(f"{reply.text}\n{leak.content}", reply.reasoning), leak


def _strict_error(messages: Sequence[Mapping[str, object]]) -> HostError | None:
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or not message.get("tool_calls"):
            continue
        reasoning = message.get("reasoning_content")
        if not isinstance(reasoning, str) or reasoning == "":
            text = f"thinking is enabled but reasoning_content is missing in assistant tool call message at index {index}"
            return HostError(400, text, "reasoning_content_missing", "strict")
    return None


def _orphan_error(messages: Sequence[Mapping[str, object]]) -> HostError | None:
    known: set[str] = set()
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            calls = message.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    known.add(call["id"])
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in known:
                return HostError(400, ORPHAN_MESSAGE, "orphan_tool_message", "orphan")
    return None


def _is_empty(content: object) -> bool:
    if content is None:
        return True
    if isinstance(content, list):
        return not content or all(isinstance(p, dict) and p.get("type") == "text" and not p.get("text") for p in content)
    return text_of(content) == ""


def _empty_error(messages: Sequence[Mapping[str, object]]) -> HostError | None:
    for index, message in enumerate(messages):
        if message.get("role") == "assistant" and not message.get("tool_calls") and _is_empty(message.get("content")):
            text = f"The content field in the Message object at messages.{index} is empty"
            return HostError(400, text, "empty_content", "empty")
    return None


def validate(config: SimulatorConfig, messages: Sequence[Mapping[str, object]]) -> HostError | None:
    """Apply the validation rules enabled in ``config``; the first failure wins."""
    rules = (("strict", _strict_error), ("orphan", _orphan_error), ("empty", _empty_error))
    for name, rule in rules:
        if config.has(name):
            error = rule(messages)
            if error is not None:
                return error
    return None
