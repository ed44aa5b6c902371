"""An implicit b-ary tree of mergeable moments over a flat array of leaf slots.

Leaves are slots holding one agent's latest feature vector (or nothing). Every
internal node holds the moments (count, offset from a common shift, centred
co-moment) of the occupied slots beneath it. Node ``j`` of level ``k`` covers
slots ``[j * b**k, (j + 1) * b**k)``; each level is one array segment padded to
a multiple of ``b``, so the children of every node of a level are a reshape.

How a change reaches the nodes
------------------------------
* A batch write (:meth:`SlotTree.write`) recomputes the nodes on the written
  slots' paths exactly, level by level, each from its ``b`` children.
* A per-item change (:meth:`insert`, :meth:`replace`, :meth:`remove`) applies
  an O(d²) rank-one/rank-two update to the *root* at once, so population
  scoring sees it immediately, and schedules the slot's path. Scheduled paths
  are recomputed exactly from their children, bottom-up, in one vectorised pass
  (:meth:`flush`): before any node below the root is read, after
  ``recompute_every`` changes, and as soon as the root's rounding-error budget
  is spent. A node recomputed from its children cannot drift, and the root is
  replaced by such a recomputation at every flush, so the error carried by the
  root is only that of the updates since the last flush.

The error budget is per feature: each feature's accumulated rounding bound
(``eps`` times its co-moment plus twice its squared step, summed over the
updates since the flush) is compared with ``1e-11`` of that feature's *current*
co-moment (floored at ``(n - 1) * 2**-100`` internal units, which is the
feature's own unit, not another feature's). So a feature of 1e-300 next to one
of 1e100 is never starved (each is measured in its own power-of-two unit), an
outlier entering spends its feature's budget at once, and so does an outlier
*leaving*: its removal cancels a co-moment ``2**k`` times the remainder, which
leaves an error ``eps * 2**k`` relative to what remains. A bound on the
diagonal also bounds the off-diagonal entries relative to
``sqrt(M2_jj M2_kk)`` (each step's ``|P_jk|`` is at most the geometric mean of
its diagonal bounds).

Units: a power of two per feature
---------------------------------
Deviations are stored in a per-feature power-of-two unit, chosen from the data
and kept inside a band; see :mod:`swarmguard.structures.slot_units`, which holds
the units' methods (a mixin of :class:`SlotTree`) and :func:`scale_outer`.
"""

from __future__ import annotations

import operator

import numpy as np

from ..values.moments import combine_groups
from .slot_units import (  # re-exported: the units lived here
    _HIGH,
    MAX_UNIT_EXPONENT,
    PowerOfTwoUnits,
    scale_outer,
)

__all__ = ["SlotTree", "scale_outer", "MAX_UNIT_EXPONENT"]

_EPS = np.finfo(np.float64).eps
_ERROR_BUDGET = 1e-11   # per feature, relative to its current co-moment (its own unit)
_ERROR_FLOOR = 2.0**-100  # per (n - 1), internal units: the co-moment a feature's budget is floored at
_SPEND = _EPS / _ERROR_BUDGET   # rounding bounds are booked in units of the budget
# ndarray.any() goes through a Python wrapper; the ufunc's reduce is the same test, a
# third of the time on a 10-vector (the per-item path makes several such tests)
_any = np.logical_or.reduce


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an int array by a sort (NumPy's hashing unique costs far more on
    the few or presorted indices of the per-item path)."""
    if a.size < 2:
        return a
    a = np.sort(a)
    keep = np.empty(a.size, dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


class _Scratch:
    """A reusable scratch buffer (or None). Not state: a pickled or deep-copied tree starts
    without one, so a checkpoint never carries a round's worth of scratch."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer: np.ndarray | None = None

    def __reduce__(self):
        return (_Scratch, ())


class SlotTree(PowerOfTwoUnits):
    """Flat-array b-ary tree of moments over ``capacity`` leaf slots.

    Parameters
    ----------
    dim : int
        Number of features.
    branching : int
        Children per internal node (>= 2).
    min_levels : int
        The tree always has at least this many internal levels, so that the
        nodes of level ``min_levels`` (pages of ``branching**min_levels``
        slots) exist for cohort bookkeeping.
    recompute_every : int
        Most per-item changes between exact recomputations.

    Examples
    --------
    >>> import numpy as np
    >>> t = SlotTree(dim=2, branching=2, min_levels=1)
    >>> t.write(np.array([0, 1, 2]), np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 1.0]]))
    >>> t.replace(2, np.array([5.0, 4.0]))
    >>> n, mean, m2 = t.root_moments()
    >>> int(n), mean.tolist()
    (3, [3.0, 1.3333333333333333])
    """

    def __init__(self, dim: int, branching: int, min_levels: int = 1, recompute_every: int = 65536):
        self.dim = dim
        self.b = branching
        self.min_levels = max(1, min_levels)
        self.recompute_every = max(1, recompute_every)
        self.capacity = 0
        self.levels = 0
        self.shift = np.zeros(dim)
        self.unit = np.ones(dim)        # internal = (x - shift) * unit, a power of two per feature
        self._limit = np.full(dim, _HIGH)   # |x - shift| beyond: choose the units again
        self.exponent = np.zeros(dim, dtype=np.int64)   # unit = 2**-exponent
        self._var_at_unit = np.zeros(dim)   # scaled variance when the unit was chosen (0: constant)
        self._unit_known = np.zeros(dim, dtype=bool)   # False: every stored value is 0 (placeholder unit)
        self._all_known = False
        self.unit_choices = 0           # work counter: times the units were chosen again
        self.X = np.zeros((0, dim))
        self.occupied = np.zeros(0, dtype=bool)
        self.cnt = np.zeros(0)
        self.off = np.zeros((0, dim))
        self.m2 = np.zeros((0, dim, dim))
        self.level_base: list[int] = []   # level k (1..L) starts at level_base[k-1]
        self.level_size: list[int] = []   # nodes of level k, padded to a multiple of b below the root
        self._dirty: list[int] = []
        self._root = -1
        self._root_off = np.zeros(dim)
        self._root_m2 = np.zeros((dim, dim))
        self._root_diag = self._root_m2.diagonal()
        self._root_n = 0.0
        self._spent = np.zeros(dim)     # per feature: rounding bound of the root's co-moment since the flush / budget
        self.per_item_changes = 0
        self.flushes = 0
        self.nodes_recomputed = 0       # work counter: nodes rebuilt from their children
        self._spare = _Scratch()        # scratch of the batch passes, kept for the next (_scratch)

    # ------------------------------------------------------------------ layout
    def _layout(self, capacity: int) -> None:
        b = self.b
        sizes = []
        m = -(-capacity // b)                     # nodes of level 1
        while True:
            if m == 1 and len(sizes) >= self.min_levels - 1:
                sizes.append(1)                   # the root
                break
            padded = -(-m // b) * b               # pad so the next level's children are a reshape
            sizes.append(padded)
            m = padded // b
        self.levels = len(sizes)
        self.level_size = sizes
        self.level_base = [int(v) for v in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
        total = int(sum(sizes))
        self.cnt = np.zeros(total)
        self.off = np.zeros((total, self.dim))
        self.m2 = np.zeros((total, self.dim, self.dim))
        self._root = self.level_base[-1]
        self._bind_root_views()

    def _bind_root_views(self) -> None:
        # Views: per-item updates write through to the flat store, and the budget
        # check reads the diagonal in O(d) without making a new view each time.
        self._root_off = self.off[self._root]
        self._root_m2 = self.m2[self._root]
        self._root_diag = self._root_m2.diagonal()

    # A pickled or deep-copied array view becomes an independent copy, so a copy
    # of the tree would update its root aside from the store it reads: the views
    # are left out of the state and bound again to the copy's own store.
    _ROOT_VIEWS = ("_root_off", "_root_m2", "_root_diag")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._root >= 0:
            for name in self._ROOT_VIEWS:
                del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._root >= 0:
            self._bind_root_views()

    def ensure_capacity(self, n_slots: int) -> None:
        """Grow (doubling) so slots ``0 .. n_slots-1`` exist; re-anchors and rebuilds."""
        if n_slots <= self.capacity:
            return
        multiple = self.b ** self.min_levels   # whole pages, whole level-1 nodes
        cap = max(n_slots, 2 * self.capacity, multiple)
        cap = -(-cap // multiple) * multiple
        self._layout(cap)
        cap = self.level_size[0] * self.b
        X = np.zeros((cap, self.dim))
        X[: self.capacity] = self.X
        occ = np.zeros(cap, dtype=bool)
        occ[: self.capacity] = self.occupied
        self.X, self.occupied, self.capacity = X, occ, cap
        self.rebuild()

    def level_nodes(self, level: int) -> slice:
        """Slice of the flat store holding the nodes of ``level`` (1-based)."""
        return slice(self.level_base[level - 1], self.level_base[level - 1] + self.level_size[level - 1])

    # ------------------------------------------------------------------ exact recomputation
    def _recompute_level1(self, nodes: np.ndarray | None) -> None:
        b, d = self.b, self.dim
        Xv = self.X.reshape(-1, b, d)
        occ = self.occupied.reshape(-1, b)
        if nodes is not None:
            Xv, occ = Xv[nodes], occ[nodes]
        D = np.subtract(Xv, self.shift, out=self._scratch(Xv.shape) if nodes is None else None)
        D *= self.unit                            # exact: a power of two per feature
        full = bool(occ.all())
        if not full:
            D *= occ[..., None]
        n = occ.sum(axis=1).astype(np.float64)
        safe = np.where(n > 0, n, 1.0)
        # Data are shifted near the mean, so one pass gives a mean whose error
        # enters the co-moment only squared.
        mean = D.sum(axis=1) / safe[:, None]
        # The centred deviations twice, in two arrays: NumPy multiplies a stack by its own
        # transpose with one SYRK call per node, which on these small blocks is about twice
        # as slow as the GEMM it uses for two operands (the same sums, product by product).
        C = np.subtract(D, mean[:, None, :])
        D -= mean[:, None, :]
        if not full:
            D *= occ[..., None]
            C *= occ[..., None]
        idx = self.level_nodes(1) if nodes is None else self.level_base[0] + nodes
        self.nodes_recomputed += n.shape[0]
        self.cnt[idx] = n
        self.off[idx] = mean
        if nodes is None:           # the level's segment is a view: the product goes straight there
            np.matmul(D.transpose(0, 2, 1), C, out=self.m2[idx])
            self.keep_scratch(C)
        else:
            self.m2[idx] = np.matmul(D.transpose(0, 2, 1), C)

    def _recompute_level(self, level: int, nodes: np.ndarray | None) -> None:
        b, d = self.b, self.dim
        child = self.level_nodes(level - 1)
        counts = self.cnt[child].reshape(-1, b)
        offs = self.off[child].reshape(-1, b, d)
        m2s = self.m2[child].reshape(-1, b, d, d)
        if nodes is not None:
            counts, offs, m2s = counts[nodes], offs[nodes], m2s[nodes]
        n, off, m2 = combine_groups(counts, offs, m2s)
        base = self.level_base[level - 1]
        # The segment may be padded past the nodes that have children.
        idx = slice(base, base + n.shape[0]) if nodes is None else base + nodes
        self.nodes_recomputed += n.shape[0]
        self.cnt[idx], self.off[idx], self.m2[idx] = n, off, m2

    def _recompute_from_slots(self, slots: np.ndarray) -> None:
        if slots.size * 4 >= self.capacity:       # most of the tree: recompute it all
            self._recompute_all()
            return
        nodes = self._parents(slots, 1)
        self._recompute_level1(nodes)
        for level in range(2, self.levels + 1):
            nodes = self._parents(nodes, level)
            self._recompute_level(level, nodes)
        self._reset_root_tracking()

    def _parents(self, children: np.ndarray, level: int) -> np.ndarray:
        """The distinct nodes of ``level`` above ``children`` (slots or nodes of the level below), sorted.

        A few (a flush after some per-item changes): a sort of those few. Many: a mark
        array over the level, O(level size) but no sort. The same nodes either way.
        """
        parents = children // self.b
        size = self.level_size[level - 1]
        if parents.size * 64 < size:
            return _sorted_unique(parents)
        mark = np.zeros(size, dtype=bool)
        mark[parents] = True
        return np.flatnonzero(mark)

    def _recompute_all(self, reanchor: bool = True) -> None:
        self._recompute_level1(None)
        for level in range(2, self.levels + 1):
            self._recompute_level(level, None)
        self._reset_root_tracking(reanchor)

    def _reset_root_tracking(self, reanchor: bool = True) -> None:
        self._dirty.clear()
        self._root_n = float(self.cnt[self._root])
        diag = self._root_m2.diagonal()
        total = float(diag.sum())
        self._spent[:] = 0.0
        # Re-anchor when the population has wandered far (in its own standard
        # deviations) from the shift, where deviations would start losing digits.
        n = self._root_n
        if reanchor and n > 1 and total > 0:
            off = self._root_off
            # each feature against its own co-moment (floored as its error budget is, in its
            # own unit): a floor from the trace of all features would measure a feature whose
            # spread collapsed (an outlier left) against the others' and never re-anchor it
            inv_scale = 1.0 / np.maximum(diag, _ERROR_FLOOR * (n - 1.0))
            far = float((off * off) @ inv_scale) * (n - 1) > 1e6 * self.dim
            if far:
                self.rebuild()
                return
        if reanchor and n > 1 and self._units_stale(diag, n):
            self.rebuild()

    def row_deviations(self, X: np.ndarray) -> np.ndarray:
        """:meth:`deviations` of many rows, in the tree's scratch array (the batch scoring's).

        The result is the caller's until it hands it back with :meth:`keep_scratch`
        (or drops it). A fresh array of a round's size costs a page fault per
        4 KiB, about as much again as the pass that fills it: a round reuses one.
        """
        D = np.subtract(X, self.shift, out=self._scratch(X.shape))
        D *= self.unit
        return D

    def _scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised float array of ``shape``: a view of the kept scratch when it is large enough."""
        spare, self._spare.buffer = self._spare.buffer, None
        size = int(np.prod(shape))
        if spare is None or spare.size < size:
            return np.empty(shape)
        return spare[:size].reshape(shape)

    def keep_scratch(self, used: np.ndarray) -> None:
        """Keep the buffer under ``used`` (an array of :meth:`row_deviations` or of a batch pass,
        whose values nobody reads any more) for the next batch pass; the larger one is kept."""
        base = used if used.base is None else used.base
        if (isinstance(base, np.ndarray) and base.dtype == np.float64 and base.flags.c_contiguous
                and base.flags.writeable and (self._spare.buffer is None or base.size > self._spare.buffer.size)):
            self._spare.buffer = base.reshape(-1)

    def rebuild(self) -> None:
        """Re-anchor the shift at the current mean and recompute every node from the leaves."""
        if self.capacity == 0:
            return
        if not self.occupied.any():              # nothing to aggregate: the fresh layout is all zeros
            self._reset_root_tracking(reanchor=False)
            return
        occupied = self.X[self.occupied]
        self.shift = occupied.mean(axis=0)
        self._choose_units(occupied - self.shift)
        self._recompute_all(reanchor=False)
        self._var_at_unit = self._root_m2.diagonal() * (1.0 / max(self._root_n - 1.0, 1.0))

    # ------------------------------------------------------------------ exact restore
    def anchor_state(self) -> dict[str, np.ndarray]:
        """The shift and units the nodes' moments are kept in, with what the band checks compare
        against (``var_at_unit``) and the capacity: with these and the same leaves in the same
        slots, :meth:`restore_anchor` recomputes every node bitwise as this tree holds it
        after a flush (nodes are exact recomputations from their children), and the tree's
        later rescaling decisions are this tree's."""
        return {"shift": self.shift.copy(), "exponent": self.exponent.copy(),
                "unit_known": self._unit_known.copy(), "var_at_unit": self._var_at_unit.copy(),
                "capacity": np.array(self.capacity, dtype=np.int64)}

    def restore_anchor(self, shift: np.ndarray, exponent: np.ndarray, unit_known: np.ndarray,
                       var_at_unit: np.ndarray) -> None:
        """Take :meth:`anchor_state`'s shift and units (checked by the caller: shapes ``(dim,)``,
        finite, exponents within the units' range) and recompute every node in them."""
        self.shift = np.array(shift, dtype=np.float64)
        self.exponent = np.array(exponent, dtype=np.int64)
        self.unit = np.ldexp(1.0, -self.exponent)
        with np.errstate(over="ignore"):
            self._limit = np.ldexp(_HIGH, self.exponent)
        self._unit_known = np.array(unit_known, dtype=bool)
        self._all_known = bool(self._unit_known.all())
        if self.capacity:
            self._recompute_all(reanchor=False)
        self._var_at_unit = np.array(var_at_unit, dtype=np.float64)

    def flush(self) -> None:
        """Recompute, exactly from children, every node on a path changed per item."""
        if self._dirty:
            slots = np.fromiter(self._dirty, dtype=np.int64, count=len(self._dirty))
            self._recompute_from_slots(slots)
            self.flushes += 1

    @property
    def pending(self) -> int:
        """Per-item changes not yet recomputed below the root."""
        return len(self._dirty)

    # ------------------------------------------------------------------ batch writes
    def write(self, slots: np.ndarray, X: np.ndarray | None, bound: float | None = None) -> None:
        """Set (X given) or clear (X None) many slots, then recompute their paths exactly.

        ``bound``: a bound on every ``|x|`` of ``X`` if the caller knows one (the
        validator's), which spares the band check its pass over the columns."""
        if slots.size == 0:
            return
        self.ensure_capacity(int(slots.max()) + 1)
        pending = self._dirty.copy()
        first = X is not None and self._root_n == 0
        if first:
            self.shift = X.mean(axis=0)           # anchor the shift near the data
            self._choose_units(X - self.shift)
        elif X is not None and not self._all_known:
            self._adopt_units(X)                  # the shift of such a feature is 0: X is its deviation
        rescale = X is not None and self._too_far(X, bound)
        if X is None:
            self.occupied[slots] = False
            self.X[slots] = 0.0
        else:
            self.X[slots] = X
            self.occupied[slots] = True
        if rescale:                               # far outside the units: choose them again, O(state)
            self.rebuild()
            return
        if pending:
            slots = np.concatenate([slots, np.asarray(pending, dtype=np.int64)])
        self._recompute_from_slots(slots)
        if first:
            self._var_at_unit = self._root_m2.diagonal() * (1.0 / max(self._root_n - 1.0, 1.0))

    # ------------------------------------------------------------------ per-item path
    def _after_change(self, slot: int, step2: np.ndarray, roundings: float) -> None:
        """Book a per-item change: its rounding bound per feature, and flush when one feature's budget is spent.

        ``step2`` (a scratch array, overwritten) bounds each feature's step on the
        co-moment (``|P_jk| <= sqrt(step2_j step2_k)``); ``roundings`` is how many
        times the co-moment was rounded (1 or 2). Each rounding is relative to its
        result plus the step, so a co-moment that just collapsed (an outlier
        leaving) is measured against what remains of it.
        """
        dirty = self._dirty
        dirty.append(slot)
        self.per_item_changes += 1
        diag = self._root_diag
        step2 += diag
        step2 *= roundings * _SPEND
        spent = self._spent
        spent += step2
        # Spent below the co-moment itself is below the floored one too: the floor (one
        # more array operation) is needed only where a feature's spend has reached its M2.
        # (Python floats for the d-vector test: cheaper than a NumPy reduction's set-up.)
        if len(dirty) >= self.recompute_every or (
                any(map(operator.gt, spent.tolist(), diag.tolist()))
                and _any(spent > np.maximum(diag, _ERROR_FLOOR * max(self._root_n - 1.0, 1.0)))):
            self.flush()

    def _write_and_rebuild(self, slot: int, x: np.ndarray) -> None:
        """A per-item change far outside the units: store it and rebuild (new units), O(state)."""
        self.X[slot] = x
        self.occupied[slot] = True
        self.per_item_changes += 1
        self.rebuild()

    def replace(self, slot: int, x: np.ndarray) -> None:
        """Replace the vector of an occupied slot (count unchanged)."""
        xo = self.X[slot]
        if not self._all_known:
            self._adopt_units(x)                  # before the band check: its unit comes from its own value
        if self._too_far(x):
            self._write_and_rebuild(slot, x)
            return
        n = self._root_n
        s = (x - xo) * self.unit
        c = (xo - self.shift) * self.unit - self._root_off   # old vector against the old mean
        w = c + s * (0.5 * (1.0 - 1.0 / n))
        # M2' = M2 + a aᵀ - c cᵀ - s sᵀ / n  with a = c + s,  = M2 + w sᵀ + s wᵀ
        P = w[:, None] * s
        m2 = self._root_m2
        m2 += P
        m2 += P.T
        self._root_off += s * (1.0 / n)
        self.X[slot] = x
        # Cauchy–Schwarz on (w_j, s_j) and (s_k, w_k): |P_jk + P_kj| <= sqrt(h_j h_k) with
        # h = w² + s² (also |2 w_j s_j| <= h_j on the diagonal); at most (|w| + |s|)², two
        # array operations fewer
        h = w * w
        h += s * s
        self._after_change(slot, h, 2.0)

    def insert(self, slot: int, x: np.ndarray) -> None:
        """Occupy an empty slot with ``x``."""
        n = self._root_n
        if n == 0:
            self.shift = x.copy()                 # anchor the shift near the data
            self._choose_units(np.zeros((1, self.dim)))
            self._var_at_unit = np.zeros(self.dim)
        else:
            if not self._all_known:
                self._adopt_units(x)              # before the band check: its unit comes from its own value
            if self._too_far(x):
                self._write_and_rebuild(slot, x)
                return
        delta = (x - self.shift) * self.unit - self._root_off
        n1 = n + 1.0
        self._root_off += delta * (1.0 / n1)
        scale = n / n1
        self._root_m2 += delta[:, None] * (delta * scale)   # the outer product (broadcast: cheaper)
        self._root_n = n1
        self.cnt[self._root] = n1
        self.X[slot] = x
        self.occupied[slot] = True
        step2 = delta * delta
        step2 *= 2.0 * scale
        self._after_change(slot, step2, 1.0)

    def remove(self, slot: int) -> None:
        """Empty an occupied slot."""
        n = self._root_n
        n1 = n - 1.0
        if n1 <= 0:
            self._root_off[:] = 0.0
            self._root_m2[:] = 0.0
            self._spent[:] = 0.0                  # exactly the empty state
            step2 = np.zeros(self.dim)
        else:
            d = (self.X[slot] - self.shift) * self.unit
            prev = self._root_off - (d - self._root_off) * (1.0 / n1)
            delta = d - prev
            scale = n1 / n
            self._root_m2 -= delta[:, None] * (delta * scale)
            self._root_off[:] = prev
            step2 = delta * delta
            step2 *= 2.0 * scale
        self._root_n = n1
        self.cnt[self._root] = n1
        self.X[slot] = 0.0
        self.occupied[slot] = False
        self._after_change(slot, step2, 1.0)

    # ------------------------------------------------------------------ reads
    def occupied_at(self, slots: np.ndarray) -> np.ndarray:
        """Whether each of ``slots`` holds a member (a slot past the capacity holds none)."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.zeros(slots.shape, dtype=bool)
        inside = slots < self.capacity
        out[inside] = self.occupied[slots[inside]]
        return out

    def root_moments(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, mean, M2) of all occupied slots in the caller's units, current to the last change."""
        if self.capacity == 0:
            return 0.0, np.zeros(self.dim), np.zeros((self.dim, self.dim))
        mean, m2 = self.to_user(self._root_off, self._root_m2)
        return self._root_n, mean, m2

    def nodes_moments(self, level: int, nodes: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Merged (count, mean, M2) of the given nodes of one level, in the caller's units (flushes first)."""
        n, off, m2 = self.nodes_state(level, nodes)
        mean, m2 = self.to_user(off, m2)
        return n, mean, m2

    def nodes_state(self, level: int, nodes: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Merged (count, offset from ``shift``, M2) of the given nodes of one level, internal units (flushes first)."""
        self.flush()
        return self.covered_state(self.node_cover(level, nodes))

    def node_cover(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """Flat indices of the fewest nodes that cover the given distinct nodes of ``level`` exactly.

        Wherever all ``b`` children of a node are given, the node itself stands for
        them (after a flush every node is the merge of its children), level by level
        upward: a cohort holding 5,000 contiguous pages merges a few dozen nodes.
        The cover holds while the layout does (until the capacity grows).

        >>> import numpy as np
        >>> t = SlotTree(dim=1, branching=2, min_levels=1)
        >>> t.write(np.arange(8), np.arange(8.0)[:, None])
        >>> t.node_cover(1, np.array([0, 1, 2])).tolist()   # nodes 0, 1 of level 1 -> node 0 of level 2
        [2, 4]
        """
        b = self.b
        nodes = _sorted_unique(np.asarray(nodes, dtype=np.int64))
        out = []
        for lv in range(level, self.levels):
            if nodes.size < b:
                break
            parent = nodes // b
            first = np.empty(parent.size, dtype=bool)    # where a run of siblings starts
            first[0] = True
            np.not_equal(parent[1:], parent[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            runs = np.diff(starts, append=parent.size)
            full = runs == b                              # every child given
            if not full.any():
                break
            out.append(self.level_base[lv - 1] + nodes[~np.repeat(full, runs)])
            nodes = parent[starts[full]]
            level = lv + 1
        out.append(self.level_base[level - 1] + nodes)
        return np.concatenate(out) if len(out) > 1 else out[0]

    def covered_state(self, cover: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Merged (count, offset from ``shift``, M2) of the nodes at flat indices ``cover``
        (from :meth:`node_cover`), internal units (flushes first)."""
        self.flush()
        if cover.size == 0:
            return 0.0, np.zeros(self.dim), np.zeros((self.dim, self.dim))
        n, off, m2 = combine_groups(self.cnt[cover], self.off[cover], self.m2[cover])
        return float(n), off, m2

    def root_state(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, offset from ``shift``, M2) of the root in internal units: views, current to the last change.

        Deviations of an agent are ``deviations(x) - offset``: two roundings, each
        relative to a small number, where ``x - (shift + offset)`` would round
        the mean at the data's magnitude first.
        """
        return self._root_n, self._root_off, self._root_m2
