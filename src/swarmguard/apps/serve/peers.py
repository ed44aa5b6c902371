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
  malformed delta is 422, one made since vectors this node does not hold 409
  (:class:`~swarmguard.errors.StaleDeltaError`); either changes nothing.
- ``GET /v1/peer/vectors`` (a peer token): the same answer without a delta (a
  sender's first contact). ``POST /v1/peer/pull`` (a peer token) with
  ``{"vectors": ...}``: the delta the caller lacks (``application/octet-stream``).
- Evidence keys and the conflict rule: the consensus keys evidence by
  ``(source_node, evidence_id)``; the same key with the same content is one
  evidence wherever it was posted (an observer's retry on another node counts
  once). A node that already holds a key refuses another content under it at
  ``POST /v1/evidence`` (that line alone). Two nodes may each accept one content
  before they sync: then the ledger (keyed by ``(origin region, seq)``) holds both
  rows and replicates both, and every node counts both — the row it held first
  under the posted id, any other content under its alias, ``~`` and 32 hex digits
  of the SHA-256 of the row's JSON (:func:`conflict_alias`, the same on every
  node). The consensus results depend on the evidence's content, not its ids, so
  every node converges on the same probability, log-odds and evidence count, in
  whatever order the deltas arrive; a delta is never refused for such a conflict.
  A node's detector's own evidence on the agents it flags (a window round's
  ``behavioral_anomaly`` rows, source ``serve:<region>:<population>``) is that
  node's observation: :meth:`PeerReplication.after_close` numbers it in the ledger
  after the rows before it, live and in replay alike, under the detector's own
  deterministic id (``serve:<region>:<population>:<n>:<i>``; the detector's number
  ``n`` is in the snapshot), so a replay or restart never doubles it. Every node counts such
  a row in that population only (:func:`detector_population`), as its node does;
  an observer's row in every population.
- Anti-entropy (:meth:`PeerReplication.sync_once`): one thread per peer, every
  ``sync_seconds`` and right after every write, pushes the delta since that
  peer's last answer (on first contact it asks for the peer's vectors first) and
  pulls what this node lacks. A node that restarts from its data dir replays its
  log (its vectors are what it acknowledged), so both directions resume by delta;
  a new node (empty data dir) gets a full state transfer from the first peer it
  pulls from (pulls run one at a time), then deltas.
  When the peer's last answer already covers everything this node holds, the push
  (and a pull's answer) is a "nothing new" contact (:mod:`.peer_contact`, JSON, no
  npz body): the sender's freshness and vectors only, so an idle round costs a few
  hundred bytes and still counts as contact for the confidence factor.
- Snapshots (:mod:`.snapshot`): the replicas (every region's registers, version
  vectors, freshness, acknowledgements) are in each population's CAP resolver
  state, the evidence the deltas added (aliases included) in its consensus state,
  and :meth:`PeerReplication.export_state` adds the ledger; a node restarted from
  its snapshot and log tail holds what the never-stopped node holds. A delta that
  brings no register or evidence row is not logged: what it carried (when each
  region was last heard of, a peer's acknowledgement) is lost by a ``kill -9``
  until the next sync, with or without a snapshot (a drain's snapshot keeps it).
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

Deltas travel with ``Content-Encoding: gzip`` both ways (a pull's answer when the
caller accepts it); bytes shipped and received count what went over the wire. Both
ways they are bounded by ``max_body_bytes``, on the wire and after inflating: a
pushed delta by :func:`~.body.read_body`, a pulled one by the same rule
(:func:`~.body.inflate`), so a peer cannot make a node expand a gzip bomb.

Metrics: ``swarmguard_peer_bytes_shipped_total{peer}``, ``swarmguard_peer_bytes_received_total{peer}``,
``swarmguard_peer_sync_failures_total{peer}``, ``swarmguard_peer_last_sync_age_seconds{peer}``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from ...api.cap import compute_confidence_factor
from ...errors import (
    DimensionMismatchError,
    DuplicateEvidenceError,
    EvidenceStoreError,
    StaleDeltaError,
    SwarmGuardError,
)
from ...structures.replica import RegionReplica
from ...values.version_vector import VersionVector
from .auth import authenticate, requires
from .body import inflate, read_body
from .durable_log import LogRecord
from .evidence_ledger import EvidenceLedger
from .http_errors import ApiError, one_line
from .peer_contact import contact_bytes, contact_delta, is_contact, quiet_contact
from .peer_delta import NodeVectors, PeerDelta, ReplicaSet, decode_delta
from .population import detector_source_population
from .tokens import ANONYMOUS

__all__ = ["PeerReplication", "PeerLink", "router", "PEER_DELTA", "view_confidence", "replication_of", "conflict_alias"]

PEER_DELTA = "peer_delta"
WIRE_GZIP_LEVEL = 1        # deltas travel gzip-compressed (Content-Encoding): 6 kB of npz headers become ~1 kB
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
    bytes_received: int = 0                 # pulled from it
    failures: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "region": self.region, "reachable": self.reachable, "last_sync": self.last_sync,
                "bytes_shipped": self.bytes_shipped,
                "bytes_received": self.bytes_received, "sync_failures": self.failures, "last_error": self.last_error}


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
        self._pull_lock = threading.Lock()     # one pull at a time: a new node's full transfer comes from one peer
        from prometheus_client import Counter, Gauge

        r = node.metrics.registry
        self.bytes_metric = Counter("swarmguard_peer_bytes_shipped", "Delta bytes shipped, by peer", ["peer"], registry=r)
        self.received_metric = Counter("swarmguard_peer_bytes_received", "Delta bytes pulled, by peer", ["peer"],
                                       registry=r)
        self.failures_metric = Counter("swarmguard_peer_sync_failures", "Failed syncs, by peer", ["peer"], registry=r)
        age = Gauge("swarmguard_peer_last_sync_age_seconds", "Seconds since the last sync, by peer", ["peer"], registry=r)
        for link in self.links:
            age.labels(link.url).set_function(lambda link=link: self._age(link))
        self._started = False
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"peer-sync-{link.url}", daemon=True)
                         for i, link in enumerate(self.links)]

    def start(self) -> None:
        """Start the sync threads: the node calls it once it is whole (its log replayed), so a
        node whose construction fails leaves no thread behind."""
        if self._started or self._stop.is_set():
            return
        self._started = True
        for thread in self._threads:
            thread.start()

    # ---------------------------------------------------------------- the replicas
    def _replica_of(self, name: str, dim: int | None) -> RegionReplica | None:
        pop = self.node.populations.get(name)
        if pop is None:
            if dim is None:
                return None
            pop = self.node._population(name)
        # a peer's agents may arrive before this node's first window: the replica takes their dimension
        replica = pop.detector.cap_resolver.ensure_replica(self.region, dim)
        if replica is not None and pop.dimension is None:
            pop.dimension = replica.dim
        return replica

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

    def after_close(self, at: float, outcomes: list) -> None:
        """The round's own evidence (its detectors' flags, live or replayed) is this node's
        observation: numbered in the ledger after the rows before it, shipped like an observer's."""
        rows = [row for outcome in outcomes for row in outcome.own_evidence]
        if rows:
            self.replicas.ledger.append_local(rows)
            self.poke()

    def apply(self, record: LogRecord) -> None:
        """A logged peer delta (replay): join it as it was joined live."""
        try:
            self._join(decode_delta(base64.b64decode(record.meta["delta"])), live=False)
        except SwarmGuardError as exc:          # checked before it was logged: cannot happen; say so, go on
            log.error("a logged peer delta no longer joins: %s", exc)

    # ---------------------------------------------------------------- snapshots
    def export_state(self) -> dict[str, Any]:
        """What this node's log records contributed beside the populations' own state, for a
        snapshot (:mod:`.snapshot`): the evidence ledger, every row by ``(origin, seq)``.

        The rest of the replicated state is already in the snapshot: each population's
        replica (registers of every region, version vector, freshness, acks) is in its CAP
        resolver's ``to_bytes``, and the evidence a delta added (aliases of the conflict
        rule included) in its consensus's state. The links (peers' last answers, byte
        counters) are not state: a restarted node asks its peers for their vectors first.
        """
        return {"ledger": self.replicas.ledger.export_state()}

    def import_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`export_state`'s ledger (a fresh node, before its log's tail replays)."""
        ledger = EvidenceLedger.from_state(state["ledger"])
        if ledger.region != self.region:
            raise EvidenceStoreError(f"the snapshot holds the evidence ledger of region {ledger.region!r}, "
                                     f"this node serves {self.region!r}")
        self.replicas.ledger = ledger

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
    def receive(self, data: bytes, contact: bool = False) -> dict[str, Any]:
        """Check, log, join a peer's delta (or its "nothing new" contact, :mod:`.peer_contact`);
        this node's vectors after it (module docstring)."""
        node = self.node
        if contact:
            with node.lock:
                self._receive_contact(data)
                return self.answer()
        try:
            delta = decode_delta(data)
        except SwarmGuardError as exc:
            raise ApiError(422, f"not a peer delta: {one_line(exc)}", code="bad_delta") from None
        with node.lock:
            self._receive_checked(delta, data)
            return self.answer()

    def delta_for(self, peer: NodeVectors) -> tuple[bytes, bool]:
        """What a peer holding ``peer`` lacks, as bytes (``POST /v1/peer/pull``), and whether
        they are a "nothing new" contact (JSON) rather than a delta."""
        with self.node.lock:
            delta = self.replicas.delta_since(peer, now=self.node.settings.clock())
            contact = quiet_contact(delta, self.vectors(), peer)
            return (delta.to_bytes(), False) if contact is None else (contact_bytes(contact), True)

    def _receive_contact(self, data: bytes) -> None:
        """Join a peer's contact under the node's lock (freshness, acks; 409 when it claims
        vectors this node lacks, 422 when malformed; nothing changed either way)."""
        try:
            delta = contact_delta(data, self.replicas, self.node.settings.clock())
        except StaleDeltaError as exc:
            raise ApiError(409, f"peer contact refused, nothing changed: {one_line(exc)}", code="stale_delta") from None
        except SwarmGuardError as exc:
            raise ApiError(422, f"not a peer contact: {one_line(exc)}", code="bad_delta") from None
        self._receive_checked(delta, b"")          # no row: checked and joined, never logged

    def _receive_checked(self, delta: PeerDelta, data: bytes) -> None:
        """Join a decoded delta under the node's lock: check all, log, apply (or 422/503, nothing changed)."""
        node = self.node
        if node.state == "draining" or self._stop.is_set():
            raise ApiError(503, "the node is shutting down", code="draining", headers={"Retry-After": "5"})
        try:
            self._check_dimensions(delta)
            plan = self.replicas.plan(delta, require_base=True, nonnegative_scores=True)
            counted = self._as_counted(plan.new_evidence())
        except StaleDeltaError as exc:
            raise ApiError(409, f"peer delta refused, nothing changed: {one_line(exc)}", code="stale_delta") from None
        except SwarmGuardError as exc:
            raise ApiError(422, f"peer delta refused, nothing changed: {one_line(exc)}", code="bad_delta") from None
        # durable before it is acknowledged; a delta whose every row this node already covers
        # (a peer re-sending what it had, e.g. after its restart) changes nothing: not logged
        if _adds_state(self.replicas, delta, counted):
            node._log_append(PEER_DELTA, node.settings.clock(),
                             {"sender": delta.sender, "delta": base64.b64encode(data).decode("ascii")})
        self._commit(plan, counted)

    def _check_dimensions(self, delta: PeerDelta) -> None:
        """A population this node already takes vectors of (its open window may hold some before
        its replica exists) must have the delta's dimension: otherwise joining would fix the
        resolver's dimension to the peer's and the window's acknowledged vectors would be
        dropped at its close. Raises ``DimensionMismatchError`` (the delta is refused, 422)."""
        for name, (dim, _) in delta.populations.items():
            pop = self.node.populations.get(name)
            held = None if pop is None else pop.dimension
            if held is not None and held != dim:
                raise DimensionMismatchError(f"population {name!r}: the delta has dimension {dim}, "
                                             f"this node takes {held}")

    def _join(self, delta: PeerDelta, live: bool) -> None:
        plan = self.replicas.plan(delta)
        self._commit(plan, self._as_counted(plan.new_evidence()))
        # a delta logged before peers refused scores below 0 replays unchecked: such a score (a
        # rounding-negative d²) is held as 0, as register_scores writes it now, or this node would
        # ship it in every delta and every peer would answer 422, so it would never sync again.
        # Only the populations this delta brought such a score to are scanned: a scan is every
        # register of a population (3 ms at 10^6), and a restart replays every logged delta.
        held_negative = [name for name, (_, state) in delta.populations.items()
                         if np.any(np.asarray(state.get("registers.anomaly_score", ())) < 0)]
        if not held_negative:
            return
        clamped = self.replicas.clamp_negative_scores(held_negative)
        if clamped:
            log.warning("a logged peer delta from %r held %d register score(s) below 0: held as 0",
                        delta.sender, clamped)

    def _as_counted(self, rows: list[list[Any]]) -> list[list[Any]]:
        """The ledger's new rows as the consensus counts them, checked (changes nothing).

        The conflict rule (module docstring): a row whose ``(source_node, evidence_id)``
        the consensus holds with other content, or an earlier row of the same delta holds
        with other content, is counted under its content's alias (:func:`conflict_alias`);
        an exact repeat is counted once. Raises what the consensus raises for anything else.
        """
        if not rows:
            return rows
        pops = list(self.node.populations.values())
        columns = self.node._evidence_columns(rows)
        if len({(r[6], r[0]) for r in rows}) == len(rows) and _all_accept(pops, columns):
            return rows                           # the common case: no key held with other content
        out: list[list[Any]] = []
        first: dict[tuple[Any, Any], str] = {}    # key -> content of the row counted under it in this delta
        for row in rows:
            key, content = (row[6], row[0]), _content_text(row)
            held = first.get(key)
            if held is None:
                clash = not _all_accept(pops, self.node._evidence_columns([row]))
                if not clash:
                    first[key] = content
            else:
                clash = held != content
            out.append([conflict_alias(row), *row[1:]] if clash else row)
        for pop, part in self._by_population(out):    # what is left must join as one batch (else: 422)
            pop.check_evidence(self.node._evidence_columns(part))
        return out

    def _commit(self, plan, counted: list[list[Any]]) -> None:
        self.replicas.commit(plan)                # registers first: a detector row's population exists
        for pop, part in self._by_population(counted):
            # other nodes' detectors trusted as this node's own is, before their rows count
            pop.trust_detectors({row[6] for row in part if detector_population(row) is not None})
            pop.ingest_evidence(self.node._evidence_columns(part))

    def _by_population(self, rows: list[list[Any]]) -> list[tuple[Any, list[list[Any]]]]:
        """``rows`` split by the populations that count them: an observer's row every population
        (as ``POST /v1/evidence`` does), a detector's own row (:func:`detector_population`) the
        population whose detector wrote it, on every node as on its own."""
        targets = [detector_population(row) for row in rows]
        out = []
        for name, pop in self.node.populations.items():
            part = [row for row, target in zip(rows, targets, strict=True) if target is None or target == name]
            if part:
                out.append((pop, part))
        return out

    def answer(self) -> dict[str, Any]:
        vectors = self.vectors()
        return {"region": self.region, "version_vector": vectors.combined(), "vectors": vectors.to_json()}

    # ---------------------------------------------------------------- sending
    def poke(self) -> None:
        """Sync with every peer now (after a write)."""
        for event in self._wake:
            event.set()

    def stop(self) -> None:
        """Stop the sync threads and wait for them (at most one request's timeout in all): the
        node closes its log and detectors next, and a thread still joining a delta must not
        touch them. A thread that outlives the wait joins nothing: :meth:`receive` refuses
        once stopped."""
        self._stop.set()
        self.poke()
        deadline = time.monotonic() + self._request_timeout() + 1.0
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("peer sync threads still in a request at shutdown (they join nothing): %s", alive)

    def _request_timeout(self) -> float:
        return max(1.0, min(10.0, 2 * self.node.settings.sync_seconds))

    def _age(self, link: PeerLink) -> float:
        return math.inf if link.last_sync is None else max(0.0, self.node.settings.clock() - link.last_sync)

    def _run(self, i: int) -> None:
        import httpx

        link, wake, node = self.links[i], self._wake[i], self.node
        token = node.settings.peer_token
        headers = {"Content-Type": "application/octet-stream",
                   **({"Authorization": f"Bearer {token}"} if token else {})}
        with httpx.Client(timeout=self._request_timeout(), verify=True) as client:
            while not self._stop.is_set():
                wake.wait(node.settings.sync_seconds)
                wake.clear()
                if self._stop.is_set() or node.state == "draining":
                    return
                if node.state != "ready":
                    continue
                self.sync_once(link, client, headers)

    def sync_once(self, link: PeerLink, client, headers: dict[str, str]) -> bool:
        """One anti-entropy exchange with ``link`` (push, then pull); whether it succeeded.

        Push: the delta since the peer's last answer. Before any answer (a first
        contact, or after this node restarted) it first asks for the peer's vectors
        (``GET /v1/peer/vectors``), then pushes only what they lack: a node back from its
        data directory ships a delta, not its state. Pull (``POST /v1/peer/pull``
        with this node's vectors): the peer answers what this node lacks, joined as a
        pushed delta would be — a new node's first pull is a full state transfer from
        that one peer; pulls are one at a time, so its next pulls are deltas.
        """
        node = self.node
        try:
            if link.vectors is None:
                self._hello(link, client, headers)
            self._push(link, client, headers)
            if self._stop.is_set():
                raise RuntimeError("the node is shutting down")
            if node.log.broken is not None:
                # a pulled delta is joined through the log, which takes no write until a restart:
                # pulling would fail every sync and count it against a healthy peer. Push only (the
                # peer still gets this node's acknowledged state); no last_sync. The confidence factor
                # follows the replicas' freshness: it decays while the peer holds rows this node has
                # not taken (the peer's pushes are refused), a peer's "nothing new" contact restores it.
                raise _LogNeedsRestart(node.log.broken)
            with self._pull_lock:
                self._pull(link, client, headers)
        except _LogNeedsRestart as exc:     # before the pull, or broken while its answer was on its way
            link.reachable = True
            link.last_error = f"not pulling: this node's durable log refuses writes until a restart ({exc})"[:200]
            return False
        except Exception as exc:            # noqa: BLE001 - any failure of a peer is a failed sync, counted
            link.reachable, link.failures, link.last_error = False, link.failures + 1, one_line(str(exc))[:200]
            if str(exc)[:4] in ("409:", "422:"):      # refused: ask for its vectors again next time
                link.vectors = None
            self.failures_metric.labels(link.url).inc()
            return False
        link.reachable, link.last_sync, link.last_error = True, node.settings.clock(), None
        return True

    def _exchange(self, client, method: str, url: str, **kwargs) -> tuple[int, bytes, int, str | None]:
        """One request to a peer: (status, body inflated, bytes on the wire, content type); the body is bounded
        by ``max_body_bytes`` on the wire and after inflating (a 413 ``ApiError`` past it)."""
        limit = self.node.settings.max_body_bytes
        with client.stream(method, url, **kwargs) as response:
            wire = _read_raw(response, limit)
            return (response.status_code, inflate(wire, response.headers.get("content-encoding"), limit), len(wire),
                    response.headers.get("content-type"))

    def _answered(self, link: PeerLink, client, method: str, url: str, **kwargs) -> None:
        try:
            status, data, _, _ = self._exchange(client, method, url, **kwargs)
        except ApiError as exc:
            raise RuntimeError(f"the answer: {exc.status} {exc.message}") from None
        body = json.loads(data)
        if status != 200:
            raise RuntimeError(f"{status}: {body.get('error', '') if isinstance(body, dict) else ''}")
        link.vectors = NodeVectors.from_json(body["vectors"])
        link.region = str(body["region"])

    def _hello(self, link: PeerLink, client, headers: dict[str, str]) -> None:
        # the peer's vectors (GET /v1/peer/vectors): a delta claims the sender's vectors, so an
        # empty one cannot ask
        self._answered(link, client, "GET", f"{link.url}/v1/peer/vectors",
                       headers={"Authorization": headers.get("Authorization", "")})

    def _push(self, link: PeerLink, client, headers: dict[str, str]) -> None:
        node = self.node
        with node.lock:
            delta = self.replicas.delta_since(link.vectors, now=node.settings.clock())
            contact = quiet_contact(delta, self.vectors(), link.vectors)
            data = delta.to_bytes() if contact is None else contact_bytes(contact)
        if contact is None:
            data = gzip.compress(data, compresslevel=WIRE_GZIP_LEVEL)    # the npz headers are most of a small delta
            sent = {**headers, "Content-Encoding": "gzip"}
        else:       # the peer lacks nothing: a few hundred bytes of JSON still count as contact
            sent = {**headers, "Content-Type": "application/json"}
        self._answered(link, client, "POST", f"{link.url}/v1/peer/delta", content=data, headers=sent)
        link.bytes_shipped += len(data)
        self.bytes_metric.labels(link.url).inc(len(data))

    def _pull(self, link: PeerLink, client, headers: dict[str, str]) -> None:
        mine = self.vectors().to_json()
        # the answer is bounded as a pushed delta is (read_body): at most max_body_bytes on the
        # wire and after inflating, so a peer (or whatever answers at its address) cannot make
        # this node expand a gzip bomb or hold an endless body
        try:
            status, data, wire, content_type = self._exchange(client, "POST", f"{link.url}/v1/peer/pull", json={"vectors": mine},
                                                headers={**headers, "Content-Type": "application/json"})
        except ApiError as exc:
            raise RuntimeError(f"the pulled delta: {exc.status} {exc.message}") from None
        if status != 200:
            raise RuntimeError(f"{status}: {one_line(data.decode('utf-8', 'replace'))[:200]}")
        try:
            if is_contact(data):     # nothing new: contact only (read from the body, not its label)
                with self.node.lock:
                    self._check_log_takes_writes()
                    self._receive_contact(data)
            else:
                delta = decode_delta(data)
                with self.node.lock:
                    self._check_log_takes_writes()
                    self._receive_checked(delta, data)
        except ApiError as exc:
            raise RuntimeError(f"the pulled delta: {exc.status} {exc.message}") from None
        except SwarmGuardError as exc:
            raise RuntimeError(f"the pulled delta: {one_line(exc)}") from None
        link.bytes_received += wire
        self.received_metric.labels(link.url).inc(wire)

    def _check_log_takes_writes(self) -> None:
        # under the node's lock, as every write is: the log may have broken (another thread's
        # commit failing half-way) while the pull's answer was on its way since sync_once checked it
        broken = self.node.log.broken
        if broken is not None:
            raise _LogNeedsRestart(broken)

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
                               "region_counts": replica.region_counts(),
                               "registers_sha256": registers_digest(replica)}
            ledger = self.replicas.ledger
            rows = [row for origin in ledger.origins() for row in ledger.rows_of(origin)]
            evidence = {"rows": len(rows), "log_odds_sum": math.fsum(float(r[3]) for r in rows)}
            return {"region": self.region, "peers": [link.to_dict() for link in self.links],
                    "version_vector": vectors.combined(), "vectors": vectors.to_json(),
                    "confidence_factor": view_confidence(node), "consistency": node.settings.consistency,
                    "populations": views, "evidence": evidence}


class _LogNeedsRestart(Exception):
    """This node's durable log refuses writes until a restart: :meth:`PeerReplication.sync_once`
    pushes but pulls nothing, and counts no failure against the peer (not an error of the peer)."""


def registers_digest(replica: RegionReplica) -> str:
    """SHA-256 hex of a replica's registers (agent, timestamp, writer, seq, vector, score as
    bits), sorted by agent: equal on two nodes exactly when their registers are bit-identical."""
    entries = replica.delta_since(VersionVector())
    reg = {k[len("registers."):]: np.asarray(v) for k, v in entries.items() if k.startswith("registers.")}
    h = hashlib.sha256()
    n = int(reg["seq"].size)
    ints, strs = reg["int_ids"].tolist(), reg["str_ids"].tolist()
    # an agent id is an int or a string (one of the two columns holds all of them, serve's are strings)
    ids = [f"i{v}" for v in ints] if len(ints) == n else [f"s{v}" for v in strs] if len(strs) == n else None
    if ids is None:                       # mixed kinds: the columns as they are
        for key in sorted(reg):
            h.update(key.encode() + np.ascontiguousarray(reg[key]).tobytes())
        return h.hexdigest()
    order = sorted(range(len(ids)), key=ids.__getitem__)
    regions = [str(r) for r in reg["regions"].tolist()]
    for i in order:
        h.update(json.dumps([ids[i], regions[int(reg["writer"][i])], int(reg["seq"][i])]).encode())
        h.update(np.ascontiguousarray(reg["timestamp"][i]).tobytes())
        h.update(np.ascontiguousarray(reg["features"][i]).tobytes())
        h.update(np.ascontiguousarray(reg["anomaly_score"][i]).tobytes())
    return h.hexdigest()


def detector_population(row: list[Any]) -> str | None:
    """The population whose detector wrote an evidence row (its source ``serve:<region>:<population>``,
    type ``behavioral_anomaly``); None for an observer's row."""
    if row[2] != "behavioral_anomaly":
        return None
    return detector_source_population(row[6])


def conflict_alias(row: list[Any]) -> str:
    """The evidence id a conflicting row is counted under: ``~`` and 32 hex digits of the
    SHA-256 of its content (id included), the same on every node."""
    return "~" + hashlib.sha256(_content_text(row).encode("utf-8")).hexdigest()[:32]


def _content_text(row: list[Any]) -> str:
    # JSON of the row: Python's float repr reads back bit for bit, so equal text is equal bits
    return json.dumps(list(row), separators=(",", ":"), allow_nan=False)


def _all_accept(pops: list, columns: tuple) -> bool:
    try:
        for pop in pops:
            pop.check_evidence(columns)
    except DuplicateEvidenceError:
        return False
    return True


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


def _read_raw(response, limit: int) -> bytes:
    """A streamed httpx response's body as sent (still encoded), refused (413) past ``limit`` bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the answer passes the limit of {limit} bytes", code="too_large")
    chunks, size = [], 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the answer passes the limit of {limit} bytes", code="too_large")
        chunks.append(chunk)
    return b"".join(chunks)


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
        replica = pop.replica(node.settings.region)    # None too on Ray, whose view keeps no replicas here
        if replica is None:
            continue
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
    contact = is_contact(data)          # from the body: a relabelled request still reads right
    return await run_in_threadpool(replication_of(node).receive, data, contact)


@router.get("/v1/peer/vectors", summary="This node's region and vectors (peer token)",
            dependencies=[Depends(_peer_only)])
def get_vectors(request: Request) -> dict:
    replication = replication_of(request.app.state.node)
    with request.app.state.node.lock:
        return replication.answer()


@router.post("/v1/peer/pull", summary="What the caller (a peer) lacks, as a delta: body {\"vectors\": its vectors}",
             dependencies=[Depends(_peer_only)])
async def post_pull(request: Request) -> Response:
    node = request.app.state.node
    data = await read_body(request, node.settings.max_body_bytes, node.settings.body_timeout_seconds)
    try:
        body = json.loads(data)
        vectors = NodeVectors.from_json(body.get("vectors") if isinstance(body, dict) else None)
    except (ValueError, SwarmGuardError) as exc:
        raise ApiError(422, f"a pull is {{\"vectors\": ...}}: {one_line(exc)}", code="bad_pull") from None
    delta, contact = await run_in_threadpool(replication_of(node).delta_for, vectors)
    if contact:
        return Response(content=delta, media_type="application/json")
    if "gzip" not in request.headers.get("accept-encoding", "").lower():
        return Response(content=delta, media_type="application/octet-stream")
    return Response(content=gzip.compress(delta, compresslevel=WIRE_GZIP_LEVEL), media_type="application/octet-stream",
                    headers={"Content-Encoding": "gzip"})


@router.get("/v1/cluster", summary="The peers this node sees, their last sync, its version vector",
            dependencies=[Depends(requires("read"))])
def get_cluster(request: Request) -> dict:
    return replication_of(request.app.state.node).cluster()
