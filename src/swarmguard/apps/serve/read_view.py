"""``ReadView``: what the query routes answer from while a window closes.

A window's close holds the node's lock for its whole detector round (seconds to tens
of seconds at 10⁶ agents). Reads do not wait for it: at the start of a close, under the
lock and before the ``CLOSE`` record is logged, the node publishes a view of its state
as it is then (:func:`publish_view`); the round mutates only the live state, and the
node withdraws the view once the close is wholly applied, still under the lock. A read
(:func:`answer`) takes the lock when it can; when the lock is held by a close, it
answers from the published view instead. So every answer is wholly from before a
close or wholly from after it.

What the view holds, and why it is not changed by the round:

- each population's agent table: the dict itself, by reference —
  :meth:`~.population.Population.close_window` builds the round's table as a new dict
  and swaps it in at the end, so the table a view holds is never written again;
- the population's statistics (whole population and every cohort an agent is in),
  its replica's registers of the agents it did not score (:meth:`entries`, copies: the
  only registers a read answers from) and the writer regions' ages,
  and the confidence factor (:func:`~.peers.view_confidence`), copied at publication;
- the rankings of the agent table and of the replica's other agents
  (:mod:`.ranked_agents`, :class:`~.replica_read.ReplicaRanking`), current at
  publication: built from the parts above, never written again;
- the consensus, read live under its own lock but only while its evidence version is
  the one at publication: once the round adds its own evidence (near its end), a read
  that needs the consensus raises :class:`ViewExpired` and :func:`answer` waits for the
  close and answers from the state after it (never a mix).

The view's populations offer the :class:`~.population.Population` read methods the
routes use (``contributions``, ``cohort_summary``, ``consensus_of``, ``replica`` …),
the same code over the copied parts.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ...errors import UnknownAgentError
from .population import Population, find_agent_in
from .replica_read import replica_ranking

__all__ = ["ReadView", "LiveRead", "PopulationView", "ViewExpired", "publish_view", "answer"]

T = TypeVar("T")

# how long a read waits for the lock before it looks for a published view (a close
# publishes one as its first step under the lock; other holders hold it briefly)
_LOCK_POLL_SECONDS = 0.01


class ViewExpired(Exception):
    """A part the view reads live (the consensus) changed since the view was published."""


class _FrozenTree:
    """The population's statistics at publication (``get_global_statistics`` /
    ``get_cohort_statistics`` of the live tree, copied)."""

    def __init__(self, global_stats: dict[str, Any] | None, cohort_stats: dict[str, dict[str, Any]] | None):
        self._global = global_stats
        self._cohorts = cohort_stats
        if cohort_stats is not None:       # as the live tree: a tree without cohort nodes (Ray's) has none
            self.get_cohort_statistics = self._cohort_statistics

    def get_global_statistics(self) -> dict[str, Any]:
        if self._global is None:
            raise KeyError("no statistics")
        return self._global

    def _cohort_statistics(self, path: tuple) -> dict[str, Any]:
        stats = self._cohorts.get(path[0])
        if stats is None:
            raise KeyError(path)
        return stats


class _CheckedConsensus:
    """The live consensus, answered only while its evidence version is the published one."""

    def __init__(self, consensus: Any):
        self._consensus = consensus
        self._version = _evidence_version(consensus)

    def _checked(self, read: Callable[[Any], T]) -> T:
        if self._version is None:
            raise ViewExpired("this consensus has no evidence version")
        result = read(self._consensus)                     # under the consensus's own lock
        if _evidence_version(self._consensus) != self._version:
            raise ViewExpired("the round added evidence")
        return result

    def consensus(self, agent_id: str) -> dict[str, Any]:
        return self._checked(lambda c: c.consensus(agent_id))

    @property
    def evidence_count(self) -> int:
        return self._checked(lambda c: c.evidence_count)

    @property
    def byzantine_nodes(self) -> Any:
        return self._checked(lambda c: c.byzantine_nodes)

    def source_reputation(self) -> dict[Any, Any]:
        return self._checked(lambda c: c.source_reputation())

    @property
    def ledger(self) -> Any:
        # its columns are read over several calls, outside the consensus's lock: only live
        raise ViewExpired("the evidence rows are read from the live node")


class _FrozenRegisters:
    """A replica's registers at publication (the ``entries`` copy), read as the live ones."""

    def __init__(self, entries: dict[str, np.ndarray]):
        self._entries = entries
        self._rows: dict[Any, int] | None = None
        self._build = threading.Lock()

    version = 0                            # never written: a ranking of it stays current

    def __len__(self) -> int:
        return len(self._entries["int_ids"]) + len(self._entries["str_ids"])

    def entries(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """All the entries, or those at ``rows`` (string ids only, as a ranking of the live
        map takes them: :func:`~.replica_read.top_replica_agents`), in the order of ``rows``."""
        if rows is None:
            return self._entries
        e = self._entries
        return {**e, **{k: e[k][rows] for k in ("str_ids", "timestamp", "writer", "seq", "features", "anomaly_score")}}

    def get(self, agent_id: Any) -> dict[str, Any]:
        with self._build:                  # built once, on the first lookup
            if self._rows is None:
                e = self._entries
                self._rows = {a: i for i, a in enumerate([*e["int_ids"].tolist(), *e["str_ids"].tolist()])}
        row = self._rows.get(agent_id)
        if row is None:
            raise UnknownAgentError(f"no register of {agent_id!r}")
        e = self._entries
        return {"anomaly_score": e["anomaly_score"][row], "features": e["features"][row],
                "region": e["regions"][int(e["writer"][row])], "timestamp": e["timestamp"][row]}


class _FrozenReplica:
    def __init__(self, registers: _FrozenRegisters, ages: dict[str, float]):
        self.registers = registers
        self._ages = ages

    def ages(self, now: float) -> dict[str, float]:
        return self._ages                  # as at publication: the view answers from then


@dataclass(frozen=True)
class _FrozenResolver:
    replica: _FrozenReplica | None

    def ensure_replica(self, region: str) -> _FrozenReplica | None:
        return self.replica


@dataclass(frozen=True)
class _FrozenSettings:
    shrinkage: Any


@dataclass(frozen=True)
class _FrozenDetector:
    tree: _FrozenTree
    consensus: _CheckedConsensus
    settings: _FrozenSettings
    cap_resolver: Any


class PopulationView:
    """One population as it was at publication, read through :class:`~.population.Population`'s
    own read methods (so a view answers exactly as the live population did then)."""

    names = Population.names
    ranked = Population.ranked
    contributions = Population.contributions
    cohort_summary = Population.cohort_summary
    cohort_summaries = Population.cohort_summaries
    cohorts = Population.cohorts
    members_by_cohort = Population.members_by_cohort
    consensus_of = Population.consensus_of
    replica = Population.replica

    def __init__(self, pop: Population, now: float):
        self.name, self.region = pop.name, pop.region
        self.dimension = pop.dimension
        self.feature_names = None if pop.feature_names is None else list(pop.feature_names)
        self.agents = pop.agents           # never written again: close_window swaps in a new dict
        self.windows_closed = pop.windows_closed
        self.window = _Count(len(pop.window))      # the open window's size (the close empties it)
        tree = pop.detector.tree
        global_stats = _copied(tree.get_global_statistics) if self.agents else None
        cohort_stats = None
        if hasattr(tree, "get_cohort_statistics"):
            cohort_stats = {}
            for cohort in {s.cohort or self.region for s in self.agents.values()}:
                stats = _copied(lambda c=cohort: tree.get_cohort_statistics((c,)))
                if stats is not None:
                    cohort_stats[cohort] = stats
        # the rankings of the table and of the replica's other agents, current now: reads of
        # the view take their top K as the live node did (.ranked_agents, .replica_read)
        self._ranked = pop.ranked()
        # the summaries, if built for this table (the view's statistics are the tree's now): kept
        summaries = pop._summaries
        self._summaries = summaries if summaries is not None and summaries.current(self) else None
        self._replica_ranked = None
        resolver = pop.detector.cap_resolver
        replica = pop.replica(pop.region)
        frozen_replica = None
        if replica is not None:
            live = replica_ranking(pop, replica.registers) if len(replica.registers) else None
            if live is None:
                registers = _FrozenRegisters(_unscored_entries(replica.registers, self.agents))
            else:
                # string ids: the copy lists the unscored rows in row order, so a live row's
                # place in it is its rank among them (the ranking's rows, as the copy's places)
                unscored = np.flatnonzero(~live.scored)
                registers = _FrozenRegisters(replica.registers.entries(unscored))
                self._replica_ranked = dataclasses.replace(
                    live, registers=registers, version=registers.version, scored=np.zeros(unscored.size, dtype=bool),
                    rows=np.searchsorted(unscored, live.rows))
            frozen_replica = _FrozenReplica(registers, dict(replica.ages(now)))
        self.detector = _FrozenDetector(
            _FrozenTree(global_stats, cohort_stats), _CheckedConsensus(pop.detector.consensus),
            _FrozenSettings(pop.detector.settings.shrinkage),
            _FrozenResolver(frozen_replica) if hasattr(resolver, "ensure_replica") else resolver)


@dataclass(frozen=True)
class _Count:
    n: int

    def __len__(self) -> int:
        return self.n


@dataclass(frozen=True)
class ReadView:
    """The node's state at the start of a close, for the query routes (module docstring);
    ``extensions``: the views of the node's extensions that offer one (``read_view()``, e.g.
    the dashboard's window history), ``node``: the node itself, for what no close changes
    (its settings, its peer links)."""

    populations: dict[str, PopulationView]
    region: str
    confidence_factor: float | None
    extensions: tuple
    last_event_id: int
    window_end_at: float | None
    state: str
    node: Any

    @property
    def settings(self):
        return self.node.settings

    def window_end(self) -> float | None:
        return self.window_end_at

    def find_agent(self, agent_id: str, population: str | None = None):
        """As :meth:`~.node.ServeNode.find_agent`, over the view."""
        return find_agent_in(self.populations, agent_id, population)


def publish_view(node) -> ReadView:
    """The view of ``node`` now (call under its lock, before the close changes anything)."""
    from .peers import view_confidence

    now = node.settings.clock()
    pops = {name: PopulationView(pop, now) for name, pop in node.populations.items()}
    extensions = tuple(ext.read_view() for ext in node.extensions if hasattr(ext, "read_view"))
    return ReadView(pops, node.settings.region, view_confidence(node), extensions, node.events.last_id,
                    node.window_end(), node.state, node)


class LiveRead:
    """The live node read as a :class:`ReadView` (under its lock): its populations, region,
    confidence factor and :meth:`find_agent`."""

    def __init__(self, node):
        self.node = node
        self._node = node
        self.populations = node.populations
        self.region = node.settings.region
        self.settings = node.settings
        self.extensions = node.extensions
        self.state = node.state
        self.last_event_id = node.events.last_id

    def window_end(self) -> float | None:
        return self._node.window_end()

    @property
    def confidence_factor(self) -> float | None:
        from .peers import view_confidence

        return view_confidence(self._node)

    def find_agent(self, agent_id: str, population: str | None = None):
        return self._node.find_agent(agent_id, population)


def answer(node, read: Callable[[ReadView | LiveRead], T]) -> T:
    """``read`` over the live node under its lock, or — while a close holds the lock — over
    the view it published; a view that expired mid-read (:class:`ViewExpired`) is given up
    for the state after the close (so ``read`` runs whole over one state or the other)."""
    while True:
        if node.lock.acquire(timeout=_LOCK_POLL_SECONDS):
            try:
                return read(LiveRead(node))
            finally:
                node.lock.release()
        view = node.read_view
        if view is not None:
            try:
                return read(view)
            except ViewExpired:
                with node.lock:
                    return read(LiveRead(node))


def _unscored_entries(registers: Any, agents: dict[str, Any]) -> dict[str, np.ndarray]:
    """The registers of the agents ``agents`` lacks, copied (``entries`` of their rows): the
    only ones a read reaches (:mod:`.replica_read` answers an agent from a register only
    when the population did not score it). On a node that scores its agents itself that is
    none, where a copy of every register cost 0.06 s and 16 MB at 10⁵ agents, each close.
    The path for ids that are not all strings; otherwise the population's replica ranking
    knows the unscored rows already (:class:`PopulationView`)."""
    rows = np.arange(len(registers), dtype=np.int64)
    keys = registers.index.keys_of(rows).tolist()
    unscored = np.fromiter((k not in agents for k in keys), dtype=bool, count=len(keys))
    return registers.entries(rows[unscored])


def _evidence_version(consensus: Any) -> int | None:
    version = getattr(consensus, "evidence_version", None)
    return None if version is None else int(version)


def _copied(get: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    try:
        stats = get()
    except (KeyError, ValueError):
        return None
    return {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in stats.items()}
