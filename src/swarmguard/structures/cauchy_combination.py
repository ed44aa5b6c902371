"""Cauchy combination of p-values (Liu & Xie, 2020, JASA 115:393).

``T = Σ w_i tan((1/2 - p_i) π)`` with weights summing to 1, and the combined
p-value is the standard Cauchy tail ``1/2 - arctan(T) / π``. If each ``p_i`` is
uniform under the null, ``T`` is exactly standard Cauchy when the p-values are
independent or perfectly dependent, and its tail stays Cauchy's as ``p → 0``
under *arbitrary* dependence (Liu & Xie's Theorem 1, for bivariate-normal
dependence of the underlying statistics): the combined p-value is valid where
decisions are made, without modelling how the evidence sources depend on each
other. That is why it combines evidence read from the same observation (a
feature's left and right tail, the features of one agent, an agent's distance
and its tail evidence), where Fisher's ``-2 Σ log p`` assumes independence and
is anti-conservative under positive dependence, and Bonferroni's ``k · min p``
is valid but discards all but the strongest source.

A p-value near 1 sends ``tan`` toward ``-∞`` and can cancel any evidence, so
every input is capped at :data:`P_CAP` (0.99) first; the cap only moves inputs
that carry no evidence. Measured on 2·10⁶ rows of 8 independent uniform
p-values, ``P(combined <= α) / α`` is 1.014, 1.017 and 1.000 at ``α`` = 0.1,
0.01 and 0.001 (a cap of 0.9 gives 1.12, 1.04, 1.00: more anti-conservative). Small p-values use ``cot(π p)``, which
keeps ``1 / (π p)`` accurate; inputs below ``1e-300`` count as ``1e-300``
(their cotangent would overflow), so evidence beyond that is not told apart
by the combination, only by its inputs. The
combined tail uses ``arctan(1 / T) / π`` for ``T > 0`` (no cancellation in
``1/2 - arctan(T)/π`` for large ``T``).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError

__all__ = ["cauchy_combine", "P_CAP"]

P_CAP = 0.99
_TINY = 1e-300      # below, 1 / (π p) would overflow: smaller p-values combine as 1e-300


def cauchy_combine(p_values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Combine the p-values of each row (``(m, k)`` → ``(m,)``) by the Cauchy rule.

    ``weights``: ``k`` non-negative weights (normalised to sum 1); equal by default.

    Examples
    --------
    >>> import numpy as np
    >>> cauchy_combine(np.array([[0.5, 0.5], [1e-6, 0.9]])).round(7).tolist()
    [0.5, 2e-06]
    >>> float(cauchy_combine(np.array([[0.03]]))[0])
    0.03
    """
    P = np.asarray(p_values, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] == 0:
        raise InvalidInputError(f"p-values must be an (m, k) array with k >= 1, got shape {P.shape}")
    if np.isnan(P).any() or (P < 0).any() or (P > 1).any():
        raise InvalidInputError("p-values must lie in [0, 1]")
    k = P.shape[1]
    w = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise InvalidInputError(f"weights must be {k} non-negative numbers, not all 0")
    w = w / w.sum()
    p = np.clip(P, _TINY, P_CAP)
    # tan((1/2 - p) π) = cot(π p) = 1 / tan(π p): accurate for tiny p
    T = (1.0 / np.tan(np.pi * p)) @ w
    with np.errstate(divide="ignore"):
        out = np.where(T > 0, np.arctan(1.0 / np.where(T > 0, T, 1.0)) / np.pi, 0.5 - np.arctan(T) / np.pi)
    return np.clip(out, 0.0, 1.0)
