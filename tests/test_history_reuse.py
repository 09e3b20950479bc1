"""`HistoryRepairs` reuses the repair of the part of a history it saw last turn; that must
never change the answer. Hypothesis grows sessions turn by turn out of every kind of
message the repairs act on (orphan results, unanswered calls, mangled arguments,
missing reasoning, empty content, foreign ids), edits and cuts them, and changes the
tool-call memory between turns; each turn's messages and notes must be exactly what a
repair from scratch gives, for every plan."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core.repairs.history import HistoryRepairs, _Kept, repair_history
from proxy_core.repairs.memory import RememberedCall, ToolCallMemory
from proxy_core.repairs.profiles import KIMI, STRUCTURAL, RepairPlan

PLANS = [KIMI, STRUCTURAL, RepairPlan(native_ids=True), RepairPlan(reasoning=True, empty=True)]
IDS = ["call_1", "call_2", "functions.read:0", "functions.bash:3", "toolu_x", "call_9"]

_content = st.sampled_from(["", " ", "text", None, [], [{"type": "text", "text": ""}],
                            [{"type": "text", "text": "hi"}, {"type": "text", "text": " "}]])
_arguments = st.sampled_from(['{"path": "a"}', "{'path': 'a'", "", "{}", '{"n": 1'])


@st.composite
def groups(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A user turn, or an assistant message with its tool results (some missing or extra)."""
    if draw(st.booleans()):
        return [{"role": "user", "content": draw(st.sampled_from(["go on", "next", ""]))}]
    ids = draw(st.lists(st.sampled_from(IDS), min_size=0, max_size=2, unique=True))
    assistant: dict[str, Any] = {"role": "assistant", "content": draw(_content)}
    if ids:
        assistant["tool_calls"] = [
            {"id": i, "type": "function",
             "function": {"name": draw(st.sampled_from(["read", "bash"])),
                          "arguments": draw(_arguments)}} for i in ids]
    if draw(st.booleans()):
        assistant["reasoning_content"] = draw(st.sampled_from(["", "thinking"]))
    answered = draw(st.lists(st.sampled_from(IDS), max_size=3))  # may answer others: orphans
    return [assistant] + [{"role": "tool", "tool_call_id": i, "content": f"result of {i}"}
                          for i in answered]


@st.composite
def sessions(draw: st.DrawFn) -> list[tuple[list[dict[str, Any]], list[RememberedCall]]]:
    """Each turn's messages (the same objects as the turn before where unchanged), and the
    calls the memory learns before that turn."""
    history: list[dict[str, Any]] = [{"role": "system", "content": "agent"}]
    turns = []
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["grow", "grow", "grow", "more results", "edit", "cut",
                                       "result anywhere"]))
        if action == "grow":
            for group in draw(st.lists(groups(), min_size=1, max_size=3)):
                history = history + group
        elif action == "more results":  # the last group gets a result it lacked
            history = history + [{"role": "tool", "tool_call_id": draw(st.sampled_from(IDS)),
                                  "content": "late"}]
        elif action == "edit" and len(history) > 1:
            i = draw(st.integers(1, len(history) - 1))
            history = [*history[:i], *draw(groups()), *history[i + 1:]]
        elif action == "result anywhere" and len(history) > 1:  # where a group started, say
            i = draw(st.integers(1, len(history)))
            history = [*history[:i], {"role": "tool", "tool_call_id": draw(st.sampled_from(IDS)),
                                      "content": "moved"}, *history[i:]]
        elif action == "cut":
            history = history[:draw(st.integers(1, len(history)))]
        learned = [RememberedCall(i, "read", json.dumps({"path": i}), draw(
            st.sampled_from(["", "remembered thought"]))) for i in draw(
            st.lists(st.sampled_from(IDS), max_size=2))]
        turns.append((history, learned))
    return turns


@settings(max_examples=300, deadline=None)
@given(sessions(), st.sampled_from(PLANS))
def test_reusing_the_last_turns_repair_never_changes_the_result(
        turns: list[tuple[list[dict[str, Any]], list[RememberedCall]]], plan: RepairPlan) -> None:
    memory = ToolCallMemory()
    repairs = HistoryRepairs(memory)
    for messages, learned in turns:
        for call in learned:
            memory.remember(call)
        assert repairs.repair(messages, plan) == repair_history(messages, plan, memory)


@settings(max_examples=200, deadline=None)
@given(sessions(), st.sampled_from(PLANS), st.randoms(use_true_random=False))
def test_turns_repaired_out_of_order_give_what_a_repair_from_scratch_gives(
        turns: list[tuple[list[dict[str, Any]], list[RememberedCall]]], plan: RepairPlan,
        rng: Any) -> None:
    """Overlapping turns of one conversation arrive in any order (parallel requests):
    the kept repairs that fit are used, and never change an answer."""
    memory = ToolCallMemory()
    for _, learned in turns:
        for call in learned:
            memory.remember(call)
    repairs = HistoryRepairs(memory, per_history=2)
    order = [messages for messages, _ in turns] * 2
    rng.shuffle(order)
    for messages in order:
        assert repairs.repair(messages, plan) == repair_history(messages, plan, memory)


def test_overlapping_turns_of_one_session_reuse_the_longest_kept_repair() -> None:
    """Clients replaying one growing session, each a few turns behind another: after the
    first two turns (the second is shorter than the only one kept), every repair starts
    from a kept one."""
    repairs = HistoryRepairs(None)
    turns = growing_session(12, "{}")
    for n in (4, 2, 5, 3, 6, 4, 8, 5, 9, 7, 11, 10):  # late and early turns interleaved
        assert repairs.repair(turns[n], KIMI) == repair_history(turns[n], KIMI)
    assert repairs.reused == 10


def test_a_growing_session_is_repaired_from_its_last_group_on() -> None:
    memory = ToolCallMemory()
    repairs = HistoryRepairs(memory)
    for history in growing_session(30, "{'path': 'a'"):
        assert repairs.repair(history, KIMI) == repair_history(history, KIMI, memory)
    assert repairs.reused == 29


def test_the_repairs_kept_are_bounded_by_the_size_of_their_requests() -> None:
    repairs = HistoryRepairs(None, max_bytes=1000)
    sessions = [growing_session(6, "{}") for _ in range(3)]
    for turns in sessions:  # 400-byte requests: two repairs of one session fit
        for history in turns:
            assert repairs.repair(history, KIMI, size=400) == repair_history(history, KIMI)
    assert repairs.bytes <= 1000
    reused = repairs.reused
    repairs.repair(sessions[2][-1] + [{"role": "user", "content": "more"}], KIMI, size=400)
    assert repairs.reused == reused + 1  # the newest session's repair is still kept
    repairs.repair(sessions[0][-1] + [{"role": "user", "content": "more"}], KIMI, size=400)
    assert repairs.reused == reused + 1  # the oldest one's went
    huge = growing_session(3, "{}")[-1]
    repairs.repair(huge, KIMI, size=1001)  # alone past the bound: kept never
    repairs.repair(huge + [{"role": "user", "content": "more"}], KIMI, size=1001)
    assert repairs.reused == reused + 1 and repairs.bytes <= 1000


def test_only_the_longest_kept_repair_that_fits_asks_the_memory_again() -> None:
    """Every kept repair of a session starts like its next turn; the longest is checked
    first, and the shorter ones are not checked at all."""
    memory = ToolCallMemory()
    repairs = HistoryRepairs(memory)
    turns = growing_session(8, "{}")
    for history in turns[:6]:
        repairs.repair(history, KIMI)
    (kept,) = repairs._kept.values()
    assert len(kept) == repairs.per_history  # all start like the next turn
    checked: list[int] = []
    fits = _Kept.fits

    def spy(kept: _Kept, messages: list[dict[str, Any]], memory: Any) -> bool:
        checked.append(kept.end)
        return fits(kept, messages, memory)

    with mock.patch.object(_Kept, "fits", spy):
        assert repairs.repair(turns[7], KIMI) == repair_history(turns[7], KIMI, memory)
    assert checked == [max(k.end for k in kept)]


def growing_session(turns: int, arguments: str) -> list[list[dict[str, Any]]]:
    """Each turn's history: the one before (the very objects) plus a call and its result."""
    history: list[dict[str, Any]] = [{"role": "user", "content": "fix it"}]
    out = []
    for i in range(turns):
        history = history + [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": "read", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": f"call_{i}", "content": f"file {i}"}]
        out.append(history)
    return out


def test_a_remembered_answer_that_changed_means_repairing_afresh() -> None:
    memory = ToolCallMemory()
    repairs = HistoryRepairs(memory)
    call = {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": "{}"}}
    history = [{"role": "user", "content": "go"},
               {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": "call_1", "content": "x"},
               {"role": "user", "content": "again"}]
    first, _ = repairs.repair(history, KIMI)
    assert first[1]["reasoning_content"] == " "
    memory.remember(RememberedCall("call_1", "read", "{}", "I read it first"))
    second, _ = repairs.repair(history + [{"role": "user", "content": "more"}], KIMI)
    assert second[1]["reasoning_content"] == "I read it first"
    assert repairs.reused == 0


def test_a_result_inserted_where_the_kept_part_ended_is_not_cut_off_from_its_call() -> None:
    """The kept part ended with a call whose result was missing (so it got a placeholder);
    a history that brings the result right there must be repaired with it, not with the
    kept placeholder."""
    memory = ToolCallMemory()
    repairs = HistoryRepairs(memory)
    calls = [{"id": i, "type": "function", "function": {"name": "read", "arguments": "{}"}}
             for i in ("call_a", "call_b")]
    system = {"role": "system", "content": "agent"}
    assistant = {"role": "assistant", "content": None, "tool_calls": calls}
    result_a = {"role": "tool", "tool_call_id": "call_a", "content": "a"}
    user = {"role": "user", "content": "go on"}
    before = [system, assistant, result_a, user]
    repairs.repair(before, STRUCTURAL)
    after = [system, assistant, result_a,
             {"role": "tool", "tool_call_id": "call_b", "content": "b"}, user]
    out, notes = repairs.repair(after, STRUCTURAL)
    assert (out, notes) == repair_history(after, STRUCTURAL, memory)
    assert not any(n.kind == "missing_tool_result" for n in notes)


def test_derived_messages_are_kept_by_count_and_by_size() -> None:
    from proxy_core.repairs.history import _Derived
    derived = _Derived(limit=100, max_bytes=16_000)
    small = {"role": "assistant", "content": "ok"}
    made = derived.get("step", small, None, lambda: {**small, "content": None})
    assert derived.get("step", small, None, lambda: {}) is made  # the same object again
    big = {"role": "assistant", "content": "x" * 2000}  # over a sixteenth of the bound
    first = derived.get("step", big, None, lambda: {**big, "content": None})
    assert derived.get("step", big, None, lambda: {**big, "content": None}) is not first
    many = [{"role": "assistant", "content": f"{i}" + "y" * 500} for i in range(40)]
    for message in many:
        derived.get("step", message, None, lambda m=message: {**m, "content": None})
    assert derived._items.bytes <= 16_000 and len(derived._items) < 40
