"""A watchdog deadline for many successive waits, with one timer.

`asyncio.timeout_at` around every upstream read costs a `Timeout` object, a
timer handle pushed on the loop's heap and cancelled again — for every part
relayed, a quarter of the relay's CPU in bench/bench_relay.py. `Deadline`
keeps one timer for the whole attempt: moving the deadline is a float store,
and the timer re-arms itself when it fires before the (moved) deadline.

Only a wait inside `with deadline:` can time out, exactly as with
`asyncio.timeout`: the task is cancelled, and the `CancelledError` becomes
`TimeoutError` when it leaves the block (unless someone else cancelled the
task too, which then wins). Code outside the block — say, a generator
suspended at `yield` while its consumer writes to a slow client — is never
interrupted; if the deadline passed meanwhile, the next wait times out at
its first suspension.

    deadline = Deadline(loop.time() + first_token_timeout)
    try:
        while True:
            with deadline:
                part = await parts.__anext__()     # TimeoutError once past `deadline.when`
            if progress(part):
                deadline.when = loop.time() + idle_timeout
            yield part
    finally:
        deadline.close()
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    __slots__ = ("when", "_loop", "_task", "_handle", "_armed_for", "_waiting", "_fired",
                 "_cancelling")

    def __init__(self, when: float) -> None:
        #: Loop time (`loop.time()`) after which a wait inside `with` times out.
        self.when = when
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._armed_for = 0.0
        self._waiting = False
        self._fired = False
        self._cancelling = 0

    def expire(self) -> None:
        """Time out now: the wait in progress (or the next one) ends with `TimeoutError`."""
        self.when = self._loop.time()
        if self._waiting:
            self._arm()

    def expired(self) -> bool:
        return self._loop.time() >= self.when

    def close(self) -> None:
        """Drop the timer (at the end of the attempt)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def __enter__(self) -> Deadline:
        # The task is looked up each time: a generator that uses the deadline may be
        # driven by one task, then another (a hedge race runs each attempt's start
        # in its own task; the winner continues in the turn's). Given the loop, the
        # lookup is a dict read; without, CPython 3.11 asks the OS for its pid first.
        task = self._task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._cancelling = task.cancelling()
        self._waiting = True
        if self._handle is None or self.when < self._armed_for:
            self._arm()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._waiting = False
        if self._fired:
            self._fired = False
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = self.when
        if self.when <= self._loop.time():
            self._handle = self._loop.call_soon(self._on_timer)
        else:
            self._handle = self._loop.call_at(self.when, self._on_timer)

    def _on_timer(self) -> None:
        self._handle = None
        if self._loop.time() < self.when:  # moved later since: wait for the new time
            self._arm()
            return
        if self._waiting and not self._fired and self._task is not None:
            self._fired = True
            self._task.cancel()
        # Not waiting now: the next `with` finds the deadline passed and re-arms at once.
