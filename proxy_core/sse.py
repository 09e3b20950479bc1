"""Server-sent events, both ways: writing them to clients, parsing them from upstreams.

`SSEDecoder` is an incremental parser of a `text/event-stream` body: feed
it bytes as they arrive from the network (any split, any of the three line
endings the spec allows) and it returns the complete events so far. It is on
the relay's hot path, so the common case — many small `data: {...}` events
per network read — costs one split and one slice per event.
"""

from __future__ import annotations

import json
from typing import Any, Final

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def data_line(payload: Any) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + _encode(payload).encode() + b"\n\n"


def comment_line(text: str) -> bytes:
    return f": {text}\n\n".encode()


#: What `SSEDecoder.feed` returns for a comment line (`: ping`): a keep-alive.
COMMENT: Final = object()

#: Largest event (or unterminated line) accepted from an upstream. A host that
#: streams megabytes without a line break is broken; don't buffer it forever.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEProtocolError(ValueError):
    """The byte stream cannot be an event stream (an event beyond `MAX_EVENT_BYTES`)."""


class SSEDecoder:
    """Parse an event stream incrementally.

    `feed(data)` returns, in order, one item per complete event or comment:
    the event's data (`bytes`, several `data:` lines joined by `\\n`) or
    `COMMENT`. Events without data (only `event:`/`id:`/`retry:` fields)
    yield nothing. `close()` returns a last event that lacked its blank line.
    """

    __slots__ = ("_buffer", "_data", "_max", "_after_cr")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._data: list[bytes] = []  # data lines of an event split across feeds
        self._max = max_event_bytes
        self._after_cr = False  # the last byte seen was a CR: a LF next is its other half

    def feed(self, data: bytes) -> list[Any]:
        if self._after_cr:
            self._after_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            if buffer[-1:] == b"\r":
                self._after_cr = True
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            self._check_size()
            return []
        self._buffer = buffer[end + 1:]
        self._check_size()
        out: list[Any] = []
        data_lines = self._data
        for line in buffer[:end].split(b"\n"):
            if not line:  # blank line: dispatch
                if data_lines:
                    payload = data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
                    if payload:  # an event whose data is empty is not dispatched
                        out.append(payload)
                    data_lines = self._data = []
                continue
            if line[:5] == b"data:":
                data_lines.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] == 58:  # ":" a comment, used as a keep-alive
                out.append(COMMENT)
            elif line == b"data":
                data_lines.append(b"")
            # other fields (event, id, retry) and unknown lines are ignored, as the spec says
        if data_lines and sum(map(len, data_lines)) > self._max:
            raise SSEProtocolError(f"an event longer than {self._max} bytes")
        return out

    def close(self) -> list[Any]:
        """End of the body: an event still open (its blank line never came)."""
        out = self.feed(b"\n\n") if (self._buffer or self._data) else []
        self._buffer, self._data, self._after_cr = b"", [], False
        return out

    def _check_size(self) -> None:
        if len(self._buffer) > self._max:
            raise SSEProtocolError(f"a line longer than {self._max} bytes without a line break")
