"""The anomaly decision of a batch: which decision p-values are significant, and at what cut.

One rule for every engine (the in-process protocol, the Ray driver): with a
false-discovery level ``q``, Benjamini–Hochberg over the batch
(:func:`~swarmguard.structures.fdr.benjamini_hochberg`); without one, the
per-agent level ``alpha``. Nobody is flagged while every level is warming up.
The squared-distance threshold is the χ²(d) quantile of the cut; when only
p-values that underflowed to 0 were rejected (cut 0), the smallest flagged
squared distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..lazy_import import module_on_first_use
from ..validation import check_fraction
from .fdr import benjamini_hochberg

__all__ = ["SignificanceCut", "significance_cut", "resolve_fdr", "chi2_threshold"]

_special = module_on_first_use("scipy.special")   # imported on first use: see swarmguard.lazy_import


@lru_cache(maxsize=256)
def chi2_threshold(alpha: float, dim: int) -> float:
    """Squared-distance threshold: the χ²(dim) upper ``alpha`` quantile."""
    return float(_special().chdtri(dim, alpha))   # what scipy.stats.chi2.isf evaluates


def resolve_fdr(fdr: Any, default: float | None) -> float | None:
    """A batch call's ``fdr`` argument: ``"default"`` is ``default``, None is none, else a level in (0, 1)."""
    if isinstance(fdr, str) and fdr == "default":
        return default
    if fdr is None:
        return None
    return check_fraction(fdr, "fdr", low_open=True, high_open=True)


@dataclass(frozen=True)
class SignificanceCut:
    """The decision of one batch: ``flagged`` per row, the p-value ``cut``, the squared
    distance ``threshold_squared`` and the ``method`` (``"fdr(q=…)"`` or ``"alpha(…)"``)."""

    flagged: np.ndarray
    cut: float
    threshold_squared: float
    method: str


def significance_cut(decision_p: np.ndarray, d2: np.ndarray, dim: int, *, q: float | None, alpha: float,
                     any_warm: bool) -> SignificanceCut:
    """Flag the rows of a batch whose decision p-values are significant.

    ``q``: the false-discovery level (None: the per-agent level ``alpha``, strict
    ``p < alpha``); ``any_warm``: some scoring level is out of warm-up (else
    nobody is flagged); ``d2``: the rows' squared distances (the threshold when
    the cut is 0).

    >>> cut = significance_cut(np.array([1e-9, 0.5]), np.array([40.0, 1.0]), 2, q=0.05, alpha=1e-3,
    ...                        any_warm=True)
    >>> cut.flagged.tolist(), cut.cut, cut.method
    ([True, False], 1e-09, 'fdr(q=0.05)')
    """
    n = np.shape(decision_p)[0]
    if q is not None:
        flagged, cut = benjamini_hochberg(decision_p, q)
        method = f"fdr(q={q})"
    else:
        cut = alpha
        flagged = decision_p < cut
        method = f"alpha({cut})"
    if not any_warm:
        flagged = np.zeros(n, dtype=bool)
    if cut > 0:
        thr2 = chi2_threshold(cut, dim)
    elif flagged.any():      # only p-values that underflowed to 0 were rejected
        thr2 = float(np.asarray(d2)[flagged].min())
    else:
        thr2 = float("inf")
    return SignificanceCut(flagged, float(cut), thr2, method)
