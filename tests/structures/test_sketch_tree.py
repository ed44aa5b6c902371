"""``SketchTree``'s shape arguments: refused when made, with typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.errors import InvalidInputError, InvalidTypeError, SwarmGuardError
from swarmguard.structures.sketch_tree import SketchTree

_GOOD = {"features": 3, "page_size": 4, "branching": 2}


@pytest.mark.parametrize(("name", "value", "error"), [
    ("features", 0, InvalidInputError), ("features", -1, InvalidInputError),
    ("features", 2.0, InvalidTypeError), ("features", "3", InvalidTypeError),
    ("features", True, InvalidTypeError), ("features", None, InvalidTypeError),
    ("page_size", 0, InvalidInputError), ("page_size", -4, InvalidInputError),
    ("page_size", 4.5, InvalidTypeError), ("page_size", False, InvalidTypeError),
    ("page_size", np.float64(4.0), InvalidTypeError),
    # branching 1 was quietly taken as 2 (max(2, ...)), 0 and negatives too, 2.9 as 2
    ("branching", 1, InvalidInputError), ("branching", 0, InvalidInputError),
    ("branching", -3, InvalidInputError), ("branching", 2.9, InvalidTypeError),
    ("branching", True, InvalidTypeError), ("branching", "2", InvalidTypeError),
])
def test_a_sketch_tree_refuses_a_shape_it_cannot_have(name, value, error):
    with pytest.raises(error, match=name) as refused:
        SketchTree(**{**_GOOD, name: value})
    assert isinstance(refused.value, SwarmGuardError)
    assert isinstance(refused.value, TypeError if error is InvalidTypeError else ValueError)


@pytest.mark.parametrize("kind", [int, np.int64, np.int32])
def test_a_sketch_tree_takes_integers_of_any_integer_type_as_ints(kind):
    tree = SketchTree(kind(3), kind(4), kind(2))
    assert (tree.features, tree.page_size, tree.b) == (3, 4, 2)
    assert all(type(v) is int for v in (tree.features, tree.page_size, tree.b))
