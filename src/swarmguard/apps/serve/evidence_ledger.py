"""``EvidenceLedger``: every evidence row a node holds, by the region that first accepted it.

Each region numbers the evidence rows it accepts from observers 1, 2, 3, ...; a
ledger holds rows by ``(origin, seq)``. Its version vector counts, per origin,
the rows ``1..k`` it holds without a gap; rows past a gap (a delta that overtook
an earlier one) are held too and shipped on, and count once the gap fills.
:meth:`EvidenceLedger.delta_since` ships every row past a peer's vector and
:meth:`EvidenceLedger.plan` / :meth:`EvidenceLedger.commit` join a delta: rows
already held are skipped (a duplicated, reordered or replayed delivery changes
nothing), a row that differs from the one held under its number refuses the
whole delta, and the plan is made before anything changes (all-or-nothing).

Rows are the node's logged evidence rows ``[evidence_id, agent_id, type,
log_odds, confidence, timestamp, source_node]`` (JSON values); on the wire they
travel as one UTF-8 JSON array inside the delta's ``.npz`` (Python's float text
reads back bit for bit), never pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import InvalidInputError
from ...values.version_vector import MAX_COUNT, VersionVector, check_region_name

__all__ = ["EvidenceLedger", "LedgerPlan"]

_ROW_LENGTH = 7


class LedgerPlan:
    """What joining one delta adds: ``new`` maps origin -> the ``(seq, row)`` pairs not held yet."""

    def __init__(self, new: dict[str, list[tuple[int, list[Any]]]]):
        self.new = new

    def rows(self) -> list[list[Any]]:
        return [row for origin in sorted(self.new) for _, row in self.new[origin]]


class EvidenceLedger:
    """Evidence rows per origin region (module docstring)."""

    def __init__(self, region: str):
        self.region = check_region_name(region)
        self._rows: dict[str, dict[int, list[Any]]] = {}
        self._prefix: dict[str, int] = {}      # per origin: rows 1..k held without a gap

    @property
    def version(self) -> VersionVector:
        return VersionVector({o: k for o, k in self._prefix.items() if k})

    def _add(self, origin: str, seq: int, row: list[Any]) -> None:
        held = self._rows.setdefault(origin, {})
        held[seq] = row
        k = self._prefix.get(origin, 0)
        while k + 1 in held:
            k += 1
        self._prefix[origin] = k

    def append_local(self, rows: list[list[Any]]) -> None:
        """Rows this node accepted from observers (they get the next sequence numbers)."""
        held = self._rows.get(self.region, {})
        top = max(held, default=0)
        for i, row in enumerate(rows, start=1):
            self._add(self.region, top + i, list(row))

    def delta_since(self, peer: VersionVector) -> dict[str, np.ndarray]:
        """The rows ``peer`` lacks: ``evidence.json`` (uint8 UTF-8 of ``[[origin, seq, *row], ...]``)."""
        out = []
        for origin in sorted(self._rows):
            rows, since = self._rows[origin], peer[origin]
            for seq in sorted(s for s in rows if s > since):
                out.append([origin, seq, *rows[seq]])
        blob = json.dumps(out, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return {"evidence.json": np.frombuffer(blob, dtype=np.uint8)}

    @staticmethod
    def _parse(delta: Mapping[str, Any]) -> dict[str, list[tuple[int, list[Any]]]]:
        try:
            raw = np.asarray(delta["evidence.json"])
        except KeyError as exc:
            raise InvalidInputError(f"delta lacks field {exc}") from exc
        if raw.ndim != 1 or (raw.size and raw.dtype != np.uint8):
            raise InvalidInputError("evidence.json must be a 1-D uint8 array")
        try:
            items = json.loads(raw.tobytes().decode("utf-8")) if raw.size else []
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidInputError(f"evidence.json is not JSON: {exc}") from exc
        if not isinstance(items, list):
            raise InvalidInputError("evidence.json must be a JSON array")
        by_origin: dict[str, list[tuple[int, list[Any]]]] = {}
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 + _ROW_LENGTH):
                raise InvalidInputError(f"an evidence row is [origin, seq, {_ROW_LENGTH} fields]")
            origin, seq, row = item[0], item[1], item[2:]
            origin = check_region_name(origin)
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_COUNT:
                raise InvalidInputError(f"evidence seq must be an integer in [1, 2**62], got {seq!r}")
            _check_row(row)
            by_origin.setdefault(origin, []).append((seq, row))
        for origin, rows in by_origin.items():
            if len({s for s, _ in rows}) != len(rows):
                raise InvalidInputError(f"evidence rows of {origin!r} repeat a sequence number")
        return by_origin

    def plan(self, delta: Mapping[str, Any]) -> LedgerPlan:
        """Check a delta's rows against this ledger and say what joining them adds (changes nothing)."""
        new: dict[str, list[tuple[int, list[Any]]]] = {}
        for origin, rows in self._parse(delta).items():
            held = self._rows.get(origin, {})
            for seq, row in rows:
                if seq in held and held[seq] != row:
                    raise InvalidInputError(f"evidence {origin!r}#{seq} differs from the row held")
            fresh = [(seq, row) for seq, row in rows if seq not in held]
            if fresh:
                new[origin] = fresh
        return LedgerPlan(new)

    def commit(self, plan: LedgerPlan) -> None:
        for origin, rows in plan.new.items():
            for seq, row in rows:
                self._add(origin, seq, row)

    def origins(self) -> list[str]:
        """The regions whose rows this ledger holds, sorted."""
        return sorted(o for o, rows in self._rows.items() if rows)

    def rows_of(self, origin: str) -> list[list[Any]]:
        """The rows of ``origin`` held, by sequence number."""
        held = self._rows.get(origin, {})
        return [list(held[s]) for s in sorted(held)]

    # ---------------------------------------------------------------- snapshots
    def export_state(self) -> dict[str, Any]:
        """Every row held, as JSON values: ``{"region", "rows": {origin: [[seq, *row], ...]}}``
        (rows past a gap too; the version vector is recomputed from them on import)."""
        return {"region": self.region,
                "rows": {o: [[s, *self._rows[o][s]] for s in sorted(self._rows[o])] for o in self.origins()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> EvidenceLedger:
        """Inverse of :meth:`export_state`; every row checked as a delta's are (``InvalidInputError``)."""
        if not isinstance(state, Mapping) or not isinstance(state.get("rows"), Mapping):
            raise InvalidInputError("a ledger state is {\"region\": ..., \"rows\": {origin: [[seq, *row], ...]}}")
        ledger = cls(state.get("region"))
        # every shape checked here, so damage is one typed error, never a TypeError of the unpacking
        for origin, rows in state["rows"].items():
            if not isinstance(rows, list) or not all(isinstance(item, list) for item in rows):
                raise InvalidInputError(f"the ledger rows of {origin!r} must be a list of [seq, *row] lists")
        items = [[origin, *item] for origin, rows in state["rows"].items() for item in rows]
        try:
            blob = json.dumps(items, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:      # NaN or infinity, a value JSON cannot hold
            raise InvalidInputError(f"a ledger row holds a value a delta cannot carry: {exc}") from None
        for origin, rows in ledger._parse({"evidence.json": np.frombuffer(blob, dtype=np.uint8)}).items():
            for seq, row in sorted(rows, key=lambda sr: sr[0]):
                ledger._add(origin, seq, row)
        return ledger

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EvidenceLedger):
            return NotImplemented
        return {o: r for o, r in self._rows.items() if r} == {o: r for o, r in other._rows.items() if r}

    __hash__ = None


def _check_row(row: list[Any]) -> None:
    evidence_id, agent_id, kind = row[0], row[1], row[2]
    for value, what in ((evidence_id, "evidence_id"), (agent_id, "agent_id")):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise InvalidInputError(f"evidence {what} must be an int or a string, got {value!r}")
    if not isinstance(kind, str) or not isinstance(row[6], str):
        raise InvalidInputError("evidence type and source must be strings")
    for value in row[3:6]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInputError(f"evidence log_odds, confidence and timestamp must be numbers, got {value!r}")
        # json.loads reads NaN and Infinity; no node sends them (its rows passed ingest), and a
        # row holding one cannot be written back as JSON (the conflict alias, the log)
        if not math.isfinite(value):
            raise InvalidInputError(f"evidence log_odds, confidence and timestamp must be finite, got {value!r}")

