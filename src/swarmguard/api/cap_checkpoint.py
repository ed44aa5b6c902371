"""The CAP resolver's checkpoint: its state to and from arrays.

:class:`CapCheckpoint` is a part of
:class:`~swarmguard.api.cap.StatisticalCAPResolver` (its methods run on the
resolver's state and under its lock): ``to_dict`` / ``from_dict`` write and
read every replica and the topology as a flat dict of arrays,
``to_bytes`` / ``from_bytes`` the same as an ``.npz`` archive (no pickle).
Settings are not part of the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from ..locking import synchronized
from ..structures.replica import RegionReplica
from ..values.npz import (
    dict_from_bytes,
    dict_to_bytes,
    float_list,
    float_scalar,
    int_list,
    int_scalar,
    reading_fields,
    str_list,
)
from ..values.version_vector import check_region_name

__all__ = ["CapCheckpoint"]

_FORMAT_VERSION = 1


class CapCheckpoint:
    """Checkpoints of :class:`~swarmguard.api.cap.StatisticalCAPResolver` (a part of its class)."""

    # ------------------------------------------------------------------ state
    @synchronized
    def to_dict(self) -> dict[str, np.ndarray]:
        """Every replica's checkpoint, prefixed by region, plus the topology (flat dict of arrays).

        Settings (model, staleness, clock) are not part of the state: pass them
        again to :meth:`from_dict`.
        """
        out: dict[str, np.ndarray] = {
            "format": np.array(_FORMAT_VERSION),
            "regions": np.array(self._topology.regions, dtype=np.str_) if self._topology.regions else np.empty(0, "<U1"),
            "born": np.array([self._topology.born[r] for r in self._topology.regions], dtype=np.float64),
            "start": np.array(self._start),
            "dim": np.array(-1 if self._dim is None else self._dim),
            "groups": np.array([-1 if self._topology.group_of is None else self._topology.group_of[r] for r in self._topology.regions],
                               dtype=np.int64),
        }
        for name, replica in self._replicas.items():
            for k, v in replica.to_dict().items():
                out[f"replica[{name}].{k}"] = v
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any], **settings: Any) -> Self:
        """Restore a resolver from :meth:`to_dict` output; ``settings`` as for the constructor."""
        if "regions" in settings or "feature_dimensions" in settings:
            raise InvalidInputError("regions and feature_dimensions come from the state")
        if not isinstance(state, Mapping):
            raise InvalidTypeError(f"a resolver state is a mapping of arrays, got {type(state).__name__}")
        with reading_fields("resolver state"):
            fmt = int_scalar(state["format"], "format", 0, 1 << 31)
            if fmt != _FORMAT_VERSION:
                raise InvalidInputError(f"unsupported resolver state format {fmt}")
            regions = [check_region_name(r) for r in str_list(state["regions"], "regions")]
            if len(set(regions)) != len(regions):
                raise InvalidInputError("resolver state repeats a region")
            born = float_list(state["born"], "born", len(regions))
            start = float_scalar(state["start"], "start")
            dim = int_scalar(state["dim"], "dim", -1, 1 << 31)
            groups = int_list(state["groups"], "groups", len(regions), -1, 1 << 31)
        if dim == 0:
            raise InvalidInputError("dim must be -1 (not known yet) or positive")
        if any(g < 0 for g in groups) and not all(g < 0 for g in groups):
            raise InvalidInputError("groups must be all -1 (no partition) or all >= 0")
        known = {"format", "regions", "born", "start", "dim", "groups"}
        prefixes = tuple(f"replica[{name}]." for name in regions) if dim > 0 else ()
        for key in state:
            if not isinstance(key, str) or (key not in known and not key.startswith(prefixes)):
                raise InvalidInputError(f"resolver state has an unexpected field {key!r}")
        replicas = {}
        if dim > 0:
            for name in regions:
                prefix = f"replica[{name}]."
                part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                replica = RegionReplica.from_dict(part, dedup_window=settings.get("dedup_window"))
                if replica.region != name or replica.dim != dim:
                    raise InvalidInputError(f"replica state for {name!r} does not match the resolver")
                replicas[name] = replica
        res = cls(**settings)
        res._start = start
        res._topology.regions = regions
        res._topology.born = dict(zip(regions, born, strict=True))
        res._dim = dim if dim > 0 else None
        res._replicas = replicas
        res._topology.group_of = None if all(g < 0 for g in groups) else dict(zip(regions, groups, strict=True))
        return res

    @synchronized
    def to_bytes(self) -> bytes:
        """Checkpoint as bytes (an ``.npz`` archive, no pickle)."""
        return dict_to_bytes(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, **settings: Any) -> Self:
        state = dict_from_bytes(data, "StatisticalCAPResolver")
        return cls.from_dict(state, **settings)
