"""Per-node tail sketches over the tree's leaf slots, merged up like the moments.

The tree's slots are grouped in pages (a cohort owns whole pages,
:mod:`swarmguard.structures.cohorts`). Every page holds the
:class:`~swarmguard.structures.tail_sketch.FeatureSketches` of its occupied
slots' vectors; above the pages, node ``j`` of level ``l`` is the merge of
nodes ``b j .. b j + b - 1`` of level ``l - 1``, up to one root: the
population's sketches. A cohort's sketches are the merge of its pages'.

Changes: a write marks the written slots' pages (O(1) per slot); the next read
(:meth:`SketchTree.refresh`) rebuilds each marked page from its members'
current vectors and re-merges the marked pages' ancestors -- O(log n) merges
per changed page. Removal and replacement are *rebuilds*, never a deletion
(sketches have none): a node sketches exactly its members as of its last rebuild.

Per-item changes (the streaming path) are batched: a re-merge up the tree costs
milliseconds (``b`` merges of sketches of a few thousand values per level), so
after a batch write the next read always refreshes, but per-item changes are
applied once more than ``n // 10,000`` of them are pending (:data:`ITEM_SLACK`).
Between refreshes a read sees the sketches without the pending changes: each
changed member is counted at its previous value (or not at all when new), so
every count is off by at most the number of pending changes, ``n / 10,000`` --
a tail probability by at most ``1e-4`` -- and the per-item and batch paths read
the same sketches, so they answer alike.

Values are sketched in the moments' internal units (``(x - shift) · 2**-e``
per feature, :mod:`swarmguard.structures.slot_tree`): a monotone increasing map,
so every tail probability is the same as in the caller's units, while the
values sit near 1 where float32 (the sketch's type) resolves them to about
``6e-8`` of the feature's spread. When the tree chooses its units or shift
again, every page is rebuilt (O(n), as the moments' own rebuild).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError
from .tail_sketch import DEFAULT_SKETCH_K, FeatureSketches, checked_sketch_k

__all__ = ["SketchTree", "ITEM_SLACK"]

ITEM_SLACK = 10_000     # per-item changes wait until more than n // ITEM_SLACK are pending


def _checked_count(name: str, value, least: int) -> int:
    """``value`` as an int if it is an integer (not a bool: ``True`` is no page size) of at least
    ``least``; raises :class:`InvalidTypeError` or :class:`InvalidInputError` otherwise."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < least:
        raise InvalidInputError(f"{name} must be at least {least}, got {value!r}")
    return int(value)


class SketchTree:
    """Feature sketches per page and per node above the pages.

    Parameters
    ----------
    features, page_size, branching
        Features per vector, slots per page, children per node above the pages: integers
        (``bool`` is not one), at least 1, 1 and 2 (a node of one child would never merge
        up to a root).
    k
        The sketches' accuracy parameter.

    Raises
    ------
    InvalidTypeError
        A shape argument that is not an integer.
    InvalidInputError
        One below its least value, or a ``k`` the sketches cannot keep.
    """

    def __init__(self, features: int, page_size: int, branching: int, k: int = DEFAULT_SKETCH_K):
        # checked here, not at the first read that builds a page's sketch (which would fail a query)
        features = _checked_count("features", features, 1)
        page_size = _checked_count("page_size", page_size, 1)
        branching = _checked_count("branching", branching, 2)
        k = checked_sketch_k(k)
        self.features, self.page_size, self.b, self.k = features, page_size, branching, k
        self._levels: list[list[FeatureSketches | None]] = [[]]   # [0]: pages
        self._dirty = np.zeros(0, dtype=bool)
        self._units: tuple[bytes, bytes] | None = None
        self._forced = True             # a batch write is pending: the next read refreshes
        self._pending_items = 0         # per-item changes not yet applied
        self.rebuilt_pages = 0          # work counter

    def mark(self, slots: np.ndarray | int, per_item: bool = False) -> None:
        """The pages of ``slots`` changed: rebuilt on the next read, or -- ``per_item`` changes --
        once more than ``n // ITEM_SLACK`` are pending."""
        if per_item:
            self._pending_items += 1
        else:
            self._forced = True
        pages = np.unique(np.atleast_1d(np.asarray(slots, dtype=np.int64)) // self.page_size)
        if pages.size == 0:
            return
        if pages[-1] >= self._dirty.size:
            self._dirty = np.concatenate([self._dirty, np.zeros(int(pages[-1]) + 1 - self._dirty.size, dtype=bool)])
        self._dirty[pages] = True

    def mark_all(self) -> None:
        self._dirty[:] = True
        self._units = None
        self._forced = True

    def refresh(self, X: np.ndarray, occupied: np.ndarray, shift: np.ndarray, unit: np.ndarray,
                members: float = 0.0, inside: np.ndarray | None = None) -> None:
        """Bring every marked page and its ancestors up to date with the slots' vectors ``X``
        (per-item changes only once more than ``members // ITEM_SLACK`` are pending).

        ``inside``: when given, only the occupied slots where it is True are sketched (a
        window's members; slots beyond its length are outside). The caller marks the slots
        whose ``inside`` changes."""
        units = (np.asarray(shift, dtype=np.float64).tobytes(), np.asarray(unit, dtype=np.float64).tobytes())
        if (not self._forced and units == self._units and self._levels[-1]
                and self._pending_items <= int(members) // ITEM_SLACK):
            return
        self._forced, self._pending_items = False, 0
        n_pages = -(-occupied.size // self.page_size)
        if self._dirty.size < n_pages:
            self._dirty = np.concatenate([self._dirty, np.ones(n_pages - self._dirty.size, dtype=bool)])
        if units != self._units:
            self._dirty[:] = True
            self._units = units
        pages = np.flatnonzero(self._dirty[:n_pages])
        if pages.size == 0 and self._levels[-1]:
            return
        level0 = self._levels[0]
        level0.extend([None] * (n_pages - len(level0)))
        for p in pages.tolist():
            lo, hi = p * self.page_size, min((p + 1) * self.page_size, occupied.size)
            rows = lo + np.flatnonzero(occupied[lo:hi])
            if inside is not None:
                rows = rows[rows < inside.size]
                rows = rows[inside[rows]]
            sketch = FeatureSketches(self.features, self.k)
            if rows.size:
                sketch.update_many((X[rows] - shift) * unit)
            level0[p] = sketch
        self.rebuilt_pages += int(pages.size)
        self._dirty[:] = False
        # re-merge the ancestors of the changed pages, level by level (pages are only ever added)
        changed, level = pages, 0
        while level == 0 or len(self._levels[level]) > 1:
            below = self._levels[level]
            width = -(-len(below) // self.b)
            if level + 1 == len(self._levels):
                self._levels.append([None] * width)
                parents = np.arange(width)
            else:
                above = self._levels[level + 1]
                grown = width - len(above)
                above.extend([None] * max(grown, 0))
                parents = np.unique(changed // self.b)
                if grown > 0:
                    parents = np.union1d(parents, np.arange(width - grown, width))
            above = self._levels[level + 1]
            for j in parents.tolist():
                node = FeatureSketches(self.features, self.k)
                for child in below[j * self.b: (j + 1) * self.b]:
                    if child is not None:
                        node.merge(child)
                above[j] = node
            changed, level = parents, level + 1
        del self._levels[level + 1:]

    def root(self) -> FeatureSketches:
        """The population's sketches (after :meth:`refresh`)."""
        top = self._levels[-1]
        return top[0] if top and top[0] is not None else FeatureSketches(self.features, self.k)

    def pages_merged(self, pages: np.ndarray) -> FeatureSketches:
        """The merge of the given pages' sketches (a cohort's), after :meth:`refresh`."""
        out = FeatureSketches(self.features, self.k)
        level0 = self._levels[0]
        for p in np.asarray(pages, dtype=np.int64).tolist():
            if p < len(level0) and level0[p] is not None:
                out.merge(level0[p])
        return out
