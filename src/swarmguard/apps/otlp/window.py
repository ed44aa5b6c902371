"""Windows of spans: accumulate decoded exports, and at each window's end yield one round.

A :class:`WindowAggregator` runs on the caller's clock (the node's arrival time: a late
span counts in the current window). :meth:`WindowAggregator.add` reads a request's spans
into columns (:func:`~swarmguard.apps.otlp.spans.span_columns`) and keeps them; when
the clock passes the window's end, or on :meth:`WindowAggregator.close`, the window
closes into a :class:`ClosedWindow`: the agents active in it, their behaviour vectors
(:data:`~swarmguard.apps.otlp.features.FEATURES`) and their cohorts — one round of the
detector. Agent and tool codes live as long as the aggregator, so ``novel_tool_share``
can compare a window with every earlier one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InvalidInputError
from .features import FEATURE_NAMES, behaviour_matrix, pair_keys
from .spans import COHORT_FIELDS, OP_TOOL, NameTable, SpanColumns, span_columns

__all__ = ["AddResult", "ClosedWindow", "WindowAggregator", "concat_columns"]


@dataclass(frozen=True)
class AddResult:
    """What one request did: spans ``accepted`` into the window, spans ``rejected`` (no agent
    id, or a token count that is no count), and the windows that closed before they were added (oldest first)."""

    accepted: int
    rejected: int
    closed: tuple[ClosedWindow, ...] = ()


@dataclass(frozen=True)
class ClosedWindow:
    """One closed window: a round for the agents active in it.

    ``agent_ids`` (n,) str array; ``features`` (n, len(FEATURES)) float64 in
    :data:`~swarmguard.apps.otlp.features.FEATURE_NAMES` order; ``cohorts`` a list of n
    tuples of :data:`~swarmguard.apps.otlp.spans.COHORT_FIELDS` values; ``index`` counts
    windows from 0; ``start`` / ``end`` on the aggregator's clock; ``spans`` accepted.
    """

    index: int
    start: float
    end: float
    agent_ids: np.ndarray
    features: np.ndarray
    cohorts: list[tuple[str, ...]]
    spans: int

    feature_names: tuple[str, ...] = FEATURE_NAMES
    cohort_fields: tuple[str, ...] = COHORT_FIELDS


def concat_columns(chunks: list[SpanColumns], agents: list[str], cohorts: list[Any], tools: list[str]) -> SpanColumns:
    """The chunks' rows as one :class:`SpanColumns` (codes from the same name tables)."""
    def cat(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([getattr(c, name) for c in chunks]) if chunks else np.zeros(0, dtype)
    return SpanColumns(
        agent=cat("agent", np.int64), cohort=cat("cohort", np.int64), operation=cat("operation", np.int8),
        tool=cat("tool", np.int64), duration_s=cat("duration_s", np.float64),
        input_tokens=cat("input_tokens", np.float64), output_tokens=cat("output_tokens", np.float64),
        error=cat("error", bool), content_filter=cat("content_filter", bool), length=cat("length", bool),
        agents=agents, cohorts=cohorts, tools=tools, rejected=sum(c.rejected for c in chunks),
        bad_tokens=sum(c.bad_tokens for c in chunks))


class WindowAggregator:
    """Accumulates OTLP spans per agent and window, and closes windows into rounds.

    Parameters
    ----------
    window_s : float
        The window's length in seconds on ``clock``.
    clock : callable, optional
        Seconds, non-decreasing (default ``time.monotonic``). ``add`` and ``poll`` may
        also be given ``now``.

    Thread-safe: one lock around each call.

    Examples
    --------
    >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    >>> req = ExportTraceServiceRequest()
    >>> spans = req.resource_spans.add().scope_spans.add().spans
    >>> for agent in ("a-1", "a-2", "a-1"):
    ...     kv = spans.add(name="invoke_agent").attributes.add(key="gen_ai.agent.id"); kv.value.string_value = agent
    >>> agg = WindowAggregator(60.0, clock=lambda: 0.0)
    >>> agg.add(req, now=1.0)
    AddResult(accepted=3, rejected=0, closed=())
    >>> closed = agg.add(req, now=61.0).closed          # the first window ended at 60
    >>> closed[0].agent_ids.tolist(), closed[0].features.shape, closed[0].spans
    (['a-1', 'a-2'], (2, 20), 3)
    >>> agg.close().spans                             # the second window holds the late request
    3
    """

    def __init__(self, window_s: float, clock: Callable[[], float] | None = None) -> None:
        if not (isinstance(window_s, (int, float)) and np.isfinite(window_s) and window_s > 0):
            raise InvalidInputError(f"window_s must be a positive number of seconds, got {window_s!r}")
        self.window_s = float(window_s)
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._agents, self._cohorts, self._tools = NameTable(), NameTable(), NameTable()
        self._chunks: list[SpanColumns] = []
        self._pending = 0          # rows in _chunks (read on every request: no sum over chunks)
        self._start = float(self._clock())
        self._index = 0
        self._known_pairs = np.zeros(0, dtype=np.int64)
        self._earlier = np.zeros(0, dtype=bool)
        self._agent_cohort = np.zeros(0, dtype=np.int64)

    def export_state(self) -> dict[str, Any]:
        """What the aggregator carries from one window to the next, as plain values and
        arrays (a node's snapshot): the name tables, the window's start and index, the
        (agent, tool) pairs seen and the agents seen earlier with their first cohorts. Only
        between windows: spans in the open window are not exported (refused)."""
        with self._lock:
            if self._chunks:
                raise InvalidInputError("the open window holds spans: export the state after it closes")
            return {"agents": list(self._agents.names), "cohorts": [list(c) for c in self._cohorts.names],
                    "tools": list(self._tools.names), "start": self._start, "index": self._index,
                    "known_pairs": self._known_pairs.copy(), "earlier": self._earlier.copy(),
                    "agent_cohort": self._agent_cohort.copy()}

    def import_state(self, state: dict[str, Any]) -> None:
        """Take the state :meth:`export_state` exported (into an aggregator with no spans)."""
        with self._lock:
            if self._chunks:
                raise InvalidInputError("the open window holds spans: import a state into a fresh aggregator")
            agents, cohorts, tools = NameTable(), NameTable(), NameTable()
            for name in state["agents"]:
                agents.code(str(name))
            for parts in state["cohorts"]:
                cohorts.code(tuple(parts))
            for name in state["tools"]:
                tools.code(str(name))
            self._agents, self._cohorts, self._tools = agents, cohorts, tools
            self._start, self._index = float(state["start"]), int(state["index"])
            self._known_pairs = np.asarray(state["known_pairs"], dtype=np.int64).copy()
            self._earlier = np.asarray(state["earlier"], dtype=bool).copy()
            self._agent_cohort = np.asarray(state["agent_cohort"], dtype=np.int64).copy()

    @property
    def tables(self) -> tuple[NameTable, NameTable, NameTable]:
        """The aggregator's name tables (agents, cohorts, tools), for columns coded elsewhere
        (:meth:`add_columns`; hold no other thread's call meanwhile)."""
        return self._agents, self._cohorts, self._tools

    @property
    def window_index(self) -> int:
        """The index of the window now open."""
        return self._index

    @property
    def window_end(self) -> float:
        """When the open window closes, on the aggregator's clock."""
        return self._start + self.window_s

    @property
    def pending_spans(self) -> int:
        """Spans accepted into the open window."""
        return self._pending

    def add(self, request: Any, now: float | None = None) -> AddResult:
        """Read ``request`` (an ``ExportTraceServiceRequest``) into the window open at ``now``,
        closing first the windows that ended before ``now``."""
        with self._lock:          # the name tables are shared: reading and keeping under one lock
            columns = span_columns(request, self._agents, self._cohorts, self._tools)
            return self._keep(columns, now)

    def add_columns(self, columns: SpanColumns, now: float | None = None) -> AddResult:
        """Keep columns read with :meth:`read` (this aggregator's codes)."""
        with self._lock:
            return self._keep(columns, now)

    def read(self, request: Any) -> SpanColumns:
        """``request``'s spans as columns coded with this aggregator's name tables."""
        with self._lock:
            return span_columns(request, self._agents, self._cohorts, self._tools)

    def _keep(self, columns: SpanColumns, now: float | None) -> AddResult:
        closed = self._roll(now)
        if len(columns):
            self._chunks.append(columns)
            self._pending += len(columns)
        return AddResult(len(columns), columns.rejected + columns.bad_tokens, closed)

    def poll(self, now: float | None = None) -> tuple[ClosedWindow, ...]:
        """Close every window that ended before ``now``; returns them, oldest first."""
        with self._lock:
            return self._roll(now)

    def close(self, now: float | None = None) -> ClosedWindow:
        """Close the open window now (shutdown, tests), whatever its age, and open the next."""
        with self._lock:
            end = float(self._clock()) if now is None else float(now)
            return self._close_window(max(end, self._start))

    def _roll(self, now: float | None) -> tuple[ClosedWindow, ...]:
        now = float(self._clock()) if now is None else float(now)
        if now < self._start + self.window_s:
            return ()
        window = self._close_window(self._start + self.window_s)
        # the windows after it, up to now, saw no span: skipped in one step (their indices count)
        skipped = int((now - self._start) // self.window_s)
        self._start += skipped * self.window_s
        self._index += skipped
        return (window,)

    def _close_window(self, end: float) -> ClosedWindow:
        columns = concat_columns(self._chunks, self._agents.names, self._cohorts.names, self._tools.names)
        n_agents = len(self._agents)
        codes, X = behaviour_matrix(columns, known_pairs=self._known_pairs, earlier_agents=self._earlier)
        # each agent keeps the cohort it was first seen with
        if self._agent_cohort.size < n_agents:
            grown = np.full(n_agents, -1, dtype=np.int64)
            grown[: self._agent_cohort.size] = self._agent_cohort
            self._agent_cohort = grown
        if columns.agent.size:
            first = np.unique(columns.agent, return_index=True)
            new = self._agent_cohort[first[0]] < 0
            self._agent_cohort[first[0][new]] = columns.cohort[first[1][new]]
        tool_rows = (columns.operation == OP_TOOL) & (columns.tool >= 0)
        if tool_rows.any():
            self._known_pairs = np.union1d(self._known_pairs, pair_keys(columns.agent[tool_rows],
                                                                        columns.tool[tool_rows]))
        earlier = np.zeros(n_agents, dtype=bool)
        earlier[: self._earlier.size] = self._earlier
        earlier[codes] = True
        self._earlier = earlier
        names = self._agents.names
        cohort_names = self._cohorts.names
        window = ClosedWindow(
            index=self._index, start=self._start, end=end,
            agent_ids=np.array([names[c] for c in codes.tolist()], dtype=str) if codes.size else np.zeros(0, str),
            features=X, cohorts=[cohort_names[c] for c in self._agent_cohort[codes].tolist()],
            spans=len(columns))
        self._chunks = []
        self._pending = 0
        self._index += 1
        self._start = end
        return window
