"""Evidence ledger: columns in arrival order, grouped into partitions by agent shard.

Layout
------
* Every accepted evidence gets a sequence number (its arrival order) and its
  validated fields are kept as columns (agent row, source row, type code,
  log-odds, confidence, timestamp).
* Agents are cut into *shards* of ``AGENTS_PER_SHARD`` consecutive agent rows.
  A shard's evidence lives in *partitions* of at most ``partition_size``
  points; each partition owns a mergeable :class:`PairSums` accumulator of its
  points' contributions (built on first use, then cached: a full partition
  never changes again). A shard's consensus merges its partitions'
  accumulators, so every per-(agent, source) total is exact however the
  evidence was split. Partitions are the unit that later moves onto workers.

The ledger knows nothing about validation or the consensus rule; it is fed
validated arrays by :mod:`swarmguard.api.consensus`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .key_index import KeyIndex
from .pair_sums import PairSums

__all__ = ["EvidenceLedger", "EvidencePartition", "AGENTS_PER_SHARD"]

# Big enough that per-shard NumPy call overhead is amortised, small enough to stay in cache.
_SHARD_SHIFT = 13
AGENTS_PER_SHARD = 1 << _SHARD_SHIFT

_COLUMNS = {
    "agent_row": np.int64,
    "source_row": np.int64,
    "type_code": np.int16,
    "log_odds": np.float64,
    "confidence": np.float64,
    "timestamp": np.float64,
}


class EvidencePartition:
    """At most ``capacity`` evidence points (their sequence numbers) and their accumulator.

    Examples
    --------
    >>> import numpy as np
    >>> ledger = EvidenceLedger(partition_size=2)
    >>> _ = ledger.append(np.array([0, 0, 1]), np.array([0, 1, 0]), np.zeros(3, np.int16),
    ...                   np.array([1.0, 2.0, 3.0]), np.ones(3), np.zeros(3))
    >>> [p.size for p in ledger.shards[0]]
    [2, 1]
    """

    __slots__ = ("capacity", "seq", "size", "_sums")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.seq = np.zeros(min(capacity, 64), dtype=np.int64)
        self.size = 0
        self._sums: PairSums | None = None

    @property
    def room(self) -> int:
        return self.capacity - self.size

    def extend(self, seq: np.ndarray) -> None:
        need = self.size + seq.size
        if need > self.seq.size:
            grown = np.zeros(min(self.capacity, max(need, 2 * self.seq.size)), dtype=np.int64)
            grown[: self.size] = self.seq[: self.size]
            self.seq = grown
        self.seq[self.size: need] = seq
        self.size = need
        self._sums = None

    def sums(self, ledger: EvidenceLedger, agent_offset: int) -> PairSums:
        """This partition's exact per-(agent, source) sums (agent rows minus ``agent_offset``)."""
        if self._sums is None:
            seq = self.seq[: self.size]
            cols = ledger.columns
            contribution = cols["confidence"][seq] * cols["log_odds"][seq]
            self._sums = PairSums.from_rows(cols["agent_row"][seq] - agent_offset,
                                            cols["source_row"][seq], contribution)
        return self._sums


@dataclass
class ShardTotals:
    """Exact totals of one shard (agent rows local to the shard)."""

    agent_lo: int
    pair_agent: np.ndarray
    pair_source: np.ndarray
    pair_count: np.ndarray
    pair_total: np.ndarray
    agent_count: np.ndarray
    agent_total: np.ndarray


class EvidenceLedger:
    """All accepted evidence, with id indexes, partitions and exact totals."""

    def __init__(self, partition_size: int):
        self.partition_size = int(partition_size)
        self.evidence = KeyIndex()
        self.agents = KeyIndex()
        self.sources = KeyIndex()
        self.columns = {name: np.zeros(0, dtype=dt) for name, dt in _COLUMNS.items()}
        self.size = 0
        self.shards: list[list[EvidencePartition]] = []
        self.version = 0  # bumped on every change, for caches

    # ------------------------------------------------------------------ appends
    def append(self, agent_row, source_row, type_code, log_odds, confidence, timestamp) -> int:
        """Append validated rows (agents and sources already indexed); returns the first
        sequence number given to them (they get consecutive numbers)."""
        agent_row = np.asarray(agent_row, dtype=np.int64)
        n = int(agent_row.size)
        start = self.size
        self._grow(start + n)
        values = {"agent_row": agent_row, "source_row": source_row, "type_code": type_code,
                  "log_odds": log_odds, "confidence": confidence, "timestamp": timestamp}
        for name, col in self.columns.items():
            col[start: start + n] = values[name]
        self.size = start + n
        shard = agent_row >> _SHARD_SHIFT
        n_shards = int(shard.max()) + 1 if n else 0
        while len(self.shards) < n_shards:
            self.shards.append([])
        if n_shards <= 1 or n < 64:
            for s in np.unique(shard).tolist():
                self._fill(s, start + np.flatnonzero(shard == s))
        else:
            # Radix sort by shard (uint16) keeps each shard's rows in arrival order.
            order = np.argsort(shard.astype(np.uint16 if n_shards < (1 << 16) else np.int64), kind="stable")
            order += start  # positions in the batch -> sequence numbers
            bounds = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=n_shards))])
            for s in range(n_shards):
                if bounds[s] < bounds[s + 1]:
                    self._fill(s, order[bounds[s]: bounds[s + 1]])
        self.version += 1
        return start

    def _fill(self, shard: int, seq: np.ndarray) -> None:
        partitions = self.shards[shard]
        pos = 0
        while pos < seq.size:
            if not partitions or partitions[-1].room == 0:
                partitions.append(EvidencePartition(self.partition_size))
            take = min(partitions[-1].room, seq.size - pos)
            partitions[-1].extend(seq[pos: pos + take])
            pos += take

    def _grow(self, need: int) -> None:
        have = self.columns["agent_row"].size
        if need <= have:
            return
        size = need if self.size == 0 else max(need, 2 * have, 1024)
        for name, col in self.columns.items():
            grown = np.empty(size, dtype=col.dtype)
            grown[: self.size] = col[: self.size]
            self.columns[name] = grown

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
        if from_partitions:
            self._build_sums(shard)
            parts = [p.sums(self, lo) for p in self.shards[shard]]
            a, s, c, t, ac, at = PairSums.merged_totals(parts, n_agents, prior)
        else:
            partitions = self.shards[shard]
            seq = np.concatenate([p.seq[: p.size] for p in partitions]) if partitions else \
                np.zeros(0, dtype=np.int64)
            cols = self.columns
            a, s, c, t, ac, at = PairSums.row_totals(
                cols["agent_row"][seq] - lo, cols["source_row"][seq],
                cols["confidence"][seq] * cols["log_odds"][seq], n_agents, prior, agent_sums=agent_sums)
        return ShardTotals(lo, a, s, c, t, ac, at)

    def _build_sums(self, shard: int) -> None:
        """Build every missing partition accumulator of a shard in one vectorised pass."""
        todo = [p for p in self.shards[shard] if p._sums is None]
        if len(todo) < 2:
            return
        seq = np.concatenate([p.seq[: p.size] for p in todo])
        part = np.repeat(np.arange(len(todo), dtype=np.int64), [p.size for p in todo])
        cols = self.columns
        lo = shard << _SHARD_SHIFT
        contribution = cols["confidence"][seq] * cols["log_odds"][seq]
        built = PairSums.from_rows_grouped(part, len(todo), cols["agent_row"][seq] - lo,
                                           cols["source_row"][seq], contribution)
        for p, sums in zip(todo, built, strict=True):
            p._sums = sums

    def agent_totals(self, agent_row: int, prior: float) -> ShardTotals:
        """Exact totals of one agent (its shard's partitions, by binary search)."""
        shard = agent_row >> _SHARD_SHIFT
        lo = shard << _SHARD_SHIFT
        self._build_sums(shard)
        parts = [p.sums(self, lo).select_agent(agent_row - lo) for p in self.shards[shard]]
        a, s, c, t, ac, at = PairSums.merged_totals(parts, agent_row - lo + 1, prior)
        return ShardTotals(agent_row, a - (agent_row - lo), s, c, t, ac[-1:], at[-1:])
