"""Execution engines: in process (the default) and Ray (optional, ``swarmguard[ray]``).

Importing this package never imports Ray; :func:`make_detector` with
``backend="ray"`` does, and raises :class:`~swarmguard.errors.MissingDependencyError`
when Ray is not installed.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError

__all__ = ["BACKENDS", "make_detector", "RayDistributedBehavioralDetector"]

BACKENDS = ("inprocess", "ray")


def make_detector(backend: str = "inprocess", *, address: str | None = None,
                  ray_options: dict[str, Any] | None = None, **kwargs: Any):
    """A detector on the chosen backend; ``kwargs`` are the detector's parameters.

    ``backend="inprocess"`` gives :class:`~swarmguard.api.detector.DistributedBehavioralDetector`;
    ``backend="ray"`` gives :class:`~swarmguard.engines.ray_engine.RayDistributedBehavioralDetector`
    (``address``: a running cluster, else a local ``ray.init(num_cpus=2)``;
    ``ray_options``: its extra parameters such as ``region_workers``).
    """
    if backend == "inprocess":
        from ..api.detector import DistributedBehavioralDetector
        return DistributedBehavioralDetector(**kwargs)
    if backend == "ray":
        from .ray_engine import RayDistributedBehavioralDetector
        return RayDistributedBehavioralDetector(address=address, **(ray_options or {}), **kwargs)
    raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")


def __getattr__(name: str):
    if name == "RayDistributedBehavioralDetector":
        from .ray_engine import RayDistributedBehavioralDetector
        return RayDistributedBehavioralDetector
    raise AttributeError(name)
