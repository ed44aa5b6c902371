"""``swarmguard detect``: score a user's own telemetry file, agent by agent.

The input is CSV, JSON Lines or Parquet with an agent id column, optional
cohort (region) and timestamp columns, and numeric feature columns. It is read
once, in blocks, so files much larger than memory stream through: CSV and JSON
Lines are parsed by pyarrow (``pyarrow.csv``, ``pyarrow.json``) a block of
whole records at a time, Parquet by ``pyarrow.parquet`` a record batch at a
time (:mod:`.detect_readers`). Each chunk becomes NumPy arrays, is reduced to
the latest row of each agent, and is written into a
:class:`~swarmguard.HierarchicalStatisticalTree` with one ``update_many`` call
(:mod:`.detect_ingest`). Memory grows with the number of *agents*, not with
the number of rows.

"Latest" means the largest timestamp when a timestamp column is given (ties go
to the row further down the file), else the row furthest down the file. Across
chunks an agent's stored row is replaced only by a row whose timestamp is at
least its stored one, so the result does not depend on the chunk size.

Every agent is then scored by leave-one-out squared Mahalanobis distance
against all the others (:meth:`BehavioralDistributedProtocol.score_many`),
flagged by Benjamini–Hochberg false-discovery-rate control (``fdr``) or a
per-agent level (``alpha``), and written one row per agent, in the order
agents first appear in the input: ``agent_id, score, p_value, is_anomaly``,
and with ``explain=True`` why: the agent's cohort and its top features with
their shares of the score.

With ``calibrate=True`` and a ``window`` the file is instead cut into windows
of its timestamps, each scored as a round with calibrated p-values, the rounds'
flags and realised false-discovery rate reported (:mod:`.detect_rounds`).

Malformed rows (missing id, empty or non-numeric feature, NaN or infinity,
wrong number of fields, unreadable JSON, unreadable timestamp) raise
:class:`~swarmguard.errors.MalformedInputError` naming the file, the line
(1-based, the CSV header is line 1; Parquet files count rows) and the column,
or, with ``skip_bad=True``, are skipped and counted. A block that pyarrow
refuses, or that holds such a row, is parsed again from its bytes (still in
memory, never re-read from the file) by the standard library, which names
them. A bad value never becomes a NaN.

Examples
--------
>>> import tempfile, pathlib, numpy as np
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> rng = np.random.default_rng(0)
>>> lines = ["agent_id,cpu,mem"] + [f"a{i},{x:.4f},{y:.4f}" for i, (x, y) in enumerate(rng.normal(size=(300, 2)))]
>>> _ = (d / "t.csv").write_text("\\n".join(lines + ["a7,25.0,-20.0"]) + "\\n")
>>> res = detect(d / "t.csv", output=d / "scores.csv", warm_up=50)
>>> res.agents, res.rows_read, res.features
(300, 301, ['cpu', 'mem'])
>>> [str(a) for a in res.agent_ids[res.is_anomaly]]
['a7']
>>> (d / "scores.csv").read_text().splitlines()[0]
'agent_id,score,p_value,is_anomaly'
>>> res = detect(d / "t.csv", output=d / "why.csv", warm_up=50, explain=True)
>>> (d / "why.csv").read_text().splitlines()[0]
'agent_id,score,p_value,is_anomaly,feature_1,share_1,feature_2,share_2'
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from ..errors import (
    EmptyInputError,
    InvalidInputError,
    InvalidTypeError,
    MalformedInputError,
    MissingDependencyError,
)
from ..structures.scoring import MIN_POPULATION
from ..structures.scoring_modes import DEFAULT_SCORING, check_scoring
from ..validation import check_finite_float, check_fraction, check_positive_int
from .calibration_report import calibration_summary, null_state
from .detect_ingest import _Ingest, _Spec
from .detect_readers import _INFER_SAMPLE, _first_keys, _infer_features, _ParquetSource, open_source
from .detect_rounds import SINGLE_ROUND_NOTE, score_rounds, top_rows_from_shares
from .detect_stdlib import MAX_COLUMNS, MAX_LINE_BYTES, _check_columns, _LineTooLongError
from .detect_top import top_order, top_row
from .detect_values import MAX_KEY_CHARS, _pyarrow
from .output_paths import check_not_input, check_output_file

__all__ = ["detect", "DetectResult", "LabelledRates", "write_scores", "summary_dict", "FORMATS", "ENGINES", "input_format",
           "output_format", "MAX_COLUMNS", "MAX_FEATURES", "MAX_LINE_BYTES", "MAX_KEY_CHARS", "WHY_FEATURES"]

FORMATS = ("csv", "jsonl", "parquet")
ENGINES = ("auto", "pyarrow", "python")
_INPUT_EXT = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_OUTPUT_EXT = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_CHUNK_TEXT_BYTES = 8 << 20     # text per block (CSV, JSON Lines): parsed by the standard library, its Python
                                # objects cost up to ~20x the text ("12,12,..." or "[[],[],...]")
MAX_FEATURES = 256              # feature columns scored: every tree node holds a features x features co-moment
WHY_FEATURES = 3                # top contributing features written per agent with explain=True
_EXPLAIN_BATCH = 100_000        # agents explained per score_many call: n x d shares held a batch at a time


# ---------------------------------------------------------------------------- small helpers
def _suffix(path: Path) -> str:
    """The extension that decides the format, ignoring a trailing ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def input_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The input format: ``fmt`` when given, else from the extension (``.gz`` allowed for text)."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise InvalidInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    ext = _suffix(Path(path))
    if ext not in _INPUT_EXT:
        raise InvalidInputError(
            f"cannot tell the format of {str(path)!r} from its extension {ext or '(none)'!r}: "
            f"name it .csv, .jsonl, .ndjson or .parquet (optionally .gz for text), or pass --format"
        )
    return _INPUT_EXT[ext]


def output_format(path: str | os.PathLike) -> str:
    """``csv`` or ``parquet`` from the output path's extension."""
    ext = Path(path).suffix.lower()
    if ext not in _OUTPUT_EXT:
        raise InvalidInputError(f"output {str(path)!r} must end in .csv or .parquet, not {ext or '(no extension)'!r}")
    return _OUTPUT_EXT[ext]


def _open_binary(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _open_reader(path: Path, fmt: str, chunk_rows: int, max_line_bytes: int = MAX_LINE_BYTES,
                 engine: str = "auto"):
    """The reader of ``path`` (:func:`.detect_readers.open_source`); the file is opened here."""
    return open_source(_open_binary, path, fmt, chunk_rows, max_line_bytes, engine, _CHUNK_TEXT_BYTES)


# ---------------------------------------------------------------------------- result
@dataclass
class DetectResult:
    """What :func:`detect` found. Arrays are aligned, one entry per agent, in first-appearance order."""

    input: str
    format: str
    features: list[str]
    agent_ids: np.ndarray
    score: np.ndarray            # leave-one-out squared Mahalanobis distance
    p_value: np.ndarray
    is_anomaly: np.ndarray
    rows_read: int               # data rows (blank lines not counted)
    rows_skipped: int            # malformed rows skipped (skip_bad=True)
    rows_superseded: int         # valid rows replaced by a later row of the same agent
    method: str                  # the decision rule, e.g. "fdr(q=0.01)"
    warming_up: bool             # population below warm_up: nothing flagged
    warm_up: int
    output: str | None = None
    skipped_examples: list[str] = field(default_factory=list)
    top: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    chunks: int = 0
    engine: str = "python"       # what parsed the file: "pyarrow", "python", or which blocks each read
    cohort_sizes: dict[str, int] = field(default_factory=dict)   # agents per cohort (with a cohort column)
    cohort: np.ndarray | None = None        # each agent's cohort (with a cohort column)
    why_feature: np.ndarray | None = None   # explain=True: (agents, k) feature numbers, largest share first
    why_share: np.ndarray | None = None     # ... and each one's share of the agent's score
    window_agents: int | None = None        # window=...: the agents scored against (latest row recent enough;
                                            # with calibrate, the last round's agents)
    label: np.ndarray | None = None         # label_column=...: each agent's ground truth (its latest row's)
    truth: LabelledRates | None = None      # ... and the flags measured against it
    calibrate: bool = False                 # calibrate=True: calibrated p-values (.detect_rounds)
    rounds: list[dict[str, Any]] | None = None      # ... each round's agents, flags (false flags) and null
    calibration: dict[str, Any] | None = None       # ... calibration_summary of the rounds
    warnings: list[str] = field(default_factory=list)   # what the run could not do as asked (one line each)

    @property
    def agents(self) -> int:
        return int(self.agent_ids.size)

    @property
    def flagged(self) -> int:
        return int(self.is_anomaly.sum())


@dataclass(frozen=True)
class LabelledRates:
    """The flags against the ground truth of a ``label_column``.

    ``realised_fdr`` is the share of flags that are not anomalies (0 when nothing is flagged, the
    convention of the false-discovery rate); ``precision`` is ``1 - realised_fdr`` and None when
    nothing is flagged; ``recall`` is None when no agent is labelled an anomaly.
    """

    column: str
    anomalies: int          # agents labelled anomalous
    flagged: int
    true_flags: int
    false_flags: int
    realised_fdr: float
    precision: float | None
    recall: float | None

    @classmethod
    def measure(cls, column: str, label: np.ndarray, flags: np.ndarray) -> LabelledRates:
        anomalies, flagged = int(label.sum()), int(flags.sum())
        true_flags = int((flags & label).sum())
        false_flags = flagged - true_flags
        return cls(column=column, anomalies=anomalies, flagged=flagged, true_flags=true_flags,
                   false_flags=false_flags, realised_fdr=false_flags / flagged if flagged else 0.0,
                   precision=true_flags / flagged if flagged else None,
                   recall=true_flags / anomalies if anomalies else None)


def _resolve_decision(fdr: float | None, alpha: float | None) -> tuple[float | None, float]:
    if fdr is not None and alpha is not None:
        raise InvalidInputError("give --fdr or --alpha, not both")
    if alpha is not None:
        return None, check_fraction(alpha, "alpha", low_open=True, high_open=True)
    q = 0.01 if fdr is None else check_fraction(fdr, "fdr", low_open=True, high_open=True)
    return q, 1e-3


def _resolve_shrinkage(shrinkage: float | str) -> float | str:
    if isinstance(shrinkage, str):
        if shrinkage.strip().lower() == "auto":
            return "auto"
        try:
            shrinkage = float(shrinkage)
        except ValueError:
            raise InvalidInputError(f"shrinkage must be 'auto' or a number in [0, 1], got {shrinkage!r}") from None
    return check_fraction(shrinkage, "shrinkage")


def _parse_features(features: str | Sequence[str] | None) -> list[str] | None:
    if features is None:
        return None
    names = [f.strip() for f in features.split(",")] if isinstance(features, str) else [str(f).strip() for f in features]
    names = [f for f in names if f]
    if not names:
        raise InvalidInputError("features is empty: name at least one column, e.g. --features cpu,mem")
    dup = sorted(f for f, k in Counter(names).items() if k > 1)
    if dup:
        raise InvalidInputError(f"features names {', '.join(map(repr, dup))} more than once")
    return names


def detect(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    format: str | None = None,
    id_column: str = "agent_id",
    cohort_column: str | None = None,
    timestamp_column: str | None = None,
    features: str | Sequence[str] | None = None,
    chunk_rows: int = 200_000,
    fdr: float | None = None,
    alpha: float | None = None,
    shrinkage: float | str = "auto",
    warm_up: int | None = None,
    skip_bad: bool = False,
    top: int = 10,
    csv_engine: str = "auto",
    max_line_bytes: int = MAX_LINE_BYTES,
    explain: bool = False,
    scoring: str = DEFAULT_SCORING,
    window: float | None = None,
    label_column: str | None = None,
    calibrate: bool = False,
) -> DetectResult:
    """Score every agent of a telemetry file; write ``output`` (CSV or Parquet) when given.

    ``fdr`` (default 0.01 when ``alpha`` is not given) flags agents by
    Benjamini–Hochberg false-discovery-rate control; ``alpha`` instead flags
    every agent whose p-value is below it. See the module docstring for the
    input rules. Raises :class:`MalformedInputError` on the first malformed row
    unless ``skip_bad``; every option is checked before the input is read.

    ``csv_engine``: ``"auto"`` parses CSV and JSON Lines with pyarrow, block
    by block, and parses a block pyarrow refuses, or one holding a malformed
    row, again from memory with the standard library (so errors, line numbers
    and ``skip_bad`` behave the same); ``"pyarrow"`` the same, but an error
    when pyarrow is missing; ``"python"`` always the standard library.

    ``max_line_bytes``: the longest line (CSV, JSON Lines; newline included)
    read; a longer one raises :class:`MalformedInputError` having held at
    most about that much of it in memory. Inputs may have at most
    :data:`MAX_COLUMNS` columns and :data:`MAX_FEATURES` features.

    ``explain``: also find, for every agent, the :data:`WHY_FEATURES`
    features that contribute most to its score and their shares of it
    (``why_feature``, ``why_share``), written to ``output`` as
    ``feature_1, share_1, ...`` (with ``cohort`` first when there is a
    cohort column).

    ``scoring``: what every agent is scored against (:data:`swarmguard.SCORING_MODES`):
    ``"mahalanobis"`` all the others' moments, ``"robust"`` the moments of the
    agents not flagged under those (judged once, after the whole file is read).

    ``window`` (needs ``timestamp_column``): agents are scored against the
    agents whose latest row is at most ``window`` older than the newest row
    (seconds for ISO 8601 timestamps, the column's own unit for numbers), so
    that agents gone quiet long ago do not stand for a population that has
    moved on; an agent outside the window is scored against those inside
    (:mod:`swarmguard.structures.window`).

    ``label_column``: a ground-truth column, not scored (a number, non-zero is an
    anomaly; a bool; or true/false, yes/no): each agent's label is its latest row's,
    and the result's ``truth`` (:class:`LabelledRates`) gives the flags' realised
    false-discovery rate, precision and recall against it (with ``window``, over the
    agents inside it: those outside are not judged). A missing or unreadable
    label is a malformed row.

    ``calibrate``: calibrated p-values (:mod:`swarmguard.structures.score_null`): a round's
    p-value is its score's rank among the scores of agents not flagged in earlier rounds
    (the detector's ``calibrate=True``). It needs rounds: with ``window`` the file is cut into
    consecutive windows of that length from its oldest timestamp, each scored as a round against
    the agents active in it (:mod:`.detect_rounds`; every row is kept in memory to cut them), and
    each agent's output row is its latest row as scored in its round; ``rounds`` and
    ``calibration`` say which rounds were calibrated and, with ``label_column``, the realised
    false-discovery rate of the calibrated rounds apart from the warm-up rounds. A file that makes
    one round (no ``window``, or every row in one window) cannot warm the null: its p-values are
    the mode's own, and ``warnings`` says so.
    """
    if not isinstance(calibrate, bool):
        raise InvalidTypeError(f"calibrate must be True or False, got {calibrate!r}")
    if csv_engine not in ENGINES:
        raise InvalidInputError(f"csv_engine must be 'auto', 'python' or 'pyarrow', got {csv_engine!r}")
    t_start = time.perf_counter()
    path = Path(input)
    fmt = input_format(path, format)
    out_fmt = output_format(output) if output is not None else None
    if fmt == "parquet" or out_fmt == "parquet" or csv_engine == "pyarrow":
        _pyarrow()
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    top = check_positive_int(top, "top", minimum=0)
    q, level = _resolve_decision(fdr, alpha)
    shrink = _resolve_shrinkage(shrinkage)
    scoring = check_scoring(scoring)
    if window is not None:
        window = check_finite_float(window, "window")
        if window <= 0:
            raise InvalidInputError(f"--window must be > 0, got {window}")
        if timestamp_column is None:
            raise InvalidInputError("--window needs --timestamp-column (the age of an agent's latest row)")
    if warm_up is not None:
        warm_up = check_positive_int(warm_up, "warm_up", minimum=MIN_POPULATION)
    max_line_bytes = check_positive_int(max_line_bytes, "max_line_bytes", minimum=16)
    wanted = _parse_features(features)
    if wanted is not None and len(wanted) > MAX_FEATURES:
        raise InvalidInputError(f"{len(wanted)} features named; detect scores at most {MAX_FEATURES}")
    special = [c for c in (id_column, cohort_column, timestamp_column, label_column) if c is not None]
    if len(set(special)) != len(special):
        raise InvalidInputError("the id, cohort, timestamp and label columns must be different columns")
    if wanted is not None and set(wanted) & set(special):
        raise InvalidInputError(f"features may not include the id, cohort, timestamp or label column ({', '.join(sorted(set(wanted) & set(special)))})")
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    if output is not None:     # before the input is read: a bad output path never costs a run
        check_output_file(output, "--output")
        check_not_input(output, path, "--output")

    reader = _open_reader(path, fmt, chunk_rows, max_line_bytes, csv_engine)
    try:
        names = reader.names
        if names is not None:
            missing = [c for c in special + (wanted or []) if c not in set(names)]
            if missing:
                what = "column" if fmt == "parquet" else "column"
                listing = "its columns" if fmt == "parquet" else "its header"
                raise InvalidInputError(f"{path} has no {what} {', '.join(map(repr, missing))}; "
                                        f"{listing}: {', '.join(names)}")
        if isinstance(reader, _ParquetSource):
            feats = wanted if wanted is not None else _infer_features(reader, None, set(special))
            reader.prepare_columns(special + feats)
        t_read = time.perf_counter()
        first = reader.first_chunk()
        if first is None:
            raise EmptyInputError(f"{path} has no data rows")
        if fmt == "jsonl":
            seen = _first_keys(first)
            _check_columns(path, seen, "the objects name")
            missing = [c for c in special + (wanted or []) if c not in seen]
            if missing:
                raise InvalidInputError(
                    f"{path}: no object among the first {min(first.n, _INFER_SAMPLE)} has the key "
                    f"{', '.join(map(repr, missing))}; keys seen: {', '.join(seen) or '(none)'}")
        if wanted is None:
            feats = _infer_features(reader, first, set(special))
            if not feats:
                raise InvalidInputError(f"{path}: no numeric feature columns found besides {', '.join(special)}; name them with --features")
            if len(feats) > MAX_FEATURES:
                raise InvalidInputError(f"{path} has {len(feats):,} numeric columns; detect scores at most "
                                        f"{MAX_FEATURES}: choose them with --features")
        else:
            feats = wanted
        del first             # the run holds one chunk at a time: the first too is freed once fed
        spec = _Spec(str(path), id_column, cohort_column, timestamp_column, list(feats), skip_bad, label_column)
        ingest = _Ingest(spec)
        if calibrate and window is not None:
            ingest.pop.log = []        # every row: the rounds are cut once the file is read
        reader.prepare(spec, ingest.clock)
        reader.run(ingest.feed)
        engine = reader.engine
    finally:
        reader.close()
    t_ingest = time.perf_counter()
    pop, rows_read, rows_skipped = ingest.pop, ingest.rows_read, ingest.rows_skipped
    if not pop.ids:
        raise EmptyInputError(f"{path}: no valid rows ({rows_skipped} malformed rows skipped)")

    t2 = time.perf_counter()
    ids = pop.id_array()
    cohort = pop.cohort_array() if cohort_column is not None else None
    k_why = min(WHY_FEATURES, len(feats))
    calibration = rounds = None
    warnings: list[str] = []
    if calibrate and window is not None:
        got = score_rounds(pop, ingest.clock, window, level=level, q=q, shrink=shrink, warm_up=warm_up,
                           scoring=scoring, k=k_why)
        pop.log = None
        score, p_value, flags = got.score, got.p_value, got.is_anomaly
        why_feature, why_share = (got.why_feature, got.why_share) if explain else (None, None)
        top_rows = top_rows_from_shares(ids, score, p_value, flags, list(feats), cohort, got.why_feature,
                                         got.why_share, top)
        label = got.label
        # every output row was judged, in its own round
        truth = None if label is None else LabelledRates.measure(label_column, label, flags)
        method, warming_up, warm_up_used, window_agents = got.method, got.warming_up, got.warm_up, got.last_round_agents
        rounds, calibration = got.rounds, got.calibration
        if len(rounds) == 1:
            warnings.append(SINGLE_ROUND_NOTE.format(why=f"every row falls in one --window of {window:g}"))
    else:
        window_agents = None
        if window is not None:
            window_agents = _keep_window(pop, window, ingest.clock)
        protocol = BehavioralDistributedProtocol(pop.tree, significance_level=level, fdr=q, shrinkage=shrink,
                                                 warm_up=warm_up, scoring=scoring, calibrate=calibrate)
        numbers = np.arange(ids.size)
        met = null_state(protocol.null, ids.size, q, 1)
        res = protocol.score_many(numbers, fdr=q)
        score, p_value, flags = res["mahalanobis_squared"], res["p_value"], res["is_anomaly"]
        why_feature = why_share = None
        if explain:
            why_feature, why_share = _explain(protocol, numbers, score, k_why)
        top_rows = _top_rows(protocol, ids, numbers, score, p_value, flags, list(feats), cohort, top)
        label = truth = None
        judged = np.asarray(res["in_window"], dtype=bool) if "in_window" in res else np.ones(ids.size, dtype=bool)
        if label_column is not None:
            label = pop.label_array()
            # with a window, agents outside it are scored but not judged (never flagged, not in the FDR
            # procedure): counting their labels would charge the flags with misses they could not make
            truth = LabelledRates.measure(label_column, label[judged], np.asarray(flags, dtype=bool)[judged])
        method, warming_up, warm_up_used = res["method"], bool(res["warming_up"]), protocol.warm_up
        if calibrate:
            flagged_now = np.asarray(flags, dtype=bool)[judged]
            rounds = [{"round": 0, "window_start": None, "agents": int(judged.sum()),
                       "flagged_anomalous": int(flagged_now.sum()),
                       "flags_false": None if truth is None else truth.false_flags, "method": method, **met}]
            calibration = calibration_summary(rounds, rounds[0]["agents"], q, 1)
            warnings.append(SINGLE_ROUND_NOTE.format(why="no --window"))
    t3 = time.perf_counter()
    result = DetectResult(
        input=str(path), format=fmt, features=list(feats), agent_ids=ids, score=score, p_value=p_value,
        is_anomaly=flags, rows_read=rows_read, rows_skipped=rows_skipped, rows_superseded=rows_read - rows_skipped - len(pop.ids),
        method=method, warming_up=warming_up, warm_up=warm_up_used,
        skipped_examples=ingest.examples, top=top_rows, chunks=ingest.chunks, engine=engine,
        cohort_sizes=pop.cohort_sizes(), cohort=cohort, why_feature=why_feature, why_share=why_share,
        window_agents=window_agents, label=label, truth=truth, calibrate=calibrate, rounds=rounds,
        calibration=calibration, warnings=warnings,
    )
    if output is not None:
        write_scores(result, output)
        result.output = str(output)
    t4 = time.perf_counter()
    result.timings = {"read and parse": t_ingest - t_read - ingest.update_s, "update tree": ingest.update_s,
                      "score": t3 - t2, "write": t4 - t3, "total": t4 - t_start}
    return result


def _keep_window(pop: Any, window: float, clock: Any) -> int:
    """Rebuild the population's tree with a one-round window holding the agents whose latest
    row is within ``window`` of the newest (its serialised form, the rounds set from the
    stamps); returns how many are inside."""
    state = pop.tree.to_dict()
    numbers = np.asarray(state["agent_ids"], dtype=np.int64)
    stamps = pop.stamp[numbers]
    span = window * 1e9 if clock.kind == "datetime" else window     # datetimes are int64 nanoseconds
    known = stamps != clock.oldest
    newest = stamps[known].max() if known.any() else 0
    inside = known & (stamps >= newest - span)
    state.update(window_rounds=np.array(1), window_round=np.array(1), window_last_round=inside.astype(np.int64))
    pop.tree = HierarchicalStatisticalTree.from_dict(state)
    return int(inside.sum())


def _shares(protocol: BehavioralDistributedProtocol, rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Each feature's part of the score of ``rows`` (``feature_contributions`` over the score)."""
    parts = protocol.score_many(rows, fdr=None, explain=True)["feature_contributions"]
    total = score[rows][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, parts / np.where(total > 0, total, 1.0), 0.0)


def _explain(protocol, numbers: np.ndarray, score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest shares of every agent's score and their features, a batch of agents at a time."""
    n = numbers.size
    feature = np.empty((n, k), dtype=np.int64)
    share = np.empty((n, k))
    for lo in range(0, n, _EXPLAIN_BATCH):
        rows = numbers[lo: lo + _EXPLAIN_BATCH]
        s = _shares(protocol, rows, score)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        feature[lo: lo + rows.size] = order
        share[lo: lo + rows.size] = np.take_along_axis(s, order, axis=1)
    return feature, share


def _top_rows(protocol, ids, numbers, score, p_value, flags, feats, cohort, top) -> list[dict[str, Any]]:
    """The ``top`` highest scores, with their main feature and its part of the score."""
    if not top or not ids.size:
        return []
    order = top_order(score, top)
    contributions = protocol.score_many(numbers[order], fdr=None, explain=True)["feature_contributions"]
    rows = []
    for r, row in enumerate(order):
        c = contributions[r]
        ranked = np.argsort(-c, kind="stable")[:WHY_FEATURES]
        total = float(score[row])
        rows.append(top_row(ids[row].item(), total, float(p_value[row]), bool(flags[row]),
                            None if cohort is None else cohort[row], feats[int(ranked[0])], float(c[ranked[0]]),
                            [{"feature": feats[int(j)], "share": float(c[j]) / total if total > 0 else 0.0}
                             for j in ranked]))
    return rows


# ---------------------------------------------------------------------------- output
def _why_columns(result: DetectResult) -> dict[str, Any]:
    """The "why" columns of the output, in order: cohort, then feature_i / share_i (explain=True)."""
    cols: dict[str, Any] = {}
    if result.why_feature is not None:
        if result.cohort is not None:
            cols["cohort"] = result.cohort
        names = np.array(result.features, dtype=object)
        for j in range(result.why_feature.shape[1]):
            cols[f"feature_{j + 1}"] = names[result.why_feature[:, j]]
            cols[f"share_{j + 1}"] = result.why_share[:, j]
    return cols


def write_columns(path: str | os.PathLike, columns: dict[str, Any], flags: Sequence[str] = ("is_anomaly",)) -> None:
    """Write equal-length ``columns`` (name -> array) to CSV or Parquet by the extension, atomically.

    The file is written under a temporary name and renamed, so a failed run never leaves
    half a file. In CSV the ``flags`` columns read ``true`` / ``false``; in Parquet string
    and object columns go in as lists (Arrow strings, nulls kept).
    """
    path = Path(path)
    fmt = output_format(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "csv":
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f, lineterminator="\n")
                w.writerow(list(columns))
                values = [np.where(v, "true", "false").tolist() if k in flags else np.asarray(v).tolist()
                          for k, v in columns.items()]
                w.writerows(zip(*values, strict=True))
        else:
            pa, _, pq = _pyarrow()
            pq.write_table(pa.table({k: np.asarray(v).tolist() if np.asarray(v).dtype.kind in "OU" else v
                                     for k, v in columns.items()}), tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_scores(result: DetectResult, path: str | os.PathLike) -> None:
    """Write ``agent_id, score, p_value, is_anomaly`` (and the why columns when explained),
    atomically (:func:`write_columns`)."""
    write_columns(path, {"agent_id": result.agent_ids, "score": result.score, "p_value": result.p_value,
                         "is_anomaly": result.is_anomaly, **_why_columns(result)})


# ---------------------------------------------------------------------------- summary
def summary_dict(result: DetectResult) -> dict[str, Any]:
    """The run's summary as plain JSON values (``swarmguard detect --json``)."""
    return {
        "input": result.input, "format": result.format, "engine": result.engine, "chunks": result.chunks,
        "features": result.features, "rows_read": result.rows_read, "rows_skipped": result.rows_skipped,
        "rows_superseded": result.rows_superseded, "agents": result.agents, "flagged": result.flagged,
        "method": result.method, "warm_up": result.warm_up, "warming_up": result.warming_up,
        "window_agents": result.window_agents,
        "labels": None if result.truth is None else dataclasses.asdict(result.truth),
        "calibrate": result.calibrate, "rounds": result.rounds, "calibration": result.calibration,
        "warnings": result.warnings,
        "cohort_sizes": result.cohort_sizes, "skipped_examples": result.skipped_examples,
        "top": result.top, "output": result.output, "timings": result.timings,
    }


def print_summary(result: DetectResult, console) -> None:
    """The Rich summary printed by ``swarmguard detect``."""
    from rich.table import Table

    console.rule(f"swarmguard detect: {result.input}")
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column()
    t.add_row("format", f"{result.format}, {result.engine} reader, {result.chunks} chunk{'s' if result.chunks != 1 else ''}")
    t.add_row("features", f"{len(result.features)}: {', '.join(result.features)}")
    t.add_row("rows read", f"{result.rows_read:,}")
    t.add_row("rows skipped (malformed)", f"{result.rows_skipped:,}")
    t.add_row("rows superseded (older)", f"{result.rows_superseded:,}")
    t.add_row("agents", f"{result.agents:,}")
    if result.window_agents is not None:
        where = "the last round" if result.calibrate else "the window"      # --calibrate --window: rounds
        t.add_row(f"agents in {where} (scored against)", f"{result.window_agents:,}")
    if result.cohort_sizes:
        sizes = sorted(result.cohort_sizes.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v:,}" for k, v in sizes[:8]) + (", ..." if len(sizes) > 8 else "")
        t.add_row("cohorts", f"{len(sizes)}: {shown}")
    t.add_row("flagged", f"{result.flagged:,} ({result.method})")
    if result.truth is not None:
        r = result.truth
        t.add_row(f"against {r.column!r}", f"{r.anomalies:,} labelled anomalies; {r.true_flags:,} flagged, "
                  f"{r.false_flags:,} false flags")
        t.add_row("realised FDR", f"{r.realised_fdr:.4f}")
        t.add_row("precision / recall", " / ".join("n/a" if v is None else f"{v:.4f}" for v in (r.precision, r.recall)))
    if result.calibration is not None:
        c = result.calibration
        false = c["flags_false_calibrated"]
        fdr = "none" if c["realised_fdr_calibrated"] is None else f"{c['realised_fdr_calibrated']:.4f}"
        t.add_row("rounds (calibrated)", f"{len(result.rounds):,} ({c['rounds_calibrated']:,})")
        t.add_row("calibrated rounds: flags / false (realised FDR)",
                  f"{c['flags_calibrated']:,} / " + ("n/a (no --label-column)" if false is None else f"{false:,} ({fdr})"))
    if result.output:
        t.add_row("written", result.output)
    console.print(t)
    if result.calibration is not None:
        console.print(f"calibration: {result.calibration['note']}", markup=False, highlight=False)
    for w in result.warnings:
        console.print(f"warning: {w}", markup=False, highlight=False)
    if result.warming_up:
        console.print(f"[yellow]warning:[/] only {result.agents:,} agents, fewer than --warm-up {result.warm_up}: "
                      "nobody is flagged (lower --warm-up to score small populations)")
    if result.skipped_examples:
        console.print("skipped rows (first ones):")
        for e in result.skipped_examples:
            console.print(f"  {e}", markup=False, highlight=False)
    if result.top:
        tt = Table(title=f"Top {len(result.top)} most anomalous agents")
        for col in ("#", "agent", "score (D²)", "p-value", "flagged", "main feature", "its part of D²"):
            tt.add_column(col)
        for r, row in enumerate(result.top, 1):
            tt.add_row(str(r), str(row["agent_id"]), f"{row['score']:.4g}", f"{row['p_value']:.2e}",
                       "yes" if row["is_anomaly"] else "no", str(row["main_feature"]), f"{row['main_part']:.4g}")
        console.print(tt)
    tm = Table(title="Timings")
    tm.add_column("step")
    tm.add_column("seconds", justify="right")
    for k, v in result.timings.items():
        tm.add_row(k, f"{v:.3f}")
    ingest = result.timings.get("read and parse", 0.0) + result.timings.get("update tree", 0.0)
    if ingest > 0:
        tm.add_row("ingest rate", f"{result.rows_read / ingest:,.0f} rows/s")
    console.print(tm)


def run_command(console, err_console, json_summary: bool = False, **options: Any) -> int:
    """The CLI's body: run :func:`detect`, print the summary (Rich, or JSON on stdout with
    ``json_summary``); return the exit code (0, 1 for a missing dependency, 2 on bad input)."""
    try:
        result = detect(**options)
    except MissingDependencyError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except (InvalidInputError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        msg = str(exc)
        if isinstance(exc, MalformedInputError) and not isinstance(exc, _LineTooLongError):
            msg += " (use --skip-bad to skip malformed rows and count them)"
        err_console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        return 2
    if json_summary:
        print(json.dumps(summary_dict(result), indent=2, allow_nan=False))
    else:
        print_summary(result, console)
    return 0
