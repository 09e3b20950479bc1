"""Switchboard's exception hierarchy.

Third-party exceptions (httpx, aiohttp, botocore) are mapped into these once,
at the boundary where they occur; everything else only sees these types.
"""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base class for every error Switchboard raises on purpose."""


class ConfigError(SwitchboardError):
    """The configuration file is missing, unparsable or inconsistent."""


class ClientRequestError(SwitchboardError):
    """The client's request is invalid; answered with an OpenAI-shaped error."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request",
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type_


class UpstreamError(SwitchboardError):
    """An upstream failed. `retryable` says whether another attempt may help."""

    retryable: bool = True
    status: int = 502
    code: str = "upstream_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyReply(UpstreamError):
    """The upstream ended its turn with no text and no tool call (Kimi K2.6 after thinking)."""

    code = "empty_reply"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx HTTP status."""

    def __init__(self, status: int, message: str, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.code = "upstream_http_error"
        # Client-side mistakes will fail the same way on every attempt;
        # rate limits and server faults may not.
        self.retryable = status == 429 or status >= 500 or status == 408


class UpstreamStreamError(UpstreamError):
    """The upstream reported an error inside a 200 stream (reference §1 F6)."""

    code = "upstream_stream_error"


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached or dropped the connection."""

    code = "upstream_unreachable"


class UpstreamProtocolError(UpstreamError):
    """The upstream sent bytes that are not valid for its wire format."""

    code = "upstream_protocol_error"


#: Tool-call characters (arguments and leaked call text) one answer may hold back while
#: its calls are still arriving, and how many calls. Far above any real answer:
#: opencode writes a whole file as one call's argument.
HELD_CALL_LIMIT = 16 * 1024 * 1024
HELD_CALLS_LIMIT = 1024
#: The most an answer built whole may hold: a non-streamed JSON answer from a host
#: (bytes), and the characters of text and reasoning of one for a client that
#: did not ask for a stream.
WHOLE_ANSWER_LIMIT = 64 * 1024 * 1024


class RunawayAnswer(UpstreamError):
    """The upstream kept one answer's tool calls coming past anything real.

    Adapters and the leak repair hold a call until it is whole (`stream.py`).
    Past `HELD_CALL_LIMIT` characters or `HELD_CALLS_LIMIT` calls held, the
    attempt fails with this instead of memory growing with the host's output.
    Retried like any broken answer: a model caught in a loop may not loop again.
    """

    code = "upstream_runaway"

    @classmethod
    def check(cls, chars: int, calls: int = 1) -> None:
        """Raise when `chars` held in `calls` calls are past the limits."""
        if chars > HELD_CALL_LIMIT or calls > HELD_CALLS_LIMIT:
            raise cls(f"the upstream sent {chars:,} characters in {calls:,} unfinished tool "
                      f"call(s) (limits: {HELD_CALL_LIMIT:,} and {HELD_CALLS_LIMIT:,}); "
                      "given up as a runaway answer")

    @classmethod
    def check_whole(cls, chars: int) -> None:
        """Raise when a non-streamed answer's `chars` of text are past `WHOLE_ANSWER_LIMIT`."""
        if chars > WHOLE_ANSWER_LIMIT:
            raise cls(f"the answer passed {WHOLE_ANSWER_LIMIT:,} characters without ending; "
                      "a non-streamed answer is built whole, so it was given up as a runaway "
                      "answer (ask for a stream to get all of it)")


class UpstreamTimeout(UpstreamError):
    """The watchdog gave up waiting: no first byte, or silence mid-stream."""

    status = 504
    code = "upstream_timeout"
