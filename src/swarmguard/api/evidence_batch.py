"""A batch of evidence, checked and planned: its columns, its ids as rows of the ledger's id indexes.

The helpers :class:`~swarmguard.api.consensus.StableBayesianConsensus` checks and
plans a batch with before anything changes (``evidence_columns`` is also the Ray
engine's check on the driver)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from ..errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidTypeError,
    UnknownEvidenceTypeError,
)
from ..lazy_import import module_on_first_use
from ..validation import as_float_vector, check_key
from ..values.id_index import IdIndex
from .evidence_types import EvidenceType, check_timestamp

__all__ = ["evidence_columns", "EVIDENCE_COLUMNS"]

_special = module_on_first_use("scipy.special")   # imported on first use: see swarmguard.lazy_import

EVIDENCE_COLUMNS = ("evidence_ids", "agent_ids", "evidence_types", "log_odds", "confidences", "timestamps",
                     "source_nodes")


def evidence_columns(evidence_ids: Any, agent_ids: Any, source_nodes: Any, evidence_types: Any, log_odds: Any,
                     confidences: Any, timestamps: Any) -> tuple:
    """A batch of evidence, checked and normalised (no state is read): ``(evidence_ids,
    agent_ids, source_nodes, type_codes, log_odds, confidences, timestamps)``.

    Raises the typed error of the first problem, in a fixed order (values, then
    ids, then lengths), so that every engine refuses the same batch the same way.
    """
    lo = as_float_vector(log_odds, "log_odds", allow_empty=True)
    n = lo.size
    conf = as_float_vector(confidences, "confidences", allow_empty=True)
    if conf.size and (conf.min() < 0.0 or conf.max() > 1.0):
        bad = int(np.flatnonzero((conf < 0.0) | (conf > 1.0))[0])
        raise InvalidInputError(f"confidences must be in [0, 1], got {conf[bad]} at row {bad}")
    ts = _as_timestamps(timestamps, n)
    codes = _as_type_codes(evidence_types, n)
    ev = _as_keys(evidence_ids, "evidence_ids")
    ag = _as_keys(agent_ids, "agent_ids")
    src = _as_keys(source_nodes, "source_nodes")
    for name, arr in (("confidences", conf), ("timestamps", ts), ("evidence_types", codes),
                      ("evidence_ids", ev), ("agent_ids", ag), ("source_nodes", src)):
        if len(arr) != n:
            raise DimensionMismatchError(f"{name} has {len(arr)} rows, log_odds has {n}")
    return ev, ag, src, codes, lo, conf, ts


def _lookup_key(value: Any, name: str) -> Hashable:
    """An id to look up, checked by :func:`check_key`'s type rules (typed errors for None,
    bools, floats, unhashable values; NumPy ints as ints). Strings skip its text limits:
    one beyond them was never stored, so a lookup simply does not find it."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple):
        return tuple(_lookup_key(part, name) for part in value)
    return check_key(value, name)


def _as_list(keys) -> list:
    return keys.tolist() if isinstance(keys, np.ndarray) else list(keys)


def _export_keys(index: IdIndex, rows: np.ndarray):
    keys = index.keys_of(rows)
    return keys if keys.dtype != object else keys.tolist()


def _probabilities(log_odds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p, log p, log(1 - p) from log-odds, without overflow or warnings (|x| up to 1e308)."""
    with np.errstate(all="ignore"):
        special = _special()
        return special.expit(log_odds), special.log_expit(log_odds), special.log_expit(-log_odds)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.int64) == np.asarray(b, dtype=np.float64).view(np.int64)


def _key_at(keys, i: int):
    return keys[i].item() if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu" else keys[i]


def _as_keys(keys: Any, name: str):
    """Integer ids as an int64 array (fast path); others as a validated list."""
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__len__"):
        raise InvalidTypeError(f"{name} must be an array or sequence of ids, got {type(keys).__name__}")
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise DimensionMismatchError(f"{name} must be 1-D, got shape {keys.shape}")
        if keys.dtype.kind in "iu":
            if keys.dtype == np.uint64 and keys.size and keys.max() >= (1 << 63):
                raise InvalidInputError(f"{name} must fit in int64")
            return keys.astype(np.int64, copy=False)
        if keys.dtype.kind in "fcb":
            raise InvalidTypeError(f"{name} must be integers or strings, got dtype {keys.dtype}")
        items = keys.tolist()
    else:
        items = list(keys)
    checked = [check_key(k, name) for k in items]
    if checked and all(type(k) is int for k in checked) and all(-(1 << 63) <= k < (1 << 63) for k in checked):
        return np.array(checked, dtype=np.int64)
    return checked


def _plan_rows(index: IdIndex, keys) -> tuple[np.ndarray, Any]:
    """Rows of ``keys`` with new ids given the rows they *will* get; returns (rows, new ids)."""
    start = len(index)
    if start == 0 and isinstance(keys, np.ndarray) and keys.size:
        rows, missing, wanted = None, slice(None), keys
    else:
        rows = index.rows_of(keys)
        missing = rows < 0
        if not missing.any():
            return rows, []
        wanted = keys[missing] if isinstance(keys, np.ndarray) else None
    if isinstance(keys, np.ndarray):
        lo, hi = int(wanted.min()), int(wanted.max())
        if hi - lo <= 4 * wanted.size + 1024:
            # Presence table: sorted distinct ids and their ranks without a sort. Ids
            # that are small non-negative ints index the table as they are (no offset pass).
            base = 0 if 0 <= lo and hi <= 4 * wanted.size + 1024 else lo
            offset = wanted if base == 0 else wanted - base
            present = np.zeros(hi - base + 1, dtype=bool)
            present[offset] = True
            narrow = start + hi - base + 1 < (1 << 31)
            rank = np.cumsum(present, dtype=np.int32 if narrow else np.int64)
            rank += start - 1
            new = np.flatnonzero(present) + base
            if isinstance(missing, slice):
                return rank[offset], new
            rows[missing] = rank[offset]
            return rows, new
        new, inverse = np.unique(wanted, return_inverse=True)
        if isinstance(missing, slice):
            return start + inverse.ravel(), new
        rows[missing] = start + inverse.ravel()
        return rows, new
    order: dict = {}
    for i in np.flatnonzero(rows < 0).tolist():
        rows[i] = start + order.setdefault(keys[i], len(order))
    return rows, list(order)


def _trim_new(index: IdIndex, rows: np.ndarray, new) -> tuple[np.ndarray, Any]:
    """Drop planned new ids no longer used, renumbering the planned rows."""
    if len(new) == 0:
        return rows, new
    start = len(index)
    used = np.zeros(len(new), dtype=bool)
    planned = rows >= start
    used[rows[planned] - start] = True
    if used.all():
        return rows, new
    renumber = np.cumsum(used) - 1
    rows = rows.copy()
    rows[planned] = start + renumber[rows[planned] - start]
    new = new[used] if isinstance(new, np.ndarray) else [k for k, u in zip(new, used, strict=True) if u]
    return rows, new


def _keys_for(index: IdIndex, rows: np.ndarray, new) -> list:
    """Ids of planned rows (existing or new), as Python objects."""
    start = len(index)
    new_list = new.tolist() if isinstance(new, np.ndarray) else list(new)
    out = []
    for r in rows.tolist():
        out.append(index.key_of(r) if r < start else new_list[r - start])
    return out


def _add_keys(index: IdIndex, keys) -> None:
    if len(keys):
        index.add_new(keys)


def _first_occurrence(keys) -> np.ndarray | None:
    """Index of each id's first occurrence, or None when all ids are distinct."""
    if isinstance(keys, np.ndarray):
        if keys.size < 2 or (keys[1:] > keys[:-1]).all():  # strictly increasing: distinct, no sort
            return None
        s = np.sort(keys)
        if s.size < 2 or not (s[1:] == s[:-1]).any():
            return None
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return first[inverse.ravel()]
    seen: dict = {}
    first = np.array([seen.setdefault(k, i) for i, k in enumerate(keys)], dtype=np.int64)
    return None if len(seen) == len(keys) else first


def _first_occurrence_per_source(keys, source_rows: np.ndarray) -> np.ndarray | None:
    """Index of each (source row, id)'s first occurrence, or None when all are distinct."""
    n = len(source_rows)
    if isinstance(keys, np.ndarray):
        order = np.lexsort((source_rows, keys))     # stable: a group's first is its earliest row
        k, s = keys[order], source_rows[order]
        starts = np.r_[True, (k[1:] != k[:-1]) | (s[1:] != s[:-1])]
        if starts.all():
            return None
        first = np.empty(n, dtype=np.int64)
        first[order] = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
        return first
    seen: dict = {}
    first = np.array([seen.setdefault((int(r), k), i) for i, (r, k) in enumerate(
        zip(source_rows.tolist(), keys, strict=True))], dtype=np.int64)
    return None if len(seen) == n else first


def _as_timestamps(timestamps: Any, n: int) -> np.ndarray:
    if isinstance(timestamps, np.ndarray) and timestamps.dtype.kind in "iuf":
        return as_float_vector(timestamps, "timestamps", allow_empty=True)
    if isinstance(timestamps, (str, bytes)) or not hasattr(timestamps, "__len__"):
        raise InvalidTypeError("timestamps must be an array or sequence")
    return np.array([check_timestamp(t) for t in timestamps], dtype=np.float64)


def _as_type_codes(types: Any, n: int) -> np.ndarray:
    """Evidence types as int16 codes: one type for all rows, codes, or a sequence of types."""
    if isinstance(types, (EvidenceType, str)):
        return np.full(n, EvidenceType.parse(types).code, dtype=np.int16)
    if isinstance(types, np.ndarray) and types.dtype.kind in "iu":
        if types.ndim != 1:
            raise DimensionMismatchError(f"evidence_types must be 1-D, got shape {types.shape}")
        if types.size and (types.min() < 0 or types.max() >= len(EvidenceType)):
            i = int(np.flatnonzero((types < 0) | (types >= len(EvidenceType)))[0])
            raise UnknownEvidenceTypeError(f"evidence_types: no evidence type has code {int(types[i])} (row {i}); "
                                           f"codes are 0 to {len(EvidenceType) - 1}")
        return types.astype(np.int16)
    if not isinstance(types, (Sequence, np.ndarray)):
        raise InvalidTypeError(f"evidence_types must be a type, a sequence or a code array, got "
                               f"{type(types).__name__}")
    items = types.tolist() if isinstance(types, np.ndarray) else list(types)
    cache: dict = {}
    out = np.empty(len(items), dtype=np.int16)
    for i, t in enumerate(items):
        key = t if isinstance(t, (str, int)) and not isinstance(t, bool) else None
        code = cache.get(key) if key is not None else None
        if code is None:
            code = EvidenceType.parse(t).code
            if key is not None:
                cache[key] = code
        out[i] = code
    return out
