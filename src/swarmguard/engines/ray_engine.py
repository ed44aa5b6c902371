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

A round (:meth:`RayDistributedBehavioralDetector.process_round`): the driver
splits the batch by shard and puts each part into the object store (arrays,
never per-agent objects); shards update their trees and return their moments;
the root merges them; shards score their rows; the driver applies the
false-discovery cut over all rows, drives the CAP writes and anti-entropy in
the in-process resolver's order (under STRONG: refused up front without a
majority, written through to the reachable replicas), routes the detector's
own evidence to the partitions (checked by every partition before any adds)
and runs the two-step consensus (per-source outlier counts from every
partition, flags on the driver, per-agent results from the partitions). The
guide's per-item :meth:`~RayDistributedBehavioralDetector.process_agent_behavior`
is a one-row round.

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
import json
import math
import os
import time
import warnings
import zlib
from collections.abc import Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import chi2

from ..api.cap import (
    ConsistencyModel,
    StatisticalCAPResolver,
    UnknownRegionError,
    partition_groups,
    require_write_quorum,
)
from ..api.consensus import (
    StableBayesianConsensus,
    evidence_columns,
    founding_ends,
    voting_sources,
)
from ..api.detector import DistributedBehavioralDetector
from ..api.detector_settings import DetectorSettings
from ..api.evidence_types import BayesianEvidence, EvidenceType
from ..api.protocol import BehavioralDistributedProtocol, read_behavior
from ..api.tree import HierarchicalStatisticalTree
from ..errors import (
    CheckpointError,
    CheckpointWriteWarning,
    InvalidInputError,
    InvalidTypeError,
    MissingDependencyError,
    SwarmGuardError,
    UnknownAgentError,
)
from ..locking import synchronized
from ..structures.fdr import benjamini_hochberg
from ..structures.robust_fusion import SourceEvents, peel_sources
from ..validation import (
    as_feature_vector,
    check_cohort,
    check_finite_float,
    check_key,
    check_positive_int,
    unique_names,
)
from ..values.agent_index import as_wire_id_array, check_wire_id, positions_of
from ..values.version_vector import check_region_name
from .checkpoint_files import (
    append_record,
    evidence_state_from_arrays,
    evidence_state_to_arrays,
    generations,
    keep_only,
    keys_from_arrays,
    keys_to_arrays,
    read_latest,
    read_records,
    region_state_from_arrays,
    region_state_to_arrays,
    strings_from_arrays,
    strings_to_arrays,
    write_generation,
)
from .shards import EvidenceShard, RegionShard, RootAggregator, StaleShardError

__all__ = ["RayDistributedBehavioralDetector", "import_ray", "LinkFaults"]

def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a checkpoint")


_MAX_LOG = 20_000       # logged calls per actor before a checkpoint is due anyway (bounds replay)


def import_ray():
    """``import ray``, or a :class:`MissingDependencyError` saying how to get it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised where Ray is absent
        raise MissingDependencyError(
            "the Ray backend needs Ray: pip install 'swarmguard[ray]' (or pip install 'ray>=2.9')") from exc
    return ray


def _actor_errors(ray) -> tuple[type, ...]:
    ex = ray.exceptions
    errs = [ex.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError"):
        if hasattr(ex, name):
            errs.append(getattr(ex, name))
    return tuple(errs)


class LinkFaults:
    """Fault injection: the anti-entropy messages of chosen links are dropped.

    A link is an ordered pair ``(sender, receiver)`` of region names;
    :meth:`drop` with ``both_ways=True`` cuts both directions. A dropped
    message is never delivered (the receiver does not merge the delta, the
    sender gets no acknowledgement), exactly what a lossy network does.
    """

    def __init__(self, on_change: Any = None) -> None:
        self.dropped: set[tuple[str, str]] = set()
        self.messages_dropped = 0
        self._on_change = on_change      # the detector logs the new set (checkpoint_dir)

    @staticmethod
    def _links(links: Any) -> list[tuple[str, str]]:
        out = []
        for link in links:
            a, b = link
            if not (isinstance(a, str) and isinstance(b, str)):
                raise InvalidTypeError(f"a link is a pair of region names, got {link!r}")
            out.append((a, b))
        return out

    def drop(self, links: Iterable[tuple[str, str]], both_ways: bool = True) -> None:
        new = set(self.dropped)
        for a, b in self._links(links):
            new.add((a, b))
            if both_ways:
                new.add((b, a))
        self._set(new)

    def restore(self, links: Iterable[tuple[str, str]] | None = None, both_ways: bool = True) -> None:
        new = set() if links is None else set(self.dropped)
        for a, b in (() if links is None else self._links(links)):
            new.discard((a, b))
            if both_ways:
                new.discard((b, a))
        self._set(new)

    def _set(self, new: set[tuple[str, str]]) -> None:
        if self._on_change is None:
            self.dropped = new
        else:
            self._on_change(new)

    def delivers(self, sender: str, receiver: str) -> bool:
        if (sender, receiver) in self.dropped:
            self.messages_dropped += 1
            return False
        return True


class _Handle:
    """Driver-side record of one actor: its state counter, checkpoint and replay log."""

    def __init__(self, name: str, actor: Any):
        self.name = name
        self.actor = actor
        self.seq = 0                      # state-changing calls submitted
        self.ckpt_seq = 0
        self.ckpt_ref = None              # object ref of the last checkpoint's state (None: empty)
        self.log: list[tuple[int, str, tuple, int]] = []   # (expect, method, args, num_returns)
        self.recoveries = 0


class _ActorSystem:
    """Submits calls to shard actors, logs the state-changing ones, and recovers restarts."""

    def __init__(self, ray, recover_timeout: float = 120.0):
        self.ray = ray
        self.errors = _actor_errors(ray)
        self.recover_timeout = recover_timeout

    def submit(self, h: _Handle, method: str, *args: Any, mutating: bool = False, num_returns: int = 1):
        expect = h.seq
        if mutating:
            h.seq += 1
            h.log.append((expect, method, args, num_returns))
        return (expect, self._remote(h, method, expect, args, num_returns))

    def _remote(self, h: _Handle, method: str, expect: int, args: tuple, num_returns: int):
        fn = getattr(h.actor, method)
        if num_returns != 1:
            fn = fn.options(num_returns=num_returns)
        return fn.remote(expect, *args)

    def _is_stale(self, exc: BaseException) -> bool:
        if isinstance(exc, StaleShardError):
            return True
        cause = getattr(exc, "cause", None)
        return isinstance(cause, StaleShardError)

    def get(self, h: _Handle, pending, method: str, *args: Any, num_returns: int = 1, attempts: int = 5):
        """The value of a submitted call (the first return when several), recovering ``h`` if needed.

        Returns ``(value, refs)``; ``refs`` is the call's ref(s), re-issued after a recovery.
        """
        expect, refs = pending
        for _ in range(attempts):
            first = refs[0] if isinstance(refs, list) else refs
            try:
                return self.ray.get(first), refs
            except Exception as exc:       # noqa: BLE001 - sorted below
                if not (isinstance(exc, self.errors) or self._is_stale(exc)):
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, SwarmGuardError):
                        # A shard refused the input before changing anything (the driver checks
                        # first, so this is a safety net): forget the call, so that the shard and
                        # the driver's count agree and the next call does not look stale.
                        if h.log and h.log[-1][0] == expect and h.seq == expect + 1:
                            h.log.pop()
                            h.seq = expect
                        raise cause from None      # the typed error, not Ray's wrapper
                    raise
                self.recover(h, upto=expect)
                refs = self._remote(h, method, expect, args, num_returns)
        raise SwarmGuardError(f"actor {h.name} kept failing after {attempts} recoveries")

    def call(self, h: _Handle, method: str, *args: Any, mutating: bool = False, num_returns: int = 1):
        pending = self.submit(h, method, *args, mutating=mutating, num_returns=num_returns)
        value, refs = self.get(h, pending, method, *args, num_returns=num_returns)
        return (value, refs) if num_returns != 1 else value

    def wait_alive(self, h: _Handle) -> None:
        deadline = time.monotonic() + self.recover_timeout
        while True:
            try:
                self.ray.get(h.actor.ping.remote(), timeout=10)
                return
            except Exception as exc:       # noqa: BLE001
                if time.monotonic() > deadline:
                    raise SwarmGuardError(f"actor {h.name} did not come back: {exc}") from exc
                time.sleep(0.1)

    def recover(self, h: _Handle, upto: int) -> None:
        """Restore ``h``'s actor to the state after its first ``upto`` state-changing calls."""
        ray = self.ray
        for _ in range(5):
            try:
                self.wait_alive(h)
                ray.get(h.actor.restore.remote(h.ckpt_seq, h.ckpt_ref))
                for expect, method, args, nr in h.log:
                    if expect >= upto:
                        break
                    refs = self._remote(h, method, expect, args, nr)
                    ray.get(refs[0] if isinstance(refs, list) else refs)
                h.recoveries += 1
                return
            except Exception as exc:       # noqa: BLE001 - killed again while recovering: retry
                if not (isinstance(exc, self.errors) or self._is_stale(exc)):
                    raise
        raise SwarmGuardError(f"could not recover actor {h.name}")

    def checkpoint(self, h: _Handle) -> Any:
        """Take ``h``'s state, keep it in the driver's object store, and return it.

        The actor's reply lives on the actor's node; a copy put by the driver
        lives on the driver's, so a checkpoint survives the loss of the node
        whose actor it restores.
        """
        (seq, refs) = self.call(h, "checkpoint", num_returns=2)
        state = self.ray.get(refs[1])
        h.ckpt_seq, h.ckpt_ref = seq, self.ray.put(state)
        h.log = [e for e in h.log if e[0] >= seq]
        return state

    def restore(self, h: _Handle, seq: int, state: Any) -> None:
        """Start ``h``'s (new) actor from a checkpoint taken elsewhere (:meth:`~RayDistributedBehavioralDetector.resume`)."""
        h.ckpt_seq, h.ckpt_ref = seq, self.ray.put(state)
        h.seq, h.log = seq, []
        self.ray.get(h.actor.restore.remote(seq, h.ckpt_ref))


def _validate_ids(agent_ids: Any, n: int | None = None) -> np.ndarray:
    """The replicas' id rule (:func:`~swarmguard.values.agent_index.as_wire_id_array`), one kind per round.

    An int64 array or a NumPy string array (object arrays of ``str``, a pandas
    column, become one); a batch mixing ints and strings is refused.
    """
    ids = as_wire_id_array(agent_ids, n, "agent_ids")
    if ids.dtype == object:
        raise InvalidTypeError("the Ray backend takes int or str agent ids, not both in one batch "
                               "(a NumPy array is fastest)")
    return ids


def _hash_partition(keys: Any, parts: int) -> np.ndarray:
    """Each (normalised) agent id's evidence partition: ``id mod P`` for ints, CRC-32 of ``str(id)`` else."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        return np.mod(keys.astype(np.int64), parts)
    items = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    return np.fromiter(((int(k) % parts) if isinstance(k, (int, np.integer)) and not isinstance(k, bool)
                        else zlib.crc32(str(k).encode()) % parts for k in items),
                       dtype=np.int64, count=len(items))


def _take(col: Any, rows: np.ndarray):
    if isinstance(col, (str, EvidenceType)):
        return col
    if isinstance(col, np.ndarray):
        return col[rows]
    return [col[i] for i in rows.tolist()]


def _round_record(agent_ids: Any, X: Any, regions: Any, cohorts: Any, timestamp: Any,
                  fdr: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A round's arguments as JSON and arrays for the log of calls (after the round accepted them)."""
    ids = _validate_ids(agent_ids)
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    regions = np.full(n, regions) if isinstance(regions, str) else np.asarray(regions)
    arrays = {"X": X, **keys_to_arrays(ids if ids.dtype.kind in "iu" else ids.tolist(), "ids"),
              **strings_to_arrays(regions.tolist(), "regions")}
    meta: dict[str, Any] = {"timestamp": None if timestamp is None else float(timestamp),
                            "fdr": fdr if fdr is None or isinstance(fdr, str) else float(fdr)}
    if isinstance(cohorts, np.ndarray) and cohorts.dtype.kind == "U":
        arrays.update(strings_to_arrays(cohorts.tolist(), "cohorts"))
        meta["cohorts"] = "array"
    elif cohorts is None or isinstance(cohorts, str):
        meta["cohorts"] = {"one": cohorts}
    elif isinstance(cohorts, tuple):
        meta["cohorts"] = {"path": list(cohorts)}
    else:
        meta["cohorts"] = {"rows": [c if c is None or isinstance(c, str) else list(c) for c in cohorts]}
    return meta, arrays


def _round_args(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Inverse of :func:`_round_record`: keyword arguments of ``_round``."""
    ids = keys_from_arrays(arrays, "ids")
    c = meta["cohorts"]
    if c == "array":
        cohorts: Any = np.array(strings_from_arrays(arrays, "cohorts"))
    elif "one" in c:
        cohorts = c["one"]
    elif "path" in c:
        cohorts = tuple(c["path"])
    else:
        cohorts = [r if r is None or isinstance(r, str) else tuple(r) for r in c["rows"]]
    return {"agent_ids": ids if isinstance(ids, np.ndarray) else np.array(ids), "X": arrays["X"],
            "regions": np.array(strings_from_arrays(arrays, "regions")), "cohorts": cohorts,
            "timestamp": meta["timestamp"], "fdr": meta["fdr"]}


def _evidence_record(*columns: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A batch of evidence (normalised as the partitions received it) for the log of calls."""
    ev, ag, src, codes, lo, conf, ts = evidence_columns(columns[0], columns[1], columns[6], columns[2],
                                                        columns[3], columns[4], columns[5])
    names = [t.value for t in EvidenceType]
    return {}, evidence_state_to_arrays({"evidence_ids": ev, "agent_ids": ag, "source_nodes": src,
                                         "evidence_types": [names[int(k)] for k in codes], "log_odds": lo,
                                         "confidences": conf, "timestamps": ts})


class RayDistributedBehavioralDetector(DistributedBehavioralDetector):
    """:class:`~swarmguard.api.detector.DistributedBehavioralDetector` on a Ray cluster.

    Made by ``DistributedBehavioralDetector(backend="ray", ...)`` (or this class
    directly): the same parameters (:class:`~swarmguard.api.detector_settings.DetectorSettings`),
    the same decision rule, :meth:`process_round`, the guide's per-item
    :meth:`process_agent_behavior`, and the same answers. Regions may be listed
    up front (``regions``) or join when they first write, as in process.

    Ray's own parameters: ``address`` (a running cluster, ``"auto"`` for the
    local one; default a local ``ray.init(num_cpus=2)`` unless Ray is already
    initialised), ``region_workers`` (region actors; default one per region,
    else regions are packed onto that many actors round-robin),
    ``evidence_partitions``, ``checkpoint_every`` (rounds), ``max_restarts``,
    ``actor_cpus`` (CPUs each actor reserves; 0 lets many actors share a
    small machine) and ``checkpoint_dir`` (also write checkpoints there, for
    :meth:`resume`).
    """

    def __init__(self, settings: DetectorSettings | None = None, /, *, backend: str = "ray",
                 address: str | None = None, region_workers: int | None = None, evidence_partitions: int = 2,
                 checkpoint_every: int = 5, max_restarts: int = 3, actor_cpus: float = 0,
                 checkpoint_dir: str | Path | None = None, **params: Any):
        if backend != "ray":
            raise InvalidInputError(f"RayDistributedBehavioralDetector is the Ray backend, got backend={backend!r}")
        s = self._apply_settings(DetectorSettings.from_params(settings, params))
        # Every parameter is checked here, on the driver, before Ray starts: the
        # in-process parts are built empty (cheap) for their validation and defaults.
        self._shape = HierarchicalStatisticalTree(branching_factor=s.branching_factor,
                                                  feature_dimensions=s.feature_dimensions)
        self._rules = BehavioralDistributedProtocol(self._shape, significance_level=s.significance_level,
                                                    fdr=s.fdr, shrinkage=s.shrinkage, warm_up=s.warm_up,
                                                    score_levels=s.score_levels)
        ref = StableBayesianConsensus(byzantine_threshold=s.byzantine_threshold, partition_size=s.partition_size,
                                      prior_probability=s.prior_probability, trusted_sources=[s.node_id],
                                      probation_evidence=s.probation_evidence)
        links = StatisticalCAPResolver(consistency_model=s.consistency_model,
                                       max_staleness_seconds=s.max_staleness_seconds,
                                       confidence_decay_rate=s.confidence_decay_rate, regions=s.regions,
                                       auto_sync_seconds=s.auto_sync_seconds)
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
        self.significance_level = self._rules.significance_level
        self.fdr = s.fdr
        self.shrinkage = s.shrinkage
        self.score_levels = s.score_levels
        self._dim = s.feature_dimensions
        self.max_staleness_seconds = links.max_staleness_seconds
        self.confidence_decay_rate = links.confidence_decay_rate
        self.auto_sync_seconds = s.auto_sync_seconds
        self.faults = LinkFaults(on_change=self._set_faults)
        self._latest = -math.inf
        self._start = self._now()
        self._last_sync = self._start
        # Regions: declared ones are born at the start, the others when they first write.
        self._declared = list(links.regions)
        self._regions: list[str] = []               # announced to the region actors, in birth order
        self._born: dict[str, float] = {}
        self._shard_of_region: dict[str, int] = {}
        self._group_of: dict[str, int] | None = None
        self._evidence_total = 0
        self._rounds = 0
        self._rows_since_checkpoint = 0
        self._known_ids = np.zeros(0, dtype=np.int64)
        self._known_shard = np.zeros(0, dtype=np.int64)
        self.sys = _ActorSystem(ray)
        self._actor_options = {"max_restarts": max_restarts, "max_task_retries": 0, "num_cpus": actor_cpus}
        self.region_shards: list[_Handle] = []
        self.root = _Handle("root", ray.remote(RootAggregator).options(**self._actor_options).remote())
        ev_cls = ray.remote(EvidenceShard).options(**self._actor_options)
        self.evidence_shards = [
            _Handle(f"evidence{p}", ev_cls.remote(
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
        self._summaries: dict[int, dict[str, Any]] = {}   # each region shard's moments, as of its last tree change
        self._last_consensus: dict[str, Any] | None = None
        self.last_round_seconds: dict[str, float] = {}   # wall time of each phase of the last round
        self.cap_resolver = _CapFacade(self)
        self.consensus = _ConsensusFacade(self)
        self.protocol = _ProtocolFacade(self)

    @property
    def feature_dimensions(self) -> int | None:
        return self._dim

    @property
    def regions(self) -> list[str]:
        """Every region known so far (declared or seen), in birth order."""
        return self._regions + [r for r in self._declared if r not in self._born]

    # ------------------------------------------------------------------ regions
    def _new_region_shard(self) -> int:
        w = len(self.region_shards)
        cls = self.ray.remote(RegionShard).options(**self._actor_options)
        s = self.settings
        statistical = self.consistency_model is not ConsistencyModel.EVENTUAL
        self.region_shards.append(_Handle(f"regions{w}", cls.remote(
            self._start, branching_factor=s.branching_factor, feature_dimensions=self._dim,
            max_staleness_seconds=self.max_staleness_seconds, confidence_decay_rate=self.confidence_decay_rate,
            statistical=statistical)))
        if self._regions:       # a late actor hears of the regions born before it
            self.sys.call(self.region_shards[w], "add_regions", list(self._regions),
                          [self._born[r] for r in self._regions], [], self._dim or 0, mutating=True)
        return w

    def _place(self, names: Sequence[str]) -> None:
        """Give each region an actor (a new one, or round-robin once ``region_workers`` exist)."""
        for name in names:
            if name in self._shard_of_region:
                continue
            if self.region_workers is None or len(self.region_shards) < self.region_workers:
                w = self._new_region_shard()
            else:
                w = len(self._shard_of_region) % len(self.region_shards)
            self._shard_of_region[name] = w

    def _announce(self, names: Sequence[str], born: float) -> None:
        """Regions are born: every region actor hears of them, their hosts make their replicas.

        As in the in-process resolver: declared regions are born at the start
        (at the first round), others at their first write; a region born
        during a partition reaches nobody until the heal.
        """
        new = [r for r in names if r not in self._born]
        if not new:
            return
        for name in new:
            self._regions.append(name)
            self._born[name] = born
            if self._group_of is not None and name not in self._group_of:
                self._group_of[name] = max(self._group_of.values(), default=-1) + 1
        hosts = [self._shard_of_region[r] for r in new]
        self._gather([(h, "add_regions", (new, [born] * len(new),
                                          [r for r, w in zip(new, hosts, strict=True) if w == k], self._dim), True)
                      for k, h in enumerate(self.region_shards)])

    # ------------------------------------------------------------------ plumbing
    def _now(self) -> float:
        return self._advance(self._read_clock())

    def _read_clock(self) -> float:
        """The clock's reading as the next write would use it (finite, never earlier than a
        previous one), changing nothing: as the in-process resolver's ``read_clock``."""
        t = check_finite_float(self.clock(), "clock()")
        return t if t > self._latest else self._latest

    def _advance(self, now: float) -> float:
        if now > self._latest:
            self._latest = now
        return self._latest

    def _processing_time(self) -> float:
        return self._read_clock()

    def _one_clock(self) -> bool:
        return True       # the driver's clock stamps observations and is the processing clock

    @property
    def warm_up(self) -> int:
        """Population size below which nobody is flagged (as the in-process protocol's)."""
        w = self.settings.warm_up
        return w if w is not None else min(1000, 100 * (self._dim or 10))

    @property
    def handles(self) -> list[_Handle]:
        return [*self.region_shards, self.root, *self.evidence_shards]

    def _gather(self, calls: list[tuple[_Handle, str, tuple, bool]]) -> list[Any]:
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

    def __enter__(self) -> RayDistributedBehavioralDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ routing
    def _shard_of_agents(self, ids: np.ndarray) -> np.ndarray:
        """The region actor whose tree holds each agent (-1: not seen yet)."""
        known = self._known_ids
        if known.size == 0 or known.dtype.kind != ids.dtype.kind:
            return np.full(ids.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(known, ids), known.size - 1)
        return np.where(known[pos] == ids, self._known_shard[pos], -1)

    def _route(self, ids: np.ndarray, shard: np.ndarray) -> dict[int, np.ndarray]:
        """Record each agent's shard; returns, per old shard, the agents that moved away."""
        moved: dict[int, np.ndarray] = {}
        known = self._known_ids
        if known.size and known.dtype.kind != ids.dtype.kind:
            raise InvalidTypeError("agent ids changed type (int vs str) between rounds")
        hit = np.zeros(ids.size, dtype=bool)
        if known.size:
            pos = np.searchsorted(known, ids)
            pos_c = np.minimum(pos, known.size - 1)
            hit = known[pos_c] == ids
            prev = np.where(hit, self._known_shard[pos_c], -1)
            away = hit & (prev != shard)
            for s in np.unique(prev[away]).tolist():
                moved[int(s)] = ids[away & (prev == s)]
            self._known_shard[pos_c[hit]] = shard[hit]
        if not hit.all():
            new_ids = np.concatenate([known, ids[~hit]]) if known.size else ids[~hit].copy()
            new_shard = np.concatenate([self._known_shard, shard[~hit]])
            order = np.argsort(new_ids, kind="stable")
            self._known_ids, self._known_shard = new_ids[order], new_shard[order]
        return moved

    # ------------------------------------------------------------------ the round
    @synchronized
    def process_round(self, agent_ids: Any, X: Any, regions: Any, *, cohorts: Any = None,
                      timestamp: float | None = None, fdr: Any = "default") -> dict[str, Any]:
        """One round for many agents, on the actors; the same result as in process."""
        out = self._logged("round", lambda: _round_record(agent_ids, X, regions, cohorts, timestamp, fdr),
                           lambda: self._round(agent_ids, X, regions, cohorts=cohorts, timestamp=timestamp,
                                               fdr=fdr))
        out.pop("_detail")
        return out

    def _round(self, agent_ids: Any, X: Any, regions: Any, *, cohorts: Any, timestamp: float | None,
               fdr: Any, stay: np.ndarray | None = None) -> dict[str, Any]:
        """A round; ``stay`` marks rows whose known agents keep their place in the tree
        (the per-item path's data without a cohort), written to their region's replica all the same."""
        # The in-process detector's checks (the same function), all before any change.
        X, ids, regions, cohorts, ts, now = self._check_round(agent_ids, X, regions, cohorts, timestamp)
        n, d = X.shape
        ids = _validate_ids(ids)
        names, inverse = unique_names(regions)
        order = [check_region_name(r) for r in names.tolist()]
        if self.consistency_model is ConsistencyModel.STRONG:
            require_write_quorum(self.regions, self._group_of, order)
        if np.unique(ids).size != n:
            raise InvalidInputError("agent_ids holds the same id twice in one batch")
        if self._known_ids.size and n and self._known_ids.dtype.kind != ids.dtype.kind:
            raise InvalidTypeError("the Ray backend keeps one kind of agent id: these are "
                                   f"{'strings' if ids.dtype.kind == 'U' else 'ints'}, earlier ones were not")
        if cohorts is None:
            cohorts = regions
        self._shape._cohort_ids(cohorts, n)        # the tree's own check, on the driver
        if isinstance(cohorts, (str, tuple)):
            cohorts = [cohorts] * n if isinstance(cohorts, tuple) else np.full(n, cohorts)
        elif not (isinstance(cohorts, np.ndarray) and cohorts.dtype.kind == "U"):
            cohorts = list(cohorts)
        q = self._rules._resolve_fdr(fdr)
        # Everything above only reads: a refused round changes nothing.
        if self._dim is None:
            self._dim = d
        self._place([*self._declared, *order])
        self._announce(self._declared, self._start)
        region_shard = np.array([self._shard_of_region[r] for r in order], dtype=np.int64)
        shard = region_shard[inverse]
        if stay is not None and stay.any():
            known = self._shard_of_agents(ids)
            shard = np.where(stay & (known >= 0), known, shard)
        moved = self._route(ids, shard)
        ray = self.ray
        clock = [time.perf_counter()]
        phases: dict[str, float] = {}

        def lap(name: str) -> None:
            t = time.perf_counter()
            phases[name] = t - clock[0]
            clock[0] = t
        lap("validate")
        for s, gone in moved.items():
            self.sys.call(self.region_shards[s], "remove", gone, mutating=True)
            self._summaries.pop(s, None)
        # ---- 1. each shard updates its tree (arrays through the object store)
        rows_of = {s: np.flatnonzero(shard == s) for s in np.unique(shard).tolist()}
        calls = []
        for s, rows in rows_of.items():
            part_c = cohorts[rows] if isinstance(cohorts, np.ndarray) else [cohorts[i] for i in rows.tolist()]
            # big parts go through the object store once (and stay there for replay); small ones inline
            put = ray.put if rows.size * d >= 4096 else (lambda a: a)
            calls.append((self.region_shards[s], "update",
                          (put(ids[rows]), put(np.ascontiguousarray(X[rows])), part_c, regions[rows]), True))
        summaries = dict(zip(rows_of, self._gather(calls), strict=True))
        self._summaries.update(summaries)
        lap("update")
        # ---- 2. the root merges every shard's moments (untouched shards' are those they last sent)
        rest = [s for s in range(len(self.region_shards)) if s not in self._summaries]
        for s, value in zip(rest, self._gather([(self.region_shards[s], "summary", (), False) for s in rest]),
                            strict=True):
            self._summaries[s] = value
        summaries = self._summaries
        merged = self.sys.call(self.root, "merge", *[summaries[s] for s in range(len(self.region_shards))])
        self._last_merge = merged
        merged_ref = ray.put(merged)
        lap("merge")
        # ---- 3. shards score their rows against the population and their cohorts
        scored = self._gather([
            (self.region_shards[s], "score", (merged_ref, self.shrinkage, self.warm_up, self.score_levels), False)
            for s in rows_of])
        d2 = np.empty(n)
        p = np.empty(n)
        decision_p = np.empty(n)
        levels = np.empty(n, dtype=np.int64)
        any_warm = False
        first_cohort = None
        for rows, res in zip(rows_of.values(), scored, strict=True):
            d2[rows], p[rows], decision_p[rows], levels[rows] = (res["mahalanobis_squared"], res["p_value"],
                                                                  res["decision_p_value"], res["levels"])
            any_warm |= res["any_warm"]
            if rows[0] == 0:
                first_cohort = res["first_cohort"]
        lap("score")
        if q is not None:
            flagged_mask, cut = benjamini_hochberg(decision_p, q)
        else:
            cut = self.significance_level
            flagged_mask = decision_p < cut
        if not any_warm:
            flagged_mask = np.zeros(n, dtype=bool)
        if cut > 0:
            thr2 = float(chi2.isf(cut, d))
        elif flagged_mask.any():
            thr2 = float(d2[flagged_mask].min())
        else:
            thr2 = float("inf")
        # ---- 4. CAP: each region's writes, in the in-process resolver's order
        region_cf, accepted = self._cap_writes(order, inverse, d2, ts, ids, X, shard, region_shard, now)
        confidence = region_cf[inverse]
        lap("cap")
        # ---- 5. own evidence, consensus, decision (shared with the in-process detector)
        out = self._finish_round(ids, d2, p, decision_p, flagged_mask, cut, thr2, confidence, names, region_cf,
                                 accepted, ts)
        lap("evidence+consensus")
        self._rounds += 1
        # Every checkpoint_every rounds' worth of rows: whole-swarm rounds checkpoint every
        # checkpoint_every rounds, per-item calls every checkpoint_every x swarm size calls
        # (or sooner, when an actor's replay log reaches _MAX_LOG calls).
        if self._maybe_checkpoint(n):
            lap("checkpoint")
        self.last_round_seconds = phases
        out["_detail"] = {"any_warm": any_warm, "p_cut": cut, "levels": levels, "first_cohort": first_cohort}
        return out

    def _cap_writes(self, order: list[str], inverse: np.ndarray, d2: np.ndarray, ts: float, ids: np.ndarray,
                    X: np.ndarray, shard: np.ndarray, region_shard: np.ndarray, now: float):
        """Each region's writes and view, as the in-process resolver orders them.

        ``now`` is the round's processing time, read from the clock (and
        checked) before anything changed: every write, view and the automatic
        sync of the round use it, as in process.

        Serial until this round's automatic sync has run (it ships what was
        written before it) and the last new region was born (the regions
        before it do not see it), and under STRONG throughout (each write goes
        through to every reachable replica before the next region writes);
        after that, every actor writes its regions at once.
        """
        region_cf = np.ones(len(order))
        accepted = 0
        strong = self.consistency_model is ConsistencyModel.STRONG
        # A region's rows are in its host's last batch, unless some stayed on another actor's tree.
        extra = []
        for k in range(len(order)):
            rows = np.flatnonzero(inverse == k)
            extra.append((ids[rows], X[rows]) if (shard[rows] != region_shard[k]).any() else None)
        synced = self.auto_sync_seconds is None
        now = self._advance(now)
        k = 0
        while k < len(order) and (strong or not synced or any(r not in self._born for r in order[k:])):
            name = order[k]
            h = self.region_shards[self._shard_of_region[name]]
            self._announce([name], now)          # a new region is born as it first writes
            view = None
            sync_due = not synced and now - self._last_sync >= self.auto_sync_seconds
            if strong:
                (count, refs) = self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, True, None,
                                              extra[k], mutating=True, num_returns=2)
                for peer in self._reachable(name):
                    if peer != name:
                        self.sys.call(self.region_shards[self._shard_of_region[peer]], "merge_registers",
                                      peer, refs[1], mutating=True)
            elif sync_due:
                count = self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, False, None, extra[k],
                                      mutating=True)
            else:       # the write and the view in one call (the clock reading is the same)
                count, view = self.sys.call(h, "cap_write", name, d2[inverse == k], ts, now, False,
                                            now, extra[k], mutating=True)
            accepted += count
            if sync_due:
                self._sync(now)        # inside the round: no checkpoint until the round is whole
                synced = True
            if view is None:
                view = self.sys.call(h, "cap_view", name, now)
            cf = view["confidence_factor"]
            region_cf[k] = 1.0 if cf is None else cf
            k += 1
        rest = list(range(k, len(order)))
        replies = self._gather([(self.region_shards[self._shard_of_region[order[j]]], "cap_write",
                                 (order[j], d2[inverse == j], ts, now, False, now, extra[j]), True)
                                for j in rest])
        for j, (count, view) in zip(rest, replies, strict=True):
            accepted += count
            cf = view["confidence_factor"]
            region_cf[j] = 1.0 if cf is None else cf
        return region_cf, accepted

    # ------------------------------------------------------------------ per item (the guide's loop)
    async def process_agent_behavior(self, agent_id: Hashable, behavioral_data: Any) -> dict[str, Any]:
        """The guide's main loop for one observation, on the actors (a one-row round).

        Returns what the in-process detector returns: ``agent_id``, ``action``,
        ``confidence``, ``evidence`` (the agent's consensus, None before any
        evidence) and ``anomaly`` (the anomaly test: ``is_anomaly``, distances,
        p-values, threshold, cohort, population count, warm-up). The row's
        anomaly cut is the significance level (no false-discovery batch).
        Each call is a few actor round trips: use :meth:`process_round` for volume.
        """
        return self.process_agent_behavior_sync(agent_id, behavioral_data)

    @synchronized
    def process_agent_behavior_sync(self, agent_id: Hashable, behavioral_data: Any) -> dict[str, Any]:
        """Synchronous twin of :meth:`process_agent_behavior`."""
        data_id, features, cohort = read_behavior(behavioral_data)
        agent_id = check_wire_id(agent_id, "agent_id")       # the replicas' rule, as in process
        if check_wire_id(data_id, "behavioral_data.agent_id") != agent_id:
            raise InvalidInputError(f"agent_id {agent_id!r} differs from the data's agent_id {data_id!r}: "
                                    "the tree and the replicas would update different agents")
        x = as_feature_vector(features, self._dim)
        path = check_cohort(cohort)
        region = path[0] if path else self.default_region
        ts = self._given_timestamp(behavioral_data)     # None: the round reads the clock, once
        if ts is not None:
            ts = check_finite_float(ts, "timestamp")
        uid = behavioral_data.get("id") if isinstance(behavioral_data, dict) else getattr(behavioral_data, "id", None)
        if uid is not None:
            check_wire_id(uid, "update id")     # refused as in process (the actors key writes by round)
        res = self._logged("item", lambda: _round_record([agent_id], x[None, :], region, [path], ts, None),
                           lambda: self._round([agent_id], x[None, :], region, cohorts=[path], timestamp=ts,
                                               fdr=None, stay=np.array([path is None])))
        d2 = float(res["mahalanobis_squared"][0])
        merged = self._last_merge["population"] if self._last_merge else None
        alpha = self.significance_level / int(res["_detail"]["levels"][0])     # per level, as in process
        thr2 = float(chi2.isf(alpha, self._dim))
        anomaly = {
            "agent_id": agent_id,
            "is_anomaly": bool(res["is_anomaly"][0]),
            "mahalanobis_distance": math.sqrt(d2),
            "mahalanobis_squared": d2,
            "p_value": float(res["p_value"][0]),
            "decision_p_value": float(res["decision_p_value"][0]),
            "threshold": math.sqrt(thr2),
            "threshold_squared": thr2,
            "significance_level": alpha,
            "decision_cutoff": self.significance_level,
            "cohort": res["_detail"]["first_cohort"],
            "population_count": 0 if merged is None else int(merged.count),
            "warming_up": not res["_detail"]["any_warm"],
        }
        try:
            evidence = self.consensus.consensus(agent_id)
        except UnknownAgentError:
            evidence = None
        return {"agent_id": agent_id, "action": str(res["action"][0]), "confidence": float(res["confidence"][0]),
                "evidence": evidence, "anomaly": anomaly}

    # ------------------------------------------------------------------ evidence
    @synchronized
    def ingest_evidence(self, evidence_ids: Any, agent_ids: Any, evidence_types: Any, log_odds: Any,
                        confidences: Any, timestamps: Any, source_nodes: Any) -> int:
        """Observer evidence in bulk, routed to the partitions by agent id; returns how many were new.

        All or nothing, as in process (see :meth:`_ingest_evidence`).
        """
        cols = (evidence_ids, agent_ids, evidence_types, log_odds, confidences, timestamps, source_nodes)
        added = self._logged("evidence", lambda: _evidence_record(*cols), lambda: self._ingest_evidence(*cols))
        self._maybe_checkpoint(0)          # evidence alone can fill the replay log
        return added

    def _add_own_evidence(self, *columns: Any) -> None:
        self._ingest_evidence(*columns)    # inside a round: no checkpoint until the round is whole

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
                if isinstance(col, list) and not all(
                        isinstance(k, str) or (type(k) is int and -(1 << 63) <= k < (1 << 63)) for k in col):
                    raise InvalidTypeError(f"{name}: with checkpoint_dir, ids must be int64 or str")
        part = _hash_partition(ag, len(self.evidence_shards))
        batches = {}
        for pidx in np.unique(part).tolist():
            rows = np.flatnonzero(part == pidx)
            batches[pidx] = self.ray.put({
                "evidence_ids": _take(ev, rows), "agent_ids": _take(ag, rows), "evidence_types": codes[rows],
                "log_odds": lo[rows], "confidences": conf[rows], "timestamps": ts[rows],
                "source_nodes": _take(src, rows)})
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

    def _consensus_positions(self, cons: dict[str, Any], ids: np.ndarray) -> np.ndarray:
        # the sort of every agent with evidence is kept until the evidence changes
        full = self._consensus()
        keys = np.asarray(full["agent_ids"])
        if keys.size == 0 or keys.dtype.kind != ids.dtype.kind or keys.dtype.kind not in "iuU":
            return positions_of(keys, ids)
        if full.get("_sorted") is None:
            order = np.argsort(keys, kind="stable")
            full["_sorted"] = (keys[order], order)
        sk, order = full["_sorted"]
        pos = np.minimum(np.searchsorted(sk, ids), sk.size - 1)
        return np.where(sk[pos] == ids, order[pos], -1)

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

        # The same peeling as StableBayesianConsensus._global_pass, with each recount
        # done by the partitions that hold the pairs.
        def recount(flagged: np.ndarray) -> SourceEvents:
            bad_now = [k for k, f in zip(keys, flagged.tolist(), strict=True) if f]
            return merged(self._gather([(h, "recount", (bad_now,), False) for h in self.evidence_shards]))

        events = merged(parts)
        voters = None if established is None else set(established)
        on_probation = np.array([voters is not None and k not in voters for k in keys], dtype=bool)
        never = np.array([k in self._trusted for k in keys], dtype=bool) | on_probation
        flagged, tail = peel_sources(events, recount, n_sources, self._false_flag_rate, never=never,
                                     n_tested=int(n_sources - on_probation.sum()))
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

    # ------------------------------------------------------------------ CAP links
    def _reachable(self, region: str) -> list[str]:
        if self._group_of is None:
            return list(self._regions)
        g = self._group_of.get(region)
        return [r for r in self._regions if self._group_of.get(r) == g]

    def _known(self, region: Any) -> str:
        name = check_region_name(region)
        if name not in self._born and name not in self._declared:
            raise UnknownRegionError(f"unknown region {name!r}; known: {self.regions}")
        return name

    @synchronized
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network into groups (as the in-process resolver's ``partition``)."""
        mapping = partition_groups(groups, self._known, self.regions)
        self._logged("partition", lambda: ({"groups": mapping}, {}), lambda: self._set_groups(mapping))

    @synchronized
    def create_evidence(self, agent_id: Hashable, behavioral_data: Any, anomaly_info: dict[str, Any],
                        confidence: float = 1.0) -> BayesianEvidence:
        """As in process; with ``checkpoint_dir`` the id it hands out is logged (never handed out twice)."""
        return self._logged("create_evidence", lambda: ({}, {}),
                            lambda: DistributedBehavioralDetector.create_evidence(
                                self, agent_id, behavioral_data, anomaly_info, confidence))

    def _set_faults(self, dropped: set[tuple[str, str]]) -> None:
        def apply() -> None:
            self.faults.dropped = set(dropped)
        self._logged("faults", lambda: ({"dropped": sorted(dropped)}, {}), apply)

    def _set_groups(self, mapping: dict[str, int] | None) -> None:
        # Under STRONG the groups sync at once: the clock is read (once) before the links
        # change, so a clock gone bad refuses the call with the links as they were.
        now = self._read_clock() if self.consistency_model is ConsistencyModel.STRONG else None
        self._group_of = mapping
        if now is not None:
            self._sync(self._advance(now))
            self._maybe_checkpoint(0)

    @synchronized
    def heal(self) -> None:
        """Restore every link (replicas converge at the next :meth:`sync`; at once under STRONG)."""
        self._logged("heal", lambda: ({}, {}), lambda: self._set_groups(None))

    @property
    def is_partitioned(self) -> bool:
        return self._group_of is not None

    @synchronized
    def sync(self) -> dict[str, int]:
        """One anti-entropy round over every delivering link (see :meth:`_sync`)."""
        report = self._logged("sync", lambda: ({}, {}), self._sync)
        self._maybe_checkpoint(0)
        return report

    def _sync(self, now: float | None = None) -> dict[str, int]:
        """One anti-entropy round over every delivering link, as Ray calls between region actors.

        For each ordered pair (a, b) that reaches each other: b sends its
        version vector, a ships the delta it does not cover, b acknowledges.
        The delta travels from a's actor to b's through the object store (the
        driver passes only its reference). :attr:`faults` drops the messages
        of chosen links. ``now``: the round's processing time (None: read the clock).
        """
        now = self._now() if now is None else now
        self._last_sync = now
        pairs = rows = 0
        for a in self._regions:
            ha = self.region_shards[self._shard_of_region[a]]
            for b in self._reachable(a):
                if b == a:
                    continue
                hb = self.region_shards[self._shard_of_region[b]]
                version = self.sys.call(hb, "version_of", b)
                if not self.faults.delivers(b, a):
                    version = None
                shipped, refs = self.sys.call(ha, "prepare_delta", a, b, version, now, mutating=True,
                                              num_returns=2)
                pairs += 1
                if not self.faults.delivers(a, b):
                    continue
                rows += shipped
                ack = self.sys.call(hb, "merge_delta", b, refs[1], mutating=True)
                if not self.faults.delivers(b, a):
                    continue
                self.sys.call(ha, "acknowledge", a, b, ack, mutating=True)
        return {"pairs": pairs, "rows_shipped": rows}

    @synchronized
    def replica(self, region: str):
        """A copy of ``region``'s live replica (for inspection and tests)."""
        region = self._known(region)
        if region not in self._shard_of_region:
            raise UnknownRegionError(f"region {region!r} has no replica yet (it has not written)")
        return self.sys.call(self.region_shards[self._shard_of_region[region]], "replica", region)

    @synchronized
    def confidence_factor(self, region: str) -> float | None:
        """The confidence factor of ``region``'s view now (1.0 before it has a replica)."""
        region = self._known(region)
        if region not in self._shard_of_region:
            return 1.0
        h = self.region_shards[self._shard_of_region[region]]
        return self.sys.call(h, "cap_view", region, self._now())["confidence_factor"]

    # ------------------------------------------------------------------ state
    @synchronized
    def checkpoint(self) -> None:
        """Checkpoint every stateful shard now (also done every ``checkpoint_every`` rounds' worth of rows).

        With ``checkpoint_dir``, the checkpoint is also written there (see :meth:`resume`).
        """
        self._checkpoint(during_round=False)

    def _checkpoint(self, during_round: bool) -> None:
        states = {h.name: self.sys.checkpoint(h) for h in [*self.region_shards, *self.evidence_shards]}
        self._rows_since_checkpoint = 0
        if self.checkpoint_dir is None:
            return
        try:
            self._write_checkpoint(states)
        except (OSError, TypeError, ValueError, SwarmGuardError) as exc:
            err = CheckpointError(f"could not write the checkpoint to {self.checkpoint_dir}: {exc}")
            self.last_checkpoint_error = err
            if not during_round:
                raise err from exc
            # The round was applied (and the in-memory checkpoint taken): raising now would
            # make the caller send it again. Say so, and try again at the next checkpoint.
            warnings.warn(str(err), CheckpointWriteWarning, stacklevel=3)

    def _maybe_checkpoint(self, rows: int) -> bool:
        """Checkpoint when ``checkpoint_every`` rounds' worth of rows (or an actor's
        replay log of ``_MAX_LOG`` calls) has built up since the last one."""
        self._rows_since_checkpoint += rows
        longest_log = max(len(h.log) for h in self.handles)
        if (self._rows_since_checkpoint >= self.checkpoint_every * max(1, self._known_ids.size)
                or longest_log >= _MAX_LOG):
            if self._logging:           # after the call's record is in the log, not before
                self._checkpoint_due = True
                return False
            self._checkpoint(during_round=True)
            return True
        return False

    # ------------------------------------------------------------------ the log of calls (checkpoint_dir)
    def _logged(self, kind: str, record: Any, call: Any) -> Any:
        """Run a state-changing call; with ``checkpoint_dir``, append it to the log of calls since
        the last on-disk checkpoint (with the clock readings it made) before it returns, so that
        :meth:`resume` loses nothing that was acknowledged."""
        if self.checkpoint_dir is None or self._logging:
            return call()
        if self._wal_generation is None:        # the log needs a checkpoint to start from
            self._checkpoint(during_round=False)
        # what calls outside the log may have moved since: the clock's high-water mark
        # (views read the clock) and the evidence counter (create_evidence)
        before = {"latest": self._latest, "evidence_number": self._evidence_number}
        real = self.clock
        readings: list[float] = []

        def recording() -> Any:
            t = real()
            try:
                readings.append(float(t))
            except (TypeError, ValueError):
                pass            # not a number: the caller's check refuses it (and nothing is logged)
            return t
        self._logging, self._checkpoint_due, self.clock = True, False, recording
        try:
            out = call()
        finally:
            self._logging, self.clock = False, real
        meta, arrays = record()
        meta.update(kind=kind, clock=readings, **before)
        try:
            append_record(self.checkpoint_dir / f"wal-{self._wal_generation}.bin", meta, arrays)
        except OSError as exc:
            # The call is applied; make it durable another way: a whole checkpoint now (and a new
            # log, so nothing is ever appended after a torn record). If that fails too, the next
            # call refuses until a checkpoint can be written.
            self._wal_generation = None
            self._checkpoint_due = True
            self._chain_broken = True      # older generations miss this call: no fallback to them
            err = CheckpointError(f"could not log a {kind} call in {self.checkpoint_dir}: {exc}")
            self.last_checkpoint_error = err
        if self._checkpoint_due:
            self._checkpoint_due = False
            self._checkpoint(during_round=True)
            if self._wal_generation is None:
                warnings.warn(f"a {kind} call is applied but not on disk: {self.last_checkpoint_error}",
                              CheckpointWriteWarning, stacklevel=3)
        return out

    def _replay(self, records: list[tuple[dict[str, Any], dict[str, np.ndarray]]]) -> None:
        """Apply logged calls again, each with the clock readings it made the first time."""
        real = self.clock
        self._logging = True
        try:
            for meta, arrays in records:
                readings = iter(meta["clock"])
                self.clock = lambda readings=readings: next(readings)
                self._latest = max(self._latest, meta["latest"])
                self._evidence_number = max(self._evidence_number, meta["evidence_number"])
                kind = meta["kind"]
                if kind in ("round", "item"):
                    args = _round_args(meta, arrays)
                    stay = np.array([args["cohorts"][0] is None]) if kind == "item" else None
                    self._round(**args, stay=stay)
                elif kind == "evidence":
                    self._ingest_evidence(**evidence_state_from_arrays(arrays))
                elif kind == "partition":
                    self._set_groups({str(k): int(v) for k, v in meta["groups"].items()})
                elif kind == "heal":
                    self._set_groups(None)
                elif kind == "sync":
                    self._sync()
                elif kind == "faults":
                    self.faults.dropped = {tuple(link) for link in meta["dropped"]}
                elif kind == "create_evidence":
                    self._next_evidence_number()
        finally:
            self._logging, self.clock = False, real

    # ------------------------------------------------------------------ on disk
    _FORMAT = 1

    def _write_checkpoint(self, states: dict[str, Any]) -> None:
        settings = self.settings.to_params()
        settings.pop("clock")
        settings["consistency_model"] = self.consistency_model.value
        settings["regions"] = None if settings["regions"] is None else list(settings["regions"])
        driver = {
            "format": self._FORMAT, "settings": settings, "ray_options": dict(self._ray_options),
            "region_shards": len(self.region_shards), "declared": self._declared, "regions": self._regions,
            "born": [self._born[r] for r in self._regions], "shard_of_region": self._shard_of_region,
            "group_of": self._group_of, "dim": self._dim, "start": self._start, "latest": self._latest,
            "last_sync": self._last_sync, "evidence_total": self._evidence_total,
            "evidence_number": self._evidence_number, "rounds": self._rounds, "founders": self._founders,
            "seq": {h.name: h.ckpt_seq for h in [*self.region_shards, *self.evidence_shards]},
            "dropped_links": sorted(self.faults.dropped),
        }
        driver = json.loads(json.dumps(driver, default=_json_scalar))     # NumPy scalars as numbers
        actors = {h.name: region_state_to_arrays(states[h.name]) for h in self.region_shards}
        actors.update({h.name: evidence_state_to_arrays(states[h.name]) for h in self.evidence_shards})
        # the next number after any on disk: another run's generations are never written into
        k = max(self._generation, *generations(self.checkpoint_dir), 0) + 1
        write_generation(self.checkpoint_dir, k, actors, driver,
                         {"known_ids": self._known_ids, "known_shard": self._known_shard})
        previous = self._wal_generation
        self._generation = self._wal_generation = k          # calls from now on go to the new log
        # The fallback is the generation this driver's log continued until now: its log and the
        # new one hold every call since. None (a call missing from the logs, or none yet): no fallback.
        fallback = None if self._chain_broken or previous is None else previous
        self._chain_broken = False
        keep_only(self.checkpoint_dir, {k} if fallback is None else {k, fallback})

    def _restore_from(self, d: dict[str, Any], arrays: dict[str, np.ndarray],
                      actors: dict[str, dict[str, np.ndarray]]) -> None:
        """Set the driver's tables from a checkpoint, start the actors, restore them."""
        self._dim = d["dim"]
        self._start, self._latest, self._last_sync = d["start"], d["latest"], d["last_sync"]
        for _ in range(d["region_shards"]):
            self._new_region_shard()          # before the regions are known: restored from the files below
        self._declared = list(d["declared"])
        self._regions = list(d["regions"])
        self._born = dict(zip(d["regions"], d["born"], strict=True))
        self._shard_of_region = {k: int(v) for k, v in d["shard_of_region"].items()}
        self._group_of = d["group_of"]
        self._evidence_total, self._evidence_number, self._rounds = (d["evidence_total"], d["evidence_number"],
                                                                     d["rounds"])
        self._known_ids, self._known_shard = arrays["known_ids"], arrays["known_shard"].astype(np.int64)
        founders = d.get("founders")          # absent from checkpoints written before it was kept
        if founders is not None and not isinstance(founders, list):
            raise CheckpointError(f"founders must be a list of source ids, got {type(founders).__name__}")
        self._founders = founders
        self.faults.dropped = {tuple(link) for link in d["dropped_links"]}
        for h in self.region_shards:
            self.sys.restore(h, d["seq"][h.name], region_state_from_arrays(actors[h.name]))
        for h in self.evidence_shards:
            self.sys.restore(h, d["seq"][h.name], evidence_state_from_arrays(actors[h.name]))
        if self.region_shards:     # the population's moments, as the last round left them
            summaries = self._gather([(h, "summary", (), False) for h in self.region_shards])
            self._summaries = dict(enumerate(summaries))
            self._last_merge = self.sys.call(self.root, "merge", *summaries)

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
        if not isinstance(d, dict) or d.get("format") != cls._FORMAT:
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} is not format {cls._FORMAT}")
        try:
            saved = dict(d["ray_options"])
            settings = DetectorSettings(**d["settings"], clock=clock)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} is damaged: {exc!r}") from exc
        opts = {**saved, **ray_options}
        if opts["evidence_partitions"] != saved["evidence_partitions"]:
            raise InvalidInputError(f"evidence_partitions must be the checkpoint's ({saved['evidence_partitions']})")
        det = cls(settings, address=address, checkpoint_dir=checkpoint_dir, **opts)
        try:
            det._restore_from(d, arrays, actors)
        except (KeyError, ValueError, TypeError, SwarmGuardError) as exc:
            det.close()
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} is incomplete or damaged: {exc!r}") from exc
        det._generation = max(generation, det._generation)
        try:
            det._replay(read_records(checkpoint_dir, generation))     # the calls acknowledged after it
        except (KeyError, ValueError, TypeError, StopIteration, SwarmGuardError) as exc:
            det.close()
            raise CheckpointError(f"the log of calls in {checkpoint_dir} cannot be replayed: {exc!r}") from exc
        det._wal_generation = generation              # the fallback of the fresh generation below
        det._checkpoint(during_round=False)           # a fresh generation; the log starts again
        return det

    @synchronized
    def get_global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        """Population statistics from the root aggregator's last merge."""
        m = self._last_merge["population"] if self._last_merge else None
        if m is None or m.count == 0:
            dim = self.feature_dimensions or 0
            return {"count": 0, "mean": np.full(dim, np.nan), "covariance": np.full((dim, dim), np.nan)}
        cov = m.m2 / (m.count - ddof) if m.count > ddof else np.full_like(m.m2, np.nan)
        var = np.diagonal(cov).copy()
        return {"cohort": (), "count": m.count, "mean": m.mean, "covariance": cov, "variance": var,
                "std": np.sqrt(np.maximum(var, 0.0)), "ddof": ddof, "moments": m}

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

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory of each actor process (MB)."""
        return {h.name: self.ray.get(h.actor.peak_memory_mb.remote()) for h in self.handles}


class _CapFacade:
    """``cap_resolver``-like view for code written against the in-process detector."""

    def __init__(self, det: RayDistributedBehavioralDetector):
        self._det = det

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        self._det.partition(groups)

    def heal(self) -> None:
        self._det.heal()

    def sync(self) -> dict[str, int]:
        return self._det.sync()

    def confidence_factor(self, region: str) -> float | None:
        return self._det.confidence_factor(region)

    def visible_regions(self, region: str) -> list[str]:
        """Regions whose links to ``region`` deliver now (``region`` included), sorted."""
        det = self._det
        region = det._known(region)
        if det._group_of is None:
            return sorted(det.regions)
        return sorted(r for r in det.regions if det._group_of.get(r) == det._group_of[region])

    @property
    def is_partitioned(self) -> bool:
        return self._det.is_partitioned

    @property
    def consistency_model(self) -> ConsistencyModel:
        return self._det.consistency_model

    @property
    def regions(self) -> list[str]:
        return self._det.regions


class _ConsensusFacade:
    """``consensus``-like view: the evidence partitions, merged."""

    def __init__(self, det: RayDistributedBehavioralDetector):
        self._det = det

    @property
    def evidence_count(self) -> int:
        return self._det._evidence_total

    async def add_evidence(self, evidence: BayesianEvidence) -> bool:
        """Add one piece of evidence; True if new, False if it was already there."""
        return self.add_evidence_sync(evidence)

    def add_evidence_sync(self, evidence: BayesianEvidence) -> bool:
        """Synchronous twin of :meth:`add_evidence`."""
        e = BayesianEvidence.coerce(evidence)
        return self._det.ingest_evidence([e.evidence_id], [e.agent_id], [e.evidence_type], [e.log_odds],
                                         [e.confidence], [e.timestamp], [e.source_node]) == 1

    def add_evidence_batch(self, *args: Any, **kwargs: Any) -> int:
        """Many pieces of evidence as arrays (:meth:`RayDistributedBehavioralDetector.ingest_evidence`)."""
        return self._det.ingest_evidence(*args, **kwargs)

    async def distributed_evidence_consensus(self, agent_id: Hashable) -> dict[str, Any]:
        """Posterior for one agent (the keys of the in-process ``consensus``)."""
        return self.consensus(agent_id)

    def distributed_evidence_consensus_sync(self, agent_id: Hashable) -> dict[str, Any]:
        """Synchronous twin of :meth:`distributed_evidence_consensus`."""
        return self.consensus(agent_id)

    def consensus(self, agent_id: Hashable) -> dict[str, Any]:
        """Posterior for one agent, from the partition that holds it, with every partition's source flags."""
        det = self._det
        agent_id = check_key(agent_id, "agent_id")
        if not det._evidence_total:
            raise UnknownAgentError(f"no evidence for agent {agent_id!r}")
        full = det._consensus()
        p = int(_hash_partition([agent_id], len(det.evidence_shards))[0])
        out = det.sys.call(det.evidence_shards[p], "agent_consensus", agent_id, full["byzantine_nodes"],
                           full["_established"])
        if out is None:
            raise UnknownAgentError(f"no evidence for agent {agent_id!r}")
        return out

    def consensus_many(self) -> dict[str, Any]:
        """Every agent's consensus, as arrays (the partitions' results, concatenated)."""
        c = self._det._consensus()
        return {k: v for k, v in c.items() if not k.startswith("_")}

    @property
    def byzantine_nodes(self) -> list[Hashable]:
        return list(self._det._consensus()["byzantine_nodes"])

    def source_reputation(self) -> dict[Hashable, dict[str, Any]]:
        c = self._det._consensus()
        ev: SourceEvents = c["_events"]
        return {k: {"reports": int(ev.reports[i]), "low_outliers": int(ev.low[i]),
                    "high_outliers": int(ev.high[i]), "expected_low_outliers": float(ev.expected_low[i]),
                    "expected_high_outliers": float(ev.expected_high[i]),
                    "tail_bound": float(c["_tail"][i]), "flagged": bool(c["_flagged"][i])}
                for i, k in enumerate(c["_sources"])}


class _ProtocolFacade:
    """``protocol``-like view: scoring of every agent against the merged moments."""

    def __init__(self, det: RayDistributedBehavioralDetector):
        self._det = det

    @property
    def significance_level(self) -> float:
        return self._det.significance_level

    def score_many(self, agent_ids: Any = None, *, fdr: Any = "default") -> dict[str, Any]:
        """Every agent's scores (ordered by agent id); ``agent_ids`` must be None."""
        det = self._det
        if agent_ids is not None:
            raise InvalidInputError("the Ray backend scores all agents (agent_ids=None) only")
        merged = det._last_merge
        res = det._gather([(h, "score_all", (merged, det.shrinkage, det.warm_up, det.score_levels), False)
                           for h in det.region_shards])
        ids = np.concatenate([r["agent_ids"] for r in res])
        order = np.argsort(ids, kind="stable")
        out = {"agent_ids": ids[order]}
        for k in ("mahalanobis_squared", "p_value", "decision_p_value"):
            out[k] = np.concatenate([r[k] for r in res])[order]
        q = det.fdr if isinstance(fdr, str) and fdr == "default" else fdr
        any_warm = any(r["any_warm"] for r in res)
        if q is not None:
            flagged, _ = benjamini_hochberg(out["decision_p_value"], q)
        else:
            flagged = out["decision_p_value"] < det.significance_level
        out["is_anomaly"] = flagged & any_warm
        return out


RayDistributedBehavioralDetector.__signature__ = inspect.Signature(   # help() lists Ray's options and the settings
    [*[p for name, p in inspect.signature(RayDistributedBehavioralDetector.__init__).parameters.items()
       if name not in ("self", "params")],
     *DetectorSettings.signature_parameters()])
