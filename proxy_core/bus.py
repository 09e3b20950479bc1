"""The in-process event bus.

Observers are plain objects with methods named after the events they want
(`on_TurnStarted(self, event)`), or callables registered for every event.
An observer that raises is logged and skipped: it never breaks a stream.

`publish_soon` is for events raised on the way to an upstream request (a
turn and its attempt starting, the history repairs): the request leaves
first and observers run once the task waits for the host to answer. Events
reach observers in the order they were published either way: `publish`
delivers anything deferred before its own event.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from .events import Event

log = logging.getLogger(__name__)

Listener = Callable[[Event], Any]


class EventBus:
    """Fan events out to observers, synchronously, in registration order."""

    def __init__(self) -> None:
        self._observers: list[object] = []
        self._listeners: list[Listener] = []
        self._handlers: dict[type[Event], list[Callable[[Event], Any]]] = {}
        self._deferred: deque[Callable[[], None]] = deque()
        self._flushing = False

    def add_observer(self, observer: object) -> None:
        """Register an object whose `on_<EventName>` methods receive events."""
        self._observers.append(observer)
        self._handlers.clear()

    def remove_observer(self, observer: object) -> None:
        self._observers.remove(observer)
        self._handlers.clear()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` for every event; returns a function that unsubscribes."""
        self._listeners.append(listener)
        self._handlers.clear()

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
                self._handlers.clear()

        return unsubscribe

    def _handlers_for(self, event_type: type[Event]) -> list[Callable[[Event], Any]]:
        handlers = self._handlers.get(event_type)
        if handlers is None:
            method = f"on_{event_type.__name__}"
            handlers = [getattr(o, method) for o in self._observers if hasattr(o, method)]
            handlers.extend(self._listeners)
            self._handlers[event_type] = handlers
        return handlers

    def wants(self, event_type: type[Event]) -> bool:
        """Whether anyone receives `event_type` now: skip building events nobody reads.

        The relay publishes one `Chunk` per piece of text; with no dashboard or
        event-stream reader attached, checking this first saves making each one.
        """
        handlers = self._handlers.get(event_type)
        if handlers is None:
            handlers = self._handlers_for(event_type)
        return bool(handlers)

    def publish(self, event: Event) -> None:
        if self._deferred and not self._flushing:
            self.flush()
        self._deliver(event)

    def publish_soon(self, event: Event) -> None:
        """Deliver `event` once the running task has yielded (see `defer`), or before the next
        `publish`."""
        self.defer(lambda: self._deliver(event))

    def defer(self, work: Callable[[], None]) -> None:
        """Run `work` (which may publish) at the same point as a `publish_soon` made now.

        For bookkeeping that can wait until the upstream request is out:
        building an event, grouping a turn into its session. It runs two
        passes of the loop later, not one: aiohttp's client (on Python 3.11)
        writes a request's body from a task it starts as it sends the
        headers, and that task first runs on the pass after the one a single
        `call_soon` would flush on. One pass put ~0.2 ms of bookkeeping
        before the request left.
        """
        self._deferred.append(work)
        if len(self._deferred) == 1:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop running: now
                self.flush()
            else:
                loop.call_soon(loop.call_soon, self.flush)

    def flush(self) -> None:
        """Deliver deferred events (run deferred work) now, in order."""
        if self._flushing:  # deferred work publishing: it is already its turn
            return
        self._flushing = True
        deferred = self._deferred
        try:
            while deferred:
                work = deferred.popleft()
                try:
                    work()
                except Exception:  # like an observer's: logged, never breaks a stream
                    log.exception("deferred bookkeeping %r failed", work)
        finally:
            self._flushing = False

    def _deliver(self, event: Event) -> None:
        for handler in self._handlers_for(type(event)):
            try:
                handler(event)
            except Exception:  # an observer must never break a stream
                log.exception("observer %r failed on %s", handler, type(event).__name__)
