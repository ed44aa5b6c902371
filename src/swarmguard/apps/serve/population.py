"""``Population``: one detector over one kind of behaviour vector, its open window and its agents.

A node keeps separate populations (``/v1/behaviors`` vectors and OTLP-derived
vectors are not comparable): each has its own detector, dimension, feature
names and agent table. Not thread-safe by itself: the node calls it under its lock.
"""

from __future__ import annotations

import gc
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...api import DistributedBehavioralDetector
from ...api.consensus import evidence_columns
from ...api.evidence_types import EvidenceType
from ...errors import UnknownAgentError
from ...structures.chi2 import chi2_logsf
from ..report_data import feature_shares
from .agent_state import AgentState, severities
from .cohort_summaries import CohortSummaries, summaries_of
from .ranked_agents import RankedAgents, ranked_of
from .replica_read import replica_ranking
from .settings import ServeSettings
from .tokens import DETECTOR_SOURCE_PREFIX
from .window import WindowBuffer

__all__ = ["Population", "WindowOutcome", "detector_source_population", "find_agent_in"]


def detector_source_population(source: Any) -> str | None:
    """The population of a node's detector source ``serve:<region>:<population>`` (None: not one;
    no token may sign evidence so, :mod:`.tokens`)."""
    if not isinstance(source, str) or not source.startswith(DETECTOR_SOURCE_PREFIX):
        return None
    parts = source.split(":", 2)
    return parts[2] if len(parts) == 3 else None


@dataclass(frozen=True)
class WindowOutcome:
    """A closed window of one population: the agents scored and the newly isolated ones;
    ``own_evidence``: the detector's own evidence rows of the round (the agents it flagged),
    ``[evidence_id, agent_id, type, log_odds, confidence, timestamp, source_node]`` as the
    node logs observers' rows (the peer replication numbers and ships them)."""

    population: str
    window: int
    agents: int
    isolated: list[str]
    own_evidence: list[list[Any]] = field(default_factory=list)


class Population:
    """Detector + open window + latest result per agent (module docstring)."""

    def __init__(self, name: str, settings: ServeSettings, clock, dimension: int | None = None):
        self.name = name
        self.region = settings.region
        self.dimension = dimension
        self.feature_names: list[str] | None = None
        params: dict[str, Any] = dict(clock=clock, default_region=settings.region,
                                      node_id=f"{DETECTOR_SOURCE_PREFIX}{settings.region}:{name}",
                                      significance_level=settings.significance_level,
                                      require=settings.require, feature_dimensions=dimension,
                                      auto_sync_seconds=None)
        if settings.warm_up is not None:
            params["warm_up"] = settings.warm_up
        if settings.address is not None:
            params["address"] = settings.address
        self.detector = DistributedBehavioralDetector(backend=settings.backend, **params)
        self.window = WindowBuffer()
        self.agents: dict[str, AgentState] = {}
        self.windows_closed = 0
        self.dropped_rows = 0
        self._ranked: RankedAgents | None = None      # the agent table ranked (.ranked_agents)
        self._replica_ranked = None                   # the replica's other agents ranked (.replica_read)
        self._summaries: CohortSummaries | None = None  # /v1/populations' summaries (.cohort_summaries)
        self._table_grown: tuple[int, int, dict] | None = None   # set by close_window (.replica_read)

    def names(self) -> list[str]:
        """The feature names (``f0``, ``f1``, … unless the feeder named them)."""
        d = self.dimension or 0
        return self.feature_names if self.feature_names else [f"f{j}" for j in range(d)]

    def close_window(self, timestamp: float | None = None) -> WindowOutcome | None:
        """One detector round of the agents active in the open window (None: nobody was);
        ``timestamp``: the round's (its vectors' last-writer-wins time; default the clock's)."""
        if not len(self.window):
            return None
        ids, X, cohorts = self.window.take()
        self.dropped_rows = len(ids)              # what a refused round loses (the node logs it)
        cohort_arr = np.array([c if c is not None else self.region for c in cohorts])
        result = self.detector.process_round(ids, X, self.region, cohorts=cohort_arr, timestamp=timestamp)
        self.dropped_rows = 0
        self.windows_closed += 1
        d2 = np.asarray(result.mahalanobis_squared, dtype=np.float64)
        log_p = np.asarray(chi2_logsf(d2, X.shape[1]), dtype=np.float64)
        isolate = np.asarray(result.isolate, dtype=bool).tolist()
        newly: list[str] = []
        # the round's table is a new dict, swapped in at the end: the table a published read
        # view holds (.read_view) is never written again
        window, name, agents = self.windows_closed, self.name, dict(self.agents)
        columns = zip(ids.tolist(), d2.tolist(), np.exp(log_p).tolist(), log_p.tolist(), severities(log_p).tolist(),
                      isolate, cohorts, np.asarray(result.confidence, dtype=np.float64).tolist(), X, strict=True)
        with _collector_paused():
            for agent, score, p, lp, severity, iso, cohort, cf, x in columns:   # X is the window's own copy
                before = agents.get(agent)
                was = before is not None and before.isolated
                if iso and not was:
                    newly.append(agent)
                agents[agent] = AgentState(agent, name, score, p, lp, severity, was or iso, cohort, cf, x, window)
        # the new table is the old one grown (no key removed, new ones appended): the replica's
        # ranking matches only the new agents against its registers (.replica_read)
        self._table_grown = (id(self.agents), len(self.agents), agents)
        self.agents = agents
        return WindowOutcome(self.name, self.windows_closed, len(ids), newly, self._own_evidence())

    def _own_evidence(self) -> list[list[Any]]:
        """The round's own evidence (the detector's ``last_round_evidence``) as JSON rows."""
        added = self.detector.last_round_evidence
        if added is None:
            return []
        eids, agents, log_odds, confidences, timestamps, sources = (np.asarray(c).tolist() for c in added)
        kind = EvidenceType.BEHAVIORAL_ANOMALY.value
        return [[e, a, kind, float(lo), float(c), float(t), s]
                for e, a, lo, c, t, s in zip(eids, agents, log_odds, confidences, timestamps, sources, strict=True)]

    def replica(self, region: str):
        """This node's replica of the population (a ``RegionReplica``; None: none yet, or an
        engine whose resolver keeps no replicas in this process, such as Ray's view)."""
        ensure = getattr(self.detector.cap_resolver, "ensure_replica", None)
        return None if ensure is None else ensure(region)

    def ingest_evidence(self, columns: tuple) -> int:
        return self.detector.ingest_evidence(*columns)

    def trust_detectors(self, sources: Any) -> None:
        """Trust other nodes' detectors of this population (``sources``, from peer deltas) as
        the consensus trusts this node's own: so every node weighs a detector's rows alike.

        A trusted source always votes, never ends the founding and is never flagged; were
        ``serve:eu:<pop>`` trusted on eu alone, the nodes would reach other probabilities on
        the same rows (a later observer on probation on one node, voting on the other). Trust
        is given before the source's first row is counted, so it acts on every row on every
        node alike. The in-process consensus only: Ray's evidence partitions fix their trusted
        sources when built (a documented limit)."""
        consensus = self.detector.consensus
        held = getattr(consensus, "trusted_sources", None)
        if not isinstance(held, frozenset):
            return
        new = frozenset(s for s in sources if detector_source_population(s) == self.name) - held
        if new:
            consensus.trusted_sources = held | new

    def check_evidence(self, columns: tuple) -> int | None:
        """Raise as ingesting ``columns`` would, changing nothing; how many rows would be new
        (the rest are held already, with the same content), None when the engine cannot say."""
        consensus = self.detector.consensus
        check = getattr(consensus, "check_evidence_batch", None)
        if check is not None:
            return int(check(*columns))
        # the Ray engine's view checks as it ingests: the same column checks, first
        ids, agents, types, log_odds, confidences, timestamps, sources = columns
        evidence_columns(ids, agents, sources, types, log_odds, confidences, timestamps)
        return None

    # ---------------------------------------------------------------- queries
    def ranked(self) -> RankedAgents:
        """The agent table in ``/v1/agents`` order (:mod:`.ranked_agents`), ranked once per table."""
        return ranked_of(self)

    def rank_agents(self) -> None:
        """Rank the agent table and the replica's other agents now (the node calls this at the
        end of a live close, so that no read pays for it)."""
        self.ranked()
        replica = self.replica(self.region)
        if replica is not None and len(replica.registers):
            replica_ranking(self, replica.registers)

    def consensus_of(self, agent_id: str) -> dict[str, Any]:
        try:
            c = self.detector.consensus.consensus(agent_id)
        except UnknownAgentError:
            return {"probability": None, "log_odds": None, "evidence_count": 0, "consensus_reached": False}
        return {"probability": c["probability"], "log_odds": c["log_odds"],
                "evidence_count": c["evidence_count"], "consensus_reached": c["consensus_reached"],
                "source_count": c["source_count"]}

    def contributions(self, state: AgentState) -> list[dict[str, Any]]:
        """Each feature's share of the agent's squared distance (its latest vector against the
        population as it is now), with the population's mean (typical) and its value.

        The shares are the report's (:func:`~swarmguard.apps.report_data.feature_shares`:
        in [0, 1], summing to 1), from the population's statistics, so every backend
        answers them (the Ray engine has no per-agent scoring call)."""
        stats = self.detector.tree.get_global_statistics()
        typical = np.asarray(stats["mean"], dtype=np.float64)
        part = np.full(typical.shape, np.nan)
        if stats["count"] > 2:           # fewer: no leave-one-out covariance, no split
            _, shares = feature_shares(np.asarray(state.features, dtype=np.float64)[None, :], stats["count"],
                                       typical, np.atleast_2d(stats["covariance"]),
                                       self.detector.settings.shrinkage)
            if shares[0].sum() > 0:
                part = shares[0]
        rows = []
        for j, name in enumerate(self.names()):
            rows.append({"feature": name, "share": _finite(part[j]), "typical": _finite(typical[j]),
                         "actual": float(state.features[j])})
        rows.sort(key=lambda r: -(r["share"] or 0.0))
        return rows

    def cohort_summary(self, cohort: str | None, members: list[AgentState] | None = None) -> dict[str, Any] | None:
        """count (agents), mean, covariance summary and score distribution of a cohort ("": all);
        ``members``: its agents when the caller already grouped them (:meth:`members_by_cohort`)."""
        tree = self.detector.tree
        if members is None:
            members = [s for s in self.agents.values() if not cohort or (s.cohort or self.region) == cohort]
        if not members:
            return None
        try:
            if not cohort:
                stats = tree.get_global_statistics()
            elif hasattr(tree, "get_cohort_statistics"):
                stats = tree.get_cohort_statistics((cohort,))
            else:          # the Ray engine keeps no cohort nodes: the members' latest vectors
                stats = _statistics_of(members)
        except KeyError:
            return None
        cov = np.atleast_2d(np.asarray(stats.get("covariance"), dtype=np.float64)) if stats["count"] > 1 else None
        scores = np.array([s.score for s in members])
        out: dict[str, Any] = {
            "population": self.name, "cohort": cohort or "", "count": int(stats["count"]),
            "mean": [_finite(v) for v in np.asarray(stats["mean"], dtype=np.float64).tolist()],
            "features": self.names(),
            "isolated": sum(s.isolated for s in members),
        }
        if cov is not None:
            eig = np.linalg.eigvalsh(cov)
            out["covariance"] = {"trace": float(np.trace(cov)), "log_determinant": float(np.sum(np.log(np.clip(eig, 1e-300, None)))),
                                 "largest_eigenvalue": float(eig[-1]), "std": np.sqrt(np.clip(np.diag(cov), 0, None)).tolist()}
        q = np.quantile(scores, [0.5, 0.9, 0.99]) if scores.size else [None] * 3
        out["scores"] = {"p50": float(q[0]), "p90": float(q[1]), "p99": float(q[2]), "max": float(scores.max())}
        return out

    def cohort_summaries(self) -> dict[str, dict[str, Any]]:
        """Every cohort's :meth:`cohort_summary` (``""``: the population, first), built once per
        agent table (:mod:`.cohort_summaries`): read only."""
        return summaries_of(self).by_cohort

    def cohorts(self) -> list[str]:
        """The cohorts of the agent table (``cohort or region``), sorted; from its ranking,
        which groups the agents by cohort (no pass over the agents per call)."""
        return sorted(self.ranked().cohort_span)

    def members_by_cohort(self) -> dict[str, list[AgentState]]:
        """Every cohort's agents, sorted by cohort name, in one pass (one pass per cohort made
        ``/v1/populations`` quadratic, under the node's lock)."""
        groups: dict[str, list[AgentState]] = {}
        for state in self.agents.values():
            groups.setdefault(state.cohort or self.region, []).append(state)
        return dict(sorted(groups.items()))


def find_agent_in(populations: dict[str, Any], agent_id: str, population: str | None = None):
    """(population, state) of ``agent_id`` in the first of ``populations`` (name to a
    :class:`Population` or a view of one) whose agent table holds it, only ``population``'s
    when named (an unknown name: none); None when no table holds it."""
    pops = [populations[population]] if population in populations else (
        [] if population else list(populations.values()))
    for pop in pops:
        state = pop.agents.get(agent_id)
        if state is not None:
            return pop, state
    return None


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while a round's agent table is built: the old
    table stays alive meanwhile (a published read view holds it), so each new state counts
    as a net allocation and the collector would run again and again over objects that form
    no cycles (twice the table's build time at 10⁵ agents). On again afterwards, unless it
    was off before."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _statistics_of(members: list[AgentState]) -> dict[str, Any]:
    """count, mean and covariance (ddof 1) of the members' latest vectors."""
    X = np.array([s.features for s in members], dtype=np.float64)
    cov = np.cov(X, rowvar=False, ddof=1) if len(X) > 1 else None
    return {"count": len(X), "mean": X.mean(axis=0), "covariance": cov}


def _finite(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
