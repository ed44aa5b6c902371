"""Restart time of a ``swarmguard serve`` node after K windows, with and without snapshots.

Both nodes get the same K windows of A agents (``/v1/behaviors`` vectors, through the node's
own ``accept_behaviors``); one snapshots every ``--snapshot-every`` windows, the other never
(``0``, the whole log). Each is then dropped without a drain (a crash) and rebuilt from its
data folder; the script reports both restart times, their ratio and the log records replayed.

    PYTHONPATH=src python benchmarks/bench_serve_restart.py --windows 30 --agents 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from swarmguard.apps.serve import ServeNode, ServeSettings
from swarmguard.apps.serve.records import BehaviorBatch


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def fill(data: Path, windows: int, agents: int, features: int, every: int, seed: int) -> ServeSettings:
    clock = Clock()
    settings = ServeSettings(clock=clock, close_windows=False, warm_up=20, snapshot_every=every)
    node = ServeNode(settings, data)
    rng = np.random.default_rng(seed)
    ids = [f"a-{i}" for i in range(agents)]
    for _ in range(windows):
        X = rng.normal(size=(agents, features))
        node.accept_behaviors(BehaviorBatch(agent_ids=ids, X=X, cohorts=[None] * agents))
        clock.t += 60.0
        node.close_window()
    node.log.close()                      # a crash: no drain, no last snapshot
    return settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=30)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--snapshot-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for every in (0, a.snapshot_every):
            data = Path(tmp) / f"every{every}"
            settings = fill(data, a.windows, a.agents, a.features, every, a.seed)
            t0 = time.perf_counter()
            node = ServeNode(settings, data)
            times[every] = time.perf_counter() - t0
            print(f"snapshot_every={every:>3}: restart {times[every]:.3f} s, {node.replayed} log records replayed, "
                  f"{len(node.log)} in the log")
            node.close()
        print(f"restart with snapshots / without: {times[a.snapshot_every] / times[0]:.3f} "
              f"({a.windows} windows of {a.agents} agents)")


if __name__ == "__main__":
    main()
