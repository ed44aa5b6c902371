"""``WindowHistory``: what the dashboard needs of past windows, pre-aggregated when each closes.

The node keeps only each agent's latest result; the swim lanes, the calibration
histograms, the drill-down's features over time and the regions' confidence over
time need the past. This node extension (see :mod:`swarmguard.apps.serve.node`)
records, after every window close (live or replayed from the durable log, so a
restarted node shows the same history), per population:

- the window's ``top_k`` most anomalous agents (severity, p-value, features) and the
  lowest severity among them (``floor``: every agent left out scored at most that);
- per cohort: agents scored, isolated, the largest severity and the histogram of the
  window's p-values (``P_VALUE_BINS`` equal bins over [0, 1]);
- the population's typical value (mean) and spread (standard deviation) per feature;
- each region's confidence factor and staleness;
- the window each agent was first isolated in;

and, once per live close, the node's view of its regions and peers
(:class:`~.cluster_history.ClusterWindow`: its confidence factor, each region's
staleness, each peer's reachability) for the Regions panel.

Memory is bounded: ``max_windows`` windows of ``top_k`` agents each, whatever the
population's size (the browser never receives every agent).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .cluster_history import ClusterWindow, record_cluster

__all__ = ["WindowHistory", "HistoryView", "WindowRecord", "CohortWindow", "P_VALUE_BINS", "history_of"]

P_VALUE_BINS = 20
DEFAULT_TOP_K = 200
DEFAULT_MAX_WINDOWS = 120


@dataclass(frozen=True)
class CohortWindow:
    """One cohort in one closed window."""

    agents: int
    isolated: int
    max_severity: int
    p_value_counts: list[int]          # P_VALUE_BINS equal bins over [0, 1]


@dataclass(frozen=True)
class WindowRecord:
    """One closed window of one population, as the dashboard shows it."""

    window: int
    at: float
    agents: int
    newly_isolated: int
    top: dict[str, tuple[int, float, list[float]]]     # agent -> (severity, p_value, features)
    floor: int                                            # lowest severity among ``top`` (0: all kept)
    cohorts: dict[str, CohortWindow]
    typical: list[float | None]
    spread: list[float | None]
    regions: dict[str, tuple[float | None, float | None]]   # region -> (confidence factor, staleness s)


@dataclass
class _PopulationHistory:
    windows: deque = field(default_factory=deque)
    first_isolated: dict[str, tuple[int, float]] = field(default_factory=dict)


class WindowHistory:
    """The node extension (module docstring); it writes no log records of its own."""

    kinds: tuple[str, ...] = ()

    def __init__(self, node, top_k: int = DEFAULT_TOP_K, max_windows: int = DEFAULT_MAX_WINDOWS):
        self.node = node
        self.top_k = top_k
        self.max_windows = max_windows
        self.populations: dict[str, _PopulationHistory] = {}
        self.cluster: deque[ClusterWindow] = deque(maxlen=max_windows)

    # ---------------------------------------------------------------- extension hooks
    def apply(self, record) -> None:  # noqa: D102 - no records of its own
        return None

    def before_close(self, at: float) -> None:  # noqa: D102
        return None

    def after_close(self, at: float, outcomes) -> None:
        """Record every population that closed a window (called under the node's lock)."""
        for outcome in outcomes:
            pop = self.node.populations[outcome.population]
            hist = self.populations.setdefault(pop.name, _PopulationHistory())
            for agent in outcome.isolated:
                hist.first_isolated.setdefault(agent, (outcome.window, at))
            hist.windows.append(self._record(pop, outcome, at))
            while len(hist.windows) > self.max_windows:
                hist.windows.popleft()
        # live closes only: a replayed one cannot tell whether the peers were reachable then
        if outcomes and self.node.state != "starting":
            seen = record_cluster(self.node, at)
            if seen is not None:
                self.cluster.append(seen)

    # ---------------------------------------------------------------- snapshots (serve.snapshot)
    def export_state(self) -> dict:
        """The recorded windows and first isolations of every population, and the node's
        regions and peers per window, as plain JSON values (a node's snapshot deletes the log
        records they were recorded from, so a restart could not rebuild them by replay)."""
        return {"populations": {name: {"windows": [_record_state(r) for r in hist.windows],
                                       "first_isolated": [[a, w, at] for a, (w, at) in hist.first_isolated.items()]}
                                for name, hist in self.populations.items()},
                "cluster": [c.to_state() for c in self.cluster]}

    def import_state(self, state: dict) -> None:
        """Take :meth:`export_state`'s state (a node restarting from its snapshot)."""
        populations: dict[str, _PopulationHistory] = {}
        for name, hist in state["populations"].items():
            windows = deque(_record_of(r) for r in hist["windows"])
            while len(windows) > self.max_windows:
                windows.popleft()
            first = {str(a): (int(w), float(at)) for a, w, at in hist["first_isolated"]}
            populations[str(name)] = _PopulationHistory(windows, first)
        self.populations = populations
        # a snapshot written before the regions were recorded has none
        self.cluster = deque((ClusterWindow.from_state(c) for c in state.get("cluster", [])), maxlen=self.max_windows)

    # ---------------------------------------------------------------- reading
    def windows(self, population: str, last: int | None = None) -> list[WindowRecord]:
        hist = self.populations.get(population)
        if hist is None:
            return []
        records = list(hist.windows)
        return records if last is None else records[-last:]

    def first_isolated(self, population: str, agent_id: str) -> tuple[int, float] | None:
        hist = self.populations.get(population)
        return None if hist is None else hist.first_isolated.get(agent_id)

    def cluster_windows(self, last: int | None = None) -> list[ClusterWindow]:
        records = list(self.cluster)
        return records if last is None else records[-last:]

    def read_view(self) -> HistoryView:
        """The history as it is now, for serve's read view while a window closes (call under
        the node's lock)."""
        return HistoryView(self)

    # ---------------------------------------------------------------- recording
    def _record(self, pop, outcome, at: float) -> WindowRecord:
        states = [s for s in pop.agents.values() if s.window == outcome.window]
        severity = np.fromiter((s.severity for s in states), dtype=np.int64, count=len(states))
        p_values = np.fromiter((s.p_value for s in states), dtype=np.float64, count=len(states))
        order = np.argsort(-severity, kind="stable")[: self.top_k]
        top = {states[i].agent_id: (int(severity[i]), float(p_values[i]),
                                    [float(v) for v in states[i].features]) for i in order.tolist()}
        floor = int(severity[order[-1]]) if len(order) < len(states) and len(order) else 0
        cohort_names = np.array([s.cohort or pop.region for s in states], dtype=object)
        # one array of the isolated flags: a sum over every state per cohort made the close cost
        # agents x cohorts Python steps (0.15 s a window at 10^4 agents in 36 cohorts)
        isolated = np.fromiter((bool(s.isolated) for s in states), dtype=bool, count=len(states))
        cohorts: dict[str, CohortWindow] = {}
        for name in sorted(set(cohort_names.tolist())):
            mask = cohort_names == name
            counts, _ = np.histogram(np.clip(p_values[mask], 0.0, 1.0), bins=P_VALUE_BINS, range=(0.0, 1.0))
            cohorts[name] = CohortWindow(int(mask.sum()), int(isolated[mask].sum()),
                                         int(severity[mask].max()), counts.astype(int).tolist())
        typical, spread = _typical(pop)
        return WindowRecord(outcome.window, at, outcome.agents, len(outcome.isolated), top, floor, cohorts,
                            typical, spread, _regions(pop))


def _record_state(r: WindowRecord) -> dict:
    return {"window": r.window, "at": r.at, "agents": r.agents, "newly_isolated": r.newly_isolated,
            "top": [[a, sev, p, feats] for a, (sev, p, feats) in r.top.items()], "floor": r.floor,
            "cohorts": [[name, c.agents, c.isolated, c.max_severity, c.p_value_counts] for name, c in r.cohorts.items()],
            "typical": r.typical, "spread": r.spread,
            "regions": [[region, cf, age] for region, (cf, age) in r.regions.items()]}


def _record_of(s: dict) -> WindowRecord:
    def number(v):
        return None if v is None else float(v)

    return WindowRecord(
        int(s["window"]), float(s["at"]), int(s["agents"]), int(s["newly_isolated"]),
        {str(a): (int(sev), float(p), [float(v) for v in feats]) for a, sev, p, feats in s["top"]},
        int(s["floor"]),
        {str(name): CohortWindow(int(n), int(iso), int(mx), [int(c) for c in counts])
         for name, n, iso, mx, counts in s["cohorts"]},
        [number(v) for v in s["typical"]], [number(v) for v in s["spread"]],
        {str(region): (number(cf), number(age)) for region, cf, age in s["regions"]})


def _finite(v) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _typical(pop) -> tuple[list[float | None], list[float | None]]:
    try:
        stats = pop.detector.tree.get_global_statistics()
    except Exception:                   # no statistics yet: nothing typical to show
        return [], []
    mean = np.atleast_1d(np.asarray(stats["mean"], dtype=np.float64))
    std = stats.get("std")
    std = np.full(mean.shape, np.nan) if std is None else np.atleast_1d(np.asarray(std, dtype=np.float64))
    return [_finite(v) for v in mean], [_finite(v) for v in std]


def _regions(pop) -> dict[str, tuple[float | None, float | None]]:
    resolver = pop.detector.cap_resolver
    out: dict[str, tuple[float | None, float | None]] = {}
    for region in resolver.regions:
        try:
            view = resolver.global_estimate(region)
        except Exception:               # a region without a view yet
            continue
        cf, age = view.get("confidence_factor"), view.get("staleness_seconds")
        out[region] = (None if cf is None else _finite(cf), None if age is None else _finite(age))
    return out


class HistoryView:
    """A :class:`WindowHistory` at one moment, with its read methods: the records (frozen
    once recorded) and first isolations as they were, unchanged by a later close."""

    def __init__(self, history: WindowHistory):
        self._windows = {name: tuple(h.windows) for name, h in history.populations.items()}
        self._first = {name: dict(h.first_isolated) for name, h in history.populations.items()}
        self._cluster = tuple(history.cluster)

    def windows(self, population: str, last: int | None = None) -> list[WindowRecord]:
        records = list(self._windows.get(population, ()))
        return records if last is None else records[-last:]

    def first_isolated(self, population: str, agent_id: str) -> tuple[int, float] | None:
        first = self._first.get(population)
        return None if first is None else first.get(agent_id)

    def cluster_windows(self, last: int | None = None) -> list[ClusterWindow]:
        records = list(self._cluster)
        return records if last is None else records[-last:]


def history_of(node) -> WindowHistory | HistoryView | None:
    """The node's :class:`WindowHistory` (None: the node was built without it); of a serve
    read view (``node.read_view``), the history as it was then."""
    for extension in getattr(node, "extensions", ()):
        if isinstance(extension, (WindowHistory, HistoryView)):
            return extension
    return None

