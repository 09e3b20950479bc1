"""`Namer`: parts are named once, and the very objects named before are not even encoded
again — but never at the cost of a name, a body or a redaction that differs."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy_core import contents, list_memo
from proxy_core.contents import Interner, Namer
from proxy_core.secrets import Redactor

SECRET = "correct-horse-battery-staple-42"  # no pattern finds it: learnt by name


def request(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": "m", "messages": messages, "stream": True}


def history(n: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"message {i} mentions {SECRET}"} for i in range(n)]


def test_parts_named_before_as_the_same_objects_are_not_encoded_again() -> None:
    namer = Namer(Redactor())
    messages = history(30)
    first = namer.prepare(request(messages))
    new = {"role": "user", "content": "new"}
    with mock.patch.object(contents, "encode", wraps=contents.encode) as encode:
        second = namer.prepare(request([*messages, new]))
    assert encode.call_count == 2  # the new message, and the skeleton
    assert [(p.key, p.name, p.size, p.position) for p in second.parts[:30]] == \
        [(p.key, p.name, p.size, p.position) for p in first.parts]
    fresh = Namer(Redactor()).prepare(request([*messages, new]))
    assert [(p.key, p.name, p.size) for p in second.parts] == \
        [(p.key, p.name, p.size) for p in fresh.parts]


def test_a_secret_learnt_later_renames_and_redacts_parts_already_named() -> None:
    redactor = Redactor()
    namer = Namer(redactor)
    messages = history(5)
    before = namer.prepare(request(messages))
    assert all(SECRET in before.bodies[p.name] for p in before.parts)
    redactor.add(SECRET)
    after = namer.prepare(request(messages))
    assert all(SECRET not in after.bodies[p.name] for p in after.parts)
    assert [p.name for p in after.parts] != [p.name for p in before.parts]


def test_objects_held_for_naming_are_bounded() -> None:
    namer = Namer(Redactor(), max_bytes=16 * 256)  # each ~230-byte message fits its share
    for i in range(100):
        namer.prepare(request([{"role": "user", "content": f"{i:0>200}"}]))
    assert namer._objects.bytes <= 16 * 256 and namer._known.bytes <= 16 * 256
    assert len(namer._objects) > 1 and len(namer._known) > 1


def test_small_parts_are_bounded_by_count_too() -> None:
    """A small message's objects take several times its encoding in memory, so many
    small sessions would fill a byte bound with far more memory than it says."""
    namer, interner = Namer(Redactor(), max_items=10), Interner(max_items=10)
    for i in range(100):
        items = [{"role": "user", "content": f"task {i}"}]
        prepared = namer.prepare(request(items))
        interner.share("messages", prepared.fields["messages"], items)
    assert len(namer._objects) == 10 and len(namer._known) == 10 and len(interner) == 10


def test_a_list_that_extends_one_named_lately_takes_its_parts_whole() -> None:
    namer = Namer(Redactor())
    messages = history(40)
    first = namer.prepare(request(messages))
    longer = [*messages, {"role": "user", "content": "one more"}]
    with mock.patch.object(contents, "encode", wraps=contents.encode) as encode:
        prepared = namer.prepare(request(longer))
    assert encode.call_count == 2  # the new message, and the request around the messages
    fresh = Namer(Redactor()).prepare(request(longer))
    assert [(p.field, p.position, p.key, p.name, p.size) for p in prepared.parts] == \
        [(p.field, p.position, p.key, p.name, p.size) for p in fresh.parts]
    assert list(prepared.bodies) == [prepared.parts[40].name]  # the others: stored by then
    assert list_memo.starts_with(prepared.fields["messages"], first.fields["messages"])
    shorter = messages[:10]  # not an extension: named one by one, the same names
    assert [p.name for p in namer.prepare(request(shorter)).parts] == \
        [p.name for p in fresh.parts[:10]]


def test_a_request_and_the_repaired_messages_it_sent_each_take_their_lists_whole() -> None:
    """Both lists start with the same system prompt and part ways at the first repaired
    message; named turn after turn, in turn, neither may push the other out."""
    namer = Namer(Redactor())
    system = {"role": "system", "content": "agent"}
    client = [system, *history(20)]
    repaired_of: dict[int, dict[str, Any]] = {}

    def repaired(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m if m is system else repaired_of.setdefault(
            id(m), {**m, "content": m["content"] + " (repaired)"}) for m in messages]

    taken: list[int] = []  # how many items each list took whole
    named_prefix = Namer._named_prefix

    def spy(self: Namer, field: str, items: list[Any]) -> tuple[tuple[Any, ...], int]:
        found = named_prefix(self, field, items)
        taken.append(len(found[0]))
        return found

    namer.prepare(request(client))
    namer.prepare(request(repaired(client)))
    for turn in range(3):
        client = [*client, {"role": "user", "content": f"turn {turn}"}]
        for messages in (client, repaired(client)):
            with mock.patch.object(Namer, "_named_prefix", spy):
                prepared = namer.prepare(request(messages))
            assert taken[-1] == len(messages) - 1  # all but the newest message, whole
            fresh = Namer(Redactor()).prepare(request(messages))
            assert [(p.position, p.key, p.name, p.size) for p in prepared.parts] == \
                [(p.position, p.key, p.name, p.size) for p in fresh.parts]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["grow", "restart", "cut", "edit", "repaired"]),
                          st.integers(0, 4)), min_size=1, max_size=12))
def test_shared_lists_are_equal_to_the_turns_and_hold_one_object_per_part(
        steps: list[tuple[str, int]]) -> None:
    """Whatever a session does (grow, be parsed anew, be cut short, have a message
    edited, be sent repaired),
    each turn's shared list equals its own and holds, for each distinct message, the
    one object the interner holds — taken whole for a list that extends the last."""
    namer, interner = Namer(Redactor()), Interner()
    messages = [{"role": "system", "content": "agent"}]
    repaired_of: dict[int, dict[str, Any]] = {}
    for op, n in steps:
        if op == "grow":
            messages = [*messages, *({"role": "user", "content": f"m{len(messages) + i}"}
                                     for i in range(n))]
        elif op == "restart":
            messages = json.loads(json.dumps(messages))
        elif op == "cut":
            messages = messages[:n + 1]
        elif op == "edit" and 0 < n < len(messages):  # the same first message, not a prefix
            messages = [*messages[:n], {"role": "user", "content": f"edited {n}"},
                        *messages[n + 1:]]
        sent = messages if op != "repaired" else [
            repaired_of.setdefault(id(m), {**m, "content": m["content"] + "!"})
            for m in messages]
        prepared = namer.prepare(request(sent))
        shared = interner.share("messages", prepared.fields["messages"], sent)
        assert shared == sent
        for part, item in zip(prepared.fields["messages"], shared, strict=True):
            assert interner.intern(part.key, {}, part.size) is item


def test_a_list_that_extends_one_shared_looks_up_only_its_new_items() -> None:
    namer, interner = Namer(Redactor()), Interner()
    messages = history(30)
    interner.share("messages", namer.prepare(request(messages)).fields["messages"], messages)
    longer = [*messages, {"role": "user", "content": "new"}]
    parts = namer.prepare(request(longer)).fields["messages"]
    with mock.patch.object(Interner, "intern", wraps=interner.intern) as intern:
        shared = interner.share("messages", parts, longer)
    assert intern.call_count == 1 and shared == longer
    assert all(a is b for a, b in zip(shared, messages, strict=False))
    for i in range(40):  # lists of other conversations: a few are remembered, not all
        other = [{"role": "user", "content": f"other {i}"}]
        interner.share("messages", namer.prepare(request(other)).fields["messages"], other)
    assert len(interner._lists.sizes()) == interner.LISTS
