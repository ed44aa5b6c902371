"""Run the docstring examples of the CAP modules (pytest collects only tests/)."""

import doctest
import importlib

import pytest

MODULES = [
    "swarmguard.values.version_vector",
    "swarmguard.values.agent_index",
    "swarmguard.values.lww_register_map",
    "swarmguard.values.exact_moments",
    "swarmguard.values.npz",
    "swarmguard.structures.replica",
    "swarmguard.api.cap",
    "statistical_cap_resolver",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
