"""The journal's SQLite schema: turns, and requests stored as content-addressed parts.

A turn's row (`turns`) holds its record without the request. The request
is a skeleton (`turn_requests.skeleton`) and, for each of its part lists,
the ids of its parts in `contents` (`turn_requests.parts`, JSON such as
`{"messages": [1, 2, 5], "tools": [3, 4]}`), where each distinct part is
stored once (see `contents.py`). A session of N turns thus stores its
history about once, plus a few bytes per part per turn. `session_parts`
lists the parts each session's turns refer to, and `content_refs` counts
the sessions that refer to each part: a turn adds only the pairs its
session did not have (a message or two), not one count per part it sent,
and pruning a session (retention prunes whole sessions) drops the parts no
other session uses without reading every turn.

New journals use 1 KB pages: most rows are small, and a large row's last
overflow page is on average half empty, so smaller pages waste less.

`requests` is a view giving each turn's request as one JSON text, as the
table of that name did before (schema version 1): whoever reads the file
with SQLite alone still finds `SELECT request FROM requests WHERE id = ?`.

`create` brings a journal of an older version (version 1, or the older one
with the request in `turns.request`) to this schema when it is opened.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .contents import PART_FIELDS, Namer, Part, PreparedRequest
from .list_memo import ListMemo
from .secrets import Redactor

log = logging.getLogger(__name__)

VERSION = 4

#: Version 3: each turn's raw upstream answer, per attempt (`capture.py`), as redacted
#: JSON compressed with zlib (SSE framing repeats itself: 10-20 times smaller).
WIRE_TABLE = """
CREATE TABLE IF NOT EXISTS wire (
    id TEXT PRIMARY KEY,              -- the turn's id
    data BLOB NOT NULL                -- zlib({"attempts": [WireCapture.encode(), ...]})
)"""

#: Version 4: the parts each session refers to; `content_refs.n` counts sessions.
SESSION_PARTS_TABLE = """
CREATE TABLE IF NOT EXISTS session_parts (
    session_id TEXT NOT NULL,
    content INTEGER NOT NULL,         -- contents.id
    PRIMARY KEY (session_id, content)
) WITHOUT ROWID"""

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
    id TEXT NOT NULL UNIQUE,          -- the turn's id, or sent_messages_id()
    skeleton TEXT NOT NULL,           -- the request, its part lists left empty
    parts TEXT NOT NULL               -- {"messages": [contents.id, ...], ...}
);
CREATE TABLE IF NOT EXISTS contents (
    id INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,        -- BLAKE2b-128 of body
    body TEXT NOT NULL                -- one message or tool schema, as JSON
);
CREATE TABLE IF NOT EXISTS content_refs (
    id INTEGER PRIMARY KEY,           -- contents.id
    n INTEGER NOT NULL                -- sessions whose turns name it (session_parts)
);
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


def _field_json(name: str) -> str:
    return ("json((SELECT json_group_array(json(b)) FROM (SELECT c.body AS b"
            f" FROM json_each(q.parts, '$.{name}') e JOIN contents c ON c.id = e.value"
            " ORDER BY e.key)))")


#: `json_replace` only fills fields the skeleton has (as empty lists).
REQUESTS_VIEW = (
    "CREATE VIEW IF NOT EXISTS requests (id, request) AS SELECT q.id, json_replace(q.skeleton, "
    + ", ".join(f"'$.{name}', {_field_json(name)}" for name in PART_FIELDS)
    + ") FROM turn_requests q")



def create(conn: sqlite3.Connection, redactor: Redactor) -> None:
    """Create or migrate the schema (call outside a transaction)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= VERSION:
        return
    tables = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    migrated = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version in (2, 3):  # version 3 adds a table; version 4 one more, and recounts
            conn.execute(WIRE_TABLE)
            conn.execute(SESSION_PARTS_TABLE)
            _count_by_session(conn)
        else:
            for statement in TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(WIRE_TABLE)
            conn.execute(SESSION_PARTS_TABLE)
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
    source = ("SELECT t.id, t.session_id, coalesce(r.request, t.request) FROM turns t"
              " LEFT JOIN requests r ON r.id = t.id" if "requests" in tables
              else "SELECT id, session_id, request FROM turns")
    namer = Namer(redactor)  # redacted when written; again, for secrets learnt since
    writer = RequestWriter()
    count = 0
    for turn_id, session_id, raw in conn.execute(source).fetchall():
        request = json.loads(raw)
        if not request:
            continue
        writer.write(conn, turn_id, session_id, namer.prepare(request), lambda part: "")
        # One transaction for all: a failure drops this writer with it, so what it
        # remembers may count as committed (and stays bounded).
        writer.commit()
        count += 1
    if "requests" in tables:
        conn.execute("DROP TABLE requests")
    conn.execute("UPDATE turns SET request = '{}' WHERE request != '{}'")
    return count


def _count_by_session(conn: sqlite3.Connection) -> None:
    """Fill `session_parts` from every stored request and count sessions per part."""
    turn_of = ("CASE WHEN instr(q.id, '/') THEN substr(q.id, 1, instr(q.id, '/') - 1)"
               " ELSE q.id END")
    conn.execute(
        "INSERT OR IGNORE INTO session_parts (session_id, content)"
        " SELECT t.session_id, e.value FROM turn_requests q"
        f" JOIN turns t ON t.id = {turn_of}, json_each(q.parts) f, json_each(f.value) e")
    conn.execute("UPDATE content_refs SET n = 0")
    conn.executemany("UPDATE content_refs SET n = ? WHERE id = ?", [
        (n, c) for c, n in conn.execute(
            "SELECT content, count(*) FROM session_parts GROUP BY content")])


def release_session(conn: sqlite3.Connection, session_id: str, rids: list[int]) -> None:
    """Delete these requests of a session, and the parts no other session refers to
    (in a transaction)."""
    contents = [(c,) for (c,) in conn.execute(
        "SELECT content FROM session_parts WHERE session_id = ?", (session_id,))]
    conn.executemany("DELETE FROM turn_requests WHERE rid = ?", [(rid,) for rid in rids])
    conn.execute("DELETE FROM session_parts WHERE session_id = ?", (session_id,))
    conn.executemany("UPDATE content_refs SET n = n - 1 WHERE id = ?", contents)
    orphans = [(c,) for (c,) in conn.execute("SELECT id FROM content_refs WHERE n <= 0")]
    conn.executemany("DELETE FROM contents WHERE id = ?", orphans)
    conn.executemany("DELETE FROM content_refs WHERE id = ?", orphans)


def sent_messages_id(turn_id: str, attempt: object) -> str:
    """The `turn_requests` id that keeps the messages an attempt sent, when repairs changed
    the client's: the turn's id, a slash, and more (`retention` finds them by that)."""
    return f"{turn_id}/sent/{attempt}"


@dataclass(frozen=True, slots=True)
class _Written:
    """A part list's row ids, and the session it was written for."""

    ids: list[int]
    session_id: str


class RequestWriter:
    """Writes prepared requests, remembering which parts are on disk (by name → row id)
    and which parts each recent session already refers to (`session_parts`).

    A session's next request starts with the very part objects of its last
    one (`Namer` keeps them), so each field's part list is also remembered
    with its row ids (a few per first part, for a turn's request and the
    repaired messages it sent): a list that starts with one written before
    takes those ids whole, and only its new parts are looked up one by one.

    Call `commit()` after the transaction commits and `forget()` after a
    rollback or after parts were deleted: the memory is only of committed rows.
    """

    #: Part lists remembered per (field, first part), and first parts remembered.
    LISTS_PER_START = 4
    STARTS = 16

    def __init__(self, capacity: int = 50_000, sessions: int = 64) -> None:
        self.capacity = capacity
        self.sessions = sessions
        self._ids: OrderedDict[str, int] = OrderedDict()
        self._new: dict[str, int] = {}
        self._pairs: OrderedDict[str, set[int]] = OrderedDict()  # session -> its parts
        self._new_pairs: dict[str, set[int]] = {}
        self._lists: ListMemo[_Written] = ListMemo(self.STARTS, self.LISTS_PER_START)
        self._new_lists: list[tuple[str, tuple[Part, ...], _Written]] = []

    def write(self, conn: sqlite3.Connection, turn_id: str, session_id: str,
              prepared: PreparedRequest, body_of: Callable[[Part], str]) -> bool:
        """Insert the request of `turn_id` unless it is there; False if it was."""
        if conn.execute("SELECT 1 FROM turn_requests WHERE id = ?", (turn_id,)).fetchone():
            return False
        fields: dict[str, list[int]] = {}
        referred: set[int] = set()  # the session refers to these already
        for field, parts in prepared.fields.items():
            if not parts:
                continue
            found = self._lists.find(field, parts)
            ids = list(found[1].ids) if found is not None else []
            if found is not None and found[1].session_id == session_id:
                referred.update(ids)
            for part in parts[len(ids):]:
                ids.append(self._content(conn, part, prepared.bodies, body_of))
            fields[field] = ids
            self._new_lists.append((field, parts, _Written(ids, session_id)))
        conn.execute("INSERT INTO turn_requests (id, skeleton, parts) VALUES (?, ?, ?)",
                     (turn_id, prepared.skeleton, orjson.dumps(fields).decode()))
        self._refer(conn, session_id, set().union(*fields.values()) - referred)
        return True

    def _content(self, conn: sqlite3.Connection, part: Part, bodies: dict[str, str],
                 body_of: Callable[[Part], str]) -> int:
        """The row id of a part's content, inserted if it is not stored."""
        content = self._ids.get(part.name) or self._new.get(part.name)
        if content is not None:
            return content
        digest = bytes.fromhex(part.name)
        found = conn.execute("SELECT id FROM contents WHERE hash = ?", (digest,)).fetchone()
        if found is not None:
            content = int(found[0])
        else:
            body = bodies.get(part.name)
            content = int(conn.execute(
                "INSERT INTO contents (hash, body) VALUES (?, ?) RETURNING id",
                (digest, body if body is not None else body_of(part))).fetchone()[0])
            conn.execute("INSERT INTO content_refs (id, n) VALUES (?, 0)", (content,))
        self._new[part.name] = content
        return content

    #: From this many new pairs on, `_refer` inserts them in one statement (measured: the
    #: same time at 8; one by one is half the time for the 1-3 pairs a turn that extends
    #: the last brings, the batch a third of it for the hundreds a new history brings).
    BATCH_FROM = 8

    def _refer(self, conn: sqlite3.Connection, session_id: str, contents: set[int]) -> None:
        """Note that the session refers to these parts: only pairs it did not have count.

        A pair the session has on disk already (a writer that forgot, a restart)
        is ignored by the insert and not counted again (`rowcount` says so for
        one pair, `RETURNING` for a batch).
        """
        known = self._pairs.get(session_id)
        added = self._new_pairs.setdefault(session_id, set())
        fresh = [c for c in contents if c not in added and (known is None or c not in known)]
        if not fresh:  # most requests: every part already counted for the session
            return
        added.update(fresh)
        if len(fresh) < self.BATCH_FROM:
            inserted = [c for c in fresh if conn.execute(
                "INSERT OR IGNORE INTO session_parts (session_id, content) VALUES (?, ?)",
                (session_id, c)).rowcount]
        else:
            inserted = [c for (c,) in conn.execute(
                "INSERT OR IGNORE INTO session_parts (session_id, content)"
                " SELECT ?, value FROM json_each(?) RETURNING content",
                (session_id, orjson.dumps(fresh).decode()))]
        conn.executemany("UPDATE content_refs SET n = n + 1 WHERE id = ?",
                         [(c,) for c in inserted])

    def commit(self) -> None:
        for field, parts, written in self._new_lists:
            self._lists.keep(field, parts, written)
        self._new_lists.clear()
        ids = self._ids
        ids.update(self._new)
        for name in self._new:
            ids.move_to_end(name)
        self._new.clear()
        while len(ids) > self.capacity:
            ids.popitem(last=False)
        pairs = self._pairs
        for session_id, added in self._new_pairs.items():
            pairs.setdefault(session_id, set()).update(added)
            pairs.move_to_end(session_id)
        self._new_pairs.clear()
        while len(pairs) > self.sessions:
            pairs.popitem(last=False)

    def forget(self) -> None:
        self._lists.clear()
        self._new_lists.clear()
        self._ids.clear()
        self._new.clear()
        self._pairs.clear()
        self._new_pairs.clear()
