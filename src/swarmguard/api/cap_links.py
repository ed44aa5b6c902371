"""The CAP resolver's links: partitions, healing and anti-entropy sync.

:class:`CapLinks` is a part of
:class:`~swarmguard.api.cap.StatisticalCAPResolver` (its methods run on the
resolver's state and under its lock): who reaches whom
(``partition`` / ``heal``) and the anti-entropy rounds over the links that
deliver, by hand (``sync``) or from a background task.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

from ..errors import InvalidInputError
from ..locking import synchronized
from ..validation import check_finite_float
from .cap_types import ConsistencyModel, SyncReport

if TYPE_CHECKING:
    import asyncio  # imported where used: asyncio costs about half an `import numpy` at start-up

__all__ = ["CapLinks"]


class CapLinks:
    """Links between the regions of :class:`~swarmguard.api.cap.StatisticalCAPResolver`
    (a part of its class): who reaches whom, and the anti-entropy rounds over them."""

    # ------------------------------------------------------------------ links
    @synchronized
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut the network: only regions in the same group reach each other.

        Regions not named in any group are cut off from everyone. Names must be
        known and may appear once. Under STRONG the new groups sync at once (the
        clock read first: a clock gone bad refuses the call, the links unchanged).
        """
        mapping = self._topology.groups_for(groups)
        # Under STRONG the clock is read (and checked) before the links change: a clock gone
        # bad refuses the call with the links as they were.
        now = self.read_clock() if self.consistency_model is ConsistencyModel.STRONG else None
        self._topology.group_of = mapping
        if now is not None:
            self.sync(now=now)

    @synchronized
    def heal(self) -> None:
        """Restore every link (replicas converge at the next :meth:`sync`; at once under STRONG)."""
        now = self.read_clock() if self.consistency_model is ConsistencyModel.STRONG else None   # as partition
        self._topology.group_of = None
        if now is not None:
            self.sync(now=now)

    @property
    @synchronized
    def is_partitioned(self) -> bool:
        return self._topology.is_partitioned

    @synchronized
    def sync(self, *, now: float | None = None) -> SyncReport:
        """One anti-entropy round over every delivering link.

        For each ordered pair (a, b) that can reach each other, b sends its
        version vector and a ships what that vector does not cover. After one
        round every replica of a group holds the join of the group's states.
        ``now``: the clock reading to use (default: read the clock).
        """
        t0 = time.perf_counter()
        now = self._check_now(now)
        now = self._now(now)
        self._last_sync = now
        pairs = rows = nbytes = 0
        for a in self._topology.regions:
            if a not in self._replicas:
                continue
            src = self._replicas[a]
            for b in self._topology.reachable(a):
                if b == a or b not in self._replicas:
                    continue
                dst = self._replicas[b]
                src.acknowledge(b, dst.version)  # the request carries b's version vector
                delta = src.delta_for(b, now)
                src.acknowledge(b, dst.merge_delta(delta))
                pairs += 1
                rows += int(delta["registers.seq"].shape[0])
                nbytes += sum(v.nbytes for v in delta.values())
        return SyncReport(pairs, rows, nbytes, time.perf_counter() - t0)

    # ------------------------------------------------------------------ background sync
    async def run_background_sync(self, interval: float | None = None, *, rounds: int | None = None) -> None:
        """Call :meth:`sync` every ``interval`` seconds (forever, or ``rounds`` times)."""
        interval = self.sync_interval_seconds if interval is None else interval
        interval = check_finite_float(interval, "interval")
        if interval <= 0:
            raise InvalidInputError("the sync interval must be > 0")
        sleep = self._sleep
        if sleep is None:
            import asyncio

            sleep = asyncio.sleep
        done = 0
        while rounds is None or done < rounds:
            await sleep(interval)
            self.sync()
            done += 1

    def start_background_sync(self, interval: float | None = None) -> asyncio.Task:
        """Start :meth:`run_background_sync` as a task on the running loop."""
        if self._sync_task is None or self._sync_task.done():
            import asyncio

            self._sync_task = asyncio.get_running_loop().create_task(self.run_background_sync(interval))
        return self._sync_task

    async def stop_background_sync(self) -> None:
        task, self._sync_task = self._sync_task, None
        if task is not None and not task.done():
            import asyncio

            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> Self:
        if self.sync_interval_seconds is not None:
            self.start_background_sync()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop_background_sync()
