"""χ² upper-tail probabilities for many squared distances at once.

For even degrees of freedom ``d = 2k`` the survival function has a closed form,
``Q(x) = exp(-x/2) · Σ_{i<k} (x/2)^i / i!``, a short Horner polynomial of
all-positive terms (no cancellation); evaluated as ``exp(log(poly) - x/2)`` it
neither overflows nor underflows early. It is about twice as fast as
``scipy.special.chdtrc`` on a million values and agrees with it to ~1e-14
relative (``tests/structures/test_chi2.py``). Odd ``d``, ``d > 20`` and
``x > 2e4`` use SciPy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import chdtrc

__all__ = ["chi2_sf"]

_CLOSED_FORM_MAX_DOF = 20
_CLOSED_FORM_MAX_HALF_X = 1e4   # beyond, the polynomial could overflow: SciPy takes those


def chi2_sf(x: np.ndarray, dof: int) -> np.ndarray:
    """P(χ²_dof > x), elementwise.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import chi2
    >>> x = np.array([0.0, 3.0, 25.0, 2000.0])
    >>> bool(np.allclose(chi2_sf(x, 10), chi2.sf(x, 10), rtol=1e-13, atol=0))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    if dof % 2 or dof > _CLOSED_FORM_MAX_DOF:
        return chdtrc(dof, x)
    k = dof // 2
    y = np.minimum(x * 0.5, _CLOSED_FORM_MAX_HALF_X)
    acc = np.full_like(y, 1.0 / math.factorial(k - 1))
    for i in range(k - 2, -1, -1):
        acc *= y
        acc += 1.0 / math.factorial(i)
    np.log(acc, out=acc)
    acc -= y
    np.exp(acc, out=acc)
    np.minimum(acc, 1.0, out=acc)          # log(poly) - y can round a hair above 0
    far = x > 2.0 * _CLOSED_FORM_MAX_HALF_X
    if far.any():
        acc[far] = chdtrc(dof, x[far])
    return acc
