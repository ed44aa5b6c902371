import numpy as np

from swarmguard.structures.id_index import IdIndex


def test_batch_lookup_agrees_with_the_dict_for_every_kind_of_id():
    ints = IdIndex()
    ints.set_many(np.array([10, -3, 7]), np.array([0, 1, 2]))
    ints.set(2**40, 3)
    np.testing.assert_array_equal(ints.lookup_many(np.array([7, 2**40, 5, -3])), [2, 3, -1, 1])
    strs = IdIndex()
    strs.set_many(np.array(["b", "a"]), np.array([4, 9]))
    np.testing.assert_array_equal(strs.lookup_many(np.array(["a", "zz", "b"])), [9, -1, 4])
    mixed = IdIndex()
    mixed.set(1, 0)
    mixed.set("1", 1)
    mixed.set((1, 2), 2)
    probe = np.empty(3, dtype=object)
    probe[:] = ["1", (1, 2), 1]
    np.testing.assert_array_equal(mixed.lookup_many(probe), [1, 2, 0])
    # an int array against a mixed index must not confuse 1 with "1"
    np.testing.assert_array_equal(mixed.lookup_many(np.array([1])), [0])


def test_read_only_arrays_reuse_their_answer_until_membership_changes():
    ix = IdIndex()
    ids = np.arange(5)
    ids.flags.writeable = False
    ix.set_many(ids, ids + 100)
    first = ix.lookup_many(ids)
    first[0] = -7                      # callers may scribble on the result
    np.testing.assert_array_equal(ix.lookup_many(ids), ids + 100)
    ix.pop(3)
    np.testing.assert_array_equal(ix.lookup_many(ids), [100, 101, 102, -1, 104])


def test_a_longer_string_probe_is_not_cut_down_to_a_stored_id():
    ix = IdIndex()
    ix.set_many(np.array([f"agent-{i}" for i in range(1, 10)]), np.arange(9))
    np.testing.assert_array_equal(ix.lookup_many(np.array(["agent-10", "agent-1", "agent-100"])), [-1, 0, -1])


def test_a_read_only_view_whose_base_changed_is_looked_up_again():
    ix = IdIndex()
    base = np.arange(5)
    ids = base.view()
    ids.flags.writeable = False
    ix.set_many(ids, ids + 100)
    np.testing.assert_array_equal(ix.lookup_many(ids), ids + 100)
    base[:] = [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(ix.lookup_many(ids), [-1] * 5)

def test_string_probes_longer_than_every_key_are_not_truncated():
    ix = IdIndex()
    ix.set_many(np.array(["a1", "a100"]), np.array([0, 1]))
    assert ix.lookup_many(np.array(["a1000", "a100", "a10000000"])).tolist() == [-1, 1, -1]


def test_tree_batches_of_longer_string_ids_add_agents_instead_of_overwriting():
    from swarmguard import HierarchicalStatisticalTree

    tree = HierarchicalStatisticalTree(feature_dimensions=1)
    tree.update_many(np.array(["a1", "a100"]), np.array([[1.0], [2.0]]))
    tree.update_many(np.array(["a1000"]), np.array([[3.0]]))
    assert len(tree) == 3
    assert tree.get_agent_features("a100").tolist() == [2.0]
