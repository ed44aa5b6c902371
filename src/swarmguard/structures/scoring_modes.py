"""The scoring modes: one registry, read by the protocol, the detector, the engines and the CLI.

A mode names *which moments* (and, for later modes, which other mergeable
summaries) an agent is scored against; every mode keeps the tree's
guarantees (O(log n) per update, mergeable per node, serialisable, the same
answers on every engine).

``mahalanobis``
    Leave-one-out Mahalanobis distance against the population's moments
    (:mod:`swarmguard.structures.scoring`).
``robust``
    The same distance against *trimmed* moments: a second set of moments per
    tree node over the members not flagged under the full moments
    (:mod:`swarmguard.structures.trimming`), so outliers do not inflate the
    covariance they are scored against (masking).
``tails``
    Per-feature tail evidence read from mergeable quantile sketches per tree
    node (:mod:`swarmguard.structures.tail_sketch`, ECOD-like): each feature's
    two-sided tail probability, combined over the features by the Cauchy rule
    (:mod:`swarmguard.structures.cauchy_combination`) into one p-value. The
    reported distance is the plain Mahalanobis one; the tail score is reported
    beside it. A rank has a floor: a member's tail probability is at least
    ``1/n``, so its p-value is at least about ``2/n``, and Benjamini–Hochberg at
    level ``q`` over ``n`` agents rejects at that floor only when about ``2/q``
    agents reach it. Tail evidence ranks well (heavy-tailed, skewed features);
    to *flag* a lone far outlier it needs the distance beside it: ``fused``.
``fused``
    The ``robust`` distance's p-value and the ``tails`` p-value combined into
    one by the Cauchy rule with equal weights. Why Cauchy: both are read from
    the same vector, so they are dependent, and the Cauchy combination stays
    valid under dependence where Fisher's assumes independence; unlike
    Bonferroni's ``2 min(p)`` it adds up evidence both carry.

To add a mode: add its name and one-line description to :data:`SCORING_MODES`
(the order is the CLI's), then give the protocol's scoring the branch it needs.

>>> check_scoring("robust")
'robust'
>>> check_scoring("fancy")
Traceback (most recent call last):
...
swarmguard.errors.InvalidInputError: scoring must be one of ('mahalanobis', 'robust', 'tails', 'fused'), got 'fancy'
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, InvalidTypeError

__all__ = ["SCORING_MODES", "DEFAULT_SCORING", "TRIMMED_MODES", "SKETCH_MODES", "check_scoring"]

SCORING_MODES: dict[str, str] = {
    "mahalanobis": "leave-one-out Mahalanobis distance against the population's moments",
    "robust": "leave-one-out Mahalanobis distance against trimmed moments (members not flagged)",
    "tails": "per-feature tail probabilities from quantile sketches, Cauchy-combined (ECOD-like)",
    "fused": "robust distance and tail evidence, one p-value by Cauchy combination",
}
DEFAULT_SCORING = "mahalanobis"
# The modes that read the tree's trimmed moments (the tree keeps them only when one asks).
TRIMMED_MODES = frozenset({"robust", "fused"})
# The modes that read the tree's per-node tail sketches (kept only when one asks).
SKETCH_MODES = frozenset({"tails", "fused"})


def check_scoring(value: Any) -> str:
    """``value`` if it names a scoring mode; else :class:`~swarmguard.InvalidInputError`
    (:class:`~swarmguard.InvalidTypeError` when it is not a string)."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"scoring must be a string, one of {tuple(SCORING_MODES)}, got {value!r}")
    if value not in SCORING_MODES:
        raise InvalidInputError(f"scoring must be one of {tuple(SCORING_MODES)}, got {value!r}")
    return value
