"""Reads of agents this node did not score: answered from its CAP resolver replica.

A node replicates its peers' registers (:mod:`.peers`): per population, the
replica of this node's region holds every agent's latest feature vector and
anomaly score with its writer region and timestamp (last-writer-wins). An agent
whose behaviour was posted to another node is in no closed window here, but its
register is; ``GET /v1/agents/{id}`` and ``GET /v1/agents?top=K`` answer it from
that register, marked ``"source": "replica"`` (an agent this node scored itself
is ``"source": "scored"`` and answers from its own window, as before, even when a
peer's newer register of it arrived since).

What a replica answer holds, and where each value comes from:

- ``score``: the register's anomaly score, which *is* the writer's squared
  Mahalanobis distance (the detector writes ``mahalanobis_squared`` into the
  registers at each round), bit for bit what the writer node answers.
- ``p_value`` and ``severity``: derived exactly as for a scored agent
  (:meth:`~.population.Population.close_window`): ``ln p = chi2_logsf(score, d)``
  with ``d`` the population's dimension, ``severity = severity_of(ln p)``. They
  depend on the score and ``d`` only, so they equal the writer's.
- ``writer_region`` and ``timestamp``: the register's; ``writer_staleness_seconds``:
  how long ago this node last heard of the writer region (directly or through a
  third node; 0 for this node's own region).
- ``confidence_factor``: this node's view (:func:`~.peers.view_confidence`), the
  same factor ``/v1/populations`` carries.
- ``contributions``: computed against *this node's* population statistics with the
  same share definition as a scored agent (docs/scoring.md#feature-shares, the
  report's :func:`~swarmguard.apps.report_data.feature_shares`), so they may differ
  from the writer node's while the two views differ; shares are ``null`` while the
  population holds fewer than 3 agents.
- ``isolated``: whether *this node's* detector isolated the agent — never, for an
  agent it did not score (``false``); the replicated evidence behind it is in
  ``consensus``. ``cohort`` and ``window`` are ``null`` (a register carries neither).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import UnknownAgentError
from ...structures.chi2 import chi2_logsf
from .agent_state import AgentState, severities, severity_of

__all__ = ["ReplicaAgent", "ReplicaRanking", "replica_agent", "replica_ranking", "top_replica_agents", "writer_staleness", "replica_contributions", "SOURCE_SCORED", "SOURCE_REPLICA"]

SOURCE_SCORED = "scored"
SOURCE_REPLICA = "replica"


@dataclass(frozen=True)
class ReplicaAgent:
    """An agent answered from a register: its state (scored as the writer scored it) and the
    register's writer region and timestamp."""

    state: AgentState
    writer_region: str
    timestamp: float

    def summary(self) -> dict[str, Any]:
        """The ``/v1/agents`` list item, marked with its source, writer region and timestamp."""
        return {**self.state.summary(), "source": SOURCE_REPLICA, "writer_region": self.writer_region,
                "timestamp": self.timestamp}


def _registers(pop, region: str):
    """The registers of this node's replica of ``pop`` (None: no replica yet, or an engine
    whose resolver keeps none in this process, such as Ray's view)."""
    replica = pop.replica(region)
    return None if replica is None else replica.registers


def replica_agent(pop, region: str, agent_id: str, confidence_factor: float | None) -> ReplicaAgent | None:
    """``agent_id``'s register in this node's replica of ``pop`` as an answer (None: no register)."""
    registers = _registers(pop, region)
    if registers is None:
        return None
    try:
        reg = registers.get(agent_id)
    except UnknownAgentError:
        return None
    score = float(reg["anomaly_score"])
    features = np.asarray(reg["features"], dtype=np.float64)
    log_p = float(chi2_logsf(np.array([score]), features.size)[0])
    state = AgentState(agent_id, pop.name, score, math.exp(log_p), log_p, severity_of(log_p), False, None,
                       confidence_factor, features, None)
    return ReplicaAgent(state, str(reg["region"]), float(reg["timestamp"]))


def replica_contributions(pop, state: AgentState) -> list[dict[str, Any]]:
    """:meth:`~.population.Population.contributions` of a replicated agent against this node's
    population; ``[]`` while this node's population holds no agent of its own (no mean, no
    covariance to split the distance against)."""
    try:
        count = int(pop.detector.tree.get_global_statistics()["count"])
    except (KeyError, ValueError):
        count = 0
    return pop.contributions(state) if count > 0 else []


def writer_staleness(pop, region: str, writer: str, now: float) -> float | None:
    """Seconds since this node last heard of region ``writer`` in ``pop``'s replica (0 for its
    own region; None: unknown)."""
    replica = pop.replica(region)
    if replica is None:
        return None
    if writer == region:
        return 0.0
    age = replica.ages(now).get(writer)
    return None if age is None or not math.isfinite(age) else float(age)


def top_replica_agents(pop, region: str, top: int, confidence_factor: float | None) -> list[ReplicaAgent]:
    """The ``top`` most anomalous agents of ``pop``'s registers that ``pop`` did not score
    itself, ordered as ``/v1/agents`` orders (smallest ``ln p``, then largest score; equal
    keys in the registers' order).

    From the population's :class:`ReplicaRanking` (ranked once per registers version and
    agent table, vectorised); states are built for the ``top`` chosen only."""
    registers = _registers(pop, region)
    if registers is None or not len(registers):
        return []
    ranking = replica_ranking(pop, registers)
    if ranking is None:                # ids that are not all strings: ranked from the entries
        return _top_from_entries(pop, registers.entries(), top, confidence_factor)
    rows = ranking.rows[:top]
    if not rows.size:
        return []
    e = registers.entries(rows)        # string ids only: listed in the order of ``rows``
    ids, names = e["str_ids"].tolist(), e["regions"].tolist()
    sev = severities(ranking.log_p[:top]).tolist()
    out = []
    for k, (lp, score) in enumerate(zip(ranking.log_p[:top].tolist(), ranking.score[:top].tolist(), strict=True)):
        state = AgentState(ids[k], pop.name, score, math.exp(lp), lp, int(sev[k]), False, None,
                           confidence_factor, e["features"][k], None)
        out.append(ReplicaAgent(state, str(names[int(e["writer"][k])]), float(e["timestamp"][k])))
    return out


@dataclass(frozen=True)
class ReplicaRanking:
    """The registers of agents a population did not score, most anomalous first.

    ``registers``, ``version``, ``table``: what it ranks (the map, its
    :attr:`~swarmguard.values.lww_register_map.LWWRegisterMap.version`, the agent table
    whose agents it leaves out), so it is current while all three are; ``scored``: per
    register row, whether the table holds the row's agent; ``rows``: the other rows, ranked
    (``ln p`` ascending, then score descending, equal keys in row order); ``log_p``,
    ``score``: theirs, in that order. Costs 1 byte per register and 24 per ranked one."""

    registers: Any
    version: int
    table: dict
    scored: np.ndarray
    rows: np.ndarray
    log_p: np.ndarray
    score: np.ndarray


def replica_ranking(pop, registers) -> ReplicaRanking | None:
    """``pop``'s current :class:`ReplicaRanking` of ``registers`` (kept on ``pop``, ranked
    again only when the registers or the agent table changed; a table unchanged since the
    last ranking, or grown from it by a close, is matched against the new register rows and
    its new agents only). None when some register
    id is not a string (a serve node's ids are strings): the caller ranks from the entries."""
    cached = getattr(pop, "_replica_ranked", None)
    version, table = registers.version, pop.agents
    if (cached is not None and cached.registers is registers and cached.version == version
            and cached.table is table):
        return cached
    index = getattr(registers, "index", None)        # a read view's frozen registers have none
    if index is None or index.int_count:
        if index is not None:
            # never current again (ids are not removed): dropped, not left holding the agent
            # table it ranked (and its states) alive through every later close
            pop._replica_ranked = None
        return None
    n = len(registers)
    added = _added_agents(pop, cached, table)
    if cached is not None and cached.registers is registers and added is not None and cached.scored.size <= n:
        # the rows added since, matched against the table; the agents added to it, to their rows
        fresh = index.keys_of(np.arange(cached.scored.size, n, dtype=np.int64)).tolist()
        scored = np.concatenate([cached.scored, np.fromiter((a in table for a in fresh), dtype=bool,
                                                              count=len(fresh))])
        found = np.fromiter(map(index.row_of, added), dtype=np.int64, count=len(added))
        scored[found[found >= 0]] = True
    else:
        # one dict look-up per agent (row_of); the index's sorted batch look-up would sort
        # every string id again after each round's new agents (slower at 10⁶)
        found = np.fromiter(map(index.row_of, table), dtype=np.int64, count=len(table))
        scored = np.zeros(n, dtype=bool)
        scored[found[found >= 0]] = True
    rows = np.flatnonzero(~scored)
    score = np.array(registers.anomaly_scores()[rows], dtype=np.float64)
    log_p = np.asarray(chi2_logsf(score, int(registers.dim)), dtype=np.float64)
    order = np.lexsort((-score, log_p))                  # ln p ascending, then score descending
    ranking = ReplicaRanking(registers, version, table, scored, rows[order], log_p[order], score[order])
    pop._replica_ranked = ranking
    return ranking


def _added_agents(pop, cached: ReplicaRanking | None, table: dict) -> list | None:
    """The agents ``table`` holds beyond ``cached``'s table when it grew from it ([] when it
    is that table), else None. A close builds its table as a copy of the previous one with
    the round's agents set (:meth:`~.population.Population.close_window`: no key removed,
    new keys appended) and notes ``(id, length)`` of the previous one and the new table in
    ``pop._table_grown``; the id is compared with ``cached.table``, which ``cached`` keeps
    alive, so it cannot be another dict's."""
    if cached is None:
        return None
    if cached.table is table:
        return []
    grown = getattr(pop, "_table_grown", None)
    if grown is None or grown[2] is not table or grown[0] != id(cached.table) or grown[1] != len(cached.table):
        return None
    return list(itertools.islice(table, grown[1], None))


def _top_from_entries(pop, entries: dict, top: int, confidence_factor: float | None) -> list[ReplicaAgent]:
    """:func:`top_replica_agents` from the registers' entries (a Python pass over their ids)."""
    ids = [*entries["int_ids"].tolist(), *entries["str_ids"].tolist()]
    keep = np.fromiter((a not in pop.agents for a in ids), dtype=bool, count=len(ids))
    if not keep.any():
        return []
    rows = np.flatnonzero(keep)
    scores = np.asarray(entries["anomaly_score"], dtype=np.float64)[rows]
    log_p = np.asarray(chi2_logsf(scores, int(entries["dim"])), dtype=np.float64)
    order = np.lexsort((-scores, log_p))[:top]            # ln p ascending, then score descending
    sev = severities(log_p[order]).tolist()
    names = entries["regions"].tolist()
    out = []
    for k, i in enumerate(order.tolist()):
        row = int(rows[i])
        lp = float(log_p[i])
        state = AgentState(ids[row], pop.name, float(scores[i]), math.exp(lp), lp, int(sev[k]), False, None,
                           confidence_factor, entries["features"][row], None)
        out.append(ReplicaAgent(state, str(names[int(entries["writer"][row])]), float(entries["timestamp"][row])))
    return out
