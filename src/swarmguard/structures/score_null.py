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
far beyond the cut are not touched, but for the lowest, below). With it the same simulation stays at or
below ``q`` round after round (``tests/structures/test_score_null.py``).
The ``ceil`` rounds an expected count under one up to one: the lowest flag goes
back even when every flag of the round is an anomaly far beyond the cut. Where
the flags tie (the tail modes' scores, ``-log p``, saturate at ``p = 1e-300``) it
ties with all of them, so while the null is small (``2 / (n + 1)`` above the
cut) the next round's copies of those anomalies are no longer flagged, enter
the null and stay masked (measured: ``fused``, ``alpha = 1e-3``, 600 agents,
20 anomalies from round 2: 20 flagged in round 2, none after).

Warm-up: until the null holds ``min_null`` scores it gives no p-values (the
caller keeps its parametric ones) and admits every score. Anomalies present
during warm-up enter the null: that makes p-values *conservative* (larger),
never anti-conservative. (The protocol admits no round scored while its
*population* is under ``warm_up``: distances against a few members' moments are
no draws of the null, and a lone member's is 0.)

Relative scores (``relative=True``)
-----------------------------------
The conformal p-value needs a round's normal scores to be draws of the same
distribution as the null's. A score measured against moments that *hold* the
round's anomalies is not: the plain covariance they inflate shrinks every
distance by the same factor (in the heavy-tailed simulation of
``tests/api/test_tail_scoring.py``, 5 % anomalies shrink the normal members'
median squared distance from 4.5 to 0.3), so the round that brings the
anomalies scores them *below* the tail of the clean rounds' null and flags
none, whatever enters the null afterwards (measured: recall 0 at ``q = 0.01``
even when the null is kept free of every planted anomaly). A relative null
therefore holds and compares each score divided by its batch's **median**
score (:meth:`scale_of`): a scale the anomalies cannot move while they are
fewer than half the batch, except through the moments themselves -- which is
the shrinkage it undoes.

Which median: a median of ``n`` scores is off by about ``1.25 / sqrt(n)`` of a
spread, so only a round of at least :data:`SCALE_ROWS` rows sets the scale that
*other* batches use (:attr:`ScoreNull.last_scale`, refreshed by every such round
admitted). A smaller batch is divided by that scale (a batch of a few suspects
would otherwise be its own yardstick); before any such round it is divided by
its own median, for itself only: that noisy median is never kept, so it cannot
become every later small batch's yardstick.

Resolution: what a null of ``n`` can and cannot decide
------------------------------------------------------
A conformal p-value is valid for every null size; ``n`` only bounds the
smallest one, :attr:`ScoreNull.p_floor` ``= 1 / (n + 1)``. Benjamini–Hochberg
at level ``q`` over ``m`` p-values (each multiplied by ``L`` levels,
Bonferroni) rejects ``R`` of them only if the ``R``-th smallest is at most
``q R / m``, so with calibrated p-values it can flag no group smaller than
:meth:`ScoreNull.fewest_flags` ``= ceil(L m / (q (n + 1)))``. That number does
not shrink with the swarm: after ``r`` rounds of ``m`` members ``n ≈ r m`` and it
is about ``L / (q r)`` (200 / r at ``q = 0.01``, two levels). (Only p-values
from this null have the floor: a protocol's cohort levels keep the mode's own,
and can still flag a lone agent.) A round with fewer anomalies than that flags
none of them on the calibrated level -- the p-values are honest, the null is
too coarse -- and since members not flagged enter the null, those anomalies'
scores then sit in its tail and raise the next rounds' p-values (a small swarm
with a few persistent anomalies can stay unflagged for good; ``simulate``
reports this per round and says so).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..errors import InvalidInputError, NonFiniteError
from .tail_sketch import DEFAULT_SKETCH_K, FeatureSketches, checked_std_devs

__all__ = ["ScoreNull", "DEFAULT_MIN_NULL", "SCALE_ROWS"]

DEFAULT_MIN_NULL = 1000

#: Rows a batch needs for its own median to be its scale (a relative null): the median of
#: ``n`` draws is off by about ``1.25 / sqrt(n)`` of a spread, a few per cent at 500.
SCALE_ROWS = 500

# to_bytes: the version-2 header sets this bit of the first word (min_null < 2**63 in both)
_V2 = 1 << 63


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
    relative : bool, default False
        Hold and compare scores divided by their batch's scale (:meth:`scale_of`;
        the module's *Relative scores*): for scores against moments that the
        round's anomalies are part of.

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

    __slots__ = ("min_null", "relative", "last_scale", "_sketch")

    def __init__(self, k: int = DEFAULT_SKETCH_K, min_null: int = DEFAULT_MIN_NULL, relative: bool = False):
        if not isinstance(min_null, (int, np.integer)) or isinstance(min_null, bool) or min_null < 1:
            raise InvalidInputError(f"min_null must be a positive integer, got {min_null!r}")
        if not isinstance(relative, bool):
            raise InvalidInputError(f"relative must be True or False, got {relative!r}")
        self.min_null = int(min_null)
        self.relative = relative
        #: the scale of the last admitted round of at least SCALE_ROWS rows (a relative null; None before one)
        self.last_scale: float | None = None
        self._sketch = FeatureSketches(1, k)

    def scale_of(self, scores: np.ndarray) -> float:
        """What a batch's scores are divided by: 1 for an absolute null; for a relative one the
        batch's median score (its mean where the median is 0, 1 where both are), or, for a batch
        under :data:`SCALE_ROWS` rows, :attr:`last_scale` (the last admitted round of at least
        :data:`SCALE_ROWS` rows'; the batch's own median before such a round).

        >>> ScoreNull(relative=True).scale_of(np.arange(1.0, 600.0))
        300.0
        """
        if not self.relative:
            return 1.0
        s = _in_sketch_range(scores)
        if s.size < SCALE_ROWS and self.last_scale is not None:
            return self.last_scale
        if s.size == 0:
            return 1.0
        for scale in (float(np.median(s)), float(np.mean(s))):
            if math.isfinite(scale) and scale > 0.0:
                return scale
        return 1.0

    def _scaled(self, s: np.ndarray, scale: float | None) -> tuple[np.ndarray, float]:
        if not self.relative:
            return s, 1.0
        if scale is None:
            scale = self.scale_of(s)
        elif not (isinstance(scale, (int, float, np.floating)) and math.isfinite(scale) and scale > 0):
            raise InvalidInputError(f"scale must be a positive finite number, got {scale!r}")
        return np.clip(s / float(scale), -_FLOAT32_MAX, _FLOAT32_MAX), float(scale)

    @property
    def count(self) -> int:
        return self._sketch.count

    @property
    def warm(self) -> bool:
        """Whether the null holds ``min_null`` scores (and so gives p-values)."""
        return self.count >= self.min_null

    @property
    def p_floor(self) -> float | None:
        """The smallest calibrated p-value this null can give, ``1 / (n + 1)``; None while warming up."""
        return 1.0 / (self.count + 1.0) if self.warm else None

    def fewest_flags(self, tests: int, q: float, levels: int = 1) -> int | None:
        """The fewest of ``tests`` calibrated p-values (each times ``levels``, Bonferroni) that
        Benjamini–Hochberg at level ``q`` can reject: ``ceil(levels · tests / (q (n + 1)))``, in
        exact rational arithmetic (``q`` as the float it is), but where that ratio is within
        rounding of a whole number ``R``, the side :func:`~swarmguard.structures.fdr.benjamini_hochberg`
        puts ``R`` floor p-values on (its adjusted p-value ``p · (tests / R)``, in floats, against
        ``q``; at ``q = 1``, 1: SciPy clips adjusted p-values at 1, so BH rejects them all); None while
        warming up. A value above ``tests`` means no round of ``tests`` members
        can be flagged on these p-values at all.

        >>> null = ScoreNull(min_null=4)
        >>> _ = null.admit(np.arange(1.0, 2000.0))              # n = 1999, floor 1/2000
        >>> null.fewest_flags(2000, 0.01), null.fewest_flags(2000, 0.01, levels=2)
        (100, 200)
        """
        if isinstance(tests, bool) or not isinstance(tests, (int, np.integer)) or tests < 1:
            raise InvalidInputError(f"tests must be a positive integer, got {tests!r}")
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
            raise InvalidInputError(f"levels must be a positive integer, got {levels!r}")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
            raise InvalidInputError(f"q must be in (0, 1], got {q!r}")
        if not self.warm:
            return None
        if q >= 1.0:        # SciPy clips adjusted p-values at 1: at q = 1 BH rejects every p-value, a lone one too
            return 1
        need = math.ceil(Fraction(int(levels) * int(tests)) / (Fraction(q) * (self.count + 1)))
        if need > tests + 1:
            return need
        # need = tests + 1 can be a tie too (q = 0.03, 3 levels, n + 1 = 100: 3 · 6 / (0.03 · 100) = 6
        # in decimals, a hair above 6 with q as a float, yet BH's floats flag all 6): check tests
        # At an exact tie (q = 0.3, n + 1 = 4, 6 tests: 5 = 6 / (0.3 · 4) in decimals) the flags
        # are decided by BH's floats: the floor p-value times the levels as the protocol combines
        # them (min(1, p · levels)), adjusted as SciPy does (p · (m / R)); within a few ulps of the
        # exact ratio, so the answer is need - 1, need or need + 1.
        floor = min(1.0, (1.0 / (self.count + 1.0)) * float(levels))
        m = float(tests)
        return next((r for r in range(max(1, need - 1), min(int(tests), need + 1) + 1) if floor * (m / r) <= q),
                    need if need > tests else need + 1)

    @property
    def exact(self) -> bool:
        """Whether the sketch still holds every score (counts are then exact)."""
        return self._sketch.exact

    def admit(self, scores: np.ndarray, flagged: np.ndarray | None = None, q: float = 0.0, *,
              alpha: float | None = None, scale: float | None = None) -> int:
        """Add a round's scores, leaving out flagged members but the ``ceil(q R)`` lowest flags.

        ``alpha``: the flags came from a per-member cut at level ``alpha`` (no FDR procedure),
        which flags about ``alpha · m`` of ``m`` normal members whatever ``R`` is; then the
        ``min(R, ceil(alpha m))`` lowest flags go back in (``ceil(alpha R)`` would leave most
        false flags out, and the thinning compounds: measured at ``alpha = 0.01``, the false
        flag rate went 0.010 → 0.027 in ten rounds). While the null is warming up every score
        enters. A relative null admits each score divided by ``scale`` (default
        :meth:`scale_of` the round's scores) and, for a round of at least :data:`SCALE_ROWS`
        rows, keeps ``scale`` as :attr:`last_scale`.
        Returns the number admitted.

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
        s, scale = self._scaled(s, scale)
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
        if self.relative and s.size >= SCALE_ROWS:
            # only a round large enough for its median to be a yardstick sets the one later small
            # batches use; a smaller round's scale served that round alone (module docstring)
            self.last_scale = scale
        return int(keep.size)

    def p_values(self, scores: np.ndarray, scale: float | None = None) -> np.ndarray | None:
        """Calibrated p-values ``(1 + #{null >= s}) / (n + 1)``; None while warming up.

        A relative null compares ``scores / scale`` (default :meth:`scale_of` the scores)."""
        # bad scores (or a relative null's bad scale) are refused warm or not
        s, _ = self._scaled(_in_sketch_range(scores), scale)
        if not self.warm:
            return None
        # the right tail only: a null's p-value is one-sided (the left sketch's rank queries and the
        # skewness would be computed and dropped)
        return self._sketch.right_tail_probabilities(s.reshape(-1, 1), members=False)[:, 0]

    def p_value_bounds(self, scores: np.ndarray, std_devs: int = 3) -> tuple[np.ndarray, np.ndarray] | None:
        """REQ's a-priori bounds on the *exact* calibrated p-values of ``scores``: ``(lo, hi)``.

        The exact p-value is ``(1 + W) / (n + 1)``, ``W`` the number of admitted
        scores at or above the score; the sketch's estimate of ``W / n`` lies
        within the library's relative rank bounds
        (:meth:`~swarmguard.structures.tail_sketch.FeatureSketches.tail_bounds`,
        ``std_devs`` in 1..3) of the truth, which this maps to p-values. None
        while warming up. A Python loop over the scores: for checks, not for scoring.
        ``scores`` are compared as the null holds them (a relative null's: divided already).
        """
        s = _in_sketch_range(scores).reshape(-1, 1)
        std_devs = checked_std_devs(std_devs)       # refused warm or not, as bad scores are
        if not self.warm:
            return None
        n = float(self.count)
        _, _, lo, hi = self._sketch.tail_bounds(s, std_devs)
        return (1.0 + n * lo[:, 0]) / (n + 1.0), np.minimum(1.0, (1.0 + n * hi[:, 0]) / (n + 1.0))

    def merge(self, other: ScoreNull) -> None:
        """Merge another null into this one (the null of both populations); both must be relative
        or both absolute. A relative null keeps its own :attr:`last_scale` (the other's if it has none)."""
        if not isinstance(other, ScoreNull):
            raise InvalidInputError(f"can only merge a ScoreNull, got {type(other).__name__}")
        if other.relative != self.relative:
            raise InvalidInputError("cannot merge a relative score null with an absolute one")
        self._sketch.merge(other._sketch)
        if self.last_scale is None:
            self.last_scale = other.last_scale

    def to_bytes(self) -> bytes:
        """Version 1 (an absolute null: ``min_null``, the sketch) as before relative nulls; version 2
        (a relative one) marks the first word and adds ``last_scale`` (NaN: none) before the sketch."""
        if not self.relative:
            return self.min_null.to_bytes(8, "little") + self._sketch.to_bytes()
        scale = math.nan if self.last_scale is None else self.last_scale
        return ((self.min_null | _V2).to_bytes(8, "little") + np.float64(scale).tobytes()
                + self._sketch.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> ScoreNull:
        data = bytes(data)
        if len(data) < 8:
            raise InvalidInputError("score null: truncated")
        out = cls.__new__(cls)
        word = int.from_bytes(data[:8], "little")
        out.relative = bool(word & _V2)
        out.min_null = word & ~_V2
        out.last_scale = None
        start = 8
        if out.relative:
            if len(data) < 16:
                raise InvalidInputError("score null: truncated")
            scale = float(np.frombuffer(data[8:16], dtype=np.float64)[0])
            if not (math.isnan(scale) or (math.isfinite(scale) and scale > 0)):
                raise InvalidInputError("score null: not a score null")
            out.last_scale = None if math.isnan(scale) else scale
            start = 16
        out._sketch = FeatureSketches.from_bytes(data[start:])
        if out.min_null < 1 or out._sketch.features != 1:
            raise InvalidInputError("score null: not a score null")
        return out
