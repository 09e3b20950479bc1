"""`Deadline`: one timer for many waits, with `asyncio.timeout`'s semantics."""

from __future__ import annotations

import asyncio

import pytest

from proxy_core.deadline import Deadline


async def test_a_wait_past_the_deadline_times_out() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.05)
    started = loop.time()
    with pytest.raises(TimeoutError):
        with deadline:
            await asyncio.sleep(5)
    assert 0.04 <= loop.time() - started < 1.0
    deadline.close()


async def test_moving_the_deadline_on_progress_keeps_a_steady_stream_alive() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.1)
    for _ in range(8):  # 8 x 40 ms: longer than the first deadline, never 100 ms of silence
        with deadline:
            await asyncio.sleep(0.04)
        deadline.when = loop.time() + 0.1
    with pytest.raises(TimeoutError):
        with deadline:
            await asyncio.sleep(5)
    deadline.close()


async def test_time_spent_outside_the_block_is_never_interrupted() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.03)
    with deadline:
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # past the deadline, but not waiting "inside": no cancel
    with deadline:  # the next wait: no suspension, no timeout
        pass
    with pytest.raises(TimeoutError):
        with deadline:  # ... and at its first suspension it times out
            await asyncio.sleep(5)
    deadline.close()


async def test_expire_ends_the_wait_now() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 60)
    loop.call_later(0.02, deadline.expire)
    started = loop.time()
    with pytest.raises(TimeoutError):
        with deadline:
            await asyncio.sleep(5)
    assert loop.time() - started < 1.0 and deadline.expired()
    deadline.close()


async def test_a_real_cancellation_is_not_turned_into_a_timeout() -> None:
    loop = asyncio.get_running_loop()

    async def wait() -> None:
        deadline = Deadline(loop.time() + 60)
        try:
            with deadline:
                await asyncio.sleep(5)
        finally:
            deadline.close()

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancellation_and_timeout_together_stay_a_cancellation() -> None:
    loop = asyncio.get_running_loop()

    async def wait() -> None:
        deadline = Deadline(loop.time() + 0.02)
        with deadline:
            await asyncio.sleep(5)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.019)
    task.cancel()  # lands about when the deadline does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelling() >= 0


async def test_close_leaves_no_timer_behind() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01)
    with deadline:
        await asyncio.sleep(0)
    deadline.close()
    await asyncio.sleep(0.05)  # the timer would have fired here; nothing is waiting
    assert deadline.expired()
