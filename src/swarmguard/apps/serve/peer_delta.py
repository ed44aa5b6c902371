"""The node-to-node delta: what a peer lacks of this node's replicas and evidence, as bytes.

Wire format (schema :data:`SCHEMA_VERSION`): one ``.npz`` archive (no pickle,
:mod:`swarmguard.values.npz`) holding ``schema`` (int), ``sender`` (the sending
node's region), ``populations`` (their names) and ``dims`` (their feature
dimensions), then for population ``i`` the fields of
:meth:`~swarmguard.structures.replica.RegionReplica.delta_since` under the prefix
``p{i}.``, the evidence ledger's delta (:mod:`.evidence_ledger`), and
``since.json`` (optional, uint8 UTF-8 JSON of :meth:`NodeVectors.to_json`): the
receiver's vectors the delta was computed from. Joining a delta raises a
replica's version vector to the sender's, so a receiver that does not hold
``since`` (it lost its data directory, another node answers at its address)
refuses the delta (:class:`StaleDeltaError`, HTTP 409) and the sender asks for
its vectors again.

:class:`ReplicaSet` is one node's replicated state: a
:class:`~swarmguard.structures.replica.RegionReplica` per population (the CAP
resolver's replica of the node's region) and its :class:`~.evidence_ledger.EvidenceLedger`.
Joining a delta is all-or-nothing — :meth:`ReplicaSet.plan` checks every part
(each population's delta is first merged into an empty scratch replica, the
ledger's rows against the ledger) before :meth:`ReplicaSet.commit` changes
anything — and idempotent: the register join is a CRDT join and the ledger skips
rows it holds, so duplicated, reordered or replayed deliveries are harmless.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import DimensionMismatchError, InvalidInputError, StaleDeltaError
from ...structures.replica import RegionReplica
from ...values.npz import dict_from_bytes, dict_to_bytes, int_list, int_scalar, str_list, str_scalar
from ...values.version_vector import VersionVector, check_region_name
from .evidence_ledger import EvidenceLedger, LedgerPlan

__all__ = ["SCHEMA_VERSION", "NodeVectors", "PeerDelta", "DeltaPlan", "ReplicaSet", "decode_delta"]

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class NodeVectors:
    """What a node holds: a version vector per population's replica and one for its evidence."""

    populations: dict[str, VersionVector] = field(default_factory=dict)
    evidence: VersionVector = field(default_factory=VersionVector)

    def combined(self) -> dict[str, int]:
        """One counter per region: the sum of its counters over the parts (``/v1/cluster``)."""
        out: dict[str, int] = {}
        for vv in [*self.populations.values(), self.evidence]:
            for region, count in vv.to_mapping().items():
                out[region] = out.get(region, 0) + count
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {"populations": {n: v.to_mapping() for n, v in sorted(self.populations.items())},
                "evidence": self.evidence.to_mapping()}

    @classmethod
    def from_json(cls, value: Any) -> NodeVectors:
        """Inverse of :meth:`to_json`; anything else is an ``InvalidInputError``."""
        if not isinstance(value, Mapping) or not isinstance(value.get("populations"), Mapping):
            raise InvalidInputError("node vectors are {\"populations\": {...}, \"evidence\": {...}}")
        try:
            pops = {str(n): VersionVector(dict(v)) for n, v in value["populations"].items()}
            return cls(pops, VersionVector(dict(value.get("evidence") or {})))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"node vectors are malformed: {exc}") from exc


@dataclass(frozen=True)
class PeerDelta:
    """A decoded delta: the sender's region, per population ``(dim, replica delta)``, the ledger's part."""

    sender: str
    populations: dict[str, tuple[int, dict[str, np.ndarray]]]
    evidence: dict[str, np.ndarray]
    since: NodeVectors | None = None        # the receiver's vectors it was made from (None: not said)

    def to_bytes(self) -> bytes:
        names = sorted(self.populations)
        out: dict[str, np.ndarray] = {
            "schema": np.array(SCHEMA_VERSION, dtype=np.int64), "sender": np.array(self.sender),
            "populations": np.array(names, dtype=np.str_) if names else np.empty(0, dtype="<U1"),
            "dims": np.array([self.populations[n][0] for n in names], dtype=np.int64),
        }
        for i, name in enumerate(names):
            for key, value in self.populations[name][1].items():
                out[f"p{i}.{key}"] = value
        out.update(self.evidence)
        if self.since is not None:
            blob = json.dumps(self.since.to_json(), separators=(",", ":"), sort_keys=True).encode("utf-8")
            out["since.json"] = np.frombuffer(blob, dtype=np.uint8)
        return dict_to_bytes(out)

    @property
    def register_rows(self) -> int:
        return sum(int(np.asarray(d.get("registers.seq", ())).size) for _, d in self.populations.values())

    @property
    def carries_state(self) -> bool:
        """Whether joining it can change registers or evidence (else only freshness and vectors)."""
        return self.register_rows > 0 or int(np.asarray(self.evidence.get("evidence.json", ())).size) > 2


def decode_delta(data: bytes) -> PeerDelta:
    """Read a delta's bytes (module docstring), checking the envelope; ``InvalidInputError`` otherwise."""
    state = dict_from_bytes(data, "peer delta")
    try:
        schema = int_scalar(state["schema"], "schema", 0, 1 << 31)
        if schema != SCHEMA_VERSION:
            raise InvalidInputError(f"unsupported peer delta schema {schema} (this node reads {SCHEMA_VERSION})")
        sender = check_region_name(str_scalar(state["sender"], "sender"))
        names = str_list(state["populations"], "populations")
        dims = int_list(state["dims"], "dims", len(names), 1, 1 << 31)
    except KeyError as exc:
        raise InvalidInputError(f"peer delta lacks field {exc}") from exc
    if len(set(names)) != len(names):
        raise InvalidInputError("peer delta repeats a population")
    populations: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
    for i, (name, dim) in enumerate(zip(names, dims, strict=True)):
        prefix = f"p{i}."
        populations[name] = (dim, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    evidence = {k: v for k, v in state.items() if k.startswith("evidence.")}
    since = None
    if "since.json" in state:
        raw = np.asarray(state["since.json"])
        if raw.ndim != 1 or raw.dtype != np.uint8:
            raise InvalidInputError("since.json must be a 1-D uint8 array")
        try:
            since = NodeVectors.from_json(json.loads(raw.tobytes().decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInputError(f"since.json is not JSON: {exc}") from exc
    return PeerDelta(sender, populations, evidence, since)


@dataclass(frozen=True)
class DeltaPlan:
    """A checked delta, ready to commit: the delta and the ledger rows it adds."""

    delta: PeerDelta
    ledger: LedgerPlan

    def new_evidence(self) -> list[list[Any]]:
        return self.ledger.rows()


class ReplicaSet:
    """One node's replicated state (module docstring).

    ``replica_of(name, dim)``: the live replica of population ``name`` (None when it
    has none yet and ``dim`` is None; with ``dim``, it is made); ``names()``: the
    populations that may have a replica.
    """

    def __init__(self, region: str, replica_of: Callable[[str, int | None], RegionReplica | None],
                 names: Callable[[], list[str]], ledger: EvidenceLedger | None = None):
        self.region = check_region_name(region)
        self._replica_of, self._names = replica_of, names
        self.ledger = ledger if ledger is not None else EvidenceLedger(region)

    def replicas(self) -> dict[str, RegionReplica]:
        out = {}
        for name in self._names():
            replica = self._replica_of(name, None)
            if replica is not None:
                out[name] = replica
        return out

    def vectors(self) -> NodeVectors:
        return NodeVectors({n: r.version.copy() for n, r in self.replicas().items()}, self.ledger.version)

    def delta_since(self, peer: NodeVectors | None, now: float | None = None) -> PeerDelta:
        """What a peer holding ``peer`` lacks (None: never heard from it, everything)."""
        peer = peer or NodeVectors()
        pops = {n: (r.dim, r.delta_since(peer.populations.get(n, VersionVector()), now))
                for n, r in self.replicas().items()}
        return PeerDelta(self.region, pops, self.ledger.delta_since(peer.evidence), since=peer)

    def plan(self, delta: PeerDelta, require_base: bool = False, nonnegative_scores: bool = False) -> DeltaPlan:
        """Check every part of ``delta`` against this state, changing nothing.

        ``require_base``: refuse (:class:`~swarmguard.errors.StaleDeltaError`) a delta
        whose ``since`` this state does not hold. A node sets it: its peers make deltas
        from its answers, which it always holds unless it lost its data. Without it, any
        set of deltas joins to the same state in any order once all have arrived.
        ``nonnegative_scores``: refuse (``InvalidInputError``) a register whose anomaly
        score is below 0. A node sets it too: its registers' scores are squared distances
        (:mod:`.replica_read`), whose chi-square ``ln p`` is NaN below 0.
        """
        if delta.sender == self.region:
            raise InvalidInputError(f"a delta from region {delta.sender!r}, this node's own: two nodes "
                                    "may not serve one region")
        if require_base and delta.since is not None:
            self._check_base(delta.since)
        for name, (dim, part) in delta.populations.items():
            replica = self._replica_of(name, None)
            if replica is not None and replica.dim != dim:
                raise DimensionMismatchError(f"population {name!r}: the delta has dimension {dim}, "
                                             f"this node {replica.dim}")
            scratch = RegionReplica(self.region, dim)
            # every field validated, on a throw-away replica
            scratch.merge_delta(part, nonnegative_scores=nonnegative_scores)
        return DeltaPlan(delta, self.ledger.plan(delta.evidence))

    def _check_base(self, since: NodeVectors) -> None:
        """A delta made from vectors this node does not hold (it lost its data directory, or
        another node answers at its address) would claim what it lacks: refused."""
        mine = self.vectors()
        for name, vv in since.populations.items():
            if not vv <= mine.populations.get(name, VersionVector()):
                raise StaleDeltaError(f"the delta was made since {name!r} vectors {vv.to_mapping()} this node "
                                      f"does not hold ({mine.populations.get(name, VersionVector()).to_mapping()}); "
                                      "ask for its vectors and send again")
        if not since.evidence <= mine.evidence:
            raise StaleDeltaError(f"the delta was made since evidence vectors {since.evidence.to_mapping()} this "
                                  f"node does not hold ({mine.evidence.to_mapping()}); ask for its vectors and send again")

    def commit(self, plan: DeltaPlan) -> list[list[Any]]:
        """Join a planned delta; returns the evidence rows that are new here."""
        for name, (dim, part) in plan.delta.populations.items():
            self._replica_of(name, dim).merge_delta(part)
        self.ledger.commit(plan.ledger)
        return plan.new_evidence()

    def clamp_negative_scores(self, names: Iterable[str] | None = None) -> int:
        """Hold every register score below 0 as 0 in the replicas of ``names`` (None: all);
        how many were. A node calls it on what it loads unchecked (its log's peer deltas, its
        snapshot), where ``nonnegative_scores`` would have refused them live: a d² below 0 is
        rounding (:func:`~swarmguard.api.engine.register_scores`), and one held would ship in
        every delta to peers that refuse it."""
        replicas = self.replicas()
        return sum(replicas[n].clamp_negative_scores() for n in (replicas if names is None else names)
                   if n in replicas)

    def apply(self, data: bytes | PeerDelta) -> list[list[Any]]:
        """Decode, plan and commit (all-or-nothing); the new evidence rows."""
        delta = decode_delta(data) if isinstance(data, (bytes, bytearray)) else data
        return self.commit(self.plan(delta))


class LocalReplicas:
    """Replicas held in a dict (tests, tools): ``replica_of`` / ``names`` for :class:`ReplicaSet`."""

    def __init__(self, region: str):
        self.region = region
        self.by_name: dict[str, RegionReplica] = {}

    def replica_of(self, name: str, dim: int | None) -> RegionReplica | None:
        replica = self.by_name.get(name)
        if replica is None and dim is not None:
            replica = self.by_name[name] = RegionReplica(self.region, dim)
        return replica

    def names(self) -> list[str]:
        return sorted(self.by_name)

    def replica_set(self) -> ReplicaSet:
        return ReplicaSet(self.region, self.replica_of, self.names)
