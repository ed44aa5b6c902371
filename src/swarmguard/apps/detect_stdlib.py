"""The standard library readers of ``swarmguard detect``: ``csv`` and ``json``, line by line.

They are the reference: ``--csv-engine python`` reads whole files with them,
and the pyarrow readers (:mod:`.detect_readers`) hand them any block pyarrow
refuses or that holds a malformed row, because they know the line of every
row and the raw text of every value, for the error message and ``skip_bad``.
Every line is read with a bound (:func:`_bounded_lines`).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import compress, islice
from pathlib import Path

import numpy as np

from ..errors import EmptyInputError, InvalidInputError, MalformedInputError
from .detect_chunks import _CsvChunk, _JsonChunk
from .detect_values import _JSON_DECODE, _JSON_DECODE_HUGE_INTS, _short

MAX_COLUMNS = 10_000            # columns an input may have (CSV header, Parquet schema, JSON keys seen)
MAX_LINE_BYTES = 1 << 20        # default longest line (CSV, JSON Lines), newline included
_CHUNK_CELLS = 4_000_000        # a chunk holds at most this many cells (rows x columns): wide files, shorter chunks


class _LineTooLongError(MalformedInputError):
    """A line over ``max_line_bytes``: the run stops even with ``skip_bad`` (where the row ends is unknown)."""


def _too_long(path: Path, line: int, max_line_bytes: int) -> _LineTooLongError:
    return _LineTooLongError(
        str(path), line, f"line longer than {max_line_bytes:,} bytes (raise the limit with "
        f"--max-line-bytes; an overlong line stops the run even with --skip-bad)")


def _bounded_lines(raw, path: Path, max_line_bytes: int, consumed: list[int] | None = None,
                   first_line: int = 1, bom: bool = True) -> Iterator[str]:
    """The lines of a binary file as text (UTF-8, a leading BOM dropped), each at most ``max_line_bytes``.

    ``readline(limit + 1)`` never holds more than the limit (plus one byte) of
    a line in memory, so a multi-gigabyte line without a newline costs what a
    legal line costs before it is refused with :class:`MalformedInputError`.
    A decoding error surfaces as ``UnicodeDecodeError`` to the caller, who
    knows the line number. ``consumed[0]``, when given, counts the bytes read,
    so that a caller parsing the lines through ``csv.reader`` can end a chunk
    by size. ``first_line``: the number of the first line read.
    """
    readline = raw.readline
    limit = max_line_bytes
    lineno = first_line - 1
    line = readline(limit + 4) if bom else readline(limit + 1)   # room for a byte-order mark
    if bom and line.startswith(b"\xef\xbb\xbf"):
        line = line[3:]
    while line:
        lineno += 1
        if len(line) > limit:
            raise _too_long(path, lineno, max_line_bytes)
        if consumed is not None:
            consumed[0] += len(line)
        yield line.decode("utf-8")
        line = readline(limit + 1)


def _check_columns(path: Path, names: Sequence[str], what: str) -> None:
    """Refuse more than MAX_COLUMNS columns, or a name given twice (O(columns): one Counter)."""
    if len(names) > MAX_COLUMNS:
        raise InvalidInputError(f"{path} has {len(names):,} columns; detect reads at most {MAX_COLUMNS:,} "
                                f"(see docs/detect.md): keep the id, cohort, timestamp and feature columns")
    dup = sorted(name for name, k in Counter(names).items() if k > 1)
    if dup:
        shown = ", ".join(map(repr, dup[:10])) + (f" and {len(dup) - 10} more" if len(dup) > 10 else "")
        raise InvalidInputError(f"{path}: {what} {shown} more than once")


def _rows_per_chunk(chunk_rows: int, columns: int) -> int:
    """``chunk_rows``, lowered so that a chunk holds at most _CHUNK_CELLS cells."""
    return max(1, min(chunk_rows, _CHUNK_CELLS // max(1, columns)))


def _read_header(raw, path: Path, max_line_bytes: int) -> tuple[list[str], int]:
    """The CSV header's names and the number of the first line after it."""
    reader = csv.reader(_bounded_lines(raw, path, max_line_bytes))
    try:
        header = next(reader)
    except StopIteration:
        raise EmptyInputError(f"{path} is empty: a CSV file needs a header line") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise MalformedInputError(str(path), 1, f"unreadable header: {exc}") from None
    names = [h.strip() for h in header]
    _check_columns(path, names, "the header names")
    return names, reader.line_num + 1


# ---------------------------------------------------------------------------- the standard library readers
class _CsvReader:
    """CSV through the standard library's ``csv``, row by row, each row numbered by its first line.

    ``raw``: a binary file at the start of the data (after the header:
    ``names`` given, ``first_line`` the number of its first line) or at the
    start of the file (``names`` None: the header is read first).
    """

    unit = "line"

    def __init__(self, raw, path: Path, chunk_rows: int, max_line_bytes: int = MAX_LINE_BYTES,
                 text_budget: int = 8 << 20, names: list[str] | None = None, first_line: int = 1):
        self.path, self.text_budget = path, text_budget
        self._consumed = [0]            # bytes read so far: chunks end by size as well as by rows
        if names is None:
            names, first_line = _read_header(raw, path, max_line_bytes)
        self._reader = csv.reader(_bounded_lines(raw, path, max_line_bytes, self._consumed, first_line,
                                                 bom=first_line == 1))
        self._offset = first_line - 1   # csv's line_num counts from where this reader starts
        self.names = names
        self.index = {h: i for i, h in enumerate(self.names)}
        self.chunk_rows = _rows_per_chunk(chunk_rows, len(self.names))

    def chunks(self) -> Iterator[_CsvChunk]:
        reader, ncols, consumed, offset = self._reader, len(self.names), self._consumed, self._offset
        filler = [""] * ncols
        while True:
            # Row by row, so that a chunk ends at chunk_rows rows or self.text_budget of text, whichever
            # comes first, and a row with the wrong number of fields is dropped as soon as it is read: one
            # 1 MiB line of "12,12,..." is 350,000 Python strings (~20 MiB), and a chunk of such rows
            # would otherwise cost chunk_rows times that.
            rows: list[list[str]] = []
            starts: list[int] = []          # first line of each row (quoted fields may span lines)
            wrong: dict[int, int] = {}      # row -> its number of fields, when not the header's
            append, start_at = rows.append, starts.append
            line_num = reader.line_num
            budget = consumed[0] + self.text_budget
            try:
                for row in islice(reader, self.chunk_rows):
                    start_at(line_num + 1 + offset)
                    line_num = reader.line_num
                    if len(row) != ncols:
                        if row:             # a blank line is [] and is dropped below, not counted
                            wrong[len(rows)] = len(row)
                        row = filler if row else row
                    append(row)
                    if consumed[0] >= budget:
                        break
            except (csv.Error, UnicodeDecodeError) as exc:
                # csv counts a line it has parsed; a line that does not decode never reached it
                line = reader.line_num + offset + isinstance(exc, UnicodeDecodeError)
                raise MalformedInputError(str(self.path), line, f"unreadable CSV: {exc}") from None
            if not rows:
                return
            m = len(rows)
            where = np.fromiter(starts, np.int64, m)
            del starts
            blank = np.fromiter(map(len, rows), np.intp, m) == 0
            if blank.any():
                keep = ~blank
                renumber = np.cumsum(keep) - 1          # a row's index among the rows kept
                rows = list(compress(rows, keep))
                where = where[keep]
                wrong = {int(renumber[i]): k for i, k in wrong.items()}
                if not rows:
                    continue
            bad, reason = None, None
            if wrong:
                bad = np.zeros(len(rows), dtype=bool)
                bad[list(wrong)] = True

                def reason(i, wrong=wrong):
                    return f"expected {ncols} fields (as in the header), found {wrong[i]}"

            yield _CsvChunk(rows, where, self.index, bad, reason)
            del rows          # let the chunk go before the next one is read



class _JsonlReader:
    """JSON Lines through the standard library's ``json``, one object a line."""

    unit = "line"

    def __init__(self, raw, path: Path, chunk_rows: int, max_line_bytes: int = MAX_LINE_BYTES,
                 text_budget: int = 8 << 20, first_line: int = 1):
        self.path, self.chunk_rows, self.text_budget = path, chunk_rows, text_budget
        self._lines = _bounded_lines(raw, path, max_line_bytes, first_line=first_line, bom=first_line == 1)
        self._offset = first_line - 1

    def chunks(self) -> Iterator[_JsonChunk]:
        lineno = self._offset
        loads = _JSON_DECODE
        while True:
            lines: list[str] = []
            try:
                size = 0
                for line in islice(self._lines, self.chunk_rows):
                    lines.append(line)
                    size += len(line)
                    if size >= self.text_budget:    # long lines: fewer of them per chunk
                        break
            except UnicodeDecodeError as exc:
                raise MalformedInputError(str(self.path), lineno + len(lines) + 1, f"unreadable text: {exc}") from None
            if not lines:
                return
            where = np.arange(lineno + 1, lineno + 1 + len(lines), dtype=np.int64)
            lineno += len(lines)
            nonblank = np.fromiter(map(len, map(str.strip, lines)), np.intp, len(lines)) > 0
            if not nonblank.all():
                lines = list(compress(lines, nonblank))
                where = where[nonblank]
                if not lines:
                    continue
            problems: dict[int, str] = {}
            try:
                objs = list(map(loads, lines))
            except (ValueError, RecursionError):
                objs = []
                for i, text in enumerate(lines):
                    try:
                        objs.append(loads(text))
                    except ValueError as exc:
                        try:            # an integer of more digits than int() converts is a value too large
                            objs.append(_JSON_DECODE_HUGE_INTS(text))
                        except (ValueError, RecursionError):
                            objs.append(None)
                            problems[i] = f"invalid JSON: {exc}"
                    except RecursionError:      # "[[[[...": the decoder's depth is Python's recursion limit
                        objs.append(None)
                        problems[i] = "invalid JSON: nested too deeply"
            if not all(type(o) is dict for o in objs):
                for i, o in enumerate(objs):
                    if type(o) is not dict:
                        if i not in problems:
                            problems[i] = f"not a JSON object: {_short(o)}"
                        objs[i] = {}
            bad = None
            if problems:
                bad = np.zeros(len(objs), dtype=bool)
                bad[list(problems)] = True
            yield _JsonChunk(objs, where, bad, problems.__getitem__ if problems else None)
            del objs, lines   # let the chunk go before the next one is read
