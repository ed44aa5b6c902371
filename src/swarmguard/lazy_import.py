"""Imports deferred to first use.

SciPy's special functions, linear algebra and statistics add several times the
cost of ``import numpy`` to start-up (with them, ``swarmguard --help`` took about
10x ``import numpy``; without, 3.5x: ``benchmarks/bench_startup.py``), and
``import swarmguard`` or ``--help`` needs none of them. A module that uses them holds a
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
    public attribute imports ``module`` once and forwards to the real object; each
    attribute read is then kept on the stand-in, so later reads are plain
    instance lookups (the object's attributes must not be rebound, true of
    SciPy's distributions and their methods).

    Examples
    --------
    >>> chi2 = AttributeOnFirstUse("scipy.stats", "chi2")
    >>> round(float(chi2.sf(3.84145882069412, 1)), 6)
    0.05
    >>> chi2.sf is chi2.sf
    True
    """

    def __init__(self, module: str, attribute: str) -> None:
        self._module = module
        self._attribute = attribute
        self._target: Any = None

    def __getattr__(self, name: str) -> Any:
        # only names not yet kept on the stand-in arrive here, i.e. the real object's
        if name.startswith("_"):   # the stand-in's own fields before __init__ (copy, pickle), hooks
            raise AttributeError(name)
        target = self._target
        if target is None:
            target = self._target = getattr(importlib.import_module(self._module), self._attribute)
        value = getattr(target, name)
        setattr(self, name, value)
        return value

    def __repr__(self) -> str:
        state = "imported" if self._target is not None else "not imported yet"
        return f"<{self._module}.{self._attribute}, {state}>"
