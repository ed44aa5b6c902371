"""Latency of ``GET /v1/agents?top=10`` (and ``&cohort=``) on an idle node, the ranked index
against the full pass it replaced, in the same run.

A node (``swarmguard serve``'s app in this process, FastAPI's ``TestClient``, its own temporary
data folder, ``--snapshot-every 0``) holds ``--agents`` agents of ``--features`` features
(cohorts ``c0`` … ``c6``) in two closed windows. Each route is read ``--reads`` times and the
median latency printed: the node's route (each population's agent table and its replica's
other agents ranked once per close, :mod:`swarmguard.apps.serve.ranked_agents`), and the
peer, the same request answered by the code it replaced, mounted on the same app as
``/bench/full-pass``: every state of every population into a Python list, ``heapq.nlargest``
over it, and the replica's registers (every register of the node's own region: its own agents
too) matched against the agent table id by id. Both answers are checked equal. The third
query (``population=none``, an empty answer) is the app's own cost of a request, the floor
of both. Also printed: what ranking costs in the second close (``ServeNode._rank_agents``,
the close's last step, the previous close's rankings at hand) and from nothing (as after a
restart's replay), and the index's bytes per agent. Run over a source
tree without the index (``PYTHONPATH=<main>/src``), "route" is that tree's own route.

    PYTHONPATH=src python benchmarks/bench_top_k.py                    # 10⁴ and 10⁵ agents
    PYTHONPATH=src python benchmarks/bench_top_k.py --agents 1000000 --reads 5
"""

from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
import time

import numpy as np
from fastapi import Request
from serve_node import alternating_get_medians


def full_pass_route(top: int = 10, cohort: str | None = None, population: str | None = None, *, request):
    """``GET /v1/agents`` as main answered it before the ranked index (routes_query.list_agents)."""
    from swarmguard.apps.serve.read_view import answer
    from swarmguard.apps.serve.replica_read import _registers
    from swarmguard.apps.serve.routes_query import _replicates, _scored

    try:
        from swarmguard.apps.serve.replica_read import _top_from_entries
    except ImportError:                # main before the ranked index: its top_replica_agents is this
        from swarmguard.apps.serve.replica_read import top_replica_agents

        def _top_from_entries(p, entries, top, cf):
            return top_replica_agents(p, p.region, top, cf)

    def read(source) -> dict:
        region = source.region
        pops = [p for p in source.populations.values() if population in (None, p.name)]
        states = [(s, None) for p in pops for s in p.agents.values()
                  if cohort is None or (s.cohort or region) == cohort]
        if cohort is None and any(_replicates(p) for p in pops):
            cf = source.confidence_factor
            for p in pops:
                registers = _registers(p, region)
                if registers is not None and len(registers):
                    states += [(r.state, r) for r in _top_from_entries(p, registers.entries(), top, cf)]
        best = heapq.nlargest(top, states, key=lambda e: (-e[0].log_p, e[0].score))
        return {"agents": [_scored(s) if r is None else r.summary() for s, r in best]}

    return answer(request.app.state.node, read)


def index_bytes(pop) -> int:
    """Bytes the population's rankings hold beyond the states themselves."""
    ranked = pop.ranked()
    size = sys.getsizeof(ranked.states) + ranked.order.nbytes + ranked.cohort_rows.nbytes
    rep = pop._replica_ranked
    if rep is not None:
        size += rep.scored.nbytes + rep.rows.nbytes + rep.log_p.nbytes + rep.score.nbytes
    return size


def run(n: int, d: int, reads: int, seed: int) -> None:
    from fastapi.testclient import TestClient

    from swarmguard.apps.serve import ServeNode, ServeSettings, create_app
    from swarmguard.apps.serve.records import BehaviorBatch

    rng = np.random.default_rng(seed)
    ids = [f"a-{i}" for i in range(n)]
    cohorts = [f"c{i % 7}" for i in range(n)]
    with tempfile.TemporaryDirectory() as folder:
        settings = ServeSettings(close_windows=False, snapshot_every=0, warm_up=20)
        node = ServeNode(settings, folder)
        app = create_app(settings, node)

        def peer(request: Request, top: int = 10, cohort: str | None = None, population: str | None = None):
            return full_pass_route(top, cohort, population, request=request)

        app.add_api_route("/bench/full-pass", peer, methods=["GET"])
        client = TestClient(app)
        rank_seconds = 0.0
        ranks = hasattr(node.populations["behaviors"], "rank_agents")
        in_close: list[float] = []
        if ranks:                              # the close's own ranking step, timed where it runs
            rank_in_close = node._rank_agents

            def timed() -> None:
                t = time.perf_counter()
                rank_in_close()
                in_close.append(time.perf_counter() - t)

            node._rank_agents = timed
        for _ in range(2):
            for lo in range(0, n, 50_000):
                hi = min(n, lo + 50_000)
                node.accept_behaviors(BehaviorBatch(ids[lo:hi], rng.normal(size=(hi - lo, d)), cohorts[lo:hi]))
            t = time.perf_counter()
            node.close_window()
            close = time.perf_counter() - t
            pop = node.populations["behaviors"]
            if ranks:
                pop._ranked = pop._replica_ranked = None      # what the close's ranking step costs, alone
                t = time.perf_counter()
                pop.rank_agents()
                rank_seconds = time.perf_counter() - t
        if ranks:
            per_agent = index_bytes(node.populations["behaviors"]) / n
            print(f"n={n:,} d={d}: close {close:.2f} s, of which ranking {1e3 * in_close[-1]:.1f} ms "
                  f"(from nothing, as after a replay: {1e3 * rank_seconds:.1f} ms); index {per_agent:.1f} "
                  f"bytes per agent")
        else:
            print(f"n={n:,} d={d}: close {close:.2f} s (this source tree has no ranked index: "
                  f"'route' below is its own /v1/agents)")
        for query in ("top=10", "top=10&cohort=c3", "top=10&population=none"):
            times = alternating_get_medians(
                client, {"route": f"/v1/agents?{query}", "full pass": f"/bench/full-pass?{query}"}, reads)
            print(f"  GET /v1/agents?{query:<24} route {1e3 * times['route']:8.2f} ms | full pass "
                  f"{1e3 * times['full pass']:8.2f} ms | ratio {times['full pass'] / times['route']:6.1f}x "
                  f"(medians of {reads}; answers equal)")
        node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--reads", type=int, default=21)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for n in args.agents:
        run(n, args.features, args.reads, args.seed)


if __name__ == "__main__":
    main()
