"""Regions as nodes: one node per region, exchanging deltas with its peers over HTTP.

Each node's replicated state is a :class:`~.peer_delta.ReplicaSet`: per
population, the CAP resolver's replica of the node's region (it holds every
agent's latest vector, written at each window close, and what peers shipped),
and the evidence ledger (each row numbered by the region that accepted it).

- ``POST /v1/peer/delta`` (a ``peer`` token): the body is a delta
  (:mod:`.peer_delta`, ``application/octet-stream``). It is checked whole, logged
  in the durable log (a delta that can change registers or evidence) and only
  then applied and answered ``{"region", "version_vector", "vectors"}``: this
  node's vectors after the join, from which the sender ships next time. A
  malformed or conflicting delta is 422 and changes nothing.
- Anti-entropy: one thread per peer pushes the delta since that peer's last
  answer (everything, the first time: a new node gets a full state transfer)
  every ``sync_seconds`` and right after every write; as every node pushes to
  every other, writes meet everywhere. A node that restarts from its data dir
  replays its log (its vectors are what it acknowledged), so peers resume by delta.
- ``GET /v1/cluster``: ``{"region", "peers": [{"url", "region", "reachable",
  "last_sync"}], "version_vector": {region: counter}}``, plus this node's
  ``confidence_factor``, ``consistency``, bytes shipped per peer and, per
  population, the replicated view's ``count`` and ``mean`` (identical registers
  give identical moments, bit for bit).
- Confidence: the resolver's rule (:func:`~swarmguard.api.cap.compute_confidence_factor`)
  on this node's view — a peer region's part decays once nothing was heard from it
  (directly or through a third node) for the resolver's ``max_staleness_seconds``.
- ``consistency = strong``: a write (behaviours, evidence, spans) is refused
  with 503 unless this node synced with a majority of the nodes within the last
  ``3 x sync_seconds``; statistical and eventual stay writable.

Metrics: ``swarmguard_peer_bytes_shipped_total{peer}``,
``swarmguard_peer_sync_failures_total{peer}``, ``swarmguard_peer_last_sync_age_seconds{peer}``.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from ...api.cap import compute_confidence_factor
from ...errors import SwarmGuardError
from ...structures.replica import RegionReplica
from .auth import authenticate, requires
from .body import read_body
from .durable_log import LogRecord
from .http_errors import ApiError, one_line
from .peer_delta import NodeVectors, PeerDelta, ReplicaSet, decode_delta
from .tokens import ANONYMOUS

__all__ = ["PeerReplication", "PeerLink", "router", "PEER_DELTA", "view_confidence", "replication_of"]

PEER_DELTA = "peer_delta"
log = logging.getLogger("swarmguard.serve.peers")


@dataclass
class PeerLink:
    """What this node knows of one peer."""

    url: str
    region: str | None = None
    reachable: bool = False
    last_sync: float | None = None          # node clock of the last successful exchange
    vectors: NodeVectors | None = None      # the peer's last answer (None: ship everything)
    bytes_shipped: int = 0
    failures: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "region": self.region, "reachable": self.reachable, "last_sync": self.last_sync,
                "bytes_shipped": self.bytes_shipped, "sync_failures": self.failures, "last_error": self.last_error}


class PeerReplication:
    """The node extension (:func:`~.node.node_extensions`) that replicates it to its peers."""

    kinds = (PEER_DELTA,)

    def __init__(self, node):
        self.node = node
        settings = node.settings
        self.region = settings.region
        self.replicas = ReplicaSet(self.region, self._replica_of, lambda: list(node.populations))
        self.links = [PeerLink(url.rstrip("/")) for url in settings.peers]
        self._wake = [threading.Event() for _ in self.links]
        self._stop = threading.Event()
        from prometheus_client import Counter, Gauge

        r = node.metrics.registry
        self.bytes_metric = Counter("swarmguard_peer_bytes_shipped", "Delta bytes shipped, by peer", ["peer"], registry=r)
        self.failures_metric = Counter("swarmguard_peer_sync_failures", "Failed syncs, by peer", ["peer"], registry=r)
        age = Gauge("swarmguard_peer_last_sync_age_seconds", "Seconds since the last sync, by peer", ["peer"], registry=r)
        for link in self.links:
            age.labels(link.url).set_function(lambda link=link: self._age(link))
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"peer-sync-{link.url}", daemon=True)
                         for i, link in enumerate(self.links)]
        for thread in self._threads:
            thread.start()

    # ---------------------------------------------------------------- the replicas
    def _replica_of(self, name: str, dim: int | None) -> RegionReplica | None:
        pop = self.node.populations.get(name)
        if pop is None:
            if dim is None:
                return None
            pop = self.node._population(name)
        resolver = pop.detector.cap_resolver
        with resolver._lock:
            if resolver.feature_dimensions is None or self.region not in resolver.regions:
                if dim is None:
                    return None
            if self.region not in resolver.regions:     # the resolver adds a region at its first write
                resolver._add_region(self.region, resolver._now())
            if resolver.feature_dimensions is None:
                # a peer's agents arrive before this node's first window: the replica takes their dimension
                resolver._set_dim(int(dim))
                if pop.dimension is None:
                    pop.dimension = int(dim)
            return resolver.replica(self.region)

    def vectors(self) -> NodeVectors:
        return self.replicas.vectors()

    def confidence(self) -> float:
        return view_confidence(self.node)

    # ---------------------------------------------------------------- node hooks
    def after_evidence(self, rows: list[list[Any]]) -> None:
        """The node accepted (or replayed) its own evidence rows: number them, tell the peers."""
        self.replicas.ledger.append_local(rows)
        self.poke()

    def before_close(self, at: float) -> None:
        self.poke()          # the round about to run writes the replicas: ship it when the lock frees

    def apply(self, record: LogRecord) -> None:
        """A logged peer delta (replay): join it as it was joined live."""
        try:
            self._join(decode_delta(base64.b64decode(record.meta["delta"])), live=False)
        except SwarmGuardError as exc:          # checked before it was logged: cannot happen; say so, go on
            log.error("a logged peer delta no longer joins: %s", exc)

    def check_writable(self) -> None:
        if self.node.settings.consistency != "strong" or not self.links:
            return
        now = self.node.settings.clock()
        fresh = sum(1 for link in self.links if link.reachable and link.last_sync is not None
                    and now - link.last_sync <= 3 * self.node.settings.sync_seconds)
        nodes = len(self.links) + 1
        if 2 * (fresh + 1) <= nodes:
            raise ApiError(503, f"consistency strong: this node reaches {fresh + 1} of {nodes} nodes, "
                                "not a majority; writes are refused until it does",
                           code="no_quorum", headers={"Retry-After": str(max(1, math.ceil(self.node.settings.sync_seconds)))})

    # ---------------------------------------------------------------- receiving
    def receive(self, data: bytes) -> dict[str, Any]:
        """Check, log, join a peer's delta; this node's vectors after it (module docstring)."""
        node = self.node
        try:
            delta = decode_delta(data)
        except SwarmGuardError as exc:
            raise ApiError(422, f"not a peer delta: {one_line(exc)}", code="bad_delta") from None
        with node.lock:
            if node.state == "draining":
                raise ApiError(503, "the node is shutting down", code="draining", headers={"Retry-After": "5"})
            try:
                plan = self.replicas.plan(delta)
                new_rows = plan.new_evidence()
                if new_rows:
                    columns = node._evidence_columns(new_rows)
                    for pop in node.populations.values():
                        pop.check_evidence(columns)
            except SwarmGuardError as exc:
                raise ApiError(422, f"peer delta refused, nothing changed: {one_line(exc)}", code="bad_delta") from None
            # durable before it is acknowledged; a delta whose every row this node already covers
            # (a peer re-sending what it had, e.g. after its restart) changes nothing: not logged
            if _adds_state(self.replicas, delta, new_rows):
                node._log_append(PEER_DELTA, node.settings.clock(),
                                 {"sender": delta.sender, "delta": base64.b64encode(data).decode("ascii")})
            self._commit(plan)
            return self.answer()

    def _join(self, delta: PeerDelta, live: bool) -> None:
        self._commit(self.replicas.plan(delta))

    def _commit(self, plan) -> None:
        new_rows = self.replicas.commit(plan)
        if new_rows:
            columns = self.node._evidence_columns(new_rows)
            for pop in self.node.populations.values():
                pop.ingest_evidence(columns)

    def answer(self) -> dict[str, Any]:
        vectors = self.vectors()
        return {"region": self.region, "version_vector": vectors.combined(), "vectors": vectors.to_json()}

    # ---------------------------------------------------------------- sending
    def poke(self) -> None:
        """Sync with every peer now (after a write)."""
        for event in self._wake:
            event.set()

    def stop(self) -> None:
        self._stop.set()
        self.poke()

    def _age(self, link: PeerLink) -> float:
        return math.inf if link.last_sync is None else max(0.0, self.node.settings.clock() - link.last_sync)

    def _run(self, i: int) -> None:
        import httpx

        link, wake, node = self.links[i], self._wake[i], self.node
        token = node.settings.peer_token
        headers = {"Content-Type": "application/octet-stream",
                   **({"Authorization": f"Bearer {token}"} if token else {})}
        timeout = max(1.0, min(10.0, 2 * node.settings.sync_seconds))
        with httpx.Client(timeout=timeout, verify=True) as client:
            while not self._stop.is_set():
                wake.wait(node.settings.sync_seconds)
                wake.clear()
                if self._stop.is_set() or node.state == "draining":
                    return
                if node.state != "ready":
                    continue
                self.sync_once(link, client, headers)

    def sync_once(self, link: PeerLink, client, headers: dict[str, str]) -> bool:
        """Push one delta to ``link`` and record its answer; whether it succeeded."""
        node = self.node
        with node.lock:
            data = self.replicas.delta_since(link.vectors, now=node.settings.clock()).to_bytes()
        try:
            response = client.post(f"{link.url}/v1/peer/delta", content=data, headers=headers)
            body = response.json()
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {body.get('error', '')}")
            link.vectors = NodeVectors.from_json(body["vectors"])
            link.region = str(body["region"])
        except Exception as exc:            # noqa: BLE001 - any failure of a peer is a failed sync, counted
            link.reachable, link.failures, link.last_error = False, link.failures + 1, one_line(str(exc))[:200]
            link.vectors = link.vectors if "422" not in str(exc) else None   # refused: ship everything next time
            self.failures_metric.labels(link.url).inc()
            return False
        link.reachable, link.last_sync, link.last_error = True, node.settings.clock(), None
        link.bytes_shipped += len(data)
        self.bytes_metric.labels(link.url).inc(len(data))
        return True

    # ---------------------------------------------------------------- views
    def cluster(self) -> dict[str, Any]:
        node = self.node
        with node.lock:
            vectors = self.vectors()
            views = {}
            for name, replica in self.replicas.replicas().items():
                m = replica.estimate()
                views[name] = {"count": int(m.count),
                               "mean": [float(v) for v in m.mean.tolist()] if m.count else None,
                               "region_counts": replica.region_counts()}
            return {"region": self.region, "peers": [link.to_dict() for link in self.links],
                    "version_vector": vectors.combined(), "vectors": vectors.to_json(),
                    "confidence_factor": view_confidence(node), "consistency": node.settings.consistency,
                    "populations": views}


def _adds_state(replicas: ReplicaSet, delta: PeerDelta, new_evidence: list) -> bool:
    """Whether joining ``delta`` can change this node's registers or evidence: it holds evidence
    rows new here, or a register row whose ``(writer, seq)`` dot this node's replica of that
    population does not cover (a covered dot was joined before: joining it again is a no-op)."""
    if new_evidence:
        return True
    held = replicas.replicas()
    for name, (_, part) in delta.populations.items():
        seq = np.asarray(part.get("registers.seq", ()))
        if not seq.size:
            continue
        replica = held.get(name)
        if replica is None:
            return True
        regions = [str(r) for r in np.asarray(part["registers.regions"]).tolist()]
        covered = np.array([replica.version[r] for r in regions], dtype=np.int64)
        if (seq > covered[np.asarray(part["registers.writer"], dtype=np.int64)]).any():
            return True
    return False


def replication_of(node) -> PeerReplication:
    for extension in node.extensions:
        if isinstance(extension, PeerReplication):
            return extension
    raise ApiError(404, "this node has no peer replication", code="no_peers")


def view_confidence(node) -> float | None:
    """This node's confidence factor: the smallest over its populations' replicated views
    (1.0 with none; None under ``eventual``, which reports no confidence)."""
    if node.settings.consistency == "eventual":
        return None
    now, factors = node.settings.clock(), []
    for pop in node.populations.values():
        resolver = pop.detector.cap_resolver
        if resolver.feature_dimensions is None or node.settings.region not in resolver.regions:
            continue
        replica = resolver.replica(node.settings.region)
        factors.append(compute_confidence_factor(replica.region_counts(), replica.ages(now), node.settings.region,
                                                 resolver.max_staleness_seconds, resolver.confidence_decay_rate))
    return min(factors, default=1.0)


router = APIRouter(tags=["peers"])


def _peer_only(request: Request):
    credential = authenticate(request)
    if credential is not ANONYMOUS and credential.role != "peer":
        raise ApiError(403, f"role {credential.role!r} may not post peer deltas (a peer token may)", code="forbidden")
    return credential


@router.post("/v1/peer/delta", summary="Join a peer's delta (peer token); answers this node's vectors",
             dependencies=[Depends(_peer_only)])
async def post_delta(request: Request) -> dict:
    node = request.app.state.node
    data = await read_body(request, node.settings.max_body_bytes, node.settings.body_timeout_seconds)
    return await run_in_threadpool(replication_of(node).receive, data)


@router.get("/v1/cluster", summary="The peers this node sees, their last sync, its version vector",
            dependencies=[Depends(requires("read"))])
def get_cluster(request: Request) -> dict:
    return replication_of(request.app.state.node).cluster()
