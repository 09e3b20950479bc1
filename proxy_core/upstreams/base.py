"""What every upstream adapter provides."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..capture import WireCapture
from ..stream import StreamPart


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One attempt's request: an OpenAI-shaped body, already repaired and re-modelled.

    An adapter that reads the wire itself hands each read to `capture`, if given,
    and every adapter calls `on_send`, if given, once: right before it hands the
    request to its HTTP client (after encoding it), which is where Switchboard's
    own part of the time to first byte ends (`Attempt.prepared_in`).
    """

    model: str
    body: dict[str, Any]
    capture: WireCapture | None = None
    #: `body` as the client sent it, when the two say exactly the same: an adapter
    #: that speaks the client's format may send these bytes instead of encoding `body`.
    raw: bytes | None = None
    on_send: Callable[[], None] | None = None


class Upstream(Protocol):
    """An upstream model host. `stream` yields internal parts or raises `UpstreamError`."""

    name: str
    kind: str

    async def start(self) -> None: ...

    def stream(self, request: UpstreamRequest) -> AsyncGenerator[StreamPart, None]: ...

    async def aclose(self) -> None: ...
