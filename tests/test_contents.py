"""`Namer`: parts are named once, and the very objects named before are not even encoded
again — but never at the cost of a name, a body or a redaction that differs."""

from __future__ import annotations

from typing import Any
from unittest import mock

from proxy_core import contents
from proxy_core.contents import Namer
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
    namer = Namer(Redactor(), max_bytes=2048)
    for i in range(100):
        namer.prepare(request([{"role": "user", "content": f"{i:0>200}"}]))
    assert namer.object_bytes <= 2048 and namer.bytes <= 2048


def test_a_list_that_extends_one_named_lately_takes_its_parts_whole() -> None:
    namer = Namer(Redactor())
    messages = history(40)
    first = namer.prepare(request(messages))
    longer = [*messages, {"role": "user", "content": "one more"}]
    with mock.patch.object(Namer, "_hold", wraps=namer._hold) as hold:
        prepared = namer.prepare(request(longer))
    assert hold.call_count == 1  # only the new message was named one by one
    fresh = Namer(Redactor()).prepare(request(longer))
    assert [(p.field, p.position, p.key, p.name, p.size) for p in prepared.parts] == \
        [(p.field, p.position, p.key, p.name, p.size) for p in fresh.parts]
    assert list(prepared.bodies) == [prepared.parts[40].name]  # the others: stored by then
    assert contents.starts_with(prepared.fields["messages"], first.fields["messages"])
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

    def spy(self: Namer, field: str, items: list[Any]) -> tuple[Any, ...]:
        taken.append(len(named_prefix(self, field, items)))
        return named_prefix(self, field, items)

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
