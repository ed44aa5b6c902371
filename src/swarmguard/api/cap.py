"""Statistical CAP resolution: available through partitions, convergent on heal.

The guide's Solution 3. Each ``source_partition`` (a region) owns a
:class:`~swarmguard.structures.replica.RegionReplica`. A replica accepts its own
region's updates at once and sees the other regions as last received; replicas
exchange deltas by anti-entropy :meth:`StatisticalCAPResolver.sync` whenever the
links between them deliver. In-process the resolver hosts every replica and
simulates the links: :meth:`~StatisticalCAPResolver.partition` cuts them into
groups, :meth:`~StatisticalCAPResolver.heal` restores them.

Confidence factor
-----------------
For region r's view, with ``N_p`` the agents of home region p in that view,
``w_p = N_p / sum_q N_q`` and ``age_p`` the seconds since r's view of p was last
known current (0 for r itself: a region's own part is never stale)::

    c_p = 1                                   if age_p <= max_staleness_seconds
    c_p = exp(-confidence_decay_rate * (age_p - max_staleness_seconds))   otherwise
    confidence_factor = sum_p w_p * c_p       (1.0 for an empty view)

It lies in (0, 1] (clamped below at the smallest positive float so that an
underflowing ``exp`` cannot make it 0) and, with a clock that never runs
backwards, it never increases unless new information arrives (an update, or a
sync). The resolver guards the clock: readings that go backwards are ignored.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
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
from ..values.npz import (
    dict_from_bytes,
    dict_to_bytes,
    float_list,
    float_scalar,
    int_list,
    int_scalar,
    str_list,
)
from ..values.version_vector import check_region_name

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


_FORMAT_VERSION = 1


class ConsistencyModel(Enum):
    """How the resolver trades consistency for availability.

    ``STATISTICAL``: always accept; report a confidence factor and widened bounds.
    ``STRONG``: accept only where the region reaches a majority of regions (CP);
    the write is applied at every reachable replica before the call returns.
    ``EVENTUAL``: always accept; report no confidence and no bounds.
    """

    STATISTICAL = "statistical"
    STRONG = "strong"
    EVENTUAL = "eventual"

    @classmethod
    def coerce(cls, value: Any) -> ConsistencyModel:
        """Accept a member or its name/value as text (``"strong"``)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            for member in cls:
                if value.lower() in (member.value, member.name.lower()):
                    return member
        raise InvalidInputError(
            f"unknown consistency model {value!r}; use one of "
            + ", ".join(f"ConsistencyModel.{m.name}" for m in cls)
        )


@dataclass(frozen=True)
class StatisticalUpdate:
    """One agent observation, as the guide builds it.

    ``update_id`` and ``agent_id`` are ints or strings; ``timestamp`` is the
    observation's time (it orders writes: last writer wins); ``source_partition``
    is the region that accepts the update.
    """

    update_id: Hashable
    agent_id: Hashable
    timestamp: float
    feature_vector: Any
    anomaly_score: float
    source_partition: str


@dataclass(frozen=True)
class SyncReport:
    """What one :meth:`StatisticalCAPResolver.sync` round shipped."""

    pairs: int
    rows_shipped: int
    bytes_shipped: int
    seconds: float


def compute_confidence_factor(
    counts: Mapping[str, int], ages: Mapping[str, float], own_region: str,
    max_staleness_seconds: float, confidence_decay_rate: float,
) -> float:
    """The confidence factor of one view (see the module docstring).

    Examples
    --------
    >>> compute_confidence_factor({"eu": 3, "us": 1}, {"us": 15.0}, "eu", 5.0, 0.1)
    0.8419698602928606
    >>> compute_confidence_factor({}, {}, "eu", 5.0, 0.1)
    1.0
    """
    total = sum(counts.values())
    if total == 0:
        return 1.0
    terms = []
    for region, n in counts.items():
        if n <= 0:
            continue
        # a region missing from ``ages`` was never heard from: as stale as can be
        age = 0.0 if region == own_region else ages.get(region, math.inf)
        c = 1.0 if age <= max_staleness_seconds else math.exp(
            -confidence_decay_rate * (age - max_staleness_seconds)
        )
        terms.append(n * c)
    return min(1.0, max(math.fsum(terms) / total, sys.float_info.min))


def widened_threshold(threshold: float, confidence_factor: float, *, squared: bool = False) -> float:
    """Detection threshold widened for a view with the given confidence factor.

    The resolver widens confidence intervals by ``1 / confidence_factor`` (it
    treats a stale view as inflating the standard error by that factor); a
    detection threshold on the same scale (a z-score, a Mahalanobis distance)
    widens the same way, and a threshold on a *squared* scale (chi-square,
    squared Mahalanobis distance) by ``1 / confidence_factor**2``. This is the
    ``adjust_detection_thresholds`` step of the guide.

    >>> widened_threshold(3.0, 0.5)
    6.0
    >>> widened_threshold(9.0, 0.5, squared=True)
    36.0
    """
    threshold = check_finite_float(threshold, "threshold")
    cf = check_fraction(confidence_factor, "confidence_factor", low=0.0, low_open=True)
    return threshold / (cf * cf if squared else cf)


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


class StatisticalCAPResolver(Locked):
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

    # ------------------------------------------------------------------ links
    @synchronized
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network: only regions in the same group reach each other.

        Regions not named in any group are cut off from everyone. Names must be
        known and may appear once. Under STRONG the new groups sync at once (the
        clock read first: a clock gone bad refuses the call, the links unchanged).
        """
        mapping = self._topology.groups_for(groups)
        # Under STRONG the clock is read (and checked) before the links change: a clock gone
        # bad refuses the call with the links as they were.
        now = self.read_clock() if self.consistency_model is ConsistencyModel.STRONG else None
        self._topology.group_of = mapping
        if now is not None:
            self.sync(now=now)

    @synchronized
    def heal(self) -> None:
        """Restore every link (replicas converge at the next :meth:`sync`; at once under STRONG)."""
        now = self.read_clock() if self.consistency_model is ConsistencyModel.STRONG else None   # as partition
        self._topology.group_of = None
        if now is not None:
            self.sync(now=now)

    @property
    @synchronized
    def is_partitioned(self) -> bool:
        return self._topology.is_partitioned

    @synchronized
    def sync(self, *, now: float | None = None) -> SyncReport:
        """One anti-entropy round over every delivering link.

        For each ordered pair (a, b) that can reach each other, b sends its
        version vector and a ships what that vector does not cover. After one
        round every replica of a group holds the join of the group's states.
        ``now``: the clock reading to use (default: read the clock).
        """
        t0 = time.perf_counter()
        now = self._check_now(now)
        now = self._now(now)
        self._last_sync = now
        pairs = rows = nbytes = 0
        for a in self._topology.regions:
            if a not in self._replicas:
                continue
            src = self._replicas[a]
            for b in self._topology.reachable(a):
                if b == a or b not in self._replicas:
                    continue
                dst = self._replicas[b]
                src.acknowledge(b, dst.version)  # the request carries b's version vector
                delta = src.delta_for(b, now)
                src.acknowledge(b, dst.merge_delta(delta))
                pairs += 1
                rows += int(delta["registers.seq"].shape[0])
                nbytes += sum(v.nbytes for v in delta.values())
        return SyncReport(pairs, rows, nbytes, time.perf_counter() - t0)

    # ------------------------------------------------------------------ background sync
    async def run_background_sync(self, interval: float | None = None, *, rounds: int | None = None) -> None:
        """Call :meth:`sync` every ``interval`` seconds (forever, or ``rounds`` times)."""
        interval = self.sync_interval_seconds if interval is None else interval
        interval = check_finite_float(interval, "interval")
        if interval <= 0:
            raise InvalidInputError("the sync interval must be > 0")
        sleep = self._sleep
        if sleep is None:
            import asyncio

            sleep = asyncio.sleep
        done = 0
        while rounds is None or done < rounds:
            await sleep(interval)
            self.sync()
            done += 1

    def start_background_sync(self, interval: float | None = None) -> asyncio.Task:
        """Start :meth:`run_background_sync` as a task on the running loop."""
        if self._sync_task is None or self._sync_task.done():
            import asyncio

            self._sync_task = asyncio.get_running_loop().create_task(self.run_background_sync(interval))
        return self._sync_task

    async def stop_background_sync(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None and not task.done():
            import asyncio

            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> StatisticalCAPResolver:
        if self.sync_interval_seconds is not None:
            self.start_background_sync()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_background_sync()

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

    # ------------------------------------------------------------------ views
    @synchronized
    def confidence_factor(self, region: str) -> float:
        """The confidence factor of ``region``'s current view (module docstring)."""
        region = self._known(region)
        if region not in self._replicas:
            return 1.0
        replica = self._replicas[region]
        return compute_confidence_factor(
            replica.region_counts(), replica.ages(self._now()), region,
            self.max_staleness_seconds, self.confidence_decay_rate,
        )

    @synchronized
    def global_estimate(self, region: str) -> dict[str, Any]:
        """``region``'s current view: confidence, staleness and the global estimate.

        Under STRONG a region without a majority refuses (its view may be stale).
        """
        region = self._known(region)
        self._require_quorum(region)
        return self._view_report(region)

    def _view_confidence(self, region: str, now: float) -> float | None:
        """The ``confidence_factor`` of :meth:`_view_report` alone (None under EVENTUAL)."""
        if self.consistency_model is ConsistencyModel.EVENTUAL:
            return None
        replica = self._replicas.get(region)
        if replica is None:
            return compute_confidence_factor({}, {}, region, self.max_staleness_seconds, self.confidence_decay_rate)
        return compute_confidence_factor(replica.region_counts(), replica.ages(now), region,
                                         self.max_staleness_seconds, self.confidence_decay_rate)

    def _view_report(self, region: str, now: float | None = None) -> dict[str, Any]:
        now = self._now() if now is None else now
        replica = self._replicas.get(region)
        counts = replica.region_counts() if replica else {}
        ages = replica.ages(now) if replica else {}
        total = sum(counts.values())
        statistical = self.consistency_model is not ConsistencyModel.EVENTUAL
        cf = compute_confidence_factor(counts, ages, region, self.max_staleness_seconds,
                                       self.confidence_decay_rate) if statistical else None
        weighted = math.fsum(n * (0.0 if p == region else ages.get(p, math.inf)) for p, n in counts.items())
        estimate: dict[str, Any] = {"count": total, "region_counts": counts}
        d = self._dim
        # exact sums: identical registers give identical answers, bit for bit (docs/cap.md)
        m = replica._exact_total() if replica else None
        if m is not None and m.count:
            # Python floats, then one array each: the same IEEE operations as NumPy's, bit for bit
            mean = m._mean_list()
            estimate["mean"] = np.array(mean[:d])
            estimate["mean_anomaly_score"] = mean[d]
        else:
            estimate["mean"] = None
            estimate["mean_anomaly_score"] = None
        if statistical:
            estimate["confidence_level"] = self.confidence_level
            if m is not None and m.count >= 2:
                # the exact centred sum of squares, rounded once: never negative
                pairs = float((m.count - 1) * m.count)
                z = self._z
                half = [z * math.sqrt(v / pairs) / cf for v in m._m2_diagonal_list()]
                estimate["confidence_interval"] = (np.array([a - h for a, h in zip(mean[:d], half, strict=False)]),
                                                   np.array([a + h for a, h in zip(mean[:d], half, strict=False)]))
                estimate["anomaly_score_interval"] = (mean[d] - half[d], mean[d] + half[d])
            else:
                estimate["confidence_interval"] = None
                estimate["anomaly_score_interval"] = None
        return {
            "region": region,
            "consistency_model": self.consistency_model.value,
            "confidence_factor": cf,
            "staleness_seconds": max(ages.values(), default=0.0),
            "weighted_staleness_seconds": weighted / total if total else 0.0,
            "visible_regions": sorted(self._topology.reachable(region)),
            "global_estimate": estimate,
        }

    # ------------------------------------------------------------------ state
    @synchronized
    def to_dict(self) -> dict[str, np.ndarray]:
        """Every replica's checkpoint, prefixed by region, plus the topology (flat dict of arrays).

        Settings (model, staleness, clock) are not part of the state: pass them
        again to :meth:`from_dict`.
        """
        out: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT_VERSION),
            "regions": np.array(self._topology.regions, dtype=np.str_) if self._topology.regions else np.empty(0, "<U1"),
            "born": np.array([self._topology.born[r] for r in self._topology.regions], dtype=np.float64),
            "start": np.array(self._start),
            "dim": np.array(-1 if self._dim is None else self._dim),
            "groups": np.array([-1 if self._topology.group_of is None else self._topology.group_of[r] for r in self._topology.regions],
                               dtype=np.int64),
        }
        for name, replica in self._replicas.items():
            for k, v in replica.to_dict().items():
                out[f"replica[{name}].{k}"] = v
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], **settings: Any) -> StatisticalCAPResolver:
        """Restore a resolver from :meth:`to_dict` output; ``settings`` as for the constructor."""
        if "regions" in settings or "feature_dimensions" in settings:
            raise InvalidInputError("regions and feature_dimensions come from the state")
        if not isinstance(state, Mapping):
            raise InvalidTypeError(f"a resolver state is a mapping of arrays, got {type(state).__name__}")
        try:
            fmt = int_scalar(state["format"], "format", 0, 1 << 31)
            if fmt != _FORMAT_VERSION:
                raise InvalidInputError(f"unsupported resolver state format {fmt}")
            regions = [check_region_name(r) for r in str_list(state["regions"], "regions")]
            if len(set(regions)) != len(regions):
                raise InvalidInputError("resolver state repeats a region")
            born = float_list(state["born"], "born", len(regions))
            start = float_scalar(state["start"], "start")
            dim = int_scalar(state["dim"], "dim", -1, 1 << 31)
            groups = int_list(state["groups"], "groups", len(regions), -1, 1 << 31)
        except KeyError as exc:
            raise InvalidInputError(f"resolver state lacks field {exc}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(f"resolver state is malformed: {exc}") from exc
        if dim == 0:
            raise InvalidInputError("dim must be -1 (not known yet) or positive")
        if any(g < 0 for g in groups) and not all(g < 0 for g in groups):
            raise InvalidInputError("groups must be all -1 (no partition) or all >= 0")
        known = {"format", "regions", "born", "start", "dim", "groups"}
        prefixes = tuple(f"replica[{name}]." for name in regions) if dim > 0 else ()
        for key in state:
            if not isinstance(key, str) or (key not in known and not key.startswith(prefixes)):
                raise InvalidInputError(f"resolver state has an unexpected field {key!r}")
        replicas = {}
        if dim > 0:
            for name in regions:
                prefix = f"replica[{name}]."
                part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                replica = RegionReplica.from_dict(part, dedup_window=settings.get("dedup_window"))
                if replica.region != name or replica.dim != dim:
                    raise InvalidInputError(f"replica state for {name!r} does not match the resolver")
                replicas[name] = replica
        res = cls(**settings)
        res._start = start
        res._topology.regions = regions
        res._topology.born = dict(zip(regions, born, strict=True))
        res._dim = dim if dim > 0 else None
        res._replicas = replicas
        res._topology.group_of = None if all(g < 0 for g in groups) else dict(zip(regions, groups, strict=True))
        return res

    @synchronized
    def to_bytes(self) -> bytes:
        """Checkpoint as bytes (an ``.npz`` archive, no pickle)."""
        return dict_to_bytes(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, **settings: Any) -> StatisticalCAPResolver:
        state = dict_from_bytes(data, "StatisticalCAPResolver")
        return cls.from_dict(state, **settings)
