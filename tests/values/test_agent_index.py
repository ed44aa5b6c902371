import numpy as np
import pytest

from swarmguard.errors import SwarmGuardError
from swarmguard.values.agent_index import as_agent_ids
from swarmguard.values.id_index import IdIndex


@pytest.mark.parametrize("bad", [[1.5], [None], [(1, 2)], [True], np.array([1.0]), [[1, 2]], "abc", 3])
def test_bad_ids(bad):
    with pytest.raises(SwarmGuardError):
        as_agent_ids(bad)


# ---------------------------------------------------------------------- the wire-id rule

from swarmguard.errors import InvalidInputError, InvalidTypeError  # noqa: E402
from swarmguard.values.agent_index import as_wire_id_array, check_wire_id  # noqa: E402


def _objects(*values):
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values)
    return arr


@pytest.mark.parametrize("ids, expected, dtype_kind", [
    (np.array([3, 1], dtype=np.uint64), [3, 1], "i"),
    (_objects(3, 1), [3, 1], "i"),                               # object arrays of Python ints
    (_objects(np.int64(3), 1), [3, 1], "i"),
    (_objects("a", "b"), ["a", "b"], "U"),                       # object arrays of str (pandas)
    (["a", "b"], ["a", "b"], "U"),
    ([3, "a"], [3, "a"], "O"),
    ([-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1], "i"),
])
def test_as_wire_id_array_takes_ints_and_strings_in_any_container(ids, expected, dtype_kind):
    out = as_wire_id_array(ids)
    assert out.tolist() == expected and out.dtype.kind == dtype_kind


@pytest.mark.parametrize("ids, error, where", [
    (np.array([1, 2**63], dtype=np.uint64), InvalidInputError, "[1]"),
    ([1, 2**63], InvalidInputError, "[1]"),
    (_objects(1, -(2**63) - 1), InvalidInputError, "[1]"),
    (["a", "b\x00"], InvalidInputError, "[1]"),
    (_objects("a", "b\x00"), InvalidInputError, "[1]"),
    (np.array(["a", "b\x00c"]), InvalidInputError, "[1]"),
    ([1, (1, 2)], InvalidTypeError, "[1]"),
    ([b"a"], InvalidTypeError, "[0]"),
    ([1, 1.0], InvalidTypeError, "[1]"),
    ([1, True], InvalidTypeError, "[1]"),
    (np.array([1.0]), InvalidTypeError, "float64"),
    (np.zeros((2, 2), dtype=np.int64), InvalidInputError, "1-D"),
    ("abc", InvalidTypeError, "sequence"),
])
def test_as_wire_id_array_refuses_what_replicas_cannot_hold_and_says_where(ids, error, where):
    with pytest.raises(error) as info:
        as_wire_id_array(ids)
    assert where in str(info.value)
    with pytest.raises(error):
        as_agent_ids(ids)


def test_the_id_rule_is_the_validation_modules_and_is_wire_id_agrees_with_it():
    from swarmguard import validation
    from swarmguard.values import agent_index

    assert agent_index.as_wire_id_array is validation.as_wire_id_array
    assert agent_index.check_wire_id is validation.check_wire_id
    for value in (3, -(2**63), 2**63 - 1, np.int64(3), np.uint8(3), "a", np.str_("a"),
                  2**63, -(2**63) - 1, True, np.bool_(False), 1.0, None, (1,), b"a"):
        try:
            validation.check_wire_id(value)
            taken = True
        except SwarmGuardError:
            taken = False
        assert validation.is_wire_id(value) is taken, value


def test_check_wire_id_refuses_a_nul_anywhere():
    assert check_wire_id("a") == "a" and type(check_wire_id(np.str_("a"))) is str
    for bad in ("a\x00", "\x00a", "\x00"):
        with pytest.raises(InvalidInputError, match="NUL"):
            check_wire_id(bad)


def test_a_nul_id_does_not_alias_its_prefix_in_the_index():
    """Without the rule, "a\\x00" and "a" were one row in a batch and two rows one by one."""
    idx = IdIndex()
    idx.rows(as_agent_ids(["a"]).keys(), create=True)
    with pytest.raises(InvalidInputError):
        idx.rows(as_agent_ids(["a\x00"]).keys(), create=True)
    with pytest.raises(InvalidInputError):
        as_agent_ids(np.array(["a\x00"], dtype=object))
    assert len(idx) == 1
