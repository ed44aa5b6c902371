"""The detector's backends by name, and the loaders of the engines that other layers provide.

A module of its own, importing nothing heavy, so that the package root can register
the Ray backend (:func:`register_backend`) without importing the detector and every
part beside it: a Ray actor's process imports :mod:`swarmguard` (its module's parent
package) before the few modules its shard needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import InvalidInputError

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["BACKENDS", "register_backend", "registered_engine"]

BACKENDS = ("inprocess", "ray")

# Loaders of the engines of other backends, by name. The engines layer sits above this one,
# so it is never imported here: the package root registers a loader that imports it on first
# use (see swarmguard/__init__.py).
_BACKEND_LOADERS: dict[str, Callable[[], Callable[..., Engine]]] = {}


def register_backend(name: str, loader: Callable[[], Callable[..., Engine]]) -> None:
    """Make ``DistributedBehavioralDetector(backend=name, **options)`` drive the engine
    ``loader()(settings, **options)`` (an :class:`~swarmguard.api.engine.Engine` class
    whose ``OPTIONS`` names its own parameters, such as Ray's ``address`` and
    ``region_workers``); ``loader`` runs on first use."""
    if name not in BACKENDS or name == "inprocess":
        raise InvalidInputError(f"backend must be one of {BACKENDS[1:]}, got {name!r}")
    _BACKEND_LOADERS[name] = loader


def registered_engine(backend: Any) -> Callable[..., Engine]:
    """The engine class registered for ``backend`` (not ``"inprocess"``: the detector's own),
    loaded now; :class:`~swarmguard.errors.InvalidInputError` when none is."""
    loader = _BACKEND_LOADERS.get(backend) if isinstance(backend, str) else None
    if loader is None:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return loader()
