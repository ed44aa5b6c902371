"""Every docstring example in the package runs and gives what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import swarmguard

# the package and the guide's flat module names installed beside it
GUIDE_MODULES = ["hierarchical_aggregation_protocol", "distributed_bayesian_consensus", "statistical_cap_resolver"]
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(swarmguard.__path__, prefix="swarmguard.") if not m.name.endswith("cli")
) + GUIDE_MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_some_examples_exist():
    total = sum(doctest.testmod(importlib.import_module(n)).attempted for n in MODULES)
    assert total >= 30
