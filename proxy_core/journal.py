"""The journal: every turn, durable, in SQLite.

An observer on the event bus that does nothing on the event loop but take
snapshots: every write happens on the journal's own writer thread (`_do`,
`Writer`: rows first, then requests, each kind in the order the events
came), so the request path never waits for SQLite, JSON encoding,
redaction or hashing. A turn's first output and its end wait only for its
row to be written (`recorded`, which the pipeline awaits; a new turn's row is
written with its request, so that a turn in flight is on disk with what it
answers). A turn's row is
written when it starts (state `live`), checkpointed about once a second
while output arrives (on its `StreamHeartbeat`: the text so far, attempts,
tool calls), and updated when it finishes or fails. These rows are small:
the request (the whole history, often the bulk of a turn) is kept apart,
once per turn, with each message and tool schema stored once however many
turns send it (`journal_db.py`, `contents.py`); the writer encodes every
part but names, redacts and stores only those not seen before, and the
turn in memory then shares its messages with the turns before it
(`contents.Interner`). Reads
(`turns`, `turn`, `wire`, `usage`) see every write handed over before them:
the control API and the dashboard run them on the writer, behind those
writes (`fetch`), so that the event loop waits for neither; called directly
(tools, start-up) they wait for the writer first (`settle`). The database runs in WAL
mode, so after `kill -9` every turn whose client saw its end is on disk as
finished, and a turn that was in flight is there as `live`, with what it
had produced up to its last checkpoint; the next start marks such turns
failed as unfinished.
Checkpoints (copying the WAL into the database file) run on the writer too,
on a connection of their own. Rows pass through the `Redactor` first: no
secret reaches the file. When a turn ends, the raw bytes its attempts
received from the host (`capture.py`, for repro fixtures) are encoded,
redacted and compressed on the writer, into the `wire` table. With `[proxy] journal_max_mb` or
`journal_max_days` set, whole old sessions are pruned (`retention.py`).

The journal never stops the proxy. When the disk is full or the file turns
read-only, writes fail: the first failure of a streak is logged loudly, the
count is kept (`status()`), turns that could not be written are kept and
written as soon as a write succeeds again (while they are still in memory),
and the recovery is logged with the count.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from . import journal_db
from .capture import WireCapture
from .contents import Interner, Namer, PreparedRequest
from .errors import ConfigError
from .events import StreamHeartbeat, TurnFailed, TurnFinished, TurnStarted
from .record import Turn
from .repairs.memory import RememberedCall
from .retention import Retention, prune
from .secrets import Redactor
from .store import TurnStore
from .usage import COUNTS, UsageTotals

log = logging.getLogger(__name__)
R = TypeVar("R")  # what a read gives (`Journal.fetch`)

#: What a turn that was in flight when Switchboard died is marked with at the next start.
UNFINISHED_ERROR = ("unfinished: Switchboard stopped (killed, crashed or lost power) before "
                    "this turn finished; marked at the next start")
UNFINISHED_STATUS = 503
#: While writes keep failing, a reminder is logged at most this often (seconds).
REMINDER_INTERVAL = 300.0
#: The WAL is checkpointed (on the worker) at most this often, as turns end (seconds).
CHECKPOINT_INTERVAL = 1.0
#: Bytes the WAL file is cut back to after a checkpoint lets it start over.
WAL_LIMIT = 4 * 1024 * 1024
#: zlib level for the raw upstream answers. SSE framing repeats itself, and level 1
#: already takes a 200-chunk answer from 47 KB to 0.9 KB, in half level 6's time
#: (190 us against 390; level 6 gave 0.8 KB), on the writer, on every turn.
WIRE_COMPRESSION = 1
#: zlib window (2**14 bytes) and memory level for the raw answers. With zlib's defaults
#: (2**15, 8) most of a typical answer's time goes to setting up the compressor: a
#: 2.4 KB answer took 105 us, an 18 KB one 158 us; with these, 22 and 65 us, at the
#: same ratio (0.16, 0.09), and 0.6 ms instead of 0.75 for 148 KB. `zlib.decompress`
#: reads any window, so journals written either way read the same.
WIRE_WINDOW_BITS = 14
WIRE_MEM_LEVEL = 6
#: Retention is checked at most this often (seconds), when a turn ends.
PRUNE_INTERVAL = 60.0
#: The writer thread's name.
_WRITER = "switchboard-journal"
#: SQLite result codes that mean "cannot write here now", not "this is not a journal".
_CANNOT_WRITE = {"SQLITE_READONLY", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_BUSY",
                 "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_PERM"}


def _cannot_write(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return any(name.startswith(code) for code in _CANNOT_WRITE) or \
        "readonly" in str(exc) or "disk" in str(exc)


def _nothing() -> None:
    """A job that only marks its place in the writer's queue (`Writer.caught_up`)."""


class Writer:
    """The journal's writer thread: row jobs before other work, each kind in the order
    handed over.

    Row jobs are what a client's output waits for (`Journal.recorded`); a new
    turn's row job writes its request too (milliseconds at agent sizes). The
    other work (`REQUEST` priority: raw upstream answers, remembered tool
    calls, pruning, checkpoints) waits behind the rows.
    """

    ROW = 0
    REQUEST = 1
    _LAST = 2

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[
            tuple[int, int, Callable[[], object] | None, Future[None]]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._main, name=_WRITER, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object] | None, priority: int) -> Future[None]:
        future: Future[None] = Future()
        self._queue.put((priority, next(self._order), job, future))
        return future

    def backlog(self) -> int:
        """Jobs handed over and not yet started."""
        return self._queue.qsize()

    def _main(self) -> None:
        while True:
            _, _, job, future = self._queue.get()
            if job is not None:
                try:
                    job()
                except Exception:  # a bug of ours: the journal's next writes go on
                    log.exception("journal: %r failed", job)
            if future.set_running_or_notify_cancel():  # False: nobody waits any more
                future.set_result(None)
            if job is None and self._queue.empty():
                return

    def caught_up(self) -> Future[None]:
        """Done when every job handed over so far is: a job that does nothing, behind them."""
        return self.submit(_nothing, self.REQUEST)

    def settle(self) -> None:
        """Wait until every job handed over so far is done."""
        self.caught_up().result()

    def close(self) -> None:
        self.submit(None, self._LAST).result()
        self._thread.join()


@dataclass(frozen=True, slots=True)
class _Row:
    """A turn as it was at one moment, taken on the event loop for the writer."""

    turn_id: str
    session_id: str
    model: str
    state: str
    started_at: float
    finished_at: float | None
    finish_reason: str | None
    data: dict[str, Any]      # the record without its request (fresh dicts and scalars)
    request: dict[str, Any]   # shared with the turn, never mutated

    @classmethod
    def of(cls, turn: Turn) -> _Row:
        return cls(turn.id, turn.session_id, turn.model, turn.state, turn.started_at,
                   turn.finished_at, turn.finish_reason, turn.to_dict(include_request=False),
                   turn.request)


class Journal:
    """SQLite-backed record of turns. Use `Journal.open(path, ...)`."""

    #: Jobs waiting for the writer above which turns wait for it (see `recorded`).
    BACKLOG = 256

    def __init__(self, conn: sqlite3.Connection, path: Path, redactor: Redactor,
                 store: TurnStore, retention: Retention | None = None) -> None:
        self.conn = conn
        self.path = path
        self.redactor = redactor
        self.store = store
        self.retention = retention or Retention()
        self.pruned_sessions = 0
        self._last_prune = 0.0
        self._reader: sqlite3.Connection | None = None  # the event loop's (`load_call`)
        # Everything below is the writer thread's (`_do`), once it exists.
        self.namer = Namer(redactor)
        self.interner = Interner()
        self._writer = journal_db.RequestWriter()
        self._worker: Writer | None = None
        self._recorded: OrderedDict[str, Future[None]] = OrderedDict()  # turn -> its latest row
        self._checkpointer: sqlite3.Connection | None = None  # for checkpoints only
        self._last_checkpoint = 0.0
        self._unwritten: dict[str, tuple[dict[str, Any], PreparedRequest]] = {}
        # Health: see `status()`.
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._failed_writes = 0
        self._streak_failures = 0
        self._last_reminder = 0.0
        self._unsaved: dict[str, _Row] = {}  # turns whose latest state is not on disk
        self._lost = 0                        # of those, turns evicted from memory meanwhile
        self.recovered_unfinished = 0         # live turns of a previous run, marked at open
        self._checkpoints: dict[str, tuple[int, int]] = {}  # live turn -> (attempt, chunks) on disk
        # Back-pressure (`recorded`): the marker turns wait for while the writer is behind.
        self._catch_up: Future[None] | None = None
        self.waited_turns = 0                 # outputs that waited for the writer to catch up
        self._backlog_said = -REMINDER_INTERVAL

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
        """Finish the writes handed to the writer, then close."""
        if self._worker is not None:
            self._worker.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        if self._reader is not None:
            self._reader.close()
        self.conn.close()

    # -- health ----------------------------------------------------------------

    def status(self, *, settle: bool = True) -> dict[str, Any]:
        """Whether turns are being recorded, for `/health` and the dashboard.

        `ok` is False while writes fail; `error` is the latest failure,
        `failed_writes` counts them since start, `unsaved_turns` are turns
        kept in memory until a write succeeds, `lost_turns` those evicted
        from memory before that happened, `waited_turns` the outputs that
        waited for a writer that had fallen behind (`recorded`), `queued_writes`
        the writes waiting for the writer now, and `behind` whether that is
        more than `BACKLOG`, so that turns wait for it. Waits for the writes
        handed over so far first, unless `settle` is False (the dashboard,
        which redraws every second whatever the writer is doing).
        """
        if settle:
            self.settle()
        queued = self._worker.backlog() if self._worker is not None else 0
        return {
            "path": str(self.path),
            "ok": self._failing_since is None,
            "error": self._last_error if self._failing_since is not None else None,
            "failing_since": self._failing_since,
            "failed_writes": self._failed_writes,
            "unsaved_turns": len(self._unsaved),
            "lost_turns": self._lost,
            "waited_turns": self.waited_turns,
            "queued_writes": queued,
            "behind": queued > self.BACKLOG,
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
        for turn_id, row in list(self._unsaved.items()):
            if self.store.get(turn_id) is None:
                self._lost += 1
                del self._unsaved[turn_id]
                self._unwritten.pop(turn_id, None)
                continue
            try:
                self._put_with_request(row, full=True)
            except sqlite3.Error as exc:
                self._failed("write a kept turn", exc)
                return False
            del self._unsaved[turn_id]
        return True

    # -- observer (on the event loop: snapshots only, the writer does the rest) -------

    def on_TurnStarted(self, event: TurnStarted) -> None:
        # The bus delivers this once the upstream request is out; the writer writes
        # the row at once, then names and writes the request.
        turn = self.store.get(event.turn_id)
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
            self._write_turn(turn, full=False)

    def on_TurnFinished(self, event: TurnFinished) -> None:
        self._end(event.turn_id)

    def on_TurnFailed(self, event: TurnFailed) -> None:
        self._end(event.turn_id)

    def _end(self, turn_id: str) -> None:
        self._checkpoints.pop(turn_id, None)
        turn = self.store.get(turn_id)
        if turn is not None:
            self._write_turn(turn, full=False)
            if turn.wire:
                self._save_wire(turn)
        if self.retention.any and time.monotonic() - self._last_prune >= PRUNE_INTERVAL:
            self._last_prune = time.monotonic()
            self._do(self._prune)
        self._maybe_checkpoint()

    def _write_turn(self, turn: Turn, *, full: bool) -> None:
        """Hand the turn as it is now to the writer: `full` with its request."""
        written = self._do(partial(self._write, _Row.of(turn), full), Writer.ROW)
        if written is not None:
            recorded = self._recorded
            recorded[turn.id] = written
            recorded.move_to_end(turn.id)
            if len(recorded) > 4096:
                recorded.popitem(last=False)

    def recorded(self, turn_id: str) -> Awaitable[None] | None:
        """The writing of the turn's latest row, to wait for before output that depends
        on it leaves (None if there is nothing to wait for).

        The pipeline waits for it before a turn's first output and before its
        end reach the client: as when the journal wrote on the event loop, a
        turn is on disk as `live` before its client sees output, and as
        finished before its client sees the end.

        When more than `BACKLOG` jobs wait for the writer, it is the writing of
        everything handed over so far instead. Rows go first, so without this
        the rest (raw answers, requests of turns that started meanwhile) could
        pile up for as long as the proxy is busier than its one writer thread
        can follow, holding memory; with it, turns wait for the journal and
        the proxy serves at the rate the journal writes (`status()` counts
        the outputs that waited).
        """
        written = self._recorded.get(turn_id)
        worker = self._worker
        if worker is not None and worker.backlog() > self.BACKLOG:
            written = self._caught_up(worker)
        if written is None or written.done():
            return None
        # Shielded: a waiter cancelled (its client left) must not cancel the write.
        return asyncio.shield(asyncio.wrap_future(written))

    def _caught_up(self, worker: Writer) -> Future[None]:
        """The writer's having done every job handed over so far (one marker at a time:
        while it is pending, the turns that wait share it). Said in the log at most
        every `REMINDER_INTERVAL`."""
        self.waited_turns += 1
        marker = self._catch_up
        if marker is None or marker.done():
            now = time.monotonic()
            if now - self._backlog_said >= REMINDER_INTERVAL:
                self._backlog_said = now
                log.warning("journal: %d writes are waiting for the writer; turns wait for it"
                            " to catch up (%d so far)", worker.backlog(), self.waited_turns)
            marker = self._catch_up = worker.caught_up()
        return marker

    def drained(self) -> Future[None] | None:
        """Done once the writer has done every job handed over so far; None if it has
        none. What a large request's share of the body budget waits for (`body_budget`)."""
        return self._worker.caught_up() if self._worker is not None else None

    def save(self, turn: Turn) -> None:
        """Write the turn's row and its request (on the writer, after what came before)."""
        self._write_turn(turn, full=True)

    # -- the writer -------------------------------------------------------------------

    def _do(self, job: Callable[[], object], priority: int = Writer.REQUEST
            ) -> Future[None] | None:
        """Run `job` on the writer thread (see `Writer` for the order).

        With no event loop running (tools, tests, start-up), run it here and now.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.settle()
            job()
            return None
        if self._worker is None:
            self._worker = Writer()
        return self._worker.submit(job, priority)

    def settle(self) -> None:
        """Wait until the writer has done every job handed to it so far (before a read)."""
        if self._worker is not None and threading.current_thread().name != _WRITER:
            self._worker.settle()

    async def fetch(self, read: Callable[[], R]) -> R:
        """`read()` (`turns`, `turn`, `wire`, `usage`...) run on the writer thread, after
        the writes handed over so far: what the control API and the dashboard use, so
        that the event loop, which serves every turn, waits neither for a writer that
        is behind nor for SQLite. The sync reads settle on the loop instead."""
        out: list[R] = []
        failed: list[BaseException] = []

        def job() -> None:
            try:
                out.append(read())
            except BaseException as exc:  # raised again to the caller, on the loop
                failed.append(exc)

        done = self._do(job)
        if done is not None:
            await asyncio.wrap_future(done)
        if failed:
            raise failed[0]
        return out[0]

    def _write(self, row: _Row, full: bool) -> None:
        full = full or row.turn_id in self._unsaved
        if self._guarded("record a turn", partial(self._put_with_request, row, full)):
            self._unsaved.pop(row.turn_id, None)
        else:
            self._keep(row)

    def _put_with_request(self, row: _Row, full: bool) -> None:
        """Write the row and, if it is new, the request: in one transaction.

        A turn's first output waits for its row (`recorded`), and after kill -9
        a turn in flight must be on disk with the request it was answering:
        both or neither. The upstream has the request already; this overlaps
        the host's time to first token.
        """
        with self._transaction():
            if self._put(row, full):
                self._put_request(row)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN ... COMMIT (one commit for what belongs together), or ROLLBACK on any
        error; the request writer's memory follows what was committed."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._writer.forget()
            raise
        self._writer.commit()

    def _keep(self, row: _Row) -> None:
        """Keep the turn's latest state until writes work again (while it is in memory)."""
        self._unsaved[row.turn_id] = row
        if len(self._unsaved) > 2 * self.store.capacity:  # a long outage: bound what is kept
            for turn_id in [t for t in self._unsaved if self.store.get(t) is None]:
                del self._unsaved[turn_id]
                self._unwritten.pop(turn_id, None)
                self._lost += 1

    def _json(self, value: Any, ascii: bool = False) -> str:
        return self.redactor(json.dumps(value, ensure_ascii=ascii, default=str,
                                        separators=(",", ":")))

    def _put(self, row: _Row, full: bool) -> bool:
        """Write a turn's row (`full`: the whole row). True if it was inserted, not updated."""
        try:  # orjson: a few times faster than `json` for a record, on every row write
            data = self.redactor(orjson.dumps(row.data, default=str).decode())
        except (orjson.JSONEncodeError, TypeError):
            # a lone surrogate (SQLite stores UTF-8, so escape it) or a huge integer
            data = self._json(row.data, True)
        if not full:
            cursor = self.conn.execute(
                "UPDATE turns SET state = ?, finished_at = ?, finish_reason = ?, data = ?"
                " WHERE id = ?", (row.state, row.finished_at, row.finish_reason, data, row.turn_id))
            if cursor.rowcount:
                return False
        self.conn.execute(
            "INSERT OR REPLACE INTO turns (id, session_id, model, state, started_at,"
            " finished_at, finish_reason, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.turn_id, row.session_id, row.model, row.state, row.started_at,
             row.finished_at, row.finish_reason, data))
        return True

    def _put_request(self, row: _Row) -> None:
        """Name, redact and write the turn's request, unless it is on disk."""
        request, prepared = self._unwritten.pop(row.turn_id, (row.request, None))
        if not request:
            return
        if prepared is None:
            prepared = self.namer.prepare(request)
            self._share(row.turn_id, request, prepared)
        self._write_request(row.turn_id, row.session_id, request, prepared)

    def _maybe_checkpoint(self) -> None:
        """Have the writer copy the WAL into the database, at most every `CHECKPOINT_INTERVAL`."""
        now = time.monotonic()
        if now - self._last_checkpoint < CHECKPOINT_INTERVAL:
            return
        self._last_checkpoint = now
        self._do(self._checkpoint)

    def _checkpoint(self) -> None:
        """A passive checkpoint on its own connection: it never makes a writer wait."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None,
                                                     check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # the next write will say so if the journal is broken
            log.debug("journal: checkpoint failed: %s", exc)

    def _write_request(self, turn_id: str, session_id: str, request: dict[str, Any],
                       prepared: PreparedRequest) -> None:
        try:
            self._write_parts(turn_id, session_id, request, prepared)
        except BaseException:
            self._unwritten[turn_id] = (request, prepared)
            raise

    def _write_parts(self, request_id: str, session_id: str, request: dict[str, Any],
                     prepared: PreparedRequest) -> None:
        """Write a prepared request as parts (in the caller's transaction)."""
        self._writer.write(self.conn, request_id, session_id, prepared,
                           lambda part: self.namer.body_of(request, part))

    def _share(self, turn_id: str, request: dict[str, Any], prepared: PreparedRequest) -> None:
        """Let the turn in memory hold the same message objects as earlier turns.

        On the writer: the turn's `request` is replaced whole, by an equal one.
        """
        turn = self.store.get(turn_id)
        if turn is None or turn.request is not request:
            return
        fields = {field: self.interner.share(field, parts, request[field])
                  for field, parts in prepared.fields.items() if parts}
        if fields:
            turn.request = {**request, **fields}

    # -- raw upstream answers ----------------------------------------------------------

    def _save_wire(self, turn: Turn) -> None:
        """Hand the turn's captured upstream bytes to the writer, which encodes, redacts,
        compresses and writes them behind the rows. The turn lets go of them now."""
        captures, turn.wire = turn.wire, []
        self._do(partial(self._write_wire_of, turn.id, turn.session_id, captures))

    def _write_wire_of(self, turn_id: str, session_id: str, captures: list[WireCapture]) -> None:
        """The raw answer and the repaired messages sent, in one transaction."""
        try:
            data: bytes | None = self._encode_wire(captures)
        except Exception:  # a bug of ours: the turn stays, without its raw answer
            log.exception("journal: could not encode the upstream answer of %s", turn_id)
            data = None

        def write() -> None:
            with self._transaction():
                for capture in captures:
                    if capture.messages is not None:
                        self._write_sent_messages(turn_id, session_id, capture)
                if data is not None:
                    self.conn.execute("INSERT OR REPLACE INTO wire (id, data) VALUES (?, ?)",
                                      (turn_id, data))

        self._guarded("record the upstream answer and the messages sent", write)

    def _write_sent_messages(self, turn_id: str, session_id: str, capture: WireCapture) -> None:
        """The repaired messages an attempt sent, stored as parts like a request's.

        They differ from the client's only where a repair touched them, and a
        repaired message is the same turn after turn: as parts, a session's
        sent history is kept about once, where a copy in the raw answer's row
        would be kept once per turn.
        """
        request = {"messages": capture.messages}
        self._write_parts(journal_db.sent_messages_id(turn_id, capture.attempt), session_id,
                          request, self.namer.prepare(request))

    def _encode_wire(self, captures: list[WireCapture]) -> bytes:
        """The captures as redacted JSON, compressed (on the worker). orjson: up to 512 KB
        of reads encode in ~3 ms, where `json` holds the GIL for ~25 ms. Repaired
        messages are not in it: they are parts (`_write_sent_messages`)."""
        attempts = []
        for capture in captures:
            data = capture.encode()
            if capture.messages is not None:
                data["messages_sent"] = True
            attempts.append(data)
        try:
            text = self.redactor(orjson.dumps({"attempts": attempts}).decode())
        except (orjson.JSONEncodeError, TypeError):  # a lone surrogate in the messages
            text = self._json({"attempts": attempts}, True)
        compressor = zlib.compressobj(WIRE_COMPRESSION, zlib.DEFLATED, WIRE_WINDOW_BITS,
                                      WIRE_MEM_LEVEL)
        return compressor.compress(text.encode("utf-8", "surrogatepass")) + compressor.flush()

    def wire(self, turn_id: str) -> dict[str, Any] | None:
        """The raw upstream answer of a turn, per attempt (`capture.WireCapture.encode`)."""
        self.settle()
        try:
            row = self.conn.execute("SELECT data FROM wire WHERE id = ?", (turn_id,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        data = dict(json.loads(zlib.decompress(row[0]).decode("utf-8", "surrogatepass")))
        for attempt in data.get("attempts", []):
            if attempt.pop("messages_sent", False):
                sent = self._stored_request(journal_db.sent_messages_id(turn_id, attempt.get("attempt")))
                if sent is not None:
                    attempt["messages"] = sent.get("messages")
        return data

    def _stored_request(self, request_id: str) -> dict[str, Any] | None:
        try:
            row = self.conn.execute("SELECT request FROM requests WHERE id = ?",
                                    (request_id,)).fetchone()
        except sqlite3.Error:
            return None
        return dict(json.loads(row[0])) if row else None

    # -- retention -------------------------------------------------------------------

    def prune(self) -> int:
        """Drop the sessions `[proxy] journal_max_mb`/`journal_max_days` rule out, now."""
        self.settle()
        return self._prune()

    def _prune(self) -> int:
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
            log.info("journal: pruned %d old session(s) to stay within its limits", pruned)
        return pruned

    def save_call(self, call: RememberedCall) -> None:
        """Remember a delivered tool call (the `CallStore` of `ToolCallMemory`).

        Written by the writer; a failed write is counted and logged like any
        other, and the call stays in `ToolCallMemory`'s memory, so the relay goes on.
        """
        self._do(lambda: self._guarded("remember a tool call", lambda: self.conn.execute(
            "INSERT OR REPLACE INTO tool_calls (id, name, arguments, reasoning, session_id,"
            " turn_id, upstream_id, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (call.id, call.name, self.redactor(call.arguments), self.redactor(call.reasoning),
             call.session_id, call.turn_id, call.upstream_id, call.at))))

    def load_call(self, call_id: str) -> RememberedCall | None:
        """A delivered tool call, read without waiting for the writer (the `CallStore` of
        `ToolCallMemory`, asked on a request's path by history repairs).

        On a read-only connection of its own, which sees what is committed: the
        calls of earlier runs, and those of this run that `ToolCallMemory` no
        longer holds, long since written. Waiting for the writer here would hold
        the event loop, and every turn on it, for as long as the writer is behind,
        once per call id of the first turn of a session after a restart.
        """
        reader = self._reader
        try:
            if reader is None:
                reader = self._reader = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                    isolation_level=None, check_same_thread=False)
            # fetchall: the statement runs to its end, so no read stays open to hold
            # back checkpoints
            rows = reader.execute(
                "SELECT id, name, arguments, reasoning, session_id, turn_id, upstream_id, at"
                " FROM tool_calls WHERE id = ?", (call_id,)).fetchall()
        except sqlite3.Error:  # no journal file (it could not be set up): nothing to recall
            return None
        return RememberedCall(*rows[0]) if rows else None

    def turns(self, limit: int = 100, session_id: str | None = None) -> list[dict[str, Any]]:
        """The most recent turns (oldest first), without their requests."""
        self.settle()
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

    def recent_attempts(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The attempts of the latest `limit` turns, oldest first: what learned
        deadlines are learned from after a restart (`learned.py`)."""
        try:
            rows = self.conn.execute(
                "SELECT json_extract(data, '$.attempts') FROM turns"
                " ORDER BY started_at DESC LIMIT ?", (limit,)).fetchall()
        except sqlite3.Error:
            return []
        attempts: list[dict[str, Any]] = []
        for (raw,) in reversed(rows):
            try:
                items = json.loads(raw) if raw else []
            except ValueError:
                continue
            attempts.extend(a for a in items if isinstance(a, dict))
        return attempts

    def usage(self) -> dict[str, UsageTotals]:
        """Tokens and cost per session over every turn kept (`usage.UsageTotals`)."""
        self.settle()
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
        self.settle()
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
