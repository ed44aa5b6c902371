"""Windowed moments: the tree's moments over the members written in the last W rounds.

Why
---
The tree keeps one vector per agent, its latest. When every agent reports
every round, the population's moments are the current cross-section and
follow a moving population by themselves. They lag only through *stale*
members: agents that report rarely or have gone quiet keep vectors from
rounds ago, and under drift those vectors sit where the population *was*.
They pull the mean back and inflate the covariance along the direction of
drift, which hides anomalies (masking) the further the population moves.
A window forgets them: the reference moments count only members whose latest
vector was written in the last ``W`` rounds.

Rounds
------
The tree counts rounds: every batch write (``update_many``, hence
``update_and_score_many`` and the detector's ``process_round``) opens a new
round and stamps its rows with it; a per-item update belongs to the round
open at the time (``advance_round`` opens one explicitly, for callers that
only write per item). A member is *inside* the window while
``last_round > round - W``; with ``W = 1`` only the current round's writes
count.

State (why a window rather than exponential decay)
--------------------------------------------------
The windowed moments are the *same moments type* over a subset, like the
trimmed ones (:mod:`swarmguard.structures.trimming`): a second
:class:`~swarmguard.structures.slot_tree.SlotTree` with the same layout in
which a slot is occupied while its member is inside the window. So they are
exact as the full moments are (every node recomputed from its children; a
member leaving is the tree's exact removal), merge per node with Chan's
formula, cost O(log n) nodes per change, and a tree rebuilt from its vectors,
rounds and stamps holds the same numbers. Expiry needs no history of
features: the tree holds one vector per agent, so forgetting an agent's
vector is removing one slot. Each round's written slots are kept in a bucket
until they leave the window; a slot expires at most once per write, so expiry
is amortised O(log n) per update, and a round costs O(rows written), never a
scan of every member.

Exponential decay (weights ``2**(-age / h)``) would need per-slot weights in
the slot tree: non-integer counts (an effective sample size for warm-up, the
shrinkage and the χ² null), and weights that are not exact unless the ages are
whole half-lives. A window keeps integer counts and exactness, at the price of
a hard edge.

Scores
------
A member inside the window is counted in the windowed moments and scored
leave-one-out; a member outside (a stale vector) is scored against them as
they are, its "others" being exactly the members inside
(:class:`~swarmguard.structures.trimming.TrimmedScorer` with no trimming factor).
The warm-up (nobody flagged in a smaller population) counts the members inside.
A stale member is scored but not *judged*: it has no behaviour in the window,
so it is never flagged (its distance measures how far its last vector is from
the population now, which under drift is large for every honest agent that
went quiet) and it takes no part in the false-discovery procedure; results
carry ``in_window``.

With ``scoring="robust"`` the trimmed moments are drawn from the window: a
member is judged against the windowed moments, and leaves the trimmed ones
when it leaves the window.
"""

from __future__ import annotations

import numpy as np

from .member_subset import MemberSubsetMoments
from .slot_tree import SlotTree

__all__ = ["WindowedMoments"]


class WindowedMoments(MemberSubsetMoments):
    """The moments of the members written in the last ``window`` rounds, one node per node
    of the full :class:`SlotTree`.

    Parameters
    ----------
    full : SlotTree
        The tree of every member; its layout is mirrored (same slots, same nodes).
    window : int
        ``W`` of the rule above (>= 1).

    Examples
    --------
    >>> import numpy as np
    >>> full = SlotTree(dim=1, branching=2, min_levels=1)
    >>> win = WindowedMoments(full, window=2)
    >>> for r, x in enumerate([[0.0], [10.0], [20.0]]):      # agents 0, 1, 2, one per round
    ...     _ = win.advance()
    ...     full.write(np.array([r]), np.array([x]))
    ...     win.write(full, np.array([r]), np.array([x]))
    >>> win.inside(np.arange(3)).tolist(), float(win.tree.root_state()[0])
    ([False, True, True], 2.0)
    """

    def __init__(self, full: SlotTree, window: int):
        super().__init__(full)
        self.window = int(window)
        self.round = 0
        self.last_round = np.zeros(self.tree.capacity, dtype=np.int64)
        self._buckets: dict[int, list[np.ndarray]] = {}   # round -> slots written in it

    def _sync_layout(self, full: SlotTree) -> None:
        super()._sync_layout(full)
        if self.last_round.size < self.tree.capacity:
            grown = np.zeros(self.tree.capacity, dtype=np.int64)
            grown[: self.last_round.size] = self.last_round
            self.last_round = grown

    # ------------------------------------------------------------------ rounds
    def advance(self) -> np.ndarray:
        """Open the next round; members whose latest write leaves the window are removed
        from the windowed moments. Returns their slots."""
        self.round += 1
        gone = self._buckets.pop(self.round - self.window, None)
        if not gone:
            return np.zeros(0, dtype=np.int64)
        slots = np.unique(np.concatenate(gone))
        slots = slots[slots < self.tree.capacity]
        # written again since (their stamp is newer) or emptied: not this bucket's to expire
        slots = slots[(self.last_round[slots] == self.round - self.window) & self.tree.occupied[slots]]
        self.tree.write(slots, None)
        return slots

    def _stamp(self, slots: np.ndarray) -> None:
        self.last_round[slots] = self.round
        self._buckets.setdefault(self.round, []).append(np.asarray(slots, dtype=np.int64).copy())

    # ------------------------------------------------------------------ changes
    def write(self, full: SlotTree, slots: np.ndarray, X: np.ndarray) -> None:
        """After ``full.write(slots, X)``: those members are written this round (inside)."""
        self._sync_layout(full)
        self.tree.write(slots, X)
        self._stamp(slots)

    def set_one(self, full: SlotTree, slot: int, x: np.ndarray) -> None:
        """After a per-item insert or replace of ``slot`` in ``full``: written this round."""
        self._sync_layout(full)
        if self.tree.occupied[slot]:
            self.tree.replace(slot, x)
        else:
            self.tree.insert(slot, x)
        self._stamp(np.array([slot]))

    def restore(self, full: SlotTree, slots: np.ndarray, X: np.ndarray, round_now: int,
                last_rounds: np.ndarray) -> None:
        """Rebuild from serialised state: members at ``slots`` (vectors ``X``) last written in
        ``last_rounds``, the current round ``round_now``; those inside the window are written."""
        self._sync_layout(full)
        self.round = int(round_now)
        self.tree.write(self.tree_occupied_slots(), None)
        inside = last_rounds > self.round - self.window
        self.tree.write(slots[inside], X[inside])
        self.last_round[slots] = last_rounds
        self._buckets = {}
        for r in np.unique(last_rounds[inside]).tolist():
            self._buckets[int(r)] = [slots[inside & (last_rounds == r)]]

    def tree_occupied_slots(self) -> np.ndarray:
        """The slots counted in the windowed moments now."""
        return np.flatnonzero(self.tree.occupied)

    # ------------------------------------------------------------------ reads
    def inside(self, slots: np.ndarray) -> np.ndarray:
        """Whether the members at ``slots`` are counted in the windowed moments."""
        return self.tree.occupied_at(slots)

    def last_rounds(self, slots: np.ndarray) -> np.ndarray:
        """The round each member at ``slots`` was last written in."""
        return self.last_round[np.asarray(slots, dtype=np.int64)].copy()
