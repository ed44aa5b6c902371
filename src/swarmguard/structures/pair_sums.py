"""Exact per-(agent, source) sums: the mergeable accumulator of an evidence partition.

For every (agent row, source row) pair it holds the count and the exact sum of
the contributions, as normalised 26-bit limbs (see
:mod:`swarmguard.values.exact_sum`) stored sparsely: only non-zero limbs, as
(pair, limb number, limb value) entries. A float64 touches 3 limbs, so a
partition of ``n`` points holds at most ``3 n + 3 P`` entries whatever the
values' range, and merging is integer addition: the merged totals do not depend
on how the evidence was split into partitions or in what order it arrived.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..values.exact_sum import (
    LIMB_BITS,
    N_LIMBS,
    canonical_limbs,
    exact_group_sums,
    float_limbs,
    grouped_limb_sums,
    round_limbs,
)

__all__ = ["PairSums", "pair_key", "split_pair_key", "SOURCE_BITS"]

_FORMAT_VERSION = 1
SOURCE_BITS = 20  # up to 2**20 sources, 2**43 agents per pair key
_SOURCE_MASK = (1 << SOURCE_BITS) - 1
# Cap on dense cells (pairs x limbs) per bincount, ~256 MB of float64.
_CELL_BUDGET = 1 << 25


def pair_key(agent_row: np.ndarray, source_row: np.ndarray) -> np.ndarray:
    """One int64 per (agent, source), ordered by agent then source."""
    return (np.asarray(agent_row, dtype=np.int64) << SOURCE_BITS) | np.asarray(source_row, dtype=np.int64)


def split_pair_key(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pair_key`."""
    key = np.asarray(key, dtype=np.int64)
    return key >> SOURCE_BITS, key & _SOURCE_MASK


def compact(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)`` for pair keys, without a sort when it can.

    Pair keys are re-based to ``agent * n_sources + source`` (order preserving);
    when that range is small enough a presence table replaces the sort.
    """
    if keys.size == 0:
        return keys.copy(), np.zeros(0, dtype=np.int64)
    agent, source = split_pair_key(keys)
    a_lo = int(agent.min())
    n_sources = int(source.max()) + 1
    dense = (agent - a_lo) * n_sources + source
    span = int(dense.max()) + 1
    if span <= 8 * keys.size + 4096:
        unique_dense, inverse = compact_dense(dense, span)
        u_agent, u_source = np.divmod(unique_dense, n_sources)
        return pair_key(u_agent + a_lo, u_source), inverse
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, inverse.ravel()


def compact_dense(dense: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(dense, return_inverse=True)`` for ints in ``[0, span)``, by a presence
    table (no sort): the sorted distinct values and each value's rank among them."""
    present = np.zeros(span, dtype=bool)
    present[dense] = True
    unique = np.flatnonzero(present)
    narrow = np.int32 if unique.size < (1 << 31) else np.int64
    rank = np.empty(span, dtype=narrow)  # only the present cells are ever read
    rank[unique] = np.arange(unique.size, dtype=narrow)
    return unique, rank[dense]


class PairSums:
    """Counts and exact sums of contributions per (agent, source) pair.

    Examples
    --------
    >>> import numpy as np
    >>> a = PairSums.from_rows(np.array([0, 0, 1]), np.array([0, 0, 2]), np.array([1e16, 1.0, 3.0]))
    >>> b = PairSums.from_rows(np.array([0]), np.array([0]), np.array([1.0]))
    >>> a += b
    >>> agent, source, count, total = a.totals()
    >>> agent.tolist(), source.tolist(), count.tolist(), total.tolist()
    ([0, 1], [0, 2], [3, 1], [1.0000000000000002e+16, 3.0])
    """

    __slots__ = ("keys", "counts", "entry_pair", "entry_limb", "entry_value")

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)  # sorted pair keys
        self.counts = np.zeros(0, dtype=np.int64)
        self.entry_pair = np.zeros(0, dtype=np.int64)  # position in keys
        self.entry_limb = np.zeros(0, dtype=np.int16)
        self.entry_value = np.zeros(0, dtype=np.int32)  # canonical: |value| < 2**26, sign of the pair

    # ------------------------------------------------------------------ building
    @classmethod
    def from_rows(cls, agent_row: np.ndarray, source_row: np.ndarray, contribution: np.ndarray) -> PairSums:
        """Accumulate validated rows (finite contributions)."""
        keys = pair_key(agent_row, source_row)
        first, limb = float_limbs(np.asarray(contribution, dtype=np.float64))
        index = (first[None, :] + np.arange(3, dtype=np.int64)[:, None]).ravel()
        unique, inverse = compact(keys)
        counts = np.bincount(inverse, minlength=unique.size).astype(np.int64)
        return cls._from_terms(unique, counts, np.tile(inverse, 3), index, limb.ravel())

    @classmethod
    def from_rows_grouped(cls, part: np.ndarray, n_parts: int, agent_row: np.ndarray,
                          source_row: np.ndarray, contribution: np.ndarray) -> list[PairSums]:
        """One accumulator per part (``part`` in ``[0, n_parts)``), built in one vectorised
        pass; equal to ``from_rows`` on each part's rows. Agent rows must be < 2**16."""
        part = np.asarray(part, dtype=np.int64)
        combined = pair_key((part << 16) | np.asarray(agent_row, dtype=np.int64), source_row)
        whole = cls.from_rows(combined >> SOURCE_BITS, combined & _SOURCE_MASK, contribution)
        owner = whole.keys >> (SOURCE_BITS + 16)
        key_bounds = np.searchsorted(owner, np.arange(n_parts + 1))
        entry_bounds = np.searchsorted(whole.entry_pair, key_bounds)
        local_keys = whole.keys & ((1 << (SOURCE_BITS + 16)) - 1)
        result = []
        for i in range(n_parts):
            k_lo, k_hi = key_bounds[i], key_bounds[i + 1]
            e_lo, e_hi = entry_bounds[i], entry_bounds[i + 1]
            one = cls()
            one.keys, one.counts = local_keys[k_lo:k_hi], whole.counts[k_lo:k_hi]
            one.entry_pair = whole.entry_pair[e_lo:e_hi] - k_lo
            one.entry_limb = whole.entry_limb[e_lo:e_hi]
            one.entry_value = whole.entry_value[e_lo:e_hi]
            result.append(one)
        return result

    @classmethod
    def _from_terms(cls, keys, counts, pair, index, value) -> PairSums:
        result = cls()
        result.keys, result.counts = keys, counts
        if index.size == 0:
            return result
        parts = []
        for lo, _hi, base, sums in _dense_chunks(pair, index, value, keys.size):
            canonical_limbs(sums)
            local, limb_no = np.nonzero(sums.T)  # pair-major: one agent's entries stay together
            parts.append((local + lo, (limb_no + base).astype(np.int16), sums[limb_no, local].astype(np.int32)))
        result.entry_pair = np.concatenate([p[0] for p in parts])
        result.entry_limb = np.concatenate([p[1] for p in parts])
        result.entry_value = np.concatenate([p[2] for p in parts])
        return result

    @staticmethod
    def _merged_terms(parts: Sequence[PairSums]):
        unique, inverse = compact(np.concatenate([p.keys for p in parts]))
        counts = np.bincount(inverse, weights=np.concatenate([p.counts for p in parts]),
                             minlength=unique.size).astype(np.int64)
        offsets = np.cumsum([0] + [p.keys.size for p in parts])
        pair = np.concatenate([inverse[offsets[i] + p.entry_pair] for i, p in enumerate(parts)])
        index = np.concatenate([p.entry_limb for p in parts]).astype(np.int64)
        value = np.concatenate([p.entry_value for p in parts]).astype(np.int64)
        return unique, counts, pair, index, value

    @classmethod
    def merge_all(cls, parts: Sequence[PairSums]) -> PairSums:
        """Exact merge of many accumulators (integer addition of their limbs)."""
        parts = [p for p in parts if p.keys.size]
        if not parts:
            return cls()
        if len(parts) == 1:
            return parts[0].copy()
        unique, counts, pair, index, value = cls._merged_terms(parts)
        return cls._from_terms(unique, counts, pair, index, value)

    @classmethod
    def merged_totals(cls, parts: Sequence[PairSums], n_agents: int, prior: float | None = None):
        """Merge many accumulators straight to totals, in one pass.

        Returns
        -------
        pair_agent, pair_source, pair_count, pair_total : (P,) arrays, pairs sorted by agent
        agent_count, agent_total : (n_agents,) arrays
            ``agent_total`` is the correctly rounded exact sum of all the agent's
            contributions plus ``prior`` (one more term), i.e.
            ``math.fsum([prior, *contributions])``.
        """
        parts = [p for p in parts if p.keys.size]
        if parts:
            unique, counts, pair, index, value = cls._merged_terms(parts)
        else:
            unique = counts = pair = index = value = np.zeros(0, dtype=np.int64)
        return _totals_from_terms(unique, counts, pair, index, value, n_agents, prior)

    @staticmethod
    def row_totals(agent_row: np.ndarray, source_row: np.ndarray, contribution: np.ndarray,
                   n_agents: int, prior: float | None = None, *, agent_sums: bool = True):
        """The same totals as :meth:`merged_totals`, straight from validated rows in one
        pass (exact sums do not depend on grouping, so the bits are the same). Pairs and
        agents with at most two terms skip the limbs (see :func:`exact_group_sums`).
        With ``agent_sums=False`` the per-agent totals are NaN (not computed)."""
        contribution = np.asarray(contribution, dtype=np.float64)
        agent_row, source_row = np.asarray(agent_row), np.asarray(source_row)
        n_sources = int(source_row.max()) + 1 if source_row.size else 0
        span = n_agents * n_sources
        if source_row.size and span <= 8 * source_row.size + 4096 and agent_row.max() < n_agents:
            # Pairs numbered agent * n_sources + source: compacted by a presence table
            # (already in pair-key order), without building 64-bit pair keys.
            cell = np.multiply(agent_row, n_sources, dtype=np.int64)
            cell += source_row
            occupied, inverse = compact_dense(cell, span)
            counts = np.bincount(inverse, minlength=occupied.size)
            pair_total = exact_group_sums(inverse, contribution, occupied.size, counts=counts)
            agent, source = np.divmod(occupied, n_sources)
        else:
            keys = pair_key(agent_row, source_row)
            unique, inverse = compact(keys)
            counts = np.bincount(inverse, minlength=unique.size).astype(np.int64)
            pair_total = exact_group_sums(inverse, contribution, unique.size, counts=counts)
            agent, source = split_pair_key(unique)
        agent_count = np.bincount(agent, weights=counts, minlength=n_agents).astype(np.int64)
        if agent_sums:
            agent_total = exact_group_sums(np.asarray(agent_row, dtype=np.int64), contribution, n_agents,
                                           extra=prior if prior else None, counts=agent_count)
        else:
            agent_total = np.full(n_agents, np.nan)
        return agent, source, counts, pair_total, agent_count, agent_total

    def __iadd__(self, other: PairSums) -> PairSums:
        if not isinstance(other, PairSums):
            return NotImplemented
        merged = PairSums.merge_all([self, other])
        for name in self.__slots__:
            setattr(self, name, getattr(merged, name))
        return self

    # ------------------------------------------------------------------ queries
    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(agent rows, source rows, counts, correctly rounded sums) per pair."""
        agent, source = split_pair_key(self.keys)
        return agent, source, self.counts.copy(), self._round(self.entry_pair, np.arange(self.keys.size))

    def select_agent(self, agent_row: int) -> PairSums:
        """The pairs of one agent (a view-sized copy), by binary search."""
        lo = int(np.searchsorted(self.keys, int(agent_row) << SOURCE_BITS))
        hi = int(np.searchsorted(self.keys, (int(agent_row) + 1) << SOURCE_BITS))
        e_lo, e_hi = np.searchsorted(self.entry_pair, [lo, hi])
        result = PairSums()
        result.keys, result.counts = self.keys[lo:hi].copy(), self.counts[lo:hi].copy()
        result.entry_pair = self.entry_pair[e_lo:e_hi] - lo
        result.entry_limb = self.entry_limb[e_lo:e_hi].copy()
        result.entry_value = self.entry_value[e_lo:e_hi].copy()
        return result

    def _round(self, entry_group: np.ndarray, groups: np.ndarray) -> np.ndarray:
        return _round_groups(entry_group, self.entry_limb.astype(np.int64),
                             self.entry_value.astype(np.int64), groups.size)

    # ------------------------------------------------------------------ plumbing
    @property
    def n_pairs(self) -> int:
        return int(self.keys.size)

    def copy(self) -> PairSums:
        result = PairSums()
        for name in self.__slots__:
            setattr(result, name, getattr(self, name).copy())
        return result

    def __eq__(self, other: object) -> bool:
        """Same pairs, counts and exact sums (normalised limbs are canonical)."""
        if not isinstance(other, PairSums):
            return NotImplemented
        if not (np.array_equal(self.keys, other.keys) and np.array_equal(self.counts, other.counts)):
            return False
        mine = np.lexsort((self.entry_limb, self.entry_pair))
        theirs = np.lexsort((other.entry_limb, other.entry_pair))
        return (np.array_equal(self.entry_pair[mine], other.entry_pair[theirs])
                and np.array_equal(self.entry_limb[mine], other.entry_limb[theirs])
                and np.array_equal(self.entry_value[mine], other.entry_value[theirs]))

    __hash__ = None

    def __repr__(self) -> str:
        return f"PairSums(pairs={self.n_pairs}, evidence={int(self.counts.sum())})"

    def to_dict(self) -> dict[str, np.ndarray]:
        state = {name: getattr(self, name).copy() for name in self.__slots__}
        state["version"] = np.array(_FORMAT_VERSION)
        return state

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PairSums:
        """Inverse of :meth:`to_dict`, validated: integer arrays whose every value fits its
        field (keys >= 0, counts >= 1, limb numbers in ``[0, N_LIMBS)``, limb values
        ``|v| < 2**26``) and consistent shapes; anything else raises
        :class:`~swarmguard.errors.InvalidInputError` (never a silent cast)."""
        if not isinstance(state, dict):
            raise InvalidInputError(f"PairSums state must be a dict, got {type(state).__name__}")
        try:
            version = _int_array(state["version"], "version", 0, 1 << 31, ndim=0)
            if int(version) != _FORMAT_VERSION:
                raise InvalidInputError("unsupported PairSums format version")
            result = cls()
            for name, dtype, lo, hi in (("keys", np.int64, 0, 1 << 63), ("counts", np.int64, 1, 1 << 63),
                                        ("entry_pair", np.int64, 0, 1 << 63),
                                        ("entry_limb", np.int16, 0, N_LIMBS),
                                        ("entry_value", np.int32, -(1 << LIMB_BITS) + 1, 1 << LIMB_BITS)):
                setattr(result, name, _int_array(state[name], name, lo, hi).astype(dtype))
        except KeyError as exc:
            raise InvalidInputError(f"PairSums state lacks field {exc}") from exc
        n = result.keys.size
        if (result.counts.shape != (n,) or len({result.entry_pair.size, result.entry_limb.size,
                                                   result.entry_value.size}) != 1
                or (n and np.any(np.diff(result.keys) <= 0))
                or (result.entry_pair.size and (result.entry_pair.min() < 0 or result.entry_pair.max() >= n))):
            raise InvalidInputError("PairSums state is inconsistent")
        return result


def _int_array(value: Any, name: str, lo: int, hi: int, ndim: int = 1) -> np.ndarray:
    """``value`` as an integer array of ``ndim`` dimensions with every entry in ``[lo, hi)``."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} is malformed: {exc}") from exc
    if arr.dtype.kind not in "iu" or arr.ndim != ndim:
        raise InvalidInputError(f"{name} must be a {ndim}-D integer array, got dtype {arr.dtype}, "
                                f"shape {arr.shape}")
    if arr.size and (int(arr.min()) < lo or int(arr.max()) >= hi):
        raise InvalidInputError(f"{name} holds values outside [{lo}, {hi})")
    return arr


def _window(index: np.ndarray, value: np.ndarray) -> tuple[int, int]:
    """First limb and width of a dense window over ``index``, with headroom: the carry of
    fewer than 2**26 terms of < 2**26 fits one more limb, plus one spare for the sign;
    values that :func:`grouped_limb_sums` must split (>= 2**26) reach 2 limbs further."""
    nonzero = value != 0  # zeros sit at limb 0 and must not stretch the window
    if not nonzero.any():
        return 0, 1
    base = int(index.min(where=nonzero, initial=1 << 20))
    top = int(index.max(where=nonzero, initial=-1))
    headroom = 2 + (index.size >= (1 << 26)) + 2 * bool(np.abs(value).max() > (1 << 26) - 1)
    return base, top - base + 1 + headroom


def _dense_chunks(group: np.ndarray, index: np.ndarray, value: np.ndarray, n_groups: int):
    """Yield (lo, hi, base, sums) with ``sums`` the (width, hi - lo) exact limb sums
    of groups ``lo..hi-1``; chunks keep the dense window within the cell budget."""
    if n_groups == 0:
        return
    base, width = _window(index, value)
    per_chunk = max(1, _CELL_BUDGET // width)
    if n_groups <= per_chunk:
        _, sums = grouped_limb_sums(group, index, value, n_groups, base=base, width=width)
        yield 0, n_groups, base, sums
        return
    chunk = group // per_chunk
    order = np.argsort(chunk, kind="stable")
    bounds = np.searchsorted(chunk[order], np.arange(0, n_groups // per_chunk + 2))
    for c in range(bounds.size - 1):
        lo, hi = c * per_chunk, min((c + 1) * per_chunk, n_groups)
        if lo >= hi:
            break
        sel = order[bounds[c]:bounds[c + 1]]
        _, sums = grouped_limb_sums(group[sel] - lo, index[sel], value[sel], hi - lo, base=base, width=width)
        yield lo, hi, base, sums


def _round_groups(group: np.ndarray, index: np.ndarray, value: np.ndarray, n_groups: int) -> np.ndarray:
    """Correctly rounded exact sum per group of limb entries, in chunks of groups."""
    out = np.zeros(n_groups, dtype=np.float64)
    for lo, hi, base, sums in _dense_chunks(group, index, value, n_groups):
        out[lo:hi] = round_limbs(sums, base)
    return out


def _totals_from_terms(unique, counts, pair, index, value, n_agents, prior):
    """Per-pair and per-agent correctly rounded totals from (pair, limb, value) terms."""
    agent, source = split_pair_key(unique)
    pair_total = np.zeros(unique.size)
    agent_count = np.bincount(agent, weights=counts, minlength=n_agents).astype(np.int64)
    prior_first, prior_limb = float_limbs(np.array([0.0 if prior is None else prior]))
    p_first = int(prior_first[0])
    live = index[value != 0]
    span = [live.min(), live.max()] if live.size else []
    if prior:  # a zero prior adds nothing and must not stretch the window to limb 0
        span += [p_first, p_first + 2]
    lo_all, hi_all = (int(min(span)), int(max(span))) if span else (0, 0)
    # Pair windows hold carries of one pair; an agent's sum of pairs may carry further.
    agent_base, agent_width = lo_all, hi_all - lo_all + 6 + 3
    agent_sums = np.zeros((agent_width, n_agents), dtype=np.int64)
    for p_lo, p_hi, base, sums in _dense_chunks(pair, index, value, unique.size):
        pair_total[p_lo:p_hi] = round_limbs(sums, base)
        seg_agent = agent[p_lo:p_hi]
        starts = np.flatnonzero(np.r_[True, seg_agent[1:] != seg_agent[:-1]])
        per_agent = np.add.reduceat(sums, starts, axis=1)
        agent_sums[base - agent_base: base - agent_base + sums.shape[0], seg_agent[starts]] += per_agent
    if prior:
        for j in range(3):
            agent_sums[p_first + j - agent_base] += prior_limb[j, 0]
    agent_total = round_limbs(agent_sums, agent_base) if n_agents else np.zeros(0)
    return agent, source, counts, pair_total, agent_count, agent_total
