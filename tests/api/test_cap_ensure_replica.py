"""``StatisticalCAPResolver.ensure_replica``: the public way a replicating node gets its region's replica."""

import pytest

from swarmguard.api.cap import StatisticalCAPResolver, StatisticalUpdate
from swarmguard.errors import DimensionMismatchError, InvalidInputError


def test_without_dim_it_changes_nothing():
    res = StatisticalCAPResolver(clock=lambda: 10.0)
    assert res.ensure_replica("eu") is None
    assert res.regions == [] and res.feature_dimensions is None


def test_with_dim_it_adds_the_region_and_takes_the_dimension():
    res = StatisticalCAPResolver(clock=lambda: 10.0)
    replica = res.ensure_replica("eu", 3)
    assert replica is res.replica("eu") and replica.dim == 3
    assert res.regions == ["eu"] and res.feature_dimensions == 3
    assert res.ensure_replica("eu") is replica and res.ensure_replica("eu", 3) is replica
    # the replica is the one later writes land in
    res.handle_update_sync(StatisticalUpdate(1, "a", 10.0, [1.0, 2.0, 4.0], 0.0, "eu"))
    assert replica.estimate().count == 1


def test_an_existing_region_gets_its_replica_once_the_dimension_is_known():
    res = StatisticalCAPResolver(clock=lambda: 10.0, regions=["eu", "us"])
    assert res.ensure_replica("us") is None
    assert res.ensure_replica("us", 2).dim == 2 and res.replica("eu").dim == 2


@pytest.mark.parametrize("region, dim, error", [
    ("eu", 4, DimensionMismatchError),
    ("eu", 0, InvalidInputError),
    ("", 2, InvalidInputError),
])
def test_bad_arguments_change_nothing(region, dim, error):
    res = StatisticalCAPResolver(clock=lambda: 10.0)
    res.ensure_replica("us", 2)
    with pytest.raises(error):
        res.ensure_replica(region, dim)
    assert res.regions == ["us"] and res.feature_dimensions == 2
