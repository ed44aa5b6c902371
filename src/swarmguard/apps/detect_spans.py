"""``swarmguard detect --spans``: score the agents of a file of OTLP spans, window by window.

The file is read by :func:`~swarmguard.apps.otlp.span_file.read_span_file_by_time`
(OTLP JSON lines or length-prefixed OTLP protobuf, ``.gz`` too), which windows the
spans by their own timestamps (``window`` seconds) and extracts the documented behaviour
vectors (``docs/otlp-features.md``) with the module ``swarmguard serve`` uses
(:mod:`swarmguard.apps.otlp.window`). Each window is then one round, as on a node: the
agents active in it replace their vectors in one tree (cohorts from the resource
attributes, :func:`~swarmguard.apps.otlp.spans.cohort_name`) and are scored leave-one-out
against every agent's latest vector, with the decision rule of ``detect`` (FDR ``q`` over
the window's agents, or ``alpha``). One output row per agent and window:
``agent_id, window, window_start, cohort, score, p_value, is_anomaly`` and, with
``explain``, ``feature_1, share_1, …`` (the shares of ``docs/scoring.md#feature-shares``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from ..errors import InvalidInputError, MissingDependencyError
from ..validation import check_finite_float, check_positive_int
from .output_paths import check_not_input, check_output_file

__all__ = ["SpanDetectResult", "detect_spans", "write_span_scores"]

WHY_FEATURES = 3


@dataclass
class SpanDetectResult:
    """What ``detect --spans`` found: one entry per (agent, window), in window order.

    ``window`` the window's index (windows of ``window_s`` seconds from ``t0``, the earliest
    span), ``window_start`` its start in Unix seconds; ``why_feature`` / ``why_share`` the
    top features' names and shares with ``explain``.
    """

    agent_ids: np.ndarray
    window: np.ndarray
    window_start: np.ndarray
    cohort: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    feature_names: tuple[str, ...]
    window_s: float
    t0: float
    encoding: str
    records: int
    spans: int
    rejected_spans: int
    untimed_spans: int
    windows: int
    method: str
    warm_up: int
    output: str | None = None
    why_feature: np.ndarray | None = None
    why_share: np.ndarray | None = None
    top: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def flagged(self) -> int:
        return int(self.is_anomaly.sum())

    @property
    def agents(self) -> int:
        return int(np.unique(self.agent_ids).size)


def _span_reader():
    try:
        from .otlp.span_file import read_span_file_by_time
        from .otlp.spans import cohort_name
    except ImportError as exc:          # opentelemetry-proto: the serve extra
        raise MissingDependencyError(f"detect --spans needs opentelemetry-proto (pip install 'swarmguard[serve]'): "
                                     f"{exc}") from None
    return read_span_file_by_time, cohort_name


def detect_spans(input: str | os.PathLike, output: str | os.PathLike | None = None, *, window: float = 60.0,
                 fdr: float | None = None, alpha: float | None = None, shrinkage: float | str = "auto",
                 warm_up: int | None = None, top: int = 10, explain: bool = False) -> SpanDetectResult:
    """Score every agent of every window of a file of OTLP spans (module docstring).

    Raises :class:`~swarmguard.errors.MalformedInputError` naming the line (or protobuf
    message) that does not decode, :class:`~swarmguard.errors.InvalidInputError` for bad
    options; every option is checked before the file is read.
    """
    from .detect import _resolve_decision, _resolve_shrinkage, output_format

    t_start = time.perf_counter()
    window = check_finite_float(window, "window")
    if window <= 0:
        raise InvalidInputError(f"--window must be > 0 seconds, got {window}")
    q, level = _resolve_decision(fdr, alpha)
    shrink = _resolve_shrinkage(shrinkage)
    top = check_positive_int(top, "top", minimum=0)
    if warm_up is not None:
        warm_up = check_positive_int(warm_up, "warm_up", minimum=3)
    path = Path(input)
    if output is not None:
        output_format(output)
        check_output_file(output, "--output")
        check_not_input(output, path, "--output")
    if not path.is_file():
        raise FileNotFoundError(f"no such input file: {path}")
    read, cohort_name = _span_reader()
    got = read(path, window)
    t_read = time.perf_counter()
    names = tuple(got.windows[0].feature_names) if got.windows else ()
    tree = HierarchicalStatisticalTree(feature_dimensions=len(names) or 1)
    protocol = BehavioralDistributedProtocol(tree, significance_level=level, fdr=q, shrinkage=shrink, warm_up=warm_up)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("agent", "window", "start", "cohort", "score", "p", "flag",
                                                          "wf", "ws")}
    k = min(WHY_FEATURES, len(names))
    for w in got.windows:
        cohorts = np.array([cohort_name(c) for c in w.cohorts], dtype=str)
        tree.update_many(w.agent_ids, w.features, cohorts=cohorts)
        res = protocol.score_many(w.agent_ids, fdr=q if q is not None else None, explain=explain)
        n = w.agent_ids.size
        cols["agent"].append(w.agent_ids)
        cols["window"].append(np.full(n, w.index, dtype=np.int64))
        cols["start"].append(np.full(n, w.start))
        cols["cohort"].append(cohorts)
        cols["score"].append(np.asarray(res["mahalanobis_squared"], dtype=np.float64))
        cols["p"].append(np.asarray(res["p_value"], dtype=np.float64))
        cols["flag"].append(np.asarray(res["is_anomaly"], dtype=bool))
        if explain:
            parts = np.asarray(res["feature_contributions"], dtype=np.float64)
            total = parts.sum(axis=1, keepdims=True)
            shares = np.divide(parts, total, out=np.zeros_like(parts), where=total > 0)
            order = np.argsort(-shares, axis=1, kind="stable")[:, :k]
            cols["wf"].append(np.asarray(names, dtype=str)[order])
            cols["ws"].append(np.take_along_axis(shares, order, axis=1))

    def cat(key: str, dtype: Any, width: int | None = None) -> np.ndarray:
        if cols[key]:
            return np.concatenate(cols[key])
        return np.zeros((0, width) if width is not None else 0, dtype=dtype)

    result = SpanDetectResult(
        agent_ids=cat("agent", str), window=cat("window", np.int64), window_start=cat("start", np.float64),
        cohort=cat("cohort", str), score=cat("score", np.float64), p_value=cat("p", np.float64),
        is_anomaly=cat("flag", bool), feature_names=names, window_s=window, t0=got.t0, encoding=got.encoding,
        records=got.records, spans=got.spans, rejected_spans=got.rejected, untimed_spans=got.untimed,
        windows=len(got.windows), method=f"fdr(q={q:g})" if q is not None else f"alpha({level:g})",
        warm_up=protocol.warm_up,
        output=str(output) if output is not None else None,
        why_feature=cat("wf", str, k) if explain else None, why_share=cat("ws", np.float64, k) if explain else None)
    worst = np.lexsort((-result.score, ~result.is_anomaly))[:top] if result.score.size else []
    result.top = [{"agent_id": str(result.agent_ids[i]), "window": int(result.window[i]),
                   "cohort": str(result.cohort[i]), "score": float(result.score[i]),
                   "p_value": float(result.p_value[i]), "is_anomaly": bool(result.is_anomaly[i])}
                  for i in np.asarray(worst, dtype=np.int64).tolist()]
    if output is not None:
        write_span_scores(result, output)
    result.timings = {"read": t_read - t_start, "total": time.perf_counter() - t_start}
    return result


def _columns(result: SpanDetectResult) -> dict[str, Any]:
    out: dict[str, Any] = {"agent_id": result.agent_ids, "window": result.window,
                           "window_start": result.window_start, "cohort": result.cohort, "score": result.score,
                           "p_value": result.p_value, "is_anomaly": result.is_anomaly}
    if result.why_feature is not None:
        for j in range(result.why_feature.shape[1]):
            out[f"feature_{j + 1}"] = result.why_feature[:, j]
            out[f"share_{j + 1}"] = result.why_share[:, j]
    return out


def write_span_scores(result: SpanDetectResult, path: str | os.PathLike) -> None:
    """Write the result's rows (module docstring) to CSV or Parquet, atomically (as ``detect``)."""
    from .detect import write_columns

    write_columns(path, _columns(result))


def print_span_summary(result: SpanDetectResult, console) -> None:
    """A short table of what was read and the most anomalous (agent, window) rows."""
    from rich.table import Table

    console.print(f"{result.records} {'lines' if result.encoding == 'json' else 'messages'} of OTLP {result.encoding}: "
                  f"{result.spans} spans in {result.windows} windows of {result.window_s:g} s "
                  f"({result.rejected_spans} spans left out, {result.untimed_spans} without a timestamp); "
                  f"{result.agents} agents, {result.agent_ids.size} agent-windows, {result.flagged} flagged "
                  f"by {result.method}", markup=False, highlight=False)
    if result.top:
        table = Table("agent", "window", "cohort", "score", "p-value", "flagged")
        for t in result.top:
            table.add_row(t["agent_id"], str(t["window"]), t["cohort"], f"{t['score']:.1f}", f"{t['p_value']:.1e}",
                          "yes" if t["is_anomaly"] else "")
        console.print(table)


# options of ``detect`` that mean nothing for a file of spans (its columns are the feature table)
_TABLE_ONLY = {"id_column": "agent_id", "cohort_column": None, "timestamp_column": None, "features": None,
               "skip_bad": False, "csv_engine": "auto", "format": None, "scoring": "mahalanobis",
               "label_column": None}   # spans carry no ground-truth column: refused, not silently ignored


def run_span_command(console, err_console, json_summary: bool = False, **options: Any) -> int:
    """``detect --spans``'s body: refuse the options of tables, run :func:`detect_spans`, print."""
    import json

    wrong = [k for k, default in _TABLE_ONLY.items() if k in options and options[k] not in (default, None)
             and str(options[k]) != str(default)]
    try:
        if options.get("calibrate"):
            # detect_spans scores each window with score_many and no score null: refused, not ignored
            raise InvalidInputError("--calibrate is not available with --spans (its windows are not calibrated yet)")
        if wrong:
            raise InvalidInputError("--spans reads the documented span features: "
                                    + ", ".join("--" + k.replace("_", "-") for k in wrong) + " do not apply")
        result = detect_spans(options["input"], options.get("output"),
                              window=60.0 if options.get("window") is None else options["window"],
                              fdr=options.get("fdr"), alpha=options.get("alpha"),
                              shrinkage=options.get("shrinkage", "auto"), warm_up=options.get("warm_up"),
                              top=options.get("top", 10), explain=options.get("explain", False))
    except MissingDependencyError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except (InvalidInputError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    if json_summary:
        summary = {k: getattr(result, k) for k in ("encoding", "records", "spans", "rejected_spans", "untimed_spans",
                                                   "windows", "window_s", "t0", "method", "warm_up", "output",
                                                   "flagged", "agents", "top", "timings")}
        summary["agent_windows"] = int(result.agent_ids.size)
        summary["features"] = list(result.feature_names)
        print(json.dumps(summary, indent=2, allow_nan=False))
    else:
        print_span_summary(result, console)
    return 0
