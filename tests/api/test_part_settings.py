"""The parts' settings validators raise what the parts' constructors raise, and return what they keep."""

from __future__ import annotations

import math

import pytest

from swarmguard.api.cap import ConsistencyModel, StatisticalCAPResolver
from swarmguard.api.consensus import StableBayesianConsensus
from swarmguard.api.part_settings import (
    validate_cap_settings,
    validate_consensus_settings,
    validate_protocol_settings,
    validate_tree_settings,
)
from swarmguard.api.protocol import BehavioralDistributedProtocol
from swarmguard.api.tree import HierarchicalStatisticalTree
from swarmguard.errors import SwarmGuardError


def _protocol(**kw):
    return BehavioralDistributedProtocol(HierarchicalStatisticalTree(), **kw)


CASES = [
    (HierarchicalStatisticalTree, validate_tree_settings, bad) for bad in (
        dict(branching_factor=1), dict(branching_factor=4096), dict(branching_factor="x"),
        dict(branching_factor=2.5), dict(feature_dimensions=0), dict(feature_dimensions="3"),
        dict(recompute_every=0), dict(window_rounds=0), dict(window_rounds="2"))
] + [
    (_protocol, validate_protocol_settings, bad) for bad in (
        dict(significance_level=0.0), dict(significance_level=1.0), dict(significance_level="x"),
        dict(significance_level=math.nan), dict(fdr=0.0), dict(fdr=1.5), dict(shrinkage="some"),
        dict(shrinkage=1.5), dict(shrinkage=-0.1), dict(warm_up=1), dict(warm_up="a"),
        dict(score_levels="every"), dict(scoring="fancy"), dict(scoring=3), dict(calibrate="yes"), dict(calibrate=1))
] + [
    (StableBayesianConsensus, validate_consensus_settings, bad) for bad in (
        dict(byzantine_threshold=0.5), dict(byzantine_threshold=-0.1), dict(partition_size=0),
        dict(prior_probability=0.0), dict(prior_probability=1.0), dict(aggregation="mean"),
        dict(false_flag_rate=0.0), dict(min_sources=0), dict(reputation_refresh_limit=-1),
        dict(trusted_sources=[None]), dict(trusted_sources=[[1]]), dict(probation_evidence=0),
        dict(founding_quorum=0))
] + [
    (StatisticalCAPResolver, validate_cap_settings, bad) for bad in (
        dict(consistency_model="bogus"), dict(max_staleness_seconds=-1.0), dict(max_staleness_seconds=math.nan),
        dict(confidence_decay_rate=-1.0), dict(clock=3), dict(confidence_level=1.0), dict(feature_dimensions=0),
        dict(sync_interval_seconds=0.0), dict(auto_sync_seconds=0.0), dict(auto_sync_seconds=math.inf),
        dict(regions=["eu", "eu"]), dict(regions=["e\x00u"]), dict(regions=[""]), dict(regions=[None]), dict(dedup_window=0))
]


@pytest.mark.parametrize("build, validate, bad", CASES,
                         ids=[f"{v.__name__}-{sorted(b)[0]}-{i}" for i, (_, v, b) in enumerate(CASES)])
def test_a_validator_raises_the_error_and_message_of_its_parts_constructor(build, validate, bad):
    with pytest.raises(SwarmGuardError) as by_part:
        build(**bad)
    with pytest.raises(SwarmGuardError) as by_validator:
        validate(**bad)
    assert type(by_validator.value) is type(by_part.value)
    assert str(by_validator.value) == str(by_part.value)


def test_the_validators_return_what_the_parts_keep():
    tree = HierarchicalStatisticalTree(branching_factor=7, feature_dimensions=3, window_rounds=4)
    t = validate_tree_settings(branching_factor=7, feature_dimensions=3, window_rounds=4)
    assert (t.branching_factor, t.feature_dimensions, t.recompute_every, t.window_rounds) == (
        tree.branching_factor, tree.feature_dimensions, tree.recompute_every, tree.window_rounds)
    proto = _protocol(significance_level=0.01, fdr=0.05, shrinkage=0.25, warm_up=500, score_levels="all",
                      scoring="robust")
    p = validate_protocol_settings(significance_level=0.01, fdr=0.05, shrinkage=0.25, warm_up=500, score_levels="all",
                                   scoring="robust")
    assert (p.significance_level, p.fdr, p.shrinkage, p.warm_up, p.score_levels, p.scoring) == (
        proto.significance_level, proto.fdr, proto.shrinkage, proto.warm_up, proto.score_levels, proto.scoring)
    cons = StableBayesianConsensus(0.2, 50, 0.4, trusted_sources="me", probation_evidence=4)
    c = validate_consensus_settings(0.2, 50, 0.4, trusted_sources="me", probation_evidence=4)
    assert (c.byzantine_threshold, c.partition_size, c.prior_probability, c.aggregation, c.false_flag_rate,
            c.min_sources, c.reputation_refresh_limit, c.trusted_sources, c.probation_evidence,
            c.founding_quorum) == (
        cons.byzantine_threshold, cons.partition_size, cons.prior_probability, cons.aggregation,
        cons.false_flag_rate, cons.min_sources, cons.reputation_refresh_limit, cons.trusted_sources,
        cons.probation_evidence, cons.founding_quorum) == (0.2, 50, 0.4, "robust", 1e-6, 1, 200_000,
                                                            frozenset({"me"}), 4, 3)
    cap = StatisticalCAPResolver("strong", 2.0, 0.5, regions=["eu", "us"], auto_sync_seconds=None)
    r = validate_cap_settings("strong", 2.0, 0.5, regions=["eu", "us"], auto_sync_seconds=None)
    assert (r.consistency_model, r.max_staleness_seconds, r.confidence_decay_rate, r.auto_sync_seconds,
            list(r.regions)) == (cap.consistency_model, cap.max_staleness_seconds, cap.confidence_decay_rate,
                                 cap.auto_sync_seconds, cap.regions) == (ConsistencyModel.STRONG, 2.0, 0.5, None,
                                                                        ["eu", "us"])
