"""``EventLog``: the node's isolation events, numbered, kept in a bounded ring for ``/v1/events``."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

__all__ = ["EventLog"]


class EventLog:
    """The last ``capacity`` events, each ``(id, data)`` with ids 1, 2, …; readers poll
    :meth:`after` (memory stays bounded whatever the readers do)."""

    def __init__(self, capacity: int = 10_000):
        self._events: deque[tuple[int, dict[str, Any]]] = deque(maxlen=capacity)
        self._next = 1
        self._lock = threading.Lock()

    def publish(self, data: dict[str, Any]) -> int:
        with self._lock:
            event_id = self._next
            self._next += 1
            self._events.append((event_id, data))
            return event_id

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next - 1

    def after(self, event_id: int, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Events with an id above ``event_id``, oldest first (at most ``limit``)."""
        with self._lock:
            if not self._events:
                return []
            # ids are consecutive: the first one after ``event_id`` sits at a known index, so a
            # poll costs what it returns, not the ring's length (every SSE client polls 10x a second)
            start = max(0, event_id + 1 - self._events[0][0])
            stop = len(self._events) if limit is None else min(len(self._events), start + limit)
            return [self._events[i] for i in range(start, stop)] if start < stop else []
