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
