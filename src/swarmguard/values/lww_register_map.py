"""Per-agent last-writer-wins registers, stored as arrays (a state-based CRDT).

Each agent's register holds its latest feature vector and anomaly score and the
region that wrote it (the agent's *home* region). Registers are ordered by the
key ``(timestamp, writer region id, writer sequence number)``: the timestamp
decides, the region id (compared as text) breaks timestamp ties, and the
writer's own sequence number breaks the remaining tie (two writes of one agent
in one region with one timestamp: the later arrival wins). The key is a total
order, so merge -- keep the larger key per agent -- is commutative, associative
and idempotent.

Agents are rows: an :class:`~swarmguard.values.id_index.IdIndex` maps ids to row numbers once, and every
operation is a vectorised NumPy step over the rows it touches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DimensionMismatchError, InvalidInputError, NonFiniteError, UnknownAgentError
from ..validation import MAX_ABS_VALUE, check_id_str_array, check_positive_int
from .agent_index import AgentIds, as_agent_ids, one_agent_id
from .id_index import IdIndex
from .npz import NpzBytes
from .version_vector import MAX_COUNT, VersionVector, check_region_name

__all__ = ["LWWRegisterMap", "RegisterChange"]

_FORMAT_VERSION = 1
_ENTRY_FIELDS = ("int_ids", "str_ids", "timestamp", "regions", "writer", "seq", "features", "anomaly_score")


@dataclass(frozen=True)
class RegisterChange:
    """What one write or merge changed: enough to keep derived moments in step.

    ``old_values`` / ``new_values`` are ``features`` with the anomaly score as
    the last column; ``old_writer`` is -1 where the agent had no value before.
    """

    rows: np.ndarray
    old_writer: np.ndarray
    old_values: np.ndarray
    new_writer: np.ndarray
    new_values: np.ndarray

    def __len__(self) -> int:
        return self.rows.shape[0]


def _key_greater(ts_a, rank_a, seq_a, ts_b, rank_b, seq_b) -> np.ndarray:
    """Element-wise ``(ts_a, rank_a, seq_a) > (ts_b, rank_b, seq_b)``."""
    return (ts_a > ts_b) | (
        (ts_a == ts_b) & ((rank_a > rank_b) | ((rank_a == rank_b) & (seq_a > seq_b)))
    )


def _winner_per_row(rows: np.ndarray, ts: np.ndarray, rank: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Positions of the largest key for each distinct row (one position per row)."""
    order = np.lexsort((seq, rank, ts, rows))
    rows_sorted = rows[order]
    last = np.ones(rows_sorted.shape[0], bool)
    last[:-1] = rows_sorted[1:] != rows_sorted[:-1]
    return order[last]


class LWWRegisterMap(NpzBytes):
    """Last-writer-wins register per agent, for d features plus an anomaly score.

    Parameters
    ----------
    dim : int
        Number of features d.

    Examples
    --------
    >>> import numpy as np
    >>> a = LWWRegisterMap(2)
    >>> _ = a.write_many([7, 8], [1.0, 1.0], "eu", 1, np.array([[1.0, 2.0], [3.0, 4.0]]), [0.1, 0.2])
    >>> b = LWWRegisterMap(2)
    >>> _ = b.write_many([7], [2.0], "us", 1, np.array([[9.0, 9.0]]), [0.9])
    >>> a += b          # agent 7 moved to "us" with a newer timestamp
    >>> a.get(7)["region"], a.get(7)["features"].tolist()
    ('us', [9.0, 9.0])
    >>> b += a
    >>> a == b          # merged both ways: identical state
    True
    """

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")
        self.index = IdIndex()
        self.region_names: list[str] = []
        self._code: dict[str, int] = {}
        self._rank = np.empty(0, np.int64)
        self._ts = np.empty(0)
        self._writer = np.empty(0, np.int32)
        self._seq = np.empty(0, np.int64)
        self._values = np.empty((0, self.dim + 1))  # features, then the anomaly score
        self._version = 0                            # bumped by every write (see version)

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return len(self.index)

    @property
    def version(self) -> int:
        """A count that changes whenever a register is written or a row is added: a reader that
        derived something from the registers (a ranking of their scores) knows it is current
        while this count and the map's identity are the ones it saw."""
        return self._version

    def anomaly_scores(self) -> np.ndarray:
        """Every row's anomaly score, in row order (a read-only view: copy to keep it)."""
        scores = self._values[: len(self.index), self.dim]
        scores.flags.writeable = False
        return scores

    def _grow(self, n: int) -> None:
        cap = self._ts.shape[0]
        if n <= cap:
            return
        old = cap
        cap = max(n, 2 * cap, 64)
        ts = np.full(cap, -np.inf)
        ts[:old] = self._ts[:old]
        writer = np.full(cap, -1, np.int32)
        writer[:old] = self._writer[:old]
        seq = np.full(cap, -1, np.int64)
        seq[:old] = self._seq[:old]
        values = np.zeros((cap, self.dim + 1))
        values[:old] = self._values[:old]
        self._ts, self._writer, self._seq, self._values = ts, writer, seq, values

    def region_code(self, name: str) -> int:
        """Code of region ``name`` in this map, adding it if new."""
        code = self._code.get(name)
        if code is None:
            code = len(self.region_names)
            self.region_names.append(name)
            self._code[name] = code
            # rank = position in text order; ties between writers compare ranks
            order = np.argsort(np.array(self.region_names, dtype=object))
            self._rank = np.empty(len(order), np.int64)
            self._rank[order] = np.arange(len(order))
        return code

    def _rank_of(self, writer: np.ndarray) -> np.ndarray:
        return np.where(writer >= 0, self._rank[np.maximum(writer, 0)] if self._rank.size else -1, -1)

    def _rows_for(self, ids: AgentIds) -> np.ndarray:
        before = len(self.index)
        rows = self.index.rows(ids.keys(), create=True)
        self._grow(len(self.index))
        if len(self.index) > before:  # fresh rows start empty: any write beats them
            self._version += 1
            self._ts[before : len(self.index)] = -np.inf
            self._writer[before : len(self.index)] = -1
            self._seq[before : len(self.index)] = -1
        return rows

    def _apply(self, rows, ts, writer, seq, values) -> RegisterChange:
        self._version += 1
        old_writer = self._writer[rows].copy()
        old_values = self._values[rows].copy()
        self._ts[rows] = ts
        self._writer[rows] = writer
        self._seq[rows] = seq
        self._values[rows] = values
        return RegisterChange(rows, old_writer, old_values, writer.astype(np.int32), values)

    def clamp_negative_scores(self) -> RegisterChange:
        """Write every anomaly score below 0 as 0, keeping each register's key (timestamp,
        writer, sequence number); the change (empty: none was below 0).

        For a holder whose scores are squared distances (a ``swarmguard serve`` node): a d²
        below 0 is rounding, and one held from an older version or an older log would ship in
        every delta to peers that refuse it (``merge_entries(..., nonnegative_scores=True)``).
        """
        n = len(self.index)
        rows = np.flatnonzero(self._values[:n, self.dim] < 0.0)
        if not rows.size:
            return RegisterChange(rows, np.empty(0, np.int32), np.empty((0, self.dim + 1)),
                                  np.empty(0, np.int32), np.empty((0, self.dim + 1)))
        values = self._values[rows].copy()
        values[:, self.dim] = 0.0
        return self._apply(rows, self._ts[rows].copy(), self._writer[rows].copy(), self._seq[rows].copy(), values)

    # ------------------------------------------------------------------ writes
    def write_many(
        self, agent_ids: Any, timestamps: np.ndarray, region: str, first_seq: int,
        features: np.ndarray, anomaly_scores: Any,
    ) -> tuple[RegisterChange, np.ndarray]:
        """Write a batch from one region; return the change and which inputs won.

        Inputs must already be validated (finite, right shapes): the replica and
        the API do that. Within the batch the largest key per agent wins (a
        timestamp tie goes to the later position); it is applied only if it beats
        the agent's current register. Winners get sequence numbers ``first_seq,
        first_seq + 1, ...`` in batch order.
        """
        ids = as_agent_ids(agent_ids)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        values = np.column_stack([np.asarray(features, dtype=np.float64),
                                  np.asarray(anomaly_scores, dtype=np.float64)])
        code = self.region_code(region)
        rows = self._rows_for(ids)
        n = rows.shape[0]
        # Candidate sequence numbers exceed every seq this region wrote before, so a
        # same-timestamp rewrite by the same region wins, as the later arrival must.
        cand_seq = first_seq + np.arange(n, dtype=np.int64)
        rank = np.full(n, self._rank[code])
        # one row (the per-item path): nothing to reduce
        best = np.zeros(1, np.int64) if n == 1 else _winner_per_row(rows, timestamps, rank, cand_seq)
        r = rows[best]
        wins = _key_greater(timestamps[best], rank[best], cand_seq[best],
                            self._ts[r], self._rank_of(self._writer[r]), self._seq[r])
        applied_pos = np.sort(best[wins])
        applied = np.zeros(n, bool)
        applied[applied_pos] = True
        seqs = first_seq + np.arange(applied_pos.shape[0], dtype=np.int64)
        change = self._apply(rows[applied_pos], timestamps[applied_pos],
                             np.full(applied_pos.shape[0], code, np.int32), seqs, values[applied_pos])
        return change, applied

    def write_one(self, ids: AgentIds, timestamp: float, region: str, seq: int,
                  values: np.ndarray) -> RegisterChange | None:
        """:meth:`write_many` for one validated row (the per-item path), in scalars.

        ``ids``: one agent id; ``values``: the ``(d + 1,)`` row of features then the
        anomaly score. Returns the change, or None when the write loses to the
        agent's register (the same key order as :meth:`write_many`).
        """
        won = self.write_one_row(ids, timestamp, region, seq, values)
        if won is None:
            return None
        row, old_writer, old_values = won
        old = np.zeros((1, self.dim + 1)) if old_values is None else np.array([old_values])
        return RegisterChange(np.array([row], np.int64), np.array([old_writer], np.int32), old,
                              np.array([self._code[region]], np.int32), self._values[row][None, :].copy())

    def write_one_row(self, ids: AgentIds | int | str, timestamp: float, region: str, seq: int,
                      values: Any) -> tuple[int, int, list[float] | None] | None:
        """:meth:`write_one` without arrays around the answer: ``(row, old_writer, old_values)``
        (the register's previous row as a list of floats, None where the agent had none;
        ``old_writer`` -1 then), or None when the write loses. ``ids``: one id, as
        ``AgentIds`` or as :func:`~swarmguard.validation.check_wire_id` returns it;
        ``values``: the ``(d + 1,)`` row (an array or a list of floats)."""
        code = self._code.get(region)
        if code is None:
            code = self.region_code(region)
        one = type(ids) is int or type(ids) is str
        row = self.index.row_of(ids if one else ids.first())
        if row < 0:                      # a new agent: the batch path creates its row
            row = int(self._rows_for(one_agent_id(ids) if one else ids)[0])
        old_writer = int(self._writer[row])
        old_values = None
        if old_writer >= 0:
            rank = self._rank
            if not (timestamp, int(rank[code]), seq) > (float(self._ts[row]), int(rank[old_writer]),
                                                        int(self._seq[row])):
                return None
            old_values = self._values[row].tolist()
        self._version += 1
        self._ts[row] = timestamp
        self._writer[row] = code
        self._seq[row] = seq
        self._values[row] = values
        return row, old_writer, old_values

    def update(self, agent_id: Any, timestamp: float, region: str, seq: int,
               features: Any, anomaly_score: float) -> bool:
        """Write one register; True when it became the agent's value."""
        _, applied = self.write_many([agent_id], np.array([float(timestamp)]), region, seq,
                                     np.asarray(features, dtype=np.float64)[None, :],
                                     np.array([float(anomaly_score)]))
        return bool(applied[0])

    # ------------------------------------------------------------------ reads
    def get(self, agent_id: Any) -> dict[str, Any]:
        """The register of one agent: timestamp, region, seq, features, anomaly_score."""
        row = int(self.index.row_of(as_agent_ids([agent_id]).first()))
        if row < 0:
            raise UnknownAgentError(f"agent {agent_id!r} has no register here")
        return {
            "timestamp": float(self._ts[row]),
            "region": self.region_names[int(self._writer[row])],
            "seq": int(self._seq[row]),
            "features": self._values[row, : self.dim].copy(),
            "anomaly_score": float(self._values[row, self.dim]),
        }

    def __contains__(self, agent_id: Any) -> bool:
        try:
            return int(self.index.row_of(as_agent_ids([agent_id]).first())) >= 0
        except (InvalidInputError, TypeError):
            return False

    def values_of_region(self, code: int) -> np.ndarray:
        """``(features, score)`` rows of the agents whose home is region ``code``."""
        n = len(self.index)
        return self._values[:n][self._writer[:n] == code]

    def seq_of(self, rows: np.ndarray) -> np.ndarray:
        """Writer sequence numbers of the registers at ``rows``."""
        return self._seq[rows]

    def rows_not_covered(self, vv: VersionVector) -> np.ndarray:
        """Rows whose ``(writer, seq)`` dot ``vv`` does not cover (what a peer with ``vv`` lacks)."""
        n = len(self.index)
        if not self.region_names:
            return np.empty(0, np.int64)
        seen = vv.as_array(self.region_names)
        writer = self._writer[:n]
        return np.flatnonzero(self._seq[:n] > seen[writer])

    # ------------------------------------------------------------------ entries (wire format)
    def entries(self, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Registers at ``rows`` (all when None) as a dict of arrays, int ids first."""
        if rows is None:
            rows = np.arange(len(self.index), dtype=np.int64)
        ids = AgentIds.from_keys(self.index.keys_of(rows))
        if ids.is_str is not None:
            order = np.concatenate([np.flatnonzero(~ids.is_str), np.flatnonzero(ids.is_str)])
            rows, ids = rows[order], ids.take(order)
            n_int = int((~ids.is_str).sum())
            int_ids = ids.ints[:n_int]
            str_ids = np.array(ids.strs[n_int:].tolist(), dtype=np.str_)
        else:
            int_ids, str_ids = ids.ints, np.empty(0, dtype="<U1")
        used = np.unique(self._writer[rows]) if rows.size else np.empty(0, np.int32)
        names = [self.region_names[c] for c in used.tolist()]
        # The table lists only the regions used, in text order, so equal states serialise equally.
        order = np.argsort(np.array(names, dtype=object)) if names else np.empty(0, np.int64)
        lut = np.zeros(max(len(self.region_names), 1), np.int32)
        lut[used[order]] = np.arange(len(names), dtype=np.int32)
        return {
            "format": np.array(_FORMAT_VERSION),
            "dim": np.array(self.dim),
            "int_ids": int_ids,
            "str_ids": str_ids,
            "timestamp": self._ts[rows].copy(),
            "regions": np.array([names[i] for i in order.tolist()], dtype=np.str_) if names else np.empty(0, "<U1"),
            "writer": lut[self._writer[rows]] if rows.size else np.empty(0, np.int32),
            "seq": self._seq[rows].copy(),
            "features": self._values[rows, : self.dim].copy(),
            "anomaly_score": self._values[rows, self.dim].copy(),
        }

    def _check_entries(self, entries: Mapping[str, Any], nonnegative_scores: bool = False) -> tuple:
        if not isinstance(entries, Mapping):
            raise InvalidInputError(f"register entries are a mapping of arrays, got {type(entries).__name__}")
        try:
            fmt, dim = np.asarray(entries["format"]), np.asarray(entries["dim"])
            if fmt.ndim or dim.ndim or fmt.dtype.kind not in "iu" or dim.dtype.kind not in "iu":
                raise InvalidInputError("register format and dim must be integer scalars")
            fmt, dim = int(fmt), int(dim)
            f = {k: np.asarray(entries[k]) for k in _ENTRY_FIELDS}
        except KeyError as exc:
            raise InvalidInputError(f"register entries lack field {exc}") from exc
        except (TypeError, ValueError) as exc:
            if isinstance(exc, InvalidInputError):
                raise
            raise InvalidInputError(f"register entries are malformed: {exc}") from exc
        if fmt != _FORMAT_VERSION:
            raise InvalidInputError(f"unsupported register format {fmt}")
        if dim != self.dim:
            raise DimensionMismatchError(f"register entries have {dim} features, this map has {self.dim}")
        int_ids, str_ids = f["int_ids"], f["str_ids"]
        if int_ids.ndim != 1 or str_ids.ndim != 1:
            raise InvalidInputError("register ids must be 1-D")
        if int_ids.size and int_ids.dtype.kind not in "iu":
            raise InvalidInputError("int_ids must be integers")
        if int_ids.size and int_ids.dtype.kind == "u" and int(int_ids.max()) > np.iinfo(np.int64).max:
            raise InvalidInputError("int_ids must fit in int64")
        if str_ids.size and str_ids.dtype.kind != "U":
            raise InvalidInputError("str_ids must be strings")
        if str_ids.size:
            check_id_str_array(str_ids, "str_ids")   # the rules of ids on the wire (no NUL)
        k = int_ids.shape[0] + str_ids.shape[0]
        # on the wire these are float arrays (what entries() writes); anything else is refused
        # rather than converted (an int64 beyond 2**53 would silently round)
        ts = f["timestamp"]
        if ts.shape != (k,) or (k and ts.dtype.kind != "f"):
            raise InvalidInputError(f"timestamp must be a float array of length {k}")
        ts = ts.astype(np.float64)
        writer, seq, names = f["writer"], f["seq"], f["regions"]
        if writer.shape != (k,) or (k and writer.dtype.kind not in "iu"):
            raise InvalidInputError(f"writer must be an int array of length {k}")
        if seq.shape != (k,) or (k and seq.dtype.kind not in "iu"):
            raise InvalidInputError(f"seq must be an int array of length {k}")
        if names.ndim != 1 or (names.size and names.dtype.kind != "U"):
            raise InvalidInputError("regions must be a 1-D string array")
        names_list = [check_region_name(x) for x in names.tolist()]
        if len(set(names_list)) != len(names_list):
            raise InvalidInputError("regions table repeats a name")
        if k and (writer.min() < 0 or writer.max() >= len(names_list)):
            raise InvalidInputError("writer codes fall outside the regions table")
        if k and seq.min() < 1:
            raise InvalidInputError("sequence numbers start at 1")
        if k and int(seq.max()) > MAX_COUNT:
            raise InvalidInputError("sequence numbers must be at most 2**62")
        feats = f["features"]
        scores = f["anomaly_score"]
        if feats.shape != (k, self.dim) or scores.shape != (k,):
            raise DimensionMismatchError(f"features must be ({k}, {self.dim}) and scores ({k},)")
        if k and (feats.dtype.kind != "f" or scores.dtype.kind != "f"):
            raise InvalidInputError("features and scores must be float arrays")
        if not (np.isfinite(ts).all() and np.isfinite(feats).all() and np.isfinite(scores).all()):
            raise NonFiniteError("register entries hold non-finite values")
        if nonnegative_scores and scores.size and scores.min() < 0:
            # the caller's scores are squared distances: below 0, chi2 ln p is NaN downstream
            raise InvalidInputError("register anomaly scores are squared distances: none may be below 0")
        if feats.size and np.abs(feats).max() >= MAX_ABS_VALUE:
            raise InvalidInputError(f"register features must be below {MAX_ABS_VALUE:g} in magnitude (as writes are)")
        ids = AgentIds(
            np.concatenate([int_ids.astype(np.int64), np.zeros(str_ids.shape[0], np.int64)]),
            None, None,
        )
        if str_ids.size:
            strs = np.empty(k, dtype=object)
            strs[int_ids.shape[0]:] = str_ids.tolist()
            is_str = np.zeros(k, bool)
            is_str[int_ids.shape[0]:] = True
            ids = AgentIds(ids.ints, strs, is_str)
        values = np.column_stack([feats.astype(np.float64), scores.astype(np.float64)])
        return ids, ts, names_list, writer.astype(np.int64), seq.astype(np.int64), values

    def merge_entries(self, entries: Mapping[str, Any], *, nonnegative_scores: bool = False) -> RegisterChange:
        """Join registers from another map (a delta or a full state) into this one.

        Everything is validated before anything changes; a bad message raises an
        ``InvalidInputError`` and leaves the map as it was. ``nonnegative_scores``:
        also refuse an anomaly score below 0 (a holder whose scores are squared
        distances, such as a ``swarmguard serve`` node, ranks them by their chi-square
        ``ln p``, NaN below 0). Off by default: a map accepts any finite score on a
        write, and must then accept it from a peer too, or the two would never converge.
        """
        ids, ts, names, writer, seq, values = self._check_entries(entries, nonnegative_scores)
        lut = np.array([self.region_code(nm) for nm in names], dtype=np.int32)
        if ts.shape[0] == 0:
            return self._apply(np.empty(0, np.int64), ts, np.empty(0, np.int32), seq, values)
        codes = lut[writer]
        rank = self._rank[codes]
        rows = self._rows_for(ids)
        best = _winner_per_row(rows, ts, rank, seq)
        r = rows[best]
        wins = _key_greater(ts[best], rank[best], seq[best],
                            self._ts[r], self._rank_of(self._writer[r]), self._seq[r])
        pick = best[wins]
        return self._apply(rows[pick], ts[pick], codes[pick], seq[pick], values[pick])

    def __iadd__(self, other: LWWRegisterMap) -> LWWRegisterMap:
        if not isinstance(other, LWWRegisterMap):
            return NotImplemented
        self.merge_entries(other.entries())
        return self

    def __add__(self, other: LWWRegisterMap) -> LWWRegisterMap:
        if not isinstance(other, LWWRegisterMap):
            return NotImplemented
        result = self.copy()
        result += other
        return result

    def copy(self) -> LWWRegisterMap:
        return LWWRegisterMap.from_dict(self.to_dict())

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, np.ndarray]:
        """Canonical state: entries sorted by agent id (ints, then strings)."""
        int_rows, str_rows = self.index.canonical_rows()
        return self.entries(np.concatenate([int_rows, str_rows]))

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LWWRegisterMap:
        if not isinstance(state, Mapping):
            raise InvalidInputError(f"register state is a mapping of arrays, got {type(state).__name__}")
        try:
            dim = np.asarray(state["dim"])
        except KeyError as exc:
            raise InvalidInputError(f"register state lacks field {exc}") from exc
        if dim.ndim or dim.dtype.kind not in "iu" or not 1 <= int(dim) <= (1 << 31):
            raise InvalidInputError(f"register dim must be a positive integer scalar, got {dim!r}")
        m = cls(int(dim))
        m.merge_entries(state)
        return m

    def __eq__(self, other: object) -> bool:
        """Same registers for the same agents (row order and region codes do not matter)."""
        if not isinstance(other, LWWRegisterMap):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        return all(np.array_equal(a[k], b[k]) for k in a)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"LWWRegisterMap(dim={self.dim}, agents={len(self)}, regions={sorted(self.region_names)})"
