"""``RankedAgents``: one population's agent table in ``/v1/agents`` order, built once per table.

``GET /v1/agents?top=K`` (and the dashboard's tables) list the most anomalous agents:
smallest ``ln p`` first, then largest score, and on equal keys in the order the agent
table holds them (``heapq.nlargest`` over the table with the key ``(-log_p, score)`` is
``sorted(table, key=..., reverse=True)[:K]``, which is stable: of two agents with equal
keys the one met first comes first). Ranking every agent of every population per request
was a Python pass over 10⁵–10⁶ states; the table only changes when a window closes
(:meth:`~.population.Population.close_window` swaps in a new dict, a snapshot restore
builds one), so the ranking is built once per table and a request takes its first K —
or the first K of one cohort, which are kept grouped (``cohort_rows``).

What the index costs per agent: the states listed (a list, 8 bytes a pointer), the rank
order and the cohort grouping (int32 positions, 4 bytes each): 16 bytes, 16 MB at 10⁶
agents (the states themselves, with their feature vectors, are several hundred bytes
each); building it passes once over the states per column and sorts (about 0.05 s at 10⁵
agents, at the end of the close, while reads still answer from the read view). While a
window closes the view keeps the old table's ranking alive next to the new one, so
briefly twice that.

A table whose ``ln p`` or score holds a NaN has no total order (``nlargest``'s answer
then depends on how it walks the table); its ranking keeps the table's order unsorted
and :meth:`RankedAgents.candidates` hands the caller every state, so the caller's
``nlargest`` answers exactly as it did over the whole table.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import numpy as np

from .agent_state import AgentState

__all__ = ["RankedAgents", "rank_key", "ranked_of"]


def rank_key(state: AgentState) -> tuple[float, float]:
    """The ``heapq.nlargest`` key of ``/v1/agents``: the largest key is the most anomalous."""
    return (-state.log_p, state.score)


@dataclass(frozen=True)
class RankedAgents:
    """An agent table ranked (module docstring).

    ``table``: the dict ranked (its identity says whether the ranking is current);
    ``states``: its states in table order; ``order``: their positions, most anomalous first
    (ties in table order); ``cohort_rows``: the same positions grouped by cohort (``cohort or
    region``), rank order within each, and ``cohort_span``: each cohort's ``[start, stop)``
    in ``cohort_rows``; ``ordered``: False when a NaN key left the table unsorted (``order``
    then the table's own).
    """

    table: dict[str, AgentState]
    states: list[AgentState]
    order: np.ndarray
    cohort_rows: np.ndarray
    cohort_span: dict[str, tuple[int, int]]
    ordered: bool

    @classmethod
    def of(cls, table: dict[str, AgentState], region: str) -> RankedAgents:
        """Rank ``table`` (an agent id → state dict; a state's cohort None counts as ``region``)."""
        states = list(table.values())
        n = len(states)
        # map() with attrgetter: one Python pass per column, without a generator's frames
        log_p = np.fromiter(map(attrgetter("log_p"), states), dtype=np.float64, count=n)
        score = np.fromiter(map(attrgetter("score"), states), dtype=np.float64, count=n)
        names = [c or region for c in map(attrgetter("cohort"), states)]
        codes_of = {name: code for code, name in enumerate(dict.fromkeys(names))}
        codes = np.fromiter(map(codes_of.__getitem__, names), dtype=np.int64, count=n)
        ordered = not (np.isnan(log_p).any() or np.isnan(score).any())
        # ln p ascending, then score descending; lexsort is stable, so equal keys keep the
        # table's order, as nlargest keeps it. Positions, not the states reordered: a list
        # rebuilt in rank order cost more than the sort (10⁵ scattered reads).
        order = np.lexsort((-score, log_p)) if ordered else np.arange(n)
        positions = np.int32 if n < 2**31 else np.int64
        order = order.astype(positions)
        cohort_rows = order[np.argsort(codes[order], kind="stable")]   # grouped, rank order within
        stops = np.cumsum(np.bincount(codes, minlength=len(codes_of)))
        starts = np.concatenate([[0], stops[:-1]]) if len(codes_of) else np.empty(0, np.int64)
        span = {name: (int(starts[c]), int(stops[c])) for name, c in codes_of.items()}
        return cls(table, states, order, cohort_rows, span, ordered)

    def __len__(self) -> int:
        return len(self.states)

    def candidates(self, k: int, cohort: str | None = None) -> list[AgentState]:
        """The states a top-``k`` answer can hold: the ``k`` most anomalous (of ``cohort``
        when given), most anomalous first; every state (of the cohort), in table order, when
        the table has no total order (module docstring).

        ``heapq.nlargest(k, candidates, key=rank_key)`` is then what it is over the whole
        (cohort's) table: the candidates are its first ``k`` in the same total order (key,
        then table order), and nlargest keeps the earlier of equal keys first. Concatenated
        over several tables in a fixed order, they give nlargest's answer over the tables
        concatenated in that order."""
        if cohort is None:
            rows = self.order[:k] if self.ordered else self.order
        else:
            span = self.cohort_span.get(cohort)
            if span is None:
                return []
            start, stop = span
            rows = self.cohort_rows[start:min(stop, start + k) if self.ordered else stop]
        return list(map(self.states.__getitem__, rows.tolist()))

    def top(self, k: int, cohort: str | None = None) -> list[AgentState]:
        """The ``k`` most anomalous states (of ``cohort``), as ``heapq.nlargest`` over the table."""
        found = self.candidates(k, cohort)
        if self.ordered:
            return found[:k]
        return heapq.nlargest(k, found, key=rank_key)


def ranked_of(holder: Any) -> RankedAgents:
    """``holder``'s (a population or a view of one: ``agents``, ``region``) ranking of its
    current agent table, built on first use after the table changed and kept on ``holder``."""
    ranked = getattr(holder, "_ranked", None)
    if ranked is None or ranked.table is not holder.agents:
        ranked = RankedAgents.of(holder.agents, holder.region)
        holder._ranked = ranked
    return ranked
