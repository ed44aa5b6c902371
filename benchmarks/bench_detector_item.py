"""Benchmark the detector's per-item path (``process_agent_behavior``) beside River.

Scenario: ``--agents`` agents (default 10^6) with 10 features in two regions,
50 of them shifted so the detector holds its own evidence, loaded with two
rounds of the batch API (``process_round``); then ``--calls`` observations of
random known agents (fresh vectors, each with its region) sent one at a time.

Printed, as medians and p99 in µs per call:

* the guide's call, ``await detector.process_agent_behavior(agent_id, data)``
  inside one event loop, and its synchronous twin;
* where a call's time goes: each part timed alone on the same kind of
  observation — the checks run before any part changes (``_check_item``), the
  tree's update and leave-one-out score (the protocol), the CAP resolver's write
  and view (``handle_update_sync``, the public call) and its write with the
  confidence factor alone (``_handle_checked``, what the detector's own rule
  reads), the consensus look-up and the decision;
* River's ``EmpiricalCovariance.update`` on the same vectors, measured in the
  same run (River keeps one flat covariance and scores nothing; a per-item call
  here updates a tree, scores the agent, writes a replica and decides), and the
  ratio of the medians.

Timings on a shared machine move with its load: compare the ratio to River
(measured in the same run) rather than the µs across runs.

    python benchmarks/bench_detector_item.py                  # 10^6 agents
    python benchmarks/bench_detector_item.py --agents 100000 --score-levels all
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from swarmguard import BehavioralData, DistributedBehavioralDetector, StatisticalUpdate


def per_call_us(call, items) -> np.ndarray:
    """Each call's wall time in µs, one item at a time."""
    out = np.empty(len(items))
    for i, item in enumerate(items):
        t = time.perf_counter_ns()
        call(item)
        out[i] = time.perf_counter_ns() - t
    return out / 1e3


def awaited_us(det, items) -> np.ndarray:
    out = np.empty(len(items))

    async def run():
        for i, item in enumerate(items):
            t = time.perf_counter_ns()
            await det.process_agent_behavior(item.agent_id, item)
            out[i] = time.perf_counter_ns() - t

    asyncio.run(run())
    return out / 1e3


def river_us(vectors: np.ndarray) -> np.ndarray | None:
    try:
        from river import covariance
    except ImportError:
        return None
    cov = covariance.EmpiricalCovariance()
    names = [f"f{j}" for j in range(vectors.shape[1])]
    warm = [dict(zip(names, r, strict=True)) for r in np.random.default_rng(1).normal(size=(1000, len(names))).tolist()]
    for r in warm:
        cov.update(r)
    rows = [dict(zip(names, r, strict=True)) for r in vectors.tolist()]
    return per_call_us(cov.update, rows)


def line(name: str, us: np.ndarray) -> str:
    return f"  {name:52s} median {np.median(us):8.1f} µs   p99 {np.percentile(us, 99):9.1f} µs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=5000, help="per-item calls timed (per measurement)")
    ap.add_argument("--score-levels", choices=("population", "all"), default="population")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    n, d = args.agents, 10
    X = rng.normal(size=(n, d))
    X[:50] += 6.0
    ids = np.arange(n)
    regions = np.array(["eu", "us"])[ids % 2]
    det = DistributedBehavioralDetector(feature_dimensions=d, clock=lambda: 0.0, score_levels=args.score_levels)
    t = time.perf_counter()
    det.process_round(ids, X, regions)
    det.process_round(ids, X, regions)
    print(f"swarmguard per-item benchmark: {n:,} agents, d={d}, score_levels={args.score_levels!r}, "
          f"numpy {np.__version__}; two batch rounds to load: {time.perf_counter() - t:.1f} s; "
          f"evidence held: {det.consensus.evidence_count}")

    def items(k: int) -> list[BehavioralData]:
        agents = rng.integers(50, n, size=k).tolist()
        vecs = rng.normal(size=(k, d))
        return [BehavioralData(a, v, region="eu" if a % 2 == 0 else "us") for a, v in zip(agents, vecs, strict=True)]

    k = args.calls
    per_item_us(det, items(min(k, 500)))                      # warm the paths (and the caches) first
    whole_async = awaited_us(det, items(k))
    whole_sync = per_item_us(det, items(k))
    print("\nwhole call:")
    print(line("await process_agent_behavior (one event loop)", whole_async))
    print(line("process_agent_behavior_sync", whole_sync))

    print("\nits parts, each timed alone:")
    batch = items(k)
    print(line("checks before any change (_check_item)", per_call_us(lambda it: det._check_item(it.agent_id, it), batch)))
    print(line("tree update + score (protocol)",
               per_call_us(lambda it: det.protocol.update_agent_behavior_sync(it), batch)))
    seq = iter(range(10**9))
    cap = det.cap_resolver
    updates = [StatisticalUpdate(update_id=f"bench:{next(seq)}", agent_id=it.agent_id, timestamp=0.0,
                                 feature_vector=it.features, anomaly_score=1.0, source_partition=it.region)
               for it in batch]
    print(line("CAP write + view (handle_update_sync)", per_call_us(lambda u: cap.handle_update_sync(u, now=0.0),
                                                                      updates)))
    checked = [(u.source_partition, u.agent_id, u.timestamp, u.feature_vector, u.anomaly_score, f"{u.update_id}'")
               for u in updates]
    print(line("CAP write + confidence only (_handle_checked)",
               per_call_us(lambda a: cap._handle_checked(*a, 0.0, report=False), checked)))
    print(line("consensus look-up (consensus_or_none)",
               per_call_us(lambda it: det.consensus.consensus_or_none(it.agent_id), batch)))
    info = det.protocol.update_agent_behavior_sync(batch[0])
    print(line("decision (should_trigger_response)",
               per_call_us(lambda it: det.should_trigger_response(info, {"confidence_factor": 1.0}), batch)))

    river = river_us(np.stack([it.features for it in batch]))
    if river is None:
        print("\nRiver not installed (pip install -e '.[bench]'): no River baseline.")
    else:
        print("\nRiver, same run:")
        print(line("EmpiricalCovariance.update", river))
        print(f"\nawait process_agent_behavior / River EmpiricalCovariance.update (medians): "
              f"{np.median(whole_async) / np.median(river):.1f}x")


def per_item_us(det, items) -> np.ndarray:
    return per_call_us(lambda it: det.process_agent_behavior_sync(it.agent_id, it), items)


if __name__ == "__main__":
    main()
