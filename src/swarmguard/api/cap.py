"""Statistical CAP resolution: available through partitions, convergent on heal.

The guide's Solution 3. Each ``source_partition`` (a region) owns a
:class:`~swarmguard.structures.replica.RegionReplica`. A replica accepts its own
region's updates at once and sees the other regions as last received; replicas
exchange deltas by anti-entropy :meth:`StatisticalCAPResolver.sync` whenever the
links between them deliver. In-process the resolver hosts every replica and
simulates the links: :meth:`~StatisticalCAPResolver.partition` cuts them into
groups, :meth:`~StatisticalCAPResolver.heal` restores them.

This module holds the resolver itself (its settings, clock, regions and
writes) and :func:`validate_cap_settings`; the rest of its class lives beside
it, and every name stays importable from here.

See Also
--------
swarmguard.api.cap_views : a region's view and its confidence factor.
swarmguard.api.cap_links : the links (partition, heal, sync).
swarmguard.api.cap_checkpoint : the checkpoint (``to_dict``, ``to_bytes``).
swarmguard.api.cap_types : the value types (``ConsistencyModel``, ``StatisticalUpdate``, ``SyncReport``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidTypeError,
    QuorumUnavailableError,  # defined in errors.py, still importable from here
    UnknownRegionError,
)
from ..locking import Locked, synchronized
from ..structures.replica import DEFAULT_DEDUP_WINDOW, RegionReplica, WriteOutcome
from ..structures.topology import (
    MonotonicClock,
    RegionTopology,
    partition_groups,
    require_write_quorum,
)
from ..validation import (
    CheckedFeatures,
    as_feature_vector,
    as_finite_vector,
    check_feature_matrix,
    check_finite_float,
    check_fraction,
    check_nonnegative_float,
    check_positive_int,
)
from ..values.agent_index import as_agent_ids, check_wire_id, one_agent_id
from ..values.version_vector import check_region_name
from .cap_checkpoint import _FORMAT_VERSION, CapCheckpoint  # noqa: F401  (_FORMAT_VERSION: still importable from here)
from .cap_links import CapLinks
from .cap_types import ConsistencyModel, StatisticalUpdate, SyncReport
from .cap_views import CapViews, compute_confidence_factor, widened_threshold

if TYPE_CHECKING:
    import asyncio  # imported where used: asyncio costs about half an `import numpy` at start-up

__all__ = [
    "ConsistencyModel",
    "StatisticalUpdate",
    "StatisticalCAPResolver",
    "SyncReport",
    "QuorumUnavailableError",
    "UnknownRegionError",
    "compute_confidence_factor",
    "widened_threshold",
    "require_write_quorum",
    "partition_groups",
]


@dataclass(frozen=True)
class CapSettings:
    """:class:`~swarmguard.api.cap.StatisticalCAPResolver`'s checked settings (``z``: the
    normal quantile of ``confidence_level``; ``regions``: the declared region names)."""

    consistency_model: ConsistencyModel
    max_staleness_seconds: float
    confidence_decay_rate: float
    confidence_level: float
    z: float
    feature_dimensions: int | None
    sync_interval_seconds: float | None
    auto_sync_seconds: float | None
    regions: tuple[str, ...]
    dedup_window: int


def validate_cap_settings(consistency_model: Any = ConsistencyModel.STATISTICAL, max_staleness_seconds: Any = 5.0,
                          confidence_decay_rate: Any = 0.1, clock: Callable[[], float] | None = None, *,
                          regions: Iterable[str] | None = None, feature_dimensions: Any = None,
                          confidence_level: Any = 0.95, sync_interval_seconds: Any = None,
                          auto_sync_seconds: Any = 1.0, dedup_window: Any = DEFAULT_DEDUP_WINDOW) -> CapSettings:
    """Check the resolver's constructor arguments as the resolver does."""
    dedup_window = check_positive_int(dedup_window, "dedup_window")
    consistency_model = ConsistencyModel.coerce(consistency_model)
    max_staleness_seconds = check_nonnegative_float(max_staleness_seconds, "max_staleness_seconds")
    confidence_decay_rate = check_nonnegative_float(confidence_decay_rate, "confidence_decay_rate")
    if clock is not None and not callable(clock):
        raise InvalidTypeError("clock must be a callable returning seconds")
    confidence_level = check_fraction(confidence_level, "confidence_level", low_open=True, high_open=True)
    z = NormalDist().inv_cdf(0.5 + confidence_level / 2)
    feature_dimensions = None if feature_dimensions is None else check_positive_int(
        feature_dimensions, "feature_dimensions")
    if sync_interval_seconds is not None:
        sync_interval_seconds = check_finite_float(sync_interval_seconds, "sync_interval_seconds")
        if sync_interval_seconds <= 0:
            raise InvalidInputError("sync_interval_seconds must be > 0")
    if auto_sync_seconds is not None:
        auto_sync_seconds = check_finite_float(auto_sync_seconds, "auto_sync_seconds")
        if auto_sync_seconds <= 0:
            raise InvalidInputError("auto_sync_seconds must be > 0 (or None to turn it off)")
    names = [] if regions is None else [check_region_name(r) for r in regions]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"regions repeat a name: {names}")
    return CapSettings(consistency_model, max_staleness_seconds, confidence_decay_rate, confidence_level, z,
                       feature_dimensions, sync_interval_seconds, auto_sync_seconds, tuple(names), dedup_window)


class StatisticalCAPResolver(CapViews, CapLinks, CapCheckpoint, Locked):
    """Region replicas with statistical consistency (the guide's Solution 3).

    Safe to share between threads: every public method runs under the
    resolver's one re-entrant lock (:mod:`swarmguard.locking`), so concurrent
    calls are serialised and a refused call changes nothing.

    Parameters
    ----------
    consistency_model : ConsistencyModel or str
        STATISTICAL (default), STRONG or EVENTUAL.
    max_staleness_seconds : float >= 0
        A part of a view no older than this counts as fully current.
    confidence_decay_rate : float >= 0
        Per-second decay of a stale part's confidence beyond ``max_staleness_seconds``.
    clock : callable returning seconds, optional
        Processing-time clock (default ``time.monotonic``); inject one for simulated time.
    regions : iterable of str, optional
        Regions known from the start (others are added when their first update arrives).
    feature_dimensions : int, optional
        Number of features; taken from the first update when not given.
    confidence_level : float in (0, 1)
        Coverage of the reported confidence intervals (before widening).
    sync_interval_seconds : float > 0, optional
        When set, ``await handle_update`` starts a background task that calls
        :meth:`sync` at this interval (also :meth:`start_background_sync`).
    auto_sync_seconds : float > 0 or None, default 1.0
        Anti-entropy without a background task: a write that arrives when the
        last sync is at least this old (on ``clock``) runs one :meth:`sync`
        first, over the links that deliver. This is what keeps the guide's
        snippet, which never calls ``sync()``, at full confidence while the
        network is whole. ``None`` turns it off (syncs only when asked).
    sleep : async callable, optional
        What the background task awaits between rounds (default ``asyncio.sleep``).
    dedup_window : int, default 65536
        Distinct ``update_id``s each region's duplicate guard remembers: a
        re-sent update is ignored while fewer than this many new ids reached
        its region since it first arrived (see ``docs/cap.md``).

    Examples
    --------
    >>> t = [0.0]
    >>> r = StatisticalCAPResolver(clock=lambda: t[0], regions=["eu", "us"])
    >>> _ = r.handle_update_sync(StatisticalUpdate(1, "a", 0.0, [1.0], 0.1, "eu"))
    >>> _ = r.handle_update_sync(StatisticalUpdate(2, "b", 0.0, [3.0], 0.2, "us"))
    >>> r.partition([["eu"], ["us"]])
    >>> t[0] = 15.0
    >>> res = r.handle_update_sync(StatisticalUpdate(3, "c", 15.0, [5.0], 0.3, "eu"))
    >>> res["accepted"], res["visible_regions"], res["global_estimate"]["count"]
    (True, ['eu'], 2)
    >>> r.heal(); _ = r.sync()
    >>> r.global_estimate("eu")["global_estimate"]["count"], r.confidence_factor("eu")
    (3, 1.0)
    """

    def __init__(
        self,
        consistency_model: Any = ConsistencyModel.STATISTICAL,
        max_staleness_seconds: float = 5.0,
        confidence_decay_rate: float = 0.1,
        clock: Callable[[], float] | None = None,
        *,
        regions: Iterable[str] | None = None,
        feature_dimensions: int | None = None,
        confidence_level: float = 0.95,
        sync_interval_seconds: float | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        auto_sync_seconds: float | None = 1.0,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
    ):
        super().__init__()
        checked = validate_cap_settings(consistency_model, max_staleness_seconds, confidence_decay_rate, clock,
                                        regions=regions, feature_dimensions=feature_dimensions,
                                        confidence_level=confidence_level,
                                        sync_interval_seconds=sync_interval_seconds,
                                        auto_sync_seconds=auto_sync_seconds, dedup_window=dedup_window)
        self.dedup_window = checked.dedup_window
        self.consistency_model = checked.consistency_model
        self.max_staleness_seconds = checked.max_staleness_seconds
        self.confidence_decay_rate = checked.confidence_decay_rate
        self.confidence_level = checked.confidence_level
        self._z = checked.z
        self._dim = checked.feature_dimensions
        sync_interval_seconds, auto_sync_seconds = checked.sync_interval_seconds, checked.auto_sync_seconds
        names = list(checked.regions)
        self.sync_interval_seconds = sync_interval_seconds
        self.auto_sync_seconds = auto_sync_seconds
        self._sleep = sleep   # None: asyncio.sleep, looked up when the background task runs
        self._time = MonotonicClock(clock or time.monotonic)
        self._start = self._now()
        self._last_sync = self._start
        self._topology = RegionTopology()
        self._replicas: dict[str, RegionReplica] = {}
        self._sync_task: asyncio.Task | None = None
        for name in names:
            self._add_region(name, self._start)

    # ------------------------------------------------------------------ clock, regions
    def _now(self, now: float | None = None) -> float:
        """Clock reading (or the caller's validated reading ``now``), never earlier than a
        previous one (so confidence cannot rise by itself)."""
        return self._time.now(now)

    @property
    def _clock(self) -> Callable[[], float]:
        """The clock function (examples set it to simulate time)."""
        return self._time.clock

    @_clock.setter
    def _clock(self, clock: Callable[[], float]) -> None:
        self._time.clock = clock

    @property
    def _latest(self) -> float:
        """The clock's high-water mark (the latest reading a write or a view took)."""
        return self._time.latest

    def read_clock(self) -> float:
        """The clock's reading as the next write would use it, changing nothing.

        A finite number (a clock that returns NaN, ±inf or a non-number raises
        :class:`~swarmguard.errors.NonFiniteError` / ``InvalidTypeError``), never
        earlier than a previous reading. A caller that must refuse a whole call
        before changing other state (the detector) reads it once here and passes
        it to the write as ``now``.
        """
        return self._time.read()

    @staticmethod
    def _check_now(now: Any) -> float | None:
        return None if now is None else check_finite_float(now, "now")

    @property
    @synchronized
    def regions(self) -> list[str]:
        return list(self._topology.regions)

    @property
    @synchronized
    def feature_dimensions(self) -> int | None:
        return self._dim

    @synchronized
    def replica(self, region: str) -> RegionReplica:
        """The live replica of ``region`` (created once the feature dimension is known)."""
        region = self._known(region)
        if region not in self._replicas:
            raise UnknownRegionError(f"region {region!r} has no replica yet (no feature dimension known)")
        return self._replicas[region]

    @synchronized
    def ensure_replica(self, region: str, dim: int | None = None) -> RegionReplica | None:
        """The live replica of ``region``, made if ``dim`` is given (a replicating node whose
        peers' agents arrive before its own first write).

        Without ``dim``: the replica, or None while the region or the feature dimension is
        unknown (nothing changes). With ``dim``: the region is added if new, the resolver
        takes ``dim`` as its feature dimension if it has none yet, and a ``dim`` other than
        the resolver's is a :class:`~swarmguard.errors.DimensionMismatchError` (nothing changed).
        """
        name = check_region_name(region)
        if dim is None:
            return self._replicas.get(name) if self._dim is not None else None
        dim = check_positive_int(dim, "dim")
        if self._dim is not None and self._dim != dim:
            raise DimensionMismatchError(f"dimension {dim}, the resolver's is {self._dim}")
        if name not in self._topology.born:
            self._add_region(name, self._now())
        if self._dim is None:
            self._set_dim(dim)
        return self._replicas[name]

    def _known(self, region: Any) -> str:
        return self._topology.known(region)

    def _add_region(self, name: str, now: float) -> None:
        self._topology.add(name, now)      # born during a partition: reachable by nobody until heal
        if self._dim is not None:
            self._make_replica(name)

    def _make_replica(self, name: str) -> None:
        replica = RegionReplica(name, self._dim, start_time=self._topology.born[name], dedup_window=self.dedup_window)
        for other in self._topology.regions:
            if other == name:
                continue
            # a newcomer has never heard from the others; the others' view of it is
            # complete as of its birth (it had no agents before)
            replica.know_region(other, self._start)
            if other in self._replicas:
                self._replicas[other].know_region(name, self._topology.born[name])
        self._replicas[name] = replica

    def _set_dim(self, dim: int) -> None:
        self._dim = dim
        for name in self._topology.regions:
            self._make_replica(name)

    @synchronized
    def visible_regions(self, region: str) -> list[str]:
        """Regions whose links to ``region`` deliver now (``region`` included), sorted."""
        return self._topology.visible(region)

    def _require_quorum(self, region: str, new_region: bool = False) -> None:
        if self.consistency_model is ConsistencyModel.STRONG:
            self._topology.require_quorum([region])

    @synchronized
    def check_writable(self, regions: Iterable[str]) -> None:
        """Raise as a write of each of ``regions`` (in order) would, changing nothing.

        Names must be valid; under STRONG every region must reach a majority
        (a new region joins as it writes, as in :meth:`handle_updates_many`).
        Lets a caller refuse a whole batch before touching other state.
        """
        names = [check_region_name(r) for r in regions]
        if self.consistency_model is ConsistencyModel.STRONG:
            self._topology.require_quorum(names)

    # ------------------------------------------------------------------ updates
    async def handle_update(self, update: StatisticalUpdate, *, now: float | None = None) -> dict[str, Any]:
        """Accept one update at its region and report the region's view (see :meth:`handle_update_sync`).

        With ``sync_interval_seconds`` set, the first accepted update starts the background
        sync (a refused one raises and starts nothing).
        """
        report = self.handle_update_sync(update, now=now)
        if self.sync_interval_seconds is not None and (self._sync_task is None or self._sync_task.done()):
            self.start_background_sync()
        return report

    @synchronized
    def handle_update_sync(self, update: StatisticalUpdate, *, now: float | None = None) -> dict[str, Any]:
        """Synchronous twin of :meth:`handle_update`.

        Returns a dict with ``accepted`` (always True unless STRONG refuses by
        raising), ``applied`` (the update became the agent's value; False for a
        duplicate ``update_id`` or an update older than what the region holds),
        ``duplicate``, ``confidence_factor``, ``staleness_seconds`` (age of the
        stalest other region in this region's view), ``weighted_staleness_seconds``
        (ages weighted by each region's share of agents), ``consistency_model``,
        ``visible_regions`` and ``global_estimate`` (count, mean, mean anomaly
        score, confidence intervals widened by ``1 / confidence_factor``).

        ``now`` is the processing time of the write and of the view (a reading
        of the clock from :meth:`read_clock`; default: the clock, read once for
        both). A reading earlier than a previous one counts as that one; a
        refused update leaves the clock's high-water mark where it was.
        """
        if not isinstance(update, StatisticalUpdate):
            raise InvalidTypeError(f"handle_update takes a StatisticalUpdate, got {type(update).__name__}")
        region = check_region_name(update.source_partition)
        x = as_feature_vector(update.feature_vector, self._dim, "feature_vector")
        ts = check_finite_float(update.timestamp, "timestamp")
        score = check_finite_float(update.anomaly_score, "anomaly_score")
        agent = check_wire_id(update.agent_id)
        uid = check_wire_id(update.update_id)
        now = self._check_now(now)
        if self._dim is not None and region in self._topology.born:
            outcome, now = self._write_one(region, agent, ts, [*x.tolist(), score], uid, now)
            return self._one_report(region, now, outcome, update.update_id, update.agent_id)
        # first touch of a region or of the dimension: the batch path creates them
        outcome, now = self._write(region, one_agent_id(agent), np.array([ts]), x[None, :], np.array([score]),
                                   one_agent_id(uid), now)
        return self._one_report(region, now, outcome, update.update_id, update.agent_id)

    @synchronized
    def _handle_checked(self, region: str, agent_id: int | str, timestamp: float, x: np.ndarray,
                        anomaly_score: float, update_id: int | str, now: float, *,
                        report: bool = True) -> dict[str, Any]:
        """:meth:`handle_update_sync` of ``StatisticalUpdate(update_id, agent_id, timestamp, x,
        anomaly_score, region)`` for a caller that checked every value but the score by this
        resolver's rules (the detector's per-item path: wire ids, a finite timestamp and
        ``now``, a finite float64 vector, a valid region name): the same state and report,
        without checking them again.

        ``report=False``, for a caller that reads only the confidence factor: the write is
        the same, the result holds ``confidence_factor`` alone (the view's estimate, the
        report's costliest part, is not computed) unless the update is a region's or the
        dimension's first (then it is the whole report).
        """
        if self._dim is None or x.shape[0] != self._dim or region not in self._topology.born:
            return self.handle_update_sync(StatisticalUpdate(update_id, agent_id, timestamp, x, anomaly_score,
                                                             region), now=now)
        score = check_finite_float(anomaly_score, "anomaly_score")
        outcome, now = self._write_one(region, agent_id, timestamp, [*x.tolist(), score], update_id, now)
        if not report:
            return {"confidence_factor": self._view_confidence(region, now)}
        return self._one_report(region, now, outcome, update_id, agent_id)

    def _write_one(self, region: str, agent: int | str, ts: float, values: list[float], uid: int | str,
                   now: float | None) -> tuple[WriteOutcome, float]:
        """One validated update of a known region (the dimension known) on the replica's one-row
        path (:meth:`RegionReplica._update_one`); returns the outcome and the write's time."""
        self._require_quorum(region)
        # kept (the high-water mark moved) only once the write is accepted, as in _write
        now = self.read_clock() if now is None else max(now, self._time.latest)
        replica = self._replicas[region]
        outcome = replica._update_one(agent, ts, values, uid, now=now)
        self._after_write(region, replica, outcome, now)
        return outcome, now

    def _one_report(self, region: str, now: float, outcome: WriteOutcome, update_id: Any,
                    agent_id: Any) -> dict[str, Any]:
        report = self._view_report(region, now)      # the write's reading: the clock is read once
        report.update({
            "accepted": True,
            "applied": bool(outcome.applied[0]),
            "duplicate": bool(outcome.duplicate[0]),
            "update_id": update_id,
            "agent_id": agent_id,
        })
        return report

    @synchronized
    def handle_updates_many(
        self, region: str, agent_ids: Any, timestamps: Any, features: Any, anomaly_scores: Any,
        update_ids: Any = None, *, now: float | None = None,
    ) -> dict[str, Any]:
        """Batch path: accept many updates of one region at once (arrays in).

        ``agent_ids`` (ints are fastest), ``timestamps`` (n,), ``features`` (n, d),
        ``anomaly_scores`` (n,), optional ``update_ids`` (n,) for idempotent
        delivery. Returns the view report of :meth:`handle_update_sync` with
        ``accepted`` as a count and ``applied`` / ``duplicate`` as bool arrays;
        ``now`` as there.
        """
        region = check_region_name(region)
        now = self._check_now(now)
        if region not in self._topology.born or self._dim is None:
            # first touch: validate here, before a region or a dimension is created
            ids = as_agent_ids(agent_ids)
            n = len(ids)
            checked = check_feature_matrix(features, self._dim, "features", copy=False)
            if checked.n != n:
                raise DimensionMismatchError(f"features has {checked.n} rows, expected {n}")
            as_finite_vector(timestamps, n, "timestamps")
            as_finite_vector(anomaly_scores, n, "anomaly_scores")
            if update_ids is not None:
                as_agent_ids(update_ids, n)
            agent_ids, features = ids, checked        # checked: the replicas take it as it is
        outcome, now = self._write(region, agent_ids, timestamps, features, anomaly_scores, update_ids, now)
        report = self._view_report(region, now)      # the write's reading: the clock is read once
        report.update({
            "accepted": int(outcome.applied.shape[0]),
            "applied": outcome.applied,
            "duplicate": outcome.duplicate,
        })
        return report

    async def handle_updates_many_async(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Async twin of :meth:`handle_updates_many`."""
        return self.handle_updates_many(*args, **kwargs)

    def _write(self, region: str, agent_ids, timestamps, features, scores, update_ids,
               now: float | None = None) -> tuple[WriteOutcome, float]:
        """Validate and apply one region's batch; ``now``: the caller's clock reading (None: read it).

        Returns the outcome and the processing time the write used (its view's time).
        """
        new_region = region not in self._topology.born
        self._require_quorum(region, new_region)
        if self._dim is None:
            dim = features.dim if type(features) is CheckedFeatures else np.asarray(features).shape[1]
            replica = RegionReplica(region, dim)  # validates the batch before anything is created
            replica.update_many(agent_ids, timestamps, features, scores, update_ids)
        elif new_region:
            RegionReplica(region, self._dim).update_many(agent_ids, timestamps, features, scores, update_ids)
        # The reading is taken here but kept (the high-water mark moved) only once the batch is
        # accepted: an existing region's batch is validated by its replica's update_many below,
        # and a refused batch must not move the resolver's time (every later confidence factor).
        now = self.read_clock() if now is None else max(now, self._time.latest)
        if new_region:
            self._add_region(region, now)
        if self._dim is None:
            self._set_dim(dim)
        replica = self._replicas[region]
        outcome = replica.update_many(agent_ids, timestamps, features, scores, update_ids, now=now)
        self._after_write(region, replica, outcome, now)
        return outcome, now

    def _after_write(self, region: str, replica: RegionReplica, outcome: WriteOutcome, now: float) -> None:
        """An accepted write of ``region`` at ``now``: the clock's high-water mark, STRONG's
        write-through to the reachable replicas, and an automatic sync when one is due."""
        self._time.advance(now)
        if self.consistency_model is ConsistencyModel.STRONG and outcome.changed_rows.shape[0]:
            entries = replica.registers.entries(outcome.changed_rows)
            for peer in self._topology.reachable(region):
                if peer != region:
                    self._replicas[peer].merge_registers(entries)
        # Only after an accepted write: a rejected call changes nothing, not even by syncing.
        if self.auto_sync_seconds is not None and now - self._last_sync >= self.auto_sync_seconds:
            self.sync(now=now)
