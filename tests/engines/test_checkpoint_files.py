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
from swarmguard.errors import CheckpointError, InvalidInputError, InvalidTypeError


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


# ---------------------------------------------------------------------- damaged content: CheckpointError, typed

def _region_arrays():
    rng = np.random.default_rng(1)
    shard = RegionShard(0.0, feature_dimensions=2)
    shard.add_regions(0, ["eu", "us"], [0.0, 5.0], ["eu"], 2)
    ids = np.arange(10)
    shard.update(1, ids, rng.normal(size=(10, 2)), np.array(["c1", "c2"])[ids % 2], np.full(10, "eu"))
    shard.cap_write(2, "eu", rng.random(10), 1.0, 1.0)
    return region_state_to_arrays(shard.checkpoint(3)[1])


def _bad_values(arr):
    arr = np.asarray(arr)
    out = [np.array("x"), np.array([1.5, -2.0]), np.zeros((2, 2)), np.array([2**64 - 1], dtype=np.uint64),
           np.array([-5]), np.array([np.nan])]
    if arr.ndim and arr.size:
        out.append(arr[:-1])
    return out


def test_region_loader_refuses_damaged_arrays_typed():
    from swarmguard.structures.replica import RegionReplica

    good = _region_arrays()
    region_state_from_arrays(good)
    for key in [k for k in good if not k.startswith(("tree.", "replica0."))]:
        bad = dict(good)
        del bad[key]
        with pytest.raises(CheckpointError):
            region_state_from_arrays(bad)
        for value in _bad_values(good[key]):
            bad = dict(good)
            bad[key] = value
            try:
                back = region_state_from_arrays(bad)
            except CheckpointError:
                continue
            # accepted: a value the arrays really hold (e.g. a shorter, consistent table)
            assert set(back["replicas"]) <= {"eu"} and all(isinstance(t, float) for t in back["born"].values())
    # the replica's own arrays go to its loader, which refuses damage typed as well
    for key in [k for k in good if k.startswith("replica0.")]:
        for value in _bad_values(good[key]):
            bad = dict(good)
            bad[key] = value
            part = region_state_from_arrays(bad)["replicas"]["eu"]
            try:
                RegionReplica.from_dict(part)
            except InvalidInputError:
                continue


def test_id_and_string_loaders_refuse_damage_typed():
    arrays = keys_to_arrays([1, "a", 7], "k")
    for key, value in [("k.int", np.array([2**63], dtype=np.uint64)), ("k.int", np.array([1.5, 2.0, 3.0])),
                       ("k.is_str", np.array([0, 1, 0])), ("k.len", np.array([0, 5, 0])),
                       ("k.len", np.array([0, -1, 2])), ("k.utf8", np.array([0xFF], dtype=np.uint8)),
                       ("k.utf8", np.array([1.0]))]:
        bad = dict(arrays)
        bad[key] = value
        with pytest.raises(CheckpointError):
            keys_from_arrays(bad, "k")
    with pytest.raises(CheckpointError):
        keys_from_arrays({"k.int": np.array([2**63 + 5], dtype=np.uint64)}, "k")
    with pytest.raises(CheckpointError):
        keys_from_arrays({}, "k")


def test_evidence_loader_refuses_columns_of_different_lengths():
    cons = StableBayesianConsensus()
    cons.add_evidence_batch([1, 2], [7, 8], "behavioral_anomaly", [0.5, -1.0], [1.0, 0.5], [0.0, 1.0], ["s1", "s2"])
    good = evidence_state_to_arrays(cons.export_evidence())
    evidence_state_from_arrays(good)
    for key, value in [("log_odds", np.array([0.5])), ("timestamps", np.array(["a", "b"])),
                       ("confidences", np.zeros((2, 2)))]:
        bad = dict(good)
        bad[key] = value
        with pytest.raises(CheckpointError):
            evidence_state_from_arrays(bad)


def test_a_damaged_log_record_is_a_checkpoint_error(tmp_path):
    from swarmguard.engines.checkpoint_files import append_record, read_records

    path = tmp_path / "wal-1.bin"
    append_record(path, {"kind": "x"}, {"a": np.arange(3)})
    append_record(path, {"kind": "y"}, {"a": np.arange(2)})
    assert [m["kind"] for m, _ in read_records(tmp_path, 1)] == ["x", "y"]
    good = path.read_bytes()
    size = int.from_bytes(good[:8], "little")
    refused = 0
    for at in range(8, 8 + size, 7):          # flips inside the first, complete record
        raw = bytearray(good)
        raw[at] ^= 0xFF
        path.write_bytes(bytes(raw))
        try:
            records = read_records(tmp_path, 1)
        except CheckpointError:
            refused += 1
            continue
        # a flip the archive does not notice (zip metadata) leaves every value as it was
        assert [(m, {k: v.tolist() for k, v in a.items()}) for m, a in records] == [
            ({"kind": "x"}, {"a": [0, 1, 2]}), ({"kind": "y"}, {"a": [0, 1]})]
    assert refused > size // 14
    path.write_bytes(good)
    path.write_bytes(path.read_bytes()[:-5])  # a record cut short by a crash is still just ignored
    path.unlink()
    append_record(path, {"kind": "x"}, {"a": np.arange(3)})
    path.write_bytes(path.read_bytes()[:-5])
    assert read_records(tmp_path, 1) == []


def test_a_damaged_driver_file_falls_back_or_is_a_checkpoint_error(tmp_path):
    write_generation(tmp_path, 1, {}, {"format": 1, "seq": {}}, {"k": np.arange(2)})
    (tmp_path / "gen-1" / "driver.json").write_text('{"format": 1, "seq": 5}')
    with pytest.raises(CheckpointError):
        read_latest(tmp_path)
