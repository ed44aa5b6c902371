"""DistributedBehavioralDetector: rounds stay whole when observers reuse the detector's evidence ids."""

from __future__ import annotations

import numpy as np

from swarmguard import DistributedBehavioralDetector


def test_an_observer_using_the_detectors_next_evidence_id_does_not_break_a_round():
    rng = np.random.default_rng(1)
    ids, X = np.arange(300), rng.normal(size=(300, 2))
    X[:5] += 9.0
    det = DistributedBehavioralDetector(feature_dimensions=2, warm_up=100, clock=lambda: 0.0)
    det.ingest_evidence(["detector:0:0"], [299], "behavioral_anomaly", [1.0], [1.0], [0.0], ["observer"])
    out = det.process_round(ids, X, "eu")
    assert out["is_anomaly"][:5].all()
    ev = det.consensus.export_evidence()
    # Evidence ids are unique per source: the observer's "detector:0:0" is no collision, so
    # the detector's own first range is used whole.
    own = [k for k, s in zip(ev["evidence_ids"], ev["source_nodes"], strict=True) if s == det.node_id]
    assert sorted(own) == sorted(f"detector:0:{i}" for i in range(int(out["is_anomaly"].sum())))
    assert det.consensus.consensus(299)["source_count"] == 1  # the observer's evidence is untouched
