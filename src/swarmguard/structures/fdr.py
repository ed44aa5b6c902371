"""False-discovery-rate control for batch scoring (Benjamini–Hochberg, 1995)."""

from __future__ import annotations

import numpy as np

__all__ = ["benjamini_hochberg"]


def benjamini_hochberg(p_values: np.ndarray, q: float) -> tuple[np.ndarray, float]:
    """Reject the hypotheses BH rejects at FDR level ``q``.

    Returns the boolean rejection mask and the p-value cut-off used: reject
    every ``p <= p_(k)`` where ``k`` is the largest rank with ``p_(k) <= k q / m``.
    The cut-off is 0.0 when nothing is rejected (and may be 0.0 when only
    p-values that underflowed to 0 are): test the mask, not the cut-off.

    Examples
    --------
    >>> import numpy as np
    >>> mask, cut = benjamini_hochberg(np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205]), 0.05)
    >>> mask.tolist(), cut
    ([True, True, False, False, False, False, False, False], 0.008)
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool), 0.0
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    below = ranked <= q * np.arange(1, m + 1) / m
    if not below.any():
        return np.zeros(m, dtype=bool), 0.0
    k = int(np.flatnonzero(below)[-1])
    cut = float(ranked[k])
    return p <= cut, cut
