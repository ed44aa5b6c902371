"""Imports deferred to first use.

SciPy's special functions, linear algebra and statistics add several times the
cost of ``import numpy`` to start-up (with them, ``swarmguard --help`` took about
10x ``import numpy``; without, 3.5x: ``benchmarks/bench_startup.py``), and
``import swarmguard`` or ``--help`` needs none of them. A module that uses them holds a
loader instead of the module: the import runs on the loader's first call, and
later calls return the module with one cached lookup (tens of nanoseconds, so
per-item paths may call it freely). ``tests/test_lazy_imports.py`` checks in a
fresh interpreter that the heavy modules stay out of ``sys.modules``.

The package ``__init__`` files of :mod:`swarmguard` and :mod:`swarmguard.api` name
their public classes with :func:`exports_on_first_use` instead of importing them:
importing any module of the package runs its parents' ``__init__`` first, and a Ray
actor's process, which imports only its shard's module (a few parts of the API),
would otherwise import every part of the API before its first call.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["module_on_first_use", "AttributeOnFirstUse", "exports_on_first_use"]


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


# Held while a lazily named export is imported on first use (see exports_on_first_use).
_FIRST_USE_IMPORT = threading.RLock()


def _new_first_use_lock() -> None:
    # a child forked while another thread held the lock would wait on it forever
    global _FIRST_USE_IMPORT
    _FIRST_USE_IMPORT = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_first_use_lock)


def exports_on_first_use(package: str, namespace: dict[str, Any], exports: Mapping[str, str],
                         submodules: Iterable[str] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module ``__getattr__`` and ``__dir__`` (PEP 562) that import on first use.

    ``exports`` maps each public name to the module (relative to ``package``) that
    defines it; ``submodules`` names the package's submodules that read as its
    attributes (as after an eager import of them). The first read of a name imports
    its module and keeps the value in ``namespace`` (the package's globals), so later
    reads are plain module lookups; ``from package import name`` works the same way.

    Examples
    --------
    >>> namespace = {}
    >>> getattr_, dir_ = exports_on_first_use("json", namespace, {"JSONDecoder": ".decoder"}, ["encoder"])
    >>> getattr_("JSONDecoder").__name__, "JSONDecoder" in namespace
    ('JSONDecoder', True)
    >>> getattr_("encoder").__name__
    'json.encoder'
    >>> sorted(set(dir_()) & {"JSONDecoder", "encoder"})
    ['JSONDecoder', 'encoder']
    >>> getattr_("nothing")
    Traceback (most recent call last):
    ...
    AttributeError: module 'json' has no attribute 'nothing'
    """
    exports = dict(exports)
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name not in exports and name not in submodules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # One first-use import at a time, process-wide: two threads importing parts of the API
        # at once take CPython's module locks in opposite orders (a package and its submodule)
        # and one of them gets _DeadlockError. Re-entrant: an import may read a lazy name.
        with _FIRST_USE_IMPORT:
            if name in namespace:  # another thread imported it while this one waited
                return namespace[name]
            if name in exports:
                value = getattr(importlib.import_module(exports[name], package), name)
            else:
                value = importlib.import_module(f"{package}.{name}")
            namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports) | submodules)

    return __getattr__, __dir__
