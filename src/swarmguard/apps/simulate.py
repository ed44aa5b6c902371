"""``swarmguard simulate``: the whole system on a synthetic swarm with known ground truth."""

from __future__ import annotations

import asyncio
import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..api.detector import DistributedBehavioralDetector
from ..api.protocol import BehavioralData
from ..engines import make_detector
from ..values.agent_index import positions_of
from .report_html import render_report, svg_bars, svg_histogram, svg_lines, write_report
from .scenario import Scenario, ScenarioConfig

__all__ = ["run_simulation", "write_outputs", "REPORT_FILES"]

REPORT_FILES = ("report.json", "report.html")     # what write_outputs writes into its folder

Progress = Callable[[str, int, int], None]


def _f(x: float) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def run_simulation(config: ScenarioConfig, progress: Progress | None = None,
                   latency_sample: int = 300, *, backend: str = "inprocess", address: str | None = None,
                   ray_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the scenario round by round through a :class:`DistributedBehavioralDetector`.

    Returns the report: ground-truth metrics under ``detection``, consensus,
    availability and per-round series (deterministic for a seed), and
    machine-dependent figures under ``performance``. ``backend="ray"`` runs
    the detector on Ray actors (:mod:`swarmguard.engines.ray_engine`; ``address``
    of a running cluster, else a local one) with the same results; its per-item
    latency sample measures the one-row rounds of the Ray detector; with a
    ``checkpoint_dir`` in ``ray_options`` the final state is checkpointed there.
    """
    config.validate()
    progress = progress or (lambda phase, done, total: None)
    c = config
    t_start = time.perf_counter()
    progress("building the swarm", 0, 1)
    sc = Scenario(c)
    progress("building the swarm", 1, 1)
    now = [0.0]
    det = make_detector(
        backend, address=address, ray_options=ray_options,
        feature_dimensions=c.features, fdr=0.01, score_levels="all", clock=lambda: now[0],
        regions=sc.regions.tolist(), prior_probability=0.01)
    try:
        report = _run(c, sc, det, now, progress, latency_sample, t_start)
        if getattr(det, "checkpoint_dir", None) is not None:
            det.checkpoint()          # the run's final state, for RayDistributedBehavioralDetector.resume
        return report
    finally:
        if backend != "inprocess":
            det.close()


def cluster_names(sc: Scenario) -> np.ndarray:
    """Each agent's cluster as a cohort name (a NumPy string array: the tree's fast path)."""
    c = sc.config
    return np.array([f"cluster-{k}" for k in range(c.regions * c.clusters_per_region)])[sc.cluster_index]


def play_round(det: Any, sc: Scenario, r: int, now: list[float], clusters: np.ndarray) -> tuple[dict[str, Any], float]:
    """Round ``r`` of the scenario through a detector (either engine): the network
    events, the round's evidence and behaviour. Returns the round's result and the
    seconds spent in the detector."""
    c = sc.config
    now[0] = r * c.round_seconds
    if r == c.partition_at and c.partition_at < c.heal_at:
        det.cap_resolver.partition(sc.partition_groups())
    if r == c.heal_at and c.partition_at < c.heal_at:
        det.cap_resolver.heal()
        det.cap_resolver.sync()
    X = sc.behaviour(r)
    ev = sc.evidence(r, now[0])
    t0 = time.perf_counter()
    if ev["evidence_ids"].size:
        det.ingest_evidence(**ev)
    res = det.process_round(sc.agent_ids, X, sc.region_names, cohorts=clusters, timestamp=now[0])
    return res, time.perf_counter() - t0


def _run(c: ScenarioConfig, sc: Scenario, det: Any, now: list[float], progress: Progress,
         latency_sample: int, t_start: float) -> dict[str, Any]:
    clusters = cluster_names(sc)
    n = c.agents
    first_isolation = np.full(n, -1, dtype=np.int64)
    rounds: list[dict[str, Any]] = []
    accepted = attempted = 0
    round_times = []
    for r in range(c.rounds):
        res, seconds = play_round(det, sc, r, now, clusters)
        round_times.append(seconds)
        if sc.partitioned(r):
            attempted += n
            accepted += int(res["accepted"])
        truth_now = sc.is_compromised_by(r)
        iso = res["isolate"]
        newly = iso & (first_isolation < 0)
        first_isolation[newly] = r
        ever = first_isolation >= 0
        rounds.append({
            "round": r,
            "partitioned": sc.partitioned(r),
            "flagged_anomalous": int(res["is_anomaly"].sum()),
            "isolated_now": int(iso.sum()),
            "false_alarms": int((iso & ~truth_now).sum()),
            "compromised_so_far": int(truth_now.sum()),
            "recall_so_far": _f((ever & truth_now).sum() / truth_now.sum()) if truth_now.any() else None,
            "confidence": {k: _f(v) for k, v in res["region_confidence"].items()},
        })
        progress("rounds", r + 1, c.rounds)
    elapsed_rounds = float(sum(round_times))
    # ------------------------------------------------------------------ ground truth metrics
    truth = sc.is_compromised_by(c.rounds - 1)
    ever = first_isolation >= 0
    tp = int((ever & truth).sum())
    precision = tp / int(ever.sum()) if ever.any() else 1.0
    recall = tp / int(truth.sum()) if truth.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    delay = (first_isolation - sc.onset)[ever & truth]
    cons = det.consensus.consensus_many()
    pos = {a: i for i, a in enumerate(np.asarray(cons["agent_ids"]).tolist())}
    prob = np.array([cons["probability"][pos[a]] if a in pos else np.nan for a in sc.agent_ids.tolist()])
    flagged_sources = set(det.consensus.byzantine_nodes)
    byz_truth = set(sc.observer_ids[sc.byzantine].tolist())
    found = flagged_sources & byz_truth
    reputation = det.consensus.source_reputation()
    final = det.protocol.score_many(fdr=None)
    # in agent order, like `truth` (the in-process engine answers in slot order)
    order = positions_of(np.asarray(final["agent_ids"]), sc.agent_ids)
    final = {k: (v[order] if isinstance(v, np.ndarray) and v.shape[:1] == order.shape else v)
             for k, v in final.items()}
    report: dict[str, Any] = {
        "config": c.as_dict(),
        "detection": {
            "precision": _f(precision),
            "recall": _f(recall),
            "f1": _f(f1),
            "compromised": int(truth.sum()),
            "isolated": int(ever.sum()),
            "true_positives": tp,
            "false_positives": int((ever & ~truth).sum()),
            "false_negatives": int((~ever & truth).sum()),
            "framed_agents_isolated": int(ever[sc.framed].sum()),
            "false_alarms_per_round": [rd["false_alarms"] for rd in rounds],
            "rounds_to_detection": {
                "mean": _f(delay.mean()) if delay.size else None,
                "median": _f(np.median(delay)) if delay.size else None,
                "max": int(delay.max()) if delay.size else None,
            },
        },
        "consensus": {
            "byzantine_sources": sorted(byz_truth),
            "byzantine_found": sorted(found),
            "byzantine_flagged": sorted(str(s) for s in flagged_sources),
            "honest_flagged": sorted(str(s) for s in flagged_sources - byz_truth),
            "evidence_points": int(det.consensus.evidence_count),
            "mean_probability_compromised": _f(np.nanmean(prob[truth])) if truth.any() else None,
            "mean_probability_honest": _f(np.nanmean(prob[~truth])),
        },
        "availability": {
            "updates_during_partition": attempted,
            "accepted_during_partition": accepted,
            "availability": _f(accepted / attempted) if attempted else None,
            "min_confidence_factor": _f(min(min(v for v in rd["confidence"].values() if v is not None)
                                            for rd in rounds)),
        },
        "rounds": rounds,
    }
    # ------------------------------------------------------------------ performance
    lat = _latency_sample(det, sc, latency_sample, now[0])
    report["performance"] = {
        "total_seconds": time.perf_counter() - t_start,
        "rounds_seconds": elapsed_rounds,
        "agents_per_second": n * c.rounds / elapsed_rounds if elapsed_rounds else None,
        "round_seconds_mean": elapsed_rounds / c.rounds,
        "per_item_latency_us_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "per_item_latency_us_p99": float(np.percentile(lat, 99)) if lat.size else None,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    report["_arrays"] = {  # for the HTML plots; not written to JSON
        "decision_p": final["decision_p_value"], "truth": truth, "alpha": det.protocol.significance_level,
        "probability": prob, "reputation": reputation, "byzantine_truth": byz_truth,
    }
    return report


def _latency_sample(det: DistributedBehavioralDetector, sc: Scenario, k: int, ts: float) -> np.ndarray:
    """Per-item latency of ``await process_agent_behavior`` on a sample (after the metrics are taken)."""
    if k <= 0:
        return np.zeros(0)
    rng = np.random.default_rng(sc.config.seed + 1)
    agents = rng.choice(sc.config.agents, size=min(k, sc.config.agents), replace=False)
    X = sc.behaviour(sc.config.rounds - 1)
    out = np.empty(agents.size)

    async def go() -> None:
        for i, a in enumerate(agents.tolist()):
            data = BehavioralData(a, X[a], timestamp=ts, region=str(sc.region_names[a]))
            t0 = time.perf_counter_ns()
            await det.process_agent_behavior(a, data)
            out[i] = (time.perf_counter_ns() - t0) / 1e3

    asyncio.run(go())
    return out


def write_outputs(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and the self-contained ``report.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = report.get("_arrays", {})
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    json_path = out / "report.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(public, indent=2, sort_keys=True))
    tmp.replace(json_path)
    html_path = out / "report.html"
    write_report(html_path, _html(public, arrays))
    return json_path, html_path


def _html(report: dict[str, Any], arrays: dict[str, Any]) -> str:
    rounds = report["rounds"]
    x = np.array([rd["round"] for rd in rounds], dtype=float)
    c = report["config"]
    shade = (float(c["partition_at"]), float(c["heal_at"])) if c["partition_at"] < c["heal_at"] else None
    sections = []
    if arrays:
        truth = arrays["truth"]
        score = -np.log10(np.maximum(arrays["decision_p"], 1e-300))
        sections.append(("Anomaly scores (final round)", svg_histogram(
            {"honest": score[~truth], "compromised": score[truth]}, bins=60, log_y=True,
            vlines={f"α = {arrays['alpha']:g}": -math.log10(arrays["alpha"])},
            title="Anomaly score: -log10 of the decision p-value (population and cluster levels)",
            x_label="-log10 p")))
        prob = arrays["probability"]
        sections.append(("Consensus probability", svg_histogram(
            {"honest": prob[~truth], "compromised": prob[truth]}, bins=40, log_y=True,
            title="Posterior probability of compromise", x_label="probability")))
    recall = np.array([np.nan if rd["recall_so_far"] is None else rd["recall_so_far"] for rd in rounds])
    false_alarms = np.array([rd["false_alarms"] for rd in rounds], dtype=float)
    sections.append(("Detection over rounds", svg_lines(
        x, {"recall so far": recall}, title="Recall of compromised agents", x_label="round",
        y_label="recall", y_range=(0.0, 1.0), shade=shade)))
    sections.append(("False alarms per round", svg_lines(
        x, {"honest agents isolated": false_alarms}, title="False alarms", x_label="round",
        y_label="agents", shade=shade)))
    regions = sorted(rounds[0]["confidence"]) if rounds else []
    conf = {r: np.array([np.nan if rd["confidence"][r] is None else rd["confidence"][r] for rd in rounds])
            for r in regions}
    sections.append(("Confidence factor through the partition", svg_lines(
        x, conf, title="Confidence factor per region", x_label="round", y_label="confidence factor",
        y_range=(0.0, 1.05), shade=shade)))
    if arrays:
        rep = arrays["reputation"]
        labels = sorted(rep, key=str)
        outliers = np.array([rep[s]["low_outliers"] + rep[s]["high_outliers"] for s in labels], dtype=float)
        sections.append(("Source reputation", svg_bars(
            [str(s) for s in labels], outliers, title="Outlier reports per source (highlighted: flagged Byzantine)",
            y_label="outlier reports", highlight=[bool(rep[s]["flagged"]) for s in labels])))
    det = report["detection"]
    summary = {
        "detection": {k: det[k] for k in ("precision", "recall", "f1", "compromised", "isolated",
                                           "false_positives", "false_negatives")},
        "rounds to detection (median)": det["rounds_to_detection"]["median"],
        "Byzantine sources found": f"{len(report['consensus']['byzantine_found'])} of "
                                   f"{len(report['consensus']['byzantine_sources'])}",
        "honest sources flagged": len(report["consensus"]["honest_flagged"]),
        "availability during partition": report["availability"]["availability"],
        "performance": {k: v for k, v in report["performance"].items()},
    }
    table_rows = [[rd["round"], "yes" if rd["partitioned"] else "", rd["flagged_anomalous"], rd["isolated_now"],
                   rd["false_alarms"], rd["recall_so_far"]] for rd in rounds]
    return render_report(
        "swarmguard simulate", summary, sections,
        [("Per round", ["round", "partitioned", "anomalous", "isolated", "false alarms", "recall so far"],
          table_rows)])
