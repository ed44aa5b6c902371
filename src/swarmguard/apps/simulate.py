"""``swarmguard simulate``: the whole system on a synthetic swarm with known ground truth."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..api.detector import DistributedBehavioralDetector
from ..api.protocol import BehavioralData
from ..engines import make_detector
from ..structures.chi2 import chi2_sf
from ..structures.scoring_modes import TRIMMED_MODES
from .calibration_report import calibration_summary, null_state
from .report_data import (
    DecisionRule,
    IsolatedAgent,
    RegionRound,
    ReportArrays,
    RunInfo,
    SimulationReport,
    feature_shares,
    top_features,
)
from .report_html import write_report
from .report_page import simulation_page
from .scenario import Scenario, ScenarioConfig

__all__ = ["run_simulation", "write_outputs", "REPORT_FILES", "calibration_summary"]

REPORT_FILES = ("report.json", "report.html")     # what write_outputs writes into its folder

Progress = Callable[[str, int, int], None]


def _f(x: float) -> float | None:
    """A JSON-safe float (None for NaN/inf)."""
    x = float(x)
    return x if math.isfinite(x) else None


def run_simulation(config: ScenarioConfig, progress: Progress | None = None,
                   latency_sample: int = 300, *, backend: str = "inprocess", address: str | None = None,
                   ray_options: dict[str, Any] | None = None) -> SimulationReport:
    """Run the scenario round by round through a :class:`DistributedBehavioralDetector`.

    Returns the report (a :class:`~swarmguard.apps.report_data.SimulationReport`,
    readable by key): what ran under ``run`` (version, seed, engine, scenario,
    the decision rule and its final cut-off), ground-truth metrics under
    ``detection``, consensus, availability, per-round and per-region series and
    the table of ``isolated_agents`` with their "why" (deterministic for a
    seed), and machine-dependent figures and the date under ``performance``. ``backend="ray"`` runs
    the detector on Ray actors (:mod:`swarmguard.engines.ray_engine`; ``address``
    of a running cluster, else a local one) with the same results; its per-item
    latency sample measures the one-row rounds of the Ray detector; with a
    ``checkpoint_dir`` in ``ray_options`` the final state is checkpointed there.
    """
    config.validate()
    progress = progress or (lambda phase, done, total: None)
    c = config
    t_start = time.perf_counter()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    progress("building the swarm", 0, 1)
    sc = Scenario(c)
    progress("building the swarm", 1, 1)
    now = [0.0]
    det = make_detector(
        backend, address=address, ray_options=ray_options,
        feature_dimensions=c.features, fdr=0.01, score_levels="all", scoring=c.scoring, window_rounds=c.window_rounds,
        calibrate=c.calibrate, clock=lambda: now[0],
        regions=sc.regions.tolist(), prior_probability=0.01)
    try:
        report = _run(c, sc, det, now, progress, latency_sample, t_start, started, backend)
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


def play_round(det: Any, sc: Scenario, r: int, now: list[float], clusters: np.ndarray,
               X: np.ndarray | None = None) -> tuple[dict[str, Any], float]:
    """Round ``r`` of the scenario through a detector (either engine): the network
    events, the round's evidence and behaviour (``X``: ``sc.behaviour(r)``, drawn
    here when not given). Returns the round's result and the seconds spent in the
    detector."""
    c = sc.config
    now[0] = r * c.round_seconds
    if r == c.partition_at and c.partition_at < c.heal_at:
        det.cap_resolver.partition(sc.partition_groups())
    if r == c.heal_at and c.partition_at < c.heal_at:
        det.cap_resolver.heal()
        det.cap_resolver.sync()
    X = sc.behaviour(r) if X is None else X
    ev = sc.evidence(r, now[0])
    t0 = time.perf_counter()
    if ev["evidence_ids"].size:
        det.ingest_evidence(**ev)
    res = det.process_round(sc.agent_ids, X, sc.region_names, cohorts=clusters, timestamp=now[0])
    return res, time.perf_counter() - t0


def round_cutoff(det: Any, res: dict[str, Any]) -> float | None:
    """The p-value cut-off a round decided by, before widening for stale regions.

    With FDR control it is the largest decision p-value Benjamini–Hochberg
    rejected (BH rejects every p at most its cut, and the cut is one of them);
    ``None`` when nothing was rejected. Without FDR it is the significance level.
    """
    if det.settings.fdr is None:
        return float(det.settings.significance_level)
    flagged = np.asarray(res["is_anomaly"], dtype=bool)
    return float(np.max(res["decision_p_value"][flagged])) if flagged.any() else None


def level_threshold_squared(cut: float | None, levels: int, dof: int, fallback: float) -> float | None:
    """The D² an agent's score at one level must reach for its decision p-value to meet ``cut``.

    The decision p-value is the smallest level p-value times the number of
    levels (capped at 1), so a level decides when its χ² p-value is at most
    ``cut / levels``: the threshold is ``chi2.isf(cut / levels, dof)``, not
    ``chi2.isf(cut, dof)`` (the detector's ``threshold_squared``, which is the
    one-level figure). ``fallback`` (the detector's) is used when the cut is 0
    (only p-values that underflowed were rejected). ``None`` when nothing passed.
    """
    if cut is None:
        return None
    if cut <= 0:
        return fallback if math.isfinite(fallback) else None
    from scipy.special import chdtri  # lazily: only a finished run needs it

    return float(chdtri(dof, cut / levels))


def _decision_rule(det: Any, c: ScenarioConfig, res: dict[str, Any]) -> DecisionRule:
    s = det.settings
    cut = round_cutoff(det, res)
    # simulate's cohorts are one-level cluster names: with cohort scoring each agent has two levels
    levels = 2 if s.score_levels == "all" else 1
    thr2 = level_threshold_squared(cut, levels, c.features, float(res["threshold_squared"]))
    return DecisionRule(
        method="fdr" if s.fdr is not None else "alpha", fdr_q=s.fdr, significance_level=s.significance_level,
        score_levels=s.score_levels, require=s.require, isolate_probability=s.isolate_probability,
        feature_dimensions=c.features, final_round_p_cutoff=cut,
        final_round_threshold_squared=thr2)


def _region_rounds(r: int, sc: Scenario, res: dict[str, Any], truth_now: np.ndarray) -> list[RegionRound]:
    """Per region: agents, compromised, isolated, detections, false alarms, confidence factor."""
    iso = np.asarray(res["isolate"], dtype=bool)
    k = sc.regions.size
    idx = sc.region_index

    def per_region(mask: np.ndarray) -> list[int]:
        return np.bincount(idx[mask], minlength=k).tolist()

    agents, bad = per_region(np.ones(idx.size, bool)), per_region(truth_now)
    isolated, hits, false = per_region(iso), per_region(iso & truth_now), per_region(iso & ~truth_now)
    cf = res["region_confidence"]
    return [RegionRound(round=r, region=name, agents=agents[j], compromised=bad[j], isolated=isolated[j],
                        detections=hits[j], false_alarms=false[j], confidence_factor=_f(cf[name]) if name in cf
                        else None)
            for j, name in enumerate(sc.regions.tolist())]


def _statistics(X: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, mean and covariance (``ddof=1``) of a group of agents' behaviour."""
    return X.shape[0], X.mean(axis=0), np.atleast_2d(np.cov(X, rowvar=False))


def _newly_isolated(det: Any, sc: Scenario, r: int, X: np.ndarray, res: dict[str, Any], rows: np.ndarray,
                    clusters: np.ndarray, truth_now: np.ndarray) -> list[IsolatedAgent]:
    """The agents first isolated in round ``r``, with that round's scores and their "why".

    Each agent is explained at the level that decided: its cluster when the
    decision p-value is the cluster-level p-value times the number of levels
    (the smallest p-value of the levels that are warm decides), else the
    population. The
    statistics are those the detector scored against: the population's from
    ``get_global_statistics()``, a cluster's from the round's behaviour (every
    agent is updated each round, so each cluster holds exactly these rows);
    with a trimmed scoring mode (``scoring="robust"``), the detector's own
    distances and feature parts, and a cluster's kept members' statistics.
    """
    if not rows.size:
        return []
    d = X.shape[1]
    shrinkage = det.settings.shrinkage
    trimmed = det.settings.scoring in TRIMMED_MODES
    if trimmed:
        # The detector scored against trimmed moments: its own distances and feature parts
        # explain its decision (the full moments' would explain one it did not make).
        own = det.protocol.score_many(sc.agent_ids[rows], fdr=None, explain=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            d2_own = own["mahalanobis_squared"]
            pop_shares = np.where(d2_own[:, None] > 0, own["feature_contributions"]
                                  / np.where(d2_own > 0, d2_own, 1.0)[:, None], 0.0)
    else:
        stats = det.get_global_statistics()          # the population the detector scored against
        _, pop_shares = feature_shares(X[rows], stats["count"], stats["mean"], stats["covariance"], shrinkage)
    level = np.array(["population"] * rows.size, dtype=object)
    d2 = np.asarray(res["mahalanobis_squared"], dtype=np.float64)[rows].copy()
    p = np.asarray(res["p_value"], dtype=np.float64)[rows].copy()
    shares = pop_shares
    decision = np.asarray(res["decision_p_value"], dtype=np.float64)
    # each cluster's members: one stable sort of the cluster indices (no string compares over all agents)
    cluster = sc.cluster_index
    order = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[order], np.arange(int(cluster.max()) + 2))
    for c in np.unique(cluster[rows]).tolist():
        members = order[bounds[c]:bounds[c + 1]]
        if members.size < 3:
            continue
        mine = np.flatnonzero(cluster[rows] == c)
        if trimmed:
            # the cluster level as the detector scored it (its trimmed moments); the parts of the
            # distance from the cluster's kept members' statistics (shares sum to 1 either way)
            path = (str(clusters[members[0]]),)
            level_rows = own.get("levels", {}).get(path)
            if level_rows is None:
                continue
            at = np.full(rows.size, -1, dtype=np.int64)
            at[level_rows["rows"]] = np.arange(level_rows["rows"].size)
            cd2 = np.asarray(level_rows["mahalanobis_squared"], dtype=np.float64)[at[mine]]
            cp = np.asarray(level_rows["p_value"], dtype=np.float64)[at[mine]]      # the mode's own p-value
            kept = det.tree.get_trimmed_statistics(path)
            _, cshares = feature_shares(X[rows[mine]], kept["count"], kept["mean"], kept["covariance"], shrinkage)
        else:
            cd2, cshares = feature_shares(X[rows[mine]], *_statistics(X[members]), shrinkage)
            cp = chi2_sf(cd2, d)
        # The level that decided is the one whose p-value times the number of levels (2: the
        # population and the cluster) is the decision p-value; a cluster still warming up never
        # decides, whatever its p-value, so match rather than take the smaller p.
        dp = decision[rows[mine]]
        by_cluster = np.isclose(dp, np.minimum(1.0, 2.0 * cp), rtol=1e-6, atol=0.0)
        by_population = np.isclose(dp, np.minimum(1.0, 2.0 * p[mine]), rtol=1e-6, atol=0.0)
        better = by_cluster & (~by_population | (cd2 > d2[mine]))
        pick = mine[better]
        level[pick], d2[pick], p[pick], shares[pick] = str(clusters[members[0]]), cd2[better], cp[better], \
            cshares[better]
    names = [f"feature {j}" for j in range(d)]
    prob = res["probability"]
    return [IsolatedAgent(
        agent_id=int(sc.agent_ids[i]), region=str(sc.region_names[i]), cohort=str(clusters[i]),
        first_isolated_round=r, level=str(level[k]), mahalanobis_squared=float(d2[k]), p_value=float(p[k]),
        decision_p_value=float(res["decision_p_value"][i]), consensus_probability=_f(prob[i]),
        final_consensus_probability=None, top_features=top_features(shares[k], names),
        compromised=bool(truth_now[i]))
        for k, i in enumerate(rows.tolist())]


def _run(c: ScenarioConfig, sc: Scenario, det: Any, now: list[float], progress: Progress,
         latency_sample: int, t_start: float, started: str, backend: str) -> SimulationReport:
    clusters = cluster_names(sc)
    n = c.agents
    first_isolation = np.full(n, -1, dtype=np.int64)
    rounds: list[dict[str, Any]] = []
    region_rounds: list[RegionRound] = []
    isolated: list[IsolatedAgent] = []
    accepted = attempted = 0
    round_times = []
    res: dict[str, Any] = {}
    null = getattr(det.protocol, "null", None) if c.calibrate else None
    levels = 2 if det.settings.score_levels == "all" else 1
    for r in range(c.rounds):
        X = sc.behaviour(r)
        # the null the round is tested against (it admits the round's members after the decision)
        null_state_now = null_state(null, n, det.settings.fdr, levels)
        res, seconds = play_round(det, sc, r, now, clusters, X)
        round_times.append(seconds)
        if sc.partitioned(r):
            attempted += n
            accepted += int(res["accepted"])
        truth_now = sc.is_compromised_by(r)
        iso = res["isolate"]
        newly = iso & (first_isolation < 0)
        first_isolation[newly] = r
        ever = first_isolation >= 0
        isolated.extend(_newly_isolated(det, sc, r, X, res, np.flatnonzero(newly), clusters, truth_now))
        region_rounds.extend(_region_rounds(r, sc, res, truth_now))
        rounds.append({
            "round": r,
            "partitioned": sc.partitioned(r),
            "flagged_anomalous": int(res["is_anomaly"].sum()),
            # the anomaly flags' realised false-discovery proportion (ground truth known here)
            "flags_false": int((np.asarray(res["is_anomaly"], dtype=bool) & ~truth_now).sum()),
            "isolated_now": int(iso.sum()),
            "false_alarms": int((iso & ~truth_now).sum()),
            "compromised_so_far": int(truth_now.sum()),
            "recall_so_far": _f((ever & truth_now).sum() / truth_now.sum()) if truth_now.any() else None,
            "p_value_cutoff": round_cutoff(det, res),
            "confidence": {k: _f(v) for k, v in res["region_confidence"].items()},
            **null_state_now,
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
    isolated = [dataclasses.replace(a, final_consensus_probability=_f(prob[a.agent_id]),
                                    compromised=bool(truth[a.agent_id])) for a in isolated]
    flagged_sources = set(det.consensus.byzantine_nodes)
    byz_truth = set(sc.observer_ids[sc.byzantine].tolist())
    found = flagged_sources & byz_truth
    reputation = det.consensus.source_reputation()
    decision = _decision_rule(det, c, res)
    report = SimulationReport(
        run=RunInfo(version=__version__, seed=c.seed, backend=backend, config=c.as_dict(), decision=decision),
        config=c.as_dict(),
        detection={
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
            # Benjamini-Hochberg flags (before consensus) against the truth, pooled over the rounds:
            # false flags / flags, to compare with the fdr level asked for
            "flags_realised_fdr": _f(sum(rd["flags_false"] for rd in rounds)
                                     / max(1, sum(rd["flagged_anomalous"] for rd in rounds))),
            "flags_fdr_level": det.settings.fdr,
            **({"calibration": calibration_summary(rounds, n, det.settings.fdr, levels)} if c.calibrate else {}),
            "rounds_to_detection": {
                "mean": _f(delay.mean()) if delay.size else None,
                "median": _f(np.median(delay)) if delay.size else None,
                "max": int(delay.max()) if delay.size else None,
            },
        },
        consensus={
            "byzantine_sources": sorted(byz_truth),
            "byzantine_found": sorted(found),
            "byzantine_flagged": sorted(str(s) for s in flagged_sources),
            "honest_flagged": sorted(str(s) for s in flagged_sources - byz_truth),
            "evidence_points": int(det.consensus.evidence_count),
            "mean_probability_compromised": _f(np.nanmean(prob[truth])) if truth.any() else None,
            "mean_probability_honest": _f(np.nanmean(prob[~truth])),
        },
        availability={
            "updates_during_partition": attempted,
            "accepted_during_partition": accepted,
            "availability": _f(accepted / attempted) if attempted else None,
            "min_confidence_factor": _f(min(min(v for v in rd["confidence"].values() if v is not None)
                                            for rd in rounds)),
        },
        rounds=rounds,
        isolated_agents=isolated,
        regions=region_rounds,
    )
    # ------------------------------------------------------------------ performance
    lat = _latency_sample(det, sc, latency_sample, now[0])
    report.performance = {
        "started_utc": started,
        "total_seconds": time.perf_counter() - t_start,
        "rounds_seconds": elapsed_rounds,
        "agents_per_second": n * c.rounds / elapsed_rounds if elapsed_rounds else None,
        "round_seconds_mean": elapsed_rounds / c.rounds,
        "per_item_latency_us_p50": float(np.percentile(lat, 50)) if lat.size else None,
        "per_item_latency_us_p99": float(np.percentile(lat, 99)) if lat.size else None,
        "per_item_latency_samples": int(lat.size),      # how many calls the two figures come from
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    # the final round's decision p-values (in agent order: process_round answers in the order asked)
    report.arrays = ReportArrays(
        decision_p=np.asarray(res["decision_p_value"], dtype=np.float64), truth=truth, probability=prob,
        region=sc.region_names, reputation=reputation, byzantine_truth=byz_truth,
        p_cutoff=decision.final_round_p_cutoff)
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


def write_outputs(report: SimulationReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.json`` and the self-contained ``report.html`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True))
    tmp.replace(json_path)
    html_path = out / "report.html"
    write_report(html_path, simulation_page(report))
    return json_path, html_path
