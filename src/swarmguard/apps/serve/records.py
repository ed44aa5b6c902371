"""Request bodies → typed batches: behaviour vectors (JSON Lines, Arrow IPC) and evidence lines.

Every line (or Arrow row) is judged on its own: a bad one is refused with its
line number and reason, the others go on. Agent ids travel as strings (a JSON
integer id becomes its decimal string), so that ``"7"`` and ``7`` are one agent.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...api import BayesianEvidence
from ...errors import SwarmGuardError
from ...validation import MAX_ABS_VALUE, MAX_ID_LENGTH, MAX_NAME_LENGTH
from .http_errors import ApiError, one_line

__all__ = ["BehaviorBatch", "EvidenceBatch", "LineError", "parse_behavior_lines", "parse_behavior_arrow",
           "parse_evidence_lines", "JSON_LINES_TYPES", "ARROW_STREAM_TYPE", "MAX_LISTED_ERRORS", "Refusals"]

JSON_LINES_TYPES = ("application/x-ndjson", "application/jsonl")
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
# refused lines listed one by one (with their reason); the rest are only counted: a body of
# millions of bad lines must not cost a Python object (and a formatted message) per line
MAX_LISTED_ERRORS = 100
_TOO_LARGE = f"features must be below {MAX_ABS_VALUE:g} in magnitude (rescale the feature)"
_BEHAVIOR_FIELDS = {"agent_id", "features", "timestamp", "cohort"}
_EVIDENCE_FIELDS = {"evidence_id", "agent_id", "evidence_type", "log_odds", "confidence", "timestamp", "source_node"}


@dataclass(frozen=True)
class LineError:
    """A refused line (1-based) and why."""

    line: int
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "error": self.error}


class Refusals:
    """The refused lines of a body: the first :data:`MAX_LISTED_ERRORS` with their reason
    (``listed``), and how many more there were (``unlisted``)."""

    def __init__(self, listed: list[LineError] | None = None, unlisted: int = 0):
        self.listed: list[LineError] = list(listed or [])
        self.unlisted = unlisted

    def __len__(self) -> int:
        return len(self.listed) + self.unlisted

    def add(self, line: int, reason: object) -> None:
        if len(self.listed) < MAX_LISTED_ERRORS:
            self.listed.append(LineError(line, one_line(reason)))
        else:
            self.unlisted += 1

    def sorted(self) -> list[LineError]:
        return sorted(self.listed, key=lambda e: e.line)


@dataclass
class BehaviorBatch:
    """Accepted behaviour vectors of one request: ``agent_ids`` (str), ``X`` (n, d) float64,
    ``cohorts`` (a name or None per row); ``errors`` the refused lines listed, ``unlisted``
    how many more were refused (only counted); ``lines`` each row's line (None: not known)."""

    agent_ids: list[str]
    X: np.ndarray
    cohorts: list[str | None]
    errors: list[LineError] = field(default_factory=list)
    unlisted: int = 0
    lines: list[int] | None = None

    @property
    def size(self) -> int:
        return len(self.agent_ids)


@dataclass
class EvidenceBatch:
    """Accepted evidence of one request (one :class:`BayesianEvidence` per row), and the refused lines."""

    rows: list[BayesianEvidence]
    lines: list[int]
    errors: list[LineError] = field(default_factory=list)
    unlisted: int = 0

    @property
    def size(self) -> int:
        return len(self.rows)


def _agent_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("agent_id must be a string or an integer")
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH or "\x00" in text:
        raise ValueError(f"agent_id must be 1 to {MAX_ID_LENGTH} characters without NUL")
    return text


def _cohort(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH or "\x00" in value:
        raise ValueError(f"cohort must be a non-empty string of at most {MAX_NAME_LENGTH} characters")
    return value


def _is_number(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or type(v) is int


def _floats_or_inf(values: list) -> list[float]:
    """``values`` as floats, an integer too large for float64 as inf (its row is then refused)."""
    out = []
    for v in values:
        try:
            out.append(float(v))
        except OverflowError:
            out.append(math.inf)
    return out


def _lines(body: bytes):
    """(line number, text) of every non-blank line of a JSON Lines body (read lazily: no list
    of every line is built); a body with none is :class:`ApiError` 400 ``empty_body``."""
    seen = False
    for number, raw in enumerate(io.BytesIO(body), 1):
        if raw.strip():
            seen = True
            yield number, raw
    if not seen:
        raise ApiError(400, "the body holds no line", code="empty_body")


def _dimension_error(expected: int, got: int) -> str:
    return f"features has {got} values; this node's behaviour vectors have {expected}"


def _json_object(raw: bytes | str, fields: set[str]) -> dict:
    """One JSON Lines line as an object with no field outside ``fields`` (``ValueError`` otherwise)."""
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("a line must be a JSON object")
    extra = obj.keys() - fields
    if extra:
        raise ValueError(f"unknown field(s): {', '.join(sorted(extra))}")
    return obj


def parse_behavior_lines(body: bytes, dimension: int | None) -> BehaviorBatch:
    """A JSON Lines body of ``{"agent_id", "features", "timestamp"?, "cohort"?}`` lines.

    ``dimension`` is the node's (None: the first good line of this body fixes it).
    Raises :class:`ApiError` 400 when the body has no line at all.
    """
    ids: list[str] = []
    rows: list[list[float]] = []
    cohorts: list[str | None] = []
    numbers: list[int] = []
    errors = Refusals()
    for number, raw in _lines(body):
        try:
            obj = _json_object(raw, _BEHAVIOR_FIELDS)
            agent = _agent_id(obj.get("agent_id"))
            features = obj.get("features")
            if not isinstance(features, list) or not features:
                raise ValueError("features must be a non-empty list of numbers")
            if not all(map(_is_number, features)):
                raise ValueError("features must hold finite numbers only")
            if dimension is not None and len(features) != dimension:
                raise ValueError(_dimension_error(dimension, len(features)))
            ts = obj.get("timestamp")
            if ts is not None and not _is_number(ts):
                raise ValueError("timestamp must be a finite number")
            cohort = _cohort(obj.get("cohort"))
        except (ValueError, RecursionError) as exc:       # json.JSONDecodeError is a ValueError
            errors.add(number, exc)
            continue
        dimension = len(features)
        numbers.append(number)
        ids.append(agent)
        rows.append(features)
        cohorts.append(cohort)
    try:
        X = np.array(rows, dtype=np.float64).reshape(len(rows), dimension or 0)
    except OverflowError:                        # a JSON integer beyond float64's range
        X = np.array([_floats_or_inf(r) for r in rows], dtype=np.float64).reshape(len(rows), dimension or 0)
    # ints beyond float64's range are inf here; magnitudes the detector refuses would fail the
    # window's round after the request was acknowledged (and again at every replay)
    usable = np.abs(X) < MAX_ABS_VALUE if X.size else np.ones(X.shape, dtype=bool)
    if not usable.all():
        bad = set(np.flatnonzero(~usable.all(axis=1)).tolist())
        keep = [i for i in range(len(ids)) if i not in bad]
        for i in sorted(bad):
            errors.add(numbers[i], "features overflow float64" if not np.isfinite(X[i]).all() else _TOO_LARGE)
        ids, cohorts, X, numbers = [ids[i] for i in keep], [cohorts[i] for i in keep], X[keep], [numbers[i] for i in keep]
    return BehaviorBatch(ids, X, cohorts, errors.sorted(), errors.unlisted, numbers)


def parse_behavior_arrow(body: bytes, dimension: int | None) -> BehaviorBatch:
    """An Arrow IPC stream with ``agent_id`` and either a list column ``features`` or one
    numeric column per feature (in schema order), ``timestamp`` and ``cohort`` optional.
    Rows with a null are refused alone; an unreadable stream is 400."""
    import pyarrow as pa

    from .arrow_stream import read_arrow_stream

    table = read_arrow_stream(body)
    names = table.schema.names
    if "agent_id" not in names:
        raise ApiError(400, "the Arrow stream has no agent_id column", code="malformed_body")
    _check_arrow_types(table.schema)
    if table.num_rows == 0:
        raise ApiError(400, "the body holds no row", code="empty_body")
    errors = Refusals()
    try:
        if "features" in names:
            col = table.column("features").combine_chunks()
            if not pa.types.is_list(col.type) and not pa.types.is_fixed_size_list(col.type):
                raise ApiError(400, "the features column must be a list of numbers", code="malformed_body")
            lists = col.to_pylist()
            lengths = np.array([-1 if v is None else len(v) for v in lists])
            d = dimension if dimension is not None else int(lengths[lengths > 0][0]) if (lengths > 0).any() else 0
            ok = lengths == d
            X = np.full((table.num_rows, max(d, 0)), np.nan)
            for i in np.flatnonzero(ok):
                X[i] = [np.nan if v is None else v for v in lists[i]]
        else:
            feature_names = [n for n in names if n not in _BEHAVIOR_FIELDS]
            for n in feature_names:
                t = table.schema.field(n).type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                    raise ApiError(400, f"column {n!r} is {t}, not a number", code="malformed_body")
            d = len(feature_names)
            if dimension is not None and d != dimension:
                raise ApiError(400, _dimension_error(dimension, d), code="dimension")
            X = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                                 for n in feature_names]) if d else np.empty((table.num_rows, 0))
            ok = np.ones(table.num_rows, dtype=bool)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise ApiError(400, f"unreadable Arrow columns: {exc}", code="malformed_body") from None
    if d == 0:
        raise ApiError(400, "no feature columns", code="malformed_body")
    raw_ids = table.column("agent_id").to_pylist()
    raw_cohorts = table.column("cohort").to_pylist() if "cohort" in names else [None] * table.num_rows
    finite = np.isfinite(X).all(axis=1)
    small = (np.abs(np.where(np.isfinite(X), X, 0.0)) < MAX_ABS_VALUE).all(axis=1)
    ids, rows, cohorts = [], [], []
    for i in range(table.num_rows):
        try:
            if not ok[i]:
                raise ValueError("features is null" if lengths[i] < 0 else _dimension_error(d, int(lengths[i])))
            if not finite[i]:
                raise ValueError("features must hold finite numbers only")
            if not small[i]:
                raise ValueError(_TOO_LARGE)
            agent = _agent_id(raw_ids[i])
            cohort = _cohort(raw_cohorts[i])
        except ValueError as exc:
            errors.add(i + 1, exc)
            continue
        ids.append(agent)
        rows.append(i)
        cohorts.append(cohort)
    return BehaviorBatch(ids, X[rows], cohorts, errors.sorted(), errors.unlisted, [i + 1 for i in rows])


def _check_arrow_types(schema) -> None:
    """Only plain types (no dictionary, null or nested values beyond a list of numbers): a column
    read into Python then costs at most a small multiple of its bytes in the body."""
    import pyarrow as pa

    def text(t) -> bool:
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    def number(t) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t)

    rules = {"agent_id": (lambda t: text(t) or pa.types.is_integer(t), "a string or integer column"),
             "cohort": (lambda t: text(t) or pa.types.is_null(t), "a string column"),
             "timestamp": (lambda t: number(t) or pa.types.is_timestamp(t) or pa.types.is_null(t), "a numeric column"),
             "features": (lambda t: (pa.types.is_list(t) or pa.types.is_fixed_size_list(t)) and number(t.value_type),
                          "a list of numbers")}
    for f in schema:
        ok, what = rules.get(f.name, (number, "a number"))
        if not ok(f.type):
            raise ApiError(400, f"column {f.name!r} is {f.type}: it must be {what}", code="malformed_body")


def parse_evidence_lines(body: bytes, source: str) -> EvidenceBatch:
    """A JSON Lines body of evidence; every row's ``source_node`` is ``source`` (the
    credential's). A line naming another ``source_node`` is refused alone."""
    rows: list[BayesianEvidence] = []
    lines: list[int] = []
    errors = Refusals()
    for number, raw in _lines(body):
        try:
            obj = _json_object(raw, _EVIDENCE_FIELDS)
            named = obj.get("source_node", source)
            if named != source:
                raise ValueError(f"source_node {named!r} is not this credential's source {source!r}")
            for key in ("evidence_id", "agent_id"):
                if key in obj and obj[key] is not None:
                    obj[key] = _agent_id(obj[key]) if key == "agent_id" else obj[key]
            if isinstance(obj.get("evidence_id"), bool) or not isinstance(obj.get("evidence_id"), (str, int)):
                raise ValueError("evidence_id must be a string or an integer")
            obj["evidence_id"] = str(obj["evidence_id"])
            for key in ("log_odds", "confidence", "timestamp"):
                if key in obj and not _is_number(obj[key]):
                    raise ValueError(f"{key} must be a finite number")
            obj["source_node"] = source
            rows.append(BayesianEvidence(**obj))
            lines.append(number)
        except (ValueError, TypeError, SwarmGuardError, RecursionError) as exc:
            errors.add(number, exc)
    return EvidenceBatch(rows, lines, errors.sorted(), errors.unlisted)
