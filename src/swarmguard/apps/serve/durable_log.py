"""The node's durable log: every accepted request's content and every closed window, in order.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`DurableLog.append` returns
after the record's transaction is on disk (one transaction, one fsync, per
request), so an acknowledged request survives ``kill -9`` and a power cut. The
node's state is a function of this log: :meth:`records` replays it in order.
Span requests use group commit instead (:meth:`DurableLog.append_grouped`, then
:meth:`DurableLog.commit_through` before the 200): their records wait in memory, numbered,
and the requests in flight share one transaction; a request logs its record while the group
before it is syncing.

Compaction (:meth:`DurableLog.write_snapshot`): a snapshot of the node's state as of
record ``seq`` (:mod:`.snapshot`) goes into the ``snapshot`` table and the records
before ``seq`` leave the log, in one transaction: a crash at any point leaves either
the old snapshot and the whole log, or the new snapshot and the tail. Record ``seq``
itself stays, as the high-water mark that keeps new sequence numbers above it.

A commit that SQLite reports failed may still have landed. So after a failed write the log
reads back which of its rows its connection sees committed (:meth:`DurableLog._store`),
never from inside the failed transaction (which would see its own rows):
none — the write failed, the numbers are given back or the records wait again, as before
(an fsync of the WAL that fails reads back as none, yet its frames may be in the file and replay
after a crash before the next write: at least once; a failed auto-checkpoint never fails a
commit, SQLite ignores it);
all — the rows are the log's (a restart replays them), so the write counts as done, the
caller applies and acknowledges as after any commit, and no number of theirs is given out
again (it would hit a PRIMARY KEY conflict at every later write); no answer (the read fails
too) — the log cannot tell what a restart will replay, so it refuses every later write until
the node restarts and rebuilds its state from the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EvidenceStoreError

__all__ = ["DurableLog", "LogRecord", "BEHAVIORS", "EVIDENCE", "CLOSE_WINDOW"]

BEHAVIORS, EVIDENCE, CLOSE_WINDOW = "behaviors", "evidence", "close"

log = logging.getLogger("swarmguard.serve")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    body BLOB NOT NULL
)
"""
_SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL
)
"""


@dataclass(frozen=True)
class LogRecord:
    """One logged event: ``kind`` (behaviors / evidence / close), the node's clock ``at``
    its arrival, and its content (``meta``: JSON values; ``matrix``: a behaviour batch's
    features, or None)."""

    seq: int
    kind: str
    at: float
    meta: dict[str, Any]
    matrix: np.ndarray | None = None


def _encode(meta: dict[str, Any], matrix: np.ndarray | None) -> bytes:
    head = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if matrix is None:
        return head
    return head + b"\n" + np.ascontiguousarray(matrix, dtype="<f8").tobytes()


def _decode(body: bytes) -> tuple[dict[str, Any], np.ndarray | None]:
    head, sep, rest = body.partition(b"\n")
    meta = json.loads(head)
    if not sep:
        return meta, None
    matrix = np.frombuffer(rest, dtype="<f8").astype(np.float64)
    return meta, matrix.reshape(meta.get("rows", len(meta["agents"])), meta["d"])


class DurableLog:
    """An append-only log in ``<data_dir>/node.sqlite`` (module docstring)."""

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "node.sqlite"
        self._db: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
            self._db.execute(_SNAPSHOT_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            self._close_after_failed_open()
            raise EvidenceStoreError(f"cannot open the node's log {self.path}: {exc}") from None
        # Group commit (:meth:`append_grouped`): records wait in memory, numbered, until a commit
        # writes them in one transaction. ``_lock`` guards the connection, ``_pending_lock`` the
        # waiting records (held for microseconds, never across a disk sync, so a request can
        # log its record while the group before it syncs), ``_commit_lock`` makes one writer at
        # a time, which writes in sequence order.
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._pending: list[tuple[int, str, float, bytes]] = []
        try:
            last = int(self._db.execute("SELECT MAX(COALESCE((SELECT MAX(seq) FROM log), 0), "
                                        "COALESCE((SELECT MAX(seq) FROM snapshot), 0))").fetchone()[0])
        except sqlite3.Error as exc:
            self._close_after_failed_open()
            raise EvidenceStoreError(f"cannot read the node's log {self.path}: {exc}") from None
        # above every record and the snapshot: a snapshot may cover a number that no record in the
        # file holds (a failed append's), and replay reads only the records after the snapshot
        self._next = last + 1
        self._committed = last                   # the last record made durable
        self.landed_after_error = 0              # writes SQLite reported failed that were in the file
        self._broken: str | None = None          # why no write is taken until a restart (module docstring)

    def _close_after_failed_open(self) -> None:
        """A log that failed to open is never closed by anyone: its connection (and the file
        handle it holds on the data directory) is closed here, before the error is raised."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()

    def _write(self, rows: list[tuple[int, str, float, bytes]]) -> None:
        """Write ``rows`` in one synced transaction (all or none); hold ``_commit_lock``."""
        with self._lock:
            try:
                # a snapshot whose COMMIT and ROLLBACK failed left its transaction open (it holds
                # nothing of the log's): ending it first, else this BEGIN fails on a healthy disk
                self._rollback()
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO log (seq, kind, at, body) VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise

    def _rollback(self) -> None:
        """End the failed transaction if it is still open (hold ``_lock``). A ROLLBACK that fails
        too leaves it open: the caller finds ``in_transaction`` still set."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _store(self, rows: list[tuple[int, str, float, bytes]]) -> None:
        """Write ``rows`` (hold ``_commit_lock``); return once they are in the file. A write that
        SQLite reports failed is checked against the file (module docstring): rows found there
        count as written; raises :class:`sqlite3.Error` when none is, and
        :class:`EvidenceStoreError` (the log refusing writes from then on) when it cannot tell."""
        self._check_writable()
        try:
            self._write(rows)
            return
        except sqlite3.Error as exc:
            failure = exc
        first, last = rows[0][0], rows[-1][0]
        try:
            with self._lock:
                # a read inside the failed transaction would count its own uncommitted rows as landed
                self._rollback()
                if self._db.in_transaction:
                    raise sqlite3.OperationalError("the failed transaction cannot be rolled back")
                found = int(self._db.execute("SELECT COUNT(*) FROM log WHERE seq BETWEEN ? AND ?",
                                             (first, last)).fetchone()[0])
        except sqlite3.Error as exc:
            found, failure = -1, exc
        if found == 0:
            raise failure
        if found == len(rows):
            self.landed_after_error += 1
            log.warning("SQLite reported the commit of records %d..%d of %s failed (%s), but they are in "
                        "the file: they count as written", first, last, self.path, failure)
            return
        # the read failed, or found part of one transaction's rows: a restart may replay records
        # that this process holds as unwritten (or not replay ones it holds as written)
        self._broken = (f"records {first}..{last} may or may not be in the file after a failed commit "
                        f"({failure}); restart the node to rebuild its state from the file")
        log.error("%s: %s", self.path, self._broken)
        raise EvidenceStoreError(f"cannot write the node's log {self.path}: {self._broken}")

    @property
    def broken(self) -> str | None:
        """Why the log refuses every write until the node restarts (None: it takes writes)."""
        return self._broken

    def _check_writable(self) -> None:
        if self._broken is not None:
            raise EvidenceStoreError(f"cannot write the node's log {self.path}: {self._broken}")

    def _take_pending(self, record: tuple[str, float, bytes] | None = None) -> list[tuple[int, str, float, bytes]]:
        """The waiting records, oldest first, and ``record`` after them with the next number."""
        with self._pending_lock:
            rows, self._pending = self._pending, []
            if record is not None:
                rows.append((self._next, *record))
                self._next += 1
        return rows

    def _put_back(self, rows: list[tuple[int, str, float, bytes]]) -> None:
        """Grouped records whose write failed wait again (their requests are applied in memory
        and wait in :meth:`commit_through`, which must still find them to commit)."""
        with self._pending_lock:
            self._pending[:0] = rows

    def append(self, kind: str, at: float, meta: dict[str, Any], matrix: np.ndarray | None = None) -> int:
        """Write one record durably (committed and synced when this returns); its sequence number.

        Records of :meth:`append_grouped` not yet committed are committed with it (before it).
        A failure writes none of them (:class:`EvidenceStoreError`); a commit reported failed whose
        rows are in the file is no failure (module docstring)."""
        body = _encode(meta, matrix)
        with self._commit_lock:
            self._check_writable()
            rows = self._take_pending((kind, float(at), body))
            try:
                self._store(rows)
            except sqlite3.Error as exc:
                self._put_back(rows[:-1])
                with self._pending_lock:        # its number back when none was given out after it
                    if self._next == rows[-1][0] + 1:
                        self._next -= 1
                raise EvidenceStoreError(f"cannot write the node's log {self.path}: {exc}") from None
            self._committed = seq = rows[-1][0]
            return seq

    def append_grouped(self, kind: str, at: float, meta: dict[str, Any], matrix: np.ndarray | None = None) -> int:
        """Number one record for the next group commit, not yet durable; its sequence number.

        Group commit: the caller applies the record (under the node's lock, so the log's order
        stays the order of application), releases that lock and calls :meth:`commit_through`
        before acknowledging. Requests that arrive meanwhile share one commit (one fsync); this
        call never waits for a commit in progress."""
        body = _encode(meta, matrix)
        with self._pending_lock:
            seq = self._next
            self._next += 1
            self._pending.append((seq, kind, float(at), body))
            return seq

    def commit_through(self, seq: int) -> None:
        """Return once record ``seq`` is committed and synced (writing every waiting record if needed)."""
        with self._commit_lock:                # one committer; the others find their record committed
            if self._committed >= seq:
                return
            self._check_writable()
            rows = self._take_pending()
            if not rows or rows[-1][0] < seq:     # never acknowledge a record that is nowhere
                self._put_back(rows)
                raise EvidenceStoreError(f"cannot commit the node's log {self.path}: record {seq} is "
                                         "neither committed nor waiting")
            try:
                self._store(rows)
            except sqlite3.Error as exc:
                self._put_back(rows)
                raise EvidenceStoreError(f"cannot commit the node's log {self.path}: {exc}") from None
            self._committed = rows[-1][0]

    def write_snapshot(self, seq: int, body: bytes) -> int:
        """Keep ``body``, the node's state as of record ``seq``, as the one snapshot, and delete
        the records before ``seq``, in one synced transaction (module docstring); the number
        of records deleted. A failure changes nothing (:class:`EvidenceStoreError`); a commit reported
        failed whose snapshot is in the file counts as written (module docstring)."""
        with self._commit_lock:
            self._check_writable()
            rows = self._take_pending()             # waiting records: durable first
            if rows:
                try:
                    self._store(rows)
                except sqlite3.Error as exc:
                    self._put_back(rows)
                    raise EvidenceStoreError(f"cannot commit the node's log {self.path} before a snapshot: "
                                             f"{exc}") from None
                self._committed = rows[-1][0]
            with self._lock:
                deleted = self._snapshot_transaction(seq, body)
        return deleted

    def _snapshot_transaction(self, seq: int, body: bytes) -> int:
        """The snapshot's transaction, then a WAL checkpoint; hold ``_lock``."""
        deleted = 0
        try:
            self._rollback()        # a transaction an earlier failed snapshot left open (:meth:`_write`)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM snapshot")
            self._db.execute("INSERT INTO snapshot (seq, body) VALUES (?, ?)", (int(seq), body))
            _crash_point("snapshot_written")
            deleted = self._db.execute("DELETE FROM log WHERE seq < ?", (int(seq),)).rowcount
            _crash_point("log_compacted")
            self._db.execute("COMMIT")
            _crash_point("committed")
        except sqlite3.Error as exc:
            self._rollback()
            self._rollback()        # once more: a read inside the open transaction would see it as landed
            if self._db.in_transaction or not self._snapshot_landed(seq, body):
                raise EvidenceStoreError(f"cannot write a snapshot into the node's log {self.path}: {exc}") from None
            # reported failed but in the file (module docstring): the snapshot is kept, the log compacted
            self.landed_after_error += 1
            log.warning("SQLite reported the snapshot as of record %d of %s failed (%s), but it is in the file",
                        seq, self.path, exc)
        try:        # give the WAL's pages back to the file (the deleted pages are reused)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass    # a reader holds the WAL: the next checkpoint will do it
        return int(deleted)

    def _snapshot_landed(self, seq: int, body: bytes) -> bool:
        """Whether the snapshot transaction as of ``seq`` is in the file (a failed read: no)."""
        try:
            kept = self._db.execute("SELECT seq, body FROM snapshot").fetchall()
            before = self._db.execute("SELECT COUNT(*) FROM log WHERE seq < ?", (int(seq),)).fetchone()[0]
        except sqlite3.Error:
            return False
        return len(kept) == 1 and int(kept[0][0]) == int(seq) and bytes(kept[0][1]) == body and before == 0

    def last_seq(self) -> int:
        """The sequence number of the last record written (0: none), a grouped one waiting for
        its commit included."""
        with self._pending_lock:
            return self._next - 1

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        """``(seq, body)`` of the snapshot kept (None: none yet)."""
        with self._lock:
            row = self._db.execute("SELECT seq, body FROM snapshot ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def records(self, after: int = 0) -> Iterator[LogRecord]:
        """Every record after sequence number ``after`` in the file, oldest first (read a
        thousand at a time: a long log is not held whole); grouped records still waiting for
        their commit are not there yet."""
        last = int(after)
        while True:
            with self._lock:
                rows = self._db.execute("SELECT seq, kind, at, body FROM log WHERE seq > ? ORDER BY seq LIMIT 1000",
                                        (last,)).fetchall()
            if not rows:
                return
            for seq, kind, at, body in rows:
                meta, matrix = _decode(bytes(body))
                last = int(seq)
                yield LogRecord(last, kind, float(at), meta, matrix)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM log").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _crash_point(name: str) -> None:
    """A named point inside :meth:`DurableLog.write_snapshot` (no-op): the durability tests
    replace it to ``kill -9`` the node exactly there."""
