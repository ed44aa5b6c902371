"""Named cohorts (regions, clusters) and the pages of slots each one owns.

A cohort is a path of names, ``()`` being the whole population. Each cohort
owns whole *pages* of the slot tree (``branching**page_levels`` slots, the
leaves under one node of level ``page_levels``), so its members' statistics
are the merge of its pages' nodes, and of its sub-cohorts'.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CohortDirectory"]

Path = tuple[str, ...]


class _SlotPool:
    """Stack of free slots of one cohort."""

    __slots__ = ("buf", "size")

    def __init__(self) -> None:
        self.buf = np.zeros(0, dtype=np.int64)
        self.size = 0

    def push(self, slots: np.ndarray) -> None:
        need = self.size + slots.size
        if need > self.buf.size:
            grown = np.zeros(max(need, 2 * self.buf.size), dtype=np.int64)
            grown[: self.size] = self.buf[: self.size]
            self.buf = grown
        # Pushed reversed so that pops hand out the lowest slots first.
        self.buf[self.size:need] = slots[::-1]
        self.size = need

    def pop(self, k: int) -> np.ndarray:
        k = min(k, self.size)
        out = self.buf[self.size - k:self.size][::-1].copy()
        self.size -= k
        return out


class CohortDirectory:
    """Cohort paths ↔ ids, their pages and free slots.

    Examples
    --------
    >>> c = CohortDirectory(page_size=4)
    >>> cid = c.ensure(("eu", "c7"))
    >>> c.path_of(cid), c.ancestors(cid) == [cid, c.ensure(("eu",)), 0]
    (('eu', 'c7'), True)
    """

    def __init__(self, page_size: int):
        self.page_size = page_size
        self.paths: list[Path] = [()]
        self.id_of: dict[Path, int] = {(): 0}
        self.parent: list[int] = [-1]
        self.children: list[list[int]] = [[]]
        self.pages: list[list[int]] = [[]]
        self.pools: list[_SlotPool] = [_SlotPool()]
        self.page_owner = np.zeros(0, dtype=np.int64)
        self.n_pages = 0

    def __len__(self) -> int:
        return len(self.paths)

    def ensure(self, path: Path) -> int:
        """Id of the cohort at ``path``, creating it and its ancestors if needed."""
        cid = self.id_of.get(path)
        if cid is not None:
            return cid
        parent = self.ensure(path[:-1])
        cid = len(self.paths)
        self.paths.append(path)
        self.id_of[path] = cid
        self.parent.append(parent)
        self.children.append([])
        self.children[parent].append(cid)
        self.pages.append([])
        self.pools.append(_SlotPool())
        return cid

    def path_of(self, cid: int) -> Path:
        return self.paths[cid]

    def ancestors(self, cid: int) -> list[int]:
        """The cohort itself, then its parents up to the root ``()``."""
        out = []
        while cid != -1:
            out.append(cid)
            cid = self.parent[cid]
        return out

    def subtree(self, cid: int) -> list[int]:
        out, stack = [], [cid]
        while stack:
            c = stack.pop()
            out.append(c)
            stack.extend(self.children[c])
        return out

    def allocate(self, cid: int, k: int) -> np.ndarray:
        """Take ``k`` free slots of cohort ``cid``, opening new pages as needed."""
        got = self.pools[cid].pop(k)
        short = k - got.size
        if short <= 0:
            return got
        new_pages = -(-short // self.page_size)
        first = self.n_pages
        page_ids = np.arange(first, first + new_pages, dtype=np.int64)
        self.n_pages += new_pages
        owner = np.zeros(self.n_pages, dtype=np.int64)
        owner[: self.page_owner.size] = self.page_owner
        owner[first:] = cid
        self.page_owner = owner
        self.pages[cid].extend(page_ids.tolist())
        fresh = (page_ids[:, None] * self.page_size + np.arange(self.page_size)).ravel()
        self.pools[cid].push(fresh[short:])
        return np.concatenate([got, fresh[:short]])

    def layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(page_owner, pool_sizes, pool_slots)``: each page's cohort, and each cohort's free
        slots as its stack holds them (concatenated), for :meth:`restore_layout`."""
        sizes = np.array([pool.size for pool in self.pools], dtype=np.int64)
        slots = [pool.buf[: pool.size] for pool in self.pools]
        return (self.page_owner.copy(), sizes,
                np.concatenate(slots).astype(np.int64) if slots else np.zeros(0, dtype=np.int64))

    def restore_layout(self, page_owner: np.ndarray, pool_sizes: np.ndarray, pool_slots: np.ndarray) -> None:
        """Take :meth:`layout`'s pages and free slots (checked by the caller; the cohorts exist,
        with the same ids): later allocations hand out the slots the exporting directory would."""
        self.page_owner = np.array(page_owner, dtype=np.int64)
        self.n_pages = int(self.page_owner.size)
        self.pages = [np.flatnonzero(self.page_owner == c).tolist() for c in range(len(self.paths))]
        ends = np.cumsum(pool_sizes)
        for c, pool in enumerate(self.pools):
            pool.buf = np.array(pool_slots[ends[c] - pool_sizes[c]: ends[c]], dtype=np.int64)
            pool.size = int(pool_sizes[c])

    def release(self, cid: int, slots: np.ndarray) -> None:
        self.pools[cid].push(np.asarray(slots, dtype=np.int64))

    def cohort_of_slots(self, slots: np.ndarray | int):
        return self.page_owner[np.asarray(slots) // self.page_size]
