"""On-disk checkpoint files of the Ray backend (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.api.consensus import StableBayesianConsensus
from swarmguard.engines.checkpoint_files import (
    evidence_state_from_arrays,
    evidence_state_to_arrays,
    keys_from_arrays,
    keys_to_arrays,
    read_latest,
    region_state_from_arrays,
    region_state_to_arrays,
    write_generation,
)
from swarmguard.engines.shards import RegionShard
from swarmguard.errors import CheckpointError, InvalidTypeError


def test_keys_round_trip_and_refuse_what_npz_cannot_hold():
    for keys in ([1, "a", -(2**63)], ["x", "y"], [], np.array([5, 6], dtype=np.int64)):
        back = keys_from_arrays(keys_to_arrays(keys, "k"), "k")
        assert list(np.asarray(back).tolist() if isinstance(back, np.ndarray) else back) == list(
            np.asarray(keys).tolist() if isinstance(keys, np.ndarray) else keys)
    with pytest.raises(InvalidTypeError):
        keys_to_arrays([("a", 1)], "k")


def test_region_and_evidence_states_round_trip_through_files(tmp_path):
    rng = np.random.default_rng(0)
    shard = RegionShard(0.0, feature_dimensions=3)
    shard.add_regions(0, ["eu", "us"], [0.0, 5.0], ["eu"], 3)
    ids = np.arange(50)
    shard.update(1, ids, rng.normal(size=(50, 3)), np.array(["c1", "c2"])[ids % 2], np.full(50, "eu"))
    shard.cap_write(2, "eu", rng.random(50), 1.0, 1.0)
    seq, state = shard.checkpoint(3)
    cons = StableBayesianConsensus()
    cons.add_evidence_batch([1, "e2"], [7, "agent"], "behavioral_anomaly", [0.5, -1.0], [1.0, 0.5], [0.0, 1.0],
                            ["s1", 2])
    write_generation(tmp_path, 1, {"r": region_state_to_arrays(state),
                                   "e": evidence_state_to_arrays(cons.export_evidence())},
                     {"format": 1, "seq": {"r": seq, "e": 0}}, {"known": np.arange(3)})
    (tmp_path / "gen-2").mkdir()             # a generation being written when the driver died: ignored
    gen, driver, arrays, actors = read_latest(tmp_path)
    assert gen == 1 and driver["format"] == 1 and arrays["known"].tolist() == [0, 1, 2]
    again = RegionShard(0.0, feature_dimensions=3)
    again.restore(seq, region_state_from_arrays(actors["r"]))
    assert again.born == shard.born
    assert again.replicas["eu"].same_state(shard.replicas["eu"])
    for key in ("agent_ids", "features", "cohort_index", "cohort_paths"):          # the values, bit for bit
        np.testing.assert_array_equal(again.tree.to_dict()[key], shard.tree.to_dict()[key])
    # the moments are rebuilt from them (another summation order: to rounding)
    np.testing.assert_allclose(again.summary(seq)["population"].mean, shard.summary(seq)["population"].mean,
                               rtol=1e-14)
    back = StableBayesianConsensus()
    back.add_evidence_batch(**evidence_state_from_arrays(actors["e"]))
    assert back.state_fingerprint() == cons.state_fingerprint()


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        read_latest(tmp_path)
