"""Execution engines: in process (the default) and Ray (optional, ``swarmguard[ray]``).

Importing this package never imports Ray; :func:`make_detector` with
``backend="ray"`` does, and raises :class:`~swarmguard.errors.MissingDependencyError`
when Ray is not installed.
"""

from __future__ import annotations

from typing import Any

from ..api.backends import BACKENDS
from ..errors import InvalidInputError

__all__ = ["BACKENDS", "make_detector", "RayEngine", "RayDistributedBehavioralDetector"]



def make_detector(backend: str = "inprocess", *, address: str | None = None,
                  ray_options: dict[str, Any] | None = None, **kwargs: Any):
    """A detector on the chosen backend; ``kwargs`` are the detector's parameters.

    The same as ``DistributedBehavioralDetector(backend=backend, ...)``:
    a :class:`~swarmguard.api.detector.DistributedBehavioralDetector` driving the
    in-process engine (``"inprocess"``) or :class:`~swarmguard.engines.ray_engine.RayEngine`
    (``"ray"``; ``address``: a running cluster, else a local ``ray.init(num_cpus=2)``;
    ``ray_options``: its other parameters, such as ``region_workers``).
    """
    from ..api.detector import DistributedBehavioralDetector
    if backend == "ray":
        return DistributedBehavioralDetector(backend="ray", address=address, **(ray_options or {}), **kwargs)
    if address is not None or ray_options:
        raise InvalidInputError("address and ray_options are for backend='ray'")
    return DistributedBehavioralDetector(backend=backend, **kwargs)


def __getattr__(name: str):
    if name in ("RayEngine", "RayDistributedBehavioralDetector"):
        from . import ray_engine
        return getattr(ray_engine, name)
    raise AttributeError(name)
