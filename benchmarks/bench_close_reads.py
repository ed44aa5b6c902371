"""Latency of reads issued while a window closes (``swarmguard serve`` in this process).

One node (its own temporary data folder, ``--snapshot-every 0``) holds ``--agents``
agents of ``--features`` features in a closed window, then a second window of the same
agents is closed in a thread (``node.close_window()``, what ``POST /v1/admin/close-window``
runs). While it runs, two reader threads send ``GET /v1/agents?top=10`` and
``GET /v1/agents/a-1`` through the app (FastAPI's ``TestClient``), each again and again
until the close ends; each read's latency is printed with the close's own wall time, and how many reads
finished before the close did. The peer figure is the same read with no close running
(the idle latency), and the same close with no reads (the window before), measured in
the same run.

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
        quiet_close = 0.0
        for window in range(3):                # the third window is the one closed while reading
            for lo in range(0, n, 50_000):
                hi = min(n, lo + 50_000)
                node.accept_behaviors(BehaviorBatch(ids[lo:hi], rng.normal(size=(hi - lo, d)), [None] * (hi - lo)))
            if window < 2:
                t = time.perf_counter()
                node.close_window()
                quiet_close = time.perf_counter() - t      # the second's: a close with no reads
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

        def reader(route: str) -> None:        # one thread per route, reading until the close ends
            while not done.is_set():
                t = time.perf_counter()
                assert client.get(route).status_code == 200
                during[route].append(time.perf_counter() - t)
                ended_before[route] += not done.is_set()

        ended_before = {r: 0 for r in routes}
        readers = [threading.Thread(target=reader, args=(r,)) for r in routes]
        for t in readers:
            t.start()
        for t in [closer, *readers]:
            t.join()
        node.close()
        finished_before = sum(ended_before.values())
    print(f"n={n} d={d}: close with no reads {quiet_close:.2f} s wall; close under reads {close_wall[0]:.2f} s wall "
          f"(the reads share the GIL); {finished_before} reads answered before it ended")
    for r in routes:
        print(f"  GET {r:<20} idle median {1e3 * statistics.median(idle[r]):8.1f} ms | during the close: "
              f"first {1e3 * during[r][0]:8.1f} ms, median {1e3 * statistics.median(during[r]):8.1f} ms, "
              f"max {1e3 * max(during[r]):8.1f} ms over {len(during[r])} reads")


if __name__ == "__main__":
    main()
