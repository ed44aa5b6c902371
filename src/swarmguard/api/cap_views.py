"""A region's view in the CAP resolver: its confidence factor and the estimate it reports.

:class:`CapViews` is a part of
:class:`~swarmguard.api.cap.StatisticalCAPResolver` (its methods run on the
resolver's state and under its lock); :func:`compute_confidence_factor` and
:func:`widened_threshold` are free functions, also importable from
:mod:`swarmguard.api.cap`.

Confidence factor
-----------------
For region r's view, with ``N_p`` the agents of home region p in that view,
``w_p = N_p / sum_q N_q`` and ``age_p`` the seconds since r's view of p was last
known current (0 for r itself: a region's own part is never stale)::

    c_p = 1                                   if age_p <= max_staleness_seconds
    c_p = exp(-confidence_decay_rate * (age_p - max_staleness_seconds))   otherwise
    confidence_factor = sum_p w_p * c_p       (1.0 for an empty view)

It lies in (0, 1] (clamped below at the smallest positive float so that an
underflowing ``exp`` cannot make it 0) and, with a clock that never runs
backwards, it never increases unless new information arrives (an update, or a
sync). The resolver guards the clock: readings that go backwards are ignored.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..locking import synchronized
from ..validation import check_finite_float, check_fraction
from .cap_types import ConsistencyModel

__all__ = ["CapViews", "compute_confidence_factor", "widened_threshold"]


def compute_confidence_factor(
    counts: Mapping[str, int], ages: Mapping[str, float], own_region: str,
    max_staleness_seconds: float, confidence_decay_rate: float,
) -> float:
    """The confidence factor of one view (see the module docstring).

    Examples
    --------
    >>> compute_confidence_factor({"eu": 3, "us": 1}, {"us": 15.0}, "eu", 5.0, 0.1)
    0.8419698602928606
    >>> compute_confidence_factor({}, {}, "eu", 5.0, 0.1)
    1.0
    """
    total = sum(counts.values())
    if total == 0:
        return 1.0
    terms = []
    for region, n in counts.items():
        if n <= 0:
            continue
        # a region missing from ``ages`` was never heard from: as stale as can be
        age = 0.0 if region == own_region else ages.get(region, math.inf)
        c = 1.0 if age <= max_staleness_seconds else math.exp(
            -confidence_decay_rate * (age - max_staleness_seconds)
        )
        terms.append(n * c)
    return min(1.0, max(math.fsum(terms) / total, sys.float_info.min))


def widened_threshold(threshold: float, confidence_factor: float, *, squared: bool = False) -> float:
    """Detection threshold widened for a view with the given confidence factor.

    The resolver widens confidence intervals by ``1 / confidence_factor`` (it
    treats a stale view as inflating the standard error by that factor); a
    detection threshold on the same scale (a z-score, a Mahalanobis distance)
    widens the same way, and a threshold on a *squared* scale (chi-square,
    squared Mahalanobis distance) by ``1 / confidence_factor**2``. This is the
    ``adjust_detection_thresholds`` step of the guide.

    >>> widened_threshold(3.0, 0.5)
    6.0
    >>> widened_threshold(9.0, 0.5, squared=True)
    36.0
    """
    threshold = check_finite_float(threshold, "threshold")
    cf = check_fraction(confidence_factor, "confidence_factor", low=0.0, low_open=True)
    return threshold / (cf * cf if squared else cf)


class CapViews:
    """The views of :class:`~swarmguard.api.cap.StatisticalCAPResolver` (a part of its class):
    confidence factors and the per-region report of the global estimate."""

    # ------------------------------------------------------------------ views
    @synchronized
    def confidence_factor(self, region: str) -> float:
        """The confidence factor of ``region``'s current view (module docstring)."""
        region = self._known(region)
        if region not in self._replicas:
            return 1.0
        replica = self._replicas[region]
        return compute_confidence_factor(
            replica.region_counts(), replica.ages(self._now()), region,
            self.max_staleness_seconds, self.confidence_decay_rate,
        )

    @synchronized
    def global_estimate(self, region: str) -> dict[str, Any]:
        """``region``'s current view: confidence, staleness and the global estimate.

        Under STRONG a region without a majority refuses (its view may be stale).
        """
        region = self._known(region)
        self._require_quorum(region)
        return self._view_report(region)

    def _view_confidence(self, region: str, now: float) -> float | None:
        """The ``confidence_factor`` of :meth:`_view_report` alone (None under EVENTUAL)."""
        if self.consistency_model is ConsistencyModel.EVENTUAL:
            return None
        replica = self._replicas.get(region)
        if replica is None:
            return compute_confidence_factor({}, {}, region, self.max_staleness_seconds, self.confidence_decay_rate)
        return compute_confidence_factor(replica.region_counts(), replica.ages(now), region,
                                         self.max_staleness_seconds, self.confidence_decay_rate)

    def _view_report(self, region: str, now: float | None = None) -> dict[str, Any]:
        now = self._now() if now is None else now
        replica = self._replicas.get(region)
        counts = replica.region_counts() if replica else {}
        ages = replica.ages(now) if replica else {}
        total = sum(counts.values())
        statistical = self.consistency_model is not ConsistencyModel.EVENTUAL
        cf = compute_confidence_factor(counts, ages, region, self.max_staleness_seconds,
                                       self.confidence_decay_rate) if statistical else None
        weighted = math.fsum(n * (0.0 if p == region else ages.get(p, math.inf)) for p, n in counts.items())
        estimate: dict[str, Any] = {"count": total, "region_counts": counts}
        d = self._dim
        # exact sums: identical registers give identical answers, bit for bit (docs/cap.md)
        m = replica._exact_total() if replica else None
        if m is not None and m.count:
            # Python floats, then one array each: the same IEEE operations as NumPy's, bit for bit
            mean = m._mean_list()
            estimate["mean"] = np.array(mean[:d])
            estimate["mean_anomaly_score"] = mean[d]
        else:
            estimate["mean"] = None
            estimate["mean_anomaly_score"] = None
        if statistical:
            estimate["confidence_level"] = self.confidence_level
            if m is not None and m.count >= 2:
                # the exact centred sum of squares, rounded once: never negative
                pairs = float((m.count - 1) * m.count)
                z = self._z
                half = [z * math.sqrt(v / pairs) / cf for v in m._m2_diagonal_list()]
                estimate["confidence_interval"] = (np.array([a - h for a, h in zip(mean[:d], half, strict=False)]),
                                                   np.array([a + h for a, h in zip(mean[:d], half, strict=False)]))
                estimate["anomaly_score_interval"] = (mean[d] - half[d], mean[d] + half[d])
            else:
                estimate["confidence_interval"] = None
                estimate["anomaly_score_interval"] = None
        return {
            "region": region,
            "consistency_model": self.consistency_model.value,
            "confidence_factor": cf,
            "staleness_seconds": max(ages.values(), default=0.0),
            "weighted_staleness_seconds": weighted / total if total else 0.0,
            "visible_regions": sorted(self._topology.reachable(region)),
            "global_estimate": estimate,
        }
