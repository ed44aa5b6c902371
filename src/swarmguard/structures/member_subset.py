"""``MemberSubsetMoments``: the moments of a subset of a :class:`SlotTree`'s members, slot for slot.

The trimmed moments (:mod:`.trimming`: the members the trimming rule keeps) and the
windowed moments (:mod:`.window`: the members written in the last W rounds) are
each a second :class:`SlotTree` laid out as the full one (same slots, same nodes)
holding only some of its members. What they share is here: the mirrored tree, its
layout kept in step with the full tree's, and a member leaving it.
"""

from __future__ import annotations

import numpy as np

from .slot_tree import SlotTree

__all__ = ["MemberSubsetMoments"]


class MemberSubsetMoments:
    """A :class:`SlotTree` (``tree``) mirroring ``full``'s layout, holding some of its members."""

    def __init__(self, full: SlotTree):
        self.tree = SlotTree(full.dim, full.b, full.min_levels, full.recompute_every)
        self.tree.ensure_capacity(full.capacity)

    def _sync_layout(self, full: SlotTree) -> None:
        if self.tree.capacity != full.capacity:
            self.tree.ensure_capacity(full.capacity)

    def clear(self, slots: np.ndarray) -> None:
        """Slots emptied (moved, removed or dropped): out of these moments."""
        slots = slots[slots < self.tree.capacity]
        self.tree.write(slots[self.tree.occupied[slots]], None)

    def remove_one(self, slot: int) -> None:
        """After a per-item removal of ``slot`` from the full tree."""
        if slot < self.tree.capacity and self.tree.occupied[slot]:
            self.tree.remove(slot)
