"""Repairs to the conversation history on its way upstream.

`repair_history` returns a new message list (the client's is never
mutated) and a note per repair. Steps run in this order, each only when the
plan asks for it:

1. structure — calls of one message that share an id get an id each (the
   results that follow answer them in order); tool results that answer no
   call get their call back from memory (F4), or become plain context text
   when the call is unknown or belongs to an earlier message than the one
   they follow; a second result for one call becomes context text too;
   calls left unanswered before the next user message get a placeholder
   result (the AI SDK and strict hosts both reject them); malformed
   argument JSON is mended.
2. reasoning — assistant tool-call messages without `reasoning_content`
   get the reasoning Switchboard streamed with those calls, else the
   upstream's placeholder (`reasoning_placeholder`, " " by default) (F3).
3. empty — empty text blocks are dropped; an assistant message left empty
   is removed, or its content set to null when it carries tool calls (F5).
4. native_ids — every tool-call id becomes Kimi's `functions.NAME:IDX`.

A message a step changes becomes a new object, and the same message changed
the same way gives the same object on every turn (`_Derived`): an agent
resends its history each turn, and downstream work keyed by identity (the
upstream body's encodings, the journal's part names) is then done once per
message, not once per turn.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

from ..list_memo import starts_with
from ..lru import LRU
from .ids import kimi_id
from .json_args import repair_json_arguments
from .memory import RememberedCall, ToolCallMemory
from .profiles import RepairPlan

Message = dict[str, Any]

PLACEHOLDER_RESULT = ("[Switchboard: this tool call got no result before the conversation "
                      "moved on; treat it as not run.]")


@dataclass(frozen=True, slots=True)
class Note:
    """One repair: its kind and short before/after excerpts (for people), and the id of the
    tool call it is about, if any (for programs: nothing parses the excerpts)."""

    kind: str
    before: str
    after: str
    call_id: str | None = None


class _Derived:
    """What a step made of a message before: (step, message, how) -> the result.

    Keyed by the message's identity and held with it, so the id cannot be
    reused while remembered; `how` is whatever else the result depends on.
    At most `limit` results and about `max_bytes` of messages (their text
    fields, `_size`) are kept, least recently used dropped first; a message
    over a sixteenth of that is derived again each time.
    """

    def __init__(self, limit: int = 16_384, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._items: LRU[tuple[str, int], tuple[Message, Any, Message]] = LRU(max_bytes, limit)

    def get(self, step: str, message: Message, how: Any,
            make: Callable[[], Message]) -> Message:
        key = (step, id(message))
        kept = self._items.get(key)
        if kept is not None and kept[0] is message and kept[1] == how:
            return kept[2]
        result = make()
        self._items.put(key, (message, how, result), _size(message))
        return result


def _size(message: Message) -> int:
    """About what a message holds (a derived one shares its fields): worked out once per
    message a step changes, never for one it leaves alone."""
    return 256 + sum(len(v) if isinstance(v, str) else len(str(v)) for v in message.values())


_derived = _Derived()


def _with(message: Message, key: str, value: Any) -> Message:
    return {**message, key: value}


def excerpt(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: What an assistant tool-call message gets as `reasoning_content` when no
#: reasoning is remembered for it (Moonshot accepts a space, rejects "").
DEFAULT_REASONING_PLACEHOLDER = " "


def repair_history(messages: list[Message], plan: RepairPlan,
                   memory: ToolCallMemory | None = None, *,
                   placeholder: str = DEFAULT_REASONING_PLACEHOLDER
                   ) -> tuple[list[Message], list[Note]]:
    out, notes = _run(messages, plan, _State(memory), placeholder)
    return out, [note for step in notes for note in step]


class _State:
    """What the steps carry from one stretch of a history to the next, and the memory's
    answers they used (`HistoryRepairs` checks those are still the answers)."""

    __slots__ = ("memory", "known", "counter", "mapping", "answers")

    def __init__(self, memory: ToolCallMemory | None) -> None:
        self.memory = memory
        self.known: set[str] = set()         # call ids of the assistant messages so far
        self.counter = 0                     # native ids given so far
        self.mapping: dict[str, str] = {}    # a call's id as sent -> its native id
        self.answers: list[tuple[str, RememberedCall | None]] = []

    def recall(self, call_id: str) -> RememberedCall | None:
        if self.memory is None:
            return None
        answer = self.memory.recall(call_id)
        self.answers.append((call_id, answer))
        return answer

    def copy(self) -> _State:
        other = _State(self.memory)
        other.known, other.counter = set(self.known), self.counter
        other.mapping, other.answers = dict(self.mapping), list(self.answers)
        return other


#: The notes of a run, one list per step, in the order the steps run.
_STEPS = 6


def _run(messages: list[Message], plan: RepairPlan, state: _State,
         placeholder: str) -> tuple[list[Message], list[list[Note]]]:
    """Every step over a stretch of history that starts where a group starts (a message
    that is not a tool result): the steps never reach across such a boundary, except
    through `state`, so stretches run one after the other give what the whole gives."""
    notes: list[list[Note]] = [[] for _ in range(_STEPS)]
    out = list(messages)
    if plan.structure:
        _unique_call_ids(out, notes[0])
        out = _restore_orphans(out, state, notes[1])
        out = _answer_unanswered(out, notes[2])
        _mend_arguments(out, notes[3])
    if plan.reasoning:
        _fill_reasoning(out, state, notes[4], placeholder)
    if plan.empty:
        out = _drop_empty(out, notes[5])
    if plan.native_ids:
        _to_native_ids(out, state)
    return out, notes


def _group_start(messages: list[Message], lo: int) -> int:
    """Where the last group of `messages` starts (its last message that is not a tool
    result), or `lo` if none after it."""
    for i in range(len(messages) - 1, lo - 1, -1):
        if messages[i].get("role") != "tool":
            return i
    return lo


class HistoryRepairs:
    """`repair_history` for agents: the part of a history repaired on an earlier turn is
    not repaired again.

    An agent's history each turn is the last one with a message or two
    added, as the very objects (`RequestParser`). For a few recent
    histories this keeps the repaired messages and notes of all groups but
    the last, and the steps' state after them. A history that starts with
    those very messages, where a group starts right after them, and for
    which the memory still gives the answers the steps used, is repaired
    from there on only. Exact, not approximate: each step works group by
    group, carrying only `_State` across (see `_run`).

    Up to `per_history` such repairs are kept for each history start (its
    first message), and the longest one that fits is used: turns of one
    conversation that overlap (an agent's parallel requests, several
    clients replaying one history) arrive out of order, and a kept repair
    longer than the history at hand does not fit it.

    A kept repair holds its history's message objects, so the repairs kept
    also add up to at most `max_bytes`, each counted at the `size` of the
    request it came from (`repair`'s argument; what it holds is at most that).
    """

    def __init__(self, memory: ToolCallMemory | None, histories: int = 16,
                 per_history: int = 4, max_bytes: int = 128 * 1024 * 1024) -> None:
        self.memory = memory
        self.histories = histories
        self.per_history = per_history
        self.max_bytes = max_bytes
        self.bytes = 0
        self.reused = 0
        self._kept: OrderedDict[tuple[int, RepairPlan, str], list[_Kept]] = OrderedDict()

    def repair(self, messages: list[Message], plan: RepairPlan, *,
               placeholder: str = DEFAULT_REASONING_PLACEHOLDER, size: int = 0
               ) -> tuple[list[Message], list[Note]]:
        if not messages:
            return repair_history(messages, plan, self.memory, placeholder=placeholder)
        key = (id(messages[0]), plan, placeholder)
        kept_here = self._kept.pop(key, None) or []
        self.bytes -= sum(k.size for k in kept_here)
        # The longest that fits: tried longest first, since all of a session's kept
        # repairs start like its history and each check asks the memory again.
        best = next((k for k in sorted(kept_here, key=_end, reverse=True)
                     if k.fits(messages, self.memory)), None)
        if best is not None:
            start, out = best.end, list(best.out)
            notes, state = [list(step) for step in best.notes], best.state.copy()
            self.reused += 1
        else:
            start, out = 0, []
            notes, state = [[] for _ in range(_STEPS)], _State(self.memory)
        if best is not None:  # most recently used last
            kept_here.remove(best)
            kept_here.append(best)
        end = _group_start(messages, start)
        if end > start:
            done, more = _run(messages[start:end], plan, state, placeholder)
            out += done
            for step, added in zip(notes, more, strict=True):
                step += added
            kept_here = [k for k in kept_here if k.end != end]
            if size <= self.max_bytes:
                kept_here.append(_Kept(messages[:end], end, list(out),
                                       [list(step) for step in notes], state.copy(), size))
        kept_here = kept_here[-self.per_history:]
        while sum(k.size for k in kept_here) > self.max_bytes:  # its oldest go first
            kept_here.pop(0)
        self._kept[key] = kept_here
        self.bytes += sum(k.size for k in kept_here)
        while len(self._kept) > self.histories or self.bytes > self.max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self.bytes -= sum(k.size for k in dropped)
        rest, more = _run(messages[end:], plan, state, placeholder)
        return out + rest, [note for step, added in zip(notes, more, strict=True)
                            for note in step + added]


def _end(kept: _Kept) -> int:
    return kept.end


class _Kept:
    """A history's repair up to where its last group starts."""

    __slots__ = ("messages", "end", "out", "notes", "state", "size")

    def __init__(self, messages: list[Message], end: int, out: list[Message],
                 notes: list[list[Note]], state: _State, size: int = 0) -> None:
        self.messages, self.end, self.out, self.notes, self.state, self.size = (
            messages, end, out, notes, state, size)

    def fits(self, messages: list[Message], memory: ToolCallMemory | None) -> bool:
        end = self.end
        if len(messages) < end or (len(messages) > end and messages[end].get("role") == "tool"):
            return False
        if not starts_with(messages, self.messages):
            return False
        return memory is self.state.memory and all(
            (memory.recall(call_id) if memory is not None else None) is answer
            for call_id, answer in self.state.answers)


def _calls(message: Message) -> list[Any]:
    calls = message.get("tool_calls")
    return calls if isinstance(calls, list) else []


def _call_id(call: Any) -> str | None:
    return call.get("id") if isinstance(call, dict) and isinstance(call.get("id"), str) else None


def _unique_call_ids(messages: list[Message], notes: list[Note]) -> None:
    """Calls of one assistant message that repeat an id become `id`, `id-2`, ... and the
    results of its group answer them in order: Bedrock refuses repeated ids, and a
    result could not say which of the calls it answers."""
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        ids = [_call_id(call) for call in _calls(message)]
        named = [i for i in ids if i]
        if len(set(named)) == len(named):
            continue
        taken, seen = set(named), dict.fromkeys(named, 0)
        renamed: list[str | None] = []
        order: dict[str, list[str]] = {}
        for call_id in ids:
            if call_id is None:
                renamed.append(None)
                continue
            seen[call_id] += 1
            new, k = call_id, seen[call_id]
            while k > 1 and new in taken:
                new, k = f"{call_id}-{k}", k + 1
            taken.add(new)
            renamed.append(new)
            order.setdefault(call_id, []).append(new)
        messages[index] = _derived.get("unique_ids", message, tuple(renamed),
                                       partial(_renamed, message, renamed))
        for call_id, news in order.items():
            if len(news) > 1:
                notes.append(Note("duplicate_tool_call_id", f"{len(news)} calls with id {call_id}",
                                  ", ".join(news), call_id))
        j = index + 1
        while j < len(messages) and messages[j].get("role") == "tool":
            result = messages[j]
            answered = result.get("tool_call_id")
            queue = order.get(answered) if isinstance(answered, str) else None
            if queue:  # results past the calls keep the id: second results (see below)
                new = queue.pop(0)
                if new != answered:
                    messages[j] = _derived.get("unique_ids", result, new,
                                               partial(_with, result, "tool_call_id", new))
            j += 1


def _restore_orphans(messages: list[Message], state: _State,
                     notes: list[Note]) -> list[Message]:
    out: list[Message] = []
    known = state.known
    for message in messages:
        role = message.get("role")
        if role == "assistant":
            known.update(i for i in map(_call_id, _calls(message)) if i)
        if role != "tool":
            out.append(message)
            continue
        call_id = message.get("tool_call_id")
        if isinstance(call_id, str) and call_id in known:
            if call_id in _owned_ids(out):
                out.append(message)
                continue
            # The call is in the history, but not in the message this result follows:
            # a strict host refuses the result there, and its call gets a placeholder.
            _as_context(out, message, call_id, "whose call is earlier in the history", notes)
            continue
        remembered = state.recall(call_id) if isinstance(call_id, str) else None
        if remembered is None:
            _as_context(out, message, call_id, "whose call is not in the history", notes)
            continue
        call = {"id": remembered.id, "type": "function",
                "function": {"name": remembered.name, "arguments": remembered.arguments}}
        owner = _owning_assistant(out)
        if owner is None:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            out[owner] = {**out[owner], "tool_calls": [*_calls(out[owner]), call]}
        known.add(remembered.id)
        notes.append(Note("restored_tool_call", f"tool result {call_id} with no call",
                          f"{remembered.name}({excerpt(remembered.arguments, 80)})", call_id))
        out.append(message)
    return out


def _as_context(out: list[Message], message: Message, call_id: Any, why: str,
                notes: list[Note]) -> None:
    """A tool result that can stay no tool result, kept as plain context text."""
    content = message.get("content")
    text = f"[Result of an earlier tool call ({call_id}) {why}]\n"
    out.append({"role": "user", "content": text + (content if isinstance(content, str)
                                                   else excerpt(content, 100_000))})
    notes.append(Note("orphan_tool_result", excerpt(message), "tool result turned into context text",
                      call_id if isinstance(call_id, str) else None))


def _owned_ids(out: list[Message]) -> set[str]:
    """The call ids of the assistant message the next tool result would belong to."""
    owner = _owning_assistant(out)
    return set() if owner is None else {i for i in map(_call_id, _calls(out[owner])) if i}


def _owning_assistant(out: list[Message]) -> int | None:
    """Index of the assistant message the next tool result belongs to, if adjacent."""
    i = len(out) - 1
    while i >= 0 and out[i].get("role") == "tool":
        i -= 1
    return i if i >= 0 and out[i].get("role") == "assistant" else None


def _answer_unanswered(messages: list[Message], notes: list[Note]) -> list[Message]:
    out: list[Message] = []
    i = 0
    while i < len(messages):
        message = messages[i]
        out.append(message)
        i += 1
        if message.get("role") != "assistant" or not _calls(message):
            continue
        called = [c for c in map(_call_id, _calls(message)) if c]
        pending = list(called)
        seconds: list[Message] = []  # results for a call answered already in this group
        while i < len(messages) and messages[i].get("role") == "tool":
            answered = messages[i].get("tool_call_id")
            if answered in pending:
                pending.remove(answered)
                out.append(messages[i])
            elif answered in called:
                seconds.append(messages[i])
            else:
                out.append(messages[i])
            i += 1
        for call_id in pending:
            out.append(_placeholder_result(call_id))
            notes.append(Note("missing_tool_result", f"call {call_id} has no result",
                              "placeholder result added", call_id))
        for second in seconds:  # after the group: Bedrock refuses two results for one call
            _as_context(out, second, second.get("tool_call_id"),
                        "answered already by the result above", notes)
    return out


@lru_cache(maxsize=4096)
def _placeholder_result(call_id: str) -> Message:
    """The stand-in result of an unanswered call: one object per call id (never changed)."""
    return {"role": "tool", "tool_call_id": call_id, "content": PLACEHOLDER_RESULT}


def _mend_arguments(messages: list[Message], notes: list[Note]) -> None:
    for index, message in enumerate(messages):
        calls = _calls(message)
        if message.get("role") != "assistant" or not calls:
            continue
        mended: list[Any] = []
        changed = False
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            args = function.get("arguments") if isinstance(function, dict) else None
            if isinstance(args, dict):
                fixed: str | None = json.dumps(args, ensure_ascii=False)
            elif isinstance(args, str):
                fixed = _mended(args)
            else:
                fixed = "{}"
            if fixed is not None and isinstance(function, dict):
                notes.append(Note("tool_arguments", excerpt(args), excerpt(fixed)))
                call = {**call, "function": {**function, "arguments": fixed}}
                changed = True
            mended.append(call)
        if changed:
            messages[index] = _derived.get("arguments", message, None,
                                           partial(_with, message, "tool_calls", mended))


@lru_cache(maxsize=8192)
def _mended(args: str) -> str | None:
    """The mended text of `args`, or None when it needs no mending.

    Remembered: an agent resends every call of its history on every turn,
    and each would otherwise be parsed twice per turn.
    """
    fixed, did = repair_json_arguments(args)
    return fixed if did and not _same_json(args, fixed) else None


def _same_json(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


def _fill_reasoning(messages: list[Message], state: _State,
                    notes: list[Note], placeholder: str) -> None:
    for index, message in enumerate(messages):
        if message.get("role") != "assistant" or not _calls(message):
            continue
        current = message.get("reasoning_content")
        if isinstance(current, str) and current:
            continue
        reasoning = ""
        if state.memory is not None:
            for call_id in map(_call_id, _calls(message)):
                remembered = state.recall(call_id) if call_id else None
                if remembered is not None and remembered.reasoning:
                    reasoning = remembered.reasoning
                    break
        filled = reasoning or placeholder
        messages[index] = _derived.get("reasoning", message, filled,
                                       partial(_with, message, "reasoning_content", filled))
        notes.append(Note("reasoning_content", "assistant tool-call message without reasoning_content",
                          excerpt(reasoning) if reasoning else f"placeholder {placeholder!r}"))


def _is_empty_text_block(block: Any) -> bool:
    return (isinstance(block, dict) and block.get("type") == "text"
            and not (isinstance(block.get("text"), str) and block["text"].strip()))


def _drop_empty(messages: list[Message], notes: list[Note]) -> list[Message]:
    out: list[Message] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(_is_empty_text_block(b) for b in content):
            notes.append(Note("empty_content", f"{message.get('role')} message with an empty text block",
                              "empty block removed"))
            message = _derived.get("blocks", message, None, partial(
                _with, message, "content", [b for b in content if not _is_empty_text_block(b)]))
            content = message["content"]
        if message.get("role") != "assistant":
            out.append(message)
            continue
        empty = content is None or content == [] or (isinstance(content, str) and not content.strip())
        if not empty:
            out.append(message)
        elif _calls(message):
            if content is not None:
                message = _derived.get("null_content", message, None,
                                       partial(_with, message, "content", None))
                notes.append(Note("empty_content", "assistant tool-call message with empty content",
                                  "content: null"))
            out.append(message)
        else:
            notes.append(Note("empty_content", "assistant message with empty content", "message removed"))
    return out


def _to_native_ids(messages: list[Message], state: _State) -> None:
    mapping = state.mapping
    counter = state.counter
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant" and _calls(message):
            natives: list[str | None] = []
            for call in _calls(message):
                if not isinstance(call, dict):
                    natives.append(None)
                    continue
                function = call.get("function") or {}
                name = function.get("name", "tool") if isinstance(function, dict) else "tool"
                native = kimi_id(name, counter)
                counter += 1
                if isinstance(call.get("id"), str):
                    mapping[call["id"]] = native
                natives.append(native)
            if any(n is not None and call.get("id") != n
                   for call, n in zip(_calls(message), natives, strict=True)):
                messages[index] = _derived.get("native_ids", message, tuple(natives),
                                               partial(_renamed, message, natives))
        elif role == "tool" and message.get("tool_call_id") in mapping:
            # Unique within a message by now: the plans with native ids also have the
            # structure step (`_unique_call_ids`).
            native = mapping[message["tool_call_id"]]
            if native != message["tool_call_id"]:
                messages[index] = _derived.get("native_ids", message, native,
                                               partial(_with, message, "tool_call_id", native))
    state.counter = counter


def _renamed(message: Message, natives: list[str | None]) -> Message:
    calls = [call if native is None else {**call, "id": native}
             for call, native in zip(_calls(message), natives, strict=True)]
    return {**message, "tool_calls": calls}
