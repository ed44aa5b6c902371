"""A file of OTLP JSON trace exports to behaviour vectors, without a server.

The OpenTelemetry Collector's ``file`` exporter writes one OTLP JSON
``ExportTraceServiceRequest`` per line; :func:`read_span_file` reads such a file (``.gz``
too) and returns its spans as one :class:`~swarmguard.apps.otlp.window.ClosedWindow`
(or one per ``window_lines`` lines), the same vectors ``POST /v1/traces`` makes.
A line that does not decode is :class:`~swarmguard.errors.MalformedInputError` with
its line number.

:func:`read_span_file_by_time` windows a file by the spans' **own** timestamps instead
(``swarmguard detect --spans``): every span goes to the window of ``--window`` seconds that
holds its start time (its end where it has no start), counted from the earliest span of
the file, and the windows close in time order through one aggregator, so the vectors are
those the node would make had the spans arrived when they ran. It reads OTLP JSON (one
``ExportTraceServiceRequest`` per line, the Collector's ``file`` exporter with
``format: json``) or OTLP protobuf (a sequence of ``ExportTraceServiceRequest`` messages,
each preceded by its length as 4 bytes big-endian: the ``file`` exporter's ``format:
proto``), told apart by the first byte, ``.gz`` too. A malformed line (or message, by its
number and byte offset) is :class:`~swarmguard.errors.MalformedInputError` naming it.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import InvalidInputError, MalformedBodyError, MalformedInputError
from .decode import decode_export_request
from .spans import SpanColumns
from .window import ClosedWindow, WindowAggregator, concat_columns

__all__ = ["read_span_file", "iter_span_file_windows", "read_span_file_by_time", "SpanFileWindows"]

_PROTO_PREFIX = 4               # bytes of the big-endian length before each protobuf message
MAX_MESSAGE_BYTES = 64 << 20    # one message (or line) at most: the node's body limit


def iter_span_file_windows(path: str | Path, window_lines: int | None = None) -> Iterator[ClosedWindow]:
    """The file's windows: every ``window_lines`` lines (default: the whole file) close one."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    aggregator = WindowAggregator(1e300, clock=lambda: 0.0)
    in_window = 0
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                decoded = decode_export_request(line, "application/json")
            except MalformedBodyError as exc:
                raise MalformedInputError(str(path), number, str(exc)) from None
            aggregator.add(decoded.request, now=0.0)
            in_window += 1
            if window_lines is not None and in_window >= window_lines:
                yield aggregator.close(now=0.0)
                in_window = 0
    if in_window or window_lines is None:
        yield aggregator.close(now=0.0)


def read_span_file(path: str | Path) -> ClosedWindow:
    """Every span of the file as one window: one behaviour vector per agent.

    >>> import tempfile, os
    >>> line = ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"invoke_agent","attributes":'
    ...         '[{"key":"gen_ai.agent.id","value":{"stringValue":"a-1"}}]}]}]}]}')
    >>> folder = tempfile.mkdtemp(); path = os.path.join(folder, "spans.jsonl")
    >>> _ = open(path, "w").write(line + "\\n" + line + "\\n")
    >>> window = read_span_file(path)
    >>> window.agent_ids.tolist(), window.spans
    (['a-1'], 2)
    """
    return next(iter_span_file_windows(path))


@dataclass(frozen=True)
class SpanFileWindows:
    """A file of spans windowed by the spans' own clock (:func:`read_span_file_by_time`).

    ``windows``: the windows that hold spans, in time order; each one's ``index`` counts
    windows of ``window_s`` seconds from ``t0`` (the earliest span), ``start`` / ``end`` in
    Unix seconds. ``encoding`` is ``"json"`` or ``"protobuf"``; ``records`` the lines (or
    messages) read; ``spans`` those accepted; ``rejected`` the spans left out (no agent id,
    a token count that is no count, or no timestamp at all: ``untimed`` of them).
    """

    windows: list[ClosedWindow]
    window_s: float
    t0: float
    encoding: str
    records: int
    spans: int
    rejected: int
    untimed: int


def _records(path: Path) -> Iterator[tuple[int, bytes, str, int]]:
    """(number, body, content type, byte offset) of every record: JSON lines, or length-prefixed
    protobuf. A ``.gz`` file that is no gzip stream, or ends inside one, is
    :class:`~swarmguard.errors.MalformedInputError` naming the record it was reading."""
    opener = gzip.open if path.suffix == ".gz" else open
    number, unit = 0, "line"
    try:
        with opener(path, "rb") as handle:
            head = handle.peek(64)[:64] if hasattr(handle, "peek") else b""
            if head.lstrip()[:1] in (b"{", b""):
                offset = 0
                while True:
                    # at most one byte past the limit: an overlong line is refused without
                    # holding all of it
                    line = handle.readline(MAX_MESSAGE_BYTES + 1)
                    if not line:
                        return
                    number += 1
                    if len(line) > MAX_MESSAGE_BYTES:
                        raise MalformedInputError(str(path), number, f"line longer than {MAX_MESSAGE_BYTES} bytes")
                    if line.strip():
                        yield number, line, "application/json", offset
                    offset += len(line)
            unit, offset = "message", 0
            while True:
                prefix = handle.read(_PROTO_PREFIX)
                if not prefix:
                    return
                number += 1
                if len(prefix) < _PROTO_PREFIX:
                    raise MalformedInputError(str(path), number, f"truncated length prefix at byte {offset}",
                                              unit="message")
                size = int.from_bytes(prefix, "big")
                if size > MAX_MESSAGE_BYTES:
                    raise MalformedInputError(str(path), number, f"message length {size} at byte {offset} is over "
                                              f"{MAX_MESSAGE_BYTES} bytes (not a length-prefixed OTLP protobuf file?)",
                                              unit="message")
                body = handle.read(size)
                if len(body) < size:
                    raise MalformedInputError(str(path), number, f"truncated message at byte {offset}: {len(body)} "
                                              f"of {size} bytes", unit="message")
                yield number, body, "application/x-protobuf", offset
                offset += _PROTO_PREFIX + size
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        # the uncompressed byte offset means little here: the record's number says where
        raise MalformedInputError(str(path), max(number, 1), f"not a readable gzip stream: {exc}", unit=unit) from None


def _take(columns: SpanColumns, rows: np.ndarray) -> SpanColumns:
    """The rows ``rows`` of ``columns`` (the same name tables; counts of refusals not carried)."""
    names = ("agent", "cohort", "operation", "tool", "duration_s", "input_tokens", "output_tokens", "error",
             "content_filter", "length")
    return SpanColumns(**{n: getattr(columns, n)[rows] for n in names}, agents=columns.agents,
                       cohorts=columns.cohorts, tools=columns.tools)


def read_span_file_by_time(path: str | Path, window_s: float) -> SpanFileWindows:
    """Every span of the file, in windows of ``window_s`` seconds of the spans' own clock.

    Examples
    --------
    >>> import tempfile, os
    >>> def line(agent, t):
    ...     return ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"invoke_agent","startTimeUnixNano":"%d",'
    ...             '"attributes":[{"key":"gen_ai.agent.id","value":{"stringValue":"%s"}}]}]}]}]}' % (t * 10**9, agent))
    >>> folder = tempfile.mkdtemp(); path = os.path.join(folder, "spans.jsonl")
    >>> _ = open(path, "w").write("\\n".join([line("a-1", 100), line("a-2", 130), line("a-1", 170)]) + "\\n")
    >>> got = read_span_file_by_time(path, 60)
    >>> [(w.index, w.agent_ids.tolist(), w.spans) for w in got.windows], got.t0, got.encoding
    ([(0, ['a-1', 'a-2'], 2), (1, ['a-1'], 1)], 100.0, 'json')
    """
    if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and window_s > 0):
        raise InvalidInputError(f"--window must be a positive number of seconds, got {window_s!r}")
    path = Path(path)
    aggregator = WindowAggregator(1e300, clock=lambda: 0.0)
    chunks: list[SpanColumns] = []
    times: list[np.ndarray] = []
    records = rejected = 0
    encoding = "json"
    for number, body, content_type, offset in _records(path):
        encoding = "json" if content_type == "application/json" else "protobuf"
        try:
            decoded = decode_export_request(body, content_type)
        except MalformedBodyError as exc:
            where = "" if encoding == "json" else f"the message at byte {offset}: "
            raise MalformedInputError(str(path), number, where + str(exc),
                                      unit="line" if encoding == "json" else "message") from None
        records += 1
        columns = aggregator.read(decoded.request)
        rejected += columns.rejected + columns.bad_tokens
        if len(columns):
            chunks.append(columns)
            times.append(columns.start_s)
    agents, cohorts, tools = aggregator.tables
    every = concat_columns(chunks, agents.names, cohorts.names, tools.names)
    when = np.concatenate(times) if times else np.zeros(0)
    timed = np.isfinite(when)
    untimed = int((~timed).sum())
    t0 = float(when[timed].min()) if timed.any() else 0.0
    slot = np.full(when.shape, -1, dtype=np.int64)
    index = np.floor((when[timed] - t0) / window_s)
    if index.size and not (index.max() < 2.0**62):
        # past int64 the cast below wraps (a negative index would read as "untimed")
        raise InvalidInputError(f"--window {window_s:g} s is too short for the file's spans, which run over "
                                f"{float(when[timed].max() - t0):.6g} s: more than 2**62 windows")
    slot[timed] = index.astype(np.int64)
    windows: list[ClosedWindow] = []
    order = np.argsort(slot, kind="stable")
    slots, starts = np.unique(slot[order], return_index=True)
    bounds = np.append(starts, order.size)
    for k, lo, hi in zip(slots.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if k < 0:
            continue                       # no timestamp: counted in ``untimed``
        aggregator.add_columns(_take(every, np.sort(order[lo:hi])), now=0.0)
        closed = aggregator.close(now=0.0)
        windows.append(dataclasses.replace(closed, index=k, start=t0 + k * window_s, end=t0 + (k + 1) * window_s))
    return SpanFileWindows(windows, float(window_s), t0, encoding, records, int(timed.sum()), rejected + untimed,
                           untimed)
