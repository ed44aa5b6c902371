"""The readers of ``swarmguard detect``: CSV and JSON Lines on pyarrow, block by block; Parquet.

Text files are cut into blocks of whole records (:func:`_record_blocks`): at
most ``chunk_rows`` rows and about ``text_budget`` bytes, read from the binary
file with every line checked against ``max_line_bytes`` before it is parsed.
pyarrow (``pyarrow.csv``, ``pyarrow.json``) parses each block; when it refuses
a block, or the block holds a value detect refuses (a missing id, an empty,
non-numeric, non-finite or too large feature, ...), the same block, still in
memory, is parsed by the standard library reader (:class:`_CsvReader`,
:class:`_JsonlReader`), which names the line and column of each refused value
and lets ``skip_bad`` skip exactly those rows. The file is read once.

With ``engine="python"`` (or without pyarrow) the standard library readers read
the whole file themselves; Parquet is read by ``pyarrow.parquet`` in record
batches.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import InvalidInputError, MissingDependencyError
from .detect_chunks import _ArrowChunk, _Chunk, _JsonChunk, _NeedsLines
from .detect_stdlib import (
    _check_columns,
    _CsvReader,
    _JsonlReader,
    _read_header,
    _rows_per_chunk,
    _too_long,
)
from .detect_values import (
    _MISSING,
    _one_float,
    _pyarrow,
)

_INFER_SAMPLE = 10_000          # rows of the first chunk looked at to infer feature columns
_INFER_CELLS = 1_000_000        # ... but at most this many cells: wide files infer from fewer rows
_CSV_FIELD_LIMIT = csv.field_size_limit()   # the standard library's longest field (131,072 characters)


class _ParquetReader:
    unit = "row"

    def __init__(self, path: Path, chunk_rows: int):
        self.path, self.chunk_rows = path, chunk_rows
        pa, _, pq = _pyarrow()
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInputError(f"{path} is not a readable Parquet file: {exc}") from None
        self.schema = self._file.schema_arrow
        self.names = list(self.schema.names)
        try:
            _check_columns(path, self.names, "the schema names")
        except InvalidInputError:
            self._file.close()
            raise
        self.columns: list[str] | None = None

    def close(self) -> None:
        self._file.close()

    def numeric(self) -> list[str]:
        pa, _, _ = _pyarrow()
        return [f.name for f in self.schema
                if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)]

    def chunks(self) -> Iterator[_ArrowChunk]:
        row = 0
        for batch in self._file.iter_batches(batch_size=self.chunk_rows, columns=self.columns):
            n = batch.num_rows
            if n == 0:
                continue
            yield _ArrowChunk(batch, np.arange(row + 1, row + 1 + n, dtype=np.int64))
            row += n


# ---------------------------------------------------------------------------- one interface for every reader
class _Source:
    """A reader as :func:`~swarmguard.apps.detect.detect` drives it.

    ``first_chunk()`` parses the first rows (to check and infer columns);
    ``run(feed)`` then passes every chunk, the first included, to ``feed``,
    holding one chunk at a time. ``engine`` names what read the file.
    """

    unit = "line"
    names: list[str] | None = None
    engine = "python"

    def __init__(self, raw, chunks: Iterator[_Chunk]):
        self._raw, self._chunks = raw, chunks
        self._first: list[_Chunk] = []

    def close(self) -> None:
        self._raw.close()

    def first_chunk(self) -> _Chunk | None:
        chunk = next(self._chunks, None)
        if chunk is not None:
            self._first.append(chunk)
        return chunk

    def prepare(self, spec, clock=None) -> None:
        """What is read, once known: the columns wanted and the timestamp column's clock."""

    def run(self, feed: Callable[[_Chunk], None]) -> None:
        if self._first:
            feed(self._first.pop())     # nothing else holds the first chunk once it is fed
        for chunk in self._chunks:
            feed(chunk)


class _ParquetSource(_Source):
    unit = "row"
    engine = "pyarrow"

    def __init__(self, path: Path, chunk_rows: int):
        self.reader = _ParquetReader(path, chunk_rows)
        self.names = self.reader.names
        self._raw = self.reader
        self._chunks = None
        self._first = []

    def prepare_columns(self, columns: list[str]) -> None:
        self.reader.columns = columns
        self._chunks = self.reader.chunks()


class _Block(NamedTuple):
    """Whole records of a text file: ``data`` (bytes) from line ``line``; ``longest`` line in bytes.

    ``rest``: the records could not be cut safely (a CSV quote that does not
    pair up): ``data`` and everything after it go to the standard library.
    """

    data: bytes
    line: int
    longest: int
    rest: bool = False


class _Prefixed:
    """``head`` (bytes), then the binary file ``raw``, for ``readline``."""

    def __init__(self, head: bytes, raw):
        self._head, self._raw, self._in_head = io.BytesIO(head), raw, True

    def readline(self, limit: int = -1) -> bytes:
        if not self._in_head:
            return self._raw.readline(limit)
        line = self._head.readline(limit)
        if line.endswith(b"\n") or (limit >= 0 and len(line) >= limit):
            return line
        self._in_head = False
        return line + self._raw.readline(limit - len(line) if limit >= 0 else -1)


_OPENING = np.array([ord(","), ord("\n"), ord("\r"), ord('"')], dtype=np.uint8)


def _positions(data: bytes, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (plus ``offset``) of the newlines and of the quote characters in ``data``."""
    a = np.frombuffer(data, np.uint8)
    return np.flatnonzero(a == 10) + offset, np.flatnonzero(a == 34) + offset


def _scan(buf: bytes, nl: np.ndarray, q: np.ndarray | None, limit: int, eof: bool
          ) -> tuple[np.ndarray, np.ndarray, int | None, bool]:
    """Where the records of ``buf`` end, the lengths of its lines, the first line over ``limit``, stray quotes.

    ``nl`` and ``q``: the offsets of ``buf``'s newlines and (CSV; else None)
    quotes. A record ends at a newline (CSV: one after an even number of
    quotes, so not inside a quoted field). The quotes of ``buf`` alternate
    opening and closing; one that, in its place, does not open a field (after
    a delimiter, a line end or another quote) or does not close one (before
    them) is "stray": quote counting cannot be trusted then, and the caller
    hands the rest of the file to the standard library reader.
    """
    starts = np.zeros(nl.size, dtype=np.int64)
    starts[1:] = nl[:-1] + 1
    lengths = nl + 1 - starts
    tail = len(buf) - (int(nl[-1]) + 1 if nl.size else 0)
    over = np.flatnonzero(lengths > limit)
    long_at = int(over[0]) if over.size else (int(nl.size) if tail > limit else None)
    usable = nl[:long_at] if long_at is not None else nl
    stray = False
    if q is not None and q.size:
        a = np.frombuffer(buf, np.uint8)
        prev = np.where(q > 0, a[np.maximum(q - 1, 0)], ord(","))
        nxt = np.where(q + 1 < a.size, a[np.minimum(q + 1, a.size - 1)], ord(","))
        # ``buf`` starts at a record, so the quotes alternate opening (even index) and closing (odd).
        # Counting is right only if each does what its place says: an opening quote starts a field
        # (or is the second of a doubled quote), a closing one ends it (or is the first of a doubled
        # quote). A quote that opens inside an unquoted field (``ab"``) is a plain character to the
        # csv module whatever follows it, so the opening/closing test must go by position, not by
        # "either side looks right" (which let ``ab",`` pass and flipped every later record end).
        opening = np.arange(q.size) % 2 == 0
        stray = not bool(np.where(opening, np.isin(prev, _OPENING), np.isin(nxt, _OPENING)).all())
        usable = usable[np.searchsorted(q, usable) % 2 == 0]
    ends = usable + 1
    if eof and tail and long_at is None:
        ends = np.append(ends, len(buf))        # the last line has no newline
        lengths = np.append(lengths, tail)
    return ends, lengths, long_at, stray


def _record_blocks(raw, path: Path, *, first_line: int, max_line_bytes: int, rows: int, first_rows: int,
                   text_budget: int, quotes: bool, bom: bool) -> Iterator[_Block]:
    """Blocks of whole records from a binary file: at most ``rows`` records (``first_rows`` in the first)
    and about ``text_budget`` bytes; every line checked against ``max_line_bytes`` first.

    Reads ``max_line_bytes`` (at least 64 KiB, at most ``text_budget``) at a
    time, so a line without a newline costs about the limit before it is
    refused, whatever its length. Newlines and quotes are found once per byte
    read (their offsets are kept across reads and cuts).
    """
    read_size = max(1 << 16, min(text_budget, max_line_bytes + 1))
    buf, line, want, eof, at_start = b"", first_line, first_rows, False, bom
    nl = np.zeros(0, dtype=np.int64)
    q = np.zeros(0, dtype=np.int64) if quotes else None
    while True:
        while True:
            ends, lengths, long_at, stray = _scan(buf, nl, q, max_line_bytes, eof)
            if (eof or stray or long_at is not None or ends.size >= want
                    or (ends.size and ends[-1] >= text_budget)
                    or (not ends.size and len(buf) > text_budget + max_line_bytes)):
                break
            more = raw.read(read_size)
            if at_start:
                more = more[3:] if more.startswith(b"\xef\xbb\xbf") else more
                at_start = False
            if not more:
                eof = True
                continue
            more_nl, more_q = _positions(more, len(buf))
            nl = np.concatenate((nl, more_nl))
            if quotes:
                q = np.concatenate((q, more_q))
            buf += more
        if stray or (not ends.size and long_at is None and buf):
            yield _Block(buf, line, int(lengths.max()) if lengths.size else len(buf), rest=True)
            return
        if not ends.size:
            if long_at is not None:
                raise _too_long(path, line + long_at, max_line_bytes)
            return
        k = min(want, ends.size, max(1, int(np.searchsorted(ends, text_budget, side="right"))))
        cut = int(ends[k - 1])
        block, buf = buf[:cut], buf[cut:]
        n_lines = int(np.searchsorted(nl, cut))             # newlines before the cut
        longest = int(lengths[: n_lines + (not block.endswith(b"\n"))].max())
        nl = nl[n_lines:] - cut
        if quotes:
            q = q[np.searchsorted(q, cut):] - cut
        yield _Block(block, line, longest)
        del block
        line += n_lines
        want = rows


def _utf8(data: bytes, piece: int = 1 << 20) -> bool:
    """Whether ``data`` is UTF-8 text, decoded a piece at a time (no copy of the block as a whole)."""
    decode = codecs.getincrementaldecoder("utf-8")().decode
    view = memoryview(data)
    try:
        for at in range(0, len(data), piece):
            decode(view[at:at + piece], at + piece >= len(data))
    except UnicodeDecodeError:
        return False
    return True


def _lone_cr(data: bytes) -> bool:
    """Whether ``data`` holds a carriage return that is neither before a newline nor its last byte."""
    a = np.frombuffer(data, np.uint8)
    cr = np.flatnonzero(a[:-1] == 13)
    return bool(cr.size) and bool((a[cr + 1] != 10).any())


_JSON_BLANK = np.zeros(256, dtype=bool)
_JSON_BLANK[[ord(" "), ord("\t"), ord("\r"), ord("\n")]] = True     # JSON's own whitespace


def _json_lines(data: bytes) -> int:
    """How many lines of ``data`` hold more than JSON whitespace (the objects JSON Lines reads from it).

    A line of other whitespace (form feed, no-break space, ...), blank to the
    standard library reader, counts here: pyarrow refuses such a line, so the
    count can only send a block to the standard library, never accept one.
    """
    a = np.frombuffer(data, np.uint8)
    starts = np.flatnonzero(a == 10) + 1
    starts = np.concatenate(([0], starts[starts < a.size]))     # every line holds a byte (its newline at least)
    if not a.size:
        return 0
    # one byte a byte (not an offset a byte): the block's bytes are the budget of the run's memory
    return int(np.count_nonzero(np.logical_or.reduceat(~_JSON_BLANK[a], starts)))


class _ArrowText(_Source):
    """CSV or JSON Lines parsed by pyarrow block by block, a refused block again by the standard library."""

    engine = "pyarrow"

    def __init__(self, raw, path: Path, fmt: str, chunk_rows: int, max_line_bytes: int, text_budget: int):
        self.pa, self.pc, _ = _pyarrow()
        import pyarrow.csv as pacsv
        import pyarrow.json as pajson

        self._pacsv, self._pajson = pacsv, pajson
        self._raw, self.path, self.fmt = raw, path, fmt
        self.chunk_rows, self.max_line_bytes, self.text_budget = chunk_rows, max_line_bytes, text_budget
        first_line = 1
        if fmt == "csv":
            self.names, first_line = _read_header(raw, path, max_line_bytes)
            chunk_rows = _rows_per_chunk(chunk_rows, len(self.names))
        self.chunk_rows = chunk_rows
        self._blocks = _record_blocks(raw, path, first_line=first_line, max_line_bytes=max_line_bytes,
                                      rows=chunk_rows, first_rows=min(chunk_rows, _INFER_SAMPLE),
                                      text_budget=text_budget, quotes=fmt == "csv", bom=fmt != "csv")
        self._first = []
        self._first_block: _Block | None = None
        self._spec = self._clock = None
        self._first_python: Iterator[_Chunk] | None = None
        self._int_keys: set[str] = set()         # JSON key columns the first rows hold as integers
        self._bool_keys: set[str] = set()        # ... and as JSON booleans (a --label-column)
        self.blocks = self.fallbacks = 0

    # -- parsing one block
    def _arrow(self, block: _Block, first: bool = False) -> _ArrowChunk | None:
        """The block as pyarrow reads it, or None when pyarrow refuses it."""
        pa = self.pa
        if block.rest or not _utf8(block.data) or (self.fmt == "csv" and _lone_cr(block.data)):
            # pyarrow checks UTF-8 only in the columns it converts, and ends a CSV record at a lone
            # carriage return; the standard library refuses both, naming the line
            return None
        try:
            if self.fmt == "csv":
                if block.longest > _CSV_FIELD_LIMIT:   # the standard library refuses such fields: let it say so
                    return None
                if first:
                    types, include = {n: pa.string() for n in self.names}, self.names
                else:
                    spec = self._spec
                    text = [c for c in (spec.id_column, spec.cohort_column, spec.timestamp_column,
                                        spec.label_column) if c is not None]
                    types = {c: pa.string() for c in text} | {c: pa.float64() for c in spec.features}
                    if spec.timestamp_column is not None and self._clock_kind() == "number":
                        types[spec.timestamp_column] = pa.float64()
                    include = text + spec.features
                table = self._pacsv.read_csv(
                    pa.BufferReader(block.data),
                    read_options=self._pacsv.ReadOptions(column_names=self.names,
                                                         block_size=max(1 << 20, 2 * block.longest + 2)),
                    parse_options=self._pacsv.ParseOptions(newlines_in_values=True),
                    convert_options=self._pacsv.ConvertOptions(
                        column_types=types, include_columns=include, null_values=[""],
                        strings_can_be_null=False, quoted_strings_can_be_null=False))
            else:
                read_options = self._pajson.ReadOptions(block_size=max(1 << 20, 2 * block.longest + 2))
                if first:
                    parse = self._pajson.ParseOptions(unexpected_field_behavior="infer")
                else:
                    parse = self._pajson.ParseOptions(explicit_schema=self._json_schema(),
                                                      unexpected_field_behavior="ignore")
                table = self._pajson.read_json(pa.BufferReader(block.data), read_options=read_options,
                                               parse_options=parse)
                if table.num_rows != _json_lines(block.data):
                    return None     # e.g. two objects on one line: pyarrow reads both, JSON Lines refuses the line
        except (pa.ArrowException, UnicodeDecodeError, ValueError):
            return None
        return _ArrowChunk(table, None, text=True)

    def _json_schema(self):
        pa, spec = self.pa, self._spec
        fields = [(spec.id_column, pa.int64() if spec.id_column in self._int_keys else pa.string())]
        if spec.cohort_column is not None:
            fields.append((spec.cohort_column, pa.int64() if spec.cohort_column in self._int_keys else pa.string()))
        if spec.timestamp_column is not None:
            kind = self._clock_kind()
            fields.append((spec.timestamp_column, pa.float64() if kind == "number" else pa.string()))
        if spec.label_column is not None:   # typed as the first objects have it; anything else falls back
            label = spec.label_column
            fields.append((label, pa.bool_() if label in self._bool_keys else
                           pa.int64() if label in self._int_keys else pa.string()))
        fields += [(f, pa.float64()) for f in spec.features]
        return pa.schema(fields)

    def _clock_kind(self) -> str | None:
        return None if self._clock is None else self._clock.kind

    def _python(self, block: _Block) -> Iterator[_Chunk]:
        raw = _Prefixed(block.data, self._raw) if block.rest else io.BytesIO(block.data)
        if self.fmt == "csv":
            reader = _CsvReader(raw, self.path, self.chunk_rows, self.max_line_bytes, self.text_budget,
                                names=self.names, first_line=block.line)
        else:
            reader = _JsonlReader(raw, self.path, self.chunk_rows, self.max_line_bytes, self.text_budget,
                                  first_line=block.line)
        return reader.chunks()

    # -- the interface
    def first_chunk(self) -> _Chunk | None:
        block = next(self._blocks, None)
        if block is None:
            return None
        self._first_block = block
        chunk = self._arrow(block, first=True)
        if chunk is None:
            self._first_python = self._python(block)
            chunk = next(self._first_python, None)
            if chunk is None:       # only blank lines: the next block
                return self.first_chunk()
        elif chunk.n == 0:
            return self.first_chunk()
        self._first.append(chunk)
        if isinstance(chunk, _ArrowChunk):
            self._int_keys = {f.name for f in chunk.batch.schema if self.pa.types.is_integer(f.type)}
            self._bool_keys = {f.name for f in chunk.batch.schema if self.pa.types.is_boolean(f.type)}
        else:
            self._int_keys, self._bool_keys = set(), set()
            if isinstance(chunk, _JsonChunk):
                for name in {f for o in chunk.objs[:1] for f in o}:
                    vals = [v for v in islice(chunk.column(name), 1000) if v is not None and v is not _MISSING]
                    if vals and all(type(v) is int for v in vals):
                        self._int_keys.add(name)
                    if vals and all(type(v) is bool for v in vals):
                        self._bool_keys.add(name)
        return chunk

    def prepare(self, spec, clock=None) -> None:
        self._spec, self._clock = spec, clock

    def _feed_block(self, block: _Block, feed: Callable[[_Chunk], None], chunk: _Chunk | None = None,
                    python: Iterator[_Chunk] | None = None) -> None:
        self.blocks += 1
        if python is None:
            if chunk is None:
                chunk = self._arrow(block)
            if chunk is not None:
                if chunk.n == 0:
                    return
                try:
                    feed(chunk)
                    return
                except _NeedsLines:
                    pass
                chunk = None
            python = self._python(block)
        elif chunk is not None:     # the first python chunk of the block, already parsed
            feed(chunk)
            chunk = None
        self.fallbacks += 1
        for part in python:
            feed(part)
        part = None         # noqa: F841 - nothing holds the last chunk while the next block is parsed

    def run(self, feed: Callable[[_Chunk], None]) -> None:
        block, self._first_block = self._first_block, None
        if block is not None:
            python, self._first_python = self._first_python, None
            self._feed_block(block, feed, self._first.pop() if self._first else None, python)
        for block in self._blocks:
            self._feed_block(block, feed)
        if self.fallbacks:
            self.engine = (f"python for {self.fallbacks} of {self.blocks} block{'s' if self.blocks != 1 else ''} "
                           f"(pyarrow could not read them as given), pyarrow for the rest")


def _first_keys(first: _Chunk) -> list[str]:
    """The keys (JSON Lines) or columns the first chunk holds, in order of appearance."""
    if isinstance(first, _ArrowChunk):
        return list(first.batch.schema.names)
    seen: dict[str, None] = {}
    for o in first.objs[:_INFER_SAMPLE]:
        seen.update(dict.fromkeys(o))
    return list(seen)


def _infer_features(reader, first: _Chunk, exclude: set[str]) -> list[str]:
    """Numeric columns other than ``exclude``: by schema (Parquet, JSON read by pyarrow), else by the first
    rows' values (CSV: mostly numbers as text; JSON: mostly JSON numbers)."""
    if isinstance(reader, _ParquetSource):
        return [c for c in reader.reader.numeric() if c not in exclude]
    json_lines = getattr(reader, "fmt", "jsonl" if reader.names is None else "csv") == "jsonl"
    if json_lines and isinstance(first, _ArrowChunk):
        pa = first.pa
        return [f.name for f in first.batch.schema if f.name not in exclude
                and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    names = dict.fromkeys(_first_keys(first) if json_lines else reader.names)
    # wide files are judged on fewer rows, so that inference looks at no more than _INFER_CELLS values
    sample = min(first.n, _INFER_SAMPLE, max(100, _INFER_CELLS // max(1, len(names))))
    found = []
    for name in names:
        if name in exclude:
            continue
        if not json_lines and isinstance(first, _ArrowChunk):
            try:                # every value a number pyarrow reads: numeric, without a Python loop
                first.pc.cast(first._array(name).slice(0, sample), first.pa.float64())
                found.append(name)
                continue
            except first.pa.ArrowInvalid:
                pass            # count as the standard library reader does
        vals = list(islice(first.column(name), sample))
        present = [v for v in vals if not (v is None or v is _MISSING or (isinstance(v, str) and not v.strip()))]
        if json_lines:
            numeric = sum(1 for v in present if isinstance(v, (int, float)) and not isinstance(v, bool))
        else:
            try:
                numeric = np.fromiter(map(float, present), np.float64, len(present)).size
            except ValueError:
                numeric = sum(1 for v in present if not np.isnan(_one_float(v)))
        if present and 2 * numeric > len(present):
            found.append(name)
    return found


def open_source(raw_opener: Callable[[Path], Any], path: Path, fmt: str, chunk_rows: int, max_line_bytes: int,
                engine: str, text_budget: int) -> _Source:
    """The reader for ``path``: Parquet; CSV or JSON Lines on pyarrow; or (``engine="python"``, or pyarrow
    missing with ``engine="auto"``) the standard library readers."""
    if fmt == "parquet":
        return _ParquetSource(path, chunk_rows)
    use_arrow = engine != "python"
    if use_arrow:
        try:
            _pyarrow()
        except MissingDependencyError:
            if engine == "pyarrow":
                raise
            use_arrow = False       # "auto" on a broken install: the standard library reads text
    raw = raw_opener(path)
    try:
        if use_arrow:
            return _ArrowText(raw, path, fmt, chunk_rows, max_line_bytes, text_budget)
        if fmt == "csv":
            reader = _CsvReader(raw, path, chunk_rows, max_line_bytes, text_budget)
            source = _Source(raw, reader.chunks())
            source.names = reader.names
            return source
        return _Source(raw, _JsonlReader(raw, path, chunk_rows, max_line_bytes, text_budget).chunks())
    except BaseException:
        raw.close()
        raise
