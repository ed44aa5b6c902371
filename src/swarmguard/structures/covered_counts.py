"""Covered evidence: per source, the distinct agents it reports on that some base source also
reports on (up to a cap), kept incrementally from an evidence ledger's rows.

For probation the base sources are the founding and trusted ones (see
:mod:`swarmguard.api.consensus`); the rows come from
:class:`~swarmguard.structures.evidence.EvidenceLedger`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Protocol

import numpy as np

__all__ = ["CoveredCounts", "LedgerRows"]


class LedgerRows(Protocol):
    """What :meth:`CoveredCounts.counts` reads of a ledger (an
    :class:`~swarmguard.structures.evidence.EvidenceLedger`, which imports this module, so it
    is described here rather than imported): its source and agent indexes, its row count and
    its ``agent_row`` / ``source_row`` columns."""

    sources: Sized
    agents: Sized
    size: int
    columns: Mapping[str, np.ndarray]


class CoveredCounts:
    """Per source row: on how many *distinct covered* agents it has evidence (counted up to
    a cap), where covered agents are those that some base source (given per source row)
    reports on; base sources themselves are not counted.

    Distinct agents, not pieces: ten pieces on one agent are one agent, so an identity
    cannot earn its count by repeating itself where a base source happens to report.
    Kept incrementally from a ledger's rows: each call reads only the rows added since the
    last one, and looks again at older rows only for agents that become covered while
    holding evidence (``pending``) from the time they were not. The counts depend only on
    the set of rows, not on their order. A change of base for a source that has rows
    already counted starts the count again from the first row.

    Memory is bounded by the cap: only the (source, agent) pairs of sources still below
    the cap are kept (fewer than ``cap`` per such source), since a count that reached the
    cap is never asked beyond it (the rows only grow, so it never falls back).

    Examples
    --------
    >>> import numpy as np
    >>> from swarmguard.structures.evidence import EvidenceLedger
    >>> ledger = EvidenceLedger(partition_size=8)
    >>> _ = ledger.agents.add_new(["x", "y"]), ledger.sources.add_new(["base", "s"])
    >>> _ = ledger.append(np.array([0, 1, 1, 1]), np.array([1, 1, 1, 0]), np.zeros(4, np.int16),
    ...                   np.ones(4), np.ones(4), np.zeros(4))
    >>> CoveredCounts().counts(ledger, np.array([True, False]), cap=10).tolist()   # "s": "y" only, twice
    [0, 1]
    """

    __slots__ = ("_base", "_cap", "_covered", "_pending", "_counts", "_pairs", "_done")

    def __init__(self) -> None:
        self._base = np.zeros(0, dtype=bool)
        self._cap = 0
        self._covered = np.zeros(0, dtype=bool)
        self._pending = np.zeros(0, dtype=np.int64)   # per agent: uncounted evidence while not covered
        self._counts = np.zeros(0, dtype=np.int64)
        self._pairs = np.zeros(0, dtype=np.int64)     # sorted (source << 32 | agent) counted, sources below cap
        self._done = 0

    def counts(self, ledger: LedgerRows, base: np.ndarray, cap: int) -> np.ndarray:
        """The counts per source row of ``ledger`` given ``base`` (bool per source row),
        each ``min(distinct covered agents, cap)``; a view, valid until the next call."""
        n_sources, n_agents = len(ledger.sources), len(ledger.agents)
        base = np.asarray(base, dtype=bool)
        cap = int(cap)
        known = self._base.size
        if (known > n_sources or not np.array_equal(base[:known], self._base) or self._done > ledger.size
                or cap != self._cap):
            self.__init__()
        self._base, self._cap = base.copy(), cap
        # buffers grow by doubling (a per-item loop adding agents stays O(1) amortised)
        self._covered, self._pending = _room(self._covered, n_agents), _room(self._pending, n_agents)
        self._counts = _room(self._counts, n_sources)
        covered, pending = self._covered[:n_agents], self._pending[:n_agents]
        counts = self._counts[:n_sources]
        done, size = self._done, ledger.size
        if done < size:
            agent_col, source_col = ledger.columns["agent_row"], ledger.columns["source_row"]
            agent, source = agent_col[done:size], source_col[done:size]
            from_base = base[source]
            reached = agent[from_base]
            reached = np.unique(reached[~covered[reached]])
            found_agents, found_sources = [], []
            if reached.size:
                covered[reached] = True
                again = reached[pending[reached] > 0]
                if again.size:   # evidence from before these agents were covered: count it now
                    wanted = np.zeros(n_agents, dtype=bool)
                    wanted[again] = True
                    old_agent, old_source = agent_col[:done], source_col[:done]
                    hit = wanted[old_agent] & ~base[old_source]
                    found_agents.append(old_agent[hit])
                    found_sources.append(old_source[hit])
                    pending[again] = 0
            other_agent, other_source = agent[~from_base], source[~from_base]
            on = covered[other_agent]
            found_agents.append(other_agent[on])
            found_sources.append(other_source[on])
            pending += np.bincount(other_agent[~on], minlength=n_agents)
            self._add_pairs(np.concatenate(found_agents), np.concatenate(found_sources), counts)
            self._done = size
        return counts

    def _add_pairs(self, agent: np.ndarray, source: np.ndarray, counts: np.ndarray) -> None:
        """Count the (agent, source) pairs not counted yet, for sources below the cap."""
        cap = self._cap
        below = counts[source] < cap
        if not below.any():
            return
        keys = (source[below].astype(np.int64) << 32) | agent[below].astype(np.int64)
        keys = np.unique(keys)
        pairs = self._pairs
        if pairs.size:
            at = np.minimum(np.searchsorted(pairs, keys), pairs.size - 1)
            keys = keys[pairs[at] != keys]
        if keys.size == 0:
            return
        new_sources = keys >> 32
        np.minimum(counts + np.bincount(new_sources, minlength=counts.size), cap, out=counts)
        pairs = np.insert(pairs, np.searchsorted(pairs, keys), keys)
        # a source at the cap is never counted again: its pairs are dropped
        self._pairs = pairs[counts[pairs >> 32] < cap]


def _room(buffer: np.ndarray, n: int) -> np.ndarray:
    """``buffer``, or a zero-padded copy of at least twice its length when shorter than ``n``."""
    if buffer.size >= n:
        return buffer
    grown = np.zeros(max(n, 2 * buffer.size, 64), dtype=buffer.dtype)
    grown[: buffer.size] = buffer
    return grown
