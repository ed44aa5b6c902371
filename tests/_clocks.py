"""A clock for tests that counts its readings."""

from __future__ import annotations

from collections.abc import Callable


def counting_clock() -> tuple[Callable[[], float], list[int]]:
    """A clock whose every reading differs (100 + the number of readings so far), and the
    list that grows by one per reading: two readings where one was due show in both."""
    calls: list[int] = []

    def clock() -> float:
        calls.append(1)
        return 100.0 + len(calls)
    return clock, calls
