"""Accumulation for ``swarmguard detect``: chunks of rows to the latest row of every agent, in a tree.

:class:`_Ingest` checks a chunk's ids, cohorts, timestamps and features as
arrays, skips or reports the malformed rows, and hands the rest to
:class:`_Population`, which keeps each agent's latest row in a
:class:`~swarmguard.HierarchicalStatisticalTree`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any

import numpy as np

from ..api import HierarchicalStatisticalTree
from ..errors import MalformedInputError
from ..validation import MAX_ABS_VALUE
from .detect_chunks import _Chunk, _NeedsLines
from .detect_values import _Clock, _float_problem, _key_problem, _label_problem

_MAX_EXAMPLES = 5               # skipped rows remembered (with reasons) for the summary


class _Population:
    """The latest row of every agent, in a tree; agents numbered in order of first appearance."""

    def __init__(self, dim: int):
        self.tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=dim)
        self.number: dict[Any, int] = {}
        self.ids: list[Any] = []
        self.stamp: np.ndarray | None = None
        self.cohort_number: dict[str, int] = {}
        self.cohort_names: list[str] = []
        self.placed_in = np.full(0, -1, dtype=np.int64)    # cohort code of each agent in the tree
        self.label = np.zeros(0, dtype=bool)                # ground truth of each agent's latest row (--label-column)
        # every valid row, kept for detect --calibrate --window (rounds are cut after the whole
        # file is read: it need not be in time order): (agent numbers, X, stamps, cohort codes, labels)
        self.log: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] | None = None

    def add(self, keys: Any, X: np.ndarray, cohorts: list[str] | None, ts: np.ndarray | None,
            clock: _Clock | None, labels: np.ndarray | None = None) -> None:
        m = X.shape[0]
        key_list = keys.tolist() if isinstance(keys, np.ndarray) else keys
        number = self.number
        no = np.fromiter(map(number.get, key_list, repeat(-1)), np.int64, m)
        new = no < 0
        if new.any():
            fresh = list(dict.fromkeys(compress(key_list, new)))
            base = len(self.ids)
            number.update(zip(fresh, range(base, base + len(fresh)), strict=True))
            self.ids.extend(fresh)
            no[new] = np.fromiter(map(number.__getitem__, compress(key_list, new)), np.int64, int(new.sum()))
        codes = None
        if cohorts is not None:
            cnum = self.cohort_number
            codes = np.fromiter(map(cnum.get, cohorts, repeat(-1)), np.int64, m)
            if (codes < 0).any():
                for name in dict.fromkeys(compress(cohorts, codes < 0)):
                    cnum[name] = len(self.cohort_names)
                    self.cohort_names.append(name)
                codes = np.fromiter(map(cnum.__getitem__, cohorts), np.int64, m)
        if self.log is not None and ts is not None:
            self.log.append((no, X, ts, codes, labels))
        pos = np.arange(m)
        order = np.lexsort((pos, no) if ts is None else (pos, ts, no))
        sno = no[order]
        last = np.ones(m, dtype=bool)
        last[:-1] = sno[1:] != sno[:-1]
        pick = order[last]
        if ts is not None:
            if self.stamp is None:
                self.stamp = np.full(0, clock.oldest, dtype=clock.dtype)
            if self.stamp.size < len(self.ids):
                grown = np.full(max(len(self.ids), 2 * self.stamp.size), clock.oldest, dtype=self.stamp.dtype)
                grown[: self.stamp.size] = self.stamp
                self.stamp = grown
            fresh_enough = ts[pick] >= self.stamp[no[pick]]
            pick = pick[fresh_enough]
            self.stamp[no[pick]] = ts[pick]
        if pick.size == 0:
            return
        pick.sort()
        agents = no[pick]              # the tree knows agents by their number: int64 fast paths
        if labels is not None:         # the label travels with the row that is kept
            if self.label.size < len(self.ids):
                grown = np.zeros(max(len(self.ids), 2 * self.label.size), dtype=bool)
                grown[: self.label.size] = self.label
                self.label = grown
            self.label[agents] = labels[pick]
        if cohorts is None:
            self.tree.update_many(agents, X[pick])
            return
        c = codes[pick]
        if self.placed_in.size < len(self.ids):
            grown = np.full(max(len(self.ids), 2 * self.placed_in.size), -1, dtype=np.int64)
            grown[: self.placed_in.size] = self.placed_in
            self.placed_in = grown
        stays = self.placed_in[agents] == c
        rows = X[pick]
        if not stays.all():            # new agents, and agents whose cohort changed
            moving = ~stays
            names = np.array(self.cohort_names, dtype=str)
            self.tree.update_many(agents[moving], rows[moving], cohorts=names[c[moving]])
        if stays.any():
            self.tree.update_many(agents[stays], rows[stays])
        self.placed_in[agents] = c

    def cohort_sizes(self) -> dict[str, int]:
        """Agents per cohort, as the tree holds them."""
        return {name: int(round(self.tree.get_cohort_statistics((name,))["count"])) for name in self.cohort_names}

    def cohort_array(self) -> np.ndarray:
        """Each agent's cohort name (object array), as the tree holds it."""
        names = np.array([*self.cohort_names, ""], dtype=object)     # -1 (never placed): ""
        placed = np.full(len(self.ids), -1, dtype=np.int64)
        k = min(len(self.ids), self.placed_in.size)
        placed[:k] = self.placed_in[:k]
        return names[placed]

    def label_array(self) -> np.ndarray:
        """Each agent's label (its latest row's), in agent-number order."""
        return self.label[: len(self.ids)].copy()

    def id_array(self) -> np.ndarray:
        if self.ids and isinstance(self.ids[0], int):
            return np.array(self.ids, dtype=np.int64)
        return np.array(self.ids, dtype=str)



@dataclass
class _Spec:
    path: str
    id_column: str
    cohort_column: str | None
    timestamp_column: str | None
    features: list[str]
    skip_bad: bool
    label_column: str | None = None


class _Ingest:
    """Chunks -> validated arrays -> the population; counts rows, skips or reports malformed ones."""

    def __init__(self, spec: _Spec):
        self.spec = spec
        self.clock = _Clock(spec.timestamp_column) if spec.timestamp_column is not None else None
        self.pop = _Population(len(spec.features))
        self.rows_read = self.rows_skipped = self.chunks = 0
        self.examples: list[str] = []
        self.update_s = 0.0

    def feed(self, chunk: _Chunk) -> None:
        spec, clock, feats = self.spec, self.clock, self.spec.features
        # (rows refused, why row i is, the column at fault in row i: None for the whole row)
        checks: list[tuple[np.ndarray, Callable[[int], str], Callable[[int], str | None]]] = []
        if chunk.reason is not None:
            checks.append((chunk.bad, chunk.reason, lambda i: None))
        keys, kbad = chunk.keys(spec.id_column)
        checks.append((kbad, lambda i: _key_problem("agent id", spec.id_column, chunk.raw(spec.id_column, i)),
                       lambda i: spec.id_column))
        cohorts = None
        if spec.cohort_column is not None:
            cohorts, cbad = chunk.keys(spec.cohort_column)
            cohorts = cohorts.tolist() if isinstance(cohorts, np.ndarray) else cohorts
            cohorts = [str(c) for c in cohorts] if cohorts and not isinstance(cohorts[0], str) else cohorts
            checks.append((cbad, lambda i: _key_problem("cohort", spec.cohort_column, chunk.raw(spec.cohort_column, i)),
                           lambda i: spec.cohort_column))
        ts = None
        if clock is not None:
            ts, tbad = chunk.times(clock)
            checks.append((tbad, lambda i: clock.problem(chunk.raw(clock.name, i)), lambda i: clock.name))
        labels = None
        if spec.label_column is not None:
            labels, lbad = chunk.labels(spec.label_column)
            checks.append((lbad, lambda i: _label_problem(spec.label_column, chunk.raw(spec.label_column, i)),
                           lambda i: spec.label_column))
        X, fbad = chunk.floats(feats)
        # the library refuses |x| >= MAX_ABS_VALUE for the whole batch; here it is one row's fault
        fbad |= np.abs(X) >= MAX_ABS_VALUE

        def feature_column(i):
            return feats[int(np.argmax(fbad[i]))]

        def feature_reason(i):
            column = feature_column(i)
            return _float_problem(f"feature {column!r}", chunk.raw(column, i))

        checks.append((fbad.any(axis=1), feature_reason, feature_column))
        bad = np.zeros(chunk.n, dtype=bool)
        for mask, _, _ in checks:
            bad |= mask
        if bad.any() and chunk.where is None:
            raise _NeedsLines()         # before anything changed: the reader parses the block by line
        self.chunks += 1
        self.rows_read += chunk.n
        if bad.any():

            def why(i):
                return next(r(i) for mask, r, _ in checks if mask[i])

            if not spec.skip_bad:
                i = int(np.argmax(bad))
                column = next(c(i) for mask, _, c in checks if mask[i])
                raise MalformedInputError(spec.path, int(chunk.where[i]), why(i), unit=chunk.unit, column=column)
            self.rows_skipped += int(bad.sum())
            for i in np.flatnonzero(bad)[: _MAX_EXAMPLES - len(self.examples)]:
                self.examples.append(f"{chunk.unit} {int(chunk.where[i])}: {why(int(i))}")
            good = ~bad
            if not good.any():
                return
            keys = keys[good] if isinstance(keys, np.ndarray) else list(compress(keys, good))
            cohorts = None if cohorts is None else list(compress(cohorts, good))
            ts = None if ts is None else ts[good]
            labels = None if labels is None else labels[good]
            X = X[good]
        t1 = time.perf_counter()
        self.pop.add(keys, X, cohorts, ts, clock, labels)
        self.update_s += time.perf_counter() - t1

