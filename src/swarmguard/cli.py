"""The ``swarmguard`` command line."""

from __future__ import annotations

# What a command needs beyond the option parser (SciPy, Rich's tables and progress bars,
# asyncio, the apps) is imported inside that command, so `swarmguard --help` starts fast
# (benchmarks/bench_startup.py; tests/test_lazy_imports.py checks what stays out).
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import typer
from rich.console import Console

from . import __version__
from .structures.scoring_modes import DEFAULT_SCORING, SCORING_MODES

if TYPE_CHECKING:
    from rich.progress import Progress

app = typer.Typer(add_completion=False, no_args_is_help=True, help="swarmguard: find misbehaving agents in very large populations.")
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; the caller raises the returned Exit."""
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


# the top-level modules of the serve extra's packages and of what they bring (FastAPI: Starlette,
# pydantic, anyio; uvicorn: h11): a missing one means the extra is not installed
_SERVE_EXTRA_MODULES = frozenset({"fastapi", "starlette", "pydantic", "pydantic_core", "anyio", "uvicorn", "h11",
                                  "prometheus_client", "httpx", "httpcore"})


_SERVE_EXTRAS = (("serve", _SERVE_EXTRA_MODULES), ("ray", frozenset({"ray"})))   # serve --backend ray: Ray
# the fleet extra's: the OpenTelemetry SDK and exporter and what they bring (protobuf's `google`,
# requests, urllib3), httpx and its own
_FLEET_EXTRAS = (("fleet", frozenset({"opentelemetry", "google", "requests", "urllib3", "certifi", "idna",
                                      "charset_normalizer", "httpx", "httpcore", "h11", "anyio"})),)


def _cannot_import(command: str, exc: ImportError,
                   extras: tuple[tuple[str, frozenset[str]], ...] = _SERVE_EXTRAS) -> str:
    """One line saying which module ``swarmguard <command>`` cannot import and what to install.

    The modules of an extra in ``extras`` (``(extra, top-level module names)`` pairs; serve's by
    default) name that extra; any other (SciPy's LAPACK bindings: a core dependency) means a
    broken or partial install. Only the first line of the error is kept (some, NumPy's and
    SciPy's among them, run to paragraphs)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    name = exc.name or ""
    for extra, modules in extras:
        if name.partition(".")[0] in modules:
            return f"swarmguard {command} needs the {extra} extra (pip install 'swarmguard[{extra}]'): {first}"
    if name:
        return (f"swarmguard {command} cannot import {name}: {first} (a broken or partial install: "
                f"reinstall it, e.g. pip install --force-reinstall {name.partition('.')[0]})")
    return f"swarmguard {command} cannot import a module it needs: {first}"


def _format_choice(value: str | None) -> str | None:
    """``--format``'s values (a typer parser, so that the refusal says "unknown format", as detect's own does)."""
    if value is None or value.lower() in FORMATS:
        return None if value is None else value.lower()
    raise typer.BadParameter(f"unknown format {value!r}: use one of {', '.join(FORMATS)}")


FORMATS = ("csv", "jsonl", "parquet")          # = apps.detect.FORMATS (not imported: --help stays light)
Engine = Literal["auto", "pyarrow", "python"]  # = apps.detect.ENGINES; typer refuses anything else (exit 2)
Backend = Literal["inprocess", "ray"]
Difficulty = Literal["easy", "default", "hard"]
Scoring = Literal[tuple(SCORING_MODES)]        # the registry's modes; typer refuses anything else (exit 2)
ScenarioName = Literal["default", "drift"]


def _version(value: bool) -> None:
    if value:
        console.print(f"swarmguard {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """swarmguard command line."""


def make_population(agents: int, features: int, anomalies: int, seed: int):
    """A correlated population in 4 regions, with ``anomalies`` agents shifted in 1–3 features."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(features, features)) / np.sqrt(features)
    X = rng.normal(size=(agents, features)) @ mix + rng.normal(scale=3.0, size=features)
    regions = np.array(["eu-west", "us-east", "ap-south", "sa-east"])[rng.integers(0, 4, size=agents)]
    bad = rng.choice(agents, size=anomalies, replace=False)
    std = X.std(axis=0)
    for a in bad:
        cols = rng.choice(features, size=int(rng.integers(1, 4)), replace=False)
        X[a, cols] += rng.choice([-1.0, 1.0], size=cols.size) * rng.uniform(8.0, 15.0, size=cols.size) * std[cols]
    return X, regions, np.sort(bad), rng


@app.command()
def demo(
    agents: int = typer.Option(1_000_000, min=1000, help="Population size. Example: --agents 200000"),
    features: int = typer.Option(10, min=1, help="Behaviour features per agent. Example: --features 6"),
    anomalies: int = typer.Option(25, min=0, help="Agents whose behaviour is shifted. Example: --anomalies 50"),
    updates: int = typer.Option(10_000, min=0, help="Single updates timed through the async API. Example: --updates 1000"),
    fdr: float = typer.Option(0.01, min=1e-9, max=0.5, help="False-discovery rate for the batch scan. Example: --fdr 0.05"),
    seed: int = typer.Option(0, help="Random seed. Example: --seed 7"),
) -> None:
    """Build a population with injected anomalies, find them, and print statistics and timings.

    Example: swarmguard demo --agents 200000 --anomalies 10
    """
    if anomalies >= agents:
        raise typer.BadParameter("anomalies must be fewer than agents", param_hint="--anomalies")
    import asyncio

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from .api import BehavioralData, BehavioralDistributedProtocol, HierarchicalStatisticalTree

    timings: dict[str, float] = {}
    with Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("generating population", total=4)
        X, regions, truth, rng = make_population(agents, features, anomalies, seed)
        progress.update(task, advance=1, description="bulk load into the tree")
        tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=features)
        protocol = BehavioralDistributedProtocol(tree, fdr=fdr)
        t = time.perf_counter()
        tree.update_many(np.arange(agents), X, cohorts=regions)
        timings["bulk load"] = time.perf_counter() - t
        progress.update(task, advance=1, description="scoring every agent (leave-one-out, FDR)")
        t = time.perf_counter()
        result = protocol.score_many(explain=True)
        timings["score all agents"] = time.perf_counter() - t
        progress.update(task, advance=1, description="single updates through the async API")
        lat = np.empty(updates)
        picks = rng.integers(0, agents, size=updates)

        async def stream():
            for i, a in enumerate(picks):
                item = BehavioralData(int(a), X[a])
                t0 = time.perf_counter_ns()
                await protocol.update_agent_behavior(item)
                lat[i] = time.perf_counter_ns() - t0

        asyncio.run(stream())
        progress.update(task, advance=1)

    flagged = np.flatnonzero(result["is_anomaly"])
    ids = result["agent_ids"]
    found = set(ids[flagged].tolist())
    truth_set = set(truth.tolist())
    tp = len(found & truth_set)
    precision = tp / len(found) if found else 1.0
    recall = tp / len(truth_set) if truth_set else 1.0

    console.rule(f"swarmguard demo: {agents:,} agents, {features} features, {anomalies} injected anomalies")
    table = Table(title=f"Flagged agents ({len(flagged)}; BH FDR q={fdr})")
    for col in ("agent", "region", "distance", "p-value", "main feature", "its part of D²", "injected?"):
        table.add_column(col)
    order = flagged[np.argsort(-result["mahalanobis_squared"][flagged])]
    for row in order[:15]:
        shares = result["feature_contributions"][row]
        j = int(np.argmax(shares))
        agent = ids[row]
        table.add_row(str(agent), tree.agent_cohort(agent)[0], f"{result['mahalanobis_distance'][row]:.1f}",
                      f"{result['p_value'][row]:.1e}", f"f{j}", f"{shares[j]:.0f} of {shares.sum():.0f}",
                      "yes" if agent in truth_set else "no")
    console.print(table)
    console.print(f"precision {precision:.3f}, recall {recall:.3f} against the injected ground truth")

    stats = tree.get_global_statistics()
    st = Table(title=f"Global statistics ({stats['count']:,} agents)")
    st.add_column("feature")
    st.add_column("mean")
    st.add_column("std")
    for j in range(features):
        st.add_row(f"f{j}", f"{stats['mean'][j]:.4f}", f"{stats['std'][j]:.4f}")
    console.print(st)

    tt = Table(title="Timings")
    tt.add_column("step")
    tt.add_column("value")
    for k, v in timings.items():
        tt.add_row(k, f"{v:.3f} s")
    if updates:
        tt.add_row("single update (await), median", f"{np.median(lat) / 1e3:.1f} µs")
        tt.add_row("single update (await), p99", f"{np.percentile(lat, 99) / 1e3:.1f} µs")
    tt.add_row("tree depth", str(tree.depth))
    console.print(tt)


@app.command()
def detect(
    input: Path = typer.Argument(..., help="Telemetry file: .csv, .jsonl/.ndjson (either may end in .gz) or .parquet. Example: telemetry.csv"),  # noqa: B008
    output: Path | None = typer.Option(None, "--output", "-o", help="Write one row per agent (agent_id, score, p_value, is_anomaly) here; .csv or .parquet. Example: --output scores.parquet"),  # noqa: B008
    format: str | None = typer.Option(None, "--format", parser=_format_choice, metavar="[csv|jsonl|parquet]", help="Input format when the extension does not say: csv, jsonl or parquet. Example: --format jsonl"),
    id_column: str = typer.Option("agent_id", help="Column holding the agent id. Example: --id-column host"),
    cohort_column: str | None = typer.Option(None, help="Optional region/cohort column; agents are grouped under it in the tree. Example: --cohort-column region"),
    timestamp_column: str | None = typer.Option(None, help="Optional timestamp column (numbers or ISO 8601); an agent's row with the latest timestamp wins (else the last row in the file). Example: --timestamp-column ts"),
    features: str | None = typer.Option(None, help="Comma-separated feature columns; default: every numeric column but the id, cohort and timestamp. Example: --features cpu,mem,latency_ms"),
    chunk_rows: int = typer.Option(200_000, min=1, help="Rows parsed per chunk; memory grows with agents, not rows. Example: --chunk-rows 50000"),
    fdr: float | None = typer.Option(None, help="False-discovery rate for flagging (Benjamini-Hochberg); 0.01 unless --alpha is given. Example: --fdr 0.05"),
    alpha: float | None = typer.Option(None, help="Flag every agent whose p-value is below this level instead of FDR control. Example: --alpha 1e-4"),
    shrinkage: str = typer.Option("auto", help="Covariance shrinkage toward its diagonal: 'auto' (d/n) or a number in [0, 1]. Example: --shrinkage 0.1"),
    scoring: Scoring = typer.Option(DEFAULT_SCORING, help="What agents are scored against: 'mahalanobis' (all agents' moments), 'robust' (the moments of the agents not flagged, so outliers do not hide each other), 'tails' (per-feature tail probabilities from quantile sketches) or 'fused' (robust distance and tail evidence in one p-value). Example: --scoring robust"),
    window: float | None = typer.Option(None, help="Score agents against those whose latest row is at most this much older than the newest row (seconds for ISO 8601 timestamps, the column's unit for numbers; needs --timestamp-column), so agents gone quiet long ago do not stand for a population that moved on. Example: --window 3600"),
    warm_up: int | None = typer.Option(None, min=3, help="Nobody is flagged in a population smaller than this; default min(1000, 100 x features). Example: --warm-up 50"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed rows and count them, instead of stopping at the first (exit code 2). Example: --skip-bad"),
    top: int = typer.Option(10, min=0, help="Show this many of the most anomalous agents with their main feature. Example: --top 25"),
    csv_engine: Engine = typer.Option("auto", help="Reader of CSV and JSON Lines: 'auto' and 'pyarrow' parse with pyarrow block by block (a block pyarrow refuses, or one with a malformed row, is parsed again from memory by the standard library, for line numbers), 'python' always the standard library. Example: --csv-engine python"),
    max_line_bytes: int = typer.Option(1 << 20, min=16, help="Longest line read (CSV, JSON Lines), newline included; a longer line stops the run (exit 2) having read only this much of it. Example: --max-line-bytes 16777216"),
    explain: bool = typer.Option(False, "--explain", help="Also write why to --output: each agent's cohort (with --cohort-column) and its 3 top contributing features with their shares of the score (feature_1, share_1, ...). Example: --explain"),
    label_column: str | None = typer.Option(None, help="Optional ground-truth column, not scored (a number, non-zero is an anomaly; true/false; yes/no): the summary adds the flags' realised false-discovery rate, precision and recall against it. Example: --label-column is_attack"),
    calibrate: bool = typer.Option(False, "--calibrate", help="Calibrated p-values: a round's p-value is its score's rank among the scores of agents not flagged in earlier rounds. Needs rounds: with --window (and --timestamp-column) the file is cut into windows of that length, each scored as a round (every row is held in memory); without --window, or with every row in one window, the file is one round, the null cannot warm up and the summary warns that the p-values are the mode's own. With --label-column the summary gives the realised FDR of calibrated rounds apart from warm-up rounds. Not with --spans. Example: --calibrate --window 3600 --timestamp-column ts"),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout (rows, agents, flagged, top agents with their features and shares, timings) instead of tables. Example: --json"),
    spans: bool = typer.Option(False, "--spans", help="INPUT is a file of OTLP spans (JSON lines of ExportTraceServiceRequest, or length-prefixed protobuf, as the Collector's file exporter writes; .gz too): spans are windowed by their own timestamps (--window seconds, default 60), turned into the documented GenAI behaviour vectors (docs/otlp-features.md) and each window scored as a round; one output row per agent and window. Example: swarmguard detect spans.jsonl --spans --window 60 -o scores.csv --explain"),
) -> None:
    """Score every agent of your own telemetry file and write one row per agent.

    Each agent's latest row is scored by leave-one-out squared Mahalanobis
    distance against all other agents (higher is more anomalous), with a
    chi-squared p-value and an FDR-controlled is_anomaly flag. Files larger
    than memory stream through in chunks. Malformed rows stop the run with
    the file and line and exit code 2, unless --skip-bad.

    Example: swarmguard detect telemetry.csv --output scores.csv --timestamp-column ts --cohort-column region
    """
    from .apps.detect import run_command

    options = {k: v for k, v in locals().items() if k not in ("run_command", "json_summary", "spans")}
    if spans:
        from .apps.detect_spans import run_span_command

        options["scoring"] = getattr(options["scoring"], "value", options["scoring"])
        options["csv_engine"] = getattr(options["csv_engine"], "value", options["csv_engine"])
        code = run_span_command(console, err_console, json_summary=json_summary, **options)
    else:
        code = run_command(console, err_console, json_summary=json_summary, **options)
    if code:
        raise typer.Exit(code)


def _rich_progress() -> tuple[Progress, Any]:
    """A Rich progress display and a callback ``(phase, done, total)`` driving one bar per phase."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console)
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done, total=total)

    return progress, update


@app.command()
def simulate(
    agents: int = typer.Option(100_000, help="Agents in the swarm. Example: --agents 1000000"),
    features: int = typer.Option(8, help="Behaviour features per agent. Example: --features 10"),
    rounds: int = typer.Option(20, help="Rounds to run. Example: --rounds 30"),
    regions: int = typer.Option(4, help="Regions (each also a CAP replica). Example: --regions 8"),
    compromised: float = typer.Option(0.01, help="Fraction of agents that get compromised. Example: --compromised 0.02"),
    observers: int = typer.Option(50, help="Observer nodes sending evidence. Example: --observers 100"),
    byzantine: float = typer.Option(0.2, help="Fraction of observers that lie. Example: --byzantine 0.3"),
    evidence: float = typer.Option(1.0, help="Observer attention: scales every report rate. Example: --evidence 2"),
    partition_at: int = typer.Option(8, help="Round at which the network splits in two. Example: --partition-at 5"),
    heal_at: int = typer.Option(13, help="Round at which it heals (= --partition-at: no partition). Example: --heal-at 15"),
    difficulty: Difficulty = typer.Option("default", help="Shift size and observer signal: easy, default or hard. Example: --difficulty hard"),
    scoring: Scoring = typer.Option(DEFAULT_SCORING, help="What agents are scored against: 'mahalanobis', 'robust' (trimmed moments), 'tails' (sketch tail evidence) or 'fused' (both). Example: --scoring fused"),
    calibrate: bool = typer.Option(False, "--calibrate", help="Calibrated p-values: each round's population p-value is its score's rank among the scores of agents not flagged in earlier rounds (in-process only). Example: --calibrate"),
    seed: int = typer.Option(0, help="Random seed: the same seed gives the same report (but for 'performance'). Example: --seed 7"),
    scenario: ScenarioName = typer.Option("default", help="'default': the swarm above; 'drift': a population whose mean moves steadily, agents that report intermittently or go quiet, run without and with --window-rounds (default 2 there), precision and recall per round (drift.json in --out). Example: --scenario drift"),
    window_rounds: int | None = typer.Option(None, min=1, help="Score agents against the members written in the last this many rounds only (so the reference follows a moving population); default: all members. Example: --window-rounds 2"),
    drift: float = typer.Option(0.5, help="--scenario drift: the population's standard deviations moved per round. Example: --drift 1.0"),
    out: Path = typer.Option(".", help="Folder for report.json and report.html. Example: --out runs/seed7"),
    backend: Backend = typer.Option("inprocess", help="Engine: inprocess or ray (needs swarmguard[ray]). Example: --backend ray"),
    address: str = typer.Option(None, help="Ray cluster address (--backend ray; default: a local Ray with 2 CPUs). Example: --address 10.0.0.5:6379"),
    region_workers: int = typer.Option(None, help="Ray actors the regions are packed onto (default: one per region). Example: --region-workers 2"),
    checkpoint_dir: Path = typer.Option(None, help="Also write the Ray actors' checkpoints to this folder (--backend ray; resume with RayDistributedBehavioralDetector.resume). Example: --checkpoint-dir runs/ckpt"),
    latency_sample: int = typer.Option(300, min=0, help="Single-agent calls timed after the rounds for the per-item latency row (at most --agents; 0: not measured; --scenario drift measures none). Example: --latency-sample 50"),
) -> None:
    """Run the whole system on a synthetic swarm with known ground truth and report how well it did.

    Example: swarmguard simulate --agents 20000 --rounds 15 --out /tmp/run
    """
    from rich.table import Table

    from .apps.output_paths import check_output_folder
    from .apps.scenario import ScenarioConfig
    from .apps.simulate import REPORT_FILES, run_simulation, write_outputs
    from .errors import SwarmGuardError

    if scenario == "drift":
        if backend != "inprocess":
            raise _fail("--scenario drift runs in process only (its driver compares in-process detectors)")
        _simulate_drift(agents, features, rounds, compromised, seed, drift, window_rounds or 2, out,
                        scoring=scoring)
        return
    config = ScenarioConfig(agents=agents, features=features, rounds=rounds, regions=regions,
                            compromised=compromised, observers=observers, byzantine=byzantine,
                            evidence=evidence, partition_at=partition_at, heal_at=heal_at,
                            difficulty=difficulty, seed=seed, scoring=scoring, window_rounds=window_rounds,
                            calibrate=calibrate)
    # every option, output folders included, is checked before the (possibly long) run starts
    try:
        config.validate()
        if backend != "ray" and (address or region_workers or checkpoint_dir):
            raise SwarmGuardError("--address, --region-workers and --checkpoint-dir need --backend ray")
        check_output_folder(out, "--out", files=REPORT_FILES)
        if checkpoint_dir is not None:
            check_output_folder(checkpoint_dir, "--checkpoint-dir")
    except SwarmGuardError as exc:
        raise _fail(str(exc)) from None
    progress, update = _rich_progress()
    with progress:
        ray_options = {"region_workers": region_workers, "checkpoint_dir": checkpoint_dir}
        try:
            report = run_simulation(config, progress=update, latency_sample=latency_sample, backend=backend,
                                    address=address,
                                    ray_options=ray_options if backend == "ray" else None)
        except SwarmGuardError as exc:       # e.g. MissingDependencyError: Ray is not installed
            raise _fail(str(exc)) from None
        json_path, html_path = write_outputs(report, out)
    det = report["detection"]
    table = Table(title=f"swarmguard simulate: {agents:,} agents, {rounds} rounds, seed {seed}")
    table.add_column("measure")
    table.add_column("value")
    rows = [
        ("isolation precision", f"{det['precision']:.4f}"),
        ("isolation recall", f"{det['recall']:.4f}"),
        ("F1", f"{det['f1']:.4f}"),
        ("compromised / isolated", f"{det['compromised']} / {det['isolated']}"),
        ("false alarms per round (max)", str(max(det["false_alarms_per_round"]))),
        ("anomaly flags' realised FDR (fdr asked)", f"{det['flags_realised_fdr']:.4f} ({det['flags_fdr_level']})"),
        *([("calibrated rounds: flags / false (realised FDR)",
            f"{det['calibration']['flags_calibrated']} / {det['calibration']['flags_false_calibrated']} ("
            + ("none" if det["calibration"]["realised_fdr_calibrated"] is None
               else f"{det['calibration']['realised_fdr_calibrated']:.4f}") + ")")]
          if "calibration" in det else []),
        ("rounds to detection (median)", str(det["rounds_to_detection"]["median"])),
        ("Byzantine sources found", f"{len(report['consensus']['byzantine_found'])} of "
                                    f"{len(report['consensus']['byzantine_sources'])}"),
        ("honest sources flagged", str(len(report["consensus"]["honest_flagged"]))),
        ("availability during the partition", str(report["availability"]["availability"])),
        ("lowest confidence factor", f"{report['availability']['min_confidence_factor']:.3f}"),
        ("throughput (agent-rounds/s)", f"{report['performance']['agents_per_second']:,.0f}"),
        ("per-item latency p50 / p99", "not measured"
         if report["performance"]["per_item_latency_us_p50"] is None else
         f"{report['performance']['per_item_latency_us_p50']:.0f} / "
         f"{report['performance']['per_item_latency_us_p99']:.0f} µs "
         f"({report['performance']['per_item_latency_samples']:,} calls)"),
        ("peak memory", f"{report['performance']['peak_memory_mb']:.0f} MB"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if "calibration" in det:
        console.print(f"calibration: {det['calibration']['note']}", markup=False)
    console.print(f"wrote {json_path} and {html_path}")


def _simulate_drift(agents: int, features: int, rounds: int, compromised: float, seed: int, drift: float,
                    window_rounds: int, out: Path, scoring: str = DEFAULT_SCORING) -> None:
    """``simulate --scenario drift``: the drifting world without and with a window, a table per round."""
    import json as _json

    from rich.table import Table

    from .apps.drift import DriftConfig, compare_drift
    from .apps.output_paths import check_output_folder
    from .errors import SwarmGuardError

    try:
        config = DriftConfig(agents=agents, features=features, rounds=rounds, compromised=compromised, seed=seed,
                             drift=drift, scoring=scoring).validate()
        check_output_folder(out, "--out", files=("drift.json",))
    except SwarmGuardError as exc:
        raise _fail(str(exc)) from None
    plain, windowed = compare_drift(config, window_rounds)
    table = Table(title=f"swarmguard simulate --scenario drift: {agents:,} agents, drift {drift} sd/round, seed {seed}")
    # "all": scored against every member; "W": against the members of the last W rounds
    for col in ("round", "reported", "bad", "ref all", "recall all", "FA all", f"ref W={window_rounds}",
                f"recall W={window_rounds}", f"FA W={window_rounds}"):
        table.add_column(col, justify="right")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"
    for a, b in zip(plain.rounds, windowed.rounds, strict=True):
        table.add_row(str(a.round), f"{a.reported:,}", str(a.compromised_reported), f"{a.reference:,}",
                      pct(a.recall), str(a.false_alarms), f"{b.reference:,}", pct(b.recall), str(b.false_alarms))
    console.print(table)
    for name, run in (("all members", plain), (f"window {window_rounds}", windowed)):
        t, late = run.totals(), run.totals(rounds // 2)
        console.print(f"{name}: precision {pct(t['precision'])}, recall {pct(t['recall'])} (along the drift "
                      f"{pct(t['recall_along_drift'])}, in features {pct(t['recall_in_features'])}), "
                      f"false alarms {t['false_alarms']}; second half: precision {pct(late['precision'])}, "
                      f"recall {pct(late['recall'])}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "drift.json"
    path.write_text(_json.dumps({"without_window": plain.to_json(), "with_window": windowed.to_json()}, indent=2))
    console.print(f"wrote {path}")


@app.command()
def validate(
    agents: int = typer.Option(1_000_000, min=1000, help="Agents for the scale, complexity, latency and CAP rows. Example: --agents 200000"),
    evidence: int = typer.Option(10_000_000, min=1000, help="Evidence points for the evidence row. Example: --evidence 1000000"),
    features: int = typer.Option(10, min=1, max=256, help="Behaviour features per agent. Example: --features 8"),
    updates: int = typer.Option(20_000, min=100, help="Single updates timed for the latency row. Example: --updates 5000"),
    quick: bool = typer.Option(False, "--quick", help="A small run: 10^5 agents, 10^6 evidence points, 3,000 updates."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any row fails its requirement or the guide's claim."),
    seed: int = typer.Option(0, help="Random seed. Example: --seed 3"),
    json_out: Path = typer.Option(None, "--json", help="Also write the rows as JSON. Example: --json validate.json"),
) -> None:
    """Re-measure the guide's "Performance Guarantees" table on this machine.

    Each row shows the guide's requirement and claim, what was measured here, and
    whether each holds. Exits 0 when the suite ran to the end, whatever the rows
    say (1 with --strict if any row fails).

    Example: swarmguard validate --quick
    """
    import json as _json

    from rich.table import Table

    from .apps.output_paths import check_output_file
    from .apps.validate import run_validation
    from .errors import OutputPathError

    if json_out is not None:
        try:
            check_output_file(json_out, "--json")
        except OutputPathError as exc:
            raise _fail(str(exc)) from None
    if quick:
        agents, evidence, updates = 100_000, 1_000_000, 3_000
    progress, update = _rich_progress()
    with progress:
        rows = run_validation(agents=agents, evidence=evidence, features=features, updates=updates, seed=seed,
                              progress=update)
    table = Table(title=f"swarmguard validate ({agents:,} agents, {evidence:,} evidence points)")
    for col in ("metric", "requirement", "guide's claim", "requirement met", "claim met"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(r.metric, r.requirement, r.claim,
                      "[green]pass[/green]" if r.meets_requirement else "[red]FAIL[/red]",
                      "[green]pass[/green]" if r.meets_claim else "[red]FAIL[/red]")
    console.print(table)
    for r in rows:
        console.print(f"[bold]{r.metric}[/bold]: {r.measured}" + (f" [dim]({r.note})[/dim]" if r.note else ""))
    failed = [r.metric for r in rows if not (r.meets_requirement and r.meets_claim)]
    console.print(f"{len(rows) - len(failed)} of {len(rows)} rows meet both the requirement and the claim"
                  + (f"; failing: {', '.join(failed)}" if failed else ""))
    if json_out is not None:
        json_out.write_text(_json.dumps([r.as_dict() for r in rows], indent=2))
    if strict and failed:
        raise typer.Exit(1)


def _peer_token(path: Path | None) -> str | None:
    """The secret a node presents to its peers: the file's first line, else $SWARMGUARD_PEER_TOKEN."""
    import os

    if path is not None:
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _fail(f"--peer-token-file: cannot read {path}: {exc.strerror}") from None
        return text.splitlines()[0].strip() if text else None
    return os.environ.get("SWARMGUARD_PEER_TOKEN") or None


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback needs --tokens. Example: --host 0.0.0.0"),
    port: int = typer.Option(8470, min=0, max=65535, help="Port. Example: --port 9000"),
    data_dir: Path | None = typer.Option(None, help="Folder of the node's durable log (replayed on restart); default: a new temporary folder. Example: --data-dir /var/lib/swarmguard"),  # noqa: B008
    tokens: Path | None = typer.Option(None, help="TOML file of bearer tokens and their roles (ingest, observer, read, admin, peer). Example: --tokens tokens.toml"),  # noqa: B008
    region: str = typer.Option("local", help="This node's region. Example: --region eu-west"),
    window: float = typer.Option(60.0, help="Window length in seconds on the node's clock: each closed window is one detector round. Example: --window 10"),
    features: int | None = typer.Option(None, min=1, help="Length of /v1/behaviors vectors (default: the first vector's). Example: --features 8"),
    max_body_bytes: int = typer.Option(64 << 20, min=1, help="Request body limit in bytes, compressed and decompressed. Example: --max-body-bytes 1048576"),
    max_header_bytes: int = typer.Option(64 << 10, min=1024, help="Request header limit in bytes (names and values together): 431 past it. Example: --max-header-bytes 16384"),
    body_timeout: float = typer.Option(60.0, help="Seconds a request's whole body may take to arrive: 408 past it (OTLP exporters do not retry a 408: raise it for slow links). Example: --body-timeout 300"),
    header_timeout: float = typer.Option(10.0, help="Seconds a request head may take to arrive, from the connection's open (on a keep-alive connection, from its first byte): past it the connection gets 408, or is closed if it sent nothing (counted in /metrics). Example: --header-timeout 30"),
    metrics_public: bool = typer.Option(False, "--metrics-public", help="Serve /metrics without a token."),
    certfile: Path | None = typer.Option(None, help="TLS certificate (PEM), with --keyfile. Example: --certfile node.pem"),  # noqa: B008
    keyfile: Path | None = typer.Option(None, help="TLS private key (PEM), with --certfile. Example: --keyfile node.key"),  # noqa: B008
    backend: Backend = typer.Option("inprocess", help="Engine: inprocess or ray (needs swarmguard[ray]). Example: --backend ray"),
    address: str | None = typer.Option(None, help="Ray cluster address (--backend ray; default: a local Ray). Example: --address 10.0.0.5:6379"),
    warm_up: int | None = typer.Option(None, min=3, help="Nobody is flagged in a population smaller than this; default min(1000, 100 x features). Example: --warm-up 50"),
    snapshot_every: int = typer.Option(10, min=0, help="Snapshot the node's state every this many closed windows (and on shutdown), deleting the log records it covers, so a restart replays only the tail; 0: only on shutdown. Example: --snapshot-every 5"),
    drain_seconds: float = typer.Option(0.0, min=0.0, help="On SIGTERM, answer /readyz 503 this long before closing the listener. Example: --drain-seconds 5"),
    peers: str | None = typer.Option(None, help="The other regions' nodes, comma-separated base URLs (delta sync over HTTP). Example: --peers http://127.0.0.1:8471,http://127.0.0.1:8472"),
    sync_seconds: float = typer.Option(2.0, min=0.001, help="Seconds between anti-entropy rounds with each peer (also right after writes). Example: --sync-seconds 1"),
    peer_token_file: Path | None = typer.Option(None, help="File holding the secret this node presents to its peers (a peer token of theirs); default: $SWARMGUARD_PEER_TOKEN. Example: --peer-token-file peer.secret"),  # noqa: B008
    consistency: str = typer.Option("statistical", help="statistical or eventual (always writable), or strong (writes 503 without a majority of nodes). Example: --consistency strong"),
    decode_workers: int = typer.Option(0, help="Processes that decode POST /v1/traces bodies (protobuf/JSON, gzip) into span columns, off the node's GIL; 0: in the request's thread. Example: --decode-workers 1"),
) -> None:
    """Run one node: an HTTP service that takes behaviour vectors and evidence and answers who is anomalous.

    Example: swarmguard serve --data-dir state --window 10
    """
    from .errors import SwarmGuardError

    try:
        from .apps.serve.run import import_serving_modules, run_server
        from .apps.serve.settings import ServeSettings

        settings = ServeSettings(data_dir=data_dir, tokens_file=tokens, host=host, port=port, region=region,
                                 window_seconds=window, features=features, max_body_bytes=max_body_bytes,
                                 max_header_bytes=max_header_bytes, body_timeout_seconds=body_timeout,
                                 header_timeout_seconds=header_timeout,
                                 metrics_public=metrics_public,
                                 certfile=certfile, keyfile=keyfile, backend=backend, address=address,
                                 warm_up=warm_up, snapshot_every=snapshot_every,
                                 peers=tuple(u.strip() for u in (peers or "").split(",") if u.strip()),
                                 sync_seconds=sync_seconds, consistency=consistency.lower(),
                                 peer_token=_peer_token(peer_token_file), decode_workers=decode_workers)
        import_serving_modules(settings)    # uvicorn, SciPy's LAPACK, Ray, ...: before anything is made
        settings.check_exposure()
        if tokens is not None:
            from .apps.serve.tokens import load_tokens

            load_tokens(tokens)
    except ImportError as exc:
        raise _fail(_cannot_import("serve", exc)) from None
    except SwarmGuardError as exc:
        raise _fail(str(exc)) from None
    run_server(settings, say=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True),
               drain_seconds=drain_seconds)


@app.command()
def fleet(
    endpoint: str = typer.Option("http://127.0.0.1:8470", help="The node's base URL (spans go to /v1/traces). Example: --endpoint http://127.0.0.1:8470"),
    agents: int = typer.Option(1000, min=1, help="Emulated AI agents. Example: --agents 10000"),
    misbehaving: int = typer.Option(10, min=0, help="How many of them misbehave (tool loop, token spikes, error burst, prompt injection, in turn). Example: --misbehaving 40"),
    windows: int = typer.Option(3, min=1, help="Windows to emit. Example: --windows 5"),
    window: float = typer.Option(60.0, min=0.5, help="The node's --window in seconds (bursts are sent just after its boundaries). Example: --window 10"),
    token: str | None = typer.Option(None, help="Bearer token for /v1/traces (an ingest token). Example: --token s3cret-ingest"),
    observer: list[str] = typer.Option([], help="An observer posting evidence, as SOURCE=TOKEN (an observer token); repeat for more. Example: --observer observer-7=s3cret-obs7"),  # noqa: B008
    read_token: str | None = typer.Option(None, help="A read token: at the end, check /v1/agents?top=K against the misbehaving agents. Example: --read-token s3cret-read"),
    seed: int = typer.Option(0, help="Random seed (the same seed, the same fleet). Example: --seed 7"),
) -> None:
    """Emulate a fleet of AI agents sending OpenTelemetry GenAI spans (OTLP/HTTP) to a node.

    Example: swarmguard fleet --endpoint http://127.0.0.1:8470 --agents 1000 --misbehaving 10 --window 10 --token s3cret-ingest
    """
    if misbehaving > agents:
        raise typer.BadParameter("misbehaving must be at most agents", param_hint="--misbehaving")
    pairs = []
    for item in observer:
        source, sep, secret = item.partition("=")
        if not sep or not source or not secret:
            raise typer.BadParameter(f"expected SOURCE=TOKEN, got {item!r}", param_hint="--observer")
        pairs.append((source, secret))
    try:
        from .apps.otlp.fleet import import_fleet_modules, run_fleet

        import_fleet_modules()          # the SDK, its exporter and httpx are imported on first use
    except ImportError as exc:
        raise _fail(_cannot_import("fleet", exc, _FLEET_EXTRAS)) from None
    say = lambda line: err_console.print(line, markup=False, highlight=False)  # noqa: E731
    say(f"swarmguard fleet: {agents} agents ({misbehaving} misbehaving) -> {endpoint}, {windows} windows of {window:g} s")
    try:
        report = run_fleet(endpoint, agents, misbehaving, windows=windows, window_s=window, token=token,
                           observers=pairs, seed=seed, read_token=read_token, log=say)
    except Exception as exc:         # the node unreachable, a refused token: one line, exit 1
        raise _fail(f"{type(exc).__name__}: {exc}", code=1) from None
    console.print(f"sent {sum(report.spans_per_window):,} spans in {len(report.spans_per_window)} windows"
                  + ("" if report.flushed else " (some exports did not finish)")
                  + f"; evidence accepted {report.evidence_posted}, refused {report.evidence_refused}")
    if report.precision is not None:
        console.print(f"top-{misbehaving} of /v1/agents: precision {report.precision:.3f}, recall {report.recall:.3f}")


if __name__ == "__main__":  # pragma: no cover
    app()
