"""A region's replica: its LWW registers, version vector, freshness and derived moments.

The replicated state is the :class:`LWWRegisterMap` (a CRDT) plus two
max-merged maps: the version vector (which writes this replica covers) and the
freshness map (for each region, the latest time at which this replica's view of
that region was known to be current). The per-region moments are *derived*:
kept in step with every register change, never merged directly, because ``+``
on moments is not idempotent (re-merging a region after a heal would count its
agents twice).

The derived moments are exact (:class:`~swarmguard.values.exact_moments.ExactMoments`:
integer sums of the rows, their squares and cross products), so they are a
function of the registers alone: two replicas holding the same registers report
the same estimate, bit for bit, whatever order the writes and merges came in,
and every reported statistic is the correctly rounded value of the exact one
(a variance is never negative).

Duplicate guard: a replica remembers the last ``dedup_window`` distinct
``update_ids`` it accepted (first in, first out). A row whose id is among them,
or repeats an id earlier in its batch, is a duplicate and changes nothing.

A replica accepts its own region's writes at once (no coordination), and takes
other regions' state only through :meth:`merge_delta`. Delta sync: the receiver
tells the sender its version vector (or the sender uses the last one the peer
acknowledged); the sender ships only the registers whose ``(writer, seq)`` dot
that vector does not cover.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, EmptyInputError, InvalidInputError, InvalidTypeError
from ..validation import (
    as_feature_matrix,
    as_finite_vector,
    check_finite_float,
    check_positive_int,
)
from ..values.agent_index import as_agent_ids
from ..values.exact_moments import ExactMoments
from ..values.lww_register_map import LWWRegisterMap, RegisterChange
from ..values.moments import Moments
from ..values.npz import (
    NpzBytes,
    int_scalar,
    reading_fields,
    str_list,
    str_scalar,
)
from ..values.version_vector import MAX_COUNT, VersionVector, check_region_name
from .replica_state import (
    _count_matrix,
    _freshness_from_arrays,
    _freshness_to_arrays,
    _seen_from_state,
    _str_array,
)

__all__ = ["RegionReplica", "WriteOutcome", "DEFAULT_DEDUP_WINDOW"]

_FORMAT_VERSION = 1
_REG = "registers."
DEFAULT_DEDUP_WINDOW = 1 << 16
"""Distinct update ids a replica remembers (73 bytes per int id, 111 per short string: 5-7 MB when full)."""
_MAX_DEDUP_WINDOW = 1 << 32


@dataclass(frozen=True)
class WriteOutcome:
    """Per input row: ``applied`` (became the agent's value), ``duplicate`` (update id seen
    before); ``changed_rows``: the register rows that changed."""

    applied: np.ndarray
    duplicate: np.ndarray
    changed_rows: np.ndarray


def _read_only(values: list[bool]) -> np.ndarray:
    out = np.array(values, bool)
    out.flags.writeable = False
    return out


# The one-row path's outcomes that hold no row (shared: read-only).
_ONE_TRUE, _ONE_FALSE = _read_only([True]), _read_only([False])
_NO_ROWS = np.empty(0, np.int64)
_NO_ROWS.flags.writeable = False
_ONE_DUPLICATE = WriteOutcome(_ONE_FALSE, _ONE_TRUE, _NO_ROWS)
_ONE_LOST = WriteOutcome(_ONE_FALSE, _ONE_FALSE, _NO_ROWS)


def _id_keys(update_ids: Any, n: int) -> list:
    ids = as_agent_ids(update_ids, n)  # same rules as agent ids: ints or strings
    return ids.to_list()


class RegionReplica(NpzBytes):
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
    dedup_window : int
        How many distinct ``update_ids`` the duplicate guard remembers (oldest
        forgotten first); see :attr:`seen_update_ids`.

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

    def __init__(self, region: str, dim: int, *, known_regions: Any = (), start_time: float = 0.0,
                 dedup_window: int = DEFAULT_DEDUP_WINDOW):
        self.region = check_region_name(region)
        self.dim = check_positive_int(dim, "dim")
        start_time = check_finite_float(start_time, "start_time")
        self.dedup_window = check_positive_int(dedup_window, "dedup_window")
        if self.dedup_window > _MAX_DEDUP_WINDOW:
            raise InvalidInputError(f"dedup_window must be at most {_MAX_DEDUP_WINDOW}")
        self.registers = LWWRegisterMap(self.dim)
        self.registers.region_code(self.region)
        self.version = VersionVector()
        self.freshness: dict[str, float] = {self.region: start_time}
        self.acked: dict[str, VersionVector] = {}
        # The duplicate guard: the last ``dedup_window`` distinct update ids, oldest first.
        self._seen_order: deque = deque()
        self._seen: set = set()
        self._moments: list[ExactMoments] = []   # per home-region code
        self._total: ExactMoments | None = None  # their sum, cached until the registers change
        self._total_read = False                 # whether _total was read since the last one-row change
        # Largest seq held per writer. Usually equal to ``version``, but rows written
        # through (STRONG) arrive without advancing it; a peer lacks nothing only when
        # its version covers these, not merely ours.
        self._held = VersionVector()
        for other in known_regions:
            self.know_region(other, start_time)

    # ------------------------------------------------------------------ duplicate guard
    @property
    def seen_update_ids(self) -> frozenset:
        """The update ids the duplicate guard remembers now (at most ``dedup_window``).

        A row is a duplicate, and changes nothing, when its id is one of these
        or repeats an id earlier in its batch: a re-send is recognised as long
        as fewer than ``dedup_window`` distinct new ids reached this replica
        since the first delivery. An older re-send is an ordinary write again:
        last-writer-wins makes it change nothing unless no later write of that
        agent has arrived (or a different update of the agent had the very same
        timestamp).
        """
        return frozenset(self._seen)

    def _remember(self, keys: list) -> None:
        order, seen = self._seen_order, self._seen
        for key in keys:
            if key not in seen:
                seen.add(key)
                order.append(key)
        while len(order) > self.dedup_window:
            seen.discard(order.popleft())

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
        if self.version[self.region] + n > MAX_COUNT:
            raise InvalidInputError(f"region {self.region!r} has used up its sequence numbers ({MAX_COUNT})")
        duplicate = np.zeros(n, bool)
        keys: list | None = None
        if update_ids is not None:
            keys = _id_keys(update_ids, n)
            batch_seen: set = set()
            seen = self._seen
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
            whole = keep.shape[0] == n      # no duplicate (the usual batch): no gathered copies
            change, won = self.registers.write_many(
                ids if whole else ids.take(keep), ts if whole else ts[keep], self.region,
                self.version[self.region] + 1, X if whole else X[keep], scores if whole else scores[keep],
            )
            applied[keep] = won
            changed = change.rows
            if len(change):
                self.version.increment(self.region, len(change))
            self._apply_change(change)
        if keys is not None:
            self._remember(keys)
        return WriteOutcome(applied, duplicate, changed)

    def _update_one(self, ids: Any, timestamp: float, values: Any, update_id: Any = None,
                    *, now: float | None = None) -> WriteOutcome:
        """:meth:`update_many` for one row its caller has validated (the per-item path).

        ``ids``: one agent id (``AgentIds`` of length 1, or the int or str
        :func:`~swarmguard.values.agent_index.check_wire_id` returns); ``timestamp``, ``now``: finite
        floats; ``values``: the finite ``(dim + 1,)`` row, features then the anomaly
        score (an array, or a list of floats); ``update_id``: a wire id (int or str) or
        None. The same outcome and state as :meth:`update_many` with that one row,
        without checking it again (the outcome's arrays are read-only).
        """
        region = self.region
        seq = self.version[region] + 1
        if seq > MAX_COUNT:
            raise InvalidInputError(f"region {region!r} has used up its sequence numbers ({MAX_COUNT})")
        if update_id is not None and update_id in self._seen:
            self._touch(now)
            return _ONE_DUPLICATE
        # ---- validated; state changes from here on
        self._touch(now)
        added = values.tolist() if isinstance(values, np.ndarray) else [float(v) for v in values]
        won = self.registers.write_one_row(ids, timestamp, region, seq, added)
        if won is None:
            outcome = _ONE_LOST
        else:
            row, old_code, removed = won
            self.version.increment(region, 1)
            self._apply_row(self.registers._code[region], old_code, seq, removed, added)
            outcome = WriteOutcome(_ONE_TRUE, _ONE_FALSE, np.array([row], np.int64))
        if update_id is not None:
            self._remember([update_id])
        return outcome

    # ------------------------------------------------------------------ derived moments
    def _moments_of(self, code: int) -> ExactMoments:
        while len(self._moments) <= code:
            self._moments.append(ExactMoments(self.dim + 1))
        return self._moments[code]

    def _apply_change(self, change: RegisterChange) -> None:
        if not len(change):
            return
        if len(change) == 1:
            self._apply_one(change)
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
            # exact integer sums: removing a row undoes adding it, in any order
            removed = change.old_values[change.old_writer == code]
            added = change.new_values[change.new_writer == code]
            rows = np.concatenate([removed, added]) if removed.shape[0] else added
            weights = np.concatenate([np.full(removed.shape[0], -1, np.int64),
                                      np.ones(added.shape[0], np.int64)])
            delta = ExactMoments(self.dim + 1)
            delta._add_rows(rows, weights)
            self._moments_of(code).__iadd__(delta)
            if self._total is not None:
                self._total += delta     # exact: the same sum as re-adding every region

    def _apply_one(self, change: RegisterChange) -> None:
        """:meth:`_apply_change` for one register (a one-register merge): :meth:`_apply_row`."""
        old_code = int(change.old_writer[0])
        self._apply_row(int(change.new_writer[0]), old_code, int(self.registers.seq_of(change.rows[:1])[0]),
                        change.old_values[0].tolist() if old_code >= 0 else None, change.new_values[0].tolist())

    def _apply_row(self, new_code: int, old_code: int, seq: int, removed: list[float] | None,
                   added: list[float]) -> None:
        """One register changed (the per-item path): from ``removed`` of home ``old_code``
        (None, -1: the agent had none) to ``added`` of home ``new_code``, written with ``seq``.
        Python integers only.

        The same exact sums as the batch path (:func:`~swarmguard.values.exact_moments.row_change_diagonal`
        gives the integers :func:`~swarmguard.values.exact_moments.exact_cross_sums` gives; the
        cross products follow when the moments fold them).
        """
        name = self.registers.region_names[new_code]
        if seq > self._held[name]:
            self._held._counts[name] = seq    # a max-merge of one entry (VersionVector's own dict)
        total = self._total
        if total is not None and not self._total_read:
            # Nobody read the total since the last change (the detector's per-item path reads
            # only the counts): rebuilt on the next read instead of kept in step at every write.
            self._total = total = None
        self._total_read = False
        # O(d) each: the count, sums and squares now, the cross products folded on a read
        # (ExactMoments._change_row); the total, while someone reads it, takes the same change
        if old_code == new_code:
            change = self._moments_of(new_code)._change_row(removed, added)
            if total is not None:
                total._add_row_change(change)
            return
        if removed is not None:          # the agent moved home: out of one region, into another
            change = self._moments_of(old_code)._change_row(removed, None)
            if total is not None:
                total._add_row_change(change)
        change = self._moments_of(new_code)._change_row(None, added)
        if total is not None:
            total._add_row_change(change)

    def rebuild_moments(self) -> None:
        """Recompute every region's moments from the registers (the same exact sums)."""
        self._moments = []
        for code in range(len(self.registers.region_names)):
            m = self._moments_of(code)
            values = self.registers.values_of_region(code)
            if values.shape[0]:
                m._add_rows(values, np.ones(values.shape[0], np.int64))
        self._total = None

    def region_moments(self) -> dict[str, Moments]:
        """Moments of ``(features, anomaly score)`` per home region, in this view (correctly rounded)."""
        names = self.registers.region_names
        # From copies: the co-moment folds the pending one-row changes, and a read must not
        # mutate the live moments (two threads reading one replica would fold the same rows
        # at once: one of them reads a half-folded co-moment, or both add the rows).
        return {names[c]: m.copy().to_moments() for c, m in enumerate(self._moments) if m.count}

    def region_exact_moments(self) -> dict[str, ExactMoments]:
        """The exact per-home-region sums behind :meth:`region_moments` (copies)."""
        names = self.registers.region_names
        return {names[c]: m.copy() for c, m in enumerate(self._moments) if m.count}

    def region_counts(self) -> dict[str, int]:
        names = self.registers.region_names
        return {names[c]: m.count for c, m in enumerate(self._moments) if m.count}

    def estimate_exact(self) -> ExactMoments:
        """Exact sums of the whole view (a copy): the sum of the per-region sums."""
        return self._exact_total().copy()

    def _exact_total(self) -> ExactMoments:
        """The live sum of the per-region sums (read it, never change it)."""
        if self._total is None:
            self._total = ExactMoments.merge_all(self._moments, self.dim + 1)
        self._total_read = True
        return self._total

    def estimate(self) -> Moments:
        """Moments of the whole view, correctly rounded from the exact sums.

        Identical registers give identical moments, bit for bit, whatever order
        the writes and merges arrived in.
        """
        return self.estimate_exact().to_moments()

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

    def merge_delta(self, delta: Mapping[str, Any], *, nonnegative_scores: bool = False) -> VersionVector:
        """Join a delta (or full state) from a peer; return our version vector as the ack.

        Deltas may arrive twice, late or out of order: the join is idempotent,
        commutative and associative. A malformed delta raises ``InvalidInputError``
        and changes nothing; so does, with ``nonnegative_scores``, a register whose
        anomaly score is below 0 (:meth:`~swarmguard.values.lww_register_map.LWWRegisterMap.merge_entries`).
        """
        if not isinstance(delta, Mapping):
            raise InvalidTypeError(f"a delta is a mapping of arrays, got {type(delta).__name__}")
        with reading_fields("delta"):
            fmt = int_scalar(delta["format"], "format", 0, 1 << 31)
            sender = check_region_name(str_scalar(delta["sender"], "sender"))
            their_version = VersionVector.from_dict(
                {"regions": delta["version.regions"], "counts": delta["version.counts"]}
            )
            their_freshness = _freshness_from_arrays(delta["freshness.regions"], delta["freshness.times"])
            entries = {k[len(_REG):]: v for k, v in delta.items() if isinstance(k, str) and k.startswith(_REG)}
        if fmt != _FORMAT_VERSION:
            raise InvalidInputError(f"unsupported delta format {fmt}")
        # validates before it changes anything
        change = self.registers.merge_entries(entries, nonnegative_scores=nonnegative_scores)
        self._apply_change(change)
        self.version |= their_version
        for region, t in their_freshness.items():
            if t > self.freshness.get(region, -np.inf):
                self.freshness[region] = t
        if sender != self.region:
            self.acked[sender] = self.acked.get(sender, VersionVector()) | their_version
        return self.version.copy()

    def clamp_negative_scores(self) -> int:
        """Hold every register's anomaly score below 0 as 0 (the moments follow); how many were.

        A node whose scores are squared distances calls it on what it loads unchecked (its
        snapshot, its log's peer deltas): see
        :meth:`~swarmguard.values.lww_register_map.LWWRegisterMap.clamp_negative_scores`.
        """
        change = self.registers.clamp_negative_scores()
        self._apply_change(change)
        return len(change)

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
        # the remembered update ids, oldest first (the order decides which is forgotten next)
        seen = list(self._seen_order)
        is_str = [isinstance(k, str) for k in seen]
        out["seen.is_str"] = np.array(is_str, dtype=bool)
        out["seen.int"] = np.array([k for k, f in zip(seen, is_str, strict=True) if not f], dtype=np.int64)
        out["seen.str"] = _str_array([k for k, f in zip(seen, is_str, strict=True) if f])
        out["seen.window"] = np.array(self.dedup_window, dtype=np.int64)
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], *, dedup_window: int | None = None) -> RegionReplica:
        """Rebuild a replica from :meth:`to_dict` output, validating every field.

        Damaged or tampered state raises ``InvalidInputError`` (never another
        error, never a silently different value). ``dedup_window`` overrides the
        saved window (the most recent ids are kept).
        """
        if not isinstance(state, Mapping):
            raise InvalidTypeError(f"a replica state is a mapping of arrays, got {type(state).__name__}")
        with reading_fields("replica state"):
            region = check_region_name(str_scalar(state["sender"], "sender"))
            dim = int_scalar(state["dim"], "dim", 1, 1 << 31)
            if "registers.dim" in state and int_scalar(state["registers.dim"], "registers.dim", 1, 1 << 31) != dim:
                raise DimensionMismatchError("registers.dim differs from dim")
            feats = np.asarray(state["registers.features"])
            if feats.ndim != 2 or feats.shape[1] != dim:
                raise DimensionMismatchError(f"registers.features must have {dim} columns, got shape {feats.shape}")
            peers = [check_region_name(x) for x in str_list(state["acked.peers"], "acked.peers")]
            regions = [check_region_name(x) for x in str_list(state["acked.regions"], "acked.regions")]
            if len(set(peers)) != len(peers) or len(set(regions)) != len(regions):
                raise InvalidInputError("acked tables repeat a name")
            counts = _count_matrix(state["acked.counts"], (len(peers), len(regions)), "acked.counts")
            seen = _seen_from_state(state)
            window = (int_scalar(state["seen.window"], "seen.window", 1, _MAX_DEDUP_WINDOW)
                      if "seen.window" in state else DEFAULT_DEDUP_WINDOW)
            freshness = _freshness_from_arrays(state["freshness.regions"], state["freshness.times"])
        if region not in freshness:
            raise InvalidInputError(f"replica state has no freshness time for its own region {region!r}")
        replica = cls(region, dim, dedup_window=window if dedup_window is None else dedup_window)
        replica.merge_delta(state)     # validates the registers and version vector
        if replica._held[region] > replica.version[region]:
            # our own writes always advance our own counter: sequence numbers would repeat
            raise InvalidInputError(f"replica state holds writes of {region!r} its version vector does not cover")
        replica.freshness = freshness
        replica.acked = {p: VersionVector(dict(zip(regions, row, strict=True)))
                         for p, row in zip(peers, counts.tolist(), strict=True)}
        replica._remember(seen)
        return replica

    def __repr__(self) -> str:
        return (f"RegionReplica({self.region!r}, agents={len(self.registers)}, "
                f"version={self.version.to_mapping()})")
