"""The ``report.html`` page of ``swarmguard simulate``: who was isolated, why, and what ran.

The page is assembled from the typed report (:class:`~swarmguard.apps.report_data.SimulationReport`)
with the figures of :mod:`swarmguard.apps.report_figures` and the page
machinery of :mod:`swarmguard.apps.report_html` (one self-contained file,
plotly.js inline).
"""

from __future__ import annotations

from typing import Any

from . import report_figures as figs
from .report_data import IsolatedAgent, SimulationReport
from .report_html import escape, format_value, render_report, table_html

__all__ = ["ISOLATED_ROWS_SHOWN", "isolated_table", "simulation_page"]

#: The HTML table shows at most this many isolated agents (``report.json`` has all).
ISOLATED_ROWS_SHOWN = 500

ISOLATED_HEADER = ["agent", "region", "cluster", "first isolated (round)", "deciding level",
                   "squared distance D² (unitless)", "p-value (χ², that level)", "decision p-value", "consensus probability (then)",
                   "consensus probability (final)", "top features (share of D²)", "compromised (truth)"]


def _features_text(agent: IsolatedAgent) -> str:
    return ", ".join(f"{f.feature} ({f.share:.0%})" for f in agent.top_features)


def isolated_table(agents: list[IsolatedAgent], limit: int = ISOLATED_ROWS_SHOWN) -> tuple[str, list[str],
                                                                                              list[list[Any]]]:
    """The isolated agents as a (caption, header, rows) table: by round first isolated, then by
    decision p-value and D² (strongest first: p-values that underflowed to 0 still rank by D²);
    at most ``limit`` rows."""
    ordered = sorted(agents, key=lambda a: (a.first_isolated_round, a.decision_p_value, -a.mahalanobis_squared,
                                            str(a.agent_id)))
    rows = [[str(a.agent_id), a.region, a.cohort, a.first_isolated_round, a.level, a.mahalanobis_squared, a.p_value,
             a.decision_p_value, a.consensus_probability, a.final_consensus_probability, _features_text(a),
             a.compromised] for a in ordered[:limit]]
    shown = "" if len(ordered) <= limit else f" (the first {limit:,} of {len(ordered):,}; report.json lists all)"
    caption = (f"Isolated agents: {len(ordered):,}{shown}. Scores are those of the round first isolated, at the "
               "level that decided (population or cluster); the decision p-value is what the rule compared "
               "with the round's cut-off; a feature's share of D² is d_j (Σ⁻¹ d)_j / D²: shares sum to 1, and a "
               "share above 100% means a correlated feature pulls the other way (a negative share).")
    return caption, ISOLATED_HEADER, rows


def _region_table(report: SimulationReport) -> tuple[str, list[str], list[list[Any]]]:
    last = max((r.round for r in report.regions), default=0)
    ever: dict[str, list[int]] = {}
    for a in report.isolated_agents:
        tp_fp = ever.setdefault(a.region, [0, 0])
        tp_fp[0 if a.compromised else 1] += 1
    rows = []
    for r in sorted((r for r in report.regions if r.round == last), key=lambda r: r.region):
        tp, fp = ever.get(r.region, [0, 0])
        low = min((x.confidence_factor for x in report.regions if x.region == r.region
                   and x.confidence_factor is not None), default=None)
        rows.append([r.region, r.agents, r.compromised, tp, fp, low])
    return ("Per region over the run (false alarms: honest agents ever isolated)",
            ["region", "agents", "compromised (final round)", "compromised isolated", "false alarms",
             "lowest confidence factor"], rows)


def _text(*paragraphs: str) -> str:
    return "".join(f"<p>{p}</p>" for p in paragraphs)


def _observers_text(report: SimulationReport) -> str:
    cons = report.consensus
    flagged = cons["byzantine_flagged"]
    honest = cons["honest_flagged"]
    missed = sorted(set(cons["byzantine_sources"]) - set(cons["byzantine_found"]))
    names = ", ".join(f"<b>{escape(s)}</b>" for s in flagged) if flagged else "none"
    parts = [f"Observers flagged as Byzantine ({len(flagged)}): {names}.",
             f"Of the {len(cons['byzantine_sources'])} that lied in the simulation, "
             f"{len(cons['byzantine_found'])} were flagged"
             + (f"; not flagged: {escape(', '.join(missed))}" if missed else "") + ". "
             + (f"Honest observers flagged: {escape(', '.join(honest))}." if honest
                else "No honest observer was flagged.")]
    return _text(*parts)


def _run_summary(report: SimulationReport) -> dict[str, Any]:
    run = report.run
    c = report.config
    det = report.detection
    perf = report.performance
    return {
        "what ran": {
            "swarmguard version": run.version,
            "date (UTC)": perf.get("started_utc"),
            "seed": run.seed,
            "engine": run.backend,
            "agents": c["agents"], "features": c["features"], "rounds": c["rounds"], "regions": c["regions"],
            "difficulty": c["difficulty"],
            "partition (rounds)": f"{c['partition_at']} to {c['heal_at'] - 1}" if c["partition_at"] < c["heal_at"]
            else "none",
        },
        "detection": {k: det[k] for k in ("precision", "recall", "f1", "compromised", "isolated",
                                           "false_positives", "false_negatives")},
        "rounds to detection (median)": det["rounds_to_detection"]["median"],
        "Byzantine sources found": f"{len(report.consensus['byzantine_found'])} of "
                                   f"{len(report.consensus['byzantine_sources'])}",
        "honest sources flagged": len(report.consensus["honest_flagged"]),
        "availability during partition": report.availability["availability"],
        "performance": {k: v for k, v in perf.items() if k != "started_utc"},
    }


def simulation_page(report: SimulationReport) -> str:
    """The whole ``report.html`` of a simulation, as text."""
    run = report.run
    rule = run.decision
    cut = rule.final_round_p_cutoff
    two = rule.score_levels == "all"
    levels = "the population or its cluster level" if two else "the population level"
    per_level = ", that level's p-value at most half the cut-off (two levels)" if two else ""
    cut_text = (f"In the final round the cut-off was a decision p-value of {escape(format_value(cut))} "
                f"(an agent's squared distance D² at {levels} had to reach "
                f"{escape(format_value(rule.final_round_threshold_squared))}: χ² with "
                f"{rule.feature_dimensions} degrees of freedom{per_level})." if cut is not None
                else "In the final round no agent passed the cut-off.")
    config_rows = [[k, v] for k, v in sorted(run.config.items()) if k != "extra"]
    sections: list[tuple[str, Any]] = [
        ("Isolated agents: who, and why", table_html(*isolated_table(report.isolated_agents))),
        ("Decision rule", _text(escape(rule.describe()), cut_text)),
        ("Flagged observers", _observers_text(report)),
    ]
    arrays = report.arrays
    if arrays is not None:
        sections.append(("Anomaly scores and the decision threshold", figs.score_figure(arrays, rule)))
    sections += [
        ("Decision threshold per round", figs.cutoff_figure(report)),
        ("Detection over rounds", figs.recall_figure(report)),
        ("False alarms per round", figs.false_alarms_figure(report)),
        ("Per region", table_html(*_region_table(report))),
        ("Per region: detections", figs.region_figure(report, "detections")),
        ("Per region: false alarms", figs.region_figure(report, "false_alarms")),
        ("Per region: confidence factor", figs.confidence_figure(report)),
    ]
    if arrays is not None:
        sections += [("Consensus probability", figs.consensus_figure(arrays, rule)),
                     ("Observer reputation", figs.reputation_figure(arrays))]
    rounds = [[rd["round"], "yes" if rd["partitioned"] else "", rd["flagged_anomalous"], rd["isolated_now"],
               rd["false_alarms"], rd["recall_so_far"], rd.get("p_value_cutoff")] for rd in report.rounds]
    tables = [
        ("Per round", ["round", "partitioned", "anomalous", "isolated", "false alarms", "recall so far",
                       "decision p-value cut-off"], rounds),
        ("Configuration (what ran)", ["setting", "value"], config_rows),
    ]
    return render_report(f"swarmguard simulate: {report.config['agents']:,} agents, seed {run.seed}",
                         _run_summary(report), sections, tables)
