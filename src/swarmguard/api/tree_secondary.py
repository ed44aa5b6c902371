"""The population tree's secondary moments: trimmed, windowed, and per-node tail sketches.

:class:`~swarmguard.api.tree.HierarchicalStatisticalTree` keeps, beside its
full moments, up to three other views of the same members, each kept only once
asked for: trimmed moments (the members not flagged under the full moments,
:mod:`swarmguard.structures.trimming`), windowed moments (the members written in
the last ``window_rounds`` rounds, :mod:`swarmguard.structures.window`) and
per-node feature sketches (:mod:`swarmguard.structures.sketch_tree`). This
mixin holds the tree's methods for them; the state lives on the tree itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidTypeError, UnknownCohortError
from ..locking import synchronized
from ..structures.sketch_tree import SketchTree
from ..structures.slot_tree import SlotTree
from ..structures.trimming import TrimmedMoments
from ..validation import check_cohort, check_positive_int
from ..values.moments import population_statistics

__all__ = ["SecondaryMoments"]


class SecondaryMoments:
    """Trimmed, windowed and tail-sketch methods of
    :class:`~swarmguard.api.tree.HierarchicalStatisticalTree` (a mixin: no state of its own)."""

    # ------------------------------------------------------------------ trimmed moments
    # A second set of moments per node over the members not flagged under the full moments
    # (swarmguard.structures.trimming), kept once a scoring mode asks for them.
    @synchronized
    def keep_trimmed_moments(self) -> None:
        """Keep trimmed moments from now on (O(n d²) once; nothing if already kept)."""
        if self._trim is None and self._tree is not None:
            self._tree.flush()
            trim = TrimmedMoments(self._tree)
            trim.rejudge(self._judged_tree())
            self._trim = trim
        elif self._tree is None:
            self._trim_wanted = True

    @property
    def keeps_trimmed_moments(self) -> bool:
        """Whether the tree keeps trimmed moments (asked for by a scoring mode)."""
        return self._trim is not None or self._trim_wanted

    @synchronized
    def rejudge_trimmed(self) -> None:
        """Judge every member again against the current full moments (O(n d²)); see
        :meth:`~swarmguard.structures.trimming.TrimmedMoments.rejudge`."""
        if self._trim is not None:
            self._trim.rejudge(self._judged_tree())
            self.version += 1

    def _trim_written(self, slots: np.ndarray, X: np.ndarray) -> None:
        """After a batch write: judge the written members (or, flags decided elsewhere, leave them
        out of the trimmed moments until :meth:`set_trimmed_flags`)."""
        if self._trim_elsewhere:
            self._trim.leave_out(self._judged_tree(), slots)
        else:
            self._trim.write(self._judged_tree(), slots, X)

    def _trim_written_one(self, slot: int, x: np.ndarray) -> None:
        if self._trim_elsewhere:
            self._trim.remove_one(slot)
        else:
            self._trim.set_one(self._judged_tree(), slot, x)

    # For an engine whose trees each hold part of the population (the Ray engine's region
    # shards): the trimming rule judges a member against the *merged* full moments, which no
    # one tree holds, so the engine decides the flags and hands them to the tree.
    @synchronized
    def judge_trimmed_elsewhere(self) -> None:
        """Keep trimmed moments whose flags the caller decides (:meth:`set_trimmed_flags`).

        From now on a write leaves the written members out of the trimmed
        moments until the caller sets their flags (the tree does not judge them
        against its own moments). Flags already held are kept (a tree rebuilt
        by :meth:`from_dict` keeps its members' flags).
        """
        self._trim_elsewhere = True
        if self._trim is None and self._tree is not None:
            self._trim = TrimmedMoments(self._tree)
        elif self._tree is None:
            self._trim_wanted = True

    @synchronized
    def set_trimmed_flags(self, slots: np.ndarray, kept: np.ndarray) -> None:
        """Count the members at ``slots`` in the trimmed moments where ``kept`` (drop the others).

        Only for a tree that :meth:`judge_trimmed_elsewhere`; the flags are the
        caller's judgement of each member's latest vector
        (:func:`~swarmguard.structures.trimming.judge_rows`).
        """
        if not self._trim_elsewhere or self._trim is None:
            raise InvalidInputError("this tree judges its trimmed moments itself (judge_trimmed_elsewhere was not asked)")
        slots = self._member_slots(slots, "set_trimmed_flags")
        kept = np.asarray(kept)
        if kept.dtype != bool:
            raise InvalidTypeError(f"set_trimmed_flags takes boolean flags, got dtype {kept.dtype}")
        if kept.shape != slots.shape:
            raise InvalidInputError(f"{slots.shape[0]} slots for {kept.shape} flags")
        if np.unique(slots).size != slots.size:
            # the trimmed tree would count a member twice
            raise InvalidInputError("set_trimmed_flags names the same slot twice")
        if self._win is not None and (kept & ~self._win.inside(slots)).any():
            # the trimmed moments are drawn from the window: a member kept there but outside it
            # would never expire from them (as from_dict refuses such flags)
            raise InvalidInputError("set_trimmed_flags keeps a member outside the window")
        self._trim.write(self._judged_tree(), slots, self._tree.X[slots], keep=kept)
        self.version += 1

    def _member_slots(self, slots: Any, what: str) -> np.ndarray:
        """``slots`` checked: a 1-D integer array of slots that hold a member (typed errors, no change)."""
        arr = np.asarray(slots)
        if arr.dtype.kind not in "iu":
            raise InvalidTypeError(f"{what} takes integer slots, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise InvalidInputError(f"{what} takes a 1-D array of slots, got shape {arr.shape}")
        arr = arr.astype(np.int64)
        held = arr.size == 0 or (self._tree is not None and arr.min() >= 0 and arr.max() < self._tree.capacity)
        if not held or (arr.size and not self._tree.occupied[arr].all()):
            raise InvalidInputError(f"{what} names a slot that holds no member")
        return arr

    @synchronized
    def trimmed_flags(self, slots: np.ndarray) -> np.ndarray:
        """Whether the members at ``slots`` are counted in the trimmed moments
        (``InvalidInputError`` unless trimmed moments are kept)."""
        if self._trim is None:
            raise InvalidInputError("this tree keeps no trimmed moments (no scoring mode asked for them)")
        return self._trim.kept(self._member_slots(slots, "trimmed_flags"))

    @synchronized
    def trimmed_node_states(self) -> dict[str, Any] | None:
        """As :meth:`node_states`, for the trimmed moments: the root's and every non-empty
        cohort's ``(count, offset, m2)`` over the kept members, in the trimmed tree's internal
        units, with its ``shift`` and ``exponent`` (a cohort with members but none kept has
        count 0); None while the tree is empty or keeps no trimmed moments."""
        if self._trim is None or self._tree is None or len(self) == 0:
            return None
        return self._sub_node_states(self._trim.tree)

    def _sub_node_states(self, sub: SlotTree) -> dict[str, Any]:
        """The root's and every non-empty cohort's ``(count, offset, m2)`` in ``sub`` (the trimmed
        or the windowed slot tree), in its units, with its ``shift`` and ``exponent``."""
        self._tree.flush()
        sub.flush()
        cohorts = {path: self._state_in(sub, cid) for cid, path in enumerate(self._cohorts.paths)
                   if cid and self._cohort_state(cid)[0] > 0}
        return {"shift": sub.shift, "exponent": sub.exponent.copy(), "population": sub.root_state(),
                "cohorts": cohorts}

    def _state_in(self, sub: SlotTree, cid: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, offset, M2) of cohort ``cid``'s members in ``sub`` (a second slot tree of the
        same layout: trimmed or windowed moments), in ``sub``'s units."""
        return sub.root_state() if cid == 0 else sub.covered_state(self._cover(cid))

    def _trimmed_state(self, cid: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, offset, M2) of cohort ``cid``'s kept members, in the trimmed tree's units."""
        return self._state_in(self._trim.tree, cid)

    def _cohort_id(self, path: Any) -> int:
        """The id of cohort ``path`` (``()``: the population); ``UnknownCohortError`` when the
        tree has none such."""
        p = check_cohort(path)
        cid = self._cohorts.id_of.get(p if p is not None else ())
        if cid is None:
            raise UnknownCohortError(f"unknown cohort {path!r}")
        return cid

    @synchronized
    def get_trimmed_statistics(self, path: Any = (), ddof: int = 1) -> dict[str, Any]:
        """Statistics of a cohort's kept members (``()``: the population), as
        :meth:`get_cohort_statistics`; ``InvalidInputError`` unless trimmed moments are kept."""
        if self._trim is None:
            raise InvalidInputError("this tree keeps no trimmed moments (no scoring mode asked for them)")
        cid = self._cohort_id(path)
        ddof = check_positive_int(ddof, "ddof", minimum=0)
        sub = self._trim.tree
        sub.flush()
        n, off, m2 = self._trimmed_state(cid)
        mean, m2 = sub.to_user(off, m2)
        count = int(round(n))
        return {"cohort": self._cohorts.path_of(cid), **population_statistics(count, mean, m2, ddof)}

    # ------------------------------------------------------------------ windowed moments
    # The moments of the members written in the last window_rounds rounds
    # (swarmguard.structures.window), kept when the tree is built with window_rounds.
    @property
    def current_round(self) -> int:
        """Rounds opened so far (0 without a window, or before the first batch)."""
        return 0 if self._win is None else self._win.round

    @synchronized
    def advance_round(self) -> None:
        """Open the next round (a batch write opens one itself): members last written
        ``window_rounds`` rounds ago leave the windowed moments. ``InvalidInputError``
        without a window."""
        if self.window_rounds is None:
            raise InvalidInputError("this tree keeps no window (built without window_rounds)")
        if self._win is not None:
            self._advance_window()
            self.version += 1

    def _advance_window(self) -> None:
        gone = self._win.advance()
        if self._trim is not None:     # trimmed moments are the kept members *of the window*
            self._trim.clear(gone)
        if self._sketches is not None and np.size(gone):   # so are the tail sketches' members
            self._sketches.mark(gone)

    @synchronized
    def window_node_states(self) -> dict[str, Any] | None:
        """As :meth:`node_states`, for the windowed moments: the root's and every non-empty
        cohort's ``(count, offset, m2)`` over the members inside the window, in the window
        tree's internal units, with its ``shift`` and ``exponent`` (a cohort with members but
        none inside has count 0); None while the tree is empty or keeps no window."""
        if self._win is None or self._tree is None or len(self) == 0:
            return None
        return self._sub_node_states(self._win.tree)

    @synchronized
    def window_flags(self, slots: np.ndarray) -> np.ndarray:
        """Whether the members at ``slots`` are inside the window (``InvalidInputError`` without one)."""
        if self.window_rounds is None:
            raise InvalidInputError("this tree keeps no window (built without window_rounds)")
        if self._win is None:
            return np.zeros(np.shape(slots), dtype=bool)
        return self._win.inside(self._member_slots(slots, "window_flags"))

    def _judged_tree(self):
        """The slot tree trimmed members are judged against and drawn from: the window's
        members when there is a window, else everyone."""
        return self._tree if self._win is None else self._win.tree

    def _window_state(self, cid: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(count, offset, M2) of cohort ``cid``'s members inside the window, in the window tree's units."""
        return self._state_in(self._win.tree, cid)

    @synchronized
    def in_window(self, agent_ids: Any) -> np.ndarray:
        """Whether each agent's latest vector is inside the window (counted in the windowed moments)."""
        if self.window_rounds is None:
            raise InvalidInputError("this tree keeps no window (built without window_rounds)")
        slots, _ = self.slots_of(agent_ids)
        return self._win.inside(slots)

    @synchronized
    def get_window_statistics(self, path: Any = (), ddof: int = 1) -> dict[str, Any]:
        """Statistics of a cohort's members inside the window (``()``: the population), as
        :meth:`get_cohort_statistics`; ``InvalidInputError`` without a window."""
        if self.window_rounds is None:
            raise InvalidInputError("this tree keeps no window (built without window_rounds)")
        cid = self._cohort_id(path)
        ddof = check_positive_int(ddof, "ddof", minimum=0)
        if self._win is None:
            return {"cohort": self._cohorts.path_of(cid),
                    **population_statistics(0, np.full(self._dim or 0, np.nan), np.zeros((self._dim or 0,) * 2), ddof)}
        sub = self._win.tree
        sub.flush()
        n, off, m2 = self._window_state(cid)
        mean, m2 = sub.to_user(off, m2)
        return {"cohort": self._cohorts.path_of(cid), **population_statistics(int(round(n)), mean, m2, ddof)}

    # ------------------------------------------------------------------ tail sketches
    # Per-node feature sketches (swarmguard.structures.sketch_tree), kept once a scoring mode asks.
    # Nothing to serialise: a node's sketches are rebuilt from its members' vectors.
    @synchronized
    def keep_tail_sketches(self) -> None:
        """Keep per-node tail sketches from now on (built on the next read)."""
        if self._sketches is None and self._tree is not None:
            self._sketches = SketchTree(self._dim, self._page_size, self.branching_factor)
        self._sketches_wanted = True

    def _fresh_sketches(self) -> SketchTree:
        # no flush: the slots' vectors, units and the root's count are current after every change
        t = self._tree
        if self._win is None:
            self._sketches.refresh(t.X, t.occupied, t.shift, t.unit, members=t.root_state()[0])
        else:
            # a window: the sketches hold the members inside it, as the windowed moments do (the
            # distance and the tails are read from the same population); _advance_window marks
            # the pages of the members that leave
            w = self._win.tree
            self._sketches.refresh(t.X, t.occupied, t.shift, t.unit, members=w.root_state()[0], inside=w.occupied)
        return self._sketches

    def _tail_sketches(self, cid: int):
        """Cohort ``cid``'s feature sketches (0: the population), in the moments' internal units."""
        sk = self._fresh_sketches()
        if cid == 0:
            return sk.root()
        cohorts = self._cohorts
        pages = np.concatenate([np.asarray(cohorts.pages[c], dtype=np.int64) for c in cohorts.subtree(cid)])
        return sk.pages_merged(pages)
