"""Keeping the journal within `[proxy] journal_max_mb` and `journal_max_days`.

Whole sessions go, oldest first (by their latest turn): a session is never
cut in half, a session with a turn in flight is never touched, and the
newest session stays even when it alone is over the size limit. A part
(message, tool schema) goes with the last turn that refers to it.

Size is the space the journal's rows take (pages in use); freed pages are
handed back to the file system where the journal allows it (journals made
or migrated by this version do), otherwise reused by later turns.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from .config import ProxySettings
from .journal_db import release_session

#: Pruning for size goes down to this fraction of the limit, so it runs in batches.
LOW_WATER = 0.9


@dataclass(frozen=True, slots=True)
class Retention:
    max_bytes: int | None = None
    max_age: float | None = None  # seconds

    @property
    def any(self) -> bool:
        return self.max_bytes is not None or self.max_age is not None


def retention_of(settings: ProxySettings) -> Retention:
    """The limits `[proxy] journal_max_mb` and `journal_max_days` set."""
    mb, days = settings.journal_max_mb, settings.journal_max_days
    return Retention(None if mb is None else int(mb * 1024 * 1024),
                     None if days is None else days * 86400.0)


def used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes in pages that hold data (the file may be larger by its free pages)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def prune(conn: sqlite3.Connection, retention: Retention, now: float | None = None) -> int:
    """Delete the sessions `retention` rules out; returns how many went."""
    if not retention.any:
        return 0
    now = time.time() if now is None else now
    too_old = retention.max_age is not None and _oldest(conn) < now - retention.max_age
    too_big = retention.max_bytes is not None and used_bytes(conn) > retention.max_bytes
    if not (too_old or too_big):
        return 0
    sessions = conn.execute(
        "SELECT session_id, max(started_at) AS last, sum(state = 'live') FROM turns"
        " GROUP BY session_id ORDER BY last").fetchall()
    pruned = 0
    for index, (session_id, last, live) in enumerate(sessions):
        if live:
            continue
        old = retention.max_age is not None and last < now - retention.max_age
        big = retention.max_bytes is not None and index < len(sessions) - 1 and \
            used_bytes(conn) > retention.max_bytes * LOW_WATER  # the newest session stays
        if not (old or big):
            break
        delete_session(conn, session_id)
        pruned += 1
    if pruned:
        conn.executescript("PRAGMA incremental_vacuum")  # run to the end: every free page
    return pruned


def _oldest(conn: sqlite3.Connection) -> float:
    row = conn.execute("SELECT min(started_at) FROM turns").fetchone()
    return float(row[0]) if row and row[0] is not None else float("inf")


def delete_session(conn: sqlite3.Connection, session_id: str) -> None:
    """One session's turns, requests, tool calls and the parts no other turn uses."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rids = [rid for (rid,) in conn.execute(
            "SELECT q.rid FROM turn_requests q JOIN turns t"
            # the turn's request, and the messages its attempts sent (`sent_messages_id`)
            " ON q.id = t.id OR (q.id > t.id || '/' AND q.id < t.id || '0')"
            " WHERE t.session_id = ?", (session_id,))]
        release_session(conn, session_id, rids)
        conn.execute("DELETE FROM wire WHERE id IN (SELECT id FROM turns WHERE session_id = ?)",
                     (session_id,))
        conn.execute("DELETE FROM turns WHERE session_id = ?", (session_id,))
        conn.execute("DELETE FROM tool_calls WHERE session_id = ?", (session_id,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
