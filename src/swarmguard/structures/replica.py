"""A region's replica: its LWW registers, version vector, freshness and derived moments.

The replicated state is the :class:`LWWRegisterMap` (a CRDT) plus two
max-merged maps: the version vector (which writes this replica covers) and the
freshness map (for each region, the latest time at which this replica's view of
that region was known to be current). The per-region moments are *derived*:
kept in step with every register change, never merged directly, because ``+``
on moments is not idempotent (re-merging a region after a heal would count its
agents twice).

A replica accepts its own region's writes at once (no coordination), and takes
other regions' state only through :meth:`merge_delta`. Delta sync: the receiver
tells the sender its version vector (or the sender uses the last one the peer
acknowledged); the sender ships only the registers whose ``(writer, seq)`` dot
that vector does not cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, EmptyInputError, InvalidInputError
from ..validation import (
    as_feature_matrix,
    as_finite_vector,
    check_finite_float,
    check_positive_int,
)
from ..values.agent_index import as_agent_ids
from ..values.lww_register_map import LWWRegisterMap, RegisterChange
from ..values.moments import Moments
from ..values.npz import dict_from_bytes, dict_to_bytes
from ..values.version_vector import VersionVector, check_region_name

__all__ = ["RegionReplica", "WriteOutcome"]

_FORMAT_VERSION = 1
_REG = "registers."
# Removing more than this share of a region's agents by Chan subtraction would cancel
# most digits; recompute that region's moments from its registers instead.
_REBUILD_SHARE = 0.25


@dataclass(frozen=True)
class WriteOutcome:
    """Per input row: ``applied`` (became the agent's value), ``duplicate`` (update id seen
    before); ``changed_rows``: the register rows that changed."""

    applied: np.ndarray
    duplicate: np.ndarray
    changed_rows: np.ndarray


def _str_array(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=np.str_) if values else np.empty(0, dtype="<U1")


def _freshness_to_arrays(freshness: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    names = sorted(freshness)
    return _str_array(names), np.array([freshness[n] for n in names], dtype=np.float64)


def _freshness_from_arrays(names: Any, times: Any) -> dict[str, float]:
    names, times = np.asarray(names), np.asarray(times)
    if names.ndim != 1 or times.shape != names.shape:
        raise InvalidInputError("freshness arrays have inconsistent shapes")
    if names.size and (names.dtype.kind != "U" or times.dtype.kind not in "fiu"):
        raise InvalidInputError("freshness must be region names and float times")
    times = times.astype(np.float64)
    if np.isnan(times).any() or np.isposinf(times).any():
        raise InvalidInputError("freshness times must not be NaN or +inf")
    return {check_region_name(n): float(t) for n, t in zip(names.tolist(), times.tolist(), strict=True)}


def _id_keys(update_ids: Any, n: int) -> list:
    ids = as_agent_ids(update_ids, n)  # same rules as agent ids: ints or strings
    return ids.to_list()


class RegionReplica:
    """The replica owned by one region.

    Parameters
    ----------
    region : str
        The region that owns this replica (its writes are accepted here at once).
    dim : int
        Number of features per agent.
    known_regions : iterable of str
        Other regions this replica knows exist; its view of each is current as of
        ``start_time`` (when nothing had been written anywhere).
    start_time : float
        Clock reading at creation.

    Examples
    --------
    >>> import numpy as np
    >>> eu, us = RegionReplica("eu", 1), RegionReplica("us", 1)
    >>> _ = eu.update_many([1, 2], [0.0, 0.0], [[1.0], [3.0]], [0.0, 0.0], now=0.0)
    >>> _ = us.update_many([3], [0.0], [[5.0]], [0.0], now=0.0)
    >>> ack = us.merge_delta(eu.delta_since(us.version, now=1.0))
    >>> eu.acknowledge("us", ack)
    >>> us.estimate().count, us.estimate().mean.tolist()   # features, then the score
    (3, [3.0, 0.0])
    >>> eu.delta_for("us", now=2.0)["registers.seq"].size   # nothing new to ship
    0
    """

    def __init__(self, region: str, dim: int, *, known_regions: Any = (), start_time: float = 0.0):
        self.region = check_region_name(region)
        self.dim = check_positive_int(dim, "dim")
        start_time = check_finite_float(start_time, "start_time")
        self.registers = LWWRegisterMap(self.dim)
        self.registers.region_code(self.region)
        self.version = VersionVector()
        self.freshness: dict[str, float] = {self.region: start_time}
        self.acked: dict[str, VersionVector] = {}
        self.seen_update_ids: set = set()
        self._moments: list[Moments] = []
        # Largest seq held per writer. Usually equal to ``version``, but rows written
        # through (STRONG) arrive without advancing it; a peer lacks nothing only when
        # its version covers these, not merely ours.
        self._held = VersionVector()
        for other in known_regions:
            self.know_region(other, start_time)

    # ------------------------------------------------------------------ regions
    def know_region(self, region: str, since: float) -> None:
        """Record that ``region`` exists; our view of it is current as of ``since``."""
        region = check_region_name(region)
        if region not in self.freshness:
            self.freshness[region] = float(since)

    def _touch(self, now: float | None) -> None:
        if now is not None and now > self.freshness[self.region]:
            self.freshness[self.region] = float(now)

    # ------------------------------------------------------------------ own writes
    def update_many(
        self, agent_ids: Any, timestamps: Any, features: Any, anomaly_scores: Any,
        update_ids: Any = None, *, now: float | None = None,
    ) -> WriteOutcome:
        """Accept a batch of this region's writes (always accepted, never blocks).

        Everything is validated before any state changes. Rows whose
        ``update_ids`` were seen before (or repeat earlier in the batch) are
        duplicates and ignored; the rest are last-writer-wins writes.
        """
        ids = as_agent_ids(agent_ids)
        n = len(ids)
        if n == 0:
            raise EmptyInputError("an update batch needs at least one row")
        ts = as_finite_vector(timestamps, n, "timestamps")
        X = as_feature_matrix(features, self.dim, "features")
        if X.shape[0] != n:
            raise DimensionMismatchError(f"features has {X.shape[0]} rows, expected {n}")
        scores = as_finite_vector(anomaly_scores, n, "anomaly_scores")
        if now is not None:
            now = check_finite_float(now, "now")
        duplicate = np.zeros(n, bool)
        keys: list | None = None
        if update_ids is not None:
            keys = _id_keys(update_ids, n)
            batch_seen: set = set()
            seen = self.seen_update_ids
            for i, key in enumerate(keys):
                if key in seen or key in batch_seen:
                    duplicate[i] = True
                batch_seen.add(key)
        # ---- validated; state changes from here on
        self._touch(now)
        keep = np.flatnonzero(~duplicate)
        applied = np.zeros(n, bool)
        changed = np.empty(0, np.int64)
        if keep.shape[0]:
            change, won = self.registers.write_many(
                ids.take(keep), ts[keep], self.region, self.version[self.region] + 1,
                X[keep], scores[keep],
            )
            applied[keep] = won
            changed = change.rows
            if len(change):
                self.version.increment(self.region, len(change))
            self._apply_change(change)
        if keys is not None:
            self.seen_update_ids.update(keys)
        return WriteOutcome(applied, duplicate, changed)

    # ------------------------------------------------------------------ derived moments
    def _moments_of(self, code: int) -> Moments:
        while len(self._moments) <= code:
            self._moments.append(Moments(self.dim + 1))
        return self._moments[code]

    def _recompute(self, code: int) -> None:
        values = self.registers.values_of_region(code)
        self._moments[code] = Moments.from_array(values) if values.shape[0] else Moments(self.dim + 1)

    def _apply_change(self, change: RegisterChange) -> None:
        if not len(change):
            return
        seqs = self.registers.seq_of(change.rows)
        for code in np.unique(change.new_writer).tolist():
            top = int(seqs[change.new_writer == code].max())
            name = self.registers.region_names[code]
            if top > self._held[name]:
                self._held |= VersionVector({name: top})
        had = change.old_writer >= 0
        codes = np.unique(np.concatenate([change.old_writer[had], change.new_writer]))
        for code in codes.tolist():
            m = self._moments_of(code)
            removed = change.old_values[change.old_writer == code]
            added = change.new_values[change.new_writer == code]
            if removed.shape[0] > _REBUILD_SHARE * m.count:
                self._recompute(code)
                continue
            # one row: Welford's update is cheaper than a batch merge
            if removed.shape[0] == 1:
                m.revert(removed[0])
            elif removed.shape[0]:
                m.revert_many(removed)
            if added.shape[0] == 1:
                m.update(added[0])
            elif added.shape[0]:
                m.update_many(added)

    def rebuild_moments(self) -> None:
        """Recompute every region's moments from the registers (two-pass, canonical)."""
        self._moments = []
        for code in range(len(self.registers.region_names)):
            self._moments_of(code)
            self._recompute(code)

    def region_moments(self) -> dict[str, Moments]:
        """Moments of ``(features, anomaly score)`` per home region, in this view."""
        names = self.registers.region_names
        return {names[c]: m.copy() for c, m in enumerate(self._moments) if m.count}

    def region_counts(self) -> dict[str, int]:
        names = self.registers.region_names
        return {names[c]: m.count for c, m in enumerate(self._moments) if m.count}

    def estimate(self) -> Moments:
        """Moments of the whole view: an O(regions) merge of the per-region moments."""
        live = [m for m in self._moments if m.count]
        return Moments.merge_all(live) if live else Moments(self.dim + 1)

    # ------------------------------------------------------------------ delta sync
    def delta_since(self, peer_version: VersionVector, now: float | None = None) -> dict[str, np.ndarray]:
        """What a peer whose version vector is ``peer_version`` lacks, as a dict of arrays."""
        self._touch(now)
        if self._held <= peer_version:
            rows = np.empty(0, np.int64)  # the peer covers every register we hold
        else:
            rows = self.registers.rows_not_covered(peer_version)
        out = {_REG + k: v for k, v in self.registers.entries(rows).items()}
        out.update(self._meta())
        return out

    def delta_for(self, peer: str, now: float | None = None) -> dict[str, np.ndarray]:
        """Delta since the version ``peer`` last acknowledged (everything, the first time)."""
        return self.delta_since(self.acked.get(peer, VersionVector()), now)

    def _meta(self) -> dict[str, np.ndarray]:
        vv = self.version.to_dict()
        f_names, f_times = _freshness_to_arrays(self.freshness)
        return {
            "format": np.array(_FORMAT_VERSION),
            "sender": np.array(self.region),
            "version.regions": vv["regions"],
            "version.counts": vv["counts"],
            "freshness.regions": f_names,
            "freshness.times": f_times,
        }

    def merge_delta(self, delta: Mapping[str, Any]) -> VersionVector:
        """Join a delta (or full state) from a peer; return our version vector as the ack.

        Deltas may arrive twice, late or out of order: the join is idempotent,
        commutative and associative. A malformed delta raises ``InvalidInputError``
        and changes nothing.
        """
        try:
            fmt = int(np.asarray(delta["format"]))
            sender = check_region_name(str(np.asarray(delta["sender"])))
            their_version = VersionVector.from_dict(
                {"regions": delta["version.regions"], "counts": delta["version.counts"]}
            )
            their_freshness = _freshness_from_arrays(delta["freshness.regions"], delta["freshness.times"])
            entries = {k[len(_REG):]: v for k, v in delta.items() if k.startswith(_REG)}
        except KeyError as exc:
            raise InvalidInputError(f"delta lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(f"delta is malformed: {exc}") from exc
        if fmt != _FORMAT_VERSION:
            raise InvalidInputError(f"unsupported delta format {fmt}")
        change = self.registers.merge_entries(entries)  # validates before it changes anything
        self._apply_change(change)
        self.version |= their_version
        for region, t in their_freshness.items():
            if t > self.freshness.get(region, -np.inf):
                self.freshness[region] = t
        if sender != self.region:
            self.acked[sender] = self.acked.get(sender, VersionVector()) | their_version
        return self.version.copy()

    def merge_registers(self, entries: Mapping[str, Any]) -> None:
        """Join register entries without advancing the version vector or freshness.

        Used for write-through (STRONG): the rows arrive now, the version vector
        catches up at the next sync (which may ship them again; the join is
        idempotent).
        """
        self._apply_change(self.registers.merge_entries(entries))

    def acknowledge(self, peer: str, version: VersionVector) -> None:
        """Record that ``peer`` holds everything ``version`` covers."""
        self.acked[peer] = self.acked.get(peer, VersionVector()) | version

    def __iadd__(self, other: RegionReplica) -> RegionReplica:
        """Full-state merge (the CRDT join)."""
        if not isinstance(other, RegionReplica):
            return NotImplemented
        if other.dim != self.dim:
            raise DimensionMismatchError(f"cannot merge replicas of dimension {self.dim} and {other.dim}")
        self.merge_delta(other.delta_since(VersionVector()))
        return self

    # ------------------------------------------------------------------ views
    def ages(self, now: float) -> dict[str, float]:
        """Seconds since our view of each other region was last known current."""
        return {r: max(0.0, now - t) for r, t in self.freshness.items() if r != self.region}

    def same_state(self, other: RegionReplica) -> bool:
        """Identical registers and version vectors (what convergence means)."""
        return self.registers == other.registers and self.version == other.version

    # ------------------------------------------------------------------ checkpoints
    def to_dict(self) -> dict[str, np.ndarray]:
        """The whole replica as a flat dict of arrays (moments are rebuilt on load)."""
        out = self.delta_since(VersionVector())
        peers = sorted(self.acked)
        regions = sorted({r for p in peers for r in self.acked[p].regions()})
        out["dim"] = np.array(self.dim)
        out["acked.peers"] = _str_array(peers)
        out["acked.regions"] = _str_array(regions)
        out["acked.counts"] = np.array(
            [self.acked[p].as_array(regions) for p in peers], dtype=np.int64
        ).reshape(len(peers), len(regions))
        seen = as_agent_ids(list(self.seen_update_ids)) if self.seen_update_ids else None
        if seen is None:
            out["seen.int"], out["seen.str"] = np.empty(0, np.int64), np.empty(0, "<U1")
        elif seen.is_str is None:
            out["seen.int"], out["seen.str"] = np.sort(seen.ints), np.empty(0, "<U1")
        else:
            out["seen.int"] = np.sort(seen.ints[~seen.is_str])
            out["seen.str"] = np.sort(np.array(seen.strs[seen.is_str].tolist(), dtype=np.str_))
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> RegionReplica:
        try:
            region = check_region_name(str(np.asarray(state["sender"])))
            dim = int(np.asarray(state["dim"]))
            peers = np.asarray(state["acked.peers"]).tolist()
            regions = np.asarray(state["acked.regions"]).tolist()
            counts = np.asarray(state["acked.counts"]).reshape(len(peers), len(regions))
            seen_int = np.asarray(state["seen.int"]).astype(np.int64).tolist()
            seen_str = np.asarray(state["seen.str"]).tolist()
        except KeyError as exc:
            raise InvalidInputError(f"replica state lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"replica state is malformed: {exc}") from exc
        replica = cls(region, dim)
        replica.merge_delta(state)
        replica.freshness = _freshness_from_arrays(state["freshness.regions"], state["freshness.times"])
        replica.acked = {
            check_region_name(p): VersionVector(dict(zip(regions, row.tolist(), strict=True)))
            for p, row in zip(peers, counts, strict=True)
        }
        replica.seen_update_ids = set(seen_int) | set(seen_str)
        replica.rebuild_moments()  # _held was rebuilt by merge_delta above
        return replica

    def to_bytes(self) -> bytes:
        """Checkpoint as bytes (an ``.npz`` archive, no pickle)."""
        return dict_to_bytes(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> RegionReplica:
        state = dict_from_bytes(data, "RegionReplica")
        return cls.from_dict(state)

    def __repr__(self) -> str:
        return (f"RegionReplica({self.region!r}, agents={len(self.registers)}, "
                f"version={self.version.to_mapping()})")
