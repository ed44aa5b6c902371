"""Durability on Ray: checkpoint folders and their generations, failed checkpoint and
log writes, and the fallback to an older generation when the latest is damaged.

Split from test_ray_faults.py (killed actors, dropped links, a lost driver) so that
``make test`` (one file per xdist worker at a time) can run the two halves side by side.
"""

from __future__ import annotations

import numpy as np
import pytest

from ._sim import assert_same_replica

pytestmark = pytest.mark.ray


def test_checkpoint_files_refuse_ids_they_cannot_hold(ray_session, tmp_path):
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    from swarmguard.errors import InvalidTypeError
    det = RayDistributedBehavioralDetector(feature_dimensions=2, checkpoint_dir=tmp_path)
    try:
        with pytest.raises(InvalidTypeError):
            det.ingest_evidence([("a", 1)], [1], "behavioral_anomaly", [1.0], [1.0], [0.0], ["s"])
        assert det.consensus.evidence_count == 0
    finally:
        det.close()


def test_checkpoint_folder_generations_resume_errors_and_write_failures(ray_session, tmp_path):
    """A second run in the same folder never writes into an existing generation; a damaged
    checkpoint is a typed error; a failed write warns after a round (which stays applied)
    and raises from an explicit checkpoint(); evidence alone triggers checkpoints."""
    import os

    from swarmguard.engines import ray_durability  # the engine's checkpoints and log of calls
    from swarmguard.engines.checkpoint_files import generations
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    from swarmguard.errors import CheckpointError, CheckpointWriteWarning, InvalidTypeError
    rng = np.random.default_rng(0)
    ids, X = np.arange(60), rng.normal(size=(60, 2))
    first = RayDistributedBehavioralDetector(feature_dimensions=2, checkpoint_dir=tmp_path, checkpoint_every=1)
    first.process_round(ids, X, "eu")          # the empty start (gen 1), then one per round
    first.process_round(ids, X, "eu")
    first.close()
    assert generations(tmp_path) == [2, 3]     # the latest and the one before it
    second = RayDistributedBehavioralDetector(feature_dimensions=2, checkpoint_dir=tmp_path, checkpoint_every=1,
                                              warm_up=np.int64(50))           # a NumPy scalar setting
    try:
        second.process_round(ids[:10], X[:10], "us")
        assert generations(tmp_path) == [4, 5]                            # continued, never overwritten
        with pytest.raises(InvalidTypeError):
            RayDistributedBehavioralDetector.resume(tmp_path, feature_dimensions=3)
        again = RayDistributedBehavioralDetector.resume(tmp_path)
        assert again.get_global_statistics()["count"] == 10 and again.regions == ["us"]
        assert again._start == second._start
        assert again.replica("us").same_state(second.replica("us"))
        again.close()
        latest, before = generations(tmp_path)[-1], generations(tmp_path)[-2]
        os.remove(tmp_path / f"gen-{latest}" / "regions0.npz")
        os.remove(tmp_path / f"gen-{before}" / "driver.json")
        with pytest.raises(CheckpointError):
            RayDistributedBehavioralDetector.resume(tmp_path)
        taken = generations(tmp_path)[-1] + 1
        (tmp_path / f"gen-{taken}").mkdir()       # taken by someone else: skipped, not written into
        second.process_round(ids[:10], X[:10], "us")
        assert generations(tmp_path)[-1] == taken + 1 and not any((tmp_path / f"gen-{taken}").iterdir())

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")
        real = ray_durability.write_generation
        ray_durability.write_generation = disk_full
        try:
            with pytest.warns(CheckpointWriteWarning):
                second.process_round(ids[:10], X[:10] + 1, "us")
            assert second.get_global_statistics()["count"] == 10           # the round was applied
            with pytest.raises(CheckpointError):
                second.checkpoint()
        finally:
            ray_durability.write_generation = real
        second.checkpoint()
    finally:
        second.close()
    third = RayDistributedBehavioralDetector(feature_dimensions=2, checkpoint_dir=tmp_path / "ev")
    old = ray_durability.MAX_LOG
    ray_durability.MAX_LOG = 3
    try:
        for k in range(5):
            third.ingest_evidence([k], [1], "behavioral_anomaly", [1.0], [1.0], [0.0], ["s"])
        assert max(len(h.log) for h in third.handles) < 3 and generations(tmp_path / "ev")
    finally:
        ray_durability.MAX_LOG = old
        third.close()


def test_log_survives_failed_writes_faults_counters_and_a_clock_that_goes_back(ray_session, tmp_path):
    """Third review: a failed log write is made durable by a checkpoint (nothing appended after a
    torn record); link faults, create_evidence and views that read the clock are replayed as they
    were; an observer using the detector's next evidence id does not break a round; a generation
    missing an actor's file falls back to the one before."""
    import os

    from swarmguard.engines import ray_durability  # the engine's checkpoints and log of calls
    from swarmguard.engines.checkpoint_files import generations
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    rng = np.random.default_rng(5)
    ids, X = np.arange(400), rng.normal(size=(400, 2))
    X[:8] += 7.0
    reg = np.array(["eu", "us"])[ids % 2]
    now = [100.0]
    kw = dict(feature_dimensions=2, clock=lambda: now[0], warm_up=100, require="either", auto_sync_seconds=30)
    live = RayDistributedBehavioralDetector(**kw, checkpoint_dir=tmp_path)
    twin = RayDistributedBehavioralDetector(**kw)                       # the same calls, never crashing
    try:
        for det in (live, twin):
            det.process_round(ids, X, reg)
        real = ray_durability.append_record
        calls = {"n": 0}

        def torn(path, meta, arrays):           # a full disk: half a record, then an error
            calls["n"] += 1
            with open(path, "ab") as f:
                f.write((10**6).to_bytes(8, "little") + b"half")
            raise OSError(28, "No space left on device")
        ray_durability.append_record = torn
        try:
            live.process_round(ids, X + 0.1, reg)        # made durable by a checkpoint instead
        finally:
            ray_durability.append_record = real
        twin.process_round(ids, X + 0.1, reg)
        assert calls["n"] == 1
        for det in (live, twin):
            det.faults.drop([("eu", "us")])
            det.create_evidence(3, {"agent_id": 3, "features": X[3]}, {"mahalanobis_squared": 50.0})
            now[0] = 140.0
            det.sync()
            det.confidence_factor("eu")               # reads the clock: its high-water mark moves
            now[0] = 120.0                            # a clock that goes back
            det.ingest_evidence(["detector:4:0"], [1], "behavioral_anomaly", [1.0], [1.0], [0.0], ["obs"])
            det.process_round(ids[:50], X[:50] + 0.2, np.full(50, "ap"))     # a region born now
        assert len(generations(tmp_path)) == 1        # the older one misses the failed record: removed
        live.checkpoint()
        for det in (live, twin):
            now[0] = 125.0
            det.process_round(ids, X + 0.25, reg)
        latest = generations(tmp_path)[-1]
        live.close()
        os.remove(tmp_path / f"gen-{latest}" / "evidence0.npz")         # the latest is damaged
        back = RayDistributedBehavioralDetector.resume(tmp_path, clock=lambda: now[0])
        try:
            assert back.faults.dropped == twin.faults.dropped
            for region in ("eu", "us", "ap"):     # scores: moments rebuilt from the files, to rounding
                assert_same_replica(twin.replica(region), back.replica(region))
            assert back.evidence_fingerprint() == twin.evidence_fingerprint()
            now[0] = 130.0
            x, y = (det.process_round(ids, X + 0.3, reg) for det in (back, twin))
            np.testing.assert_array_equal(x["action"], y["action"])
            np.testing.assert_array_equal(x["probability"], y["probability"])
        finally:
            back.close()
    finally:
        twin.close()


def test_fallback_keeps_its_log_and_handed_out_ids_stay_handed_out(ray_session, tmp_path):
    """Fourth review: a generation whose LATEST write failed is not left behind as a fallback
    without a log; an id from create_evidence is never handed out twice; link helpers check."""
    from swarmguard.engines import checkpoint_files
    from swarmguard.engines.checkpoint_files import generations
    from swarmguard.engines.ray_engine import RayDistributedBehavioralDetector
    from swarmguard.errors import CheckpointError, InvalidTypeError
    rng = np.random.default_rng(8)
    ids, X = np.arange(200), rng.normal(size=(200, 2))
    X[:4] += 8.0
    now = [0.0]
    kw = dict(feature_dimensions=2, clock=lambda: now[0], warm_up=50)
    live = RayDistributedBehavioralDetector(**kw, checkpoint_dir=tmp_path)
    twin = RayDistributedBehavioralDetector(**kw)
    try:
        for det in (live, twin):
            det.process_round(ids, X, "eu")
        real = checkpoint_files._write_atomic

        def no_latest(path, data):
            if path.name == "LATEST":
                raise OSError(28, "No space left on device")
            return real(path, data)
        checkpoint_files._write_atomic = no_latest
        try:
            with pytest.raises(CheckpointError):
                live.checkpoint()
        finally:
            checkpoint_files._write_atomic = real
        assert generations(tmp_path) == [1]                   # the unnamed generation was removed
        for det in (live, twin):
            det.ingest_evidence(["o1"], [7], "behavioral_anomaly", [1.5], [1.0], [0.0], ["obs"])
        live.checkpoint()
        for det in (live, twin):
            det.process_round(ids, X + 0.1, "eu")
            handed = det.create_evidence(3, {"agent_id": 3, "features": X[3]}, {"mahalanobis_squared": 40.0})
        with pytest.raises(InvalidTypeError):
            live.faults.drop([("eu", 1)])
        assert live.faults.dropped == set()
        live.faults.restore(np.array([["eu", "us"]]))
        latest = generations(tmp_path)[-1]
        live.close()
        (tmp_path / f"gen-{latest}" / "driver.npz").unlink()      # the latest is damaged: fall back
        back = RayDistributedBehavioralDetector.resume(tmp_path, clock=lambda: now[0])
        try:
            assert back.evidence_fingerprint() == twin.evidence_fingerprint()
            again = back.create_evidence(3, {"agent_id": 3, "features": X[3]}, {"mahalanobis_squared": 40.0})
            assert again.evidence_id != handed.evidence_id
        finally:
            back.close()
    finally:
        twin.close()
