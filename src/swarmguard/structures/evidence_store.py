"""Durable evidence: an append-only SQLite table (stdlib ``sqlite3``, WAL mode).

Every accepted evidence is one row, committed before the call that added it
returns (``synchronous=FULL``). Floats are stored as their IEEE-754 bit
patterns (INTEGER), so reopening restores every value bit for bit (a REAL
column would turn -0.0 into 0). Ids are stored as given, INTEGER or TEXT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import EvidenceStoreError

__all__ = ["EvidenceStore", "float_bits", "bits_float"]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS evidence (
    seq INTEGER PRIMARY KEY,
    evidence_id NOT NULL UNIQUE,
    agent_id NOT NULL,
    source_node NOT NULL,
    evidence_type TEXT NOT NULL,
    log_odds_bits INTEGER NOT NULL,
    confidence_bits INTEGER NOT NULL,
    timestamp_bits INTEGER NOT NULL
);
"""


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
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif int(row[0]) != _SCHEMA_VERSION:
                raise EvidenceStoreError(f"{self.path}: unsupported evidence store schema {row[0]}")
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot open evidence store {self.path}: {exc}") from exc

    def insert(self, rows: list[tuple]) -> None:
        """Insert rows ``(evidence_id, agent_id, source_node, type, log_odds, confidence,
        timestamp)`` in one transaction; all or nothing."""
        if not rows:
            return
        lo = float_bits(np.array([r[4] for r in rows]))
        conf = float_bits(np.array([r[5] for r in rows]))
        ts = float_bits(np.array([r[6] for r in rows]))
        self.insert_columns([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                            [r[3] for r in rows], lo, conf, ts)

    def insert_columns(self, evidence_ids, agent_ids, source_nodes, types, log_odds_bits,
                       confidence_bits, timestamp_bits) -> None:
        """Column-wise :meth:`insert` (floats already as bit patterns)."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO evidence (evidence_id, agent_id, source_node, evidence_type, "
                    "log_odds_bits, confidence_bits, timestamp_bits) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    zip(evidence_ids, agent_ids, source_nodes, types, log_odds_bits,
                        confidence_bits, timestamp_bits, strict=True))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot write evidence to {self.path}: {exc}") from exc

    def load(self) -> list[tuple]:
        """Every row in arrival order, floats restored bit for bit."""
        try:
            rows = self._conn.execute(
                "SELECT evidence_id, agent_id, source_node, evidence_type, log_odds_bits, "
                "confidence_bits, timestamp_bits FROM evidence ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise EvidenceStoreError(f"cannot read evidence store {self.path}: {exc}") from exc
        if not rows:
            return []
        floats = [bits_float(r[k] for r in rows).tolist() for k in (4, 5, 6)]
        return [(r[0], r[1], r[2], r[3], floats[0][i], floats[1][i], floats[2][i])
                for i, r in enumerate(rows)]

    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
