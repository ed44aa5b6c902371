"""Ray plumbing of the Ray engine: actor handles, calls that survive restarts, link faults, routing.

Every call to a shard actor carries the number of state-changing calls the
driver has seen it apply (see :mod:`swarmguard.engines.shards`); the
:class:`ActorSystem` logs the state-changing ones and, when an actor died or
restarted, restores its checkpoint and replays the log before re-issuing the
call.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..api.evidence_types import EvidenceType
from ..errors import InvalidTypeError, MissingDependencyError, SwarmGuardError
from .shards import StaleShardError

__all__ = ["import_ray", "LinkFaults", "Handle", "ActorSystem", "hash_partition", "take_rows"]


def import_ray():
    """``import ray``, or a :class:`MissingDependencyError` saying how to get it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised where Ray is absent
        raise MissingDependencyError(
            "the Ray backend needs Ray: pip install 'swarmguard[ray]' (or pip install 'ray>=2.9')") from exc
    return ray


def _actor_errors(ray) -> tuple[type, ...]:
    ex = ray.exceptions
    errs = [ex.RayActorError]
    for name in ("ActorUnavailableError", "ActorDiedError"):
        if hasattr(ex, name):
            errs.append(getattr(ex, name))
    return tuple(errs)


class LinkFaults:
    """Fault injection: the anti-entropy messages of chosen links are dropped.

    A link is an ordered pair ``(sender, receiver)`` of region names;
    :meth:`drop` with ``both_ways=True`` cuts both directions. A dropped
    message is never delivered (the receiver does not merge the delta, the
    sender gets no acknowledgement), exactly what a lossy network does.
    """

    def __init__(self, on_change: Any = None) -> None:
        self.dropped: set[tuple[str, str]] = set()
        self.messages_dropped = 0
        self._on_change = on_change      # the detector logs the new set (checkpoint_dir)

    @staticmethod
    def _links(links: Any) -> list[tuple[str, str]]:
        out = []
        for link in links:
            a, b = link
            if not (isinstance(a, str) and isinstance(b, str)):
                raise InvalidTypeError(f"a link is a pair of region names, got {link!r}")
            out.append((a, b))
        return out

    def drop(self, links: Iterable[tuple[str, str]], both_ways: bool = True) -> None:
        new = set(self.dropped)
        for a, b in self._links(links):
            new.add((a, b))
            if both_ways:
                new.add((b, a))
        self._set(new)

    def restore(self, links: Iterable[tuple[str, str]] | None = None, both_ways: bool = True) -> None:
        new = set() if links is None else set(self.dropped)
        for a, b in (() if links is None else self._links(links)):
            new.discard((a, b))
            if both_ways:
                new.discard((b, a))
        self._set(new)

    def _set(self, new: set[tuple[str, str]]) -> None:
        if self._on_change is None:
            self.dropped = new
        else:
            self._on_change(new)

    def delivers(self, sender: str, receiver: str) -> bool:
        if (sender, receiver) in self.dropped:
            self.messages_dropped += 1
            return False
        return True


class Handle:
    """Driver-side record of one actor: its state counter, checkpoint and replay log."""

    def __init__(self, name: str, actor: Any):
        self.name = name
        self.actor = actor
        self.seq = 0                      # state-changing calls submitted
        self.ckpt_seq = 0
        self.ckpt_ref = None              # object ref of the last checkpoint's state (None: empty)
        self.log: list[tuple[int, str, tuple, int]] = []   # (expect, method, args, num_returns)
        self.recoveries = 0


class ActorSystem:
    """Submits calls to shard actors, logs the state-changing ones, and recovers restarts."""

    def __init__(self, ray, recover_timeout: float = 120.0):
        self.ray = ray
        self.errors = _actor_errors(ray)
        self.recover_timeout = recover_timeout

    def submit(self, h: Handle, method: str, *args: Any, mutating: bool = False, num_returns: int = 1):
        expect = h.seq
        if mutating:
            h.seq += 1
            h.log.append((expect, method, args, num_returns))
        return (expect, self._remote(h, method, expect, args, num_returns))

    def _remote(self, h: Handle, method: str, expect: int, args: tuple, num_returns: int):
        fn = getattr(h.actor, method)
        if num_returns != 1:
            fn = fn.options(num_returns=num_returns)
        return fn.remote(expect, *args)

    def _is_stale(self, exc: BaseException) -> bool:
        if isinstance(exc, StaleShardError):
            return True
        cause = getattr(exc, "cause", None)
        return isinstance(cause, StaleShardError)

    def get(self, h: Handle, pending, method: str, *args: Any, num_returns: int = 1, attempts: int = 5):
        """The value of a submitted call (the first return when several), recovering ``h`` if needed.

        Returns ``(value, refs)``; ``refs`` is the call's ref(s), re-issued after a recovery.
        """
        expect, refs = pending
        for _ in range(attempts):
            first = refs[0] if isinstance(refs, list) else refs
            try:
                return self.ray.get(first), refs
            except Exception as exc:       # noqa: BLE001 - sorted below
                if not (isinstance(exc, self.errors) or self._is_stale(exc)):
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, SwarmGuardError):
                        # A shard refused the input before changing anything (the driver checks
                        # first, so this is a safety net): forget the call, so that the shard and
                        # the driver's count agree and the next call does not look stale.
                        if h.log and h.log[-1][0] == expect and h.seq == expect + 1:
                            h.log.pop()
                            h.seq = expect
                        raise cause from None      # the typed error, not Ray's wrapper
                    raise
                self.recover(h, upto=expect)
                refs = self._remote(h, method, expect, args, num_returns)
        raise SwarmGuardError(f"actor {h.name} kept failing after {attempts} recoveries")

    def call(self, h: Handle, method: str, *args: Any, mutating: bool = False, num_returns: int = 1):
        pending = self.submit(h, method, *args, mutating=mutating, num_returns=num_returns)
        value, refs = self.get(h, pending, method, *args, num_returns=num_returns)
        return (value, refs) if num_returns != 1 else value

    def wait_alive(self, h: Handle) -> None:
        deadline = time.monotonic() + self.recover_timeout
        while True:
            try:
                self.ray.get(h.actor.ping.remote(), timeout=10)
                return
            except Exception as exc:       # noqa: BLE001
                if time.monotonic() > deadline:
                    raise SwarmGuardError(f"actor {h.name} did not come back: {exc}") from exc
                time.sleep(0.1)

    def recover(self, h: Handle, upto: int) -> None:
        """Restore ``h``'s actor to the state after its first ``upto`` state-changing calls."""
        ray = self.ray
        for _ in range(5):
            try:
                self.wait_alive(h)
                ray.get(h.actor.restore.remote(h.ckpt_seq, h.ckpt_ref))
                for expect, method, args, nr in h.log:
                    if expect >= upto:
                        break
                    refs = self._remote(h, method, expect, args, nr)
                    ray.get(refs[0] if isinstance(refs, list) else refs)
                h.recoveries += 1
                return
            except Exception as exc:       # noqa: BLE001 - killed again while recovering: retry
                if not (isinstance(exc, self.errors) or self._is_stale(exc)):
                    raise
        raise SwarmGuardError(f"could not recover actor {h.name}")

    def checkpoint(self, h: Handle) -> Any:
        """Take ``h``'s state, keep it in the driver's object store, and return it.

        The actor's reply lives on the actor's node; a copy put by the driver
        lives on the driver's, so a checkpoint survives the loss of the node
        whose actor it restores.
        """
        (seq, refs) = self.call(h, "checkpoint", num_returns=2)
        state = self.ray.get(refs[1])
        h.ckpt_seq, h.ckpt_ref = seq, self.ray.put(state)
        h.log = [e for e in h.log if e[0] >= seq]
        return state

    def restore(self, h: Handle, seq: int, state: Any) -> None:
        """Start ``h``'s (new) actor from a checkpoint taken elsewhere (:meth:`~RayDistributedBehavioralDetector.resume`)."""
        h.ckpt_seq, h.ckpt_ref = seq, self.ray.put(state)
        h.seq, h.log = seq, []
        self.ray.get(h.actor.restore.remote(seq, h.ckpt_ref))


def hash_partition(keys: Any, parts: int) -> np.ndarray:
    """Each (normalised) agent id's evidence partition: ``id mod P`` for ints, CRC-32 of ``str(id)`` else."""
    if isinstance(keys, np.ndarray) and keys.dtype.kind in "iu":
        return np.mod(keys.astype(np.int64), parts)
    items = keys.tolist() if isinstance(keys, np.ndarray) else list(keys)
    return np.fromiter(((int(k) % parts) if isinstance(k, (int, np.integer)) and not isinstance(k, bool)
                        else zlib.crc32(str(k).encode()) % parts for k in items),
                       dtype=np.int64, count=len(items))


def take_rows(col: Any, rows: np.ndarray):
    """Rows of an evidence column (an array, a list, or one value for every row)."""
    if isinstance(col, (str, EvidenceType)):
        return col
    if isinstance(col, np.ndarray):
        return col[rows]
    return [col[i] for i in rows.tolist()]
