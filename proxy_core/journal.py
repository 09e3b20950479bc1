"""The journal: every turn, durable, in SQLite.

An observer on the event bus. A turn's row is written when it starts (state
`live`, with the request) and updated when it finishes or fails, inside the
event handler, before the client receives the end of its stream. The
request (the whole history, often the bulk of a turn) is written once. The database runs in WAL
mode, so after `kill -9` every finished turn is on disk and a turn that was
in flight is there as `live`. Rows pass through the `Redactor` first: no
secret reaches the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .repairs.memory import RememberedCall
from .events import TurnFailed, TurnFinished, TurnStarted
from .record import Turn
from .secrets import Redactor
from .store import TurnStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    finish_reason TEXT,
    data TEXT NOT NULL,
    request TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS turns_session ON turns(session_id, started_at);
CREATE INDEX IF NOT EXISTS turns_started ON turns(started_at);
CREATE TABLE IF NOT EXISTS tool_calls (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    arguments TEXT NOT NULL,
    reasoning TEXT NOT NULL,
    session_id TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    upstream_id TEXT,
    at REAL NOT NULL
);
"""


class Journal:
    """SQLite-backed record of turns. Use `Journal.open(path, ...)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, redactor: Redactor,
                 store: TurnStore) -> None:
        self.conn = conn
        self.path = path
        self.redactor = redactor
        self.store = store

    @classmethod
    def open(cls, path: Path, redactor: Redactor, store: TurnStore) -> Journal:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"journal {path}: cannot open: {exc}") from None
        return cls(conn, path, redactor, store)

    def close(self) -> None:
        self.conn.close()

    # -- observer ----------------------------------------------------------------

    def on_TurnStarted(self, event: TurnStarted) -> None:
        # The first write carries the whole history; let the upstream request
        # go out first. A finish that comes sooner writes the row itself.
        try:
            asyncio.get_running_loop().call_soon(self._save_started, event.turn_id)
        except RuntimeError:  # no loop: write now
            self._save_started(event.turn_id)

    def _save_started(self, turn_id: str) -> None:
        turn = self.store.get(turn_id)
        if turn is not None and turn.state == "live":
            try:
                self.save(turn)
            except sqlite3.Error:
                log.exception("journal: could not record turn %s", turn_id)

    def on_TurnFinished(self, event: TurnFinished) -> None:
        self._update(event.turn_id)

    def on_TurnFailed(self, event: TurnFailed) -> None:
        self._update(event.turn_id)

    # -- reading and writing ---------------------------------------------------

    def _json(self, value: Any) -> str:
        return self.redactor(json.dumps(value, ensure_ascii=False, default=str))

    def save(self, turn: Turn) -> None:
        """Write the whole turn, request included."""
        self.conn.execute(
            "INSERT OR REPLACE INTO turns (id, session_id, model, state, started_at,"
            " finished_at, finish_reason, data, request) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (turn.id, turn.session_id, turn.model, turn.state, turn.started_at,
             turn.finished_at, turn.finish_reason,
             self._json(turn.to_dict(include_request=False)), self._json(turn.request)))

    def _update(self, turn_id: str) -> None:
        """Rewrite everything but the request, which does not change."""
        turn = self.store.get(turn_id)
        if turn is None:
            return
        cursor = self.conn.execute(
            "UPDATE turns SET state = ?, finished_at = ?, finish_reason = ?, data = ?"
            " WHERE id = ?",
            (turn.state, turn.finished_at, turn.finish_reason,
             self._json(turn.to_dict(include_request=False)), turn.id))
        if cursor.rowcount == 0:
            self.save(turn)

    def save_call(self, call: RememberedCall) -> None:
        """Remember a delivered tool call (the `CallStore` of `ToolCallMemory`)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO tool_calls (id, name, arguments, reasoning, session_id,"
            " turn_id, upstream_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (call.id, call.name, self.redactor(call.arguments), self.redactor(call.reasoning),
             call.session_id, call.turn_id, call.upstream_id, call.at))

    def load_call(self, call_id: str) -> RememberedCall | None:
        row = self.conn.execute(
            "SELECT id, name, arguments, reasoning, session_id, turn_id, upstream_id, at"
            " FROM tool_calls WHERE id = ?", (call_id,)).fetchone()
        return RememberedCall(*row) if row else None

    def turns(self, limit: int = 100, session_id: str | None = None) -> list[dict[str, Any]]:
        """The most recent turns (oldest first), without their requests."""
        if session_id:
            rows = self.conn.execute(
                "SELECT data FROM turns WHERE session_id = ? ORDER BY started_at DESC LIMIT ?",
                (session_id, limit)).fetchall()
        else:
            rows = self.conn.execute(
                "SELECT data FROM turns ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def turn(self, turn_id: str) -> dict[str, Any] | None:
        """One turn with its request."""
        row = self.conn.execute("SELECT data, request FROM turns WHERE id = ?",
                                (turn_id,)).fetchone()
        if row is None:
            return None
        data = json.loads(row[0])
        data["request"] = json.loads(row[1])
        return data
