"""The journal's SQLite schema: turns, and requests stored as content-addressed parts.

A turn's row (`turns`) holds its record without the request. The request
is a skeleton (`turn_requests`) plus, for each message and tool schema, a
row in `parts` pointing at `contents`, where each distinct part is stored
once (see `contents.py`). A session of N turns thus stores its history
about once, plus a small row per part per turn.

`requests` is a view giving each turn's request as one JSON text, as the
table of that name did before (schema version 1): whoever reads the file
with SQLite alone still finds `SELECT request FROM requests WHERE id = ?`.

`migrate` brings a journal of version 1 (or the older one with the request
in `turns.request`) to this schema when it is opened.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable

from .contents import PART_FIELDS, Namer, Part, PreparedRequest
from .secrets import Redactor

log = logging.getLogger(__name__)

VERSION = 2

TABLES = """
CREATE TABLE IF NOT EXISTS turns (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    finish_reason TEXT,
    data TEXT NOT NULL,
    request TEXT NOT NULL DEFAULT '{}'  -- the oldest journals kept the request here
);
CREATE INDEX IF NOT EXISTS turns_session ON turns(session_id, started_at);
CREATE INDEX IF NOT EXISTS turns_started ON turns(started_at);
CREATE TABLE IF NOT EXISTS turn_requests (
    rid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,          -- the turn's id
    skeleton TEXT NOT NULL            -- the request, its part lists left empty
);
CREATE TABLE IF NOT EXISTS contents (
    id INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,        -- BLAKE2b-128 of body
    body TEXT NOT NULL                -- one message or tool schema, as JSON
);
CREATE TABLE IF NOT EXISTS parts (
    turn INTEGER NOT NULL,            -- turn_requests.rid
    field INTEGER NOT NULL,           -- index in contents.PART_FIELDS
    position INTEGER NOT NULL,
    content INTEGER NOT NULL,         -- contents.id
    PRIMARY KEY (turn, field, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parts_content ON parts(content);
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


def _field_json(index: int) -> str:
    return ("json((SELECT json_group_array(json(b)) FROM (SELECT c.body AS b FROM parts p"
            " JOIN contents c ON c.id = p.content"
            f" WHERE p.turn = q.rid AND p.field = {index} ORDER BY p.position)))")


#: `json_replace` only fills fields the skeleton has (as empty lists).
REQUESTS_VIEW = (
    "CREATE VIEW IF NOT EXISTS requests (id, request) AS SELECT q.id, json_replace(q.skeleton, "
    + ", ".join(f"'$.{name}', {_field_json(i)}" for i, name in enumerate(PART_FIELDS))
    + ") FROM turn_requests q")

FIELD_INDEX = {name: i for i, name in enumerate(PART_FIELDS)}


def create(conn: sqlite3.Connection, redactor: Redactor) -> None:
    """Create or migrate the schema (call outside a transaction)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= VERSION:
        return
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        migrated = _migrate(conn, tables, redactor) if "turns" in tables else 0
        conn.execute(REQUESTS_VIEW)
        conn.execute(f"PRAGMA user_version = {VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if migrated:
        log.warning("journal: migrated %d request(s) to content-addressed storage; compacting",
                    migrated)
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")


def _migrate(conn: sqlite3.Connection, tables: set[str], redactor: Redactor) -> int:
    """Move version-1 requests (table `requests`, or `turns.request`) into parts."""
    source = ("SELECT t.id, coalesce(r.request, t.request) FROM turns t"
              " LEFT JOIN requests r ON r.id = t.id" if "requests" in tables
              else "SELECT id, request FROM turns")
    namer = Namer(redactor)  # redacted when written; again, for secrets learnt since
    writer = RequestWriter()
    count = 0
    for turn_id, raw in conn.execute(source).fetchall():
        request = json.loads(raw)
        if not request:
            continue
        writer.write(conn, turn_id, namer.prepare(request), lambda part: "")
        count += 1
    if "requests" in tables:
        conn.execute("DROP TABLE requests")
    conn.execute("UPDATE turns SET request = '{}' WHERE request != '{}'")
    return count


class RequestWriter:
    """Writes prepared requests, remembering which parts are on disk (by name → row id).

    Call `commit()` after the transaction commits and `forget()` after a
    rollback or after parts were deleted: the memory is only of committed rows.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, int] = OrderedDict()
        self._new: dict[str, int] = {}

    def write(self, conn: sqlite3.Connection, turn_id: str, prepared: PreparedRequest,
              body_of: Callable[[Part], str]) -> bool:
        """Insert the request of `turn_id` unless it is there; False if it was."""
        cursor = conn.execute("INSERT OR IGNORE INTO turn_requests (id, skeleton) VALUES (?, ?)",
                              (turn_id, prepared.skeleton))
        if cursor.rowcount == 0:
            return False
        rid = cursor.lastrowid
        rows = []
        for part in prepared.parts:
            content = self._ids.get(part.name) or self._new.get(part.name)
            if content is None:
                found = conn.execute("SELECT id FROM contents WHERE hash = ?",
                                     (part.name,)).fetchone()
                if found is not None:
                    content = found[0]
                else:
                    body = part.body if part.body is not None else body_of(part)
                    content = conn.execute(
                        "INSERT INTO contents (hash, body) VALUES (?, ?) RETURNING id",
                        (part.name, body)).fetchone()[0]
                self._new[part.name] = content
            rows.append((rid, FIELD_INDEX[part.field], part.position, content))
        conn.executemany("INSERT INTO parts (turn, field, position, content) VALUES (?, ?, ?, ?)",
                         rows)
        return True

    def commit(self) -> None:
        ids = self._ids
        ids.update(self._new)
        for name in self._new:
            ids.move_to_end(name)
        self._new.clear()
        while len(ids) > self.capacity:
            ids.popitem(last=False)

    def forget(self) -> None:
        self._ids.clear()
        self._new.clear()
