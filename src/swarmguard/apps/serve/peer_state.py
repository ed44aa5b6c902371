"""``GET /v1/peer/state`` (admin): this node's replicated state, exactly, for audits and fault tests.

``/v1/cluster`` says *how far* a node is (version vectors, counts, means); this
route says *what* it holds, so that a harness can check, bit for bit, that
nodes converged and that nothing acknowledged was lost:

- per population: every register ``[agent_id, timestamp, writer_region, seq,
  features, anomaly_score]`` (floats as :meth:`float.hex`, exact), sorted by
  agent id; the view's ``count``, ``mean`` and ``covariance`` of the features
  (correctly rounded from the replica's exact sums, ``ddof = 1``), its
  ``region_counts`` and ``ages`` (seconds since each other region was last
  heard from, at ``now``) and the ``confidence_factor`` they give;
- the evidence ledger's rows ``[origin, seq, *row]`` and, per agent the
  consensus knows (of the first population, ``behaviors``), its ``log_odds``
  (hex) and ``evidence_count``;
- ``full_state_bytes``: the size of a delta from nothing (what a full state
  transfer to a new node ships), to weigh the deltas against;
- ``digest``: the SHA-256 of the canonical JSON of the registers and the
  evidence rows (two nodes with the same digest hold the same state).

Admin only: it lists every agent (a ``read`` token sees scores, not the whole
state). Its cost is one pass over the registers under the node's lock.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from ...api.cap import compute_confidence_factor
from ...values.version_vector import VersionVector
from .auth import requires
from .peers import replication_of

__all__ = ["router", "node_state"]

router = APIRouter(tags=["peers"])


def _hex(values: Any) -> list[str]:
    return [float(v).hex() for v in np.asarray(values, dtype=np.float64).ravel().tolist()]


def _registers(replica) -> list[list[Any]]:
    e = replica.registers.entries()
    ids = [*e["int_ids"].tolist(), *e["str_ids"].tolist()]
    regions = e["regions"].tolist()
    rows = [[a, float(t).hex(), regions[int(w)], int(s), _hex(f), float(score).hex()]
            for a, t, w, s, f, score in zip(ids, e["timestamp"].tolist(), e["writer"].tolist(), e["seq"].tolist(),
                                           e["features"], e["anomaly_score"].tolist(), strict=True)]
    rows.sort(key=lambda r: (isinstance(r[0], str), r[0]))
    return rows


def node_state(node) -> dict[str, Any]:
    """The route's answer (module docstring); call it under no lock (it takes the node's)."""
    replication = replication_of(node)
    settings = node.settings
    with node.lock:
        now = settings.clock()
        populations: dict[str, Any] = {}
        for name, replica in replication.replicas.replicas().items():
            resolver = node.populations[name].detector.cap_resolver
            exact = replica.estimate_exact()
            m = exact.to_moments()
            d = replica.dim
            counts, ages = replica.region_counts(), replica.ages(now)
            populations[name] = {
                "dim": d, "count": int(m.count), "registers": _registers(replica),
                "mean": _hex(m.mean[:d]) if m.count else None,
                "covariance": [_hex(row) for row in m.covariance(ddof=1)[:d, :d]] if m.count > 1 else None,
                "region_counts": counts, "ages": ages,
                "max_staleness_seconds": resolver.max_staleness_seconds,
                "confidence_decay_rate": resolver.confidence_decay_rate,
                "confidence_factor": compute_confidence_factor(counts, ages, settings.region,
                                                               resolver.max_staleness_seconds,
                                                               resolver.confidence_decay_rate),
            }
        ledger = replication.replicas.ledger
        blob = ledger.delta_since(VersionVector())["evidence.json"]     # every row held, by origin and seq
        evidence_rows = json.loads(blob.tobytes().decode("utf-8")) if blob.size else []
        consensus: dict[str, Any] = {}
        pop = next(iter(node.populations.values()), None)
        if pop is not None:
            # every agent the consensus knows: the ledger's, and any the detector's own rounds added
            known = {str(r[3]) for r in evidence_rows} | {str(a) for a in pop.detector.consensus.agent_ids}
            for agent in sorted(known):
                c = pop.consensus_of(agent)
                consensus[agent] = {"log_odds": None if c["log_odds"] is None else float(c["log_odds"]).hex(),
                                    "evidence_count": int(c["evidence_count"])}
        vectors = replication.vectors()
        full_state_bytes = len(replication.replicas.delta_since(None).to_bytes())     # now=None: a read changes nothing
    canonical = json.dumps({"registers": {n: p["registers"] for n, p in sorted(populations.items())},
                            "evidence": evidence_rows}, sort_keys=True, separators=(",", ":"))
    return {"region": settings.region, "now": now, "version_vector": vectors.combined(),
            "populations": populations, "evidence": {"rows": evidence_rows, "consensus": consensus},
            "full_state_bytes": full_state_bytes, "digest": hashlib.sha256(canonical.encode("utf-8")).hexdigest()}


@router.get("/v1/peer/state", summary="This node's replicated state, exactly (admin; audits and fault tests)",
            dependencies=[Depends(requires("admin"))])
def get_state(request: Request) -> dict:
    return node_state(request.app.state.node)
