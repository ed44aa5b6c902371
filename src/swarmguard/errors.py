"""Typed errors.

Every error swarmguard raises on bad input is a :class:`SwarmGuardError` and also
the matching builtin, so callers can catch either ``swarmguard.SwarmGuardError``
or the plain ``ValueError`` / ``KeyError`` / ``TypeError`` they already handle.
"""

from __future__ import annotations

__all__ = [
    "SwarmGuardError",
    "InvalidInputError",
    "DimensionMismatchError",
    "NonFiniteError",
    "EmptyInputError",
    "InvalidTypeError",
    "UnknownAgentError",
    "UnknownCohortError",
    "MissingFieldError",
    "UnknownEvidenceTypeError",
    "DuplicateEvidenceError",
    "EvidenceStoreError",
    "MalformedInputError",
    "MissingDependencyError",
    "OutputPathError",
    "CheckpointError",
    "CheckpointWriteWarning",
    "InsufficientDataError",
    "QuorumUnavailableError",
    "UnknownRegionError",
    "StaleShardError",
    "StaleDeltaError",
    "ExactSumOverflowError",
    "MalformedBodyError",
    "UnsupportedMediaTypeError",
    "BodyTooLargeError",
    "NodeError",
]


class SwarmGuardError(Exception):
    """Base class of every error raised by swarmguard."""


class InvalidInputError(SwarmGuardError, ValueError):
    """An argument has the right type but a value swarmguard cannot accept."""


class DimensionMismatchError(InvalidInputError):
    """A feature vector or matrix does not have the expected number of features."""


class NonFiniteError(InvalidInputError):
    """Input holds NaN or an infinity."""


class EmptyInputError(InvalidInputError):
    """A batch with no rows, where at least one is needed."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument has a type swarmguard cannot use (e.g. non-numeric features).

    It is both a ``ValueError`` (bad input) and a ``TypeError``.
    """


class UnknownAgentError(SwarmGuardError, KeyError):
    """An agent id that is not in the structure."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class UnknownCohortError(SwarmGuardError, KeyError):
    """A cohort path that does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingFieldError(InvalidInputError, TypeError):
    """A required field (e.g. of a piece of evidence) was not given."""


class UnknownEvidenceTypeError(InvalidInputError):
    """An evidence type that is not a member of ``EvidenceType`` and maps to none."""


class DuplicateEvidenceError(InvalidInputError):
    """An ``evidence_id`` seen before arrives with different content."""


class EvidenceStoreError(SwarmGuardError, OSError):
    """The SQLite evidence store cannot be opened, read or written."""


class MalformedInputError(InvalidInputError):
    """A row of an input file that cannot be read (``swarmguard detect``).

    ``path`` and ``line`` (1-based; the header counts as line 1 in a CSV file,
    a Parquet file counts rows) say where; ``column`` names the column at
    fault (None when the whole row is: wrong field count, unreadable JSON,
    an overlong line); ``reason`` says what is wrong, naming the column too.
    """

    def __init__(self, path: str, line: int, reason: str, unit: str = "line", column: str | None = None):
        self.path, self.line, self.reason, self.unit, self.column = path, line, reason, unit, column
        super().__init__(f"{path}, {unit} {line}: {reason}")


class CheckpointError(SwarmGuardError, OSError):
    """A checkpoint cannot be written to, or read from, its folder."""


class CheckpointWriteWarning(UserWarning):
    """A round's on-disk checkpoint could not be written (the round itself was applied)."""


class MissingDependencyError(SwarmGuardError, ImportError):
    """An optional dependency needed for this input or output is not installed."""


class OutputPathError(InvalidInputError, OSError):
    """An output path (``--out``, ``--output``, ``--json``) that cannot be written, found before any work runs."""


class InsufficientDataError(InvalidInputError):
    """A statistic was asked of too few observations (e.g. covariance of one)."""


class QuorumUnavailableError(SwarmGuardError, RuntimeError):
    """STRONG consistency refused: the region cannot reach a majority of regions."""


class UnknownRegionError(SwarmGuardError, KeyError):
    """A region name the resolver has never seen."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StaleShardError(SwarmGuardError, RuntimeError):
    """A shard's state is not the one the caller expects (it restarted): restore it."""


class StaleDeltaError(InvalidInputError):
    """A peer delta made since version vectors the receiving node does not hold (it lost its
    data directory, or another node answers at its address); the sender asks again."""


class ExactSumOverflowError(SwarmGuardError, OverflowError):
    """The exact sum is finite as a rational but beyond the float64 range."""


class MalformedBodyError(InvalidInputError):
    """A request body that cannot be decoded (bad protobuf, JSON, gzip stream): HTTP 400, never retried."""


class UnsupportedMediaTypeError(InvalidInputError):
    """A request body in a content type or content encoding the endpoint does not read: HTTP 415."""


class BodyTooLargeError(InvalidInputError):
    """A request body over the size limit, before or after decompression (a gzip bomb): HTTP 413.

    ``limit`` is the limit in bytes.
    """

    def __init__(self, message: str, limit: int):
        self.limit = limit
        super().__init__(message)


class NodeError(SwarmGuardError, RuntimeError):
    """A ``swarmguard serve`` node refused a request (:mod:`swarmguard.client`): ``status``,
    ``message`` (its ``error``), ``retry_after``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after
