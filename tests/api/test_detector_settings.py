"""DetectorSettings: one parameter list, checked once, for every backend."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from swarmguard import DetectorSettings, DistributedBehavioralDetector, SwarmGuardError
from swarmguard.api.cap import ConsistencyModel, QuorumUnavailableError
from swarmguard.errors import InvalidInputError, InvalidTypeError


def test_signature_lists_every_setting_with_its_default():
    params = inspect.signature(DistributedBehavioralDetector).parameters
    for name, field in DetectorSettings.__dataclass_fields__.items():
        assert params[name].default == field.default, name
    assert params["backend"].default == "inprocess"


def test_settings_and_keywords_combine():
    base = DetectorSettings(require="either", significance_level=1e-4)
    det = DistributedBehavioralDetector(base, fdr=0.05)
    assert det.settings.require == "either" and det.require == "either"
    assert det.protocol.significance_level == 1e-4 and det.settings.fdr == 0.05
    assert base.fdr is None                              # the given settings are not changed


@pytest.mark.parametrize("bad, err", [
    (dict(require="all"), InvalidInputError),
    (dict(isolate_probability=1.5), InvalidInputError),
    (dict(own_evidence_cap=-1.0), InvalidInputError),
    (dict(consistency_model="quantum"), InvalidInputError),
    (dict(clock=5), InvalidTypeError),
    (dict(regions="eu"), InvalidTypeError),
    (dict(address="auto"), InvalidTypeError),           # a Ray option on the in-process backend
    (dict(backend="spark"), InvalidInputError),
    (dict(probation_evidence=0), InvalidInputError),
    (dict(probation_evidence=2.5), InvalidTypeError),
])
def test_bad_parameters_are_typed_errors(bad, err):
    with pytest.raises(err) as info:
        DistributedBehavioralDetector(**bad)
    assert isinstance(info.value, SwarmGuardError)


def test_probation_evidence_is_a_setting_the_consensus_gets():
    assert DetectorSettings().probation_evidence == 10
    det = DistributedBehavioralDetector(probation_evidence=2)
    assert det.settings.probation_evidence == 2 and det.consensus.probation_evidence == 2


def test_settings_must_be_settings():
    with pytest.raises(InvalidTypeError):
        DistributedBehavioralDetector({"require": "either"})


def test_strong_round_refused_before_the_tree_changes():
    rng = np.random.default_rng(0)
    ids = np.arange(600)
    X = rng.normal(size=(600, 3))
    regions = np.array(["eu", "us", "ap"])[ids % 3]
    det = DistributedBehavioralDetector(feature_dimensions=3, regions=["eu", "us", "ap"],
                                        consistency_model=ConsistencyModel.STRONG, clock=lambda: 0.0)
    det.process_round(ids, X, regions)
    det.cap_resolver.partition([["eu", "us"], ["ap"]])
    before = det.get_global_statistics()
    with pytest.raises(QuorumUnavailableError):
        det.process_round(ids, X + 100.0, regions)
    after = det.get_global_statistics()
    np.testing.assert_array_equal(after["mean"], before["mean"])
    with pytest.raises(QuorumUnavailableError):         # a new region alone is a minority too
        det.process_round(np.array([9999]), X[:1], "sa")
    assert det.cap_resolver.regions == ["eu", "us", "ap"]
    ok = regions != "ap"
    out = det.process_round(ids[ok], X[ok] + 1.0, regions[ok])
    assert out["accepted"] == int(ok.sum())
