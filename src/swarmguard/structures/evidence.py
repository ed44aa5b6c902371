"""Evidence ledger: columns in arrival order, grouped into partitions by agent shard.

Layout
------
* Every accepted evidence gets a sequence number (its arrival order) and its
  validated fields are kept as columns (agent row, source row, type code,
  log-odds, confidence, timestamp).
* Agents are cut into *shards* of ``AGENTS_PER_SHARD`` consecutive agent rows
  (rows are given in order of first appearance). A shard's evidence lives in
  *partitions* of at most ``partition_size`` points, each holding its points'
  (local agent, source, contribution) and a mergeable :class:`PairSums`
  accumulator of them (built on first use, then cached: a full partition never
  changes again). Merging the partitions' accumulators gives every
  per-(agent, source) total exactly, however the evidence was split; in
  process, :meth:`EvidenceLedger.shard_totals` may instead sum the partitions'
  rows in one pass, which gives the same bits. Partitions are the unit that
  later moves onto workers (:mod:`swarmguard.structures.evidence_partition`).

Evidence ids
------------
Evidence ids are unique per source: the key of an evidence is
``(source row, evidence_id)``, so one source cannot squat another's ids. The
common case (ids distinct across all sources) stays a single :class:`IdIndex`
over ``evidence_id`` whose row is the sequence number (``evidence_seq`` is
None: the identity). Only an id that a *second* source uses too is kept in the
small dict ``shared`` (``(source row, id) -> seq``); from the first such id on,
``evidence_seq`` maps the index's rows to sequence numbers.

Covered evidence
----------------
:class:`CoveredCounts` counts, per source, the distinct agents it has evidence on that some
*base* source also reports on (up to a cap) (for probation, the base sources are the founding
and trusted ones; see :mod:`swarmguard.api.consensus`), incrementally from the
ledger's rows (:mod:`swarmguard.structures.covered_counts`).

The ledger knows nothing about validation or the consensus rule; it is fed
validated arrays by :mod:`swarmguard.api.consensus`.
"""

from __future__ import annotations

import numpy as np

from ..values.id_index import IdIndex
from .covered_counts import CoveredCounts, _room  # noqa: F401  (_room: still importable from here)
from .evidence_partition import (  # the shard constants are read here, as module globals, by the ledger
    _SHARD_SHIFT,
    AGENTS_PER_SHARD,
    EvidencePartition,
    ShardTotals,
)
from .pair_sums import PairSums

__all__ = ["EvidenceLedger", "EvidencePartition", "CoveredCounts", "AGENTS_PER_SHARD"]

_COUNT_BLOCK = 1 << 16

_COLUMNS = {
    "agent_row": np.int32,  # widened to int64 if rows ever reach 2**31 (see _widen)
    "source_row": np.int32,
    "type_code": np.int16,
    "log_odds": np.float64,
    "confidence": np.float64,
    "timestamp": np.float64,
}


class EvidenceLedger:
    """All accepted evidence, with id indexes, partitions and exact totals."""

    def __init__(self, partition_size: int):
        self.partition_size = int(partition_size)
        self.evidence = IdIndex()  # evidence_id -> row, for the first source that used the id
        self.evidence_seq: np.ndarray | None = None  # row of ``evidence`` -> seq (None: identity)
        self._seq_buffer = np.zeros(0, dtype=np.int64)  # evidence_seq is a view of its start
        self.shared: dict[tuple[int, object], int] = {}  # (source row, id) -> seq, ids already used
        self._source_counts = np.zeros(0, dtype=np.int64)  # accepted evidence per source row, of
        self._counted = 0                                   # the first _counted evidence (see source_counts)
        self.agents = IdIndex()
        self.sources = IdIndex()
        self.columns = {name: np.zeros(0, dtype=dt) for name, dt in _COLUMNS.items()}
        self.size = 0
        self.shards: list[list[EvidencePartition]] = []
        self.version = 0  # bumped on every change, for caches

    # ------------------------------------------------------------------ appends
    def append(self, agent_row, source_row, type_code, log_odds, confidence, timestamp) -> int:
        """Append validated rows (agents and sources already indexed); returns the first
        sequence number given to them (they get consecutive numbers)."""
        agent_row = np.asarray(agent_row)
        if agent_row.dtype not in (np.int32, np.int64):
            agent_row = agent_row.astype(np.int64)
        n = int(agent_row.size)
        start = self.size
        source_row = np.asarray(source_row)
        if n <= 8:  # single adds: Python max beats a NumPy reduction
            top, source_top = max(agent_row.tolist(), default=0), max(source_row.tolist(), default=0)
        else:
            top, source_top = int(agent_row.max()), int(source_row.max())
        if max(top, source_top) >= (1 << 31) - 1:
            self._widen("agent_row", top)
            self._widen("source_row", source_top)
        self._grow(start + n)
        values = {"agent_row": agent_row, "source_row": source_row, "type_code": type_code,
                  "log_odds": log_odds, "confidence": confidence, "timestamp": timestamp}
        for name, col in self.columns.items():
            col[start: start + n] = values[name]
        self.size = start + n
        if n == 0:
            self.version += 1
            return start
        n_shards = (top >> _SHARD_SHIFT) + 1
        while len(self.shards) < n_shards:
            self.shards.append([])
        contribution = np.multiply(confidence, log_odds, dtype=np.float64)
        local = np.bitwise_and(agent_row, AGENTS_PER_SHARD - 1, out=np.empty(n, dtype=np.int32),
                               casting="unsafe")
        source = np.asarray(source_row).astype(np.int32, copy=False)
        if n == 1:
            self._fill(top >> _SHARD_SHIFT, np.array([start], dtype=np.int64), local, source, contribution)
        elif n_shards <= 1 or n < 64:
            shard = agent_row >> _SHARD_SHIFT
            for s in np.unique(shard).tolist():
                pos = np.flatnonzero(shard == s)
                self._fill(s, start + pos, local[pos], source[pos], contribution[pos])
        else:
            key_type = np.uint8 if n_shards <= (1 << 8) else np.uint16 if n_shards <= (1 << 16) else np.int64
            shard = np.right_shift(agent_row, _SHARD_SHIFT, out=np.empty(n, dtype=key_type), casting="unsafe")
            # Radix sort by shard (uint8/uint16: one/two passes) keeps each shard's rows
            # in arrival order.
            order = np.argsort(shard, kind="stable")
            counts = np.zeros(n_shards, dtype=np.int64)
            for a in range(0, n, _COUNT_BLOCK):  # blocks: bincount's cast to intp stays in cache
                counts += np.bincount(shard[a:a + _COUNT_BLOCK], minlength=n_shards)
            bounds = np.concatenate([[0], np.cumsum(counts)])
            del shard
            # Fresh arrays owned by the ledger: partitions may keep views of them. Local
            # agent (13 bits) and source travel as one int32 when sources fit in 18 bits.
            if source_top < (1 << (31 - _SHARD_SHIFT)):
                packed = np.left_shift(source, _SHARD_SHIFT)
                packed |= local
                packed = np.take(packed, order, mode="clip")
                local = np.bitwise_and(packed, AGENTS_PER_SHARD - 1)
                source = np.right_shift(packed, _SHARD_SHIFT, out=packed)
            else:
                local, source = np.take(local, order, mode="clip"), np.take(source, order, mode="clip")
            contribution = np.take(contribution, order, mode="clip")
            order += start  # positions in the batch -> sequence numbers
            for s in range(n_shards):
                a, b = bounds[s], bounds[s + 1]
                if a < b:
                    self._fill(s, order[a:b], local[a:b], source[a:b], contribution[a:b], owned=True)
        self.version += 1
        return start

    def _fill(self, shard: int, seq, agent, source, contribution, owned: bool = False) -> None:
        """Append rows to a shard's partitions. ``owned``: the arrays belong to the ledger
        (nothing else writes to them), so a new partition may keep views instead of copies."""
        partitions = self.shards[shard]
        pos = 0
        while pos < seq.size:
            if not partitions or partitions[-1].room == 0:
                partitions.append(EvidencePartition(self.partition_size))
            take = min(partitions[-1].room, seq.size - pos)
            sl = slice(pos, pos + take)
            if owned and partitions[-1].size == 0:
                partitions[-1].adopt(seq[sl], agent[sl], source[sl], contribution[sl])
            else:
                partitions[-1].extend(seq[sl], agent[sl], source[sl], contribution[sl])
            pos += take

    def _widen(self, name: str, largest: int) -> None:
        col = self.columns[name]
        if col.dtype == np.int32 and largest >= (1 << 31) - 1:
            self.columns[name] = col.astype(np.int64)

    def _grow(self, need: int) -> None:
        have = self.columns["agent_row"].size
        if need <= have:
            return
        size = need if self.size == 0 else max(need, 2 * have, 1024)
        for name, col in self.columns.items():
            grown = np.empty(size, dtype=col.dtype)
            grown[: self.size] = col[: self.size]
            self.columns[name] = grown

    @property
    def source_counts(self) -> np.ndarray:
        """Accepted evidence per source row (for probation). Counted on demand from the rows
        added since the last call, so ingestion pays nothing and a per-item loop O(1)."""
        if self._counted < self.size:
            tail = self.columns["source_row"][self._counted: self.size]
            if tail.size <= 8 and int(tail.max()) < self._source_counts.size:
                for r in tail.tolist():
                    self._source_counts[r] += 1
            else:
                counts = np.bincount(tail, minlength=self._source_counts.size)
                counts[: self._source_counts.size] += self._source_counts
                self._source_counts = counts.astype(np.int64, copy=False)
            self._counted = self.size
        return self._source_counts

    # ------------------------------------------------------------------ evidence ids
    def seq_of(self, evidence_id, source_row: int) -> tuple[int, int]:
        """(seq of the evidence ``(source_row, evidence_id)`` or -1, row of the id in
        :attr:`evidence` or -1: whether some source already uses the id)."""
        row = self.evidence.row_of(evidence_id)
        if row < 0:
            return -1, -1
        seq = row if self.evidence_seq is None else int(self.evidence_seq[row])
        if int(self.columns["source_row"][seq]) == source_row:
            return seq, row
        return self.shared.get((int(source_row), evidence_id), -1), row

    def seqs_of(self, evidence_ids, source_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised :meth:`seq_of`: (seqs, rows in :attr:`evidence`), -1 where none.
        ``source_rows`` may hold planned rows of new sources (they match nothing)."""
        n = len(source_rows)
        if len(self.evidence) == 0:
            none = np.full(n, -1, dtype=np.int64)
            return none, none.copy()
        rows = self.evidence.rows_of(evidence_ids)
        seqs = rows if self.evidence_seq is None else np.where(rows >= 0, self.evidence_seq[rows], -1)
        hit = np.flatnonzero(seqs >= 0)
        if hit.size:
            other = hit[self.columns["source_row"][seqs[hit]] != source_rows[hit]]
            if other.size and seqs is rows:
                seqs = rows.copy()
            for i in other.tolist():   # ids another source used first: rare, a dict lookup each
                seqs[i] = self.shared.get((int(source_rows[i]), _key(evidence_ids, i)), -1)
        return seqs, rows

    def index_one(self, evidence_id, source_row: int, claimed: bool, seq: int) -> None:
        """:meth:`index_evidence` of one evidence (the per-item path, without arrays)."""
        if claimed:
            self.index_evidence([evidence_id], np.array([source_row]), np.array([True]), seq)
            return
        self.evidence.add(evidence_id)
        if self.evidence_seq is not None:
            self._extend_seq(np.array([seq], dtype=np.int64))

    def index_evidence(self, evidence_ids, source_rows: np.ndarray, claimed: np.ndarray, start: int) -> None:
        """Record the ids of new evidence with seqs ``start, start + 1, ...``: each id
        is new for its source; ``claimed`` (bool) says which ids some source already
        uses (earlier, or earlier in this batch): those go to :attr:`shared`."""
        n = len(source_rows)
        if not claimed.any():
            if self.evidence_seq is not None:
                self._extend_seq(np.arange(start, start + n, dtype=np.int64))
            if n == 1:   # IdIndex.add keeps single inserts cheap (no table rebuild)
                self.evidence.add(_key(evidence_ids, 0))
            elif n:
                self.evidence.add_new(evidence_ids)
            return
        if self.evidence_seq is None:
            self._seq_buffer = np.arange(len(self.evidence), dtype=np.int64)
            self.evidence_seq = self._seq_buffer
        fresh = np.flatnonzero(~claimed)
        if fresh.size:
            ids = (evidence_ids[fresh] if isinstance(evidence_ids, np.ndarray)
                   else [evidence_ids[i] for i in fresh.tolist()])
            if fresh.size == 1:
                self.evidence.add(_key(ids, 0))
            else:
                self.evidence.add_new(ids)
            self._extend_seq(start + fresh.astype(np.int64))
        for i in np.flatnonzero(claimed).tolist():
            self.shared[(int(source_rows[i]), _key(evidence_ids, i))] = start + i

    def _extend_seq(self, seqs: np.ndarray) -> None:
        """Append to :attr:`evidence_seq` (a view of a buffer that grows by doubling, so
        single adds stay O(1) amortised)."""
        have = self.evidence_seq.size
        need = have + seqs.size
        if need > self._seq_buffer.size:
            grown = np.empty(max(need, 2 * self._seq_buffer.size, 64), dtype=np.int64)
            grown[:have] = self.evidence_seq
            self._seq_buffer = grown
        self._seq_buffer[have:need] = seqs
        self.evidence_seq = self._seq_buffer[:need]

    def evidence_ids(self) -> np.ndarray | list:
        """The evidence id of every seq (an int64 array while ids are ints, else a list)."""
        rows = np.arange(len(self.evidence), dtype=np.int64)
        keys = self.evidence.keys_of(rows)
        if self.evidence_seq is None and not self.shared:
            return keys if keys.dtype != object else keys.tolist()
        seqs = rows if self.evidence_seq is None else self.evidence_seq
        ints = keys.dtype != object and all(type(k) is int for _, k in self.shared)
        out = np.zeros(self.size, dtype=np.int64) if ints else np.empty(self.size, dtype=object)
        out[seqs] = keys
        for (_, k), seq in self.shared.items():
            out[seq] = k
        return out if ints else out.tolist()

    # ------------------------------------------------------------------ reads
    def row(self, seq: int) -> tuple:
        """The stored fields of evidence ``seq`` (for duplicate checks)."""
        return tuple(self.columns[name][seq].item() for name in _COLUMNS)

    def rows(self, seq: np.ndarray) -> dict[str, np.ndarray]:
        return {name: col[seq] for name, col in self.columns.items()}

    @property
    def n_partitions(self) -> int:
        return sum(len(p) for p in self.shards)

    def partitions(self) -> list[EvidencePartition]:
        return [p for shard in self.shards for p in shard]

    def shard_totals(self, shard: int, prior: float, *, from_partitions: bool = False,
                     agent_sums: bool = True) -> ShardTotals:
        """Exact per-pair and per-agent totals of one shard.

        ``from_partitions=True`` merges the partitions' accumulators (what a remote
        partition would send); the default sums the shard's rows in one pass, which
        is about 2x faster in process and gives the same bits (exact sums do not
        depend on grouping; a test checks both ways agree).
        """
        lo = shard << _SHARD_SHIFT
        n_agents = min(AGENTS_PER_SHARD, len(self.agents) - lo)
        partitions = self.shards[shard]
        if from_partitions:
            self._build_sums(shard)
            a, s, c, t, ac, at = PairSums.merged_totals([p.sums() for p in partitions], n_agents, prior)
        else:
            def cat(name, dtype):
                parts = [getattr(p, name) for p in partitions]
                return _join(parts) if parts else np.zeros(0, dtype=dtype)
            a, s, c, t, ac, at = PairSums.row_totals(
                cat("agent", np.int32), cat("source", np.int32), cat("contribution", np.float64),
                n_agents, prior, agent_sums=agent_sums)
        return ShardTotals(lo, a, s, c, t, ac, at)

    def _build_sums(self, shard: int) -> None:
        """Build every missing partition accumulator of a shard in one vectorised pass."""
        todo = [p for p in self.shards[shard] if p._sums is None]
        if len(todo) < 2:
            return
        part = np.repeat(np.arange(len(todo), dtype=np.int64), [p.size for p in todo])
        built = PairSums.from_rows_grouped(part, len(todo), np.concatenate([p.agent for p in todo]),
                                           np.concatenate([p.source for p in todo]),
                                           np.concatenate([p.contribution for p in todo]))
        for p, sums in zip(todo, built, strict=True):
            p._sums = sums

    def agent_totals(self, agent_row: int, prior: float) -> ShardTotals:
        """Exact totals of one agent (its shard's partitions, by binary search)."""
        shard = agent_row >> _SHARD_SHIFT
        lo = shard << _SHARD_SHIFT
        self._build_sums(shard)
        parts = [p.sums().select_agent(agent_row - lo) for p in self.shards[shard]]
        a, s, c, t, ac, at = PairSums.merged_totals(parts, agent_row - lo + 1, prior)
        return ShardTotals(agent_row, a - (agent_row - lo), s, c, t, ac[-1:], at[-1:])


def _key(keys, i: int):
    """The id at position ``i`` as a Python object (ints of int64 arrays as int)."""
    return int(keys[i]) if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu" else keys[i]


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, or a read-only view when the parts are consecutive
    slices of one array (partitions filled from one batch hold such views)."""
    base = parts[0].base
    if len(parts) > 1 and base is not None and base.ndim == 1 and base.flags.c_contiguous:
        item = base.itemsize
        start = base.__array_interface__["data"][0]
        pos = []
        for p in parts:
            if p.base is not base or p.dtype != base.dtype or not p.flags.c_contiguous:
                return np.concatenate(parts)
            pos.append(((p.__array_interface__["data"][0] - start) // item, p.size))
        if all(a + n == b for (a, n), (b, _) in zip(pos, pos[1:], strict=False)):
            view = base[pos[0][0]: pos[-1][0] + pos[-1][1]]
            view.flags.writeable = False
            return view
    return np.concatenate(parts)

