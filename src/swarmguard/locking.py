"""One lock per public object: safe to share between threads.

Every public swarmguard object that holds state (tree, protocol, consensus,
CAP resolver, detector) takes its own re-entrant lock around each public call,
so calls from several threads are serialised: a call either commits all of its
changes or, when refused, none, and no thread ever sees a half-applied call.
A service that runs handlers in a thread pool can share one detector.

The lock is re-entrant so that a public method may call another public method
of the same object (or the detector may call into its parts, each with its own
lock) without deadlock. Async methods hold the lock only inside their
synchronous body (no ``await`` while holding it).

Examples
--------
>>> class Counter(Locked):
...     def __init__(self):
...         super().__init__()
...         self.n = 0
...     @synchronized
...     def add(self, k):
...         self.n += k
...         return self.n
>>> c = Counter()
>>> c.add(2)
2
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Locked", "synchronized"]

F = TypeVar("F", bound=Callable[..., Any])


class Locked:
    """Mixin that gives an object its re-entrant lock ``_lock``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:   # locks do not pickle; a copy gets its own
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()


def synchronized(method: F) -> F:
    """Run ``method`` under ``self._lock`` (created on first use if missing)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", threading.RLock())
        with lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
