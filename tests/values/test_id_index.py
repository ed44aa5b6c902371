"""The one id index: ids to dense rows (:class:`IdIndex`) and ids to slots (:class:`SlotMap`)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.values.agent_index import AgentIds, as_agent_ids
from swarmguard.values.id_index import IdIndex, SlotMap


# ---------------------------------------------------------------------- rows (from test_evidence_sums.py)
@given(st.lists(st.integers(-(2**62), 2**62) | st.integers(0, 50) | st.text(max_size=3), max_size=60),
       st.booleans())
@settings(max_examples=150, deadline=None)
def test_index_agrees_with_a_dict(keys, batch):
    index = IdIndex()
    reference: dict = {}
    for k in keys:
        if batch and k not in reference and isinstance(k, int):
            index.add_new(np.array([k]))
        else:
            index.add(k)
        reference.setdefault(k, len(reference))
    for k, row in reference.items():
        assert index.row_of(k) == row
        assert index.key_of(row) == k
    assert len(index) == len(reference)
    ints = [k for k in reference if isinstance(k, int)]
    if ints:
        probe = np.array(ints + [2**62 + 5], dtype=np.int64)
        expected = [reference[k] for k in ints] + [-1]
        assert index.rows_of(probe).tolist() == expected


def test_index_large_sparse_and_dense_ranges():
    rng = np.random.default_rng(0)
    for keys in (rng.permutation(5000), rng.choice(2**60, size=5000, replace=False)):
        index = IdIndex()
        index.add_new(keys[:4000])
        for k in keys[4000:4100].tolist():
            index.add(k)
        index.add_new(keys[4100:])
        assert np.array_equal(index.rows_of(keys), np.arange(keys.size))
        assert np.array_equal(index.keys_of(np.arange(keys.size)), keys)


def test_index_run_of_consecutive_ids_then_broken():
    index = IdIndex()
    index.add_new(np.arange(100, 200))
    assert index._ints._run_lo == 100 and index._ints._keys.size == 0  # nothing stored
    index.add_new(np.arange(200, 250))
    assert index.add(250) == 150 and index.add(120) == 20
    assert index.rows_of(np.array([99, 100, 250, 251])).tolist() == [-1, 0, 150, -1]
    assert index.key_of(150) == 250 and index.keys_of(np.array([0, 150])).tolist() == [100, 250]
    index.add(7)  # breaks the run: ids materialised, lookups unchanged
    assert index._ints._run_lo is None
    assert index.rows_of(np.array([100, 250, 7, 8])).tolist() == [0, 150, 151, -1]
    assert index.keys() == list(range(100, 251)) + [7]
    index.add("x")
    assert index.row_of("x") == 152 and index.row_of(200) == 100
    for bad in (np.array([5, 7, 6]), np.array([3, 5])):  # not a run: ordinary path
        other = IdIndex()
        rows = other.add_new(bad)
        assert other._ints._run_lo is None and other.rows_of(bad).tolist() == rows.tolist()


def test_the_scalar_look_up_agrees_with_the_batch_one_in_every_mode():
    """row_of's per-item fast paths (run mode, dense table, str dict) give what rows_of gives,
    also at the edges: ids beyond the run or the table, the int64 ends, ints beyond 64 bits,
    a bool (not an int id), numpy integers."""
    lo, hi = -(1 << 63), (1 << 63) - 1
    run = IdIndex()
    run.add_new(np.arange(1000, 2000))
    table = IdIndex()
    table.add_new(np.random.default_rng(0).permutation(3000)[:1000])
    mixed = IdIndex()
    mixed.add_new(np.array([5, 9, 2]))
    mixed.add("agent")
    mixed.add(1 << 70)
    strs = IdIndex()
    strs.rows(np.array(["a", "b", "agent"]), create=True)
    assert run._ints._run_lo == 1000 and table._ints._table is not None and not mixed.is_integer
    for index in (run, table, mixed, strs):
        int_probes = [999, 1000, 1500, 1999, 2000, 0, 2, 5, 9, 2999, 3000, -1, lo, hi]
        expected = index.rows_of(np.array(int_probes, dtype=np.int64)).tolist()
        assert [index.row_of(k) for k in int_probes] == expected
        assert [index.row_of(np.int64(k)) for k in int_probes] == expected
        assert index.row_of(1 << 64) == -1 and index.row_of(hi + 1) == -1 and index.row_of(lo - 1) == -1
        str_probes = ["a", "agent", "b", "c", ""]
        assert [index.row_of(k) for k in str_probes] == index.rows_of(np.array(str_probes)).tolist()
    assert mixed.row_of(1 << 70) == 4 and mixed.row_of(True) == -1 and mixed.row_of(2) == 2
    assert run.row_of(True) == -1            # a bool is no int id, even where 1 would be in range


# ---------------------------------------------------------------------- the replicas' batches (from test_agent_index.py)
def test_rows_follow_first_sight_and_are_stable():
    idx = IdIndex()
    rng = np.random.default_rng(0)
    keys = rng.permutation(10_000)[:3000] - 5000  # negative ids too
    rows = idx.rows(as_agent_ids(keys).keys(), create=True)
    assert rows.tolist() == list(range(3000))
    again = idx.rows(as_agent_ids(keys[::-1]).keys(), create=True)
    assert again.tolist() == list(range(3000))[::-1]
    assert len(idx) == 3000


def test_single_inserts_then_batch_lookup():
    idx = IdIndex()
    keys = list(range(0, 3 * 5000, 3))
    for k in keys:  # single ids go through the pending dict and its flushes
        idx.rows(as_agent_ids([k]).keys(), create=True)
    rows = idx.rows(as_agent_ids(np.array(keys + [1, 2])).keys(), create=False)
    assert rows[:-2].tolist() == list(range(5000))
    assert rows[-2:].tolist() == [-1, -1]
    assert AgentIds.from_keys(idx.keys_of(rows[:-2])).to_list() == keys


def test_mixed_int_and_str_ids():
    idx = IdIndex()
    rows = idx.rows(as_agent_ids(["x", 5, "y", 5, "x"]).keys(), create=True)
    assert rows[0] == rows[4] and rows[1] == rows[3]
    assert sorted({int(rows[0]), int(rows[1]), int(rows[2])}) == [0, 1, 2]
    assert AgentIds.from_keys(idx.keys_of(rows)).to_list() == ["x", 5, "y", 5, "x"]
    int_rows, str_rows = idx.canonical_rows()
    assert AgentIds.from_keys(idx.keys_of(np.concatenate([int_rows, str_rows]))).to_list() == [5, "x", "y"]
    # "5" and 5 are different agents
    assert idx.rows(as_agent_ids(["5"]).keys(), create=False).tolist() == [-1]



# ---------------------------------------------------------------------- slots (from structures/test_id_index.py)


def test_batch_lookup_agrees_with_the_dict_for_every_kind_of_id():
    ints = SlotMap()
    ints.set_many(np.array([10, -3, 7]), np.array([0, 1, 2]))
    ints.set(2**40, 3)
    np.testing.assert_array_equal(ints.lookup_many(np.array([7, 2**40, 5, -3])), [2, 3, -1, 1])
    strs = SlotMap()
    strs.set_many(np.array(["b", "a"]), np.array([4, 9]))
    np.testing.assert_array_equal(strs.lookup_many(np.array(["a", "zz", "b"])), [9, -1, 4])
    mixed = SlotMap()
    mixed.set(1, 0)
    mixed.set("1", 1)
    mixed.set((1, 2), 2)
    probe = np.empty(3, dtype=object)
    probe[:] = ["1", (1, 2), 1]
    np.testing.assert_array_equal(mixed.lookup_many(probe), [1, 2, 0])
    # an int array against a mixed index must not confuse 1 with "1"
    np.testing.assert_array_equal(mixed.lookup_many(np.array([1])), [0])


def test_read_only_arrays_reuse_their_answer_until_membership_changes():
    ix = SlotMap()
    ids = np.arange(5)
    ids.flags.writeable = False
    ix.set_many(ids, ids + 100)
    first = ix.lookup_many(ids)
    first[0] = -7                      # callers may scribble on the result
    np.testing.assert_array_equal(ix.lookup_many(ids), ids + 100)
    ix.pop(3)
    np.testing.assert_array_equal(ix.lookup_many(ids), [100, 101, 102, -1, 104])


def test_a_longer_string_probe_is_not_cut_down_to_a_stored_id():
    ix = SlotMap()
    ix.set_many(np.array([f"agent-{i}" for i in range(1, 10)]), np.arange(9))
    np.testing.assert_array_equal(ix.lookup_many(np.array(["agent-10", "agent-1", "agent-100"])), [-1, 0, -1])


def test_a_read_only_view_whose_base_changed_is_looked_up_again():
    ix = SlotMap()
    base = np.arange(5)
    ids = base.view()
    ids.flags.writeable = False
    ix.set_many(ids, ids + 100)
    np.testing.assert_array_equal(ix.lookup_many(ids), ids + 100)
    base[:] = [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(ix.lookup_many(ids), [-1] * 5)

def test_string_probes_longer_than_every_key_are_not_truncated():
    ix = SlotMap()
    ix.set_many(np.array(["a1", "a100"]), np.array([0, 1]))
    assert ix.lookup_many(np.array(["a1000", "a100", "a10000000"])).tolist() == [-1, 1, -1]




@given(st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(0, 40) | st.text(max_size=4)
                | st.tuples(st.integers(0, 3)) | st.integers(2**63, 2**64), max_size=60),
       st.lists(st.integers(-5, 45) | st.text(max_size=5), max_size=30))
@settings(max_examples=150, deadline=None)
def test_every_kind_of_id_side_by_side_agrees_with_a_dict_one_by_one_and_in_batches(keys, probes):
    index = IdIndex()
    reference: dict = {}
    for k in keys:
        assert index.add(k) == reference.setdefault(k, len(reference))
    assert len(index) == len(reference) and index.keys() == list(reference)
    assert index.is_integer == all(isinstance(k, int) and -(2**63) <= k < 2**63 for k in reference)
    everything = list(reference) + probes
    for k in everything:
        assert index.row_of(k) == reference.get(k, -1)
    ints = [k for k in everything if isinstance(k, int) and -(2**63) <= k < 2**63]
    strs = [k for k in everything if isinstance(k, str)]
    assert index.rows_of(np.array(ints, dtype=np.int64)).tolist() == [reference.get(k, -1) for k in ints]
    as_array = np.array(strs, dtype=str)     # drops trailing NULs: the array's strings are the probes
    assert index.rows_of(as_array).tolist() == [reference.get(k, -1) for k in as_array.tolist()]
    probe = np.empty(len(everything), dtype=object)
    probe[:] = everything
    assert index.rows_of(probe).tolist() == [reference.get(k, -1) for k in everything]
    rows = np.arange(len(index))
    assert index.keys_of(rows).tolist() == list(reference) == [index.key_of(r) for r in rows.tolist()]


def test_batches_of_strings_create_rows_in_order_of_first_sight_beside_int_ids():
    index = IdIndex()
    index.add_new(np.arange(10, 20))
    assert index.rows(np.array(["b", "a", "b", "c"]), create=True).tolist() == [10, 11, 10, 12]
    assert index.rows(np.array([12, 99, 12]), create=True).tolist() == [2, 13, 2]
    assert index.rows_of(np.array(["c", "a", "zz"])).tolist() == [12, 11, -1]
    assert index.keys_of(np.array([13, 10, 0])).tolist() == [99, "b", 10]
    int_rows, str_rows = index.canonical_rows()
    assert index.keys_of(np.concatenate([int_rows, str_rows])).tolist() == [*range(10, 20), 99, "a", "b", "c"]


def test_a_stored_string_with_a_nul_is_not_found_by_its_prefix_in_a_batch():
    # a NumPy string array drops a trailing NUL: "a\x00" must not answer for "a"
    index = IdIndex()
    index.add("a\x00")
    assert index.rows_of(np.array(["a", "b"])).tolist() == [-1, -1]
    index.add("a")
    assert index.rows_of(np.array(["a"])).tolist() == [1] and index.row_of("a\x00") == 0


def test_an_unhashable_id_is_refused_and_changes_nothing():
    index = IdIndex()
    index.add(1)
    try:
        index.add([1, 2])
    except TypeError:
        pass
    else:
        raise AssertionError("an unhashable id was taken")
    assert len(index) == 1 and index.is_integer
