"""Exact, Byzantine-robust Bayesian evidence consensus (the guide's Solution 2).

``StableBayesianConsensus`` collects :class:`BayesianEvidence` from observer
nodes and returns, per agent, the posterior that the agent is compromised.

* Exact: per-(agent, source) totals and, with ``aggregation="sum"``, the
  agent's log-odds are correctly rounded exact sums (``math.fsum``), the same
  bits whatever the order of arrival or the split into partitions.
* Robust (default): per-source totals are trimmed (``f = floor(threshold * n)``
  lowest and highest dropped) and scaled to ``n`` sources, so up to ``f``
  Byzantine sources cannot move the result outside the honest range; sources
  that are outliers far more often than chance are flagged
  (see :mod:`swarmguard.structures.robust_fusion` for the rule and its bound).
* Sybil resistant: the *founding* sources (those seen up to the first call after
  which some untrusted source had ``probation_evidence`` accepted evidence and
  ``founding_quorum`` untrusted sources had been seen) vote; a later source votes
  (in the fusion and the flagging) only once it has evidence on that many
  distinct agents that founding or trusted sources report on, so throw-away
  source ids cannot outvote or get flagged the sources that are known. Merges
  keep each side's founding sources.
* Evidence ids are unique per source (the key is ``(source_node, evidence_id)``).
* Thread safe: every public method runs under the object's lock.
* Batch first: :meth:`StableBayesianConsensus.add_evidence_batch` and
  :meth:`StableBayesianConsensus.consensus_many` work on arrays; the per-item
  async methods are thin wrappers.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    EvidenceStoreError,
    SwarmGuardError,
    UnknownAgentError,
)
from ..lazy_import import module_on_first_use
from ..locking import Locked, synchronized
from ..structures.evidence import CoveredCounts, EvidenceLedger
from ..structures.evidence_store import EvidenceStore
from ..structures.robust_fusion import (
    SourceEvents,
    count_flagged_pairs,
    fuse,
    peel_untrusted,
    source_events,
)
from ..validation import check_key
from .consensus_ingest import EvidenceIngestion
from .consensus_merge import ConsensusMerging
from .consensus_rules import consensus_at, founding_ends, voting_sources
from .evidence_batch import _as_keys, _key_at, _probabilities, evidence_columns
from .evidence_types import BayesianEvidence, EvidenceType
from .part_settings import FOUNDING_QUORUM, PROBATION_EVIDENCE, validate_consensus_settings

__all__ = ["StableBayesianConsensus", "BayesianEvidence", "EvidenceType", "PROBATION_EVIDENCE", "FOUNDING_QUORUM",
           "voting_sources", "founding_ends", "consensus_at", "evidence_columns"]

_special = module_on_first_use("scipy.special")   # imported on first use: see swarmguard.lazy_import



class StableBayesianConsensus(EvidenceIngestion, ConsensusMerging, Locked):
    """Exact, Byzantine-robust consensus on whether agents are compromised.

    Parameters
    ----------
    byzantine_threshold : float in [0, 0.5)
        Largest fraction of the sources reporting on an agent that may lie.
    partition_size : int
        Most evidence points per partition (each partition has its own exact,
        mergeable accumulator).
    prior_probability : float in (0, 1)
        Prior probability that an agent is compromised; its log-odds
        ``logit(prior_probability)`` starts every agent's total.
    aggregation : {"robust", "sum"}
        ``"robust"`` trims per-source totals (default); ``"sum"`` is the plain
        exact sum, ``math.fsum([prior_log_odds, *contributions])``, with no
        Byzantine protection.
    store : path, optional
        SQLite file; every accepted evidence is committed before the call
        returns, and opening an existing file restores the same state.
    false_flag_rate : float in (0, 1)
        Bound on the probability that any honest source is flagged (see
        :mod:`swarmguard.structures.robust_fusion`).
    min_sources : int
        Fewest sources that must remain after trimming for ``consensus_reached``.
    trusted_sources : sequence of ids, optional
        Sources that are never flagged as Byzantine (e.g. a detector's own node,
        whose reports are conditioned on its anomaly test and so differ from its
        peers' by design). Their evidence is still trimmed like any source's.
    reputation_refresh_limit : int
        Up to this many evidence points, a single-agent consensus refreshes the
        source reputation whenever evidence changed; above, it reuses the last
        one (``reputation_stale`` says so) until :meth:`consensus_many` or
        :meth:`source_reputation` recomputes it.
    probation_evidence : int
        Sybil resistance (default ``PROBATION_EVIDENCE`` = 10; 1 turns probation
        off). Every source votes while the founding lasts. It ends with the first
        call after which some untrusted source has this many accepted evidence
        and at least ``founding_quorum`` untrusted sources have been seen; the
        sources seen up to and including that call are the *founding* sources
        and always vote, as do trusted ones. A source seen later is on probation
        until it has evidence on this many *distinct* agents that founding or
        trusted sources report on (repeats on one agent, and evidence on agents
        no such source reports on, earn nothing). A source on probation is left
        out of the fusion and of the flagging (as judge and as judged) on every
        agent that some voting source reports on; an agent that only sources on
        probation report on is fused from them but never reaches consensus. The
        founding sources are kept in the store, and :meth:`merge` keeps each
        side's. See docs/consensus.md.
    founding_quorum : int
        Fewest untrusted sources seen before the founding can end (default
        ``FOUNDING_QUORUM`` = 3: the fewest among which one identity is a
        minority; 1 lets a single early identity end it, as before).

    Examples
    --------
    >>> import asyncio
    >>> c = StableBayesianConsensus(byzantine_threshold=0.25)
    >>> for i, (node, lo) in enumerate([("a", 1.0), ("b", 1.2), ("c", 0.8), ("d", 50.0)]):
    ...     _ = c.add_evidence_sync(BayesianEvidence(i, "agent-1", "peer_report", lo, 1.0, 0.0, node))
    >>> r = asyncio.run(c.distributed_evidence_consensus("agent-1"))
    >>> r["log_odds"], r["source_count"], r["consensus_reached"]
    (4.4, 4, True)
    >>> round(r["probability"], 4)
    0.9879
    """

    def __init__(self, byzantine_threshold: float = 0.33, partition_size: int = 10000,
                 prior_probability: float = 0.5, *, aggregation: str = "robust",
                 store: str | Path | None = None, false_flag_rate: float = 1e-6,
                 min_sources: int = 1, reputation_refresh_limit: int = 200_000,
                 trusted_sources: Sequence[Hashable] = (), probation_evidence: int = None,
                 founding_quorum: int = None):
        checked = validate_consensus_settings(
            byzantine_threshold, partition_size, prior_probability, aggregation=aggregation,
            false_flag_rate=false_flag_rate, min_sources=min_sources, reputation_refresh_limit=reputation_refresh_limit,
            trusted_sources=trusted_sources, probation_evidence=probation_evidence, founding_quorum=founding_quorum)
        self.byzantine_threshold = checked.byzantine_threshold
        self.partition_size = checked.partition_size
        self.prior_probability = checked.prior_probability
        self.aggregation = checked.aggregation
        self.false_flag_rate = checked.false_flag_rate
        self.min_sources = checked.min_sources
        self.reputation_refresh_limit = checked.reputation_refresh_limit
        self.trusted_sources = checked.trusted_sources
        self.probation_evidence = checked.probation_evidence
        self.founding_quorum = checked.founding_quorum
        self.prior_log_odds = float(_special().logit(self.prior_probability))
        super().__init__()   # the lock: every public method runs under it (see swarmguard.locking)
        self._ledger = EvidenceLedger(self.partition_size)
        self._global: dict[str, Any] | None = None
        # Probation: whether the founding ended, the founding sources per source row, and
        # the distinct covered agents of the others.
        self._founded = False
        self._founders = np.zeros(0, dtype=bool)
        self._covered = CoveredCounts()
        self._store: EvidenceStore | None = None
        if store is not None:
            self._store = EvidenceStore(store)
            try:
                rows = self._store.load()
                founders = self._store.founders()
                if rows:
                    cols = list(zip(*rows, strict=True))
                    names = {t.value for t in EvidenceType}
                    bad = next((t for t in cols[3] if t not in names), None)
                    if bad is not None:   # stored as the exact value: anything else was edited
                        raise EvidenceStoreError(f"evidence store {store}: unknown evidence type {bad!r}")
                    self._ingest(*[list(c) for c in cols], persist=False, founding=not founders)
                if founders:
                    missing = next((k for k in founders if self._ledger.sources.row_of(k) < 0), None)
                    if missing is not None:
                        raise EvidenceStoreError(f"evidence store {store}: founding source {missing!r} "
                                                 "sent no stored evidence")
                    self._set_founders(founders)
                elif self._founded:
                    # The founding condition only grows with the evidence: rows whose calls never
                    # met it cannot meet it as one call, so this is a store written before the
                    # founders were recorded; recorded now so later sources stay later ones.
                    self._store.add_founders(self.founding_sources)
            except SwarmGuardError as exc:
                self._store.close()
                self._store = None
                if isinstance(exc, EvidenceStoreError):
                    raise
                raise EvidenceStoreError(f"evidence store {store}: stored evidence is invalid: {exc}") from exc

    # ================================================================== consensus
    async def distributed_evidence_consensus(self, agent_id: Hashable) -> dict[str, Any]:
        """The consensus for one agent (see :meth:`consensus`)."""
        return self.consensus(agent_id)

    def distributed_evidence_consensus_sync(self, agent_id: Hashable) -> dict[str, Any]:
        """Synchronous twin of :meth:`distributed_evidence_consensus`."""
        return self.consensus(agent_id)

    @synchronized
    def consensus(self, agent_id: Hashable) -> dict[str, Any]:
        """Posterior for one agent.

        Returns a dict with ``probability``, ``log_odds``, ``log_probability``
        (log of the probability, finite even when the probability underflows),
        ``log_probability_complement``, ``evidence_count``, ``source_count``,
        ``byzantine_nodes`` (flagged sources among this agent's sources),
        ``consensus_reached``, ``log_odds_interval`` (robust interval),
        ``sum_log_odds`` (plain exact sum), ``trimmed_per_side``,
        ``probation_source_count`` (the agent's sources on probation, left out),
        ``aggregation`` and ``reputation_stale``. ``source_count`` counts the
        sources that vote on the agent.
        """
        result = self.consensus_or_none(agent_id)
        if result is None:
            raise UnknownAgentError(f"no evidence for agent {check_key(agent_id, 'agent_id')!r}")
        return result

    @synchronized
    def consensus_or_none(self, agent_id: Hashable) -> dict[str, Any] | None:
        """:meth:`consensus`, or None where no evidence names the agent (instead of raising
        :class:`~swarmguard.errors.UnknownAgentError`: the detector's per-item path, where most
        agents have none, asks this way)."""
        agent_id = check_key(agent_id, "agent_id")
        if self._ledger.agents.row_of(agent_id) < 0:
            return None
        flagged, stale = self._flags_for_single()
        return self.consensus_given(agent_id, flagged, stale)

    def consensus_given(self, agent_id: Hashable, flagged: np.ndarray, stale: bool,
                      established: np.ndarray | None = None) -> dict[str, Any]:
        """:meth:`consensus` given the source flags (``flagged[source row]``) and the voting
        sources (``established[source row]``, default: this consensus's own), which may
        come from elsewhere."""
        row = self._ledger.agents.row_of(agent_id)
        if row < 0:
            raise UnknownAgentError(f"no evidence for agent {agent_id!r}")
        if established is None:
            established = self._established()
        totals = self._ledger.agent_totals(row, self.prior_log_odds)
        src, total = totals.pair_source, totals.pair_total
        vote = established[src]
        young = not vote.any()
        if young:
            vote = np.ones(src.size, dtype=bool)
        src, total = src[vote], total[vote]
        fusion = fuse(np.zeros(src.size, dtype=np.int64), total, 1, self.byzantine_threshold, self.prior_log_odds)
        bad = src[(src < flagged.size)]
        bad = bad[flagged[bad]] if bad.size else bad
        n, f = int(fusion.n_sources[0]), int(fusion.trimmed[0])
        sum_lo = float(totals.agent_total[0])
        log_odds = float(fusion.log_odds[0]) if self.aggregation == "robust" else sum_lo
        reached = self.reached(np.array([n]), np.array([f]), np.array([bad.size]), np.array([young]))[0]
        p, logp, log1mp = _probabilities(np.array([log_odds]))
        return {
            "agent_id": agent_id,
            "probability": float(p[0]),
            "log_odds": log_odds,
            "log_probability": float(logp[0]),
            "log_probability_complement": float(log1mp[0]),
            "evidence_count": int(totals.agent_count[0]),
            "source_count": n,
            "byzantine_nodes": [self._ledger.sources.key_of(int(s)) for s in np.sort(bad)],
            "consensus_reached": bool(reached),
            "log_odds_interval": (float(fusion.low[0]), float(fusion.high[0])),
            "sum_log_odds": sum_lo,
            "trimmed_per_side": f,
            # left out: none on an agent that only sources on probation report on (as consensus_many)
            "probation_source_count": 0 if young else int(totals.pair_source.size - n),
            "aggregation": self.aggregation,
            "reputation_stale": stale,
        }

    @synchronized
    def consensus_many(self, agent_ids: Any = None, *, include_sum: bool = False) -> dict[str, Any]:
        """Consensus for many agents at once (all agents by default), as arrays.

        Returns a dict of arrays aligned with ``agent_ids``: ``probability``,
        ``log_odds``, ``log_probability``, ``evidence_count``, ``source_count``,
        ``consensus_reached``, ``log_odds_low``, ``log_odds_high``,
        ``sum_log_odds`` (the plain exact sums: always in ``"sum"`` mode, with
        ``include_sum=True`` in ``"robust"`` mode, else NaN, as they cost one
        more pass), ``byzantine_source_count``, ``probation_source_count``; plus
        ``byzantine_nodes``, the flagged sources (a list).
        """
        g = self._global_pass(need_sum=include_sum)
        ledger = self._ledger
        if agent_ids is None:
            rows = np.arange(len(ledger.agents), dtype=np.int64)
        else:
            keys = _as_keys(agent_ids, "agent_ids")
            rows = ledger.agents.rows_of(keys)
            if (rows < 0).any():
                i = int(np.flatnonzero(rows < 0)[0])
                raise UnknownAgentError(f"no evidence for agent {_key_at(keys, i)!r}")
        log_odds = g["robust"][rows] if self.aggregation == "robust" else g["sum"][rows]
        p, logp, _ = _probabilities(log_odds)
        reached = self.reached(g["n"][rows], g["f"][rows], g["n_flagged"][rows], g["young"][rows])
        return {
            "agent_ids": ledger.agents.keys_of(rows),
            "probability": p,
            "log_odds": log_odds,
            "log_probability": logp,
            "evidence_count": g["count"][rows],
            "source_count": g["n"][rows],
            "consensus_reached": reached,
            "log_odds_low": g["low"][rows],
            "log_odds_high": g["high"][rows],
            "sum_log_odds": g["sum"][rows],
            "byzantine_source_count": g["n_flagged"][rows],
            "probation_source_count": g["probation"][rows],
            "byzantine_nodes": [ledger.sources.key_of(int(s)) for s in np.flatnonzero(g["flagged"])],
        }

    @synchronized
    def source_reputation(self) -> dict[Hashable, dict[str, Any]]:
        """Each source's record: agents reported on, far-low/far-high outlier counts,
        the counts an exchangeable (honest) source would get on the same agents (both
        from the first pass), the tail bound (chance of counts this high for such a
        source, from the pass that flagged it, else the last pass) and the flag."""
        g = self._global_pass()
        ev: SourceEvents = g["events"]
        out = {}
        for s in range(len(self._ledger.sources)):
            out[self._ledger.sources.key_of(s)] = {
                "reports": int(ev.reports[s]),
                "low_outliers": int(ev.low[s]),
                "high_outliers": int(ev.high[s]),
                "expected_low_outliers": float(ev.expected_low[s]),
                "expected_high_outliers": float(ev.expected_high[s]),
                "tail_bound": float(g["tail"][s]),
                "flagged": bool(g["flagged"][s]),
            }
        return out

    @property
    @synchronized
    def byzantine_nodes(self) -> list[Hashable]:
        """Sources flagged as lying (recomputed if evidence changed)."""
        g = self._global_pass()
        return [self._ledger.sources.key_of(int(s)) for s in np.flatnonzero(g["flagged"])]

    # ================================================================== internals
    def reached(self, n: np.ndarray, f: np.ndarray, n_flagged: np.ndarray,
                 young: np.ndarray | None = None) -> np.ndarray:
        """Consensus reached: enough sources vote, few enough are flagged, and some
        source out of probation reports on the agent (``young``: none does)."""
        if self.aggregation == "sum":
            ok = (n >= self.min_sources) & (n_flagged == 0)
        else:
            ok = (n - 2 * f >= self.min_sources) & (n_flagged <= f)
        return ok if young is None else ok & ~young

    def _trusted_mask(self, keys: Sequence[Hashable] | None = None) -> np.ndarray:
        """Trusted sources, per source row (or per key of ``keys``)."""
        if keys is not None:
            return np.array([k in self.trusted_sources for k in keys], dtype=bool)
        trusted = np.zeros(len(self._ledger.sources), dtype=bool)
        for key in self.trusted_sources:
            row = self._ledger.sources.row_of(key)
            if row >= 0:
                trusted[row] = True
        return trusted

    def _established(self) -> np.ndarray:
        """Voting sources per source row (see ``probation_evidence``)."""
        ledger = self._ledger
        n = len(ledger.sources)
        if not self._founded or self.probation_evidence <= 1:
            return np.ones(n, dtype=bool)
        base = self._trusted_mask()
        k = min(n, self._founders.size)
        base[:k] |= self._founders[:k]
        return voting_sources(base, self._covered.counts(ledger, base, self.probation_evidence), self.probation_evidence)

    @property
    def ledger(self):
        """The :class:`~swarmguard.structures.evidence.EvidenceLedger` holding the evidence
        (for reading: an engine's evidence partition reads its keys and counts)."""
        return self._ledger

    @property
    @synchronized
    def founding_sources(self) -> list[Hashable] | None:
        """The founding sources (they always vote), or None while the founding lasts (every
        source votes until some untrusted source has ``probation_evidence`` accepted evidence
        and ``founding_quorum`` untrusted sources have been seen)."""
        if not self._founded:
            return None
        return [self._ledger.sources.key_of(int(r)) for r in np.flatnonzero(self._founders)]

    def _flags_for_single(self) -> tuple[np.ndarray, bool]:
        g = self._global
        current = g is not None and g["version"] == self._ledger.version
        if not current and self._ledger.size <= self.reputation_refresh_limit:
            g, current = self._global_pass(), True
        if g is None:
            return np.zeros(0, dtype=bool), True
        return g["flagged"], not current

    def fuse_partition(self, need_sum: bool = False, established: np.ndarray | None = None):
        """Exact totals and robust fusion of every ledger shard, and the source events.

        Returns ``(per-agent arrays, SourceEvents, pair_agents, pair_sources,
        shard_pairs)``: ``pair_agents`` holds (first agent row, local agent rows)
        per shard, ``shard_pairs`` each shard's (pair_agent, pair_source,
        pair_total, n_agents) for peeling (the pairs of voting sources).
        ``established``: the voting sources per source row (default: from this
        consensus's own evidence counts; the Ray engine passes the global ones). Shared by :meth:`_global_pass` and by
        the Ray engine's evidence partitions.
        """
        ledger = self._ledger
        n_agents, n_sources = len(ledger.agents), len(ledger.sources)
        if established is None:
            established = self._established()
        out = {name: np.zeros(n_agents, dtype=dt) for name, dt in
               (("robust", float), ("sum", float), ("low", float), ("high", float),
                ("n", np.int64), ("f", np.int64), ("count", np.int64), ("probation", np.int64),
                ("young", bool))}
        events = SourceEvents.zeros(n_sources)
        pair_agents, pair_sources, shard_pairs = [], [], []
        everyone = bool(established.all())
        for s in range(len(ledger.shards)):
            t = ledger.shard_totals(s, self.prior_log_odds, agent_sums=need_sum)
            k = t.agent_count.size
            sl = slice(t.agent_lo, t.agent_lo + k)
            agent, source, total = t.pair_agent, t.pair_source, t.pair_total
            est = None if everyone else established[source]
            if est is None or est.all():
                fu = fuse(agent, total, k, self.byzantine_threshold, self.prior_log_odds)
                shard_pairs.append((agent, source, total, k))
            else:
                # Sources on probation vote only where no voting source reports (and those
                # agents never reach consensus); they judge no one and are not judged.
                has_vote = np.bincount(agent[est], minlength=k) > 0
                vote = est | ~has_vote[agent]
                out["young"][sl] = ~has_vote & (t.agent_count > 0)
                out["probation"][sl] = np.bincount(agent[~vote], minlength=k)
                judged = est[vote]
                agent, source, total = agent[vote], source[vote], total[vote]
                fu = fuse(agent, total, k, self.byzantine_threshold, self.prior_log_odds)
                fu.pair_low_event &= judged
                fu.pair_high_event &= judged
                fu.pair_low_mu = np.where(judged, fu.pair_low_mu, 0.0)
                fu.pair_high_mu = np.where(judged, fu.pair_high_mu, 0.0)
                shard_pairs.append((agent[judged], source[judged], total[judged], k))
            out["robust"][sl], out["sum"][sl] = fu.log_odds, t.agent_total
            out["low"][sl], out["high"][sl] = fu.low, fu.high
            out["n"][sl], out["f"][sl], out["count"][sl] = fu.n_sources, fu.trimmed, t.agent_count
            events += source_events(source, fu, n_sources)
            pair_agents.append((t.agent_lo, agent))
            pair_sources.append(source)
        out["established"] = established
        return out, events, pair_agents, pair_sources, shard_pairs

    def _global_pass(self, need_sum: bool = False) -> dict[str, Any]:
        """Exact totals, fusion and reputation for every agent (cached until evidence changes).

        The plain exact sums per agent are one more pass over every contribution: they
        are computed in ``"sum"`` mode or when asked (``need_sum``), else left NaN.
        """
        ledger = self._ledger
        need_sum = need_sum or self.aggregation == "sum"
        g = self._global
        if g is not None and g["version"] == ledger.version and (g["has_sum"] or not need_sum):
            return g
        n_agents = len(ledger.agents)
        out, events, pair_agents, pair_sources, shard_pairs = self.fuse_partition(need_sum)
        trusted = self._trusted_mask()          # fused like any source, never flagged
        established = out["established"]        # sources on probation are never judged
        flagged, tail = peel_untrusted(events, shard_pairs, self.false_flag_rate, trusted, established)
        n_flagged = count_flagged_pairs(pair_agents, pair_sources, flagged, n_agents)
        out.update(flagged=flagged, tail=tail, events=events, n_flagged=n_flagged, version=ledger.version,
                   has_sum=need_sum)
        self._global = out
        return out

    # ================================================================== plumbing
    @property
    @synchronized
    def evidence_count(self) -> int:
        return self._ledger.size

    @property
    @synchronized
    def evidence_version(self) -> int:
        """A number that changes whenever the evidence held changes (a reader that saw the
        same number twice read one state in between)."""
        return self._ledger.version

    @property
    @synchronized
    def n_partitions(self) -> int:
        return self._ledger.n_partitions

    @property
    @synchronized
    def agent_ids(self) -> list[Hashable]:
        return self._ledger.agents.keys()

    @property
    @synchronized
    def partitions(self):
        """The evidence partitions (each with ``sums(...)``, its exact accumulator)."""
        return self._ledger.partitions()

    @synchronized
    def state_fingerprint(self) -> tuple:
        """Everything observable about the stored evidence (for tests and audits)."""
        ledger = self._ledger
        cols = {k: v[: ledger.size].copy() for k, v in ledger.columns.items()}
        ids = ledger.evidence_ids()
        return (ledger.size, tuple(ids.tolist() if isinstance(ids, np.ndarray) else ids), tuple(ledger.agents.keys()),
                tuple(ledger.sources.keys()), tuple(c.tobytes() for c in cols.values()),
                tuple(tuple(p.size for p in shard) for shard in ledger.shards),
                None if not self._founded else tuple(self.founding_sources))

    @synchronized
    def close(self) -> None:
        """Close the store (if any)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> StableBayesianConsensus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"StableBayesianConsensus(evidence={self.evidence_count}, agents={len(self._ledger.agents)}, "
                f"sources={len(self._ledger.sources)}, aggregation={self.aggregation!r})")
