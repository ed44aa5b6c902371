"""A file of OTLP JSON trace exports to behaviour vectors, without a server.

The OpenTelemetry Collector's ``file`` exporter writes one OTLP JSON
``ExportTraceServiceRequest`` per line; :func:`read_span_file` reads such a file (``.gz``
too) and returns its spans as one :class:`~swarmguard.apps.otlp.window.ClosedWindow`
(or one per ``window_lines`` lines), the same vectors ``POST /v1/traces`` makes.
A line that does not decode is :class:`~swarmguard.errors.MalformedInputError` with
its line number.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from ...errors import MalformedBodyError, MalformedInputError
from .decode import decode_export_request
from .window import ClosedWindow, WindowAggregator

__all__ = ["read_span_file", "iter_span_file_windows"]


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
