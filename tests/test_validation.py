"""Input validation shared by every part: NUL characters in ids and names, names from any container."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
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
