"""Tail evidence of agents against a population's feature sketches (ECOD-like).

ECOD (Li, Zhao, Hu, Botta, Ionescu & Chen, 2022, IEEE TKDE) scores a row by how
far into its features' empirical tails it lies, one feature at a time, so a
heavy-tailed or skewed feature is judged by its own distribution rather than
by a variance that whitening would amplify. From the left and right tail
probabilities ``L_j = P(X_j <= x_j)`` and ``R_j = P(X_j >= x_j)``
(:class:`~swarmguard.structures.tail_sketch.TailProbabilities`):

* ``O_left = -Σ_j log L_j``, ``O_right = -Σ_j log R_j``;
* ``O_skew = -Σ_j log(L_j if skew_j < 0 else R_j)`` (a feature's long tail);
* the **tail score** is ``max(O_left, O_right, O_skew)``, as ECOD's.

The **tail p-value** turns the same probabilities into one p-value: each
feature's two-sided tail ``p_j = min(1, 2 min(L_j, R_j))`` is uniform (or
conservative) for a member drawn from the population, whatever the feature's
distribution, and the features' p-values -- dependent, since the features are
-- are combined by the Cauchy rule (:mod:`swarmguard.structures.cauchy_combination`),
which stays valid under dependence. Read from compacted sketches, each small
``L_j`` and ``R_j`` is within a small *relative* error of the exact empirical
tail (REQ, :mod:`swarmguard.structures.tail_sketch`).

What tail evidence cannot do: a rank cannot say "far beyond everyone"; the
smallest tail probability of a member is ``1/n``, and anomalies that share a
direction rank among each other (``k`` of them in the same tail of a feature
give each other tail probabilities up to ``k/n``). Distance evidence has no
such floor, which is why the ``fused`` mode combines both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cauchy_combination import cauchy_combine
from .tail_sketch import FeatureSketches, TailProbabilities

__all__ = ["TailEvidence", "tail_evidence", "tail_evidence_from"]


@dataclass(frozen=True)
class TailEvidence:
    """Tail evidence of ``m`` rows: ``score`` and ``p_value`` ``(m,)``; ``feature_scores``
    ``(m, d)``: each feature's ``-log`` of the tail the score's aggregate chose;
    ``exact``: whether the sketches read still held every value."""

    score: np.ndarray
    p_value: np.ndarray
    feature_scores: np.ndarray
    exact: bool


def tail_evidence_from(tails: TailProbabilities) -> TailEvidence:
    """ECOD-like score and Cauchy-combined p-value from tail probabilities.

    Examples
    --------
    >>> import numpy as np
    >>> from swarmguard.structures.tail_sketch import TailProbabilities
    >>> t = TailProbabilities(np.array([[0.3, 0.01]]), np.array([[0.7, 0.99]]), np.array([0.0, 0.0]), True)
    >>> e = tail_evidence_from(t)
    >>> round(float(e.score[0]), 4), round(float(e.p_value[0]), 4)
    (5.8091, 0.0407)
    """
    neg_left = -np.log(tails.left)
    neg_right = -np.log(tails.right)
    long_left = tails.skewness < 0
    neg_skew = np.where(long_left, neg_left, neg_right)
    totals = np.stack([neg_left.sum(axis=1), neg_right.sum(axis=1), neg_skew.sum(axis=1)])
    choice = np.argmax(totals, axis=0)
    score = totals[choice, np.arange(totals.shape[1])]
    per_feature = np.where((choice == 0)[:, None], neg_left, np.where((choice == 1)[:, None], neg_right, neg_skew))
    two_sided = np.minimum(1.0, 2.0 * np.minimum(tails.left, tails.right))
    return TailEvidence(score, cauchy_combine(two_sided), per_feature, tails.exact)


def tail_evidence(sketches: FeatureSketches, X: np.ndarray, members: bool = True) -> TailEvidence:
    """Tail evidence of rows ``X`` against a population's ``sketches`` (see the module)."""
    return tail_evidence_from(sketches.tail_probabilities(X, members=members))
