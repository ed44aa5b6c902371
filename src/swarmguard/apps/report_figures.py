"""The figures of a ``swarmguard simulate`` report, from its typed data.

Each function takes the report's dataclasses (:mod:`swarmguard.apps.report_data`)
and returns a :class:`plotly.graph_objects.Figure`, independent of the page:
``report.html`` embeds them (:mod:`swarmguard.apps.report_page`), a live
dashboard can draw the same figures from the same data. Every axis names its
unit.

Examples
--------
>>> from swarmguard.apps.scenario import ScenarioConfig
>>> from swarmguard.apps.simulate import run_simulation
>>> report = run_simulation(ScenarioConfig(agents=1000, rounds=3, partition_at=1, heal_at=2), latency_sample=0)
>>> fig = region_figure(report, "false_alarms")           # a plotly.graph_objects.Figure
>>> sorted(t.name for t in fig.data), fig.layout.yaxis.title.text
(['region-0', 'region-1', 'region-2', 'region-3'], 'honest agents isolated (count)')
>>> report["run"].decision.method, report.run.decision.fdr_q
('fdr', 0.01)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from .figures import bars_figure, histogram_figure, lines_figure
from .report_data import DecisionRule, RegionRound, ReportArrays, SimulationReport

__all__ = [
    "round_axis_title",
    "confidence_figure",
    "consensus_figure",
    "cutoff_figure",
    "false_alarms_figure",
    "recall_figure",
    "region_figure",
    "reputation_figure",
    "score_figure",
]


def round_axis_title(round_seconds: float) -> str:
    """The x-axis title of every figure over rounds."""
    return f"round (each {round_seconds:g} s of simulated time)"


def _shade(report: SimulationReport) -> tuple[float, float] | None:
    c = report.config
    return (float(c["partition_at"]), float(c["heal_at"])) if c["partition_at"] < c["heal_at"] else None


def _rounds(report: SimulationReport) -> np.ndarray:
    return np.array([rd["round"] for rd in report.rounds], dtype=float)


def _all_rounds(report: SimulationReport) -> tuple[float, float]:
    """Every figure over rounds shows all of them, even where its series starts later."""
    return 0.0, float(max(report.config["rounds"] - 1, 1))


def _cut_name(rule: DecisionRule) -> str:
    if rule.method == "fdr":
        return f"final-round cut-off (BH, FDR q = {rule.fdr_q:g}), -log10 p"
    return f"significance level α = {rule.significance_level:g}, -log10 p"


def score_figure(arrays: ReportArrays, rule: DecisionRule) -> go.Figure:
    """Histogram of the final round's decision p-values (as -log10 p), honest vs compromised,
    with the cut-off the round actually decided by."""
    truth = np.asarray(arrays.truth, dtype=bool)
    score = -np.log10(np.maximum(np.asarray(arrays.decision_p, dtype=float), 1e-300))
    cut = arrays.p_cutoff
    vlines = {_cut_name(rule): -math.log10(max(cut, 1e-300))} if cut is not None and cut > 0 else {}
    title = ("Anomaly score in the final round: -log10 of the decision p-value"
             + ("" if vlines else " (no agent passed the cut-off)"))
    return histogram_figure({"honest": score[~truth], "compromised": score[truth]}, bins=60, log_y=True,
                            vlines=vlines, title=title,
                            x_label="-log10 decision p-value (unitless; right = stranger)",
                            y_label="agents (count, log scale)")


def consensus_figure(arrays: ReportArrays, rule: DecisionRule) -> go.Figure:
    """Histogram of each agent's posterior probability of compromise after the last round
    (agents no evidence was ever reported on have none, and are counted in the title)."""
    truth = np.asarray(arrays.truth, dtype=bool)
    prob = np.asarray(arrays.probability, dtype=float)
    known = ~np.isnan(prob)
    missing = int((~known).sum())
    title = "Consensus: posterior probability of compromise after the last round"
    if missing:
        title += f" ({missing:,} agents without evidence not shown)"
    return histogram_figure({"honest": prob[known & ~truth], "compromised": prob[known & truth]}, bins=40,
                            log_y=True, vlines={"isolation threshold": rule.isolate_probability}, title=title,
                            x_label="posterior probability of compromise (0 to 1)",
                            y_label="agents (count, log scale)")


def _defined(report: SimulationReport, key: str) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Rounds where ``rd[key]`` is defined, its values there, and the rounds where it is not."""
    x, y, missing = [], [], []
    for rd in report.rounds:
        value = rd.get(key)
        if value is None:
            missing.append(rd["round"])
        else:
            x.append(rd["round"])
            y.append(value)
    return np.array(x, dtype=float), np.array(y, dtype=float), missing


def _rounds_text(rounds: list[int]) -> str:
    return ", ".join(str(r) for r in rounds[:8]) + (", …" if len(rounds) > 8 else "")


def recall_figure(report: SimulationReport) -> go.Figure:
    x, recall, missing = _defined(report, "recall_so_far")
    title = "Recall: fraction of the agents compromised so far that were isolated"
    if missing:
        title += f" (none compromised yet in round {_rounds_text(missing)})"
    return lines_figure(x, {"recall so far": recall}, title=title,
                        x_label=round_axis_title(report.config["round_seconds"]),
                        y_label="recall (fraction, 0 to 1)", y_range=(0.0, 1.0), x_range=_all_rounds(report),
                        shade=_shade(report), shade_label="partition")


def false_alarms_figure(report: SimulationReport) -> go.Figure:
    alarms = np.array([rd["false_alarms"] for rd in report.rounds], dtype=float)
    return lines_figure(_rounds(report), {"honest agents isolated": alarms},
                        title="False alarms: honest agents isolated, per round",
                        x_label=round_axis_title(report.config["round_seconds"]),
                        y_label="honest agents isolated (count)", y_integer=True, x_range=_all_rounds(report),
                        shade=_shade(report), shade_label="partition")


def cutoff_figure(report: SimulationReport) -> go.Figure:
    """The decision p-value cut-off of every round (log scale): the threshold actually used."""
    rule = report.run.decision
    x, cuts, missing = _defined(report, "p_value_cutoff")
    name = (f"BH cut-off at FDR q = {rule.fdr_q:g}" if rule.method == "fdr"
            else f"α = {rule.significance_level:g}")
    title = "Decision threshold per round (before tightening for stale regions)"
    if missing:
        title += f"; no agent passed in round {_rounds_text(missing)}"
    return lines_figure(x, {name: cuts}, y_log=True, title=title,
                        x_label=round_axis_title(report.config["round_seconds"]),
                        y_label="decision p-value cut-off (log scale)", shade=_shade(report),
                        shade_label="partition", x_range=_all_rounds(report))


def _per_region(rows: Sequence[RegionRound], field: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rounds = sorted({r.round for r in rows})
    at = {r: k for k, r in enumerate(rounds)}
    regions = sorted({r.region for r in rows})
    series = {name: np.full(len(rounds), np.nan) for name in regions}
    for r in rows:
        value = getattr(r, field)
        series[r.region][at[r.round]] = np.nan if value is None else value
    return np.array(rounds, dtype=float), series


def _lines_coincide(values: list[np.ndarray]) -> bool:
    """Whether several series would be drawn as one line: equal within 0.5% of their joint span
    (a pixel or two at the figure's size), NaN where each other is NaN."""
    if len(values) < 2:
        return False
    stacked = np.vstack(values)
    finite = stacked[np.isfinite(stacked)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    return all(np.allclose(values[0], v, rtol=0.0, atol=0.005 * span, equal_nan=True) for v in values[1:])


def region_figure(report: SimulationReport, field: str) -> go.Figure:
    """One line per region over rounds: ``detections``, ``false_alarms`` or ``confidence_factor``."""
    x, series = _per_region(report.regions, field)
    labels = {
        "detections": ("Compromised agents isolated, per region", "compromised agents isolated (count)", None),
        "false_alarms": ("Honest agents isolated (false alarms), per region", "honest agents isolated (count)",
                         None),
        "confidence_factor": ("Confidence factor per region through the partition (1 = view up to date)",
                              "confidence factor (0 to 1)", (0.0, 1.05)),
        "isolated": ("Agents isolated, per region", "agents isolated (count)", None),
    }
    title, y_label, y_range = labels[field]
    if _lines_coincide(list(series.values())):
        # otherwise one line shows and the legend lists regions a reader cannot find
        title += " (the regions' lines lie on top of each other)"
    return lines_figure(x, series, title=title, x_label=round_axis_title(report.config["round_seconds"]),
                        y_label=y_label, y_range=y_range, shade=_shade(report), shade_label="partition",
                        x_range=_all_rounds(report), y_integer=field != "confidence_factor")


def confidence_figure(report: SimulationReport) -> go.Figure:
    return region_figure(report, "confidence_factor")


def reputation_figure(arrays: ReportArrays) -> go.Figure:
    """Outlier reports per observer; flagged (Byzantine) observers highlighted."""
    rep = arrays.reputation
    labels = sorted(rep, key=str)
    outliers = np.array([rep[s]["low_outliers"] + rep[s]["high_outliers"] for s in labels], dtype=float)
    return bars_figure([str(s) for s in labels], outliers, title="Outlier reports per observer",
                       y_label="outlier reports (count)", x_label="observer",
                       highlight=[bool(rep[s]["flagged"]) for s in labels],
                       highlight_names=("flagged as Byzantine", "not flagged"))
