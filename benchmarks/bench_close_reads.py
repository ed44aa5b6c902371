"""Latency of reads issued while a window closes (``swarmguard serve`` in this process).

One node (its own temporary data folder, ``--snapshot-every 0``) holds ``--agents``
agents of ``--features`` features in a closed window, then a second window of the same
agents is closed in a thread (``node.close_window()``, what ``POST /v1/admin/close-window``
runs). While it runs, a reader thread sends ``GET /v1/agents?top=10`` and
``GET /v1/agents/a-1`` through the app (FastAPI's ``TestClient``) one after the other;
each read's latency is printed with the close's own wall time, and how many reads
finished before the close did. The peer figure is the same read with no close running
(the idle latency), measured in the same run.

    PYTHONPATH=src python benchmarks/bench_close_reads.py --agents 100000 --features 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from swarmguard.apps.serve import ServeNode, ServeSettings, create_app
    from swarmguard.apps.serve.records import BehaviorBatch

    rng = np.random.default_rng(args.seed)
    n, d = args.agents, args.features
    ids = [f"a-{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as folder:
        settings = ServeSettings(close_windows=False, snapshot_every=0, warm_up=20)
        node = ServeNode(settings, folder)
        client = TestClient(create_app(settings, node))
        for _ in range(2):                     # the second window is the one closed while reading
            for lo in range(0, n, 50_000):
                hi = min(n, lo + 50_000)
                node.accept_behaviors(BehaviorBatch(ids[lo:hi], rng.normal(size=(hi - lo, d)), [None] * (hi - lo)))
            if _ == 0:
                node.close_window()
        routes = ["/v1/agents?top=10", "/v1/agents/a-1"]
        idle = {r: [] for r in routes}
        for _ in range(5):
            for r in routes:
                t = time.perf_counter()
                assert client.get(r).status_code == 200
                idle[r].append(time.perf_counter() - t)
        during: dict[str, list[float]] = {r: [] for r in routes}
        done = threading.Event()
        close_wall = [0.0]

        def close() -> None:
            t = time.perf_counter()
            node.close_window()
            close_wall[0] = time.perf_counter() - t
            done.set()

        closer = threading.Thread(target=close)
        closer.start()
        time.sleep(0.05)                       # the close has begun by now
        finished_before = 0
        while not done.is_set():
            for r in routes:
                t = time.perf_counter()
                assert client.get(r).status_code == 200
                during[r].append(time.perf_counter() - t)
                finished_before += not done.is_set()
        closer.join()
        node.close()
    print(f"n={n} d={d}: close {close_wall[0]:.2f} s wall; {finished_before} reads answered before it ended")
    for r in routes:
        print(f"  GET {r:<20} idle median {1e3 * statistics.median(idle[r]):8.1f} ms | during the close: "
              f"first {1e3 * during[r][0]:8.1f} ms, median {1e3 * statistics.median(during[r]):8.1f} ms, "
              f"max {1e3 * max(during[r]):8.1f} ms over {len(during[r])} reads")


if __name__ == "__main__":
    main()
