"""Benchmark the Ray backend against the in-process engine on the same simulated job.

The job is ``swarmguard simulate``'s: a seeded swarm (default 10^6 agents, 8
features, 4 regions of 3 clusters, observers sending evidence, a partition),
run round by round through ``process_round`` (tree update and leave-one-out
scoring at population and cluster level, BH false-discovery cut, CAP writes
and anti-entropy, evidence and consensus). The same job runs in process, then
on a local Ray (``ray.init(num_cpus=2)``) with the 4 regions packed onto 1 and
onto 2 region actors. Per engine: the first round (Ray: includes starting the
actors) and the median of the other rounds (steady state), agent-rounds per
second, the ratios to the in-process engine in the same run, the median
scoring phase of the steady rounds (Ray: ``det.last_round_seconds["score"]``,
the shards' scoring and the driver's calibration), peak memory of
each actor, a check that all engines isolated the same agents, and the median
latency of the guide's per-item ``process_agent_behavior`` after the rounds.

    python benchmarks/bench_ray.py                     # 10^6 agents, 5 rounds (~4 min on 2 cores)
    python benchmarks/bench_ray.py --agents 100000     # quick
    python benchmarks/bench_ray.py --calibrate         # calibrated p-values (the default mode's relative null)

With ``--calibrate`` the engines' isolated agents can differ where a p-value lies
within the null sketch's error of its cut (REQ compacts with its own unseeded
random generator: two in-process runs differ too, docs/ray.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np

from swarmguard.api.detector import DistributedBehavioralDetector
from swarmguard.api.protocol import BehavioralData
from swarmguard.apps.scenario import Scenario, ScenarioConfig
from swarmguard.apps.simulate import cluster_names, play_round


def per_item_latency(det, sc: Scenario, calls: int, now: list[float]) -> float:
    """Median seconds of the guide's per-item ``process_agent_behavior`` on random known agents."""
    rng = np.random.default_rng(1)
    X = sc.behaviour(0)
    times = []
    for _ in range(calls):
        i = int(rng.integers(sc.agent_ids.size))
        data = BehavioralData(agent_id=int(sc.agent_ids[i]), features=X[i], region=str(sc.region_names[i]))
        now[0] += 0.001
        t = time.perf_counter()
        det.process_agent_behavior_sync(int(sc.agent_ids[i]), data)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) if times else float("nan")


def run(config: ScenarioConfig, make, per_item: int = 0) -> dict:
    sc = Scenario(config)
    now = [0.0]
    det = make(sc, now)
    clusters = cluster_names(sc)
    times, isolated, scoring = [], [], []
    for r in range(config.rounds):
        res, seconds = play_round(det, sc, r, now, clusters)
        times.append(seconds)
        isolated.append(np.flatnonzero(res["isolate"]))
        # Ray: the round's scoring phase (det.last_round_seconds; in process it has no phases)
        scoring.append(getattr(det, "last_round_seconds", {}).get("score", float("nan")))
    item = per_item_latency(det, sc, per_item, now)
    memory = det.peak_memory_mb() if hasattr(det, "peak_memory_mb") else {}
    if hasattr(det, "close"):
        det.close()
    steady = float(np.median(times[1:])) if len(times) > 1 else times[0]
    return {"first": times[0], "steady": steady, "throughput": config.agents / steady,
            "scoring": float(np.median(scoring[1:])) if len(scoring) > 1 else scoring[0],
            "isolated": isolated, "memory": memory, "per_item": item}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="region actors to try")
    ap.add_argument("--address", default=None, help="a running Ray cluster (default: local, 2 CPUs)")
    ap.add_argument("--per-item", type=int, default=100,
                    help="per-item process_agent_behavior calls timed after the rounds (0: none)")
    ap.add_argument("--calibrate", action="store_true",
                    help="calibrate=True (the default mode's relative score null, docs/scoring.md)")
    args = ap.parse_args()
    import ray
    config = ScenarioConfig(agents=args.agents, features=args.features, rounds=args.rounds,
                            partition_at=1, heal_at=args.rounds - 1, seed=0).validate()

    def kwargs(sc, now):
        return dict(feature_dimensions=config.features, fdr=0.01, score_levels="all", clock=lambda: now[0],
                    regions=sc.regions.tolist(), prior_probability=0.01, calibrate=args.calibrate)

    load0 = tuple(round(x, 2) for x in os.getloadavg())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"Ray {ray.__version__}")
    print(f"job: {config.agents:,} agents x {config.rounds} rounds, {config.features} features, "
          f"{config.regions} regions x {config.clusters_per_region} clusters, partition rounds "
          f"{config.partition_at}..{config.heal_at - 1}"
          f"{', calibrate=True' if args.calibrate else ''}")
    results = {"in-process": run(config, lambda sc, now: DistributedBehavioralDetector(**kwargs(sc, now)),
                                 args.per_item)}
    if ray.is_initialized():
        ray.shutdown()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for w in args.workers:
        results[f"ray, {w} region worker{'s' if w > 1 else ''}"] = run(
            config, lambda sc, now, w=w: DistributedBehavioralDetector(backend="ray", **kwargs(sc, now),
                                                                       region_workers=w), args.per_item)
    ray.shutdown()
    base = results["in-process"]
    print(f"\n{'engine':<26}{'first round s':>14}{'steady round s':>16}{'agents/s':>14}{'x in-process':>14}"
          f"{'per item ms':>13}{'scoring s':>11}")
    for name, r in results.items():
        print(f"{name:<26}{r['first']:>14.2f}{r['steady']:>16.2f}{r['throughput']:>14,.0f}"
              f"{r['throughput'] / base['throughput']:>14.2f}{r['per_item'] * 1e3:>13.2f}{r['scoring']:>11.2f}")
    if len(args.workers) >= 2:
        a, b = (results[k] for k in list(results)[1:3])
        print(f"\n{list(results)[2]} vs {list(results)[1]}: {a['steady'] / b['steady']:.2f}x throughput")
    same = all(all(np.array_equal(x, y) for x, y in zip(r["isolated"], base["isolated"], strict=True))
               for r in results.values())
    print(f"same isolated agents every round on every engine: {same}")
    print(f"driver peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    print(f"load average at start / end (1, 5, 15 min): {load0} / {tuple(round(x, 2) for x in os.getloadavg())}"
          " (above the CPU count: other processes shared the machine; compare ratios, not absolutes)")
    for name, r in results.items():
        if r["memory"]:
            print(f"{name}: actor peak RSS (MB) " + ", ".join(f"{k} {v:,.0f}" for k, v in r["memory"].items()))


if __name__ == "__main__":
    main()
