"""Evidence partitions: at most ``partition_size`` points of one agent shard and their exact sums.

Agents are cut into *shards* of ``AGENTS_PER_SHARD`` consecutive agent rows; a
shard's evidence lives in partitions (:class:`EvidencePartition`), each holding
its points' (local agent, source, contribution) and a mergeable
:class:`~swarmguard.structures.pair_sums.PairSums` accumulator of them.
:class:`ShardTotals` is what a shard's partitions add up to. The ledger that
fills them is :class:`~swarmguard.structures.evidence.EvidenceLedger`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .pair_sums import PairSums, _int_array

__all__ = ["EvidencePartition", "ShardTotals", "AGENTS_PER_SHARD"]

# Big enough that per-shard NumPy call overhead is amortised, small enough to stay in cache.
_SHARD_SHIFT = 13
AGENTS_PER_SHARD = 1 << _SHARD_SHIFT


class EvidencePartition:
    """At most ``capacity`` evidence points of one shard and their exact accumulator.

    A partition is self-contained: it keeps its points' sequence numbers, agent
    rows (local to the shard), source rows and contributions, so it can be
    shipped to a worker without the ledger; :meth:`sums` is its mergeable
    :class:`PairSums` (built on first use, cached until the partition grows).

    Examples
    --------
    >>> import numpy as np
    >>> from swarmguard.structures.evidence import EvidenceLedger
    >>> ledger = EvidenceLedger(partition_size=2)
    >>> _ = ledger.append(np.array([0, 0, 1]), np.array([0, 1, 0]), np.zeros(3, np.int16),
    ...                   np.array([1.0, 2.0, 3.0]), np.ones(3), np.zeros(3))
    >>> [p.size for p in ledger.shards[0]], ledger.shards[0][1].contribution.tolist()
    ([2, 1], [3.0])
    """

    __slots__ = ("capacity", "size", "_seq", "_agent", "_source", "_contribution", "_sums")

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        first = min(capacity, 64)
        self._seq = np.zeros(first, dtype=np.int64)
        self._agent = np.zeros(first, dtype=np.int32)
        self._source = np.zeros(first, dtype=np.int32)
        self._contribution = np.zeros(first, dtype=np.float64)
        self._sums: PairSums | None = None

    @property
    def room(self) -> int:
        return self.capacity - self.size

    @property
    def seq(self) -> np.ndarray:
        return self._seq[: self.size]

    @property
    def agent(self) -> np.ndarray:
        """Agent rows minus the shard's first agent row."""
        return self._agent[: self.size]

    @property
    def source(self) -> np.ndarray:
        return self._source[: self.size]

    @property
    def contribution(self) -> np.ndarray:
        return self._contribution[: self.size]

    def extend(self, seq: np.ndarray, agent: np.ndarray, source: np.ndarray, contribution: np.ndarray) -> None:
        need = self.size + seq.size
        if need > self._seq.size:
            size = min(self.capacity, max(need, 2 * self._seq.size))
            for name in ("_seq", "_agent", "_source", "_contribution"):
                old = getattr(self, name)
                grown = np.zeros(size, dtype=old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        lo = self.size
        self._seq[lo:need], self._agent[lo:need] = seq, agent
        self._source[lo:need], self._contribution[lo:need] = source, contribution
        self.size = need
        self._sums = None

    def adopt(self, seq: np.ndarray, agent: np.ndarray, source: np.ndarray, contribution: np.ndarray) -> None:
        """Fill an empty partition with the given arrays themselves (no copy): int64,
        int32, int32, float64 of equal length, which no one else may write to. A later
        :meth:`extend` reallocates (the arrays are exactly full), so they are never written."""
        if self.size or not 0 < seq.size <= self.capacity:
            raise InvalidInputError("adopt needs an empty partition and 1..capacity rows")
        self._seq, self._agent, self._source, self._contribution = seq, agent, source, contribution
        self.size = seq.size
        self._sums = None

    def to_dict(self) -> dict[str, np.ndarray]:
        """The partition as plain arrays (copies), e.g. to ship it to a worker."""
        return {"capacity": np.array(self.capacity), "seq": self.seq.copy(), "agent": self.agent.copy(),
                "source": self.source.copy(), "contribution": self.contribution.copy()}

    @classmethod
    def from_dict(cls, state: dict[str, np.ndarray]) -> EvidencePartition:
        """Inverse of :meth:`to_dict`, validated: integer rows in range (local agent rows
        below ``AGENTS_PER_SHARD``, source rows below 2**31 - 1, seqs >= 0), finite float
        contributions, equal lengths; anything else raises
        :class:`~swarmguard.errors.InvalidInputError` (never a silent cast)."""
        if not isinstance(state, dict):
            raise InvalidInputError(f"partition state must be a dict, got {type(state).__name__}")
        try:
            capacity = int(_int_array(state["capacity"], "capacity", 1, 1 << 62, ndim=0))
            seq = _int_array(state["seq"], "seq", 0, 1 << 63)
            agent = _int_array(state["agent"], "agent", 0, AGENTS_PER_SHARD)
            source = _int_array(state["source"], "source", 0, (1 << 31) - 1)
            contribution = np.asarray(state["contribution"])
        except KeyError as exc:
            raise InvalidInputError(f"partition state lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"partition state is malformed: {exc}") from exc
        if contribution.dtype.kind != "f" or contribution.ndim != 1:
            raise InvalidInputError(f"partition contributions must be a 1-D float array, got dtype "
                                    f"{contribution.dtype}, shape {contribution.shape}")
        if len({seq.shape, agent.shape, source.shape, contribution.shape}) != 1 or seq.size > capacity:
            raise InvalidInputError("partition state has inconsistent columns or capacity")
        wide = contribution
        contribution = contribution.astype(np.float64)
        # float16/32 widen exactly; a wider type (long double) must hold float64 values only
        if wide.dtype != np.float64 and not np.array_equal(contribution.astype(wide.dtype), wide, equal_nan=True):
            raise InvalidInputError(f"partition contributions of dtype {wide.dtype} do not fit float64 exactly")
        if not np.isfinite(contribution).all():
            raise InvalidInputError("partition contributions must be finite")
        part = cls(capacity)
        part.extend(seq.astype(np.int64), agent.astype(np.int32), source.astype(np.int32), contribution)
        return part

    def sums(self) -> PairSums:
        """This partition's exact per-(agent, source) sums (agent rows local to the shard)."""
        if self._sums is None:
            self._sums = PairSums.from_rows(self.agent, self.source, self.contribution)
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
