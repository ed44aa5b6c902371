"""Benchmark ``POST /v1/behaviors``: lines/s and p99 acknowledgement latency of a real node,
against bare parsing of the same lines in the same run.

A ``swarmguard serve`` subprocess on a free loopback port (its own data folder, so every
request is synced to disk before its 200), ``--clients`` threads posting ``--requests``
JSON Lines bodies of ``--lines`` vectors each (``--features`` floats); the clock stops when
the last request is acknowledged and the window holding every vector has closed (each
agent's effect is in the node's state: ``/v1/populations`` counts them all). The peer,
measured in this process on the same bodies: bare parsing — ``json.loads`` of every line
and the features into a NumPy array — the least any Python receiver does with them.
Printed: both rates, their ratio, and the acknowledgement latency p50 / p99.

    python benchmarks/bench_serve.py                       # 200 requests of 1,000 lines, 8 features
    python benchmarks/bench_serve.py --requests 50 --lines 500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np
from serve_node import running_node


def bodies(requests: int, lines: int, features: int, agents: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for r in range(requests):
        X = rng.normal(size=(lines, features))
        ids = (np.arange(lines) + r * lines) % agents
        out.append(b"".join(json.dumps({"agent_id": f"a-{a}", "features": x}).encode() + b"\n"
                            for a, x in zip(ids.tolist(), X.tolist(), strict=True)))
    return out


def bare_parse(body: bytes) -> np.ndarray:
    rows = [json.loads(line) for line in body.split(b"\n") if line]
    return np.array([r["features"] for r in rows], dtype=np.float64)



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--lines", type=int, default=1000, help="vectors per request")
    ap.add_argument("--features", type=int, default=8)
    ap.add_argument("--agents", type=int, default=20_000, help="distinct agents (ids cycle)")
    ap.add_argument("--clients", type=int, default=4, help="threads posting at once")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import httpx

    data = bodies(args.requests, args.lines, args.features, args.agents, args.seed)
    total_lines = args.requests * args.lines
    print(f"# bench_serve: python {platform.python_version()}, {os.cpu_count()} CPUs, {args.requests} requests x "
          f"{args.lines} lines x {args.features} features, {args.clients} clients, "
          f"{len(data[0]) / 1e3:.0f} kB a body")

    t0 = time.perf_counter()
    for body in data:
        bare_parse(body)
    bare_s = time.perf_counter() - t0

    with running_node() as base, httpx.Client(base_url=base, timeout=60) as http:
        latencies: list[float] = []
        lock = threading.Lock()
        next_index = iter(range(args.requests))

        def client() -> None:
            with httpx.Client(base_url=base, timeout=120) as h:
                while True:
                    with lock:
                        i = next(next_index, None)
                    if i is None:
                        return
                    s = time.perf_counter()
                    r = h.post("/v1/behaviors", content=data[i],
                               headers={"Content-Type": "application/x-ndjson"})
                    took = time.perf_counter() - s
                    assert r.status_code == 200 and r.json()["accepted"] == args.lines, r.text
                    with lock:
                        latencies.append(took)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        acked_s = time.perf_counter() - t0
        assert http.post("/v1/admin/close-window").status_code == 200
        served_s = time.perf_counter() - t0
        pops = http.get("/v1/populations").json()["populations"]
        count = [p for p in pops if p["cohort"] == ""][0]["count"]
        assert count == min(args.agents, total_lines), count

    lat = np.array(latencies) * 1e3
    bare_rate, served_rate = total_lines / bare_s, total_lines / served_s
    print(f"bare parsing (json.loads + NumPy) : {bare_rate:12,.0f} lines/s")
    print(f"POST /v1/behaviors, acknowledged  : {total_lines / acked_s:12,.0f} lines/s "
          f"(durable, before the window closes)")
    print(f"  ... and every vector scored     : {served_rate:12,.0f} lines/s (the window's round included)")
    print(f"ratio bare / served: {bare_rate / served_rate:.2f}x slower than bare parsing")
    print(f"ack latency: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms "
          f"({args.lines} lines a request, {args.clients} clients)")


if __name__ == "__main__":
    main()
