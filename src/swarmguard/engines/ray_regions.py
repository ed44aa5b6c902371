"""The Ray engine's regions: their actors, the agents' routing, the links between regions (partition, heal, anti-entropy)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..api.cap import ConsistencyModel, SyncReport
from ..errors import InvalidTypeError, UnknownRegionError
from ..locking import synchronized
from ..values.id_index import IdIndex
from .ray_system import Handle
from .shards import RegionShard

__all__ = ["RayRegions"]

class RayRegions:
    """Regions, routing and links of :class:`~swarmguard.engines.ray_engine.RayEngine` (a part of its class)."""

    # ------------------------------------------------------------------ regions
    def _new_region_shard(self) -> int:
        w = len(self.region_shards)
        cls = self.ray.remote(RegionShard).options(**self._actor_options)
        s = self.settings
        statistical = self.consistency_model is not ConsistencyModel.EVENTUAL
        self.region_shards.append(Handle(f"regions{w}", cls.remote(
            self._start, branching_factor=s.branching_factor, feature_dimensions=self._dim,
            max_staleness_seconds=self.max_staleness_seconds, confidence_decay_rate=self.confidence_decay_rate,
            statistical=statistical, trimmed=self._trimmed, window_rounds=self._window_rounds)))
        if self._topology.regions:       # a late actor hears of the regions born before it
            self.sys.call(self.region_shards[w], "add_regions", list(self._topology.regions),
                          [self._topology.born[r] for r in self._topology.regions], [], self._dim or 0, mutating=True)
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
        new = [r for r in names if r not in self._topology.born]
        if not new:
            return
        for name in new:
            self._topology.add(name, born)
        hosts = [self._shard_of_region[r] for r in new]
        self._gather([(h, "add_regions", (new, [born] * len(new),
                                          [r for r, w in zip(new, hosts, strict=True) if w == k], self._dim), True)
                      for k, h in enumerate(self.region_shards)])


    # ------------------------------------------------------------------ routing
    def _shard_of_agents(self, ids: np.ndarray) -> np.ndarray:
        """The region actor whose tree holds each agent (-1: not seen yet)."""
        if len(self._routes) == 0:
            return np.full(ids.shape[0], -1, dtype=np.int64)
        rows = self._routes.rows_of(ids)
        return np.where(rows >= 0, self._route_shard[np.maximum(rows, 0)], -1)

    def _route(self, ids: np.ndarray, shard: np.ndarray) -> dict[int, np.ndarray]:
        """Record each agent's shard; returns, per old shard, the agents that moved away."""
        moved: dict[int, np.ndarray] = {}
        if self._route_kind is not None and ids.size and self._route_kind != ids.dtype.kind:
            raise InvalidTypeError("agent ids changed type (int vs str) between rounds")
        rows = self._routes.rows(ids, create=True)
        grow = len(self._routes) - self._route_shard.size
        if grow > 0:                                   # new agents: no shard yet
            self._route_shard = np.concatenate([self._route_shard, np.full(grow, -1, dtype=np.int64)])
        prev = self._route_shard[rows]
        away = (prev >= 0) & (prev != shard)
        for s in np.unique(prev[away]).tolist():
            moved[int(s)] = ids[away & (prev == s)]
        self._route_shard[rows] = shard
        if ids.size:
            self._route_kind = ids.dtype.kind
        return moved

    def _route_ids(self) -> np.ndarray:
        """Every routed agent's id, in row order (int64, or a string array: what checkpoints hold)."""
        keys = self._routes.keys_of(np.arange(len(self._routes), dtype=np.int64))
        return keys if keys.dtype != object else np.array(keys.tolist(), dtype=str)

    def _set_routes(self, ids: np.ndarray, shard: np.ndarray) -> None:
        """Routing from :meth:`_route_ids` and the shards (a checkpoint's tables)."""
        self._routes = IdIndex()
        self._routes.add_new(ids)
        self._route_shard = np.asarray(shard, dtype=np.int64).copy()
        self._route_kind = ids.dtype.kind if ids.size else None


    # ------------------------------------------------------------------ CAP links
    def _known(self, region: Any) -> str:
        return self._topology.known(region)

    @synchronized
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network into groups (as the in-process resolver's ``partition``)."""
        mapping = self._topology.groups_for(groups)
        self._logged("partition", lambda: ({"groups": mapping}, {}), lambda: self._set_groups(mapping))

    def _set_faults(self, dropped: set[tuple[str, str]]) -> None:
        def apply() -> None:
            self.faults.dropped = set(dropped)
        self._logged("faults", lambda: ({"dropped": sorted(dropped)}, {}), apply)

    def _set_groups(self, mapping: dict[str, int] | None) -> None:
        # Under STRONG the groups sync at once: the clock is read (once) before the links
        # change, so a clock gone bad refuses the call with the links as they were.
        now = self._time.read() if self.consistency_model is ConsistencyModel.STRONG else None
        self._topology.group_of = mapping
        if now is not None:
            self._sync(self._time.advance(now))
            self._maybe_checkpoint(0)

    @synchronized
    def heal(self) -> None:
        """Restore every link (replicas converge at the next :meth:`sync`; at once under STRONG)."""
        self._logged("heal", lambda: ({}, {}), lambda: self._set_groups(None))

    @property
    def is_partitioned(self) -> bool:
        return self._topology.is_partitioned

    @synchronized
    def sync(self) -> SyncReport:
        """One anti-entropy round over every delivering link (see :meth:`_sync`)."""
        report = self._logged("sync", lambda: ({}, {}), self._sync)
        self._maybe_checkpoint(0)
        return report

    def _sync(self, now: float | None = None) -> SyncReport:
        """One anti-entropy round over every delivering link, as Ray calls between region actors.

        For each ordered pair (a, b) that reaches each other: b sends its
        version vector, a ships the delta it does not cover, b acknowledges.
        The delta travels from a's actor to b's through the object store (the
        driver passes only its reference). :attr:`faults` drops the messages
        of chosen links. ``now``: the round's processing time (None: read the clock).
        Returns the in-process resolver's :class:`~swarmguard.api.cap.SyncReport`
        (the rows and bytes of the deltas delivered).
        """
        t0 = time.perf_counter()
        now = self._now() if now is None else now
        self._last_sync = now
        pairs = rows = nbytes = 0
        for a in self._topology.regions:
            ha = self.region_shards[self._shard_of_region[a]]
            for b in self._topology.reachable(a):
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
                rows += shipped[0]
                nbytes += shipped[1]
                ack = self.sys.call(hb, "merge_delta", b, refs[1], mutating=True)
                if not self.faults.delivers(b, a):
                    continue
                self.sys.call(ha, "acknowledge", a, b, ack, mutating=True)
        return SyncReport(pairs, rows, nbytes, time.perf_counter() - t0)

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
