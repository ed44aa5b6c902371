"""The Ray engine's evidence: routed to the partitions by agent, all or nothing; the two-step consensus."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from ..api.consensus import consensus_at, evidence_columns, founding_ends, voting_sources
from ..errors import InvalidTypeError
from ..locking import synchronized
from ..structures.robust_fusion import SourceEvents, peel_untrusted
from ..validation import is_wire_id
from ..values.agent_index import positions_of
from .ray_log import evidence_record
from .ray_system import hash_partition, take_rows

__all__ = ["RayEvidence"]

class RayEvidence:
    """Evidence and consensus of :class:`~swarmguard.engines.ray_engine.RayEngine` (a part of its class)."""

    # ------------------------------------------------------------------ evidence
    @synchronized
    def ingest_evidence(self, evidence_ids: Any, agent_ids: Any, evidence_types: Any, log_odds: Any,
                        confidences: Any, timestamps: Any, source_nodes: Any) -> int:
        """Observer evidence in bulk, routed to the partitions by agent id; returns how many were new.

        All or nothing, as in process (see :meth:`_ingest_evidence`).
        """
        cols = (evidence_ids, agent_ids, evidence_types, log_odds, confidences, timestamps, source_nodes)
        added = self._logged("evidence", lambda: evidence_record(*cols), lambda: self._ingest_evidence(*cols))
        self._maybe_checkpoint(0)          # evidence alone can fill the replay log
        return added

    def add_evidence(self, *columns: Any) -> int:
        """The detector's own evidence of a round (no checkpoint until the round is whole)."""
        return self._ingest_evidence(*columns)

    def _ingest_evidence(self, evidence_ids: Any, agent_ids: Any, evidence_types: Any, log_odds: Any,
                         confidences: Any, timestamps: Any, source_nodes: Any) -> int:
        """Route a batch of evidence to the partitions; returns how many were new.

        All or nothing, as in process: every partition first checks its rows
        (values, and ids already stored with other content) and whether it
        holds an id that the batch routes elsewhere (the same id for another
        agent); only when every check passes does any partition add.
        """
        # The values and ids on the driver, as in process (same checks, same order);
        # routing then uses the normalised ids, so 5 and np.int64(5) are one agent.
        ev, ag, src, codes, lo, conf, ts = evidence_columns(evidence_ids, agent_ids, source_nodes, evidence_types,
                                                            log_odds, confidences, timestamps)
        if lo.size == 0:
            return 0
        if self.checkpoint_dir is not None:          # what the files can hold, refused now rather than later
            for name, col in (("evidence_ids", ev), ("agent_ids", ag), ("source_nodes", src)):
                if isinstance(col, list) and not all(map(is_wire_id, col)):
                    raise InvalidTypeError(f"{name}: with checkpoint_dir, ids must be int64 or str")
        part = hash_partition(ag, len(self.evidence_shards))
        batches = {}
        for pidx in np.unique(part).tolist():
            rows = np.flatnonzero(part == pidx)
            batches[pidx] = self.ray.put({
                "evidence_ids": take_rows(ev, rows), "agent_ids": take_rows(ag, rows), "evidence_types": codes[rows],
                "log_odds": lo[rows], "confidences": conf[rows], "timestamps": ts[rows],
                "source_nodes": take_rows(src, rows)})
        every_id = self.ray.put((ev, src, part))
        # Phase 1: every partition checks (nothing changes); phase 2: the partitions add.
        self._gather([(h, "check", (batches.get(p), every_id, p), False)
                      for p, h in enumerate(self.evidence_shards)])
        added = int(sum(self._gather([(self.evidence_shards[p], "add", (ref,), True)
                                      for p, ref in batches.items()])))
        self._evidence_total += added
        if added:
            self._last_consensus = None
            if self._founders is None and self._probation > 1:
                counted = self._source_counts()
                keys = list(counted)
                if founding_ends(np.array([counted[k] for k in keys], dtype=np.int64),
                                 np.array([k in self._trusted for k in keys], dtype=bool), self._probation,
                                 self._founding_quorum):
                    self._founders = keys
        return added

    def _source_counts(self, method: str = "source_counts", *args: Any) -> dict[Hashable, int]:
        """A per-source count summed over the partitions (accepted evidence, or with
        ``"covered_counts"`` the evidence on agents the given base sources report on)."""
        counted: dict[Hashable, int] = {}
        for reply in self._gather([(h, method, args, False) for h in self.evidence_shards]):
            for k, c in zip(reply["sources"], reply["counts"].tolist(), strict=True):
                counted[k] = counted.get(k, 0) + c
        return counted

    def consensus_rows(self, agent_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Each agent's consensus probability and whether it was reached (NaN / False without
        evidence; None before any evidence), from the cached two-step consensus."""
        if not self._evidence_total:
            return None
        full = self._consensus()
        ids = agent_ids
        keys = np.asarray(full["agent_ids"])
        if keys.size == 0 or keys.dtype.kind != ids.dtype.kind or keys.dtype.kind not in "iuU":
            pos = positions_of(keys, ids)
        else:
            # the sort of every agent with evidence is kept until the evidence changes
            if full.get("_sorted") is None:
                order = np.argsort(keys, kind="stable")
                full["_sorted"] = (keys[order], order)
            sk, order = full["_sorted"]
            at = np.minimum(np.searchsorted(sk, ids), sk.size - 1)
            pos = np.where(sk[at] == ids, order[at], -1)
        return consensus_at(full, pos)

    def _consensus(self) -> dict[str, Any]:
        """Two-step consensus over the partitions (cached until evidence changes)."""
        if self._last_consensus is not None:
            return self._last_consensus
        # Probation over all partitions: the founding and trusted sources vote, and those with
        # enough evidence on agents they report on (each partition counts its own agents).
        established = None
        if self._founders is not None and self._probation > 1:
            base_keys = [*self._founders, *self._trusted]
            counted = self._source_counts("covered_counts", base_keys)
            count_keys = list(counted)
            base_set = set(base_keys)
            voting = voting_sources(np.array([k in base_set for k in count_keys], dtype=bool),
                                    np.array([counted[k] for k in count_keys], dtype=np.int64), self._probation)
            if not voting.all():
                established = [k for k, v in zip(count_keys, voting.tolist(), strict=True) if v]
        parts = self._gather([(h, "fuse", (established,), False) for h in self.evidence_shards])
        index: dict[Hashable, int] = {}
        for ev in parts:
            for k in ev["sources"]:
                index.setdefault(k, len(index))
        keys = list(index)
        n_sources = len(index)

        def merged(replies: list[dict[str, Any]]) -> SourceEvents:
            """The partitions' events summed per source (sources matched by id)."""
            events = SourceEvents.zeros(n_sources)
            for ev in replies:
                rows = np.array([index[k] for k in ev["sources"]], dtype=np.int64)
                local = SourceEvents.zeros(n_sources)
                for name in SourceEvents._FIELDS:
                    getattr(local, name)[rows] = ev[name]
                events += local
            return events

        # The consensus's peeling (peel_untrusted), with each recount
        # done by the partitions that hold the pairs.
        def recount(flagged: np.ndarray) -> SourceEvents:
            bad_now = [k for k, f in zip(keys, flagged.tolist(), strict=True) if f]
            return merged(self._gather([(h, "recount", (bad_now,), False) for h in self.evidence_shards]))

        events = merged(parts)
        voters = None if established is None else set(established)
        voting = np.array([voters is None or k in voters for k in keys], dtype=bool)
        flagged, tail = peel_untrusted(events, recount, self._false_flag_rate,
                                       np.array([k in self._trusted for k in keys], dtype=bool), voting)
        bad = [k for k, f in zip(keys, flagged.tolist(), strict=True) if f]
        done = self._gather([(h, "finish", (bad,), False) for h in self.evidence_shards])
        from scipy.special import expit
        agent_ids = np.concatenate([np.asarray(r["agent_ids"]) for r in done]) if done else np.zeros(0)
        log_odds = np.concatenate([r["log_odds"] for r in done])
        with np.errstate(all="ignore"):
            prob = expit(log_odds)
        self._last_consensus = {
            "agent_ids": agent_ids, "probability": prob, "log_odds": log_odds,
            "consensus_reached": np.concatenate([r["consensus_reached"] for r in done]),
            "evidence_count": np.concatenate([r["evidence_count"] for r in done]),
            "source_count": np.concatenate([r["source_count"] for r in done]),
            "byzantine_nodes": bad, "_established": established, "_events": events, "_tail": tail, "_flagged": flagged, "_sources": keys,
        }
        return self._last_consensus


    @synchronized
    def evidence_fingerprint(self) -> dict[Hashable, tuple]:
        """Every stored evidence, keyed by (source, id) (ids are unique per source): (agent,
        source, type, log-odds, confidence, time)."""
        out = {}
        for h in self.evidence_shards:
            ev = self.sys.call(h, "fingerprint")
            for row in zip(ev["evidence_ids"], ev["agent_ids"], ev["source_nodes"], ev["evidence_types"],
                           np.asarray(ev["log_odds"]).tolist(), np.asarray(ev["confidences"]).tolist(),
                           np.asarray(ev["timestamps"]).tolist(), strict=True):
                values = tuple(x.item() if hasattr(x, "item") else x for x in row)
                out[(values[2], values[0])] = values[1:]
        return out
