"""Drift benchmark: the drifting-population scenario without a window and with windows of 1–5 rounds.

The world is :mod:`swarmguard.apps.drift` (the honest population's mean moves
``--drift`` standard deviations per round; each live agent reports with
probability 0.5 per round and 3 % of the agents go quiet each round,
their last vectors staying in the tree; 1 % planted anomalies fixed relative
to the moving population). Every run sees the same world (one seed); each
round the reporting agents go through ``process_round`` (FDR q = 0.01).
Printed per setting: precision, recall and false alarms over all rounds and
over the second half, and the members scored against in the last round.

Run::

    python benchmarks/bench_drift.py                    # 20,000 agents, 30 rounds
    python benchmarks/bench_drift.py --agents 5000 --rounds 12 --windows 2
"""

from __future__ import annotations

import argparse
import time

from swarmguard.apps.drift import DriftConfig, run_drift


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--drift", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", default="1,2,3,5", help="comma-separated window lengths in rounds")
    args = ap.parse_args()
    config = DriftConfig(agents=args.agents, rounds=args.rounds, drift=args.drift, seed=args.seed)
    settings = [None] + [int(w) for w in args.windows.split(",") if w]
    print(f"drift scenario: {args.agents:,} agents, {args.rounds} rounds, drift {args.drift} sd/round, "
          f"seed {args.seed}")
    print("| window | precision | recall | false alarms | precision, 2nd half | recall, 2nd half "
          "| scored against (last round) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for w in settings:
        t0 = time.perf_counter()
        run = run_drift(config, w)
        seconds = time.perf_counter() - t0
        t, late = run.totals(), run.totals(args.rounds // 2)
        last = run.rounds[-1]
        name = "none (all members)" if w is None else f"{w} rounds"
        print(f"| {name} | {t['precision']:.3f} | {t['recall']:.3f} | {t['false_alarms']} | "
              f"{late['precision']:.3f} | {late['recall']:.3f} | {last.reference:,} of {last.members:,} | "
              f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
