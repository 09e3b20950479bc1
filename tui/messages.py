"""Messages the dashboard's sources and workers post; `@on` handlers in the app own the state.

Sources never touch widgets: they collect core events and post
`EventsReady` at most a few times a second. It can replace an unhandled
`EventsReady`, so a busy UI handles one drain however many were posted.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from proxy_core.record import Turn


@dataclass
class EventsReady(Message):
    """The source has buffered events; drain them with `source.drain()`."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EventsReady)


@dataclass
class SourceStatus(Message):
    """The source's link to the proxy changed (only `attach` ever disconnects)."""

    connected: bool
    detail: str = ""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SourceStatus)


@dataclass
class TurnLoaded(Message):
    """A turn's full record (with its request) was fetched from the journal or the API."""

    turn: Turn


@dataclass
class OlderLoaded(Message):
    """Older turns came from the journal on demand."""

    turns: list[Turn]


@dataclass
class HistoryLoaded(Message):
    """The journal's recent turns, for the host scoreboard's counts."""

    turns: list[Turn]


@dataclass
class TurnActionDone(Message):
    """A retry or reroute was accepted; `turn_id` now carries the work."""

    action: str  # "retry" | "reroute"
    source_turn: str
    turn_id: str
    target: str = ""


@dataclass
class ActionFailed(Message):
    """Something the user asked for could not be done; shown as a notification."""

    action: str
    error: str


@dataclass
class TargetsLoaded(Message):
    """The reroute targets for a turn, for the picker."""

    turn_id: str
    targets: list[str]


@dataclass
class Exported(Message):
    """A turn or session was written to a JSON file."""

    what: str
    path: str
