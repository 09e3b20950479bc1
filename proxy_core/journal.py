"""The journal: every turn, durable, in SQLite.

An observer on the event bus. A turn's row is written when it starts (state
`live`), checkpointed about once a second while output arrives (on its
`StreamHeartbeat`: the text so far, attempts, tool calls), and updated when
it finishes or fails, inside the event handler, before the client receives
the end of its stream. These rows are small: the request (the whole
history, often the bulk of a turn) is kept apart, once per turn, with each
message and tool schema stored once however many turns send it
(`journal_db.py`, `contents.py`). A small request (up to `INLINE_BYTES`)
is written with the row, before any output reaches the client. A larger
one is encoded, redacted and named on the journal's own worker thread, off
the event loop, and the loop writes the result (the new parts only) a few
milliseconds later, in the order turns started. Either way the turn in
memory then shares its messages with the turns before it
(`contents.Interner`). The database runs in WAL mode, so after `kill -9`
every finished turn is on disk and a turn that was in flight is there as
`live`, with what it had produced up to its last checkpoint; the next start
marks such turns failed as unfinished. When a turn ends, the raw bytes its
attempts received from the host (`capture.py`, for repro fixtures) are
encoded, redacted and compressed on the worker and written the same way,
into the `wire` table. Checkpoints (copying the WAL into
the database file) run on the worker too, never inside a commit on the
loop. Rows pass through the `Redactor` first: no secret reaches
the file. With `[proxy] journal_max_mb` or `journal_max_days` set, whole
old sessions are pruned (`retention.py`).

The journal never stops the proxy. When the disk is full or the file turns
read-only, writes fail: the first failure of a streak is logged loudly, the
count is kept (`status()`), turns that could not be written are kept and
written as soon as a write succeeds again (while they are still in memory),
and the recovery is logged with the count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from . import journal_db
from .capture import WireCapture
from .contents import Interner, Namer, PreparedRequest, approx_size
from .errors import ConfigError
from .events import StreamHeartbeat, TurnFailed, TurnFinished, TurnStarted
from .record import Turn
from .repairs.memory import RememberedCall
from .retention import Retention, prune
from .secrets import Redactor
from .store import TurnStore
from .usage import COUNTS, UsageTotals

log = logging.getLogger(__name__)

#: What a turn that was in flight when Switchboard died is marked with at the next start.
UNFINISHED_ERROR = ("unfinished: Switchboard stopped (killed, crashed or lost power) before "
                    "this turn finished; marked at the next start")
UNFINISHED_STATUS = 503
#: While writes keep failing, a reminder is logged at most this often (seconds).
REMINDER_INTERVAL = 300.0
#: Requests up to about this size are prepared on the event loop as the turn starts
#: (so they are on disk before its output reaches the client); larger ones on the worker.
INLINE_BYTES = 16 * 1024
#: The WAL is checkpointed (on the worker) at most this often, as turns end (seconds).
CHECKPOINT_INTERVAL = 1.0
#: Bytes the WAL file is cut back to after a checkpoint lets it start over.
WAL_LIMIT = 4 * 1024 * 1024
#: zlib level for the raw upstream answers (6: most of level 9's gain at a third of its time).
WIRE_COMPRESSION = 6
#: Retention is checked at most this often (seconds), when a turn ends.
PRUNE_INTERVAL = 60.0
#: SQLite result codes that mean "cannot write here now", not "this is not a journal".
_CANNOT_WRITE = {"SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY",
                 "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_PERM"}


def _cannot_write(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return any(name.startswith(code) for code in _CANNOT_WRITE) or \
        "readonly" in str(exc) or "disk" in str(exc)


class Journal:
    """SQLite-backed record of turns. Use `Journal.open(path, ...)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, redactor: Redactor,
                 store: TurnStore, retention: Retention | None = None) -> None:
        self.conn = conn
        self.path = path
        self.redactor = redactor
        self.store = store
        self.retention = retention or Retention()
        self.pruned_sessions = 0
        self._last_prune = 0.0
        # Requests: named on the worker (`_pending`, in start order), then written here.
        self.namer = Namer(redactor)         # the worker's
        self._inline_namer = Namer(redactor)  # the event loop's, for small requests
        self.interner = Interner()
        self._writer = journal_db.RequestWriter()
        self._worker: ThreadPoolExecutor | None = None
        self._checkpointer: sqlite3.Connection | None = None  # the worker's own connection
        self._last_checkpoint = 0.0
        self._pending: dict[str, tuple[dict[str, Any], Future[PreparedRequest]]] = {}
        self._unwritten: dict[str, tuple[dict[str, Any], PreparedRequest]] = {}
        self._wire_pending: dict[str, Future[bytes]] = {}  # raw answers on the worker
        # Health: see `status()`.
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._failed_writes = 0
        self._streak_failures = 0
        self._last_reminder = 0.0
        self._unsaved: dict[str, None] = {}  # turns whose latest state is not on disk
        self._lost = 0                        # of those, turns evicted from memory meanwhile
        self.recovered_unfinished = 0         # live turns of a previous run, marked at open
        self._checkpoints: dict[str, tuple[int, int]] = {}  # live turn -> (attempt, chunks) on disk

    @classmethod
    def open(cls, path: Path, redactor: Redactor, store: TurnStore,
             retention: Retention | None = None) -> Journal:
        """Open (or create) the journal at `path`.

        A path that cannot be a journal at all (a directory, not a database)
        is a configuration error. A journal that cannot be written right now
        (read-only, disk full) is opened anyway: the proxy keeps proxying,
        says so loudly and writes again as soon as it can.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"journal {path}: cannot open: {exc}") from None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConfigError(f"journal {path}: cannot open: {exc}") from None
        journal = cls(conn, path, redactor, store, retention)
        try:
            # Both take effect on a new file only (see journal_db).
            conn.execute("PRAGMA page_size=1024")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # The worker checkpoints (`_checkpoint`): never a commit on the event loop.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            journal_db.create(conn, redactor)
            journal.recovered_unfinished = journal._mark_unfinished()
            journal.prune()
        except sqlite3.Error as exc:
            if not _cannot_write(exc):
                conn.close()
                raise ConfigError(f"journal {path}: cannot open: {exc}") from None
            journal._failed("open the journal", exc)
        if journal.recovered_unfinished:
            log.warning("journal: %d turn(s) were still in flight when Switchboard last stopped;"
                        " marked failed (unfinished)", journal.recovered_unfinished)
        return journal

    def close(self) -> None:
        """Write the requests still being prepared, then close."""
        wait([future for _, future in self._pending.values()])
        self._drain()
        for turn_id, future in list(self._wire_pending.items()):  # the loop may not run again
            self._wire_ready(turn_id, future)
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        if self._checkpointer is not None:
            self._checkpointer.close()
        self.conn.close()

    # -- health ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Whether turns are being recorded, for `/health` and the dashboard.

        `ok` is False while writes fail; `error` is the latest failure,
        `failed_writes` counts them since start, `unsaved_turns` are turns
        kept in memory until a write succeeds, `lost_turns` those evicted
        from memory before that happened.
        """
        return {
            "path": str(self.path),
            "ok": self._failing_since is None,
            "error": self._last_error if self._failing_since is not None else None,
            "failing_since": self._failing_since,
            "failed_writes": self._failed_writes,
            "unsaved_turns": len(self._unsaved),
            "lost_turns": self._lost,
        }

    @property
    def ok(self) -> bool:
        return self._failing_since is None

    def _failed(self, what: str, exc: BaseException) -> None:
        self._failed_writes += 1
        self._streak_failures += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        now = time.time()
        if self._failing_since is None:
            self._failing_since = now
            self._last_reminder = now
            log.error("JOURNAL NOT WRITING: could not %s in %s: %s. Switchboard keeps proxying,"
                      " but turns are not recorded until this is fixed (disk full? read-only?);"
                      " they are kept in memory and written when the journal works again.",
                      what, self.path, exc)
        elif now - self._last_reminder >= REMINDER_INTERVAL:
            self._last_reminder = now
            log.error("JOURNAL STILL NOT WRITING (%d failed writes since %s; %d turns waiting): %s",
                      self._streak_failures, time.ctime(self._failing_since), len(self._unsaved),
                      exc)

    def _succeeded(self) -> None:
        if self._failing_since is None:
            return
        # The streak ends when the kept turns are on disk too: a small write that
        # fits while larger ones still fail (a file size limit) does not end it.
        if not self._flush_unsaved():
            return
        streak, self._streak_failures = self._streak_failures, 0
        self._failing_since = None
        log.warning("journal: writing again to %s after %d failed writes%s", self.path, streak,
                    f"; {self._lost} turn(s) were lost from memory meanwhile"
                    if self._lost else "")

    def _guarded(self, what: str, write: Callable[[], object]) -> bool:
        try:
            write()
        except sqlite3.Error as exc:
            self._failed(what, exc)
            return False
        self._succeeded()
        return True

    def _flush_unsaved(self) -> bool:
        """Write the kept turns; False if a write failed (the rest stay kept)."""
        for turn_id in list(self._unsaved):
            turn = self.store.get(turn_id)
            if turn is None:
                self._lost += 1
                del self._unsaved[turn_id]
                self._unwritten.pop(turn_id, None)
                continue
            try:
                self.save(turn)
            except sqlite3.Error as exc:
                self._failed("write a kept turn", exc)
                return False
            del self._unsaved[turn_id]
        return True

    # -- observer ----------------------------------------------------------------

    def on_TurnStarted(self, event: TurnStarted) -> None:
        # The bus delivers this once the upstream request is out. The row is
        # small and written now, so a turn is on disk before any of its output
        # can reach the client; so is its request if small, else the worker
        # prepares it (`save`).
        self._save_started(event.turn_id)

    def _save_started(self, turn_id: str) -> None:
        turn = self.store.get(turn_id)
        if turn is not None and turn.state == "live":
            self._write_turn(turn, full=True)

    def on_StreamHeartbeat(self, event: StreamHeartbeat) -> None:
        """Checkpoint a live turn whose output grew since its last write."""
        progress = (event.attempt, event.chunks)
        if event.chunks == 0 or self._checkpoints.get(event.turn_id) == progress:
            return
        turn = self.store.get(event.turn_id)
        if turn is not None and turn.state == "live":
            self._checkpoints[event.turn_id] = progress
            self._write_turn(turn, full=turn.id in self._unsaved)

    def on_TurnFinished(self, event: TurnFinished) -> None:
        self._end(event.turn_id)

    def on_TurnFailed(self, event: TurnFailed) -> None:
        self._end(event.turn_id)

    def _end(self, turn_id: str) -> None:
        self._checkpoints.pop(turn_id, None)
        turn = self.store.get(turn_id)
        if turn is not None:
            self._write_turn(turn, full=turn_id in self._unsaved)
            if turn.wire:
                self._save_wire(turn)
        if self.retention.any and time.monotonic() - self._last_prune >= PRUNE_INTERVAL:
            self.prune()
        self._maybe_checkpoint()

    def _write_turn(self, turn: Turn, *, full: bool) -> None:
        if self._guarded("record a turn",
                         (lambda: self.save(turn)) if full else (lambda: self._update(turn))):
            self._unsaved.pop(turn.id, None)
        else:
            self._unsaved[turn.id] = None

    # -- reading and writing ---------------------------------------------------

    def _json(self, value: Any, ascii: bool = False) -> str:
        return self.redactor(json.dumps(value, ensure_ascii=ascii, default=str,
                                        separators=(",", ":")))

    def save(self, turn: Turn) -> None:
        """Write the turn's row, and its request unless that is on its way.

        A request of up to `INLINE_BYTES` is prepared and written now; a
        larger one is handed to the worker (with an event loop running).
        """
        sql = ("INSERT OR REPLACE INTO turns (id, session_id, model, state, started_at,"
               " finished_at, finish_reason, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        data = turn.to_dict(include_request=False)
        try:
            self.conn.execute(sql, self._row(turn, self._json(data)))
        except UnicodeEncodeError:  # a lone surrogate: SQLite stores UTF-8, so escape it
            self.conn.execute(sql, self._row(turn, self._json(data, True)))
        if turn.id in self._pending:
            return
        request, prepared = self._unwritten.pop(turn.id, (turn.request, None))
        if not request:
            return
        if prepared is None:
            if approx_size(request) > INLINE_BYTES and self._submit(turn):
                return
            prepared = self._inline_namer.prepare(request)
            self._share(turn.id, request, prepared)
        self._write_request(turn.id, request, prepared)

    @staticmethod
    def _row(turn: Turn, data: str) -> tuple[Any, ...]:
        return (turn.id, turn.session_id, turn.model, turn.state, turn.started_at,
                turn.finished_at, turn.finish_reason, data)

    # -- requests ------------------------------------------------------------------

    def _submit(self, turn: Turn) -> bool:
        """Have the worker name and redact the turn's request; `_drain` writes it.

        False when there is no event loop to hear back on: prepare it in line.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        future = self._executor().submit(self.namer.prepare, turn.request)
        self._pending[turn.id] = (turn.request, future)

        def ready(_: Future[PreparedRequest]) -> None:
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed: `close` drains
                pass

        future.add_done_callback(ready)
        return True

    def _executor(self) -> ThreadPoolExecutor:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="switchboard-journal")
        return self._worker

    def _maybe_checkpoint(self) -> None:
        """Have the worker copy the WAL into the database, at most every `CHECKPOINT_INTERVAL`."""
        now = time.monotonic()
        if now - self._last_checkpoint < CHECKPOINT_INTERVAL:
            return
        self._last_checkpoint = now
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing to keep free, checkpoint here
            self._checkpoint()
            return
        self._executor().submit(self._checkpoint)

    def _checkpoint(self) -> None:
        """A passive checkpoint on the worker's connection: it never makes a writer wait."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None,
                                                     check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the next write will say so if the journal is broken
            log.debug("journal: checkpoint failed: %s", exc)

    def _drain(self) -> None:
        """Write the prepared requests, in the order their turns started."""
        while self._pending:
            turn_id, (request, future) = next(iter(self._pending.items()))
            if not future.done():
                return
            del self._pending[turn_id]
            try:
                prepared = future.result()
            except Exception:  # a bug of ours: the turn's row stays, without its request
                log.exception("journal: could not prepare the request of %s", turn_id)
                continue
            self._share(turn_id, request, prepared)
            if not self._guarded("record a request",
                                 partial(self._write_request, turn_id, request, prepared)):
                self._unsaved[turn_id] = None

    def _write_request(self, turn_id: str, request: dict[str, Any],
                       prepared: PreparedRequest) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            self._writer.write(conn, turn_id, prepared,
                               lambda part: self._inline_namer.body_of(request, part))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._writer.forget()
            self._unwritten[turn_id] = (request, prepared)
            raise
        self._writer.commit()

    def _share(self, turn_id: str, request: dict[str, Any], prepared: PreparedRequest) -> None:
        """Let the turn in memory hold the same message objects as earlier turns."""
        turn = self.store.get(turn_id)
        if turn is None or turn.request is not request:
            return
        fields: dict[str, list[Any]] = {}
        for part in prepared.parts:
            items = fields.get(part.field)
            if items is None:
                items = fields[part.field] = list(request[part.field])
            items[part.position] = self.interner.intern(part.key, items[part.position], part.size)
        if fields:
            turn.request = {**request, **fields}

    # -- raw upstream answers ----------------------------------------------------------

    def _save_wire(self, turn: Turn) -> None:
        """Hand the turn's captured upstream bytes to the worker to encode and redact;
        the loop writes the result. The turn lets go of them now."""
        captures, turn.wire = turn.wire, []
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_wire(turn.id, self._encode_wire(captures))
            return
        future = self._executor().submit(self._encode_wire, captures)
        self._wire_pending[turn.id] = future

        def ready(done: Future[bytes]) -> None:
            try:
                loop.call_soon_threadsafe(self._wire_ready, turn.id, done)
            except RuntimeError:  # the loop closed
                pass

        future.add_done_callback(ready)

    def _encode_wire(self, captures: list[WireCapture]) -> bytes:
        """The captures as redacted JSON, compressed (on the worker). orjson: up to 512 KB
        of reads encode in ~3 ms, where `json` holds the GIL for ~25 ms."""
        attempts = []
        for capture in captures:
            data = capture.encode()
            if capture.messages is not None:
                data["messages"] = capture.messages
            attempts.append(data)
        try:
            text = self.redactor(orjson.dumps({"attempts": attempts}).decode())
        except (orjson.JSONEncodeError, TypeError):  # a lone surrogate in the messages
            text = self._json({"attempts": attempts}, True)
        return zlib.compress(text.encode("utf-8", "surrogatepass"), WIRE_COMPRESSION)

    def _wire_ready(self, turn_id: str, done: Future[bytes]) -> None:
        if self._wire_pending.pop(turn_id, None) is None:
            return  # written by `close` already
        try:
            data = done.result()
        except Exception:  # a bug of ours: the turn stays, without its raw answer
            log.exception("journal: could not encode the upstream answer of %s", turn_id)
            return
        self._write_wire(turn_id, data)

    def _write_wire(self, turn_id: str, data: bytes) -> None:
        self._guarded("record an upstream answer", lambda: self.conn.execute(
            "INSERT OR REPLACE INTO wire (id, data) VALUES (?, ?)", (turn_id, data)))

    def wire(self, turn_id: str) -> dict[str, Any] | None:
        """The raw upstream answer of a turn, per attempt (`capture.WireCapture.encode`)."""
        try:
            row = self.conn.execute("SELECT data FROM wire WHERE id = ?", (turn_id,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        return dict(json.loads(zlib.decompress(row[0]).decode("utf-8", "surrogatepass")))

    # -- retention -------------------------------------------------------------------

    def prune(self) -> int:
        """Drop the sessions `[proxy] journal_max_mb`/`journal_max_days` rule out."""
        self._last_prune = time.monotonic()
        if not self.retention.any:
            return 0
        pruned = 0

        def run() -> None:
            nonlocal pruned
            pruned = prune(self.conn, self.retention)

        if self._guarded("prune old sessions", run) and pruned:
            self.pruned_sessions += pruned
            self._writer.forget()
            self.namer.forget()
            self._inline_namer.forget()
            log.info("journal: pruned %d old session(s) to stay within its limits", pruned)
        return pruned

    def _update(self, turn: Turn) -> None:
        """Rewrite everything but the request, which does not change."""
        data = turn.to_dict(include_request=False)
        sql = ("UPDATE turns SET state = ?, finished_at = ?, finish_reason = ?, data = ?"
               " WHERE id = ?")
        try:
            cursor = self.conn.execute(sql, (turn.state, turn.finished_at, turn.finish_reason,
                                             self._json(data), turn.id))
        except UnicodeEncodeError:
            cursor = self.conn.execute(sql, (turn.state, turn.finished_at, turn.finish_reason,
                                             self._json(data, True), turn.id))
        if cursor.rowcount == 0:
            self.save(turn)

    def save_call(self, call: RememberedCall) -> None:
        """Remember a delivered tool call (the `CallStore` of `ToolCallMemory`).

        A failed write is counted and logged like any other; the call stays
        in `ToolCallMemory`'s memory, so the relay goes on.
        """
        self._guarded("remember a tool call", lambda: self.conn.execute(
            "INSERT OR REPLACE INTO tool_calls (id, name, arguments, reasoning, session_id,"
            " turn_id, upstream_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (call.id, call.name, self.redactor(call.arguments), self.redactor(call.reasoning),
             call.session_id, call.turn_id, call.upstream_id, call.at)))

    def load_call(self, call_id: str) -> RememberedCall | None:
        try:
            row = self.conn.execute(
                "SELECT id, name, arguments, reasoning, session_id, turn_id, upstream_id, at"
                " FROM tool_calls WHERE id = ?", (call_id,)).fetchone()
        except sqlite3.Error:
            return None
        return RememberedCall(*row) if row else None

    def turns(self, limit: int = 100, session_id: str | None = None) -> list[dict[str, Any]]:
        """The most recent turns (oldest first), without their requests."""
        try:
            if session_id:
                rows = self.conn.execute(
                    "SELECT data FROM turns WHERE session_id = ? ORDER BY started_at DESC LIMIT ?",
                    (session_id, limit)).fetchall()
            else:
                rows = self.conn.execute(
                    "SELECT data FROM turns ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error:  # a journal that could not even be set up
            return []
        return [json.loads(r[0]) for r in reversed(rows)]

    def usage(self) -> dict[str, UsageTotals]:
        """Tokens and cost per session over every turn kept (`usage.UsageTotals`)."""
        sums = ", ".join(f"coalesce(sum(json_extract(data, '$.usage.{name}')), 0)"
                         for name in COUNTS)
        try:
            rows = self.conn.execute(
                f"SELECT session_id, count(*), {sums}, coalesce(sum(json_extract(data, '$.cost')),"
                " 0.0), count(json_extract(data, '$.cost')) FROM turns GROUP BY session_id"
            ).fetchall()
        except sqlite3.Error:
            return {}
        sessions: dict[str, UsageTotals] = {}
        for row in rows:
            totals = UsageTotals(turns=int(row[1]), cost=float(row[2 + len(COUNTS)]),
                                 priced_turns=int(row[3 + len(COUNTS)]))
            for name, value in zip(COUNTS, row[2:2 + len(COUNTS)], strict=True):
                setattr(totals, name, int(value))
            sessions[str(row[0])] = totals
        return sessions

    def turn(self, turn_id: str) -> dict[str, Any] | None:
        """One turn with its request."""
        try:
            row = self.conn.execute(
                "SELECT t.data, coalesce(r.request, t.request) FROM turns t"
                " LEFT JOIN requests r ON r.id = t.id WHERE t.id = ?", (turn_id,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        data: dict[str, Any] = json.loads(row[0])
        data["request"] = json.loads(row[1])
        return data

    # -- recovery ----------------------------------------------------------------

    def _mark_unfinished(self) -> int:
        """Turns left `live` by a previous run that died: mark them failed, unfinished."""
        rows = self.conn.execute("SELECT id, data FROM turns WHERE state = 'live'").fetchall()
        if not rows:
            return 0
        self.conn.execute("BEGIN")
        try:
            for turn_id, raw in rows:
                data = json.loads(raw)
                ended = max([data.get("started_at") or 0.0] + [
                    a.get(key) or 0.0 for a in data.get("attempts", [])
                    for key in ("started_at", "first_byte_at", "last_output_at", "ended_at")])
                for attempt in data.get("attempts", []):
                    if attempt.get("outcome") == "live":
                        attempt["outcome"] = "abandoned"
                        attempt["ended_at"] = ended
                        attempt["error"] = "Switchboard stopped"
                data.update(state="failed", error=UNFINISHED_ERROR, status=UNFINISHED_STATUS,
                            finished_at=ended)
                self.conn.execute(
                    "UPDATE turns SET state = 'failed', finished_at = ?, data = ? WHERE id = ?",
                    (ended, json.dumps(data, ensure_ascii=False), turn_id))
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return len(rows)
