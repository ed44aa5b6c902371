"""Regions and their links, and the clock every write of a region reads: one core for every engine.

The in-process :class:`~swarmguard.api.cap.StatisticalCAPResolver` and the Ray
engine's driver both keep a :class:`RegionTopology` (the regions in birth
order, their birth times, the partition groups) and a :class:`MonotonicClock`
(readings never earlier than a previous one, so a confidence factor cannot rise
by itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..errors import InvalidInputError, InvalidTypeError, QuorumUnavailableError, UnknownRegionError
from ..validation import check_finite_float
from ..values.version_vector import check_region_name

__all__ = ["MonotonicClock", "RegionTopology", "partition_groups", "require_write_quorum"]


class MonotonicClock:
    """A clock whose readings never go backwards (a reading earlier than the latest is the latest).

    ``clock``: a callable returning seconds. :meth:`read` checks a reading and
    changes nothing; :meth:`advance` takes a (checked) reading as the latest.

    >>> t = [5.0]
    >>> c = MonotonicClock(lambda: t[0])
    >>> c.now(); t[0] = 3.0; c.read()
    5.0
    5.0
    """

    __slots__ = ("clock", "latest")

    def __init__(self, clock: Callable[[], Any]):
        self.clock = clock
        self.latest = -math.inf

    def read(self) -> float:
        """The clock's reading as the next write would use it (finite), changing nothing."""
        t = check_finite_float(self.clock(), "clock()")
        return t if t > self.latest else self.latest

    def advance(self, now: float) -> float:
        """Take ``now`` (checked) as the latest reading; returns the reading to use."""
        if now > self.latest:
            self.latest = now
        return self.latest

    def now(self, now: float | None = None) -> float:
        """A reading (the caller's ``now``, or the clock's), taken as the latest."""
        return self.advance(self.read() if now is None else now)


def partition_groups(groups: Any, known: Callable[[Any], str], regions: Sequence[str]) -> dict[str, int]:
    """Each region's group under a partition: ``groups`` lists the groups of names.

    ``known`` checks and normalises a name (raising for an unknown one); a
    name may appear once; regions named in no group are cut off from everyone
    (a group of their own).
    """
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Iterable):
        raise InvalidTypeError("groups must be a list of lists of region names")
    mapping: dict[str, int] = {}
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Iterable):
            raise InvalidTypeError(f"group {g} must be a list of region names, got {group!r}")
        for name in group:
            name = known(name)
            if name in mapping:
                raise InvalidInputError(f"region {name!r} appears in more than one group")
            mapping[name] = g
    next_group = max(mapping.values(), default=-1) + 1
    for name in regions:
        if name not in mapping:
            mapping[name] = next_group
            next_group += 1
    return mapping


def require_write_quorum(known: Sequence[str], group_of: Mapping[str, int] | None,
                         writing: Iterable[str]) -> None:
    """STRONG's rule: raise :class:`QuorumUnavailableError` unless each region writing reaches a majority.

    ``known``: the regions so far; ``group_of``: each region's partition group
    (None: no partition); ``writing``: the regions about to write, in order. A
    region not yet known joins as it writes (reachable by nobody during a
    partition, as :class:`RegionTopology` places it), so it counts in the
    total of the writes after it. Changes nothing.
    """
    known = list(known)
    groups = None if group_of is None else dict(group_of)
    for region in writing:
        new = region not in known
        total = len(known) + new
        if groups is None:
            reach = total
        elif new:
            reach = 1
        else:
            reach = sum(1 for r in known if groups.get(r) == groups[region])
        if 2 * reach <= total:
            raise QuorumUnavailableError(
                f"STRONG consistency: region {region!r} reaches {reach} of {total} regions, "
                f"a majority needs {total // 2 + 1}; use ConsistencyModel.STATISTICAL to stay "
                "available during partitions"
            )
        if new:
            known.append(region)
            if groups is not None:
                groups[region] = max(groups.values(), default=-1) + 1


class RegionTopology:
    """The regions so far (in birth order, with their birth times) and which reach which.

    ``group_of`` maps each region to its partition group (None: every link
    delivers). A region born during a partition reaches nobody until the heal.
    ``declared``: regions known by name before they are born (the Ray engine's
    regions listed up front), accepted by :meth:`known`.
    """

    __slots__ = ("regions", "born", "group_of", "declared")

    def __init__(self, declared: Iterable[str] = ()):
        self.regions: list[str] = []
        self.born: dict[str, float] = {}
        self.group_of: dict[str, int] | None = None
        self.declared: list[str] = list(declared)

    def add(self, name: str, born: float) -> bool:
        """``name`` is born at ``born`` (False, changing nothing, if it already was)."""
        if name in self.born:
            return False
        self.regions.append(name)
        self.born[name] = born
        if self.group_of is not None and name not in self.group_of:
            self.group_of[name] = max(self.group_of.values(), default=-1) + 1
        return True

    @property
    def names(self) -> list[str]:
        """Every region known so far: the born ones in birth order, then the declared ones not yet born."""
        return self.regions + [r for r in self.declared if r not in self.born]

    def known(self, region: Any) -> str:
        """``region``'s checked name; :class:`UnknownRegionError` unless born or declared."""
        name = check_region_name(region)
        if name not in self.born and name not in self.declared:
            raise UnknownRegionError(f"unknown region {name!r}; known: {self.names}")
        return name

    def reachable(self, region: str) -> list[str]:
        """The born regions whose links to ``region`` deliver (``region`` included), in birth order."""
        if self.group_of is None:
            return list(self.regions)
        g = self.group_of.get(region)
        return [r for r in self.regions if self.group_of.get(r) == g]

    def visible(self, region: Any) -> list[str]:
        """:meth:`reachable` of a checked name, sorted (declared regions not yet born included)."""
        region = self.known(region)
        if self.group_of is None:
            return sorted(self.names)
        return sorted(r for r in self.names if self.group_of.get(r) == self.group_of.get(region))

    def groups_for(self, groups: Any) -> dict[str, int]:
        """The partition ``groups`` as a map of every known region to its group (changes nothing)."""
        return partition_groups(groups, self.known, self.names)

    @property
    def is_partitioned(self) -> bool:
        return self.group_of is not None

    def require_quorum(self, writing: Iterable[str]) -> None:
        """STRONG's rule for the regions about to write (:func:`require_write_quorum`)."""
        require_write_quorum(self.names, self.group_of, writing)
