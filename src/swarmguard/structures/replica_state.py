"""Codecs of a region replica's checkpoint fields: freshness, version counts, remembered ids.

:meth:`~swarmguard.structures.replica.RegionReplica.to_dict` writes its state as
flat NumPy arrays (no pickle) and
:meth:`~swarmguard.structures.replica.RegionReplica.from_dict` reads them back;
these functions turn each compound field into arrays and back, validating every
array they read (damaged or tampered state is an ``InvalidInputError``).

>>> names, times = _freshness_to_arrays({"b": 2.0, "a": 1.0})
>>> _freshness_from_arrays(names, times)
{'a': 1.0, 'b': 2.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..values.agent_index import as_agent_ids
from ..values.npz import str_list
from ..values.version_vector import MAX_COUNT, check_region_name

__all__: list[str] = []   # private to structures.replica


def _str_array(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=np.str_) if values else np.empty(0, dtype="<U1")


def _freshness_to_arrays(freshness: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    names = sorted(freshness)
    return _str_array(names), np.array([freshness[n] for n in names], dtype=np.float64)


def _freshness_from_arrays(names: Any, times: Any) -> dict[str, float]:
    names = [check_region_name(x) for x in str_list(names, "freshness.regions")]
    times = np.asarray(times)
    if times.shape != (len(names),) or (names and times.dtype.kind != "f"):
        raise InvalidInputError("freshness times must be a float array, one per region")
    times = times.astype(np.float64)
    if np.isnan(times).any() or np.isposinf(times).any():
        raise InvalidInputError("freshness times must not be NaN or +inf")
    if len(set(names)) != len(names):
        raise InvalidInputError("freshness repeats a region")
    return dict(zip(names, times.tolist(), strict=True))


def _count_matrix(value: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidInputError(f"{what} must be an integer array of shape {shape}, got {arr.dtype} {arr.shape}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_COUNT):
        raise InvalidInputError(f"{what} must lie in [0, {MAX_COUNT}]")
    return arr.astype(np.int64)


def _seen_from_state(state: Mapping[str, Any]) -> list:
    """The remembered update ids, oldest first (older checkpoints: ints, then strings)."""
    ints, strs = np.asarray(state["seen.int"]), np.asarray(state["seen.str"])
    if ints.ndim != 1 or (ints.size and ints.dtype.kind not in "iu"):
        raise InvalidInputError("seen.int must be a 1-D integer array")
    if strs.ndim != 1 or (strs.size and strs.dtype.kind != "U"):
        raise InvalidInputError("seen.str must be a 1-D string array")
    int_items, str_items = ints.tolist(), strs.tolist()
    if "seen.is_str" in state:
        flags = np.asarray(state["seen.is_str"])
        if flags.ndim != 1 or (flags.size and flags.dtype.kind != "b"):
            raise InvalidInputError("seen.is_str must be a 1-D bool array")
        flags = flags.tolist()
        if sum(flags) != len(str_items) or len(flags) - sum(flags) != len(int_items):
            raise InvalidInputError("seen.is_str does not match seen.int and seen.str")
        it_i, it_s = iter(int_items), iter(str_items)
        items = [next(it_s) if f else next(it_i) for f in flags]
    else:
        items = int_items + str_items
    if items:
        items = as_agent_ids(items).to_list()   # same rules as ids on the wire (int64, no NUL)
    if len(set(items)) != len(items):
        raise InvalidInputError("the remembered update ids repeat an id")
    return items
