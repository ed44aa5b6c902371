"""The "nothing new" exchange between peers: contact without a delta body.

An anti-entropy round pushes (and a pull answers) the delta a peer lacks. When the
peer's last-known vectors already cover everything this node holds, that delta has no
register and no evidence row; what it still carries is *contact*: the sender's
freshness map per population (when each region was last heard of, directly or through
a third node: the confidence factor depends on it) and the sender's version vectors
(the receiver's acknowledgement of what the sender holds). A contact carries exactly
that, as a small JSON object instead of an ``.npz`` envelope::

    {"contact": 1, "sender": "eu",
     "vectors": {"populations": {name: {region: count}}, "evidence": {region: count}},
     "freshness": {name: {region: time}}}

The receiver checks that it holds every vector the contact claims (else
:class:`~swarmguard.errors.StaleDeltaError`, HTTP 409: it lost its data, and the sender
asks for its vectors and ships a real delta), then joins it as the empty delta it stands
for (:func:`contact_delta`): freshness max-merged, acknowledgements raised, nothing
logged, registers and evidence untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import InvalidInputError, StaleDeltaError
from ...structures.replica import RegionReplica
from ...values.version_vector import VersionVector, check_region_name
from .peer_delta import NodeVectors, PeerDelta, ReplicaSet

__all__ = ["CONTACT_SCHEMA", "quiet_contact", "contact_bytes", "contact_delta", "is_contact"]

CONTACT_SCHEMA = 1
_REPLICA_FORMAT: np.ndarray | None = None     # the replica delta's "format" field, read once


def quiet_contact(delta: PeerDelta, mine: NodeVectors, peer: NodeVectors | None) -> dict[str, Any] | None:
    """The contact standing for ``delta`` when the peer (last known to hold ``peer``) lacks
    nothing of it; None when a real delta must go (rows to ship, a vector or a population
    the peer does not cover, or no answer from it yet)."""
    if peer is None or delta.carries_state or not mine.evidence <= peer.evidence:
        return None
    freshness = {}
    for name, (_, part) in delta.populations.items():
        held = peer.populations.get(name)
        if held is None or not mine.populations.get(name, VersionVector()) <= held:
            return None
        regions = [str(r) for r in np.asarray(part["freshness.regions"]).tolist()]
        freshness[name] = dict(zip(regions, np.asarray(part["freshness.times"], dtype=np.float64).tolist(),
                                   strict=True))
    mine_json = mine.to_json()
    mine_json["populations"] = {n: v for n, v in mine_json["populations"].items() if n in freshness}
    return {"contact": CONTACT_SCHEMA, "sender": delta.sender, "vectors": mine_json, "freshness": freshness}


def contact_bytes(contact: Mapping[str, Any]) -> bytes:
    return json.dumps(contact, separators=(",", ":"), allow_nan=False).encode("utf-8")


def is_contact(data: bytes) -> bool:
    """Whether a (inflated) body is a contact rather than an ``.npz`` delta, read from the body
    itself: a delta is a zip archive (``PK``), a contact a JSON object (``{``). The Content-Type
    is not asked: a proxy may relabel either, and a delta read as a contact (or the reverse)
    would fail the sync on every round."""
    return bytes(data[:64]).lstrip()[:1] == b"{"


def contact_delta(data: bytes, replicas: ReplicaSet, now: float) -> PeerDelta:
    """Read a contact and check it against ``replicas``; the empty delta it stands for.

    A freshness time later than ``now`` (this node's clock) is read as ``now``: no sender
    heard a region after the moment its contact arrives, and a forged or skewed future time
    would otherwise keep that region's staleness at zero (confidence 1) until the clock
    reached it. ``InvalidInputError`` when it is malformed, ``StaleDeltaError`` when it claims vectors
    this node does not hold (the sender then asks for them and ships a delta)."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"a peer contact is JSON: {exc}") from exc
    if not isinstance(body, dict) or body.get("contact") != CONTACT_SCHEMA:
        raise InvalidInputError(f"a peer contact is {{\"contact\": {CONTACT_SCHEMA}, \"sender\", \"vectors\", "
                                "\"freshness\"}")
    sender = body.get("sender")
    if not isinstance(sender, str):
        raise InvalidInputError("a peer contact names its sender region")
    sender = check_region_name(sender)
    vectors = NodeVectors.from_json(body.get("vectors"))
    freshness = body.get("freshness")
    if not isinstance(freshness, Mapping) or set(freshness) != set(vectors.populations):
        raise InvalidInputError("a peer contact has one freshness map per population of its vectors")
    held = replicas.replicas()
    if not vectors.evidence <= replicas.ledger.version:
        raise StaleDeltaError(f"a contact claims evidence vectors {vectors.evidence.to_mapping()} this node does "
                              f"not hold ({replicas.ledger.version.to_mapping()}); ask for its vectors")
    populations = {}
    for name, version in vectors.populations.items():
        replica = held.get(name)
        if replica is None or not version <= replica.version:
            raise StaleDeltaError(f"a contact claims {name!r} vectors {version.to_mapping()} this node does not "
                                  "hold; ask for its vectors")
        populations[name] = (replica.dim, _empty_part(replica, sender, version, freshness[name], now))
    return PeerDelta(sender, populations, {"evidence.json": np.frombuffer(b"[]", dtype=np.uint8)})


def _empty_part(replica: RegionReplica, sender: str, version: VersionVector, times: Any,
                now: float) -> dict[str, np.ndarray]:
    """A replica delta with no register row: the sender's version and freshness (validated by
    the replica's own ``merge_delta`` when the plan joins it on a scratch replica)."""
    if not isinstance(times, Mapping):
        raise InvalidInputError("a contact's freshness is {region: time}")
    names = sorted(times)
    try:
        values = np.array([float(times[n]) for n in names], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"a contact's freshness times are numbers: {exc}") from exc
    if any(math.isnan(v) for v in values.tolist()):
        raise InvalidInputError("a contact's freshness times are not NaN")
    values = np.minimum(values, float(now))      # never later than this node's now (contact_delta)
    vv = version.to_dict()
    part = {f"registers.{k}": v for k, v in replica.registers.entries(np.empty(0, np.int64)).items()}
    part.update({"format": _replica_format(), "sender": np.array(sender),
                 "version.regions": vv["regions"], "version.counts": vv["counts"],
                 "freshness.regions": np.array(names, dtype=np.str_) if names else np.empty(0, dtype="<U1"),
                 "freshness.times": values})
    return part


def _replica_format() -> np.ndarray:
    # the replica delta format this build writes (read through the public delta, not a private constant)
    global _REPLICA_FORMAT
    if _REPLICA_FORMAT is None:
        _REPLICA_FORMAT = np.asarray(RegionReplica("probe", 1).delta_since(VersionVector())["format"])
    return _REPLICA_FORMAT
