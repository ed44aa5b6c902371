"""``WindowBuffer``: the behaviour vectors that arrived in the open window, per population.

An agent with several vectors in one window is scored on its **last** one (the
latest arrival): a window's round holds one row per agent active in it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["WindowBuffer"]


class WindowBuffer:
    """Vectors in arrival order; :meth:`take` hands over one row per agent (its last) and empties."""

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._blocks: list[np.ndarray] = []
        self._cohorts: list[str | None] = []

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, agent_ids: list[str], X: np.ndarray, cohorts: list[str | None]) -> None:
        self._ids += agent_ids
        self._blocks.append(X)
        self._cohorts += cohorts

    def take(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(agent ids, X, cohorts): each agent's last vector of the window, in first-arrival order."""
        last = {a: i for i, a in enumerate(self._ids)}       # a later vector overwrites the index
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        X = np.concatenate(self._blocks)[rows]
        ids = np.array(list(last), dtype=object)
        cohorts = [self._cohorts[i] for i in rows.tolist()]
        self.__init__()
        return ids, X, cohorts
