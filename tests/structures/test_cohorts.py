import numpy as np

from swarmguard.structures.cohorts import CohortDirectory


def test_pages_belong_to_one_cohort_and_slots_are_reused():
    c = CohortDirectory(page_size=4)
    eu = c.ensure(("eu",))
    us = c.ensure(("us", "c1"))
    a = c.allocate(eu, 5)             # two pages
    b = c.allocate(us, 1)             # a third page
    assert len(set(a.tolist()) | set(b.tolist())) == 6
    assert set(c.cohort_of_slots(a).tolist()) == {eu}
    assert c.cohort_of_slots(b).tolist() == [us]
    c.release(eu, a[:2])
    again = c.allocate(eu, 2)
    assert sorted(again.tolist()) == sorted(a[:2].tolist())
    assert c.ancestors(us) == [us, c.id_of[("us",)], 0]
    assert sorted(c.subtree(c.id_of[("us",)])) == sorted([c.id_of[("us",)], us])
    assert np.all(np.diff(np.sort(np.concatenate([a, b]))) > 0)
