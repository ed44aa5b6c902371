"""Benchmark ``POST /v1/traces``: OTLP protobuf spans/s and p99 acknowledgement latency of a real
node, against bare decoding of the same requests in the same run; and whether the fleet's
misbehaving agents come out on top.

The fleet emulator's windows (``--agents`` agents, ``--misbehaving`` of them misbehaving)
as OTLP ``ExportTraceServiceRequest`` protobuf bodies of 512 spans (the SDK's default
batch; one cohort's resource a body, as the SDK's exporters send them). A
``swarmguard serve`` subprocess on a free loopback port (its own data folder: each request
is synced to disk before its 200); ``--clients`` threads post every body of a window,
then the window is closed (``POST /v1/admin/close-window``: its round scores the span
vectors); ``--windows`` windows. The clock stops when the last window's round is done, so
every span's effect is in the node's state. The peer, in this process on the same bodies:
``ExportTraceServiceRequest.FromString`` and every span's attributes read (key and typed
value) — the bare work any Python OTLP receiver does. Printed: both rates, their ratio,
the ack latency p50 / p99, and the top-K of ``/v1/agents?top=K&population=spans`` against
the misbehaving agents (precision = recall, K flagged of K), and the node process's CPU
time a span over the posting and the rounds (less sensitive to the machine's other jobs
than its rate); with ``--decode-workers N`` (passed to the node) its decode workers' CPU a
span too (its child processes, /proc).

    python benchmarks/bench_serve_otlp.py                        # 10^4 agents, 40 misbehaving, 2 windows
    python benchmarks/bench_serve_otlp.py --decode-workers 1     # bodies decoded in one worker process
    python benchmarks/bench_serve_otlp.py --agents 2000 --misbehaving 8
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np
from serve_node import SRC, node_process

sys.path.insert(0, str(SRC))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402

PB = {"Content-Type": "application/x-protobuf"}


def bare_decode(body: bytes) -> int:
    """Decode with opentelemetry-proto and read every resource and span attribute; the span count."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = 0
    for rs in request.resource_spans:
        for kv in rs.resource.attributes:
            value = kv.value
            getattr(value, value.WhichOneof("value"))
        for ss in rs.scope_spans:
            for span in ss.spans:
                spans += 1
                for kv in span.attributes:
                    value = kv.value
                    kind = value.WhichOneof("value")
                    (kv.key, getattr(value, kind) if kind else None)
    return spans



def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far, from /proc (NaN without it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each live child of process ``pid`` (the node's decode workers)."""
    out = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--misbehaving", type=int, default=40)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4, help="threads posting at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-workers", type=int, default=0, help="the node's --decode-workers")
    args = ap.parse_args()

    import httpx

    t0 = time.perf_counter()
    profiles = make_fleet(args.agents, args.misbehaving, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    windows = [window_requests(profiles, rng) for _ in range(args.windows)]
    made_s = time.perf_counter() - t0
    all_bodies = [b for w in windows for b in w]
    print(f"# bench_serve_otlp: python {platform.python_version()}, {os.cpu_count()} CPUs, {args.agents:,} agents "
          f"({args.misbehaving} misbehaving), {args.windows} windows, {len(all_bodies)} requests of <= 512 spans, "
          f"{np.mean([len(b) for b in all_bodies]) / 1e3:.0f} kB a body, {args.clients} clients, "
          f"--decode-workers {args.decode_workers} (bodies made in {made_s:.1f} s)")

    t0 = time.perf_counter()
    total = sum(bare_decode(b) for b in all_bodies)
    bare_s = time.perf_counter() - t0

    with node_process(stop_timeout=120, extra_args=["--decode-workers", str(args.decode_workers)]) as node, \
            httpx.Client(base_url=node.base, timeout=120) as http:
        base = node.base
        latencies: list[float] = []
        lock = threading.Lock()

        def post_all(bodies: list[bytes]) -> None:
            work = iter(range(len(bodies)))

            def client() -> None:
                with httpx.Client(base_url=base, timeout=120) as h:
                    while True:
                        with lock:
                            i = next(work, None)
                        if i is None:
                            return
                        s = time.perf_counter()
                        r = h.post("/v1/traces", content=bodies[i], headers=PB)
                        took = time.perf_counter() - s
                        assert r.status_code == 200 and not r.content, (r.status_code, r.content[:200])
                        with lock:
                            latencies.append(took)

            threads = [threading.Thread(target=client) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        cpu0, workers0 = process_cpu(node.pid), children_cpu(node.pid)
        t0 = time.perf_counter()
        acked_s = 0.0
        for bodies in windows:
            a = time.perf_counter()
            post_all(bodies)
            acked_s += time.perf_counter() - a
            closed = http.post("/v1/admin/close-window").json()["closed"]
            assert closed and closed[0]["agents"] == args.agents, closed
        served_s = time.perf_counter() - t0
        cpu1, workers1 = process_cpu(node.pid), children_cpu(node.pid)
        top = []
        if args.misbehaving:
            top = [a["agent_id"] for a in http.get("/v1/agents", params={
                "top": args.misbehaving, "population": "spans"}).json()["agents"]]

    lat = np.array(latencies) * 1e3
    bare_rate, served_rate = total / bare_s, total / served_s
    print(f"bare decode + attribute read (opentelemetry-proto): {bare_rate:10,.0f} spans/s")
    print(f"POST /v1/traces, acknowledged (durable)           : {total / acked_s:10,.0f} spans/s")
    print(f"  ... and every window's round done               : {served_rate:10,.0f} spans/s")
    print(f"ratio: {bare_rate / served_rate:.2f}x slower than bare decoding (target: within 3x)")
    print(f"ack latency: p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms "
          f"(512 spans a request, {args.clients} clients)")
    print(f"the node's CPU a span: {(cpu1 - cpu0) / total * 1e6:.2f} us "
          f"(its process, /proc, from the first request to the last round)")
    if args.decode_workers:
        # a worker that died during the run is left out (its CPU is gone with it): say so
        lost = set(workers0) - set(workers1)
        spent = sum(workers1[p] - workers0.get(p, 0.0) for p in workers1)
        print(f"its {len(workers1)} decode workers' CPU a span: {spent / total * 1e6:.2f} us; node + workers "
              f"{(cpu1 - cpu0 + spent) / total * 1e6:.2f} us" + (f" ({len(lost)} workers lost)" if lost else ""))
    if args.misbehaving:
        bad = {p.agent_id for p in profiles if p.misbehaviour}
        hits = len(set(top) & bad)
        print(f"top-{args.misbehaving} after {args.windows} windows: precision {hits / len(top):.3f}, "
              f"recall {hits / len(bad):.3f}")


if __name__ == "__main__":
    main()
