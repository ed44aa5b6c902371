"""False-discovery-rate control for batch scoring (Benjamini–Hochberg, 1995).

The adjusted p-values are SciPy's (``scipy.stats.false_discovery_control``,
imported on first use: see :mod:`swarmguard.lazy_import`); this module turns
them into the rejection mask and the p-value cut-off the protocol reports.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError
from ..lazy_import import module_on_first_use

__all__ = ["benjamini_hochberg"]

_stats = module_on_first_use("scipy.stats")


def benjamini_hochberg(p_values: np.ndarray, q: float) -> tuple[np.ndarray, float]:
    """Reject the hypotheses BH rejects at FDR level ``q``.

    Returns the boolean rejection mask and the p-value cut-off used: reject
    every ``p <= p_(k)`` where ``k`` is the largest rank with ``p_(k) <= k q / m``
    (equivalently, every BH-adjusted p-value ``<= q``). The cut-off is 0.0 when
    nothing is rejected (and may be 0.0 when only p-values that underflowed to
    0 are): test the mask, not the cut-off. A p-value within rounding of its
    bound ``k q / m`` falls on the side SciPy's floating-point adjustment puts it.

    Raises
    ------
    InvalidInputError
        A p-value outside [0, 1] or NaN.

    Examples
    --------
    >>> import numpy as np
    >>> mask, cut = benjamini_hochberg(np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205]), 0.05)
    >>> mask.tolist(), cut
    ([True, True, False, False, False, False, False, False], 0.008)
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool), 0.0
    try:
        adjusted = _stats().false_discovery_control(p, method="bh")
    except ValueError as exc:            # SciPy's message: p-values must lie in [0, 1]
        raise InvalidInputError(str(exc)) from None
    # the adjusted values rise with p (ties equal), so the mask is {p <= its largest member}
    mask = adjusted <= q
    cut = float(np.max(p, where=mask, initial=0.0))
    return mask, cut
