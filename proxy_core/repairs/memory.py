"""Switchboard's memory of the tool calls it delivered.

Clients replay history with tool calls missing (reference F4) and without
the reasoning that accompanied them (F3). Every call Switchboard relays is
remembered here, with the reasoning it streamed alongside, and persisted
through a `CallStore` (the journal) so the memory survives a restart.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RememberedCall:
    id: str
    name: str
    arguments: str
    reasoning: str = ""
    session_id: str = ""
    turn_id: str = ""
    upstream_id: str | None = None
    at: float = field(default_factory=time.time)


class CallStore(Protocol):
    def save_call(self, call: RememberedCall) -> None: ...

    def load_call(self, call_id: str) -> RememberedCall | None: ...


class ToolCallMemory:
    """Recently delivered calls in memory, all of them in the `CallStore`.

    A call asked for and found in neither is remembered as unknown (up to
    `capacity` of them) until it is delivered: history repairs ask for the
    same unknown calls on every turn of a session (a client's calls from
    before Switchboard, say), and each would otherwise be a journal read
    on the request's path.
    """

    def __init__(self, store: CallStore | None = None, capacity: int = 20_000) -> None:
        self._store = store
        self._capacity = capacity
        self._calls: OrderedDict[str, RememberedCall] = OrderedDict()
        self._unknown: OrderedDict[str, None] = OrderedDict()

    def remember(self, call: RememberedCall) -> None:
        self._unknown.pop(call.id, None)
        self._calls[call.id] = call
        if len(self._calls) > self._capacity:
            self._calls.popitem(last=False)
        if self._store is not None:
            self._store.save_call(call)

    def recall(self, call_id: str) -> RememberedCall | None:
        call = self._calls.get(call_id)
        if call is None and self._store is not None and call_id not in self._unknown:
            call = self._store.load_call(call_id)
            if call is not None:
                self._calls[call_id] = call
            else:
                self._unknown[call_id] = None
                if len(self._unknown) > self._capacity:
                    self._unknown.popitem(last=False)
        return call
