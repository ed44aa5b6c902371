"""The per-item score dict, whose ``feature_contributions`` is computed when first read.

The protocol's per-item answer (``update_agent_behavior``, ``score_agent`` and the
``anomaly`` of ``process_agent_behavior``) is the guide's dict. Its feature parts
(:mod:`swarmguard.structures.feature_shares`) cost the per-item call about a
quarter of its protocol time, and most callers read only the decision (issue 11:
the guide's loop never reads them). :class:`ItemScore` is that dict with the parts
held as a :class:`~swarmguard.structures.feature_shares.DeferredParts`: the key
``feature_contributions`` enters the dict, at its place, the first time anything
reads it or the dict as a whole (``[]``, ``get``, ``in``, iteration, ``keys``,
``items``, ``values``, ``len``, ``==``, ``repr``, copies, ``|``, ``**``, pickling,
``json``), and from then on it is a plain dict. A read gives the same array the
eager computation gave (see :class:`~swarmguard.structures.feature_shares.CorrelationRoot`).
"""

from __future__ import annotations

import threading
from typing import Any

from ..structures.feature_shares import DeferredParts

__all__ = ["ItemScore", "PARTS_KEY"]

PARTS_KEY = "feature_contributions"
_MATERIALIZING = threading.Lock()    # one reader at a time puts the key in (dict order kept)


class ItemScore(dict):
    """A per-item score dict; its ``feature_contributions`` computed on first read.

    Built by :meth:`deferred`; otherwise a dict (equal to, and readable as, the dict
    with the parts in).

    Examples
    --------
    >>> import numpy as np
    >>> s = ItemScore.deferred({"p_value": 0.5, "levels": []}, DeferredParts.ready(np.array([1.0, 2.0])), "levels")
    >>> list(s), s["feature_contributions"]
    (['p_value', 'feature_contributions', 'levels'], array([1., 2.]))
    """

    _parts: DeferredParts | None = None   # the parts, until they enter the dict
    _before: str | None = None            # the key they go before (None: at the end)

    @classmethod
    def deferred(cls, fields: dict[str, Any], parts: DeferredParts, before: str | None = None) -> ItemScore:
        """``fields`` with :data:`PARTS_KEY` to come from ``parts``, placed before the key ``before``."""
        score = cls(fields)
        score._parts = parts
        score._before = before
        return score

    def _materialize(self) -> None:
        """Put the parts in the dict, at their place (once)."""
        if self._parts is None:
            return
        with _MATERIALIZING:
            parts = self._parts
            if parts is None:
                return
            value = parts.value()
            tail = {}
            before = self._before
            if before is not None and dict.__contains__(self, before):
                keys = list(dict.keys(self))
                for key in keys[keys.index(before):]:
                    tail[key] = dict.pop(self, key)
            dict.__setitem__(self, PARTS_KEY, value)
            dict.update(self, tail)
            self._parts = None

    # a read of the one key that may be missing
    def __missing__(self, key: Any) -> Any:
        if key == PARTS_KEY and self._parts is not None:
            self._materialize()
            return dict.__getitem__(self, key)
        if self._moved_in_place(key):
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def _moved_in_place(self, key: Any) -> bool:
        """Whether ``key``, missing when looked up, is here once no reader is putting the parts in:
        the keys after the parts leave the dict for a moment then (another thread's read must wait)."""
        if self._before is None:         # parts at the end (or none): nothing is ever moved
            return False
        with _MATERIALIZING:
            return dict.__contains__(self, key)

    def __contains__(self, key: Any) -> bool:
        return ((key == PARTS_KEY and self._parts is not None) or dict.__contains__(self, key)
                or self._moved_in_place(key))

    def get(self, key: Any, default: Any = None) -> Any:
        if self._parts is not None and key == PARTS_KEY:
            self._materialize()
        if not dict.__contains__(self, key) and not self._moved_in_place(key):
            return default
        return dict.get(self, key, default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if self._parts is not None and key == PARTS_KEY:
            self._materialize()
        return dict.setdefault(self, key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        if self._parts is not None and key == PARTS_KEY:
            self._materialize()
        return dict.pop(self, key, *default)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._parts is not None and key == PARTS_KEY:
            self._materialize()        # replaced at its place, as in the eager dict
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        if self._parts is not None and key == PARTS_KEY:
            self._materialize()
        dict.__delitem__(self, key)

    # every read of the dict as a whole: the parts go in first
    def __iter__(self):
        self._materialize()
        return dict.__iter__(self)

    def __reversed__(self):
        self._materialize()
        return dict.__reversed__(self)

    def __len__(self) -> int:
        self._materialize()
        return dict.__len__(self)

    def keys(self):
        self._materialize()
        return dict.keys(self)

    def values(self):
        self._materialize()
        return dict.values(self)

    def items(self):
        self._materialize()
        return dict.items(self)

    def popitem(self):
        self._materialize()
        return dict.popitem(self)

    def copy(self) -> dict[str, Any]:
        self._materialize()
        return dict.copy(self)

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._materialize()
        dict.update(self, *args, **kwargs)

    def clear(self) -> None:
        self._parts = None
        dict.clear(self)

    def __repr__(self) -> str:
        self._materialize()
        return dict.__repr__(self)

    def __eq__(self, other: Any) -> bool:
        self._materialize()
        if isinstance(other, ItemScore):
            other._materialize()
        return dict.__eq__(self, other)

    def __ne__(self, other: Any) -> bool:
        self._materialize()
        if isinstance(other, ItemScore):
            other._materialize()
        return dict.__ne__(self, other)

    __hash__ = None   # type: ignore[assignment]  # a dict: unhashable

    def __or__(self, other: Any) -> Any:
        self._materialize()
        return dict.__or__(self, other)

    def __ror__(self, other: Any) -> Any:
        self._materialize()
        return dict.__ror__(self, other)

    def __ior__(self, other: Any) -> ItemScore:
        self._materialize()
        dict.update(self, other)
        return self

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # pickled and copied as the plain dict it reads as (dict.copy's type too)
        self._materialize()
        return dict, (dict.copy(self),)
