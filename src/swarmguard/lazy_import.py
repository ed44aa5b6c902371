"""Imports deferred to first use.

SciPy's special functions, linear algebra and statistics each cost two to four
times ``import numpy`` at start-up, and ``import swarmguard`` or
``swarmguard --help`` needs none of them. A module that uses them holds a
loader instead of the module: the import runs on the loader's first call, and
later calls return the module with one cached lookup (tens of nanoseconds, so
per-item paths may call it freely). ``tests/test_lazy_imports.py`` checks in a
fresh interpreter that the heavy modules stay out of ``sys.modules``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["module_on_first_use", "AttributeOnFirstUse"]


def module_on_first_use(name: str) -> Callable[[], ModuleType]:
    """A function returning the module ``name``, which it imports on its first call.

    Examples
    --------
    >>> special = module_on_first_use("scipy.special")
    >>> float(special().expit(0.0))
    0.5
    >>> special() is special()
    True
    """
    module: ModuleType | None = None

    def load() -> ModuleType:
        nonlocal module
        if module is None:     # two threads may both import: import_module returns the same module
            module = importlib.import_module(name)
        return module

    load.__name__ = load.__qualname__ = f"load_{name.replace('.', '_')}"
    load.__doc__ = f"The module ``{name}``, imported on the first call."
    return load


class AttributeOnFirstUse:
    """Stands for ``module.attribute`` (an object used through its attributes) until used.

    For code written against the object itself (``chi2.isf(...)``): reading any
    attribute imports ``module`` once, then forwards to the real object.

    Examples
    --------
    >>> chi2 = AttributeOnFirstUse("scipy.stats", "chi2")
    >>> round(float(chi2.sf(3.84145882069412, 1)), 6)
    0.05
    """

    __slots__ = ("_module", "_attribute", "_target")

    def __init__(self, module: str, attribute: str) -> None:
        self._module = module
        self._attribute = attribute
        self._target: Any = None

    def __getattr__(self, name: str) -> Any:
        # only names the proxy itself lacks arrive here, i.e. the real object's
        target = self._target
        if target is None:
            target = self._target = getattr(importlib.import_module(self._module), self._attribute)
        return getattr(target, name)

    def __repr__(self) -> str:
        state = "imported" if self._target is not None else "not imported yet"
        return f"<{self._module}.{self._attribute}, {state}>"
