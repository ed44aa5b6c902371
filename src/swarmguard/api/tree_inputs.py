"""Checks of the population tree's inputs: its settings, a batch's ids, a batch's cohorts.

:class:`~swarmguard.api.tree.HierarchicalStatisticalTree` calls these before it
changes anything (a refused batch leaves the tree as it was); the Ray engine and
:mod:`swarmguard.api.part_settings` call them to check the same arguments by the
same rules without building a tree.

>>> check_agent_ids([3, 1, 2]).dtype == np.int64
True
>>> cohort_rows(["a", None, "a"], 3)
(array([ 0, -1,  0]), [('a',)])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, InvalidTypeError
from ..validation import (
    check_cohort,
    check_id_str_array,
    check_id_texts,
    check_key,
    check_name_str_array,
    check_positive_int,
    unique_names,
)

__all__ = ["TreeSettings", "validate_tree_settings", "check_agent_ids", "cohort_rows", "MAX_BRANCHING", "Path"]

Path = tuple[str, ...]
MAX_BRANCHING = 1024


@dataclass(frozen=True)
class TreeSettings:
    """:class:`~swarmguard.api.tree.HierarchicalStatisticalTree`'s checked settings."""

    branching_factor: int
    feature_dimensions: int | None
    recompute_every: int
    window_rounds: int | None


def validate_tree_settings(branching_factor: Any = 10, feature_dimensions: Any = None, *,
                           recompute_every: Any = 65536, window_rounds: Any = None) -> TreeSettings:
    """Check the tree's constructor arguments as the tree does."""
    branching_factor = check_positive_int(branching_factor, "branching_factor", minimum=2)
    if branching_factor > MAX_BRANCHING:
        raise InvalidInputError(f"branching_factor must be <= {MAX_BRANCHING}, got {branching_factor}")
    if feature_dimensions is not None:
        feature_dimensions = check_positive_int(feature_dimensions, "feature_dimensions")
    recompute_every = check_positive_int(recompute_every, "recompute_every")
    window_rounds = None if window_rounds is None else check_positive_int(window_rounds, "window_rounds")
    return TreeSettings(branching_factor, feature_dimensions, recompute_every, window_rounds)


def check_agent_ids(agent_ids: Any) -> np.ndarray:
    """A 1-D array of valid ids: int64 or str where every id is, else object.

    Ids follow :func:`~swarmguard.validation.check_agent_id` (any hashable but
    None, bools and floats; no NUL character in a string, which a NumPy string
    array would drop). Object arrays of strings (a pandas column) take the
    string fast path.
    """
    if isinstance(agent_ids, (str, bytes)) or not hasattr(agent_ids, "__len__"):
        raise InvalidTypeError("agent_ids must be a sequence or array of ids")
    if isinstance(agent_ids, np.ndarray):
        ids = agent_ids
        if ids.ndim != 1:
            raise DimensionMismatchError(f"agent_ids must be 1-D, got shape {ids.shape}")
        if ids.dtype.kind in "fcb":
            raise InvalidTypeError(f"agent ids must be ints or strings, got dtype {ids.dtype}")
        if ids.dtype.kind == "u":
            ids = ids.astype(np.int64) if ids.size == 0 or ids.max() < 2**63 else ids.astype(object)
        if ids.dtype.kind == "U":
            check_id_str_array(ids, "agent_ids")
            return ids
        if ids.dtype.kind == "i":
            return ids
        items = ids.tolist()
    else:
        try:
            items = list(agent_ids)
        except TypeError as exc:
            raise InvalidTypeError(f"agent_ids must be a sequence or array of ids: {exc}") from exc
    kinds = set(map(type, items))
    if kinds == {int}:
        try:
            return np.array(items, dtype=np.int64)
        except OverflowError:
            pass
    elif kinds == {str}:
        check_id_texts(items, "agent_ids")
        return np.array(items, dtype=str)
    checked = [check_key(a, f"agent_ids[{i}]") for i, a in enumerate(items)]
    ids = np.empty(len(checked), dtype=object)
    ids[:] = checked
    return ids


def cohort_rows(cohorts: Any, n: int) -> tuple[np.ndarray, list[Path]]:
    """Per-row index into a list of validated paths (-1: keep / root)."""
    if cohorts is None:
        return np.full(n, -1, dtype=np.int64), []
    if isinstance(cohorts, (str, tuple)):
        return np.zeros(n, dtype=np.int64), [check_cohort(cohorts)]
    if isinstance(cohorts, np.ndarray) and cohorts.dtype.kind == "U":
        if cohorts.shape != (n,):
            raise DimensionMismatchError(f"cohorts has shape {cohorts.shape}, expected ({n},)")
        # vectorised, before a sort of what may be huge; a broadcast name (every row the same
        # element) is checked, and sorted, once
        one = cohorts.size > 1 and cohorts.strides == (0,)
        check_name_str_array(cohorts[:1] if one else cohorts, "cohorts")
        names, inverse = unique_names(cohorts)
        return inverse.astype(np.int64), [check_cohort(str(s)) for s in names]
    if not isinstance(cohorts, Sequence) and not isinstance(cohorts, np.ndarray):
        raise InvalidTypeError("cohorts must be None, one cohort path, or one per agent")
    if len(cohorts) != n:
        raise DimensionMismatchError(f"cohorts has {len(cohorts)} entries, expected {n}")
    seen: dict[Any, int] = {}
    paths: list[Path] = []
    out = np.empty(n, dtype=np.int64)
    for i, c in enumerate(cohorts):
        key = tuple(c) if isinstance(c, list) else c
        try:
            k = seen.get(key)
        except TypeError as exc:      # unhashable entry: a dict, a set, an array
            raise InvalidTypeError(f"cohorts[{i}] is not a cohort name or path: {c!r}") from exc
        if k is None:
            if key is None:
                k = -1
            else:
                paths.append(check_cohort(key))
                k = len(paths) - 1
            seen[key] = k
        out[i] = k
    return out, paths
