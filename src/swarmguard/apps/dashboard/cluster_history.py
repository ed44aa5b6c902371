"""What the Regions panel needs of past windows: the node's confidence, each region's
staleness and each peer's reachability, recorded at every live window close.

Per close (:class:`ClusterWindow`), from the node's peer replication
(:mod:`swarmguard.apps.serve.peers`, ``GET /v1/cluster``):

- ``confidence_factor``: the node's confidence factor (the resolver's rule on its
  replicated view; None under ``eventual``, which reports none);
- per region, its ``staleness`` (seconds since this node's view of it was last known
  current, the largest over the populations; 0 for the node's own region) and its part of
  the confidence factor (:func:`swarmguard.api.cap.compute_confidence_factor` of that
  region alone: 1 while the staleness is within the resolver's ``max_staleness_seconds``,
  then ``exp(-rate * (staleness - max_staleness_seconds))``, clamped at the smallest
  positive float, the rule the node's factor weights by the regions' agents);
- per peer (base URL): its region, whether the last sync reached it, and when it last did.

Only live closes are recorded: a close replayed from the durable log says nothing of
the peers' reachability then (a restart keeps the series through the node's snapshot,
:meth:`.history.WindowHistory.export_state`). :func:`partitions` turns the series into
the intervals each peer was unreachable, which the page shades.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...api.cap import compute_confidence_factor

__all__ = ["ClusterWindow", "PeerSeen", "record_cluster", "partitions", "peers_now", "region_part"]


@dataclass(frozen=True)
class PeerSeen:
    """One peer as this node saw it at a window close."""

    url: str
    region: str | None
    reachable: bool
    last_sync: float | None


@dataclass(frozen=True)
class ClusterWindow:
    """The node's view of its regions at one live window close."""

    at: float
    confidence_factor: float | None
    regions: dict[str, tuple[float | None, float | None]]   # region -> (its part of the confidence, staleness s)
    peers: list[PeerSeen]

    def to_state(self) -> dict[str, Any]:
        return {"at": self.at, "confidence_factor": self.confidence_factor,
                "regions": [[r, c, s] for r, (c, s) in self.regions.items()],
                "peers": [[p.url, p.region, p.reachable, p.last_sync] for p in self.peers]}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> ClusterWindow:
        return cls(float(s["at"]), _number(s["confidence_factor"]),
                   {str(r): (_number(c), _number(age)) for r, c, age in s["regions"]},
                   [PeerSeen(str(u), None if g is None else str(g), bool(ok), _number(t))
                    for u, g, ok, t in s["peers"]])


def _number(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def region_part(region: str, staleness: float, own_region: str, max_staleness_seconds: float,
                decay_rate: float) -> float:
    """A region's part of the confidence factor: the resolver's own rule
    (:func:`~swarmguard.api.cap.compute_confidence_factor`) on a view holding that region
    alone, so the two cannot drift apart."""
    return compute_confidence_factor({region: 1}, {region: staleness}, own_region, max_staleness_seconds, decay_rate)


def _replication(node):
    from ..serve.peers import PeerReplication

    for extension in getattr(node, "extensions", ()):
        if isinstance(extension, PeerReplication):
            return extension
    return None


def record_cluster(node, at: float) -> ClusterWindow | None:
    """The node's view now (under its lock); None for a node without peer replication."""
    replication = _replication(node)
    if replication is None:
        return None
    from ..serve.peers import view_confidence

    settings = node.settings
    now, own = settings.clock(), settings.region
    eventual = settings.consistency == "eventual"
    ages: dict[str, float] = {}
    limits: tuple[float, float] | None = None
    for pop in node.populations.values():
        resolver = pop.detector.cap_resolver
        replica = pop.replica(own)       # None too on Ray, whose view keeps no replicas here
        if replica is None:
            continue
        limits = (resolver.max_staleness_seconds, resolver.confidence_decay_rate)
        for region, age in replica.ages(now).items():
            ages[region] = max(age, ages.get(region, 0.0))
    peers = [PeerSeen(link.url, link.region, bool(link.reachable), link.last_sync) for link in replication.links]
    for peer in peers:            # a peer region not in any view yet: the time since its last sync
        if peer.region is not None and peer.region not in ages and peer.last_sync is not None:
            ages[peer.region] = max(0.0, now - peer.last_sync)
    regions: dict[str, tuple[float | None, float | None]] = {own: (None if eventual else 1.0, 0.0)}
    for region in sorted(ages):
        part = None if eventual or limits is None else region_part(region, ages[region], own, *limits)
        regions[region] = (part, _number(ages[region]))
    for peer in peers:            # never heard of: unknown staleness, no confidence in it
        if peer.region is not None and peer.region not in regions:
            regions[peer.region] = (None, None)
    return ClusterWindow(float(at), _number(view_confidence(node)), regions, peers)


def partitions(records: list[ClusterWindow], now: float) -> list[dict[str, Any]]:
    """Per peer, the intervals it was unreachable: from the first close it was seen unreachable
    at to the first close it was reachable again (``ongoing``: still unreachable at the last
    close; the interval then ends at ``now``)."""
    out: list[dict[str, Any]] = []
    urls = list(dict.fromkeys(p.url for r in records for p in r.peers))
    for url in urls:
        start, region = None, None
        for r in records:
            seen = next((p for p in r.peers if p.url == url), None)
            if seen is None:
                continue
            region = seen.region or region
            if not seen.reachable and start is None:
                start = r.at
            elif seen.reachable and start is not None:
                out.append({"peer": url, "region": region, "from": start, "to": r.at, "ongoing": False})
                start = None
        if start is not None:
            out.append({"peer": url, "region": region, "from": start, "to": max(now, start), "ongoing": True})
    return out


def peers_now(node) -> list[dict[str, Any]]:
    """Each peer as the node sees it now (``GET /v1/cluster``'s, with seconds since its last sync)."""
    replication = _replication(node)
    if replication is None:
        return []
    now = node.settings.clock()
    return [{"url": link.url, "region": link.region, "reachable": bool(link.reachable), "last_sync": link.last_sync,
             "seconds_since_sync": None if link.last_sync is None else max(0.0, now - link.last_sync),
             "sync_failures": link.failures, "last_error": link.last_error} for link in replication.links]
