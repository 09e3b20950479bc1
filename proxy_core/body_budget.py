"""Request bytes handled at once, bounded: the proxy's memory whatever clients send.

While a chat request is handled its body is in memory several times over:
the bytes read, the parsed messages, the body sent upstream, the journal's
encoding of what is new. A 60 MB body peaks at about 5.5 times its size.
`[proxy] max_body_mb` bounds one body; how many arrive at once is up to the
clients, and 8 concurrent 60 MB bodies took the proxy to 2.8 GB.

`BodyBudget` bounds their sum by `[proxy] max_inflight_mb`. A request takes
its share before its body is read:

- the `Content-Length` of a body sent plainly;
- the body limit for a compressed or chunked one, whose size is not known
  until it is read. The share shrinks to the decoded size once it is.

It gives the share back when its turn has ended and, for a body of
`JOURNAL_WAIT` or more, once the journal has written what the turn handed
it (`Journal.drained`), because the journal's encoding of a large history
is part of the peak.

A request that does not fit waits, first come first served, until earlier
ones give theirs back. Its bytes stay in the socket meanwhile, so its client
sees a slow upload, not an error. A request is always let in when nothing
else holds a share, and the proxy's budget is never smaller than
`max_body_mb` (`app.py`), so a body as large as the limit still goes through.
A body that stops arriving is given up after `[proxy] body_timeout`
(`request_body.py`), so a hung upload cannot keep its share.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Future
from contextlib import suppress

log = logging.getLogger(__name__)

#: Bodies of this many bytes or more keep their share until the journal has written them.
JOURNAL_WAIT = 1024 * 1024
#: While requests wait, the log says so at most this often (seconds).
SAY_EVERY = 60.0


class Share:
    """One request's part of the budget; `release()` gives it back (once)."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def shrink(self, size: int) -> None:
        """Hold only `size` bytes from now on (never more than now)."""
        if 0 <= size < self.size:
            freed, self.size = self.size - size, size
            self._budget.give_back(freed)

    def release(self) -> None:
        freed, self.size = self.size, 0
        if freed:
            self._budget.give_back(freed)

    def release_after(self, done: Future[None] | None) -> None:
        """Release when `done` (a future of another thread) is; now if it is None."""
        if done is None or done.done():
            self.release()
            return
        loop = asyncio.get_running_loop()
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self.release))


class BodyBudget:
    """At most `limit` bytes of request bodies held at once (see the module's doc).

    Used from the event loop only. `in_use` is the bytes held now, `waiting`
    the requests waiting for a share, `waited` how many ever did.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.waited = 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._said = -SAY_EVERY

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _fits(self, size: int) -> bool:
        return self.in_use == 0 or self.in_use + size <= self.limit

    async def take(self, size: int) -> Share:
        """A share of `size` bytes, once it fits and every earlier request has had its."""
        size = max(0, size)
        if size == 0 or not self._queue and self._fits(size):  # no body: never waits
            self.in_use += size
            return Share(self, size)
        entry = (size, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self.waited += 1
        if (now := time.monotonic()) - self._said >= SAY_EVERY:
            self._said = now
            log.warning("%d request(s) waiting for room: %.1f MB of request bodies are being"
                        " handled, [proxy] max_inflight_mb allows %.1f MB (%d waited so far)",
                        len(self._queue), self.in_use / 2**20, self.limit / 2**20, self.waited)
        try:
            await entry[1]
        except asyncio.CancelledError:  # the client went away while waiting
            if entry[1].cancelled():
                with suppress(ValueError):
                    self._queue.remove(entry)
                self._admit()  # the next one may fit now
            else:
                self.give_back(size)  # let in just as it was cancelled
            raise
        return Share(self, size)

    def give_back(self, size: int) -> None:
        self.in_use -= size
        self._admit()

    def _admit(self) -> None:
        queue = self._queue
        while queue:
            size, waiter = queue[0]
            if waiter.cancelled():  # its task takes nothing
                queue.popleft()
                continue
            if not self._fits(size):
                return
            queue.popleft()
            self.in_use += size
            waiter.set_result(None)

    def status(self) -> dict[str, int]:
        """For `/health`."""
        return {"limit_bytes": self.limit, "in_use_bytes": self.in_use,
                "waiting": self.waiting, "waited": self.waited}
