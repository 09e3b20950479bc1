"""The upstream's answer as it came off the wire: raw bytes of each attempt, with timing.

A repro fixture (`repro.py`) needs the exact bytes a host sent and when,
not the parts Switchboard made of them. The upstream adapter hands each
network read to `WireCapture.add` as it arrives: one clock read and one
list append, nothing else on the relay path. Joining, decoding and
redacting happen later, off the path, when the journal writes the turn
(`encode`).

Capture is bounded per turn (`[proxy] journal_wire_kb`, 512 KB by default,
shared by its attempts; 0 turns it off): past it, reads are counted but not
kept and the attempt is marked `truncated`, which the fixture and
`switchboard replay` show. Only adapters that speak HTTP themselves
(OpenAI-compatible hosts and the simulator) capture; the Bedrock Converse
adapter gets decoded events from boto3 and captures none.
"""

from __future__ import annotations

import time
from typing import Any


class WireCapture:
    """The raw answer of one attempt; `started` is when its request was sent (monotonic)."""

    __slots__ = ("attempt", "target", "started", "chunks", "times", "size", "limit", "truncated",
                 "dropped", "status", "content_type", "messages")

    def __init__(self, attempt: int, target: str, limit: int) -> None:
        self.attempt = attempt
        self.target = target
        self.started = time.monotonic()
        self.chunks: list[bytes] = []
        self.times: list[float] = []
        self.size = 0
        self.limit = limit
        self.truncated = False
        self.dropped = 0  # bytes seen past the limit
        self.status: int | None = None
        self.content_type = ""
        #: The messages sent, when history repairs changed the client's (shared, not copied).
        self.messages: list[Any] | None = None

    def add(self, data: bytes) -> None:
        if self.size + len(data) > self.limit:
            self.truncated = True
            self.dropped += len(data)
            return
        self.chunks.append(data)
        self.times.append(time.monotonic())
        self.size += len(data)

    def answered(self, status: int, content_type: str) -> None:
        self.status = status
        self.content_type = content_type

    def encode(self) -> dict[str, Any]:
        """A JSON-ready account: the body received, as text, and each network read as
        `[seconds since the request was sent, bytes]`.

        One decode of the joined bytes, not one per read: the journal pays about
        as much for this as for the body's redaction. Undecodable bytes become
        U+FFFD (the reads' byte counts are then off by their difference).
        """
        started = self.started
        return {"attempt": self.attempt, "target": self.target, "status": self.status,
                "content_type": self.content_type, "bytes": self.size,
                "truncated": self.truncated, **({"dropped_bytes": self.dropped}
                                                if self.truncated else {}),
                "body": b"".join(self.chunks).decode("utf-8", "replace"),
                "reads": [[round(at - started, 4), len(piece)]
                          for at, piece in zip(self.times, self.chunks, strict=True)]}


def reads_of(recorded: dict[str, Any]) -> list[tuple[float, bytes]]:
    """The reads of an encoded capture, as (seconds after the request, bytes) again.

    A body the redactor shortened or lengthened leaves the last read with the rest.
    """
    body = str(recorded.get("body") or "").encode()
    reads: list[tuple[float, bytes]] = []
    offset = 0
    entries = list(recorded.get("reads") or [])
    for index, (at, size) in enumerate(entries):
        end = len(body) if index == len(entries) - 1 else offset + int(size)
        reads.append((float(at), body[offset:end]))
        offset = end
    return reads
