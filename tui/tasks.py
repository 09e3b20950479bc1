"""Background tasks that live outside the app's workers (the demo's agent, attach's reader)."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended; what it raised on the way out is dropped
    (it is stopping because we asked, and each task reports its own failures while it runs)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
