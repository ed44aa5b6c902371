import numpy as np
import pytest

from swarmguard.errors import SwarmGuardError
from swarmguard.values.agent_index import AgentIndex, as_agent_ids


def test_rows_follow_first_sight_and_are_stable():
    idx = AgentIndex()
    rng = np.random.default_rng(0)
    keys = rng.permutation(10_000)[:3000] - 5000  # negative ids too
    rows = idx.rows(as_agent_ids(keys), create=True)
    assert rows.tolist() == list(range(3000))
    again = idx.rows(as_agent_ids(keys[::-1]), create=True)
    assert again.tolist() == list(range(3000))[::-1]
    assert len(idx) == 3000


def test_single_inserts_then_batch_lookup():
    idx = AgentIndex()
    keys = list(range(0, 3 * 5000, 3))
    for k in keys:  # single ids go through the pending dict and its flushes
        idx.rows(as_agent_ids([k]), create=True)
    rows = idx.rows(as_agent_ids(np.array(keys + [1, 2])), create=False)
    assert rows[:-2].tolist() == list(range(5000))
    assert rows[-2:].tolist() == [-1, -1]
    assert idx.ids_of(rows[:-2]).to_list() == keys


def test_mixed_int_and_str_ids():
    idx = AgentIndex()
    rows = idx.rows(as_agent_ids(["x", 5, "y", 5, "x"]), create=True)
    assert rows[0] == rows[4] and rows[1] == rows[3]
    assert sorted({int(rows[0]), int(rows[1]), int(rows[2])}) == [0, 1, 2]
    assert idx.ids_of(rows).to_list() == ["x", 5, "y", 5, "x"]
    int_rows, str_rows = idx.canonical_rows()
    assert idx.ids_of(np.concatenate([int_rows, str_rows])).to_list() == [5, "x", "y"]
    # "5" and 5 are different agents
    assert idx.rows(as_agent_ids(["5"]), create=False).tolist() == [-1]


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


def test_check_wire_id_refuses_a_nul_anywhere():
    assert check_wire_id("a") == "a" and type(check_wire_id(np.str_("a"))) is str
    for bad in ("a\x00", "\x00a", "\x00"):
        with pytest.raises(InvalidInputError, match="NUL"):
            check_wire_id(bad)


def test_a_nul_id_does_not_alias_its_prefix_in_the_index():
    """Without the rule, "a\\x00" and "a" were one row in a batch and two rows one by one."""
    idx = AgentIndex()
    idx.rows(as_agent_ids(["a"]), create=True)
    with pytest.raises(InvalidInputError):
        idx.rows(as_agent_ids(["a\x00"]), create=True)
    with pytest.raises(InvalidInputError):
        as_agent_ids(np.array(["a\x00"], dtype=object))
    assert len(idx) == 1
