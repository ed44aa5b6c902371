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

An object that works on another object's state (the protocol on its tree)
takes its own lock and then the other's (:func:`synchronized_with`). Locks are
always taken in the order detector -> protocol -> tree (the consensus and the
CAP resolver on their own), never the other way round, so no two threads can
wait for each other.

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

__all__ = ["Locked", "synchronized", "synchronized_with"]

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
        with _lock_of(self):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _lock_of(obj: Any) -> Any:
    lock = obj.__dict__.get("_lock")
    if lock is None:
        lock = obj.__dict__.setdefault("_lock", threading.RLock())   # setdefault: one lock even if raced
    return lock


def synchronized_with(*attributes: str) -> Callable[[F], F]:
    """Like :func:`synchronized`, then also the locks of ``self.<attribute>`` for each name, in order.

    >>> class Box(Locked):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.items = []
    >>> class Filler(Locked):
    ...     def __init__(self, box):
    ...         super().__init__()
    ...         self.box = box
    ...     @synchronized_with("box")
    ...     def fill(self, k):
    ...         self.box.items.extend(range(k))
    ...         return len(self.box.items)
    >>> Filler(Box()).fill(3)
    3
    """

    def decorate(method: F) -> F:
        if len(attributes) == 1:            # one other object (the protocol's tree): two plain withs
            (name,) = attributes

            @functools.wraps(method)
            def wrapper_one(self: Any, *args: Any, **kwargs: Any) -> Any:
                with _lock_of(self), _lock_of(getattr(self, name)):
                    return method(self, *args, **kwargs)

            return wrapper_one  # type: ignore[return-value]

        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            with _lock_of(self):
                locks = [_lock_of(getattr(self, name)) for name in attributes]
                for lock in locks:
                    lock.acquire()
                try:
                    return method(self, *args, **kwargs)
                finally:
                    for lock in reversed(locks):
                        lock.release()

        return wrapper  # type: ignore[return-value]

    return decorate
