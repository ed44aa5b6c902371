"""An evidence partition's actor state: a consensus over its agents' evidence (see :mod:`swarmguard.engines.shards`)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..api.consensus import StableBayesianConsensus
from ..errors import DuplicateEvidenceError, UnknownAgentError
from ..structures.evidence import CoveredCounts
from ..structures.robust_fusion import SourceEvents, count_flagged_pairs, far_outlier_events
from .shard_base import Versioned

__all__ = ["EvidenceShard"]


class EvidenceShard(Versioned):
    """One evidence partition: the exact evidence of the agents hashed to it.

    Holds a :class:`StableBayesianConsensus` of its agents' evidence; the
    per-agent fusion is local and exact; source reputation needs every
    partition's outlier counts, so consensus is two calls: :meth:`fuse`
    (outlier counts per source) and :meth:`finish` (given the globally flagged
    sources).
    """

    def __init__(self, **consensus_kwargs: Any):
        self.kwargs = consensus_kwargs
        self._fresh()

    def _fresh(self) -> None:
        self.seq = 0
        self.consensus = StableBayesianConsensus(**self.kwargs)
        self._fused: dict[str, Any] | None = None
        self._established: list[Hashable] | None = None   # sources out of probation, as of the last fuse
        self._covered = CoveredCounts()                   # for the driver's probation (covered_counts)

    def check(self, expect: int, batch: dict[str, Any] | None, every: tuple[Any, Any, np.ndarray], me: int) -> None:
        """Raise as :meth:`add` of ``batch`` would, changing nothing; also refuse the whole
        batch's evidence routed to other partitions (``every``: all ids, their sources,
        their partitions) whose key ``(source, evidence_id)`` this partition holds or
        receives too: the same evidence for another agent."""
        self._check(expect)
        if batch is not None:
            self.consensus.check_evidence_batch(**batch)
        ids, sources, part = every
        away = np.flatnonzero(part != me)
        if away.size == 0:
            return

        def take(col, rows):
            return col[rows] if isinstance(col, np.ndarray) else [col[i] for i in rows.tolist()]

        foreign, foreign_src = take(ids, away), take(sources, away)
        conflict = self.consensus.holds_evidence_many(foreign, foreign_src)
        if batch is not None:
            mine = batch["evidence_ids"]
            # Ids first (vectorised for integer or string arrays), then the few candidates' keys.
            if (isinstance(foreign, np.ndarray) and isinstance(mine, np.ndarray)
                    and foreign.dtype.kind == mine.dtype.kind and foreign.dtype.kind in "iuU"):
                candidates = np.flatnonzero(np.isin(foreign, mine)).tolist()
            else:
                ids_here = set(mine.tolist() if isinstance(mine, np.ndarray) else mine)
                items = foreign.tolist() if isinstance(foreign, np.ndarray) else foreign
                candidates = [i for i, k in enumerate(items) if k in ids_here]
            if candidates:
                def listed(col):
                    return col.tolist() if isinstance(col, np.ndarray) else list(col)
                keys_here = set(zip(listed(batch["source_nodes"]), listed(mine), strict=True))
                f_ids, f_src = listed(foreign), listed(foreign_src)
                for i in candidates:
                    if (f_src[i], f_ids[i]) in keys_here:
                        conflict[i] = True
        if conflict.any():
            i = int(np.flatnonzero(conflict)[0])
            raise DuplicateEvidenceError(f"evidence_id {foreign[i]!r} of source {foreign_src[i]!r} "
                                         f"is given for two different agents")

    def add(self, expect: int, batch: dict[str, Any]) -> int:
        self._check(expect)
        n = self.consensus.add_evidence_batch(**batch)
        self.seq += 1
        return n

    def _rows_mask(self, keys: Sequence[Hashable] | None, default: bool) -> np.ndarray:
        """Per source row of this partition: is its key in ``keys`` (None: ``default``)."""
        sources = self.consensus.ledger.sources.keys()
        if keys is None:
            return np.full(len(sources), default, dtype=bool)
        wanted = set(keys)
        return np.array([k in wanted for k in sources], dtype=bool)

    def agent_consensus(self, expect: int, agent_id: Hashable, flagged: Sequence[Hashable],
                        established: Sequence[Hashable] | None = None) -> dict[str, Any] | None:
        """One agent's consensus (the in-process keys) given the sources flagged and the
        sources out of probation over all partitions (None: every source)."""
        self._check(expect)
        c = self.consensus
        flag = self._rows_mask(flagged, False)
        try:
            return c.consensus_given(agent_id, flag, False, self._rows_mask(established, True))
        except UnknownAgentError:
            return None

    def source_counts(self, expect: int) -> dict[str, Any]:
        """Accepted evidence per source (keyed by source id), for probation over all partitions."""
        self._check(expect)
        ledger = self.consensus.ledger
        n = len(ledger.sources)
        counts = np.zeros(n, dtype=np.int64)
        counts[: min(n, ledger.source_counts.size)] = ledger.source_counts[:n]
        return {"sources": ledger.sources.keys(), "counts": counts}

    def covered_counts(self, expect: int, base: Sequence[Hashable]) -> dict[str, Any]:
        """Per source (keyed by source id): the distinct agents here (up to the probation
        count) it has evidence on that some ``base`` source (founding or trusted, over all
        partitions) reports on, for probation. Each agent lives in one partition, so the
        driver's sum over partitions reaches the probation count exactly when the source's
        count over all agents does."""
        self._check(expect)
        ledger = self.consensus.ledger
        counts = self._covered.counts(ledger, self._rows_mask(base, False), self.consensus.probation_evidence).copy()
        return {"sources": ledger.sources.keys(), "counts": counts}

    def _fuse(self, established: Any = ...) -> dict[str, Any]:
        """The partition's fusion given the sources out of probation over all partitions
        (a list of ids, None for every source; omitted: those of the last :meth:`fuse`)."""
        c = self.consensus
        ledger = c.ledger
        if established is ...:
            established = self._established
        key = None if established is None else frozenset(established)
        if (self._fused is not None and self._fused["version"] == ledger.version
                and self._fused["established_keys"] == key):
            return self._fused
        out, events, pair_agents, pair_sources, shard_pairs = c.fuse_partition(
            need_sum=False, established=self._rows_mask(established, True))
        out.update(shard_pairs=shard_pairs, pair_agents=pair_agents, pair_sources=pair_sources,
                   events=events, version=ledger.version, established_keys=key)
        self._fused = out
        return out

    def fuse(self, expect: int, established: Sequence[Hashable] | None = None) -> dict[str, Any]:
        """Far-outlier events per source (keyed by source id) over this partition's agents,
        given the sources out of probation over all partitions (None: every source)."""
        self._check(expect)
        self._established = None if established is None else list(established)
        ev = self._fuse()["events"]
        return {"sources": self.consensus.ledger.sources.keys(),
                **{name: getattr(ev, name) for name in SourceEvents._FIELDS}}

    def recount(self, expect: int, flagged: Sequence[Hashable]) -> dict[str, Any]:
        """The events again without the flagged sources (one peeling pass, this partition's part)."""
        self._check(expect)
        ledger = self.consensus.ledger
        n_sources = len(ledger.sources)
        flag = self._rows_mask(flagged, False)
        events = SourceEvents.zeros(n_sources)
        for agent, source, total, n_agents in self._fuse()["shard_pairs"]:
            keep = ~flag[source]
            events += far_outlier_events(agent[keep], source[keep], total[keep], n_agents, n_sources)
        return {"sources": ledger.sources.keys(), **{name: getattr(events, name) for name in SourceEvents._FIELDS}}

    def finish(self, expect: int, flagged: Sequence[Hashable]) -> dict[str, Any]:
        """Per-agent consensus given the sources flagged over all partitions."""
        self._check(expect)
        g = self._fuse()
        ledger = self.consensus.ledger
        flag = self._rows_mask(flagged, False)
        n_agents = len(ledger.agents)
        n_flagged = count_flagged_pairs(g["pair_agents"], g["pair_sources"], flag, n_agents)
        log_odds = g["robust"]
        reached = self.consensus.reached(g["n"], g["f"], n_flagged, g["young"])
        return {"agent_ids": ledger.agents.keys_of(np.arange(n_agents, dtype=np.int64)),
                "log_odds": log_odds, "consensus_reached": reached, "evidence_count": g["count"],
                "source_count": g["n"]}

    @property
    def evidence_count(self) -> int:
        return self.consensus.evidence_count

    def count(self, expect: int) -> int:
        self._check(expect)
        return self.consensus.evidence_count

    def fingerprint(self, expect: int) -> dict[str, Any]:
        """The stored evidence as columns (for tests: exact comparison)."""
        self._check(expect)
        return self.consensus.export_evidence()

    def checkpoint(self, expect: int) -> tuple[int, dict[str, Any]]:
        self._check(expect)
        return self.seq, self.consensus.export_evidence()

    def restore(self, seq: int, state: dict[str, Any] | None) -> int:
        self._fresh()
        if state is not None and len(state["log_odds"]):
            self.consensus.add_evidence_batch(**state)
        self.seq = seq
        return self.seq
