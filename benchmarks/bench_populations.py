"""Latency of ``GET /v1/populations`` on an idle node: the summaries cached per agent table
against the per-request pass they replaced, in the same run.

A node (``swarmguard serve``'s app in this process, FastAPI's ``TestClient``, its own temporary
data folder, ``--snapshot-every 0``) holds ``--agents`` agents of ``--features`` features in
``--cohorts`` cohorts, in two closed windows. ``/v1/populations`` is read ``--reads`` times and
the median latency printed: the node's route (each population's cohort summaries built once
per agent table, :mod:`swarmguard.apps.serve.cohort_summaries`), and the peer, the same request
answered by the code it replaced, mounted on the same app as ``/bench/per-request``: every
agent walked, grouped by cohort, and every cohort summarised, on every request. Both answers
are checked equal. Also printed: ``/v1/populations/c3`` (one cohort) both ways, and what
building the summaries costs once per close. Run over a source tree without the cache
(``PYTHONPATH=<main>/src``), "route" is that tree's own route.

    PYTHONPATH=src python benchmarks/bench_populations.py                 # 10⁵ agents, 300 cohorts
    PYTHONPATH=src python benchmarks/bench_populations.py --agents 10000 --cohorts 50 --reads 5
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from fastapi import Request
from serve_node import alternating_get_medians


def per_request_route(request: Request) -> dict:
    """``GET /v1/populations`` as main answered it before the cache (routes_query.list_populations)."""
    from swarmguard.apps.serve.read_view import answer

    def read(source) -> dict:
        out = []
        for pop in source.populations.values():
            everyone = list(pop.agents.values())
            groups: dict[str, list] = {}
            for state in pop.agents.values():
                groups.setdefault(state.cohort or pop.region, []).append(state)
            for cohort, members in [("", everyone), *sorted(groups.items())]:
                summary = pop.cohort_summary(cohort, members)     # summarised now (no cache)
                if summary is not None:
                    out.append(summary)
        return {"region": source.region, "confidence_factor": source.confidence_factor, "populations": out}

    return answer(request.app.state.node, read)


def per_request_cohort(request: Request, cohort: str) -> dict:
    from swarmguard.apps.serve.read_view import answer

    def read(source) -> dict:
        for pop in source.populations.values():
            members = [s for s in pop.agents.values() if not cohort or (s.cohort or pop.region) == cohort]
            summary = pop.cohort_summary(cohort, members)
            if summary is not None:
                return summary
        return {}

    return answer(request.app.state.node, read)


def run(n: int, d: int, k: int, reads: int, seed: int) -> None:
    from fastapi.testclient import TestClient

    from swarmguard.apps.serve import ServeNode, ServeSettings, create_app
    from swarmguard.apps.serve.records import BehaviorBatch

    rng = np.random.default_rng(seed)
    ids = [f"a-{i}" for i in range(n)]
    cohorts = [f"c{i % k}" for i in range(n)]
    with tempfile.TemporaryDirectory() as folder:
        settings = ServeSettings(close_windows=False, snapshot_every=0, warm_up=20)
        node = ServeNode(settings, folder)
        app = create_app(settings, node)
        app.add_api_route("/bench/per-request", per_request_route, methods=["GET"])
        app.add_api_route("/bench/per-request/{cohort}", per_request_cohort, methods=["GET"])
        client = TestClient(app)
        build = None
        for _ in range(2):
            for lo in range(0, n, 50_000):
                hi = min(n, lo + 50_000)
                node.accept_behaviors(BehaviorBatch(ids[lo:hi], rng.normal(size=(hi - lo, d)), cohorts[lo:hi]))
            node.close_window()
        pop = node.populations["behaviors"]
        if hasattr(pop, "cohort_summaries"):
            pop._summaries = None
            t = time.perf_counter()
            pop.cohort_summaries()
            build = time.perf_counter() - t
        print(f"n={n:,} d={d} cohorts={k}: "
              + (f"summaries built once per table in {1e3 * build:.1f} ms" if build is not None
                 else "this source tree has no cache: 'route' below is its own /v1/populations"))
        for label, path, peer in (("/v1/populations", "/v1/populations", "/bench/per-request"),
                                  ("/v1/populations/c3", "/v1/populations/c3", "/bench/per-request/c3")):
            times = alternating_get_medians(client, {"route": path, "per request": peer}, reads)
            print(f"  GET {label:<20} route {1e3 * times['route']:8.2f} ms | per request "
                  f"{1e3 * times['per request']:8.2f} ms | ratio {times['per request'] / times['route']:6.1f}x "
                  f"(medians of {reads}; answers equal)")
        node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[100_000])
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--cohorts", type=int, default=300)
    parser.add_argument("--reads", type=int, default=11)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for n in args.agents:
        run(n, args.features, args.cohorts, args.reads, args.seed)


if __name__ == "__main__":
    main()
