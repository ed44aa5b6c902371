"""The ``top`` rows of a ``detect`` summary: which agents, in which order, and how each row reads.

:func:`.detect._top_rows` finds each row's feature parts by scoring the top agents again;
:func:`.detect_rounds.top_rows_from_shares` has them from the agents' own rounds. Both
pick and write the rows here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["top_order", "top_row"]


def top_order(score: np.ndarray, top: int) -> np.ndarray:
    """The rows of the ``top`` highest scores, highest first, ties in row order."""
    k = min(top, score.size)
    part = np.argpartition(-score, k - 1)[:k] if k < score.size else np.arange(score.size)
    return part[np.lexsort((part, -score[part]))]


def top_row(agent_id: Any, score: float, p_value: float, flag: bool, cohort: Any, main_feature: str,
            main_part: float, top_features: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary row: the agent's score, p-value and flag, its cohort (``None`` without a
    cohort column), its main feature and that feature's part of the score, and its largest
    features' shares (``top_features``: ``{"feature", "share"}``, largest first)."""
    return {"agent_id": agent_id, "score": score, "p_value": p_value, "is_anomaly": flag,
            "main_feature": main_feature, "main_part": main_part,
            "cohort": None if cohort is None else str(cohort), "top_features": top_features}
