"""The consensus's ingestion: evidence in (one, or a batch), checked whole, then kept.

:class:`EvidenceIngestion` is a part of
:class:`~swarmguard.api.consensus.StableBayesianConsensus` (its methods run on the
consensus's state and under its lock); see that class for the rules."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from ..errors import (
    DuplicateEvidenceError,
    InvalidTypeError,
)
from ..locking import synchronized
from ..structures.evidence_store import float_bits
from ..validation import is_wire_id
from .consensus_rules import founding_ends
from .evidence_batch import (
    _add_keys,
    _as_list,
    _first_occurrence,
    _first_occurrence_per_source,
    _key_at,
    _keys_for,
    _lookup_key,
    _plan_rows,
    _same_bits,
    _trim_new,
    evidence_columns,
)
from .evidence_types import BayesianEvidence, EvidenceType

__all__ = ["EvidenceIngestion"]


class EvidenceIngestion:
    """Ingestion of :class:`~swarmguard.api.consensus.StableBayesianConsensus` (see there)."""

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

        >>> from swarmguard.api.consensus import StableBayesianConsensus
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
