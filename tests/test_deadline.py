"""`Deadline`: one timer for many waits, with `asyncio.timeout`'s semantics.

The waits inside `with deadline:` never end by themselves (`forever()`), so
only the deadline (or a cancellation) can end them. Whatever has to happen
at a point in time is a timer on the loop's clock (`loop.call_at`): the loop
runs due timers in the order of their times, so these tests do not depend
on how fast the machine is, only on that order.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy_core.deadline import Deadline


async def forever() -> None:
    await asyncio.Event().wait()


async def at(when: float) -> None:
    """Return once the loop's timers for times up to `when` have run."""
    reached = asyncio.Event()
    asyncio.get_running_loop().call_at(when, reached.set)
    await reached.wait()


async def test_a_wait_past_the_deadline_times_out() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.05)
    with pytest.raises(TimeoutError):
        with deadline:
            await forever()
    assert loop.time() >= deadline.when  # not before its time
    deadline.close()


async def test_moving_the_deadline_on_progress_keeps_a_wait_alive() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = Deadline(start + 0.05)
    arrived = asyncio.Event()
    # Progress before the deadline moves it an hour on; the timer still fires at the old
    # time, finds the deadline moved, and re-arms instead of cancelling the wait.
    loop.call_at(start + 0.01, lambda: setattr(deadline, "when", start + 3600))
    loop.call_at(start + 0.10, arrived.set)  # after the first deadline
    with deadline:
        await arrived.wait()
    assert loop.time() >= start + 0.10
    deadline.when = loop.time() + 0.02  # ...and a later silence still times out
    with pytest.raises(TimeoutError):
        with deadline:
            await forever()
    deadline.close()


async def test_time_spent_outside_the_block_is_never_interrupted() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.03)
    with deadline:
        await asyncio.sleep(0)  # arms the timer
    await at(deadline.when + 0.01)  # the timer has fired meanwhile: nothing was waiting
    with deadline:  # the next wait: no suspension, no timeout
        pass
    with pytest.raises(TimeoutError):
        with deadline:  # ... and at its first suspension it times out
            await forever()
    deadline.close()


async def test_expire_ends_the_wait_now() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 3600)

    async def wait() -> None:
        with deadline:
            waiting.set()
            await forever()

    waiting = asyncio.Event()
    task = asyncio.create_task(wait())
    await waiting.wait()
    deadline.expire()
    done, _ = await asyncio.wait({task}, timeout=30)  # a bound, not a pause: ends at once
    assert task in done and isinstance(task.exception(), TimeoutError)
    assert deadline.expired()
    deadline.close()


async def test_a_real_cancellation_is_not_turned_into_a_timeout() -> None:
    loop = asyncio.get_running_loop()
    waiting = asyncio.Event()

    async def wait() -> None:
        deadline = Deadline(loop.time() + 3600)
        try:
            with deadline:
                waiting.set()
                await forever()
        finally:
            deadline.close()

    task = asyncio.create_task(wait())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


@pytest.mark.parametrize("first", ["deadline", "cancel"])
async def test_cancellation_and_timeout_together_stay_a_cancellation(first: str) -> None:
    """Both land before the task runs again (in either order): the task ends cancelled,
    and the deadline takes back only its own cancellation."""
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 3600)
    waiting = asyncio.Event()

    async def wait() -> None:
        with deadline:
            waiting.set()
            await forever()

    task = asyncio.create_task(wait())
    await waiting.wait()
    if first == "deadline":
        deadline.expire()
        task.cancel()
    else:
        task.cancel()
        deadline.expire()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert task.cancelling() == 1  # the outside cancellation is still counted; the deadline's not
    deadline.close()


async def test_close_leaves_no_timer_behind() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01)
    with deadline:
        await asyncio.sleep(0)  # arms the timer

    def pending() -> set[asyncio.TimerHandle]:  # the loop's timers (CPython keeps a heap)
        return {h for h in loop._scheduled if not h.cancelled()}  # type: ignore[attr-defined]

    armed = pending()
    deadline.close()
    assert len(armed - pending()) == 1  # the deadline's one timer, cancelled
    await at(deadline.when + 0.01)
    with deadline:  # past the deadline; a wait with no suspension still does not time out
        pass
