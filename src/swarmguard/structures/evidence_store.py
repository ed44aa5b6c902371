"""Durable evidence: an append-only SQLite table (stdlib ``sqlite3``, WAL mode).

Every accepted evidence is one row, committed before the call that added it
returns (``synchronous=FULL``). Floats are stored as their IEEE-754 bit
patterns (INTEGER), so reopening restores every value bit for bit (a REAL
column would turn -0.0 into 0). Ids are stored as given, INTEGER or TEXT.

Schema 3: evidence ids are unique per source (``UNIQUE (source_node,
evidence_id)``), and the table ``founders`` holds the consensus's founding
sources (see *Sybil resistance* in docs/consensus.md; empty while the founding
lasts), written in the same transaction as the rows of the call that ended the
founding or of the merge that added founders. Older files are migrated in
place on opening, each step in one transaction: schema 1 (ids unique over all
sources, a stronger constraint, so every row is valid under the per-source
key) to 2, and schema 2 (which kept ``meta.founding_rows``, the number of rows
when the founding ended) to 3, its founders being the sources of those first
rows. Loading checks every value read back (types, finite floats, known
evidence types): a damaged or tampered file raises
:class:`~swarmguard.errors.EvidenceStoreError`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import EvidenceStoreError
from ..validation import is_wire_id

__all__ = ["EvidenceStore", "float_bits", "bits_float"]

_SCHEMA_VERSION = 3
_COLUMNS = ("seq", "evidence_id", "agent_id", "source_node", "evidence_type", "log_odds_bits",
            "confidence_bits", "timestamp_bits")
_EVIDENCE_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    seq INTEGER PRIMARY KEY,
    evidence_id NOT NULL,
    agent_id NOT NULL,
    source_node NOT NULL,
    evidence_type TEXT NOT NULL,
    log_odds_bits INTEGER NOT NULL,
    confidence_bits INTEGER NOT NULL,
    timestamp_bits INTEGER NOT NULL,
    UNIQUE (source_node, evidence_id)
);
"""
_FOUNDERS_TABLE = "CREATE TABLE IF NOT EXISTS founders (source_node NOT NULL UNIQUE);"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);" + _EVIDENCE_TABLE.format(name="evidence")
           + _FOUNDERS_TABLE)
_INT64 = (-(1 << 63), 1 << 63)


def float_bits(values: np.ndarray) -> list[int]:
    """IEEE-754 bit patterns of float64 values, as Python ints (exact)."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64).tolist()


def bits_float(bits: Iterable[int]) -> np.ndarray:
    """Inverse of :func:`float_bits`."""
    return np.fromiter(bits, dtype=np.int64).view(np.float64)


class EvidenceStore:
    """An SQLite file of evidence rows.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "e.db")
    >>> store = EvidenceStore(path)
    >>> store.insert([(1, "agent-1", "node-a", "peer_report", 0.5, 1.0, 0.0)])
    >>> store.close()
    >>> EvidenceStore(path).load()[0]
    (1, 'agent-1', 'node-a', 'peer_report', 0.5, 1.0, 0.0)
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._conn = None
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" in tables:
                row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is None or "evidence" not in tables:
                    raise EvidenceStoreError(f"{self.path}: not an evidence store (no schema or no evidence table)")
                if not (type(row[0]) is int and 1 <= row[0] <= _SCHEMA_VERSION):
                    raise EvidenceStoreError(f"{self.path}: unsupported evidence store schema {row[0]!r}")
                if row[0] == 1:
                    self._migrate_from_1()
                if row[0] <= 2:
                    self._migrate_from_2()
                if "founders" not in {r[0] for r in self._conn.execute(
                        "SELECT name FROM sqlite_master WHERE type='table'")}:
                    raise EvidenceStoreError(f"{self.path}: not an evidence store (no founders table)")
            elif tables:
                raise EvidenceStoreError(f"{self.path}: not an evidence store (tables {sorted(tables)})")
            else:
                self._conn.executescript(_SCHEMA)
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            columns = [r[1] for r in self._conn.execute("PRAGMA table_info(evidence)")]
            if columns != list(_COLUMNS):
                raise EvidenceStoreError(f"{self.path}: evidence table has columns {columns}, "
                                         f"expected {list(_COLUMNS)}")
        except sqlite3.Error as exc:
            self._close_quietly()
            raise EvidenceStoreError(f"cannot open evidence store {self.path}: {exc}") from exc
        except EvidenceStoreError:
            self._close_quietly()
            raise

    def _close_quietly(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _migrate_from_1(self) -> None:
        """Schema 1 (``evidence_id`` unique over all sources) to 2 (unique per source), in
        one transaction: a crash leaves the schema-1 file as it was."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_EVIDENCE_TABLE.format(name="evidence_v2"))
            cols = ", ".join(_COLUMNS)
            conn.execute(f"INSERT INTO evidence_v2 ({cols}) SELECT {cols} FROM evidence ORDER BY seq")
            conn.execute("DROP TABLE evidence")
            conn.execute("ALTER TABLE evidence_v2 RENAME TO evidence")
            conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate_from_2(self) -> None:
        """Schema 2 (``meta.founding_rows``: the founding sources are those of the first rows)
        to 3 (the ``founders`` table), in one transaction; a bad ``founding_rows`` (not a row
        count of the file) leaves the file as it was and raises :class:`EvidenceStoreError`."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='founding_rows'").fetchone()
            conn.execute(_FOUNDERS_TABLE)
            if row is not None:
                value = row[0]
                count = int(conn.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
                if type(value) is not int or not 1 <= value <= count:
                    raise EvidenceStoreError(f"{self.path}: founding_rows {value!r} is not a row count of this store")
                conn.execute("INSERT OR IGNORE INTO founders (source_node) SELECT source_node FROM "
                             "(SELECT source_node, seq FROM evidence ORDER BY seq LIMIT ?) ORDER BY seq", (value,))
                conn.execute("DELETE FROM meta WHERE key='founding_rows'")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (_SCHEMA_VERSION,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def insert(self, rows: list[tuple], founders: list | None = None) -> None:
        """Insert rows ``(evidence_id, agent_id, source_node, type, log_odds, confidence,
        timestamp)`` in one transaction; all or nothing. ``founders``: also record these
        founding sources (see :meth:`founders`) in the same transaction."""
        if not rows:
            return
        lo = float_bits(np.array([r[4] for r in rows]))
        conf = float_bits(np.array([r[5] for r in rows]))
        ts = float_bits(np.array([r[6] for r in rows]))
        self.insert_columns([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                            [r[3] for r in rows], lo, conf, ts, founders=founders)

    def insert_columns(self, evidence_ids, agent_ids, source_nodes, types, log_odds_bits,
                       confidence_bits, timestamp_bits, founders: list | None = None) -> None:
        """Column-wise :meth:`insert` (floats already as bit patterns)."""
        with self._write_transaction():
            self._conn.executemany(
                "INSERT INTO evidence (evidence_id, agent_id, source_node, evidence_type, "
                "log_odds_bits, confidence_bits, timestamp_bits) VALUES (?, ?, ?, ?, ?, ?, ?)",
                zip(evidence_ids, agent_ids, source_nodes, types, log_odds_bits,
                    confidence_bits, timestamp_bits, strict=True))
            if founders:
                self._insert_founders(founders)

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[None]:
        """One write transaction: committed if the block returns, rolled back if it raises;
        SQLite's errors become :class:`EvidenceStoreError`."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot write evidence to {self.path}: {exc}") from exc

    def _insert_founders(self, founders: list) -> None:
        self._conn.executemany("INSERT OR IGNORE INTO founders (source_node) VALUES (?)",
                               [(k,) for k in founders])

    def load(self) -> list[tuple]:
        """Every row in arrival order, floats restored bit for bit.

        Every value is checked: ids int64 or str, evidence types str, floats stored as
        int64 bit patterns of finite values (confidence in [0, 1]); anything else
        (a damaged or edited file) raises :class:`EvidenceStoreError`.
        """
        try:
            rows = self._conn.execute(
                "SELECT evidence_id, agent_id, source_node, evidence_type, log_odds_bits, "
                "confidence_bits, timestamp_bits FROM evidence ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot read evidence store {self.path}: {exc}") from exc
        if not rows:
            return []
        for i, r in enumerate(rows):
            for k, name in ((0, "evidence_id"), (1, "agent_id"), (2, "source_node")):
                v = r[k]
                if not is_wire_id(v):
                    raise EvidenceStoreError(f"{self.path}: row {i}: {name} {v!r} is not an int64 or str")
            if type(r[3]) is not str:
                raise EvidenceStoreError(f"{self.path}: row {i}: evidence_type {r[3]!r} is not a str")
            for k in (4, 5, 6):
                if type(r[k]) is not int or not _INT64[0] <= r[k] < _INT64[1]:
                    raise EvidenceStoreError(f"{self.path}: row {i}: float bits {r[k]!r} are not an int64")
        floats = [bits_float(r[k] for r in rows) for k in (4, 5, 6)]
        for name, col in zip(("log_odds", "confidence", "timestamp"), floats, strict=True):
            bad = ~np.isfinite(col)
            if name == "confidence":
                bad |= ~((col >= 0.0) & (col <= 1.0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise EvidenceStoreError(f"{self.path}: row {i}: {name} {col[i]!r} is not valid")
        floats = [f.tolist() for f in floats]
        return [(r[0], r[1], r[2], r[3], floats[0][i], floats[1][i], floats[2][i])
                for i, r in enumerate(rows)]

    def founders(self) -> list:
        """The founding sources recorded (empty: the founding lasts, or none recorded yet),
        in the order recorded, each checked to be an int64 or a str."""
        try:
            rows = self._conn.execute("SELECT source_node FROM founders ORDER BY rowid").fetchall()
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot read evidence store {self.path}: {exc}") from exc
        out = []
        for (v,) in rows:
            if not is_wire_id(v):
                raise EvidenceStoreError(f"{self.path}: founding source {v!r} is not an int64 or str")
            out.append(v)
        return out

    def add_founders(self, founders: list) -> None:
        """Record founding sources (a store whose rows ended the founding on loading, or a
        merge that added none of the evidence), in one transaction."""
        with self._write_transaction():
            self._insert_founders(founders)

    def count(self) -> int:
        try:
            return int(self._conn.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot read evidence store {self.path}: {exc}") from exc

    def close(self) -> None:
        self._close_quietly()
