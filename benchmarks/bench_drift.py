"""Drift benchmark: the drifting-population scenario without a window and with windows of 1–5 rounds.

The world is :mod:`swarmguard.apps.drift` (the honest population's mean moves
``--drift`` standard deviations per round; each live agent reports with
probability 0.5 per round and 3 % of the agents go quiet each round,
their last vectors staying in the tree; 1 % planted anomalies fixed relative
to the moving population). Every run sees the same world (one seed); each
round the reporting agents go through ``process_round`` (FDR q = 0.01).
Printed per setting: precision, recall and false alarms over all rounds and
over the second half, and the members scored against in the last round.

``--cost`` instead measures what a window costs: one round (every agent
replaced, then scored: ``update_and_score_many``) and one per-item call
(``update_agent_behavior_sync``) on a tree of ``--agents`` agents, without a
window and with ``window_rounds=2``, in the same process; printed as ratios.

Run::

    python benchmarks/bench_drift.py                    # 20,000 agents, 30 rounds
    python benchmarks/bench_drift.py --agents 5000 --rounds 12 --windows 2
    python benchmarks/bench_drift.py --cost --agents 100000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree
from swarmguard.apps.drift import DriftConfig, run_drift


def cost(agents: int, d: int = 8, repeats: int = 5, items: int = 2000) -> None:
    """Seconds per round and per item, without and with a window, and their ratios."""
    rng = np.random.default_rng(0)
    ids = np.arange(agents)
    X = rng.normal(size=(agents, d))
    rows = {}
    for w in (None, 2):
        tree = HierarchicalStatisticalTree(feature_dimensions=d, window_rounds=w)
        protocol = BehavioralDistributedProtocol(tree, fdr=0.01)
        protocol.update_and_score_many(ids, X)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            protocol.update_and_score_many(ids, X + 0.01)
            best = min(best, time.perf_counter() - t0)
        who = rng.integers(0, agents, size=items)
        Y = rng.normal(size=(items, d))
        t0 = time.perf_counter()
        for a, y in zip(who.tolist(), Y, strict=True):
            protocol.update_agent_behavior_sync({"agent_id": a, "features": y})
        rows[w] = (best, (time.perf_counter() - t0) / items)
    (r0, i0), (r2, i2) = rows[None], rows[2]
    print(f"{agents:,} agents, {d} features: round (replace all, score all) {r0:.3f} s -> {r2:.3f} s "
          f"with window_rounds=2 ({r2 / r0:.2f}x); per-item call {i0 * 1e6:.0f} µs -> {i2 * 1e6:.0f} µs "
          f"({i2 / i0:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--drift", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", default="1,2,3,5", help="comma-separated window lengths in rounds")
    ap.add_argument("--cost", action="store_true", help="measure a window's cost per round and per item")
    args = ap.parse_args()
    if args.cost:
        cost(args.agents)
        return
    config = DriftConfig(agents=args.agents, rounds=args.rounds, drift=args.drift, seed=args.seed)
    settings = [None] + [int(w) for w in args.windows.split(",") if w]
    print(f"drift scenario: {args.agents:,} agents, {args.rounds} rounds, drift {args.drift} sd/round, "
          f"seed {args.seed}")
    print("| window | precision | recall | recall, along the drift | recall, in features | false alarms "
          "| precision, 2nd half | recall, 2nd half | scored against (last round) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in settings:
        t0 = time.perf_counter()
        run = run_drift(config, w)
        seconds = time.perf_counter() - t0
        t, late = run.totals(), run.totals(args.rounds // 2)
        last = run.rounds[-1]
        name = "none (all members)" if w is None else f"{w} rounds"
        print(f"| {name} | {t['precision']:.3f} | {t['recall']:.3f} | {t['recall_along_drift']:.3f} | "
              f"{t['recall_in_features']:.3f} | {t['false_alarms']} | "
              f"{late['precision']:.3f} | {late['recall']:.3f} | {last.reference:,} of {last.members:,} | "
              f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
