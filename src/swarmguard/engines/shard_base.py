"""The ``expect`` bookkeeping every shard shares (see :mod:`swarmguard.engines.shards`)."""

from __future__ import annotations

import resource
import uuid

from ..errors import StaleShardError

__all__ = ["Versioned"]

_PROCESS = uuid.uuid4().hex      # differs in every process: a restarted actor has a new one


class Versioned:
    """The ``expect`` bookkeeping shared by every shard."""

    seq: int

    def _check(self, expect: int) -> None:
        if expect != self.seq:
            raise StaleShardError(f"{type(self).__name__} holds state {self.seq}, caller expects {expect}")

    def _step(self, expect: int) -> None:
        self._check(expect)
        self.seq += 1

    def ping(self) -> int:
        return self.seq

    def incarnation(self) -> str:
        """An id of the process this shard lives in (a restarted actor has another)."""
        return _PROCESS

    def peak_memory_mb(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
