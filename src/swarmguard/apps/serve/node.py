"""``ServeNode``: one node's state — populations, the durable log, windows, events — and its rules.

Every state change goes through the node's lock in this order: check, write the
durable log (:class:`~.durable_log.DurableLog`, synced), apply in memory. So the
log's order is the order of application, and :meth:`ServeNode.replay` — run by
the constructor — rebuilds exactly the state that was acknowledged: the
behaviours of each closed window and its round, the evidence in between, and the
open window's behaviours so far. The detectors' clock is the logged arrival time
of the record being applied, so a replayed round is the same round.

Feeding the node from another module (e.g. ``POST /v1/traces``): build a
:class:`~.records.BehaviorBatch` (``agent_ids``, ``X`` (n, d), ``cohorts``) and
call :meth:`ServeNode.accept_behaviors` with the population's name (``"spans"``
for OTLP-derived vectors) and its ``feature_names``; it returns after the batch
is durable, and the vectors count in the open window. From a route, the node is
``request.app.state.node``.

Extensions (:func:`node_extensions`): a feeder that keeps state of its own between a
request and the window's close (``POST /v1/traces`` keeps spans, and makes vectors
only when the window closes) is an object built with the node, before the replay,
with ``kinds`` (the log record kinds it writes), ``apply(record)`` (one of its records,
live or replayed) and ``before_close(at)`` (called first in every window close, live
or replayed, under the node's lock), and optionally ``after_close(at, outcomes)`` (called
last in every window close, with the populations' :class:`~.population.WindowOutcome`). It logs with ``node.log.append`` under
``node.lock`` and opens the window with :meth:`ServeNode.open_window`.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...api import EvidenceType
from ...errors import EvidenceStoreError, SwarmGuardError
from .durable_log import BEHAVIORS, CLOSE_WINDOW, EVIDENCE, DurableLog, LogRecord
from .events import EventLog
from .http_errors import ApiError, one_line
from .metrics import ServeMetrics
from .population import Population, WindowOutcome, find_agent_in
from .read_view import ReadView, publish_view
from .records import BehaviorBatch, EvidenceBatch, LineError, Refusals
from .settings import ServeSettings
from .snapshot import Snapshots

__all__ = ["ServeNode", "IngestResult", "BEHAVIORS_POPULATION", "SPANS_POPULATION", "DEFAULT_POPULATIONS"]

BEHAVIORS_POPULATION = "behaviors"      # POST /v1/behaviors
SPANS_POPULATION = "spans"              # POST /v1/traces (OTLP-derived vectors)
DEFAULT_POPULATIONS = (BEHAVIORS_POPULATION, SPANS_POPULATION)

log = logging.getLogger("swarmguard.serve")


@dataclass(frozen=True)
class IngestResult:
    """An ingest request's answer: how many items were accepted and refused, and why."""

    accepted: int
    rejected: int
    errors: list[LineError] = field(default_factory=list)

    def to_dict(self, max_errors: int = 100) -> dict[str, Any]:
        return {"accepted": self.accepted, "rejected": self.rejected,
                "errors": [e.to_dict() for e in self.errors[:max_errors]]}


class ServeNode:
    """One node (module docstring). ``populations``: the names of its populations, each with
    its own detector (evidence goes to every one: an agent's evidence counts wherever the
    agent is scored)."""

    def __init__(self, settings: ServeSettings, data_dir: str | Path,
                 populations: Sequence[str] = DEFAULT_POPULATIONS, metrics: ServeMetrics | None = None):
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.metrics = metrics or ServeMetrics()
        self.events = EventLog()
        self._lock = threading.RLock()
        self._at = settings.clock()          # the detectors' clock: the time of the record applied
        self.populations: dict[str, Population] = {}
        for name in populations:
            self._population(name)
        self.opened_at: float | None = None  # arrival of the open window's first vector
        self.state = "starting"               # starting -> ready -> draining
        self.read_view: ReadView | None = None  # published while a window closes (.read_view)
        self._isolations: list[dict[str, Any]] = []  # a close's events, published after its view
        self.extensions = [make(self) for make in node_extensions()]
        self.log = DurableLog(self.data_dir)
        try:
            self.snapshots = Snapshots(self, settings.snapshot_every)     # see .snapshot
            self.replayed = self.replay()
            self._rank_agents()                     # before the first read, which would pay for it
            self.state = "ready"
            for extension in self.extensions:      # e.g. the peer sync threads: only once the node is whole
                start = getattr(extension, "start", None)
                if start is not None:
                    start()
        except BaseException:
            # nobody gets this node to close: stop what started (the sync threads, decode
            # workers) and close the log, then raise the start's own error (the CLI's line)
            try:
                self.close()
            except Exception:
                log.exception("closing the node that failed to start failed too")
            raise

    @property
    def lock(self) -> threading.RLock:
        """The node's lock: hold it to read several of its parts as one state (queries do, or
        answer from :attr:`read_view` while a close holds it: :func:`.read_view.answer`)."""
        return self._lock

    # ---------------------------------------------------------------- the pieces
    def _population(self, name: str) -> Population:
        pop = self.populations.get(name)
        if pop is None:
            dim = self.settings.features if name == BEHAVIORS_POPULATION else None
            pop = Population(name, self.settings, lambda: self._at, dim)
            self.populations[name] = pop
        return pop

    def dimension(self, population: str = BEHAVIORS_POPULATION) -> int | None:
        """The population's vector length (None until its first vector or ``--features``)."""
        pop = self.populations.get(population)
        return None if pop is None else pop.dimension

    @property
    def window_rows(self) -> int:
        return sum(len(p.window) for p in self.populations.values())

    def window_end(self) -> float | None:
        """When the open window closes on the node's clock (None: no vector in it yet)."""
        if self.opened_at is None:
            return None
        w = self.settings.window_seconds
        return (math.floor(self.opened_at / w) + 1) * w

    # ---------------------------------------------------------------- ingest
    def accept_behaviors(self, batch: BehaviorBatch, population: str = BEHAVIORS_POPULATION,
                         feature_names: Sequence[str] | None = None) -> IngestResult:
        """Add a request's behaviour vectors to the open window, durably (returns once logged).

        The population's dimension is fixed by its first vector (or ``--features``): a batch
        of another dimension is refused whole, each row counted in ``rejected``. Raises
        :class:`ApiError` 429 when the open window holds ``max_window_rows`` vectors, 503
        while draining; then nothing changed.
        """
        errors = Refusals(batch.errors, batch.unlisted)
        with self._lock:
            self._check_open()
            pop = self._population(population)
            if batch.size == 0:
                return self._count(population_kind(population), 0, errors)
            d = batch.X.shape[1]
            if pop.dimension is not None and d != pop.dimension:
                numbers = batch.lines if batch.lines is not None else [0] * batch.size
                for a, line in zip(batch.agent_ids, numbers, strict=True):
                    errors.add(line, f"agent {a}: features has {d} values; this node's {population} "
                                     f"vectors have {pop.dimension}")
                return self._count(population_kind(population), 0, errors)
            if batch.size > self.settings.max_window_rows:       # would never fit: a 429 would be retried forever
                raise ApiError(413, f"{batch.size} vectors in one request: the open window holds at most "
                                    f"{self.settings.max_window_rows}; split the request", code="too_many_vectors")
            if self.window_rows + batch.size > self.settings.max_window_rows:
                raise ApiError(429, f"the open window holds {self.window_rows} vectors (limit "
                                    f"{self.settings.max_window_rows}): retry after it closes",
                               code="overloaded", headers={"Retry-After": str(self._retry_after())})
            at = self.settings.clock()
            meta = {"population": population, "agents": batch.agent_ids, "cohorts": batch.cohorts, "d": d,
                    "feature_names": list(feature_names) if feature_names else None}
            self._log_append(BEHAVIORS, at, meta, batch.X)
            self._apply_behaviors(at, meta, batch.X)
            self.metrics.queue_depth.labels("window_rows").set(self.window_rows)
            return self._count(population_kind(population), batch.size, errors)

    def _apply_behaviors(self, at: float, meta: dict[str, Any], X: np.ndarray) -> None:
        pop = self._population(meta["population"])
        pop.dimension = int(meta["d"])
        if meta.get("feature_names") and pop.feature_names is None:
            pop.feature_names = list(meta["feature_names"])
        pop.window.add(list(meta["agents"]), X, list(meta["cohorts"]))
        if self.opened_at is None:
            self.opened_at = at

    def accept_evidence(self, batch: EvidenceBatch) -> IngestResult:
        """Store a request's evidence in every population's consensus, durably; a row the
        consensus refuses (an id already held with other content, ...) is refused alone."""
        errors = Refusals(batch.errors, batch.unlisted)
        with self._lock:
            self._check_open()
            rows, lines = list(batch.rows), list(batch.lines)
            problem, held = self._evidence_check(rows) if rows else (None, False)
            if problem is not None:
                refused = self._refused_alone(list(zip(rows, lines, strict=True)))
                keep = []
                for row, line in zip(rows, lines, strict=True):
                    problem = refused.get(line)
                    if problem is None:
                        keep.append((row, line))
                    else:
                        errors.add(line, problem)
                keep, clashes = _without_clashes(keep)
                for clash in clashes:
                    errors.add(clash.line, clash.error)
                rows, lines = [r for r, _ in keep], [n for _, n in keep]
                problem, held = self._evidence_check(rows) if rows else (None, False)
                if problem is not None:        # cannot happen after the checks above; refuse all, change nothing
                    for n in lines:
                        errors.add(n, problem)
                    rows, lines = [], []
            if rows and held:
                # every row is held already, with the same content: a request sent again (its answer
                # lost, or its commit reported failed after it had landed, which counts as written):
                # acknowledged, neither logged nor numbered for the peers again, so it counts once
                self.metrics.accepted.labels("evidence_repeated").inc(len(rows))
                self.metrics.refused.labels("evidence").inc(len(errors))
                return IngestResult(len(rows), len(errors), errors.sorted())
            if rows:
                at = self.settings.clock()
                meta = {"rows": [[r.evidence_id, r.agent_id, r.evidence_type.value, r.log_odds, r.confidence,
                                  r.timestamp, r.source_node] for r in rows]}
                self._log_append(EVIDENCE, at, meta)
                self._apply_evidence(at, meta)
            return self._count("evidence", len(rows), errors)

    @staticmethod
    def _evidence_columns(rows: list[list[Any]]) -> tuple:
        cols = list(zip(*rows, strict=True))
        return (np.array(cols[0], dtype=object), np.array(cols[1], dtype=object),
                [EvidenceType(t) for t in cols[2]], np.array(cols[3], dtype=np.float64),
                np.array(cols[4], dtype=np.float64), np.array(cols[5], dtype=np.float64),
                np.array(cols[6], dtype=object))

    def _evidence_problem(self, rows: list) -> str | None:
        return self._evidence_check(rows)[0]

    def _evidence_check(self, rows: list) -> tuple[str | None, bool]:
        """(why the consensus would refuse ``rows``, or None; whether every population holds
        every row already with the same content, so that ingesting them would change nothing)."""
        columns = self._evidence_columns([[r.evidence_id, r.agent_id, r.evidence_type.value, r.log_odds,
                                           r.confidence, r.timestamp, r.source_node] for r in rows])
        try:
            new = [pop.check_evidence(columns) for pop in self.populations.values()]
        except SwarmGuardError as exc:
            return one_line(exc), False
        return None, bool(new) and all(n == 0 for n in new)

    def _refused_alone(self, pairs: list) -> dict[int, str]:
        """{line: problem} of the ``(evidence, line)`` pairs the consensus refuses on their own,
        found by halving (a batch with a refused row is refused): about 2 log2(n) checks per
        refused row instead of one per row, since this runs under the node's lock."""
        if len(pairs) == 1:
            problem = self._evidence_problem([pairs[0][0]])
            return {} if problem is None else {pairs[0][1]: problem}
        if self._evidence_ok([row for row, _ in pairs]):
            return {}
        half = len(pairs) // 2
        # both halves fine but not together: rows that clash with each other, each fine alone
        return {**self._refused_alone(pairs[:half]), **self._refused_alone(pairs[half:])}

    def _evidence_ok(self, rows: list) -> bool:
        return self._evidence_problem(rows) is None

    def _apply_evidence(self, at: float, meta: dict[str, Any]) -> None:
        self._at = at
        columns = self._evidence_columns(meta["rows"])
        for pop in self.populations.values():
            pop.ingest_evidence(columns)
        for extension in self.extensions:      # e.g. the peer ledger numbers the node's own evidence
            hook = getattr(extension, "after_evidence", None)
            if hook is not None:
                hook(meta["rows"])

    # ---------------------------------------------------------------- windows
    def open_window(self, at: float) -> None:
        """Count ``at`` as an arrival in the open window (the first one opens it)."""
        if self.opened_at is None:
            self.opened_at = at

    def window_due(self, now: float | None = None) -> bool:
        end = self.window_end()
        return end is not None and (self.settings.clock() if now is None else now) >= end

    def close_window(self) -> list[WindowOutcome]:
        """Close the open window now: one detector round per population with vectors in it
        (logged first, so a restart replays it). Returns the outcomes ([]: nothing was open)."""
        with self._lock:
            if self.opened_at is None:
                return []
            # reads answer from this view of the state before the close until it is wholly
            # applied (.read_view); published before anything changes, withdrawn after
            self.read_view = self._published_view()
            try:
                at = self.settings.clock()
                seq = self._log_append(CLOSE_WINDOW, at, {})
                outcomes = self._apply_close(at, live=True)
                self._rank_agents()
            finally:
                self.read_view = None
                self._publish_isolations()
            self.metrics.queue_depth.labels("window_rows").set(0)
            self.snapshots.after_close(seq)
            return outcomes

    def _rank_agents(self) -> None:
        """Rank the agent tables after the replay, and after a live close while reads still
        answer from its view (a read then takes its top K at once, :mod:`.ranked_agents`);
        a failure only leaves the ranking to the first read."""
        try:
            for pop in self.populations.values():
                pop.rank_agents()
        except Exception:                  # noqa: BLE001 - the close is applied: never fail it now
            log.exception("the agent tables were not ranked after this close")

    def _published_view(self) -> ReadView | None:
        """The read view of the state now (:mod:`.read_view`); None when it cannot be built:
        the view only spares reads the wait, so the close goes on without it (reads wait)."""
        try:
            return publish_view(self)
        except Exception:                  # noqa: BLE001 - never let the view stop a close
            log.exception("no read view for this close: reads wait for it")
            return None

    def _publish_isolations(self) -> None:
        """Publish the isolation events the close found, once its read view is withdrawn:
        ``/v1/events`` streams them without the node's lock, and a client that saw one must
        not then read the state before the close from the view (the lock is still held, so
        reads from now on wait for the close and answer from after it)."""
        pending, self._isolations = self._isolations, []
        for event in pending:
            self.events.publish(event)

    def _apply_close(self, at: float, live: bool) -> list[WindowOutcome]:
        self._at = at
        for extension in self.extensions:      # e.g. spans become vectors in the open window
            extension.before_close(at)
        # The round's vectors are written with the window's end as their timestamp when it
        # closes late: a node paused or restarted closes late, and its older vectors must not
        # win last-writer-wins over later writes of the same agents on other nodes. A window
        # closed early (drain, POST /v1/admin/close-window) keeps its close time: its end lies
        # in the future, and would tie with (or beat) later writes in other nodes' windows.
        end = self.window_end()
        end = None if end is None else min(at, end)
        self.opened_at = None
        outcomes = []
        for pop in self.populations.values():
            try:
                outcome = pop.close_window(at if end is None else end)
            except SwarmGuardError as exc:
                # the round refused its input (ingest checks what the detector checks, so only a
                # feeder that bypassed them gets here): its vectors are dropped, the same way live
                # and in replay, so a restart neither fails on this record nor differs from the live node
                log.error("window round of population %s refused its input, %d vectors dropped: %s",
                          pop.name, pop.dropped_rows, exc)
                self.metrics.errors.labels("round_failed", "500").inc()
                continue
            if outcome is None:
                continue
            outcomes.append(outcome)
            for agent in outcome.isolated:
                state = pop.agents[agent]
                self._isolations.append({"type": "isolation", "agent_id": agent, "population": pop.name,
                                     "cohort": state.cohort, "severity": state.severity,
                                     "p_value": state.p_value, "score": state.score,
                                     "window": outcome.window, "at": at})
            if live:
                self.metrics.isolations.inc(len(outcome.isolated))
            self.metrics.agents.labels(pop.name).set(len(pop.agents))
        for extension in self.extensions:      # e.g. the dashboard's per-window history
            after = getattr(extension, "after_close", None)
            if after is not None:
                after(at, outcomes)
        if live and outcomes:
            self.metrics.windows_closed.inc()
        return outcomes

    # ---------------------------------------------------------------- restart
    def replay(self) -> int:
        """Rebuild the state from the durable log (the constructor's first step): the kept
        snapshot, then the records after it; the records read."""
        count = 0
        with self._lock:
            for record in self.log.records(after=self.snapshots.load()):
                self._apply(record)
                count += 1
        return count

    def _apply(self, record: LogRecord) -> None:
        if record.kind == BEHAVIORS:
            self._apply_behaviors(record.at, record.meta, record.matrix)
        elif record.kind == EVIDENCE:
            self._apply_evidence(record.at, record.meta)
        elif record.kind == CLOSE_WINDOW:
            try:
                self._apply_close(record.at, live=False)
            finally:
                self._publish_isolations()
        else:
            for extension in self.extensions:
                if record.kind in extension.kinds:
                    extension.apply(record)

    def _log_append(self, kind: str, at: float, meta: dict[str, Any], matrix: np.ndarray | None = None) -> int:
        """Log a record before applying it; a write that fails is 503 and nothing is applied (the
        request is not acknowledged; a record whose commit failed half-way, its WAL frames written
        but not synced, may still be replayed after a restart, which at-least-once retries
        allow). A commit SQLite reports failed whose record is in the file returns as written
        (:mod:`.durable_log`), so the node applies what a restart replays."""
        try:
            return self.log.append(kind, at, meta, matrix)
        except EvidenceStoreError as exc:
            log.error("%s", exc)
            if self.log.broken is not None:     # the failed write may be in the file: promise nothing
                raise ApiError(503, f"the node's durable log refuses writes until the node restarts: "
                                    f"{self.log.broken}", code="log_write_failed",
                               headers={"Retry-After": "5"}) from None
            raise ApiError(503, f"the node's durable log cannot be written, nothing was applied: "
                                f"{str(exc).rsplit(': ', 1)[-1]}", code="log_write_failed",
                           headers={"Retry-After": "5"}) from None

    # ---------------------------------------------------------------- life cycle
    def _check_open(self) -> None:
        if self.state == "draining":
            raise ApiError(503, "the node is shutting down", code="draining", headers={"Retry-After": "5"})
        for extension in self.extensions:      # e.g. STRONG without a majority of peers: 503
            check = getattr(extension, "check_writable", None)
            if check is not None:
                check()

    def _retry_after(self) -> int:
        end = self.window_end()
        wait = 1 if end is None else end - self.settings.clock()
        return max(1, int(math.ceil(wait)))

    def _count(self, kind: str, accepted: int, errors: Refusals) -> IngestResult:
        self.metrics.accepted.labels(kind).inc(accepted)
        self.metrics.refused.labels(kind).inc(len(errors))
        return IngestResult(accepted, len(errors), errors.sorted())

    def drain(self) -> list[WindowOutcome]:
        """Stop taking writes (readyz 503, ingest 503), close the open window, then snapshot (neither
        while the log needs a restart, nor when the close cannot be written: the window stays open
        in the file, and the drain does not raise, so the shutdown still closes the node)."""
        with self._lock:
            self.state = "draining"
            outcomes = []
            if self.log.broken is not None:     # neither close nor snapshot can be logged: the restart rebuilds
                log.warning("draining without closing the window or a snapshot: %s", self.log.broken)
                return outcomes
            if self.opened_at is not None:
                at = self.settings.clock()
                try:
                    self._log_append(CLOSE_WINDOW, at, {})
                except ApiError as exc:     # raising would fail the shutdown before node.close()
                    # the window stays open in the file (the restart rebuilds it); no snapshot of an open window
                    log.warning("draining without closing the window or a snapshot: %s", exc.message)
                    return outcomes
                self.read_view = self._published_view()
                try:
                    outcomes = self._apply_close(at, live=True)
                finally:
                    self.read_view = None
                    self._publish_isolations()
            self.snapshots.take(self.log.last_seq())
            return outcomes

    def close(self) -> None:
        """Stop every extension (the peer sync threads, the decode workers), then close the log
        and the detectors. Each step runs even when one before it raised (a sync thread's stop
        failing must not leave the decode workers running or the log open); the first error is
        raised once all of them ran, the others logged."""
        errors: list[BaseException] = []

        def attempt(step, *args) -> None:
            try:
                step(*args)
            except Exception as exc:        # noqa: BLE001 - every step runs; the first is raised
                if errors:
                    log.exception("closing the node: a further step failed too")
                errors.append(exc)

        for extension in self.extensions:
            stop = getattr(extension, "stop", None)
            if stop is not None:
                attempt(stop)
        with self._lock:
            attempt(self.log.close)
            for pop in self.populations.values():
                attempt(pop.detector.close)
        if errors:
            raise errors[0]

    # ---------------------------------------------------------------- queries
    def find_agent(self, agent_id: str, population: str | None = None):
        """(population, state) of an agent seen in a closed window (None: unknown)."""
        with self._lock:
            return find_agent_in(self.populations, agent_id, population)


def node_extensions() -> list:
    """The extension factories every node is built with (module docstring): the peer
    replication (:mod:`.peers`), the OTLP span ingest when ``opentelemetry-proto`` is
    installed, and the dashboard's window history."""
    from ..dashboard.history import WindowHistory
    from .peers import PeerReplication

    try:
        from ..otlp.traces import SpanIngest
    except ImportError:                 # no opentelemetry-proto: no POST /v1/traces
        return [PeerReplication, WindowHistory]
    return [PeerReplication, SpanIngest, WindowHistory]


def _without_clashes(rows: list) -> tuple[list, list[LineError]]:
    """``(evidence, line)`` pairs less those whose id another line of the same body uses with
    other content (each such line refused, naming the other); exact repeats are kept."""
    first: dict[Any, tuple[Any, int]] = {}
    clashing: set[Any] = set()
    for row, line in rows:
        seen = first.setdefault(row.evidence_id, (row, line))
        if seen[0] != row:
            clashing.add(row.evidence_id)
    errors = [LineError(line, f"evidence_id {row.evidence_id!r} appears in line {first[row.evidence_id][1]} "
                              "with other content") for row, line in rows if row.evidence_id in clashing]
    return [(r, n) for r, n in rows if r.evidence_id not in clashing], errors


def population_kind(population: str) -> str:
    """The ``/metrics`` kind of a population's items (behaviors; spans for OTLP's)."""
    return population
