"""An empirical null for a population's scores, and the calibrated p-values it gives.

χ² p-values assume Gaussian members: on heavy-tailed or skewed populations the
tails of the leave-one-out distance are far heavier than χ²'s and
Benjamini–Hochberg at ``fdr = q`` flags many times ``q`` false members. The
:class:`ScoreNull` instead learns the distribution of the scores of members
*not flagged* (a REQ sketch, :mod:`swarmguard.structures.tail_sketch`, so it
merges across nodes, shards and regions and serialises like them), and an
agent's **calibrated p-value** is the share of that null at or above its score:

    p = (1 + #{null scores >= s}) / (n_null + 1)

The ``+ 1`` counts the agent's own score as one more draw of the null (the
conformal p-value of Vovk et al., 2005; Bates et al., 2023): if the agent is
exchangeable with the members whose scores made the null, ``P(p <= α) <= α``
for every ``α`` exactly, whatever the score's distribution, and never 0 -- the
smallest p-value is ``1 / (n_null + 1)``, so a null of ``n`` scores can support
BH decisions on ``R`` flags out of ``m`` only when ``1/(n + 1) <= q R / m``.
Benjamini–Hochberg on conformal p-values that share one null controls the FDR
(Bates et al., 2023, their p-values are PRDS). The count is read from a
relative-error sketch in high-rank-accuracy mode: the highest scores are kept
exactly, and a count ``c`` from the top is off by a small *fraction* of ``c``
(the bounds: :meth:`FeatureSketches.tail_bounds`) -- which is what a p-value
of ``1e-4`` needs; an additive-error sketch (KLL) is off by about 1 % of
``n_null`` everywhere, a hundred times such a p-value.

Who enters the null (:meth:`ScoreNull.admit`)
---------------------------------------------
A round's scores are tested against the null of *earlier* rounds, then the
round's members enter it -- all except those flagged. Leaving the flagged out
keeps anomalies from masking each other (with ``A`` anomalies in the null, an
anomaly's p-value is at least about ``A / n``). But some flags are false: those
members are the *normal* scores just past the cut, and leaving them out thins
the null's tail, so the next round's p-values come out smaller, more of its
normal members pass the cut, and over rounds the thinning compounds (in a
simulation at ``q = 0.05``: realised FDR 0.05 → 0.10 over six rounds). So
:meth:`admit` puts the ``ceil(q · R)`` *lowest-scoring* of a round's ``R`` flags
back in (``ceil(alpha · m)`` of them after a per-member cut at ``alpha`` over ``m``
members, which makes about ``alpha · m`` false flags): BH at level ``q`` makes at most ``q · R`` false discoveries in
expectation, and they sit where those scores are, just past the cut (anomalies
far beyond the cut are not touched). With it the same simulation stays at or
below ``q`` round after round (``tests/structures/test_score_null.py``).

Warm-up: until the null holds ``min_null`` scores it gives no p-values (the
caller keeps its parametric ones) and admits every score. Anomalies present
during warm-up enter the null: that makes p-values *conservative* (larger),
never anti-conservative.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInputError, NonFiniteError
from .tail_sketch import DEFAULT_SKETCH_K, FeatureSketches

__all__ = ["ScoreNull", "DEFAULT_MIN_NULL"]

DEFAULT_MIN_NULL = 1000


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _in_sketch_range(scores) -> np.ndarray:
    """Scores as the sketch keeps them: non-finite ones refused, the rest clipped to float32's range.

    A robust distance of a far outlier against near-singular trimmed moments can pass
    ``3.4e38``; it is beyond every other score, and the clipped value still is (ties at the
    edge count on both sides, which can only make a p-value larger). Raising instead would
    fail a round after the tree was written."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise NonFiniteError("scores entering the null must be finite")
    return np.clip(s, -_FLOAT32_MAX, _FLOAT32_MAX)


class ScoreNull:
    """A mergeable sketch of the scores of members not flagged.

    Parameters
    ----------
    k : int
        The REQ sketch's accuracy parameter (see :mod:`~swarmguard.structures.tail_sketch`).
    min_null : int
        Scores needed before :meth:`p_values` answers.

    Examples
    --------
    >>> import numpy as np
    >>> null = ScoreNull(min_null=4)
    >>> null.admit(np.array([1.0, 2.0, 3.0, 4.0]))      # warm-up: every score enters
    4
    >>> null.p_values(np.array([0.5, 3.0, 100.0])).tolist()
    [1.0, 0.6, 0.2]
    >>> null.admit(np.array([2.5, 60.0, 80.0]), flagged=np.array([False, True, True]), q=0.5)
    2
    """

    __slots__ = ("min_null", "_sketch")

    def __init__(self, k: int = DEFAULT_SKETCH_K, min_null: int = DEFAULT_MIN_NULL):
        if not isinstance(min_null, (int, np.integer)) or isinstance(min_null, bool) or min_null < 1:
            raise InvalidInputError(f"min_null must be a positive integer, got {min_null!r}")
        self.min_null = int(min_null)
        self._sketch = FeatureSketches(1, k)

    @property
    def count(self) -> int:
        return self._sketch.count

    @property
    def warm(self) -> bool:
        """Whether the null holds ``min_null`` scores (and so gives p-values)."""
        return self.count >= self.min_null

    @property
    def exact(self) -> bool:
        """Whether the sketch still holds every score (counts are then exact)."""
        return self._sketch.exact

    def admit(self, scores: np.ndarray, flagged: np.ndarray | None = None, q: float = 0.0, *,
              alpha: float | None = None) -> int:
        """Add a round's scores, leaving out flagged members but the ``ceil(q R)`` lowest flags.

        ``alpha``: the flags came from a per-member cut at level ``alpha`` (no FDR procedure),
        which flags about ``alpha · m`` of ``m`` normal members whatever ``R`` is; then the
        ``min(R, ceil(alpha m))`` lowest flags go back in (``ceil(alpha R)`` would leave most
        false flags out, and the thinning compounds: measured at ``alpha = 0.01``, the false
        flag rate went 0.010 → 0.027 in ten rounds). While the null is warming up every score
        enters. Returns the number admitted.

        Raises
        ------
        InvalidInputError, NonFiniteError
            Before the null changes.
        """
        s = _in_sketch_range(scores)
        if not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0):
            raise InvalidInputError(f"q must be in [0, 1], got {q!r}")
        if alpha is not None and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise InvalidInputError(f"alpha must be in [0, 1] or None, got {alpha!r}")
        if flagged is None or not self.warm:
            keep = s
        else:
            f = np.asarray(flagged, dtype=bool).reshape(-1)
            if f.shape != s.shape:
                raise InvalidInputError(f"flagged has {f.size} entries for {s.size} scores")
            flags = np.sort(s[f])
            expected_false = q * flags.size if alpha is None else alpha * s.size
            back = min(flags.size, math.ceil(expected_false - 1e-12))
            keep = np.concatenate([s[~f], flags[:back]])
        self._sketch.update_many(keep[:, None])
        return int(keep.size)

    def p_values(self, scores: np.ndarray) -> np.ndarray | None:
        """Calibrated p-values ``(1 + #{null >= s}) / (n + 1)``; None while warming up."""
        if not self.warm:
            return None
        s = _in_sketch_range(scores).reshape(-1, 1)
        return self._sketch.tail_probabilities(s, members=False).right[:, 0]

    def p_value_bounds(self, scores: np.ndarray, std_devs: int = 3) -> tuple[np.ndarray, np.ndarray] | None:
        """REQ's a-priori bounds on the *exact* calibrated p-values of ``scores``: ``(lo, hi)``.

        The exact p-value is ``(1 + W) / (n + 1)``, ``W`` the number of admitted
        scores at or above the score; the sketch's estimate of ``W / n`` lies
        within the library's relative rank bounds
        (:meth:`~swarmguard.structures.tail_sketch.FeatureSketches.tail_bounds`,
        ``std_devs`` in 1..3) of the truth, which this maps to p-values. None
        while warming up. A Python loop over the scores: for checks, not for scoring.
        """
        if not self.warm:
            return None
        s = _in_sketch_range(scores).reshape(-1, 1)
        n = float(self.count)
        _, _, lo, hi = self._sketch.tail_bounds(s, std_devs)
        return (1.0 + n * lo[:, 0]) / (n + 1.0), np.minimum(1.0, (1.0 + n * hi[:, 0]) / (n + 1.0))

    def merge(self, other: ScoreNull) -> None:
        """Merge another null into this one (the null of both populations)."""
        if not isinstance(other, ScoreNull):
            raise InvalidInputError(f"can only merge a ScoreNull, got {type(other).__name__}")
        self._sketch.merge(other._sketch)

    def to_bytes(self) -> bytes:
        return self.min_null.to_bytes(8, "little") + self._sketch.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoreNull:
        data = bytes(data)
        if len(data) < 8:
            raise InvalidInputError("score null: truncated")
        out = cls.__new__(cls)
        out.min_null = int.from_bytes(data[:8], "little")
        out._sketch = FeatureSketches.from_bytes(data[8:])
        if out.min_null < 1 or out._sketch.features != 1:
            raise InvalidInputError("score null: not a score null")
        return out
