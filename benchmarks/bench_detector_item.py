"""Benchmark the detector's per-item path (``process_agent_behavior``): what one call costs.

Scenario: 5,000 agents with 10 features (50 shifted, so the detector holds its
own evidence), two rounds through ``process_round``; then one known, calm agent
sent again and again through the per-item path. Printed (best of 5, in µs per
call): the checks that run before any part changes (``_check_item``), the
lookup of the detector's next own evidence id, a whole call awaited inside one
event loop, and a whole call through ``process_agent_behavior_sync`` (before
this version it started an event loop per call with ``asyncio.run``). Most of a
whole call is the consensus for the agent (see ``bench_consensus.py``).

    python benchmarks/bench_detector_item.py
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from swarmguard import BehavioralData, DistributedBehavioralDetector


def best_us(call, reps: int, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            call()
        times.append((time.perf_counter() - t) / reps * 1e6)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    X = rng.normal(size=(n, 10))
    X[:50] += 6.0
    det = DistributedBehavioralDetector(feature_dimensions=10, clock=lambda: 0.0)
    det.process_round(np.arange(n), X, "eu")
    det.process_round(np.arange(n), X, "eu")
    data = BehavioralData(7, X[7], timestamp=0.0, region="eu")
    eid = f"{det.node_id}:{det._evidence_number}"
    print(f"evidence held: {det.consensus.evidence_count}")
    print(f"_check_item (every check before a change): {best_us(lambda: det._check_item(7, data), 2000):8.1f} µs")
    if hasattr(det.consensus, "holds_evidence"):     # (older versions: a dry run of the evidence batch)
        print(f"own evidence id lookup (holds_evidence):   "
              f"{best_us(lambda: det.consensus.holds_evidence(det.node_id, eid), 2000):8.1f} µs")

    async def loop(reps: int) -> None:
        for _ in range(reps):
            await det.process_agent_behavior(7, data)

    print(f"process_agent_behavior, one event loop:     {best_us(lambda: asyncio.run(loop(500)), 1) / 500:8.1f} µs")
    print(f"process_agent_behavior_sync:                "
          f"{best_us(lambda: det.process_agent_behavior_sync(7, data), 200):8.1f} µs")


if __name__ == "__main__":
    main()
