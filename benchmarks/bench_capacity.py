"""Capacity of one ``swarmguard serve`` node: how many agents and spans per second it holds.

A node in a subprocess (``benchmarks/serve_node.py``: a free loopback port, its own data
folder, every request synced to disk before its 200, ``--snapshot-every 0`` so that a
window's close is its round alone; the snapshot is timed once, at the end).
For a growing number of agents ``n`` (decades from 10⁴ up to ``--max-agents``, plus
``--max-agents`` itself), one behaviour step:

1. ``POST /v1/behaviors`` one vector (``--features`` floats) for each of agents ``a-0`` …
   ``a-{n-1}``, ``--lines`` vectors a request, ``--clients`` threads at once: the sustained
   acknowledged rate (vectors/s) and the p50 / p99 acknowledgement latency;
2. ``POST /v1/admin/close-window``: the window's round over all ``n`` agents (the tree
   update, scoring, the significance cut, the CAP write, every agent's answer, the
   dashboard's history), timed from the client — the time one window needs to close;
3. the node's memory: ``VmRSS`` and ``VmHWM`` (peak) of its process from ``/proc``, and
   the bytes per agent over the RSS of the node before its first vector; the data
   folder's bytes per logged vector.

Every step also reports the node process's CPU seconds (``utime + stime`` from
``/proc/PID/stat``, all its threads) for the ingest and for the close: on a machine
shared with other jobs the wall times stretch with the load, the CPU seconds much less,
so they say what a machine of its own would take (the node is one Python process:
about one core for the work that holds the GIL).

Then, on the same node (it still holds the last step's agents), one span step per
OTLP fleet size (decades from 10⁴ up to ``--otlp-agents``): one window of the fleet
emulator's spans (512-span protobuf bodies as the SDK sends them,
``swarmguard.apps.otlp.synthetic.window_requests``; about 24 spans an agent a window)
posted to ``POST /v1/traces``, then its close: spans/s acknowledged and with the
window's round (the spans become one vector an agent, scored), and the p50 / p99
acknowledgement latency. Span steps come after the behaviour steps so that the
memory figures are the behaviour agents' alone. Last, the node is stopped with SIGTERM:
it drains and writes its snapshot; the time to exit and the snapshot's bytes per agent
(its rows in ``node.sqlite``) are printed.

Cross-region figures, in this process (``--replica-agents`` registers, the same ids and
``d``), in the peer sync's wire format (:mod:`swarmguard.apps.serve.peer_delta`, gzipped
at the level ``swarmguard serve --peers`` sends it): one region's replica written for
every agent, its delta to a node of another region that holds nothing (bytes as ``.npz``
and as sent, per register), that node's join of it (decode, plan, commit: CPU seconds,
registers per CPU-second, bytes of memory per register held), and the next window's
delta with every register rewritten (bytes per register, join CPU seconds). One link,
one direction; no HTTP.

A step that would take longer than ``--step-seconds`` (projected linearly from the step
before) is skipped, and a step that runs past twice that stops posting and is reported
as partial. The feature vectors come from a pool of 2¹⁷ random rows rendered once, so
that generating JSON on the client does not compete with the node for the CPU more than
it must (agent ``i`` of step ``s`` takes row ``(i + 7919 s) mod 2¹⁷``).

    python benchmarks/bench_capacity.py                              # quick: 10^4 and 2x10^4 agents
    python benchmarks/bench_capacity.py --max-agents 1000000         # 10^4, 10^5, 10^6 agents, d = 10
    python benchmarks/bench_capacity.py --max-agents 100000 --format arrow
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from serve_node import SRC, node_process

sys.path.insert(0, str(SRC))

POOL = 1 << 17
NDJSON = {"Content-Type": "application/x-ndjson"}
ARROW = {"Content-Type": "application/vnd.apache.arrow.stream"}
PB = {"Content-Type": "application/x-protobuf"}


@dataclass
class Step:
    """One step's figures (module docstring); ``partial``: it ran out of time before every agent was posted."""

    agents: int
    posted: int
    ingest_s: float
    ack_ms: np.ndarray
    close_s: float
    rss_mib: float
    hwm_mib: float
    bytes_per_agent: float
    log_bytes_per_vector: float
    ingest_cpu_s: float
    close_cpu_s: float
    load: float
    partial: bool = False


@dataclass
class SpanStep:
    """One OTLP window's figures: its agents and spans, seconds to acknowledge them and to score them."""

    agents: int
    spans: int
    acked_s: float
    served_s: float
    ack_ms: np.ndarray
    cpu_s: float


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def snapshot_bytes(folder: Path) -> int:
    """Bytes of the node's snapshot rows in ``node.sqlite`` (a reader beside the node: WAL allows it)."""
    import sqlite3

    db = sqlite3.connect(folder / "node.sqlite", timeout=60)
    try:
        return int(db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM snapshot").fetchone()[0])
    finally:
        db.close()


@dataclass
class ReplicaFigures:
    """Cross-region figures (module docstring): delta bytes, join CPU seconds, memory held."""

    registers: int
    npz_bytes: int
    wire_bytes: int
    join_cpu_s: float
    held_bytes: int
    next_wire_bytes: int
    rejoin_cpu_s: float


def replica_figures(n: int, d: int, seed: int) -> ReplicaFigures:
    """Write ``n`` string-id registers into one region's replica and ship them to another
    region's node state in the peer wire format (module docstring)."""
    import gc
    import gzip

    from swarmguard.apps.serve.peer_delta import LocalReplicas
    from swarmguard.apps.serve.peers import WIRE_GZIP_LEVEL

    rng = np.random.default_rng(seed)
    ids = np.array([f"a-{i}" for i in range(n)], dtype=object)
    writer, reader = LocalReplicas("us"), LocalReplicas("eu")
    sender, receiver = writer.replica_set(), reader.replica_set()
    replica = writer.replica_of("behaviors", d)
    replica.update_many(ids, np.full(n, 1000.0), rng.normal(size=(n, d)), rng.chisquare(d, n), now=1000.0)
    data = sender.delta_since(None, now=1000.0).to_bytes()
    npz_bytes, wire = len(data), gzip.compress(data, compresslevel=WIRE_GZIP_LEVEL)
    del data
    gc.collect()
    r0, c0 = proc_status_kb(os.getpid(), "VmRSS"), time.process_time()
    receiver.apply(gzip.decompress(wire))      # decode, plan (every part checked first), commit
    join_cpu_s = time.process_time() - c0
    wire_bytes = len(wire)
    del wire
    gc.collect()
    held = (proc_status_kb(os.getpid(), "VmRSS") - r0) * 1024
    replica.update_many(ids, np.full(n, 1060.0), rng.normal(size=(n, d)), rng.chisquare(d, n), now=1060.0)
    wire = gzip.compress(sender.delta_since(receiver.vectors(), now=1060.0).to_bytes(), compresslevel=WIRE_GZIP_LEVEL)
    c0 = time.process_time()
    receiver.apply(gzip.decompress(wire))
    return ReplicaFigures(n, npz_bytes, wire_bytes, join_cpu_s, held, len(wire), time.process_time() - c0)


def machine() -> str:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    gib = int(mem.split()[1]) / (1 << 20)
    return (f"python {platform.python_version()}, {os.cpu_count()} CPUs, {gib:.0f} GiB memory, "
            f"load average {os.getloadavg()[0]:.1f}")


class Bodies:
    """Request bodies of ``lines`` vectors for agents ``[start, start + lines)``."""

    def __init__(self, features: int, fmt: str, seed: int):
        self.fmt = fmt
        self.X = np.random.default_rng(seed).normal(size=(POOL, features))
        if fmt == "ndjson":                       # rendered once: the client's JSON cost stays small
            self.rows = [json.dumps(r).encode() for r in self.X.tolist()]

    def body(self, step: int, start: int, stop: int) -> bytes:
        rows = (np.arange(start, stop) + 7919 * step) % POOL
        if self.fmt == "ndjson":
            pool = self.rows
            return b"".join(b'{"agent_id":"a-%d","features":%s}\n' % (i, pool[r])
                            for i, r in zip(range(start, stop), rows.tolist(), strict=True))
        import pyarrow as pa

        X = self.X[rows]
        columns = {"agent_id": pa.array([f"a-{i}" for i in range(start, stop)])}
        columns.update({f"f{j}": pa.array(X[:, j]) for j in range(X.shape[1])})
        table = pa.table(columns)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()


def post_parallel(base: str, clients: int, jobs: list, send, deadline: float) -> tuple[list[float], int, bool]:
    """Run ``send(http, job) -> items`` over ``jobs`` with ``clients`` threads; (latencies, items, ran out of time)."""
    import httpx

    latencies: list[float] = []
    done = [0]
    late = [False]
    lock = threading.Lock()
    work = iter(jobs)
    failures: list[BaseException] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=600) as http:
            while True:
                with lock:
                    job = next(work, None)
                    if job is not None and time.perf_counter() > deadline:
                        late[0], job = True, None
                if job is None or failures:
                    return
                try:
                    s = time.perf_counter()
                    items = send(http, job)
                    took = time.perf_counter() - s
                except BaseException as exc:          # noqa: BLE001 - re-raised in the main thread
                    failures.append(exc)
                    return
                with lock:
                    latencies.append(took)
                    done[0] += items

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return latencies, done[0], late[0]


def run_step(node, http, index: int, n: int, bodies: Bodies, args, baseline_kb: int, budget: float) -> Step:
    """One behaviour step (module docstring) on the running ``node``."""
    headers = NDJSON if args.format == "ndjson" else ARROW
    jobs = [(s, min(s + args.lines, n)) for s in range(0, n, args.lines)]

    def send(h, job):
        start, stop = job
        r = h.post("/v1/behaviors", content=bodies.body(index, start, stop), headers=headers)
        assert r.status_code == 200 and r.json()["accepted"] == stop - start, (r.status_code, r.text[:300])
        return stop - start

    disk_before = folder_bytes(node.data_dir)
    c0, t0 = cpu_seconds(node.pid), time.perf_counter()
    lat, posted, late = post_parallel(node.base, args.clients, jobs, send, t0 + 2 * budget)
    ingest_s = time.perf_counter() - t0
    c1 = cpu_seconds(node.pid)
    log_bytes = folder_bytes(node.data_dir) - disk_before

    t0 = time.perf_counter()
    closed = http.post("/v1/admin/close-window").json()["closed"]
    close_s = time.perf_counter() - t0
    c2 = cpu_seconds(node.pid)
    held = {c["population"]: c["agents"] for c in closed}
    assert held.get("behaviors") == posted, (held, posted)
    rss_kb = proc_status_kb(node.pid, "VmRSS")
    hwm_kb = proc_status_kb(node.pid, "VmHWM")
    step = Step(agents=n, posted=posted, ingest_s=ingest_s, ack_ms=np.array(lat) * 1e3, close_s=close_s,
                rss_mib=rss_kb / 1024, hwm_mib=hwm_kb / 1024,
                bytes_per_agent=(rss_kb - baseline_kb) * 1024 / max(posted, 1),
                log_bytes_per_vector=log_bytes / max(posted, 1), ingest_cpu_s=c1 - c0, close_cpu_s=c2 - c1,
                load=os.getloadavg()[0], partial=late)
    return step


def run_span_step(node, http, k: int, clients: int, seed: int) -> SpanStep:
    """One OTLP window of a fleet of ``k`` agents (module docstring) on the running ``node``."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from swarmguard.apps.otlp.fleet_model import make_fleet
    from swarmguard.apps.otlp.synthetic import window_requests

    requests = window_requests(make_fleet(k, 0, seed), np.random.default_rng(seed + 1))
    spans = sum(len(ss.spans) for b in requests for rs in ExportTraceServiceRequest.FromString(b).resource_spans
                for ss in rs.scope_spans)

    def send(h, body):
        r = h.post("/v1/traces", content=body, headers=PB)
        assert r.status_code == 200, (r.status_code, r.content[:300])
        return 1

    c0, t0 = cpu_seconds(node.pid), time.perf_counter()
    lat, _, _ = post_parallel(node.base, clients, requests, send, float("inf"))
    acked_s = time.perf_counter() - t0
    closed = http.post("/v1/admin/close-window").json()["closed"]
    served_s = time.perf_counter() - t0
    assert {c["population"]: c["agents"] for c in closed}.get("spans") == k, closed
    return SpanStep(k, spans, acked_s, served_s, np.array(lat) * 1e3, cpu_seconds(node.pid) - c0)


def steps_of(max_agents: int, first: int = 10_000) -> list[int]:
    out, n = [], first
    while n <= max_agents:
        out.append(n)
        n *= 10
    if max_agents not in out:
        out.append(max_agents)
    return sorted(out)


def print_tables(steps: list[Step], span_steps: list[SpanStep], args) -> None:
    print("\n| agents | vectors/s acked | node CPU s / 10^5 vectors | ack p50 / p99 (ms) | window close (s) "
          "| close CPU (s) | node RSS (MiB) | peak RSS (MiB) | RSS bytes/agent | log bytes/vector | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in steps:
        print(f"| {s.agents:,}{' (partial: ' + format(s.posted, ',') + ' posted)' if s.partial else ''} "
              f"| {s.posted / s.ingest_s:,.0f} | {s.ingest_cpu_s * 1e5 / s.posted:.2f} "
              f"| {np.percentile(s.ack_ms, 50):.0f} / {np.percentile(s.ack_ms, 99):.0f} "
              f"| {s.close_s:.2f} | {s.close_cpu_s:.2f} | {s.rss_mib:,.0f} | {s.hwm_mib:,.0f} | {s.bytes_per_agent:,.0f} "
              f"| {s.log_bytes_per_vector:,.0f} | {s.load:.1f} |")
    if len(steps) >= 2:
        a, b = steps[-2], steps[-1]
        print(f"\nwindow close {a.posted:,} -> {b.posted:,} agents: x{b.close_s / a.close_s:.1f} wall, "
              f"x{b.close_cpu_s / max(a.close_cpu_s, 1e-9):.1f} CPU for x{b.posted / a.posted:.0f} agents "
              f"(d = {args.features})")
    if span_steps:
        print("\n| OTLP fleet agents | spans (per agent) | spans/s acked | spans/s with the window's round "
              "| node CPU s / 10^5 spans (with the round) | span ack p50 / p99 (ms) |")
        print("|---|---|---|---|---|---|")
        for s in span_steps:
            print(f"| {s.agents:,} | {s.spans:,} ({s.spans / s.agents:.1f}) | {s.spans / s.acked_s:,.0f} "
                  f"| {s.spans / s.served_s:,.0f} | {s.cpu_s * 1e5 / s.spans:.2f} "
                  f"| {np.percentile(s.ack_ms, 50):.0f} / {np.percentile(s.ack_ms, 99):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-agents", type=int, default=20_000, help="the last step's agents (steps: decades from 10^4)")
    ap.add_argument("--features", type=int, default=10, help="d, the vector length")
    ap.add_argument("--lines", type=int, default=2_000, help="vectors per request")
    ap.add_argument("--clients", type=int, default=2, help="threads posting at once")
    ap.add_argument("--format", choices=["ndjson", "arrow"], default="ndjson", help="/v1/behaviors body format")
    ap.add_argument("--otlp-agents", type=int, default=10_000,
                    help="the largest OTLP fleet (steps: decades from 10^4; 0: no OTLP)")
    ap.add_argument("--replica-agents", type=int, default=10_000,
                    help="registers of the cross-region replica figures (0: none)")
    ap.add_argument("--step-seconds", type=float, default=600.0, help="time budget of one step")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not 10_000 <= args.max_agents <= 2_000_000:      # the node's open window holds 2x10^6 vectors
        ap.error("--max-agents must be between 10000 and 2000000")
    if args.otlp_agents and args.otlp_agents < 10_000:
        ap.error("--otlp-agents must be 0 or at least 10000")

    import httpx

    bodies = Bodies(args.features, args.format, args.seed)
    plan = steps_of(args.max_agents)
    print(f"# bench_capacity: {machine()}; steps {', '.join(f'{n:,}' for n in plan)} agents, d = {args.features}, "
          f"{args.format} bodies of {args.lines:,} vectors, {args.clients} clients, OTLP fleets of "
          f"<= {args.otlp_agents:,} agents; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    steps: list[Step] = []
    with node_process(stop_timeout=900, extra_args=["--snapshot-every", "0", "--features", str(args.features)]) as node, \
            httpx.Client(base_url=node.base, timeout=600) as http:
        baseline_kb = proc_status_kb(node.pid, "VmRSS")
        print(f"node pid {node.pid}: RSS {baseline_kb / 1024:.0f} MiB before its first vector")
        for index, n in enumerate(plan):
            if steps:
                last = steps[-1]
                projected = (last.ingest_s + last.close_s) * n / last.posted
                if projected > args.step_seconds:
                    print(f"{n:,} agents skipped: projected {projected:.0f} s > --step-seconds {args.step_seconds:g}")
                    break
            step = run_step(node, http, index, n, bodies, args, baseline_kb, args.step_seconds)
            steps.append(step)
            print(f"{n:,} agents: {step.posted / step.ingest_s:,.0f} vectors/s, close {step.close_s:.2f} s "
                  f"({step.close_cpu_s:.2f} s CPU), RSS {step.rss_mib:,.0f} MiB ({step.bytes_per_agent:,.0f} B/agent), load {os.getloadavg()[0]:.1f}",
                  flush=True)
            if step.partial:
                print(f"{n:,} agents: ran past {2 * args.step_seconds:g} s, stopped after {step.posted:,} vectors")
                break
        span_steps: list[SpanStep] = []
        for index, k in enumerate(steps_of(args.otlp_agents) if args.otlp_agents else []):
            span_steps.append(run_span_step(node, http, k, args.clients, args.seed + 10 * index))
            s = span_steps[-1]
            print(f"OTLP fleet of {k:,} agents: {s.spans / s.acked_s:,.0f} spans/s acked, "
                  f"{s.spans / s.served_s:,.0f} with the round, load {os.getloadavg()[0]:.1f}", flush=True)
        held = steps[-1].posted + (span_steps[-1].agents if span_steps else 0)
        stop_s = node.stop()
        snap = snapshot_bytes(node.data_dir)
        print_tables(steps, span_steps, args)
        print(f"\nSIGTERM -> exit (drain + snapshot of {held:,} agents): {stop_s:.1f} s; snapshot {snap / 1e6:,.0f} MB, "
              f"{snap / held:,.0f} bytes/agent; data folder {folder_bytes(node.data_dir) / 1e6:,.0f} MB "
              f"(the log of every window, kept with --snapshot-every 0)")
    if args.replica_agents:
        r = replica_figures(args.replica_agents, args.features, args.seed)
        print(f"\ncross-region delta, the peer wire format ({r.registers:,} registers, d = {args.features}, string ids "
              f"'a-N'): {r.npz_bytes / 1e6:,.1f} MB as .npz, {r.wire_bytes / 1e6:,.1f} MB gzipped as sent = "
              f"{r.wire_bytes / r.registers:.0f} bytes/register; the peer's join (decode, plan, commit) "
              f"{r.join_cpu_s:.2f} s CPU ({r.registers / max(r.join_cpu_s, 1e-9):,.0f} registers per CPU-second), "
              f"{r.held_bytes / r.registers:,.0f} bytes of memory per register held; the next window's delta (all "
              f"rewritten) {r.next_wire_bytes / r.registers:.0f} bytes/register, joined in {r.rejoin_cpu_s:.2f} s CPU")
    print(f"# done {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
