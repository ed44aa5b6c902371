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

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    DimensionMismatchError,
    DuplicateEvidenceError,
    EvidenceStoreError,
    InvalidInputError,
    InvalidTypeError,
    SwarmGuardError,
    UnknownAgentError,
    UnknownEvidenceTypeError,
)
from ..lazy_import import module_on_first_use
from ..locking import Locked, synchronized
from ..structures.evidence import CoveredCounts, EvidenceLedger
from ..structures.evidence_store import EvidenceStore, float_bits
from ..structures.robust_fusion import (
    SourceEvents,
    count_flagged_pairs,
    fuse,
    peel_untrusted,
    source_events,
)
from ..validation import as_float_vector, check_key, is_wire_id
from ..values.id_index import IdIndex
from .evidence_types import BayesianEvidence, EvidenceType, check_timestamp
from .part_settings import FOUNDING_QUORUM, PROBATION_EVIDENCE, validate_consensus_settings

__all__ = ["StableBayesianConsensus", "BayesianEvidence", "EvidenceType", "PROBATION_EVIDENCE", "FOUNDING_QUORUM",
           "voting_sources", "founding_ends", "consensus_at"]

_special = module_on_first_use("scipy.special")   # imported on first use: see swarmguard.lazy_import

_EVIDENCE_COLUMNS = ("evidence_ids", "agent_ids", "evidence_types", "log_odds", "confidences", "timestamps",
                     "source_nodes")


def consensus_at(consensus: Mapping[str, Any], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probability and ``consensus_reached`` of the rows at ``positions`` of a
    ``consensus_many`` result (-1: no evidence for that agent, NaN / False), as the
    engines hand them to the detector's decision.

    >>> consensus_at({"probability": np.array([0.2, 0.9]), "consensus_reached": np.array([False, True])},
    ...              np.array([1, -1]))
    (array([0.9, nan]), array([ True, False]))
    """
    have = positions >= 0
    probability = np.full(positions.shape[0], np.nan)
    reached = np.zeros(positions.shape[0], dtype=bool)
    probability[have] = consensus["probability"][positions[have]]
    reached[have] = consensus["consensus_reached"][positions[have]]
    return probability, reached


def voting_sources(base: np.ndarray | None, covered_counts: np.ndarray | None, probation: int) -> np.ndarray | None:
    """Mask of the sources that vote (None: every source, while the founding lasts or with
    ``probation`` 1): the base sources (founding or trusted) and every source with evidence on
    at least ``probation`` distinct agents that base sources report on (``covered_counts``,
    from :class:`~swarmguard.structures.evidence.CoveredCounts`)."""
    if base is None or probation <= 1:
        return None
    return np.asarray(base, dtype=bool) | (np.asarray(covered_counts) >= probation)


def founding_ends(counts: np.ndarray, trusted: np.ndarray, probation: int, quorum: int = FOUNDING_QUORUM) -> bool:
    """Whether accepted evidence counts per source (after a call) end the founding: some
    untrusted source has ``probation`` of them, and at least ``quorum`` untrusted sources have
    some (one early identity, or two, cannot end it alone)."""
    counts = np.asarray(counts)
    untrusted = counts[~np.asarray(trusted, dtype=bool)]
    return (probation > 1 and bool((untrusted >= probation).any())
            and int(np.count_nonzero(untrusted)) >= quorum)


class StableBayesianConsensus(Locked):
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

    # ================================================================== ingestion
    async def add_evidence(self, evidence: BayesianEvidence) -> bool:
        """Add one piece of evidence; True if new, False if it was already there."""
        return self.add_evidence_sync(evidence)

    @synchronized
    def add_evidence_sync(self, evidence: BayesianEvidence) -> bool:
        """Synchronous twin of :meth:`add_evidence`."""
        e = BayesianEvidence.coerce(evidence)
        ledger = self._ledger
        source_row = ledger.sources.row_of(e.source_node)
        seq, id_row = ledger.seq_of(e.evidence_id, source_row) if source_row >= 0 else (-1, -2)
        if seq >= 0:
            self._check_same(seq, e.evidence_id, ledger.agents.row_of(e.agent_id), source_row,
                             e.evidence_type.code, e.log_odds, e.confidence, e.timestamp)
            return False
        if id_row == -2:   # a new source: the id may still be used by others
            id_row = ledger.evidence.row_of(e.evidence_id)
        self._check_storable([e.evidence_id], [e.agent_id], [e.source_node])
        new_source = [] if source_row >= 0 else [e.source_node]
        ends = self._founding_end(np.array([source_row if source_row >= 0 else len(ledger.sources)]), new_source)
        if self._store is not None:
            self._store.insert([(e.evidence_id, e.agent_id, e.source_node, e.evidence_type.value,
                                 e.log_odds, e.confidence, e.timestamp)],
                               founders=[*ledger.sources.keys(), *new_source] if ends else None)
        agent = ledger.agents.add(e.agent_id)
        source = ledger.sources.add(e.source_node)
        ledger.index_one(e.evidence_id, source, id_row >= 0, ledger.size)
        ledger.append(np.array([agent]), np.array([source]), np.array([e.evidence_type.code]),
                      np.array([e.log_odds]), np.array([e.confidence]), np.array([e.timestamp]))
        if ends:
            self._set_founders(None)
        return True

    @synchronized
    def add_evidence_batch(self, evidence_ids: Any, agent_ids: Any, evidence_types: Any,
                           log_odds: Any, confidences: Any, timestamps: Any, source_nodes: Any) -> int:
        """Add many pieces of evidence given as arrays; returns how many were new.

        Integer id arrays take a vectorised path; other ids (strings) work but
        loop in Python. ``evidence_types`` may be one type for all rows, an
        array of codes (``EvidenceType.code``) or a sequence of types/strings.
        All rows are validated first: on any bad row nothing is added.
        Evidence already present is skipped; an id seen with other content
        raises :class:`~swarmguard.errors.DuplicateEvidenceError`.
        """
        return self._ingest(evidence_ids, agent_ids, source_nodes, evidence_types, log_odds,
                            confidences, timestamps, persist=True)

    @synchronized
    def check_evidence_batch(self, evidence_ids: Any, agent_ids: Any, evidence_types: Any,
                             log_odds: Any, confidences: Any, timestamps: Any, source_nodes: Any) -> int:
        """Raise as :meth:`add_evidence_batch` would, changing nothing; returns how many would be new.

        Lets a caller that spreads one batch over several consensus objects
        (the Ray partitions) check every part before adding any.
        """
        return self._ingest(evidence_ids, agent_ids, source_nodes, evidence_types, log_odds,
                            confidences, timestamps, persist=True, dry_run=True)

    def _ingest(self, evidence_ids, agent_ids, source_nodes, evidence_types, log_odds, confidences,
                timestamps, persist: bool, dry_run: bool = False, founding: bool = True,
                founders: list | None = None) -> int:
        """Add a batch (one call). ``founding``: apply the founding rule to it; ``founders``
        (a merge): the founding sources after it instead, ids of sources known after it."""
        ev, ag, src, codes, lo, conf, ts = evidence_columns(evidence_ids, agent_ids, source_nodes, evidence_types,
                                                            log_odds, confidences, timestamps)
        n = lo.size
        if n == 0:
            if founders is not None and not dry_run:
                self._record_founders(founders)
            return 0
        ledger = self._ledger
        agent_rows, new_agents = _plan_rows(ledger.agents, ag)
        source_rows, new_sources = _plan_rows(ledger.sources, src)
        keep, claimed = self._drop_duplicates(ev, agent_rows, source_rows, codes, lo, conf, ts)
        if keep is not None:
            ev = ev[keep] if isinstance(ev, np.ndarray) else [ev[i] for i in np.flatnonzero(keep)]
            agent_rows, source_rows = agent_rows[keep], source_rows[keep]
            codes, lo, conf, ts = codes[keep], lo[keep], conf[keep], ts[keep]
            claimed = claimed[keep]
            # Agents/sources seen only in skipped rows are not added.
            agent_rows, new_agents = _trim_new(ledger.agents, agent_rows, new_agents)
            source_rows, new_sources = _trim_new(ledger.sources, source_rows, new_sources)
        m = len(lo)
        if m == 0:
            if founders is not None and not dry_run:
                self._record_founders(founders)
            return 0
        if persist and self._store is not None:
            ev_list = ev.tolist() if isinstance(ev, np.ndarray) else list(ev)
            self._check_storable(ev_list, _keys_for(ledger.agents, agent_rows, new_agents),
                                 _keys_for(ledger.sources, source_rows, new_sources))
        if dry_run:
            return m
        ends = founding and founders is None and self._founding_end(source_rows, new_sources)
        if persist and self._store is not None:
            if ends:
                founders_now = [*ledger.sources.keys(), *_as_list(new_sources)]
            else:
                founders_now = None if founders is None or self._same_founders(founders) else founders
            type_names = np.array([t.value for t in EvidenceType], dtype=object)[codes]
            self._store.insert_columns(ev_list, _keys_for(ledger.agents, agent_rows, new_agents),
                                       _keys_for(ledger.sources, source_rows, new_sources),
                                       type_names.tolist(), float_bits(lo), float_bits(conf),
                                       float_bits(ts), founders=founders_now)
        # Commit to memory: nothing below can fail on user input.
        _add_keys(ledger.agents, new_agents)
        _add_keys(ledger.sources, new_sources)
        ledger.index_evidence(ev, source_rows, claimed, ledger.size)
        ledger.append(agent_rows, source_rows, codes, lo, conf, ts)
        if ends:
            self._set_founders(None)
        elif founders is not None:
            self._set_founders(founders)
        return m

    def _founding_end(self, source_rows: np.ndarray, new_sources) -> bool:
        """Whether a call adding rows of ``source_rows`` (planned rows; ``new_sources`` the ids
        of the new ones) ends the founding (see :func:`founding_ends`)."""
        if self._founded or self.probation_evidence <= 1:
            return False
        ledger = self._ledger
        n = len(ledger.sources) + len(new_sources)
        counts = np.bincount(np.asarray(source_rows), minlength=n).astype(np.int64)
        have = ledger.source_counts
        counts[: min(have.size, n)] += have[:n]
        trusted = np.zeros(n, dtype=bool)
        if self.trusted_sources:
            trusted = np.concatenate([self._trusted_mask(), self._trusted_mask(list(new_sources))])
        return founding_ends(counts, trusted, self.probation_evidence, self.founding_quorum)

    def _set_founders(self, keys: list | None) -> None:
        """End the founding: ``keys`` (ids of known sources) are the founding sources, None
        for every source known now (the end of the founding by the rule)."""
        sources = self._ledger.sources
        self._founded = True
        if keys is None:
            self._founders = np.ones(len(sources), dtype=bool)
        else:
            self._founders = np.zeros(len(sources), dtype=bool)
            self._founders[[sources.row_of(k) for k in keys]] = True

    def _same_founders(self, keys: list) -> bool:
        return self._founded and set(keys) == set(self.founding_sources)

    def _record_founders(self, keys: list) -> None:
        """Make ``keys`` the founding sources (a merge that added no evidence), in the store too."""
        if self._same_founders(keys):
            return
        if self._store is not None:
            self._store.add_founders(keys)
        self._set_founders(keys)

    def _drop_duplicates(self, ev, agent_rows, source_rows, codes, lo, conf, ts):
        """(mask of rows to add or None for all, mask of rows whose id some source already
        uses), raising on conflicting duplicates. The key of an evidence is
        ``(source, evidence_id)``: the same id from another source is other evidence."""
        ledger = self._ledger
        n = len(lo)
        existing, id_rows = ledger.seqs_of(ev, source_rows)
        keep = existing < 0
        claimed = id_rows >= 0
        dup = np.flatnonzero(~keep)
        if dup.size:
            stored = ledger.rows(existing[dup])
            same = ((stored["agent_row"] == agent_rows[dup]) & (stored["source_row"] == source_rows[dup])
                    & (stored["type_code"] == codes[dup]) & _same_bits(stored["log_odds"], lo[dup])
                    & _same_bits(stored["confidence"], conf[dup]) & _same_bits(stored["timestamp"], ts[dup]))
            if not same.all():
                i = int(dup[np.flatnonzero(~same)[0]])
                raise DuplicateEvidenceError(
                    f"evidence_id {_key_at(ev, i)!r} of source {self._source_key(source_rows, i)!r} "
                    f"was already added with different content")
        # Duplicates inside the batch: the first occurrence wins if all copies agree.
        first_id = _first_occurrence(ev)
        if first_id is not None:
            first = _first_occurrence_per_source(ev, source_rows)
            if first is not None:
                later = np.flatnonzero(first != np.arange(n))
                f = first[later]
                same = ((agent_rows[f] == agent_rows[later]) & (source_rows[f] == source_rows[later])
                        & (codes[f] == codes[later]) & _same_bits(lo[f], lo[later])
                        & _same_bits(conf[f], conf[later]) & _same_bits(ts[f], ts[later]))
                if not same.all():
                    i = int(later[np.flatnonzero(~same)[0]])
                    raise DuplicateEvidenceError(
                        f"evidence_id {_key_at(ev, i)!r} of source {self._source_key(source_rows, i)!r} "
                        f"appears twice in the batch with different content")
                keep[later] = False
            # An id several sources use for the first time in this batch: the first row
            # that is kept takes the index, the others are claimed.
            kept = np.flatnonzero(keep & ~claimed)
            sub = ev[kept] if isinstance(ev, np.ndarray) else [ev[i] for i in kept.tolist()]
            first_new = _first_occurrence(sub)
            if first_new is not None:
                claimed[kept[first_new != np.arange(kept.size)]] = True
        return (None if keep.all() else keep), claimed

    @synchronized
    def holds_evidence(self, source_node: Hashable, evidence_id: Hashable) -> bool:
        """Whether ``source_node`` already sent evidence ``evidence_id`` (the key of an
        evidence): O(1), two hash lookups. Ids another source uses do not count.

        >>> c = StableBayesianConsensus()
        >>> c.add_evidence_batch(["e1"], [7], "behavioral_anomaly", [1.0], [1.0], [0.0], ["obs"])
        1
        >>> c.holds_evidence("obs", "e1"), c.holds_evidence("detector", "e1")
        (True, False)

        The keys follow :func:`~swarmguard.validation.check_key`'s rules: None raises
        :class:`~swarmguard.errors.InvalidInputError`; a bool, a float (``3.0`` is not the
        source ``3``) or an unhashable value raises
        :class:`~swarmguard.errors.InvalidTypeError`; NumPy integers are the equal ints.
        A string too long or holding a NUL can never have been stored: it is not held.
        """
        source_node = _lookup_key(source_node, "source_node")
        evidence_id = _lookup_key(evidence_id, "evidence_id")
        ledger = self._ledger
        source_row = ledger.sources.row_of(source_node)
        return source_row >= 0 and ledger.seq_of(evidence_id, source_row)[0] >= 0

    def _source_key(self, source_rows: np.ndarray, i: int):
        row = int(source_rows[i])
        return self._ledger.sources.key_of(row) if row < len(self._ledger.sources) else "(new source)"

    def holds_evidence_many(self, evidence_ids, source_nodes) -> np.ndarray:
        """Mask: which ``(source_nodes[i], evidence_ids[i])`` keys are stored (normalised ids)."""
        n = len(source_nodes)
        if self.evidence_count == 0 or n == 0:
            return np.zeros(n, dtype=bool)
        rows = self._ledger.sources.rows_of(source_nodes)
        known = np.flatnonzero(rows >= 0)
        held = np.zeros(n, dtype=bool)
        if known.size:
            ids = (evidence_ids[known] if isinstance(evidence_ids, np.ndarray)
                   else [evidence_ids[i] for i in known.tolist()])
            held[known] = self._ledger.seqs_of(ids, rows[known])[0] >= 0
        return held

    def _check_same(self, seq, evidence_id, agent_row, source_row, code, lo, conf, ts) -> None:
        stored = self._ledger.row(seq)
        given = (agent_row, source_row, code, lo, conf, ts)
        same = all(a == b for a, b in zip(stored[:3], given[:3], strict=True)) and all(
            _same_bits(np.array([a]), np.array([b]))[0] for a, b in zip(stored[3:], given[3:], strict=True))
        if not same:
            raise DuplicateEvidenceError(f"evidence_id {evidence_id!r} was already added with different content")

    def _check_storable(self, *key_lists) -> None:
        if self._store is None:
            return
        for keys in key_lists:
            for k in keys:
                if not is_wire_id(k):
                    raise InvalidTypeError(f"with a store, ids must be int64 or str, got {k!r}")

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
        agent_id = check_key(agent_id, "agent_id")
        if self._ledger.agents.row_of(agent_id) < 0:
            raise UnknownAgentError(f"no evidence for agent {agent_id!r}")
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

    # ================================================================== merging
    @synchronized
    def export_evidence(self) -> dict[str, Any]:
        """Every accepted evidence as columns, in arrival order (ids as int64 arrays
        when they are ints, else lists; evidence types as their string values).

        The union of two evidence sets is the same whatever the order, and adding
        the same evidence twice changes nothing (ids are idempotent). Adding these
        columns elsewhere with :meth:`add_evidence_batch` is one new call under the
        founding rule; :meth:`export_state` (with :meth:`merge`) also carries the
        founding sources, so sources on probation stay on probation.
        """
        ledger = self._ledger
        n = ledger.size
        cols = {k: v[:n].copy() for k, v in ledger.columns.items()}
        names = np.array([t.value for t in EvidenceType], dtype=object)
        return {
            "evidence_ids": ledger.evidence_ids(),
            "agent_ids": _export_keys(ledger.agents, cols["agent_row"]),
            "evidence_types": names[cols["type_code"]].tolist(),
            "log_odds": cols["log_odds"],
            "confidences": cols["confidence"],
            "timestamps": cols["timestamp"],
            "source_nodes": _export_keys(ledger.sources, cols["source_row"]),
        }

    @synchronized
    def export_state(self) -> dict[str, Any]:
        """The evidence (:meth:`export_evidence`) and the founding sources
        (:attr:`founding_sources`, None while the founding lasts), taken together: what
        :meth:`merge` needs to rebuild this consensus elsewhere, sources on probation
        still on probation (plain :meth:`add_evidence_batch` of the evidence would be one
        new call, whose sources the founding rule may make founding sources)."""
        return {"evidence": self.export_evidence(), "founding_sources": self.founding_sources}

    def merge(self, other: StableBayesianConsensus | Mapping[str, Any]) -> int:
        """Add every evidence of ``other`` (a consensus, or its :meth:`export_state`), the
        union, keeping each side's founding sources; returns how many evidence were new.

        Founding sources after the merge: those of either side whose founding ended (a
        source that founds on one side founds here; one on probation on both sides stays on
        probation and earns its vote by the same rule on the merged evidence; a side whose
        founding lasts brings its sources as newcomers). If neither side's founding ended,
        the merge is one call under the founding rule. The result does not depend on which
        side merges into which, and merging the same state twice changes nothing.
        """
        if isinstance(other, StableBayesianConsensus):
            state = other.export_state()            # under other's lock, never both at once
        elif isinstance(other, Mapping) and set(other) == {"evidence", "founding_sources"}:
            state = other
        else:
            raise InvalidTypeError("can only merge a StableBayesianConsensus or its export_state(), got "
                                   f"{type(other).__name__}")
        return self._merge_state(state["evidence"], state["founding_sources"])

    @synchronized
    def _merge_state(self, evidence: Mapping[str, Any], theirs: Any) -> int:
        if not isinstance(evidence, Mapping) or set(evidence) != set(_EVIDENCE_COLUMNS):
            raise InvalidInputError(f"export_state()['evidence'] must be a mapping of the columns "
                                    f"{list(_EVIDENCE_COLUMNS)}, as export_evidence() returns")
        if theirs is not None:
            if isinstance(theirs, (str, bytes)) or not isinstance(theirs, (Sequence, np.ndarray)):
                raise InvalidTypeError(f"founding_sources must be a sequence of source ids or None, got "
                                       f"{type(theirs).__name__}")
            theirs = list(dict.fromkeys(check_key(k, "founding_sources") for k in theirs))
            if not theirs:
                raise InvalidInputError("founding_sources is empty: None says the founding lasts")
        if theirs is None and not self._founded:
            return self._ingest(**evidence, persist=True)       # one call under the founding rule
        ours = self.founding_sources or []
        union = list(dict.fromkeys([*ours, *(theirs or [])]))
        if theirs:
            arriving = evidence.get("source_nodes", ())
            arriving = set(arriving.tolist() if isinstance(arriving, np.ndarray) else arriving)
            missing = next((k for k in theirs if k not in arriving and self._ledger.sources.row_of(k) < 0), None)
            if missing is not None:
                raise InvalidInputError(f"founding source {missing!r} sent none of the evidence")
        return self._ingest(**evidence, persist=True, founding=False, founders=union)

    def __iadd__(self, other: StableBayesianConsensus) -> StableBayesianConsensus:
        if not isinstance(other, StableBayesianConsensus):
            return NotImplemented
        self.merge(other)
        return self

    # ================================================================== plumbing
    @property
    @synchronized
    def evidence_count(self) -> int:
        return self._ledger.size

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


# ====================================================================== helpers
def evidence_columns(evidence_ids: Any, agent_ids: Any, source_nodes: Any, evidence_types: Any, log_odds: Any,
                     confidences: Any, timestamps: Any) -> tuple:
    """A batch of evidence, checked and normalised (no state is read): ``(evidence_ids,
    agent_ids, source_nodes, type_codes, log_odds, confidences, timestamps)``.

    Raises the typed error of the first problem, in a fixed order (values, then
    ids, then lengths), so that every engine refuses the same batch the same way.
    """
    lo = as_float_vector(log_odds, "log_odds", allow_empty=True)
    n = lo.size
    conf = as_float_vector(confidences, "confidences", allow_empty=True)
    if conf.size and (conf.min() < 0.0 or conf.max() > 1.0):
        bad = int(np.flatnonzero((conf < 0.0) | (conf > 1.0))[0])
        raise InvalidInputError(f"confidences must be in [0, 1], got {conf[bad]} at row {bad}")
    ts = _as_timestamps(timestamps, n)
    codes = _as_type_codes(evidence_types, n)
    ev = _as_keys(evidence_ids, "evidence_ids")
    ag = _as_keys(agent_ids, "agent_ids")
    src = _as_keys(source_nodes, "source_nodes")
    for name, arr in (("confidences", conf), ("timestamps", ts), ("evidence_types", codes),
                      ("evidence_ids", ev), ("agent_ids", ag), ("source_nodes", src)):
        if len(arr) != n:
            raise DimensionMismatchError(f"{name} has {len(arr)} rows, log_odds has {n}")
    return ev, ag, src, codes, lo, conf, ts


def _lookup_key(value: Any, name: str) -> Hashable:
    """An id to look up, checked by :func:`check_key`'s type rules (typed errors for None,
    bools, floats, unhashable values; NumPy ints as ints). Strings skip its text limits:
    one beyond them was never stored, so a lookup simply does not find it."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple):
        return tuple(_lookup_key(part, name) for part in value)
    return check_key(value, name)


def _as_list(keys) -> list:
    return keys.tolist() if isinstance(keys, np.ndarray) else list(keys)


def _export_keys(index: IdIndex, rows: np.ndarray):
    keys = index.keys_of(rows)
    return keys if keys.dtype != object else keys.tolist()


def _probabilities(log_odds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p, log p, log(1 - p) from log-odds, without overflow or warnings (|x| up to 1e308)."""
    with np.errstate(all="ignore"):
        special = _special()
        return special.expit(log_odds), special.log_expit(log_odds), special.log_expit(-log_odds)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.int64) == np.asarray(b, dtype=np.float64).view(np.int64)


def _key_at(keys, i: int):
    return keys[i].item() if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu" else keys[i]


def _as_keys(keys: Any, name: str):
    """Integer ids as an int64 array (fast path); others as a validated list."""
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__len__"):
        raise InvalidTypeError(f"{name} must be an array or sequence of ids, got {type(keys).__name__}")
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise DimensionMismatchError(f"{name} must be 1-D, got shape {keys.shape}")
        if keys.dtype.kind in "iu":
            if keys.dtype == np.uint64 and keys.size and keys.max() >= (1 << 63):
                raise InvalidInputError(f"{name} must fit in int64")
            return keys.astype(np.int64, copy=False)
        if keys.dtype.kind in "fcb":
            raise InvalidTypeError(f"{name} must be integers or strings, got dtype {keys.dtype}")
        items = keys.tolist()
    else:
        items = list(keys)
    checked = [check_key(k, name) for k in items]
    if checked and all(type(k) is int for k in checked) and all(-(1 << 63) <= k < (1 << 63) for k in checked):
        return np.array(checked, dtype=np.int64)
    return checked


def _plan_rows(index: IdIndex, keys) -> tuple[np.ndarray, Any]:
    """Rows of ``keys`` with new ids given the rows they *will* get; returns (rows, new ids)."""
    start = len(index)
    if start == 0 and isinstance(keys, np.ndarray) and keys.size:
        rows, missing, wanted = None, slice(None), keys
    else:
        rows = index.rows_of(keys)
        missing = rows < 0
        if not missing.any():
            return rows, []
        wanted = keys[missing] if isinstance(keys, np.ndarray) else None
    if isinstance(keys, np.ndarray):
        lo, hi = int(wanted.min()), int(wanted.max())
        if hi - lo <= 4 * wanted.size + 1024:
            # Presence table: sorted distinct ids and their ranks without a sort. Ids
            # that are small non-negative ints index the table as they are (no offset pass).
            base = 0 if 0 <= lo and hi <= 4 * wanted.size + 1024 else lo
            offset = wanted if base == 0 else wanted - base
            present = np.zeros(hi - base + 1, dtype=bool)
            present[offset] = True
            narrow = start + hi - base + 1 < (1 << 31)
            rank = np.cumsum(present, dtype=np.int32 if narrow else np.int64)
            rank += start - 1
            new = np.flatnonzero(present) + base
            if isinstance(missing, slice):
                return rank[offset], new
            rows[missing] = rank[offset]
            return rows, new
        new, inverse = np.unique(wanted, return_inverse=True)
        if isinstance(missing, slice):
            return start + inverse.ravel(), new
        rows[missing] = start + inverse.ravel()
        return rows, new
    order: dict = {}
    for i in np.flatnonzero(rows < 0).tolist():
        rows[i] = start + order.setdefault(keys[i], len(order))
    return rows, list(order)


def _trim_new(index: IdIndex, rows: np.ndarray, new) -> tuple[np.ndarray, Any]:
    """Drop planned new ids no longer used, renumbering the planned rows."""
    if len(new) == 0:
        return rows, new
    start = len(index)
    used = np.zeros(len(new), dtype=bool)
    planned = rows >= start
    used[rows[planned] - start] = True
    if used.all():
        return rows, new
    renumber = np.cumsum(used) - 1
    rows = rows.copy()
    rows[planned] = start + renumber[rows[planned] - start]
    new = new[used] if isinstance(new, np.ndarray) else [k for k, u in zip(new, used, strict=True) if u]
    return rows, new


def _keys_for(index: IdIndex, rows: np.ndarray, new) -> list:
    """Ids of planned rows (existing or new), as Python objects."""
    start = len(index)
    new_list = new.tolist() if isinstance(new, np.ndarray) else list(new)
    out = []
    for r in rows.tolist():
        out.append(index.key_of(r) if r < start else new_list[r - start])
    return out


def _add_keys(index: IdIndex, keys) -> None:
    if len(keys):
        index.add_new(keys)


def _first_occurrence(keys) -> np.ndarray | None:
    """Index of each id's first occurrence, or None when all ids are distinct."""
    if isinstance(keys, np.ndarray):
        if keys.size < 2 or (keys[1:] > keys[:-1]).all():  # strictly increasing: distinct, no sort
            return None
        s = np.sort(keys)
        if s.size < 2 or not (s[1:] == s[:-1]).any():
            return None
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return first[inverse.ravel()]
    seen: dict = {}
    first = np.array([seen.setdefault(k, i) for i, k in enumerate(keys)], dtype=np.int64)
    return None if len(seen) == len(keys) else first


def _first_occurrence_per_source(keys, source_rows: np.ndarray) -> np.ndarray | None:
    """Index of each (source row, id)'s first occurrence, or None when all are distinct."""
    n = len(source_rows)
    if isinstance(keys, np.ndarray):
        order = np.lexsort((source_rows, keys))     # stable: a group's first is its earliest row
        k, s = keys[order], source_rows[order]
        starts = np.r_[True, (k[1:] != k[:-1]) | (s[1:] != s[:-1])]
        if starts.all():
            return None
        first = np.empty(n, dtype=np.int64)
        first[order] = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
        return first
    seen: dict = {}
    first = np.array([seen.setdefault((int(r), k), i) for i, (r, k) in enumerate(
        zip(source_rows.tolist(), keys, strict=True))], dtype=np.int64)
    return None if len(seen) == n else first


def _as_timestamps(timestamps: Any, n: int) -> np.ndarray:
    if isinstance(timestamps, np.ndarray) and timestamps.dtype.kind in "iuf":
        return as_float_vector(timestamps, "timestamps", allow_empty=True)
    if isinstance(timestamps, (str, bytes)) or not hasattr(timestamps, "__len__"):
        raise InvalidTypeError("timestamps must be an array or sequence")
    return np.array([check_timestamp(t) for t in timestamps], dtype=np.float64)


def _as_type_codes(types: Any, n: int) -> np.ndarray:
    """Evidence types as int16 codes: one type for all rows, codes, or a sequence of types."""
    if isinstance(types, (EvidenceType, str)):
        return np.full(n, EvidenceType.parse(types).code, dtype=np.int16)
    if isinstance(types, np.ndarray) and types.dtype.kind in "iu":
        if types.ndim != 1:
            raise DimensionMismatchError(f"evidence_types must be 1-D, got shape {types.shape}")
        if types.size and (types.min() < 0 or types.max() >= len(EvidenceType)):
            i = int(np.flatnonzero((types < 0) | (types >= len(EvidenceType)))[0])
            raise UnknownEvidenceTypeError(f"evidence_types: no evidence type has code {int(types[i])} (row {i}); "
                                           f"codes are 0 to {len(EvidenceType) - 1}")
        return types.astype(np.int16)
    if not isinstance(types, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"evidence_types must be a type, a sequence or a code array, got "
                               f"{type(types).__name__}")
    items = types.tolist() if isinstance(types, np.ndarray) else list(types)
    cache: dict = {}
    out = np.empty(len(items), dtype=np.int16)
    for i, t in enumerate(items):
        key = t if isinstance(t, (str, int)) and not isinstance(t, bool) else None
        code = cache.get(key) if key is not None else None
        if code is None:
            code = EvidenceType.parse(t).code
            if key is not None:
                cache[key] = code
        out[i] = code
    return out
