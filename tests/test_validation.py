"""Input validation shared by every part: NUL characters in ids and names, names from any container."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    InvalidTypeError,
)
from swarmguard.validation import (
    as_name_array,
    check_id_str_array,
    check_id_text,
    check_id_texts,
    check_key,
)


@pytest.mark.parametrize("bad", ["a\x00", "\x00", "a\x00b", "\x00a"])
def test_check_id_text_and_check_key_refuse_a_nul(bad):
    with pytest.raises(InvalidInputError, match="NUL"):
        check_id_text(bad, "agent_id")
    with pytest.raises(InvalidInputError, match="NUL"):
        check_key(bad, "evidence_id")
    with pytest.raises(InvalidInputError, match="NUL"):
        check_key(("x", (1, bad)), "agent_id")         # at any depth of a tuple


def test_check_id_texts_names_the_first_bad_element():
    check_id_texts(["a", "b", ""], "ids")
    with pytest.raises(InvalidInputError, match=r"ids\[2\]"):
        check_id_texts(["a", "b", "c\x00", "d\x00"], "ids")


def test_check_id_str_array_finds_a_nul_inside_an_element():
    """A NumPy string array keeps inner NULs (trailing ones are padding, already gone)."""
    arr = np.array(["agent-1", "ag\x00ent", "x"])
    assert arr[1] == "ag\x00ent"
    with pytest.raises(InvalidInputError, match=r"ids\[1\]"):
        check_id_str_array(arr, "ids")
    check_id_str_array(np.array(["agent-1", "b", ""]), "ids")
    check_id_str_array(np.array(["a\x00"]), "ids")       # NumPy already made it "a": nothing left to see
    check_id_str_array(np.array([], dtype=str), "ids")
    check_id_str_array(np.array(["abcdef", "x\x00y"])[::-1][1:], "ids")   # strided views
    with pytest.raises(InvalidInputError, match=r"ids\[0\]"):
        check_id_str_array(np.array(["x\x00y", "abcdef", "z"])[::2], "ids")


@pytest.mark.parametrize("values", [
    "eu", np.array(["eu", "eu", "eu"]), np.array(["eu"] * 3, dtype=object), ["eu"] * 3, ("eu",) * 3,
    np.array([np.str_("eu")] * 3, dtype=object),
])
def test_as_name_array_takes_a_name_or_names_in_any_container(values):
    out = as_name_array(values, 3, "regions")
    assert out.dtype.kind == "U" and out.tolist() == ["eu"] * 3


@pytest.mark.parametrize("values, error, text", [
    (np.array(["eu", 3, "us"], dtype=object), InvalidTypeError, r"regions\[1\] is not a str"),
    (["eu", None, "us"], InvalidTypeError, r"regions\[1\]"),
    (["eu", b"us", "us"], InvalidTypeError, r"regions\[1\]"),
    (np.array([1, 2, 3]), InvalidTypeError, "int64"),
    (["eu", "us"], DimensionMismatchError, "3 names"),
    (np.array(["eu"] * 3, dtype=object).reshape(3, 1), DimensionMismatchError, "shape"),
    (["eu", "us\x00", "ap"], InvalidInputError, "NUL"),
    ("eu\x00", InvalidInputError, "NUL"),
    (3, InvalidTypeError, "int"),
])
def test_as_name_array_refuses_what_is_not_n_names_and_says_which(values, error, text):
    with pytest.raises(error, match=text):
        as_name_array(values, 3, "regions")


# ---------------------------------------------------------------------- names: separator, length; huge numbers

from swarmguard.errors import NonFiniteError  # noqa: E402
from swarmguard.validation import (  # noqa: E402
    MAX_COHORT_DEPTH,
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    NAME_SEPARATOR,
    as_feature_matrix,
    as_feature_vector,
    as_finite_vector,
    check_cohort,
    check_finite_float,
    check_name_str_array,
    check_name_text,
    check_name_texts,
)
from swarmguard.values.version_vector import check_region_name  # noqa: E402


@pytest.mark.parametrize("bad, text", [
    ("e\x00u", "NUL"), ("eu\x00", "NUL"), ("\x00", "NUL"),
    ("a\x1fb", "separator"), ("\x1f", "separator"), ("ab\x1f", "separator"),
    ("r" * (MAX_NAME_LENGTH + 1), f"at most {MAX_NAME_LENGTH}"),
])
def test_region_and_cohort_names_refuse_nul_the_separator_and_overlong_names(bad, text):
    """A name holding the separator would read back from a checkpoint as two names; a
    trailing NUL would vanish in a NumPy string array (two names, one replica)."""
    assert NAME_SEPARATOR == "\x1f"
    for check in (lambda: check_name_text(bad, "region"), lambda: check_region_name(bad),
                  lambda: check_cohort(bad), lambda: check_cohort(("eu", bad)),
                  lambda: check_name_texts(["eu", bad], "regions"),
                  lambda: as_name_array(["eu", bad, "us"], 3, "regions"),
                  lambda: as_name_array(np.array(["eu", bad, "us"], dtype=object), 3, "regions"),
                  lambda: as_name_array(bad, 3, "regions")):
        with pytest.raises(InvalidInputError, match=text):
            check()
    if not bad.endswith("\x00"):      # NumPy keeps inner NULs and the separator in a "U" array
        with pytest.raises(InvalidInputError, match=text):
            check_name_str_array(np.array(["eu", bad]), "regions")
        with pytest.raises(InvalidInputError, match=text):
            as_name_array(np.array(["eu", bad, "us"]), 3, "regions")


def test_names_at_the_limits_are_accepted():
    name = "r" * MAX_NAME_LENGTH
    assert check_region_name(name) == name and check_cohort((name,) * MAX_COHORT_DEPTH) == (name,) * MAX_COHORT_DEPTH
    assert as_name_array(np.array([name, "eu"]), 2, "regions").tolist() == [name, "eu"]
    check_name_str_array(np.array(["a", "b"], dtype=f"<U{10 * MAX_NAME_LENGTH}"), "regions")   # wide dtype, short names
    with pytest.raises(InvalidInputError, match=f"at most {MAX_COHORT_DEPTH} names"):
        check_cohort(("a",) * (MAX_COHORT_DEPTH + 1))


def test_a_huge_int_region_name_is_a_typed_error():
    with pytest.raises(InvalidInputError):
        check_region_name(10**5000)            # str() of it raises a bare ValueError
    with pytest.raises(InvalidInputError, match="at most"):
        check_region_name(10**MAX_NAME_LENGTH)  # 1001 digits


def test_a_hundred_million_character_name_or_id_is_refused_without_copying_it():
    import tracemalloc
    huge = "r" * 10**8
    tracemalloc.start()
    try:
        for check in (lambda: as_name_array(huge, 5000, "regions"), lambda: check_region_name(huge),
                      lambda: check_cohort(("eu", huge)), lambda: check_id_text(huge, "agent_id"),
                      lambda: check_id_texts(["a", huge], "agent_ids"), lambda: check_key(huge, "agent_id")):
            with pytest.raises(InvalidInputError, match="100000000 characters") as info:
                check()
            assert len(str(info.value)) < 400        # the message quotes a prefix, never the whole input
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10**7                              # as_name_array would have built 5000 x 400 MB


def test_ids_refuse_more_than_max_id_length_characters():
    ok = "k" * MAX_ID_LENGTH
    assert check_id_text(ok, "agent_id") == ok
    with pytest.raises(InvalidInputError, match=r"agent_ids\[1\] has 1001 characters"):
        check_id_texts(["a", ok + "k"], "agent_ids")
    with pytest.raises(InvalidInputError, match=r"ids\[1\] has 1001 characters"):
        check_id_str_array(np.array(["a", ok + "k"]), "ids")
    check_id_str_array(np.array([ok, "b"]), "ids")


@pytest.mark.parametrize("huge", [10**400, -(10**400), __import__("fractions").Fraction(10**400, 3)])
def test_numbers_beyond_the_float_range_are_non_finite_errors(huge):
    """float(10**400) raises a bare OverflowError: it is a NonFiniteError here."""
    with pytest.raises(NonFiniteError):
        check_finite_float(huge, "timestamp")
    if isinstance(huge, int):
        for check in (lambda: as_feature_vector([huge, 1.0], 2), lambda: as_feature_matrix([[huge, 1.0]], 2),
                      lambda: as_finite_vector([1.0, huge], 2, "timestamps")):
            with pytest.raises(NonFiniteError):
                check()


@pytest.mark.parametrize("make", [
    lambda name, n: name,
    lambda name, n: [name] * n,
    lambda name, n: np.array([name] * n, dtype=object),
    lambda name, n: np.broadcast_to(np.array([name]), (n,)),
])
def test_one_long_name_for_a_million_rows_costs_one_name_not_a_million(make):
    import tracemalloc
    name, n = "r" * MAX_NAME_LENGTH, 10**6
    values = make(name, n)                   # the caller's container is not the function's cost
    tracemalloc.start()
    try:
        out = as_name_array(values, n, "regions")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 10**7, peak            # n copies of the name: 4 GB (and the old check joined 1 GB)
    assert out.shape == (n,) and out.dtype == np.dtype(f"<U{MAX_NAME_LENGTH}")
    assert out[0] == out[-1] == out[n // 2] == name
    small = as_name_array(make(name, 3), 3, "regions")
    assert small.tolist() == np.full(3, name).tolist()


def test_repeated_names_are_checked_once_each_and_the_bad_row_is_still_named():
    rows = ["eu"] * 1000 + ["us"] * 1000
    assert as_name_array(rows, 2000, "regions").tolist() == rows
    with pytest.raises(InvalidInputError, match=r"regions\[1500\]"):
        as_name_array(["eu"] * 1500 + ["u\x00s"] * 500, 2000, "regions")
    with pytest.raises(InvalidInputError, match=r"regions\[7\]"):
        as_name_array(["eu"] * 7 + ["a\x1fb"] * 3, 10, "regions")
    with pytest.raises(DimensionMismatchError, match="10 names"):
        as_name_array(["eu"] * 9, 10, "regions")
    with pytest.raises(InvalidInputError, match="NUL"):
        as_name_array(np.broadcast_to(np.array(["e\x00u"]), (10,)), 10, "regions")


def test_unique_names_matches_np_unique_and_never_copies_a_broadcast_name():
    import tracemalloc

    from swarmguard.validation import unique_names
    rng = np.random.default_rng(5)
    for arr in (np.array(rng.choice(["eu", "us", "ap"], 50)), np.array(["eu"]), np.array([], dtype="<U1"),
                np.broadcast_to(np.array(["eu"]), (7,)), np.array(["eu"] * 7)):
        names, inverse = unique_names(arr)
        ref_names, ref_inverse = np.unique(arr, return_inverse=True)
        assert names.tolist() == ref_names.tolist() and inverse.tolist() == ref_inverse.ravel().tolist()
        assert names[inverse].tolist() == arr.tolist()
    n, name = 10**5, "r" * MAX_NAME_LENGTH
    one = as_name_array(name, n, "regions")
    tracemalloc.start()
    try:
        names, inverse = unique_names(one)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert names.tolist() == [name] and not inverse.any()
    assert peak < n * MAX_NAME_LENGTH, peak           # np.unique would flatten it: n * 4 bytes a character


# ---------------------------------------------------------------------- CheckedFeatures
def test_a_checked_matrix_is_made_only_by_the_validator():
    from swarmguard.validation import CheckedFeatures, check_feature_matrix
    X = np.array([[1.0, -4.0], [2.0, 3.0]])
    checked = check_feature_matrix(X, 2)
    assert checked.bound == 4.0 and checked.n == 2 and checked.dim == 2
    np.testing.assert_array_equal(checked.X, X)
    # read-only, so no part can change what every other part trusts; the caller's array
    # keeps its own flags
    assert not checked.X.flags.writeable and X.flags.writeable
    with pytest.raises(ValueError):
        checked.X[0, 0] = 9.0
    # built by hand, even from a good matrix, or with a stray token: refused
    for token in ((), (None,), (object(),)):
        with pytest.raises(InvalidTypeError, match="check_feature_matrix"):
            CheckedFeatures(X, 4.0, *token)
    with pytest.raises(AttributeError):
        checked.bound = 1e300                       # frozen: the bound cannot be loosened
    sub = checked.rows(np.array([1]))
    assert type(sub) is CheckedFeatures and sub.X.tolist() == [[2.0, 3.0]] and sub.bound >= 3.0
    # a checked matrix passes the validators again without a pass, its dimension compared
    assert check_feature_matrix(checked, 2) is checked
    with pytest.raises(DimensionMismatchError):
        check_feature_matrix(checked, 3)


def test_a_checked_matrix_cannot_be_forged_by_replace_nor_brought_back_unchecked_by_copy_or_pickle():
    import copy
    import dataclasses
    import pickle

    from swarmguard.validation import check_feature_matrix
    checked = check_feature_matrix(np.array([[1.0, -4.0], [2.0, 3.0]]), 2)
    # replace() calls __init__ with every field copied, the issuing token too: a NaN matrix
    # under the old bound would have passed for checked (and skipped the tree's band check)
    with pytest.raises(InvalidTypeError, match="check_feature_matrix"):
        dataclasses.replace(checked, X=np.array([[np.nan, 1e300]]))
    with pytest.raises(InvalidTypeError, match="check_feature_matrix"):
        dataclasses.replace(checked, bound=0.0)
    for again in (copy.copy(checked), copy.deepcopy(checked), pickle.loads(pickle.dumps(checked))):
        assert again.bound == checked.bound and not again.X.flags.writeable
        np.testing.assert_array_equal(again.X, checked.X)
        assert not np.shares_memory(again.X, checked.X)
    # an unpickled one is checked again: bytes saying "checked" over a NaN are refused
    forged = pickle.dumps(checked).replace(np.float64(2.0).tobytes(), np.float64(np.nan).tobytes())
    with pytest.raises(NonFiniteError):
        pickle.loads(forged)


def test_a_checked_matrix_does_not_go_stale_when_the_caller_writes_its_array_afterwards():
    from swarmguard import HierarchicalStatisticalTree
    from swarmguard.validation import check_feature_matrix
    from tests._exact import exact_mean_cov
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 2)) + 1e7
    original = X.copy()
    checked = check_feature_matrix(X, 2)
    # the caller keeps its array and writes it: NaN, and a value far past the bound that
    # would have let the tree skip its band check
    X[0, 0], X[1, 1] = np.nan, 1e300
    assert not np.shares_memory(checked.X, X)
    with pytest.raises(ValueError):
        checked.X.flags.writeable = True          # nor can the view be made writable again
    tree = HierarchicalStatisticalTree(feature_dimensions=2)
    tree.update_many(np.arange(40), checked)      # taken unchecked: it must still be what was checked
    mean, cov = exact_mean_cov(original)
    stats = tree.get_global_statistics()
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-15)
    np.testing.assert_allclose(stats["covariance"], cov, rtol=1e-12)
    # a conversion (a list) is the checked matrix's own already: no second copy, read-only all through
    listed = check_feature_matrix(original.tolist(), 2)
    with pytest.raises(ValueError):
        listed.X.flags.writeable = True


@pytest.mark.parametrize("index, error", [
    (np.array([True, False]), InvalidTypeError),      # np.take would read rows 1, 0
    (np.array([0.0]), InvalidTypeError), (np.array([[0]]), InvalidTypeError),
    (np.array([], np.int64), EmptyInputError), (np.array([2]), InvalidInputError),
    (np.array([-3]), InvalidInputError),
])
def test_a_subset_of_checked_rows_takes_row_numbers_only(index, error):
    from swarmguard.validation import check_feature_matrix
    checked = check_feature_matrix(np.array([[1.0, -4.0], [2.0, 3.0]]), 2)
    with pytest.raises(error):
        checked.rows(index)
    assert checked.rows(np.array([-1, 0])).X.tolist() == [[2.0, 3.0], [1.0, -4.0]]


@pytest.mark.parametrize("bad, error", [
    ([[1.0, np.nan]], "NonFiniteError"), ([[np.inf, 1.0]], "NonFiniteError"),
    ([[-np.inf, 1.0]], "NonFiniteError"), ([[1.0, 1e100]], "InvalidInputError"),
    ([[-1e100, 1.0]], "InvalidInputError"), ([[1.0, 2.0], [np.nan, 1e200]], "NonFiniteError"),
    ([[1.0, 2.0, 3.0]], "DimensionMismatchError"), (np.zeros((0, 2)), "EmptyInputError"),
    ([["a", "b"]], "InvalidTypeError"),
])
def test_the_checked_matrix_refuses_what_as_feature_matrix_refuses_with_the_same_error(bad, error):
    import swarmguard.errors as errors
    from swarmguard.validation import as_feature_matrix, check_feature_matrix
    with pytest.raises(getattr(errors, error)) as raw:
        as_feature_matrix(bad, 2)
    with pytest.raises(getattr(errors, error)) as checked:
        check_feature_matrix(bad, 2)
    assert str(raw.value) == str(checked.value)     # the same message, naming the same index


def test_the_bound_bounds_every_value_exactly():
    from swarmguard.validation import check_feature_matrix
    rng = np.random.default_rng(3)
    for _ in range(50):
        X = rng.normal(size=(7, 3)) * 10.0 ** rng.uniform(-300, 99)
        assert check_feature_matrix(X, 3).bound == float(np.abs(X).max())
