"""``CohortSummaries``: one population's ``/v1/populations`` summaries, built once per agent table.

``GET /v1/populations`` answers every cohort's summary (count, mean, covariance summary,
score quantiles, isolated agents: :meth:`~.population.Population.cohort_summary`). Building
them walks every agent, groups the agents by cohort and summarises each cohort: about
110 ms at 10⁵ agents in 300 cohorts (``benchmarks/bench_populations.py``), under the node's
lock, on every request. What they are made of changes only when the agent table is replaced:
the table itself (:meth:`~.population.Population.close_window` swaps in a new dict, a
snapshot restore builds one; no code writes a table once it is in place), the feature
names (a population fed unnamed vectors takes the names of the first batch that brings
some, ``accept_behaviors(..., feature_names)``, without a close) and the tree's
statistics, which only the window's round changes, just before it swaps the table in (a
round that fails leaves both as they were). Peer deltas change the replica's registers and
the evidence, neither of which a summary holds (the replicated agents are ``/v1/agents``'s,
:mod:`.replica_read`). So the summaries are kept with the table and the names they were built
from and rebuilt on the first request after either was replaced, as :mod:`.ranked_agents` keeps its
ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CohortSummaries", "summaries_of"]


@dataclass(frozen=True)
class CohortSummaries:
    """``table``: the agent dict summarised (its identity says whether they are current);
    ``by_cohort``: each cohort's summary (``""``: the whole population first, then the cohorts
    by name), only those that have one; ``names``: the feature names they answer. The
    summaries are shared by every answer: read only."""

    table: dict
    names: tuple[str, ...]
    by_cohort: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, holder: Any) -> CohortSummaries:
        """Summarise ``holder``'s (a population or a view of one) agent table now."""
        table, names = holder.agents, tuple(holder.names())
        out: dict[str, dict[str, Any]] = {}
        for cohort, members in [("", list(table.values())), *holder.members_by_cohort().items()]:
            summary = holder.cohort_summary(cohort, members)
            if summary is not None:
                out[cohort] = summary
        return cls(table, names, out)

    def current(self, holder: Any) -> bool:
        """Whether these are ``holder``'s summaries now (its table and its feature names)."""
        return self.table is holder.agents and self.names == tuple(holder.names())


def summaries_of(holder: Any) -> CohortSummaries:
    """``holder``'s summaries of its current agent table, built on first use after the table
    or its feature names were replaced and kept on ``holder`` (``_summaries``)."""
    kept = getattr(holder, "_summaries", None)
    if kept is None or not kept.current(holder):
        kept = CohortSummaries.of(holder)
        holder._summaries = kept
    return kept
