"""The event bus delivers in publication order, to observers in a fixed order, and an
observer or a piece of deferred work that raises never stops the others."""

from __future__ import annotations

import asyncio
import logging

import pytest

from proxy_core.bus import EventBus
from proxy_core.events import Chunk, Event, Heartbeat, TurnStarted


def chunk(text: str) -> Chunk:
    return Chunk(turn_id="t1", kind="text", text=text)


def texts(seen: list[tuple[str, Event]]) -> list[tuple[str, str]]:
    return [(who, e.text if isinstance(e, Chunk) else type(e).__name__) for who, e in seen]


def text_recorder() -> tuple[EventBus, list[str]]:
    """A bus and the texts of the chunks one listener received, in order."""
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda e: seen.append(e.text))  # type: ignore[attr-defined]
    return bus, seen


class Observer:
    def __init__(self, name: str, seen: list[tuple[str, Event]]) -> None:
        self.name, self.seen = name, seen

    def on_Chunk(self, event: Chunk) -> None:
        self.seen.append((self.name, event))


def test_observers_in_registration_order_then_listeners_for_each_event() -> None:
    bus = EventBus()
    seen: list[tuple[str, Event]] = []
    bus.subscribe(lambda e: seen.append(("listener", e)))
    bus.add_observer(Observer("first", seen))
    bus.add_observer(Observer("second", seen))
    bus.publish(chunk("a"))
    bus.publish(Heartbeat(turn_id="t1"))  # no observer has on_Heartbeat: the listener only
    bus.publish(chunk("b"))
    assert texts(seen) == [("first", "a"), ("second", "a"), ("listener", "a"),
                           ("listener", "Heartbeat"),
                           ("first", "b"), ("second", "b"), ("listener", "b")]


def test_registering_after_a_publish_is_seen_by_the_next_one() -> None:
    bus = EventBus()
    seen: list[tuple[str, Event]] = []
    first = Observer("first", seen)
    bus.add_observer(first)
    bus.publish(chunk("a"))
    bus.add_observer(Observer("late", seen))
    unsubscribe = bus.subscribe(lambda e: seen.append(("listener", e)))
    bus.publish(chunk("b"))
    bus.remove_observer(first)
    unsubscribe()
    bus.publish(chunk("c"))
    assert texts(seen) == [("first", "a"), ("first", "b"), ("late", "b"), ("listener", "b"),
                           ("late", "c")]
    assert not bus.wants(Heartbeat)


async def test_publish_soon_waits_for_the_task_to_yield() -> None:
    bus, seen = text_recorder()
    bus.publish_soon(chunk("a"))
    bus.publish_soon(chunk("b"))
    assert seen == []  # not yet: the request goes out first
    for _ in range(2):  # the task yields (as it does waiting for the host)
        await asyncio.sleep(0)
    assert seen == ["a", "b"]


async def test_deferred_work_runs_after_a_task_started_on_the_way_out() -> None:
    """aiohttp's client writes a request body from a task it starts as it sends the
    headers: the deferred bookkeeping must not run before that task's first step."""
    bus, seen = text_recorder()
    bus.publish_soon(chunk("a"))  # the turn's events, deferred as the request is made

    async def write_body() -> None:
        seen.append("body written")

    writer = asyncio.get_running_loop().create_task(write_body())
    await writer
    for _ in range(2):
        await asyncio.sleep(0)
    assert seen == ["body written", "a"]


async def test_a_publish_delivers_what_was_deferred_before_it_first() -> None:
    bus, seen = text_recorder()
    bus.publish_soon(chunk("a"))
    bus.publish_soon(chunk("b"))
    bus.publish(chunk("c"))
    assert seen == ["a", "b", "c"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left: no repeats
    assert seen == ["a", "b", "c"]


async def test_deferred_work_that_publishes_keeps_its_place_in_line() -> None:
    bus, seen = text_recorder()
    bus.publish_soon(chunk("a"))
    bus.defer(lambda: (bus.publish(chunk("b1")), bus.publish(chunk("b2"))))
    bus.publish_soon(chunk("c"))
    bus.publish(chunk("d"))
    assert seen == ["a", "b1", "b2", "c", "d"]


async def test_an_observer_publishing_from_a_handler_is_delivered_after_the_current_one() -> None:
    bus = EventBus()
    seen: list[str] = []

    def echo(event: Event) -> None:
        seen.append(f"echo saw {type(event).__name__}")
        if isinstance(event, TurnStarted):
            bus.publish_soon(chunk("from echo"))

    bus.subscribe(echo)
    bus.subscribe(lambda e: seen.append(f"last saw {type(e).__name__}"))
    bus.publish(TurnStarted(turn_id="t1", session_id="s", model="m", route="m", stream=True))
    for _ in range(2):
        await asyncio.sleep(0)
    assert seen == ["echo saw TurnStarted", "last saw TurnStarted",
                    "echo saw Chunk", "last saw Chunk"]


def test_without_a_running_loop_publish_soon_delivers_now() -> None:
    bus, seen = text_recorder()
    bus.publish_soon(chunk("a"))
    assert seen == ["a"]


async def test_a_failing_observer_or_deferred_work_is_logged_and_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[str] = []

    class Broken:
        def on_Chunk(self, event: Chunk) -> None:
            raise RuntimeError("observer bug")

    bus.add_observer(Broken())
    bus.subscribe(lambda e: seen.append(e.text))  # type: ignore[attr-defined]

    def broken_work() -> None:
        raise RuntimeError("bookkeeping bug")

    with caplog.at_level(logging.ERROR, logger="proxy_core.bus"):
        bus.publish(chunk("a"))
        bus.defer(broken_work)
        bus.publish_soon(chunk("b"))
        bus.publish(chunk("c"))
    assert seen == ["a", "b", "c"]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("failed on Chunk" in m for m in messages) == 3
    assert sum("deferred bookkeeping" in m for m in messages) == 1
