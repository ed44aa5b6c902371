"""The Ray backend: regions, the root aggregator and evidence partitions as actors.

Layout (one driver, a few long-lived actors; never one actor per agent)
-----------------------------------------------------------------------
* ``RegionShard`` actors: each hosts one or more regions (one actor per
  region, or ``region_workers`` actors with the regions packed round-robin;
  a region first seen in a round gets its place then and is born at its
  first write, as in process): its agents' part of the tree (a
  :class:`HierarchicalStatisticalTree` of those agents, with their cohorts)
  and each hosted region's CAP replica.
* one ``RootAggregator`` actor: merges the shards' population and cohort
  moments (Chan's k-way formula, :meth:`Moments.merge_all`) into the
  population's, and hands them back for scoring: every agent is scored
  leave-one-out against the whole population and its cohorts, as in process.
* ``EvidenceShard`` actors (``evidence_partitions``): the exact evidence of the
  agents hashed to each (int ids: ``id mod P``; others: CRC-32 of ``str(id)``).

A round (``DistributedBehavioralDetector(backend="ray").process_round``,
:mod:`swarmguard.engines.ray_rounds`): the engine
splits the batch by shard and puts each part into the object store (arrays,
never per-agent objects); shards update their trees and return their moments;
the root merges them (``scoring="robust"``: shards judge their rows against the
merged population, count the kept ones in their trimmed moments, the root merges
those too); shards score their rows, once (``calibrate=True``: the driver takes
the round's scale, the median of every shard's distances, and the shards
calibrate the rows they scored against its score null, recombining the levels,
:mod:`~swarmguard.engines.score_calibration`; the driver admits the round's
scores into the null after the cut; ``window_rounds``: every shard opens the round, the root merges the windowed
moments, rows are scored against them); the driver applies the
false-discovery cut over all rows (the in-process rule,
:func:`~swarmguard.structures.significance.significance_cut`), drives the CAP writes and anti-entropy in
the in-process resolver's order (under STRONG: refused up front without a
majority, written through to the reachable replicas), and hands the scored round back to the detector, whose decision rule routes
its own evidence to the partitions (checked by every partition before any
adds) and reads the two-step consensus (per-source outlier counts from every
partition, flags on the driver by the consensus's peeling,
:func:`~swarmguard.structures.robust_fusion.peel_untrusted`, per-agent results
from the partitions). The guide's per-item ``process_agent_behavior`` is a
one-row round.

Same answers
------------
Exact parts are bit-identical to the in-process engine (evidence sums,
per-agent fusion, CAP registers and version vectors, confidence factors).
Moments are merged in another order than in the in-process tree, so they
agree to rounding (~1e-15 relative); decisions (isolation, anomaly flags,
consensus reached, flagged sources) agree unless a score lies within rounding
of its cut. ``tests/engines`` checks both on a seeded simulation.

Fault tolerance
---------------
Actors are created with ``max_restarts``; a restarted actor re-runs its
constructor (empty). Every call carries the number of state-changing calls the
driver has seen the shard apply; a shard that disagrees raises
:class:`StaleShardError`. The driver keeps, per shard, a checkpoint (the
shard's values, ``to_dict`` / ``export_evidence``, fetched from the actor and
put again by the driver, so that the copy lives on the driver's node) taken
every ``checkpoint_every`` rounds' worth of rows, and a replay log of the
state-changing calls since (their arguments
are object refs, so replay ships nothing new). On an actor error or a stale
shard, it waits for the restart, restores the checkpoint, replays the log and
re-issues the call. With ``checkpoint_dir`` each checkpoint is also written to
disk (:mod:`swarmguard.engines.checkpoint_files`) and every acknowledged call
after it is logged there, and :meth:`RayDistributedBehavioralDetector.resume`
rebuilds a lost driver from both.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..api.detector import DistributedBehavioralDetector
from ..api.detector_settings import DetectorSettings
from ..api.part_settings import (
    validate_cap_settings,
    validate_consensus_settings,
    validate_protocol_settings,
    validate_tree_settings,
)
from ..errors import (
    CheckpointError,
    InvalidInputError,
    InvalidTypeError,
    SwarmGuardError,
)
from ..locking import synchronized
from ..structures.score_null import ScoreNull
from ..structures.scoring_modes import SKETCH_MODES, TRIMMED_MODES
from ..structures.topology import MonotonicClock, RegionTopology
from ..validation import check_finite_float, check_positive_int
from ..values.id_index import IdIndex
from ..values.moments import population_statistics
from .checkpoint_files import (
    generations,
    read_latest,
    read_records,
)
from .ray_durability import RayDurability
from .ray_evidence import RayEvidence
from .ray_log import round_record
from .ray_regions import RayRegions
from .ray_rounds import RayRounds
from .ray_system import (
    ActorSystem,
    Handle,
    LinkFaults,
    import_ray,
)
from .ray_views import RayCapView, RayConsensusView, RayProtocolView, RayTreeView
from .shards import EvidenceShard, RootAggregator

__all__ = ["RayEngine", "RayDistributedBehavioralDetector", "import_ray", "LinkFaults"]

T = TypeVar("T")

# What the log of calls records of each kind of the detector's calls (JSON and arrays).
_RECORDS: dict[str, Callable[..., tuple[dict[str, Any], dict[str, np.ndarray]]]] = {
    "round": round_record,
    "item": round_record,
    "create_evidence": lambda: ({}, {}),
}


class RayEngine(RayRounds, RayRegions, RayEvidence, RayDurability):
    """The Ray engine (:class:`~swarmguard.api.engine.Engine`): regions, the root aggregator and
    evidence partitions as actors.

    Driven by ``DistributedBehavioralDetector(backend="ray", ...)``: the same
    parameters (:class:`~swarmguard.api.detector_settings.DetectorSettings`),
    the detector's decision rule, the guide's per-item call (a one-row round),
    and the same answers. Regions may be listed up front (``regions``) or join
    when they first write, as in process.

    Ray's own parameters: ``address`` (a running cluster, ``"auto"`` for the
    local one; default a local ``ray.init(num_cpus=2)`` unless Ray is already
    initialised), ``region_workers`` (region actors; default one per region,
    else regions are packed onto that many actors round-robin),
    ``evidence_partitions``, ``checkpoint_every`` (rounds), ``max_restarts``,
    ``actor_cpus`` (CPUs each actor reserves; 0 lets many actors share a
    small machine) and ``checkpoint_dir`` (also write checkpoints there, for
    :meth:`RayDistributedBehavioralDetector.resume`). The engine's own
    operations (``checkpoint``, ``replica``, ``regions``, ``faults``,
    ``confidence_factor``, ``evidence_fingerprint``, ...) are reached through
    the detector.
    """

    items_as_rounds = True
    OPTIONS = ("address", "region_workers", "evidence_partitions", "checkpoint_every", "max_restarts",
               "actor_cpus", "checkpoint_dir")

    def __init__(self, settings: DetectorSettings, *, address: str | None = None, region_workers: int | None = None,
                 evidence_partitions: int = 2, checkpoint_every: int = 5, max_restarts: int = 3,
                 actor_cpus: float = 0, checkpoint_dir: str | Path | None = None):
        s = settings
        self.settings = s
        self.det: Any = None                  # the detector driving this engine (bind)
        self._own_clock = s.clock or time.time
        # Every parameter is checked here, on the driver, before Ray starts, by the rules
        # (and in the order) the in-process engine's parts check them with.
        validate_tree_settings(branching_factor=s.branching_factor, feature_dimensions=s.feature_dimensions,
                               window_rounds=s.window_rounds)
        rules = validate_protocol_settings(significance_level=s.significance_level, fdr=s.fdr,
                                           shrinkage=s.shrinkage, warm_up=s.warm_up, score_levels=s.score_levels,
                                           scoring=s.scoring, calibrate=s.calibrate)
        ref = validate_consensus_settings(byzantine_threshold=s.byzantine_threshold, partition_size=s.partition_size,
                                          prior_probability=s.prior_probability, trusted_sources=[s.node_id],
                                          probation_evidence=s.probation_evidence)
        links = validate_cap_settings(consistency_model=s.consistency_model,
                                      max_staleness_seconds=s.max_staleness_seconds,
                                      confidence_decay_rate=s.confidence_decay_rate, clock=s.clock, regions=s.regions,
                                      auto_sync_seconds=s.auto_sync_seconds)
        # What the Ray engine cannot do yet is refused after every setting is checked, so that a
        # bad setting gets the in-process engine's error whatever else is asked for.
        if rules.scoring in SKETCH_MODES:
            # the shards' tail sketches would need merging on the driver (KLL merges change the
            # sketch): refused rather than answering differently from in process
            raise InvalidInputError(f"scoring={s.scoring!r} is not available on the ray backend yet")
        if s.window_rounds is not None and (rules.scoring in TRIMMED_MODES or rules.calibrate):
            # trimmed moments drawn from the window, and a null of windowed scores, are not
            # merged yet: refused rather than answering differently from in process
            what = f"scoring={s.scoring!r}" if rules.scoring in TRIMMED_MODES else "calibrate=True"
            raise InvalidInputError(f"window_rounds with {what} is not available on the ray backend yet")
        self.region_workers = None if region_workers is None else check_positive_int(region_workers, "region_workers")
        partitions = check_positive_int(evidence_partitions, "evidence_partitions")
        self.checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
        max_restarts = check_positive_int(max_restarts, "max_restarts", minimum=-1)
        actor_cpus = check_finite_float(actor_cpus, "actor_cpus")
        if actor_cpus < 0:
            raise InvalidInputError("actor_cpus must be >= 0")
        if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise InvalidTypeError(f"checkpoint_dir must be a path, got {checkpoint_dir!r}")
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        # continue the folder's numbering: a generation on disk is never written into
        self._generation = max(generations(self.checkpoint_dir), default=0) if self.checkpoint_dir else 0
        self._wal_generation: int | None = None   # the on-disk checkpoint the log of calls continues
        self._chain_broken = False
        self._logging = False
        self._checkpoint_due = False
        self._ray_options = {"region_workers": self.region_workers, "evidence_partitions": partitions,
                             "checkpoint_every": self.checkpoint_every, "max_restarts": max_restarts,
                             "actor_cpus": actor_cpus}
        ray = import_ray()
        self.ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            if address is None:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            self._owns_ray = True
        self.consistency_model = s.consistency_model
        self.significance_level = rules.significance_level
        self.fdr = s.fdr
        self.shrinkage = s.shrinkage
        self.score_levels = s.score_levels
        self._dim = s.feature_dimensions
        self.max_staleness_seconds = links.max_staleness_seconds
        self.confidence_decay_rate = links.confidence_decay_rate
        self.auto_sync_seconds = s.auto_sync_seconds
        self.faults = LinkFaults(on_change=self._set_faults)
        self._time = MonotonicClock(self._source_clock)     # the detector's clock: recorded while logged
        self._start = self._now()
        self._last_sync = self._start
        # Regions: declared ones are born at the start, the others when they first write.
        self._topology = RegionTopology(declared=links.regions)   # born: announced to the region actors
        self._shard_of_region: dict[str, int] = {}
        self._evidence_total = 0
        self._rounds = 0
        self._rows_since_checkpoint = 0
        # Routing: each agent's region actor, by the one id index (row -> shard).
        self._routes = IdIndex()
        self._route_shard = np.zeros(0, dtype=np.int64)
        self._route_kind: str | None = None     # "i" or "U": one kind of agent id per engine
        self.sys = ActorSystem(ray)
        self._actor_options = {"max_restarts": max_restarts, "max_task_retries": 0, "num_cpus": actor_cpus}
        self.region_shards: list[Handle] = []
        self.root = Handle("root", ray.remote(RootAggregator).options(**self._actor_options).remote())
        ev_cls = ray.remote(EvidenceShard).options(**self._actor_options)
        self.evidence_shards = [
            Handle(f"evidence{p}", ev_cls.remote(
                byzantine_threshold=s.byzantine_threshold, partition_size=s.partition_size,
                prior_probability=s.prior_probability, trusted_sources=[s.node_id],
                probation_evidence=s.probation_evidence))
            for p in range(partitions)]
        self._false_flag_rate = ref.false_flag_rate
        self._trusted = {s.node_id}
        self._probation = ref.probation_evidence
        self._founding_quorum = ref.founding_quorum
        # The founding sources over all partitions (None: the founding lasts), as in process:
        # every source known after the first call after which an untrusted one has the count
        # and founding_quorum untrusted ones have been seen.
        self._founders: list[Hashable] | None = None
        self._last_merge: dict[str, Any] | None = None
        # robust scoring: the shards keep trimmed moments judged against the merged population
        self._trimmed = rules.scoring in TRIMMED_MODES
        self._last_trimmed: dict[str, Any] | None = None     # the root's merge of the shards' trimmed moments
        # calibrate=True: the population's score null, on the driver (which holds every row's score
        # for the false-discovery cut already, and the median of every shard's distances a relative
        # null needs); the shards get it, as bytes, with that scale, to calibrate the rows they scored
        # (relative with the plain moments, as in process: swarmguard.structures.score_null)
        self._null: ScoreNull | None = (ScoreNull(relative=rules.scoring == "mahalanobis") if rules.calibrate
                                        else None)
        # window_rounds: every shard's tree keeps its members' windowed moments, opens a round with
        # every batch (shards without rows too), and the root merges the windowed moments
        self._window_rounds = s.window_rounds
        self._last_window: dict[str, Any] | None = None
        self._summaries: dict[int, dict[str, Any]] = {}   # each region shard's moments, as of its last tree change
        self._last_consensus: dict[str, Any] | None = None
        self.last_round_seconds: dict[str, float] = {}   # wall time of each phase of the last round
        self.tree = RayTreeView(self)
        self.cap_resolver = RayCapView(self)
        self.consensus = RayConsensusView(self)
        self.protocol = RayProtocolView(self)

    def bind(self, detector: Any) -> None:
        """Be driven by ``detector``: its lock, its clock (read and, with ``checkpoint_dir``,
        recorded), its evidence numbers, its rounds (replayed from the log of calls)."""
        self.det = detector
        self._lock = detector._lock

    def _source_clock(self) -> Any:
        return (self._own_clock if self.det is None else self.det.clock)()

    @property
    def feature_dimensions(self) -> int | None:
        return self._dim

    @property
    def regions(self) -> list[str]:
        """Every region known so far (declared or seen), in birth order."""
        return self._topology.names

    # ------------------------------------------------------------------ plumbing
    def _now(self) -> float:
        return self._time.now()

    def processing_time(self) -> float:
        """The clock's reading as the next write would use it, changing nothing (as the
        in-process resolver's ``read_clock``: the same :class:`MonotonicClock`)."""
        return self._time.read()

    def shares_clock(self, detector: Any) -> bool:
        return True       # the driver's clock stamps observations and is the processing clock

    @property
    def _latest(self) -> float:
        """The driver's clock high-water mark (the latest reading a write or a view took)."""
        return self._time.latest

    @property
    def warm_up(self) -> int:
        """Population size below which nobody is flagged (as the in-process protocol's)."""
        w = self.settings.warm_up
        return w if w is not None else min(1000, 100 * (self._dim or 10))

    @property
    def handles(self) -> list[Handle]:
        return [*self.region_shards, self.root, *self.evidence_shards]

    def _gather(self, calls: list[tuple[Handle, str, tuple, bool]]) -> list[Any]:
        """Submit one call per shard, then collect them, recovering failed shards."""
        pending = [self.sys.submit(h, m, *a, mutating=mut) for h, m, a, mut in calls]
        return [self.sys.get(h, p, m, *a)[0] for (h, m, a, _), p in zip(calls, pending, strict=True)]

    @synchronized
    def close(self) -> None:
        """Kill the actors (and shut Ray down if this detector started it)."""
        for h in self.handles:
            try:
                self.ray.kill(h.actor, no_restart=True)
            except Exception:   # noqa: BLE001 - already gone
                pass
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the round
    def run(self, kind: str, args: dict[str, Any], call: Callable[[], T]) -> T:
        """A state-changing call of the detector's; with ``checkpoint_dir`` logged (:meth:`_logged`)."""
        return self._logged(kind, lambda: _RECORDS[kind](**args), call)

    @synchronized
    def global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        """Population statistics from the root aggregator's last merge."""
        m = self._last_merge["population"] if self._last_merge else None
        if m is None or m.count == 0:
            dim = self.feature_dimensions or 0
            return {"cohort": (), **population_statistics(0, np.zeros(dim), np.zeros((dim, dim)), ddof)}
        return {"cohort": (), **population_statistics(m.count, m.mean, m.m2, ddof), "moments": m}

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of each actor process (MB)."""
        return {h.name: self.ray.get(h.actor.peak_memory_mb.remote()) for h in self.handles}


class RayDistributedBehavioralDetector(DistributedBehavioralDetector):
    """``DistributedBehavioralDetector(backend="ray", ...)`` under the name code written for the Ray
    backend uses, with :meth:`resume`: a detector whose engine is :class:`RayEngine`.

    ``DistributedBehavioralDetector(backend="ray")`` builds the same detector
    (of the base class); this subclass only defaults ``backend`` to ``"ray"``.
    """

    def __init__(self, settings: DetectorSettings | None = None, /, *, backend: str = "ray", **params: Any):
        if backend != "ray":
            raise InvalidInputError(f"RayDistributedBehavioralDetector is the Ray backend, got backend={backend!r}")
        super().__init__(settings, backend="ray", **params)

    @classmethod
    def resume(cls, checkpoint_dir: str | Path, *, clock: Any = None, address: str | None = None,
               **ray_options: Any) -> RayDistributedBehavioralDetector:
        """A Ray detector in the state of the newest checkpoint written to ``checkpoint_dir``.

        For a driver that was lost (the actors die with it): new actors are
        started and restored from the files, and the calls logged after that
        checkpoint are applied again (with the clock readings they made), so
        nothing acknowledged is lost. The settings
        come from the checkpoint, but for ``clock`` (a function: pass it
        again); Ray's options may be overridden but for ``evidence_partitions``
        (the evidence is hashed to the partitions).
        """
        own = {"region_workers", "checkpoint_every", "max_restarts", "actor_cpus", "evidence_partitions"}
        unknown = sorted(set(ray_options) - own)
        if unknown:
            raise InvalidTypeError(f"resume takes Ray's options {sorted(own)} (the settings are the "
                                   f"checkpoint's), got {unknown}")
        generation, d, arrays, actors = read_latest(checkpoint_dir)
        if not isinstance(d, dict) or d.get("format") != RayEngine._FORMAT:
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} is not format {RayEngine._FORMAT}")
        try:
            saved = dict(d["ray_options"])
            settings = DetectorSettings(**d["settings"], clock=clock)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} is damaged: {exc!r}") from exc
        opts = {**saved, **ray_options}
        if opts["evidence_partitions"] != saved["evidence_partitions"]:
            raise InvalidInputError(f"evidence_partitions must be the checkpoint's ({saved['evidence_partitions']})")
        det = cls(settings, address=address, checkpoint_dir=checkpoint_dir, **opts)
        engine = det.engine
        try:
            engine._restore_from(d, arrays, actors)
        except (KeyError, ValueError, TypeError, SwarmGuardError) as exc:
            det.close()
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} is incomplete or damaged: {exc!r}") from exc
        engine._generation = max(generation, engine._generation)
        try:
            engine._replay(read_records(checkpoint_dir, generation))     # the calls acknowledged after it
        except (KeyError, ValueError, TypeError, StopIteration, SwarmGuardError) as exc:
            det.close()
            raise CheckpointError(f"the log of calls in {checkpoint_dir} cannot be replayed: {exc!r}") from exc
        engine._wal_generation = generation              # the fallback of the fresh generation below
        engine._checkpoint(during_round=False)           # a fresh generation; the log starts again
        return det


RayDistributedBehavioralDetector.__signature__ = inspect.Signature(   # help() lists Ray's options and the settings
    [inspect.Parameter("settings", inspect.Parameter.POSITIONAL_ONLY, default=None),
     *[p for name, p in inspect.signature(RayEngine.__init__).parameters.items() if name not in ("self", "settings")],
     *DetectorSettings.signature_parameters()])
