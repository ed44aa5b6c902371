"""``swarmguard detect --calibrate --window W``: the file cut into rounds, each tested against the last.

Calibrated p-values (:mod:`swarmguard.structures.score_null`) rank a round's scores
among the scores of members *not flagged in earlier rounds*: they need rounds. A
table has them when it has a timestamp column: with ``--window W`` the rows are cut
into consecutive windows of ``W`` (seconds for ISO 8601 timestamps, the column's own
unit for numbers), the first starting at the oldest timestamp of the file, and each
window is one round, in time order, as on a node: the agents with a row in it write
their latest row of the window into one tree with a one-round window
(``window_rounds=1``: a round is scored against the agents active in it, leave-one-out)
and are scored by :meth:`~swarmguard.BehavioralDistributedProtocol.update_and_score_many`
of a protocol with ``calibrate=True``, which then admits the round's scores, flags
left out, into the null the next round is tested against. The first rounds, until
the null holds :data:`~swarmguard.structures.score_null.DEFAULT_MIN_NULL` scores,
are *warm-up* rounds decided on the mode's own p-values.

Each agent's output row is its latest row, scored in the round that holds it (its
last round); ``rounds`` gives every round's flags (and, with a label column, its false
flags) and :func:`~swarmguard.apps.calibration_report.calibration_summary` sums them,
calibrated rounds apart from warm-up rounds.

Memory: the rounds are cut once the whole file is read (it need not be in time
order), so this mode keeps every valid row, not only each agent's latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..api import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from ..errors import InvalidInputError
from .calibration_report import calibration_summary, null_state
from .detect_top import top_order, top_row

__all__ = ["RoundsOutcome", "score_rounds", "top_rows_from_shares", "SINGLE_ROUND_NOTE"]

#: What ``detect --calibrate`` says when the file makes one round (no ``--window``, or every
#: row in one window): there is no earlier round whose scores could make the null.
SINGLE_ROUND_NOTE = ("--calibrate: the file is scored as one round ({why}), so there are no earlier rounds' scores "
                     "to rank it against and the null never warms up: the p-values are the mode's own, not "
                     "calibrated (give --window with --timestamp-column to cut the file into several rounds)")


#: Windows a file's timestamps may span: round numbers are int64 (2**62 leaves room for ``r + 1``).
_MAX_WINDOWS = 2 ** 62


@dataclass
class RoundsOutcome:
    """Every agent's latest row as scored in its last round (arrays in agent-number order), and the rounds."""

    score: np.ndarray
    p_value: np.ndarray
    is_anomaly: np.ndarray
    last_round: np.ndarray          # the round each agent's output row was scored in
    why_feature: np.ndarray         # (agents, k): the k largest shares' feature numbers ...
    why_share: np.ndarray           # ... and the shares
    label: np.ndarray | None        # each agent's latest row's label (label column)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    warming_up: bool = True
    last_round_agents: int = 0
    warm_up: int = 0


def _round_of(ts: np.ndarray, window: float, datetime: bool) -> tuple[np.ndarray, Any, Any]:
    """Each stamp's window number from the oldest stamp, the oldest, and the window in stamp units."""
    t0 = ts.min()
    # round numbers are int64 (and a datetime's ns difference too): a wider span would wrap or
    # cast to -2**63, and the later rows would be one round scored before the first
    span = max(1, int(round(window * 1e9))) if datetime else window
    windows = (int(ts.max()) - int(t0)) // span if datetime else (float(ts.max()) - float(t0)) / window
    if datetime and int(ts.max()) - int(t0) > np.iinfo(np.int64).max:
        raise InvalidInputError("the timestamps span more than 292 years (2**63 ns): the rounds cannot be cut")
    if windows >= _MAX_WINDOWS:
        raise InvalidInputError(f"--window {window:g} cuts the timestamps' span into {windows:.3g} windows, "
                                f"more than {_MAX_WINDOWS:.3g}: give a longer --window")
    if datetime:            # int64 nanoseconds: integer arithmetic, exact at the edges
        return (ts - t0) // span, t0, span
    return np.floor((ts - t0) / window).astype(np.int64), t0, window


def _start(t0: Any, r: int, span: Any, datetime: bool) -> Any:
    if datetime:
        return str(np.datetime64(int(t0) + r * int(span), "ns"))
    return float(t0 + r * span)


def score_rounds(pop: Any, clock: Any, window: float, *, level: float, q: float | None, shrink: Any,
                 warm_up: int | None, scoring: str, k: int) -> RoundsOutcome:
    """Score ``pop``'s logged rows round by round (module docstring); ``k`` top shares kept per agent."""
    no = np.concatenate([e[0] for e in pop.log])
    X = np.concatenate([e[1] for e in pop.log])
    ts = np.concatenate([e[2] for e in pop.log])
    codes = None if pop.log[0][3] is None else np.concatenate([e[3] for e in pop.log])
    labels = None if pop.log[0][4] is None else np.concatenate([e[4] for e in pop.log])
    datetime = clock.kind == "datetime"
    rnd, t0, span = _round_of(ts, window, datetime)
    # each agent's latest row of each round: the largest stamp, ties to the row further down the file
    order = np.lexsort((np.arange(no.size), ts, no, rnd))
    last = np.ones(order.size, dtype=bool)
    last[:-1] = (rnd[order][1:] != rnd[order][:-1]) | (no[order][1:] != no[order][:-1])
    kept = order[last]                       # sorted by round, then agent number
    bounds = np.flatnonzero(np.diff(rnd[kept])) + 1
    n_agents, d = len(pop.ids), X.shape[1]
    tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=d, window_rounds=1)
    protocol = BehavioralDistributedProtocol(tree, significance_level=level, fdr=q, shrinkage=shrink,
                                             warm_up=warm_up, scoring=scoring, calibrate=True)
    names = np.array(pop.cohort_names, dtype=str) if codes is not None else None
    out = RoundsOutcome(score=np.full(n_agents, np.nan), p_value=np.full(n_agents, np.nan),
                        is_anomaly=np.zeros(n_agents, dtype=bool), last_round=np.full(n_agents, -1, dtype=np.int64),
                        why_feature=np.zeros((n_agents, k), dtype=np.int64), why_share=np.zeros((n_agents, k)),
                        label=np.zeros(n_agents, dtype=bool) if labels is not None else None)
    res: dict[str, Any] = {}
    for rows in np.split(kept, bounds):
        r = int(rnd[rows[0]])
        agents = no[rows]
        met = null_state(protocol.null, agents.size, q, 1)     # the null as this round meets it
        res = protocol.update_and_score_many(agents, X[rows], None if names is None else names[codes[rows]],
                                             explain=True)
        d2 = np.asarray(res["mahalanobis_squared"], dtype=np.float64)
        flags = np.asarray(res["is_anomaly"], dtype=bool)
        out.score[agents], out.p_value[agents], out.is_anomaly[agents] = d2, res["p_value"], flags
        out.last_round[agents] = r
        parts = np.asarray(res["feature_contributions"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            shares = np.where(d2[:, None] > 0, parts / np.where(d2 > 0, d2, 1.0)[:, None], 0.0)
        top = np.argsort(-shares, axis=1, kind="stable")[:, :k]
        out.why_feature[agents], out.why_share[agents] = top, np.take_along_axis(shares, top, axis=1)
        false = None
        if labels is not None:
            out.label[agents] = labels[rows]
            false = int((flags & ~labels[rows]).sum())
        out.rounds.append({"round": r, "window_start": _start(t0, r, span, datetime), "agents": int(agents.size),
                           "flagged_anomalous": int(flags.sum()), "flags_false": false,
                           "method": res["method"], **met})
    out.calibration = calibration_summary(out.rounds, out.rounds[-1]["agents"], q, 1)
    out.method, out.warming_up = res["method"], bool(res["warming_up"])
    out.last_round_agents, out.warm_up = out.rounds[-1]["agents"], protocol.warm_up
    return out


def top_rows_from_shares(ids, score, p_value, flags, feats, cohort, why_feature, why_share,
                          top: int) -> list[dict[str, Any]]:
    """The summary's most anomalous agents, as :func:`.detect._top_rows` gives them, from shares
    already found (each agent's largest, ``why_feature`` / ``why_share``, from its own round):
    ``detect --calibrate --window`` scores agents in rounds, and a later score against the last
    round's tree would not be the one the agent was judged by."""
    if not top or not ids.size:
        return []
    rows = []
    for row in top_order(score, top).tolist():
        total = float(score[row])
        rows.append(top_row(ids[row].item(), total, float(p_value[row]), bool(flags[row]),
                            None if cohort is None else cohort[row], feats[int(why_feature[row, 0])],
                            float(why_share[row, 0]) * total,
                            [{"feature": feats[int(j)], "share": float(v)}
                             for j, v in zip(why_feature[row], why_share[row], strict=True)]))
    return rows
