import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmguard.errors import InvalidInputError, SwarmGuardError
from swarmguard.values.version_vector import VersionVector, check_region_name

vectors = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 5)).map(VersionVector)


@given(vectors, vectors, vectors)
def test_merge_is_a_join(a, b, c):
    assert a | b == b | a
    assert (a | b) | c == a | (b | c)
    assert a | a == a
    assert a <= a | b and b <= a | b
    for r in "abcd":  # the join is the element-wise maximum
        assert (a | b)[r] == max(a[r], b[r])


@given(vectors)
def test_roundtrip(a):
    assert VersionVector.from_dict(a.to_dict()) == a


def test_in_place_merge_and_increment():
    a = VersionVector({"eu": 2})
    a += VersionVector({"us": 4, "eu": 1})
    assert a.to_mapping() == {"eu": 2, "us": 4}
    assert a.increment("eu", 3) == 5
    assert a.as_array(["us", "eu", "zz"]).tolist() == [4, 5, 0]


def test_bad_input():
    with pytest.raises(InvalidInputError):
        VersionVector({"a": -1})
    with pytest.raises(InvalidInputError):
        VersionVector.from_dict({"regions": np.array(["a", "a"]), "counts": np.array([1, 2])})
    with pytest.raises(SwarmGuardError):
        VersionVector.from_dict({"regions": np.array(["a"])})
    with pytest.raises(TypeError):
        check_region_name(1.5)
    with pytest.raises(ValueError):
        check_region_name("")
    assert check_region_name(7) == "7"
