"""``HierarchicalStatisticalTree``: the guide's Solution 1 population tree.

This module holds the tree's layout, its per-item and batch writes and its
full-moment statistics; the checks of its inputs are in
:mod:`swarmguard.api.tree_inputs`, its trimmed / windowed / tail-sketch moments
in :mod:`swarmguard.api.tree_secondary`, its dict form in
:mod:`swarmguard.api.tree_state`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np

from ..errors import (
    DimensionMismatchError,
    EmptyInputError,
    InvalidInputError,
    UnknownAgentError,
)
from ..locking import Locked, synchronized
from ..structures.cohorts import CohortDirectory
from ..structures.sketch_tree import SketchTree
from ..structures.slot_tree import SlotTree
from ..structures.trimming import TrimmedMoments
from ..structures.window import WindowedMoments
from ..validation import (
    as_feature_vector,
    check_agent_id,
    check_cohort,
    check_feature_matrix,
    check_positive_int,
)
from ..values.id_index import SlotMap
from ..values.moments import population_statistics
from .tree_inputs import (  # re-exported: the settings' and the inputs' checks lived here
    MAX_BRANCHING,
    Path,
    TreeSettings,
    check_agent_ids,
    cohort_rows,
    validate_tree_settings,
)
from .tree_secondary import SecondaryMoments
from .tree_state import tree_from_dict, tree_to_dict

__all__ = ["HierarchicalStatisticalTree", "Path", "TreeSettings", "validate_tree_settings", "MAX_BRANCHING"]

_PAGE_TARGET = 256  # a cohort claims the largest power of b slots not above this (100 for b = 10)


def _page_levels(b: int) -> int:
    levels, size = 1, b
    while size * b <= _PAGE_TARGET:
        levels, size = levels + 1, size * b
    return levels


class HierarchicalStatisticalTree(SecondaryMoments, Locked):
    """Mergeable population statistics in a tree of cohorts.

    Each agent's latest feature vector is a leaf; every internal node holds the
    merged moments (count, mean, co-moment) of its subtree; the root is the
    whole population. Replacing one agent's vector touches only the
    ``log_b(n)`` nodes on its path, each in O(d²).

    Agents are placed automatically (first free slot of their cohort, in order
    of arrival); a cohort path such as ``("eu-west", "cluster-7")`` places an
    agent under named cohort nodes, each with statistics of its own.

    Parameters
    ----------
    branching_factor : int, default 10
        Children per node.
    feature_dimensions : int, optional
        Features per agent; fixed by the first vector seen when omitted.
    recompute_every : int, default 65536
        Most per-item updates between exact recomputations of the nodes they
        touched (see :mod:`swarmguard.structures.slot_tree`): each per-item
        update reaches the population's moments at once; the nodes below are
        recomputed from their children in batches, and always before they are
        read, so statistics returned by the ``get_*`` methods are exact.
    window_rounds : int, optional
        Also keep *windowed* moments: those of the members whose latest vector
        was written in the last ``window_rounds`` rounds (every batch write
        opens a round; :meth:`advance_round` opens one for per-item callers),
        so that agents are scored against a population that follows drift
        (:mod:`swarmguard.structures.window`). None (the default): no window.

    Every public method runs under the tree's lock (:mod:`swarmguard.locking`):
    a tree may be shared between threads, and a refused call changes nothing.

    Examples
    --------
    >>> import numpy as np
    >>> tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=2)
    >>> tree.update_many([1, 2, 3], np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]]))
    >>> tree.update_agent("x", [2.0, 2.0], cohort=("eu-west", "cluster-7"))
    >>> stats = tree.get_global_statistics()
    >>> int(stats["count"]), stats["mean"].tolist()
    (4, [2.0, 2.0])
    >>> int(tree.get_cohort_statistics(("eu-west",))["count"])
    1
    >>> tree.remove_agent(3); len(tree)
    3
    """

    def __init__(
        self,
        branching_factor: int = 10,
        feature_dimensions: int | None = None,
        *,
        recompute_every: int = 65536,
        window_rounds: int | None = None,
    ):
        super().__init__()
        checked = validate_tree_settings(branching_factor, feature_dimensions, recompute_every=recompute_every,
                                         window_rounds=window_rounds)
        self.branching_factor = checked.branching_factor
        feature_dimensions = checked.feature_dimensions
        self.recompute_every = checked.recompute_every
        self.window_rounds = checked.window_rounds
        self._win: WindowedMoments | None = None    # windowed moments, when window_rounds is given
        self._dim = feature_dimensions
        self._page_levels = _page_levels(self.branching_factor)
        self._page_size = self.branching_factor ** self._page_levels
        self._index = SlotMap()
        self._cohorts = CohortDirectory(self._page_size)
        self._ids_at_slot = np.empty(0, dtype=object)
        self._tree: SlotTree | None = None
        self._covers: dict[int, tuple[tuple[int, ...], np.ndarray]] = {}   # cohort -> (key, node cover)
        self._trim: TrimmedMoments | None = None   # trimmed moments, once a scoring mode asks for them
        self._trim_wanted = False                   # asked for before the first vector
        self._trim_elsewhere = False                # flags decided by an engine (judge_trimmed_elsewhere)
        self._sketches: SketchTree | None = None    # per-node tail sketches, once a scoring mode asks
        self._sketches_wanted = False
        self.version = 0  # bumps on every change; caches key on it
        if self._dim is not None:
            self._make_tree(self._dim)

    # ------------------------------------------------------------------ basics
    @property
    def feature_dimensions(self) -> int | None:
        """Features per agent (None until the first vector when not given)."""
        return self._dim

    def _make_tree(self, dim: int) -> None:
        self._dim = dim
        self._tree = SlotTree(dim, self.branching_factor, self._page_levels, self.recompute_every)
        if self._trim_wanted:
            self._trim = TrimmedMoments(self._tree)
        if self.window_rounds is not None:
            self._win = WindowedMoments(self._tree, self.window_rounds)
        if self._sketches_wanted:
            self._sketches = SketchTree(dim, self._page_size, self.branching_factor)

    @synchronized
    def __len__(self) -> int:
        return len(self._index)

    @synchronized
    def __contains__(self, agent_id: object) -> bool:
        try:
            return check_agent_id(agent_id) in self._index
        except InvalidInputError:
            return False

    @property
    @synchronized
    def depth(self) -> int:
        """Internal levels between the leaves and the root (log_b of capacity)."""
        return 0 if self._tree is None else self._tree.levels

    @synchronized
    def agent_ids(self) -> list[Hashable]:
        """Ids of the agents in the tree, in slot order."""
        if self._tree is None:
            return []
        return list(self._ids_at_slot[: self._tree.capacity][self._tree.occupied])

    @synchronized
    def cohorts(self) -> list[Path]:
        """Every cohort path, the root ``()`` first."""
        return list(self._cohorts.paths)

    def _slot(self, agent_id: Any) -> int:
        agent_id = check_agent_id(agent_id)
        slot = self._index.get(agent_id)
        if slot is None:
            raise UnknownAgentError(f"unknown agent id {agent_id!r}")   # (normalised: no np.int64(...))
        return slot

    @synchronized
    def agent_cohort(self, agent_id: Any) -> Path:
        """The cohort path an agent is placed under."""
        return self._cohorts.path_of(int(self._cohorts.cohort_of_slots(self._slot(agent_id))))

    @synchronized
    def get_agent_features(self, agent_id: Any) -> np.ndarray:
        """The agent's latest feature vector (a copy)."""
        return self._tree.X[self._slot(agent_id)].copy()

    def _grow_slots(self, n_slots: int) -> None:
        self._tree.ensure_capacity(n_slots)
        if self._ids_at_slot.size < self._tree.capacity:
            ids = np.empty(self._tree.capacity, dtype=object)
            ids[: self._ids_at_slot.size] = self._ids_at_slot
            self._ids_at_slot = ids

    # ------------------------------------------------------------------ single updates
    @synchronized
    def update_agent(self, agent_id: Any, features: Any, cohort: Any = None) -> None:
        """Set one agent's latest vector (insert, replace, or move to ``cohort``)."""
        agent_id = check_agent_id(agent_id)
        x = as_feature_vector(features, self._dim)
        path = check_cohort(cohort)
        self._update_one(agent_id, x, path)

    def _update_one(self, agent_id: Hashable, x: np.ndarray, path: Path | None) -> int:
        """Validated single update; returns the agent's slot."""
        if self._tree is None:
            self._make_tree(x.shape[0])
        tree = self._tree
        slot = self._index.get(agent_id)
        if slot is not None:
            cohorts = self._cohorts
            if path is None or cohorts.id_of.get(path) == int(cohorts.page_owner[slot // cohorts.page_size]):
                tree.replace(slot, x)
                if self._win is not None:
                    self._win.set_one(tree, slot, x)
                if self._trim is not None:
                    self._trim_written_one(slot, x)
                if self._sketches is not None:
                    self._sketches.mark(slot, per_item=True)
                self.version += 1
                return slot
            # Moving to another cohort: leave the old slot, take one in the new cohort.
            self._vacate_slot(slot)
            self._ids_at_slot[slot] = None
        cid = self._cohorts.ensure(path if path is not None else ())
        new_slot = int(self._cohorts.allocate(cid, 1)[0])
        self._grow_slots(new_slot + 1)
        self._tree.insert(new_slot, x)
        if self._win is not None:
            self._win.set_one(self._tree, new_slot, x)
        if self._trim is not None:
            self._trim_written_one(new_slot, x)
        if self._sketches is not None:
            self._sketches.mark(new_slot, per_item=True)
        self._index.set(agent_id, new_slot)
        self._ids_at_slot[new_slot] = agent_id
        self.version += 1
        return new_slot

    @synchronized
    def remove_agent(self, agent_id: Any) -> None:
        """Remove an agent; ``UnknownAgentError`` (a ``KeyError``) if it is not here."""
        slot = self._slot(agent_id)
        self._vacate_slot(slot)
        self._index.pop(self._ids_at_slot[slot])
        self._ids_at_slot[slot] = None
        self.version += 1

    def _vacate_slot(self, slot: int) -> None:
        """Take ``slot``'s member out of the tree, the trimmed and windowed moments and the
        sketches, and give the slot back to its cohort (the agent's id stays on it)."""
        cid = int(self._cohorts.cohort_of_slots(slot))
        self._tree.remove(slot)
        if self._trim is not None:
            self._trim.remove_one(slot)
        if self._win is not None:
            self._win.remove_one(slot)
        if self._sketches is not None:
            self._sketches.mark(slot, per_item=True)
        self._cohorts.release(cid, np.array([slot]))

    # ------------------------------------------------------------------ batch updates
    _check_ids = staticmethod(check_agent_ids)   # a 1-D array of valid ids (tree_inputs)

    def _check_distinct(self, ids: np.ndarray, slots: np.ndarray, known: np.ndarray) -> None:
        """No id twice in one batch: known ids by their slots, new ones among themselves."""
        dup = False
        if known.any():
            seen = np.zeros(self._tree.capacity if self._tree is not None else 0, dtype=bool)
            seen[slots[known]] = True
            dup = int(seen.sum()) != int(known.sum())
        if not dup and not known.all():
            new = ids[~known]
            if new.dtype == object:
                dup = len(set(new.tolist())) != new.size
            else:
                ordered = np.sort(new)
                dup = bool((ordered[1:] == ordered[:-1]).any())
        if dup:
            raise InvalidInputError("agent_ids holds the same id twice in one batch")

    _cohort_ids = staticmethod(cohort_rows)   # per-row index into validated paths (tree_inputs)

    @synchronized
    def update_many(self, agent_ids: Any, X: Any, cohorts: Any = None) -> None:
        """Set many agents' vectors at once, vectorised end to end.

        ``agent_ids`` is an array or sequence of n distinct ids (a NumPy int or
        str array is the fast path), ``X`` an (n, d) array (or a
        :class:`~swarmguard.validation.CheckedFeatures`, not checked again). ``cohorts`` is None
        (new agents go under the root, known agents stay where they are), one
        path for every row, or one entry per row (a NumPy string array of
        single-level names is the fast path). Nothing changes if any input is
        rejected.
        """
        self._update_many(agent_ids, X, cohorts)

    def _update_many(self, agent_ids: Any, X: Any, cohorts: Any = None, open_round: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """update_many, returning the agents' slots, the validated ids and the validated X
        (read-only: the caller's rows, or a checked copy of them)."""
        checked = check_feature_matrix(X, self._dim, copy=False)   # used in this call only: no copy
        X = checked.X
        ids = self._check_ids(agent_ids)
        if ids.shape[0] != X.shape[0]:
            raise DimensionMismatchError(f"{ids.shape[0]} agent ids for {X.shape[0]} rows")
        row_cohort, paths = self._cohort_ids(cohorts, X.shape[0])
        slots = self._index.lookup_many(ids)
        known = slots >= 0
        self._check_distinct(ids, slots, known)
        # ---- validated: mutate from here on
        if self._tree is None:
            self._make_tree(X.shape[1])
        if self._win is not None and open_round:   # a batch opens a round: members leaving the window go first
            self._advance_window()
        cids = np.array([self._cohorts.ensure(p) for p in paths], dtype=np.int64)
        want = np.where(row_cohort >= 0, cids[np.maximum(row_cohort, 0)] if cids.size else -1, -1)
        current = np.full(ids.shape[0], -1, dtype=np.int64)
        if known.any() and paths:         # no cohort asked for (None): nobody moves, no lookup
            current[known] = self._cohorts.cohort_of_slots(slots[known])
        moving = known & (want >= 0) & (want != current)
        placing = ~known | moving
        if moving.any():
            old = slots[moving]
            for cid in np.flatnonzero(np.bincount(current[moving])):
                self._cohorts.release(int(cid), old[current[moving] == cid])
            self._ids_at_slot[old] = None
            self._tree.write(old, None)
            if self._trim is not None:
                self._trim.clear(old)
            if self._win is not None:
                self._win.clear(old)
            if self._sketches is not None:
                self._sketches.mark(old)
        if placing.any():
            target = np.where(want[placing] >= 0, want[placing], 0)
            new_slots = np.empty(target.size, dtype=np.int64)
            for cid in np.flatnonzero(np.bincount(target)):
                sel = target == cid
                new_slots[sel] = self._cohorts.allocate(int(cid), int(sel.sum()))
            slots[placing] = new_slots
            self._grow_slots(int(new_slots.max()) + 1)
            self._index.set_many(ids[placing], new_slots)
            self._ids_at_slot[new_slots] = ids[placing]
        self._tree.write(slots, X, bound=checked.bound)
        if self._win is not None:
            self._win.write(self._tree, slots, X)
        if self._trim is not None:
            self._trim_written(slots, X)
        if self._sketches is not None:
            self._sketches.mark(slots)
        self.version += 1
        return slots, ids, X

    @synchronized
    def slots_of(self, agent_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Slots and validated ids of known agents (``UnknownAgentError`` if any is unknown)."""
        ids = self._check_ids(agent_ids)
        if ids.size == 0:
            raise EmptyInputError("agent_ids is empty")
        slots = self._index.lookup_many(ids)
        if (slots < 0).any():
            unknown = ids[int(np.argmax(slots < 0))]
            # a NumPy scalar (int64, str_) shown as the plain id; object arrays hold plain ids already
            unknown = unknown.item() if isinstance(unknown, np.generic) else unknown
            raise UnknownAgentError(f"unknown agent id {unknown!r}")
        return slots, ids

    # ------------------------------------------------------------------ statistics
    def _population_moments(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Current (count, mean, M2) of everyone; no flush (the hot path)."""
        if self._tree is None:
            return 0.0, np.zeros(0), np.zeros((0, 0))
        return self._tree.root_moments()

    def _cohort_moments(self, cid: int) -> tuple[float, np.ndarray, np.ndarray]:
        n, off, m2 = self._cohort_state(cid)
        mean, m2 = self._tree.to_user(off, m2)
        return n, mean, m2

    def _cohort_state(self, cid: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, offset from the tree's shift, M2) of a cohort in the tree's internal units
        (a power of two per feature, :mod:`swarmguard.structures.slot_tree`); the root needs no flush.

        A cohort below the root merges its pages' nodes (after a flush): O(pages).
        """
        if cid == 0:
            return self._tree.root_state()
        return self._tree.covered_state(self._cover(cid))

    def _cover(self, cid: int) -> np.ndarray:
        """The tree's fewest nodes covering cohort ``cid``'s pages and its sub-cohorts'
        (:meth:`SlotTree.node_cover`), kept until pages, cohorts or the layout change
        (pages are only ever added: their count, the cohorts' and the capacity say when)."""
        cohorts = self._cohorts
        key = (cohorts.n_pages, len(cohorts), self._tree.capacity, self._tree.levels)
        covers = self.__dict__.setdefault("_covers", {})
        hit = covers.get(cid)
        if hit is None or hit[0] != key:
            pages = np.concatenate([np.asarray(cohorts.pages[c], dtype=np.int64) for c in cohorts.subtree(cid)])
            hit = covers[cid] = (key, self._tree.node_cover(self._page_levels, pages))
        return hit[1]

    def _statistics(self, cid: int, ddof: int) -> dict[str, Any]:
        ddof = check_positive_int(ddof, "ddof", minimum=0)
        if self._tree is None:
            n, mean, m2 = 0.0, np.full(0, np.nan), np.zeros((0, 0))
            std_internal, scale = np.zeros(0), np.ones(0)
        else:
            self._tree.flush()
            n, off, m2_internal = self._cohort_state(cid)
            mean, m2 = self._tree.to_user(off, m2_internal)
            # the std from the internal units: it cannot underflow where the variance (its square) may
            std_internal = np.sqrt(np.maximum(m2_internal.diagonal(), 0.0))
            scale = np.ldexp(1.0, self._tree.exponent)
        count = int(round(n))
        std = std_internal / math.sqrt(count - ddof) * scale if count > ddof else None
        return {"cohort": self._cohorts.path_of(cid), **population_statistics(count, mean, m2, ddof, std)}

    @synchronized
    def get_global_statistics(self, ddof: int = 1) -> dict[str, Any]:
        """Population statistics: ``count``, ``mean``, ``covariance``, ``variance``, ``std``.

        Undefined values (the mean of nobody, the covariance of fewer than
        ``ddof + 1`` agents) are NaN.
        """
        return self._statistics(0, ddof)

    @synchronized
    def get_cohort_statistics(self, path: Any, ddof: int = 1) -> dict[str, Any]:
        """The same statistics for one cohort (its own agents and its sub-cohorts')."""
        cid = self._cohort_id(path)
        return self._statistics(cid, ddof)

    # ------------------------------------------------------------------ for engines
    # A Ray region shard holds a tree of its agents; these give it what the protocol reads
    # from the tree in process, by public names.
    @synchronized
    def update_rows(self, agent_ids: Any, X: Any, cohorts: Any = None, open_round: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`update_many`, returning the agents' slots, the validated ids and rows.

        ``open_round=False`` (a window): the rows belong to the round open now, as per-item
        updates do (an engine that runs a per-item call as a one-row batch)."""
        return self._update_many(agent_ids, X, cohorts, open_round)

    @staticmethod
    def check_cohorts(cohorts: Any, n: int) -> None:
        """Raise as :meth:`update_many` would for ``cohorts`` of ``n`` rows, changing nothing
        (a check of the arguments alone: callable on the class)."""
        HierarchicalStatisticalTree._cohort_ids(cohorts, n)

    @synchronized
    def slot_cohorts(self, slots: np.ndarray) -> tuple[list[Path], np.ndarray]:
        """The distinct cohort paths of the agents at ``slots`` and each slot's index into them."""
        uniq, inverse = np.unique(self._cohorts.cohort_of_slots(slots), return_inverse=True)
        return [self._cohorts.paths[int(c)] for c in uniq], inverse.ravel()

    @synchronized
    def occupied_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every agent's slot (in slot order), id and feature row."""
        if self._tree is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros((0, self._dim or 0))
        self._tree.flush()
        slots = np.flatnonzero(self._tree.occupied)
        return slots, self._ids_at_slot[slots], self._tree.X[slots]

    @synchronized
    def node_states(self) -> dict[str, Any] | None:
        """The root's and every non-empty cohort's ``(count, offset, m2)`` in the tree's
        internal units (after a flush), with the ``shift`` and per-feature unit ``exponent``
        (units ``2**exponent``); None while the tree is empty."""
        if self._tree is None or len(self) == 0:
            return None
        self._tree.flush()
        cohorts = {}
        for cid, path in enumerate(self._cohorts.paths):
            if cid:
                state = self._cohort_state(cid)
                if state[0] > 0:
                    cohorts[path] = state
        return {"shift": self._tree.shift, "exponent": self._tree.exponent.copy(),
                "population": self._tree.root_state(), "cohorts": cohorts}

    # ------------------------------------------------------------------ serialisation
    @synchronized
    def to_dict(self, exact: bool = False) -> dict[str, np.ndarray]:
        """The tree as a dict of arrays (agents, vectors, cohort paths); nodes are derived
        (:mod:`swarmguard.api.tree_state`).

        ``exact``: also each agent's slot, the cohorts' pages and free slots, and the shift
        and units the moments are kept in (``slot_*`` fields), so that :meth:`from_dict`
        rebuilds the same layout and recomputes every node bitwise as this tree holds it
        after a flush (and later rounds score bitwise alike); without them the agents are
        placed afresh and the moments recomputed around the vectors' mean, equal to about
        1e-15 relative. Not for a tree with a window (``window_rounds``): those fields are
        left out, and the windowed moments are recomputed."""
        return tree_to_dict(self, exact)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> HierarchicalStatisticalTree:
        """Rebuild a tree from :meth:`to_dict` output."""
        return tree_from_dict(cls, state)
