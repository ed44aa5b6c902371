"""A Jepsen-style harness for ``swarmguard serve`` clusters: real processes, a faulty network.

:class:`Cluster` starts ``n`` nodes (``swarmguard serve --region rK``) as separate
processes on free loopback ports, each with its own ``--data-dir``, one tokens file
(ingest, observer, read, admin and peer tokens) and ``--peers`` that go through one
:class:`~cluster_proxy.LinkProxy` per directed link (node A's entry for B is the
proxy ``A->B``). It partitions and heals links, pauses nodes (SIGSTOP / SIGCONT),
kills them (SIGKILL of the process it started) and restarts them on the same data
dir and port.

:class:`Workload` threads write behaviours (``POST /v1/behaviors``, a fresh agent id
per row, some agents re-written later) and evidence (``POST /v1/evidence``, a fresh
evidence id per line) to random nodes and record every write with its outcome:
acknowledged (2xx, every line accepted), refused, or indeterminate (no answer: it
may or may not have been applied). :func:`random_schedule` is the seeded fault
schedule; :func:`run_scenario` runs one (workload + schedule + a confidence probe),
heals everything, waits for convergence and hands the history to
:mod:`cluster_checks`.

Used by ``tests/apps/serve/test_cluster_faults.py`` (a short schedule, 3 nodes) and
``benchmarks/bench_cluster.py`` (a long one, 5 nodes); both put this folder on
``sys.path``. Everything listens on 127.0.0.1; every wait has a deadline; only
processes this harness started are signalled, by pid.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_proxy import LinkProxy, ProxyHub

__all__ = ["Cluster", "ClusterNode", "Workload", "WriteRecord", "FaultEvent", "ScenarioConfig",
           "ScenarioResult", "random_schedule", "run_scenario", "TOKENS", "free_port"]

ROOT = Path(__file__).resolve().parents[1]
# the nodes run this checkout's code, or another source tree's (to check another branch with this harness)
SRC = Path(os.environ.get("CLUSTER_HARNESS_SRC", str(ROOT / "src")))

INGEST, OBSERVER, READ, ADMIN, PEER = "h-ingest", "h-observer", "h-read", "h-admin", "h-peer"
OBSERVER_SOURCE = "observer-h"
TOKENS = f"""
[[token]]
secret = "{INGEST}"
role = "ingest"
[[token]]
secret = "{OBSERVER}"
role = "observer"
source = "{OBSERVER_SOURCE}"
[[token]]
secret = "{READ}"
role = "read"
[[token]]
secret = "{ADMIN}"
role = "admin"
source = "admin-h"
[[token]]
secret = "{PEER}"
role = "peer"
"""
NDJSON = "application/x-ndjson"
EVIDENCE_TYPES = ("behavioral_anomaly", "resource_usage", "policy_violation", "peer_report")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _lines(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


# ============================================================================ nodes
class ClusterNode:
    """One ``swarmguard serve`` process of the cluster: ``state`` is ``up``, ``paused`` or ``down``;
    ``epoch`` counts its state changes (a write is "to a live node" when the node was ``up`` and its
    epoch did not move while the write was in flight)."""

    def __init__(self, index: int, region: str, port: int, data_dir: Path, argv_tail: list[str], log_path: Path):
        self.index, self.region, self.port, self.data_dir = index, region, port, data_dir
        self.argv_tail, self.log_path = argv_tail, log_path
        self.proc: subprocess.Popen | None = None
        self.state = "down"
        self.epoch = 0
        self.starts = 0
        self.ready_s: list[float] = []       # start -> /readyz 200, per start (replay included)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _set_state(self, state: str) -> None:
        with self._lock:
            self.state = state
            self.epoch += 1

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"node {self.region} is running")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        log = open(self.log_path, "ab")         # noqa: SIM115 - kept open by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from swarmguard.cli import app; sys.argv[0] = 'swarmguard'; app()",
             "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--region", self.region, *self.argv_tail],
            env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, cwd=str(self.data_dir.parent))
        log.close()
        self.starts += 1
        self._started_at = time.monotonic()

    def wait_ready(self, deadline_s: float = 60.0) -> float:
        """Poll ``/readyz`` until 200 (the replay is done); seconds waited."""
        import httpx

        t0 = time.monotonic()
        end = t0 + deadline_s
        proc, epoch = self.proc, self.epoch
        while time.monotonic() < end:
            if self.proc is not proc or self.epoch != epoch:
                raise RuntimeError(f"node {self.region} was signalled while starting")
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"node {self.region} exited with {None if self.proc is None else self.proc.returncode}"
                                   f": {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    with self._lock:
                        if self.proc is not proc or self.epoch != epoch:     # killed meanwhile
                            raise RuntimeError(f"node {self.region} was signalled while starting")
                        self.state, self.epoch = "up", self.epoch + 1
                    self.ready_s.append(time.monotonic() - self._started_at)
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"node {self.region} not ready after {deadline_s} s: {self.log_tail()}")

    def start_in_background(self, deadline_s: float = 60.0) -> None:
        """Start, and wait for ``/readyz`` on a thread (the schedule goes on while it replays);
        the node counts as ``down`` until ready."""
        self.start()

        def wait() -> None:
            try:
                self.wait_ready(deadline_s)
            except (RuntimeError, TimeoutError) as exc:
                self.start_error = str(exc)
        threading.Thread(target=wait, name=f"ready-{self.region}", daemon=True).start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def pause(self) -> bool:
        """SIGSTOP a node that is up (one still starting is left alone: False)."""
        with self._lock:
            if self.state != "up":
                return False
            self._signal(signal.SIGSTOP)
            self.state, self.epoch = "paused", self.epoch + 1
            return True

    def resume(self) -> None:
        """SIGCONT a node this harness paused (else nothing)."""
        with self._lock:
            if self.state != "paused":
                return
            self._signal(signal.SIGCONT)
            self.state, self.epoch = "up", self.epoch + 1

    def kill(self) -> None:
        """``kill -9``: no drain, no flush beyond what was acknowledged."""
        self._set_state("down")
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)            # the process this harness started, by pid

    def stop(self) -> None:
        """SIGCONT (if paused), SIGTERM, and SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            self.state = "down"
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=15)
        self._set_state("down")


class Cluster:
    """``n`` nodes fully meshed through per-link proxies (module docstring)."""

    def __init__(self, root: Path, n: int, *, sync_seconds: float = 0.3, window_seconds: float = 0.5,
                 warm_up: int = 1_000_000, consistency: str = "statistical", name: str = "r"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tokens = self.root / "tokens.toml"
        self.tokens.write_text(TOKENS)
        self.peer_secret = self.root / "peer.secret"
        self.peer_secret.write_text(PEER + "\n")
        self.sync_seconds, self.window_seconds = sync_seconds, window_seconds
        self.hub = ProxyHub()
        ports = [free_port() for _ in range(n)]
        self.links: dict[tuple[int, int], LinkProxy] = {}
        for i in range(n):
            for j in range(n):
                if i != j:
                    self.links[i, j] = self.hub.add(f"{i}->{j}", ports[j])
        self.nodes: list[ClusterNode] = []
        for i in range(n):
            peers = ",".join(self.links[i, j].url for j in range(n) if j != i)
            tail = ["--tokens", str(self.tokens), "--peer-token-file", str(self.peer_secret),
                    "--peers", peers, "--sync-seconds", str(sync_seconds), "--window", str(window_seconds),
                    "--warm-up", str(warm_up), "--consistency", consistency]
            data = self.root / f"node-{i}"
            data.mkdir(exist_ok=True)
            self.nodes.append(ClusterNode(i, f"{name}{i}", ports[i], data, tail, self.root / f"node-{i}.log"))

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, deadline_s: float = 90.0) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_ready(deadline_s)

    def close(self) -> None:
        try:
            for node in self.nodes:
                node.stop()
        finally:
            self.hub.close()

    # ---------------------------------------------------------------- the network
    def cut(self, src: int, dst: int, mode: str = "drop") -> None:
        """One-way: ``src``'s pushes to ``dst`` (and their answers) no longer arrive."""
        self.links[src, dst].set(mode)

    def partition(self, groups: list[list[int]], mode: str = "drop") -> None:
        """Cut every link between different groups, both ways; links inside a group pass."""
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        for (i, j), link in self.links.items():
            link.set(mode if group_of.get(i) != group_of.get(j) else "pass")

    def isolate(self, k: int, mode: str = "drop") -> None:
        self.partition([[k], [i for i in range(len(self.nodes)) if i != k]], mode)

    def delay(self, ms: float, links: list[tuple[int, int]] | None = None) -> None:
        for key in links or list(self.links):
            self.links[key].set(self.links[key].mode, ms)

    def heal(self) -> None:
        self.hub.set_all("pass", 0.0)

    def link_bytes(self) -> int:
        return sum(p.counters.bytes_up + p.counters.bytes_down for p in self.links.values())

    # ---------------------------------------------------------------- reads
    def get(self, i: int, path: str, token: str = READ, timeout: float = 10.0) -> Any:
        import httpx

        r = httpx.get(f"{self.nodes[i].url}{path}", headers=_auth(token), timeout=timeout)
        r.raise_for_status()
        return r.json()

    def state(self, i: int) -> dict:
        """``GET /v1/peer/state`` of node ``i`` (admin): its registers and evidence, exactly."""
        return self.get(i, "/v1/peer/state", ADMIN)


# ============================================================================ the workload
@dataclass
class WriteRecord:
    """One write the workload sent and what became of it."""

    op: int
    kind: str                          # "behaviors" | "evidence"
    node: int
    region: str
    items: list[dict]                  # the lines sent
    t_send: float
    t_done: float = 0.0
    outcome: str = "pending"           # "ack" | "refused" | "indeterminate"
    status: int | None = None
    detail: str = ""
    live: bool = False                 # the node was up, and stayed up, for the whole request


class Workload:
    """Client threads writing to random nodes (module docstring); ``history`` is every write."""

    def __init__(self, cluster: Cluster, seed: int, *, threads: int = 2, rows_per_write: int = 4,
                 features: int = 3, evidence_share: float = 0.3, rewrite_share: float = 0.2,
                 interval_s: float = 0.05, timeout_s: float = 10.0):
        self.cluster, self.seed = cluster, seed
        self.threads_n, self.rows_per_write, self.features = threads, rows_per_write, features
        self.evidence_share, self.rewrite_share = evidence_share, rewrite_share
        self.interval_s, self.timeout_s = interval_s, timeout_s
        # an agent is re-written only this long after its last write was acknowledged, so that the
        # later write is later on every clock (the LWW check then knows the winner)
        self.rewrite_gap_s = 3 * cluster.window_seconds + 1.0
        self.history: list[WriteRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ops = 0
        self._agents: dict[str, list[WriteRecord]] = {}   # agent -> its behaviour writes
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for t in range(self.threads_n):
            thread = threading.Thread(target=self._run, args=(t,), name=f"workload-{t}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise TimeoutError("workload threads did not stop")

    def _next_op(self) -> int:
        with self._lock:
            self._ops += 1
            return self._ops

    def _settled_agent(self, rng: random.Random, now: float) -> str | None:
        """An agent whose writes were all acknowledged, the last one ``rewrite_gap_s`` ago."""
        with self._lock:
            names = list(self._agents)
            for _ in range(8):
                if not names:
                    return None
                agent = rng.choice(names)
                writes = self._agents[agent]
                if all(w.outcome == "ack" for w in writes) and now - writes[-1].t_done > self.rewrite_gap_s:
                    return agent
        return None

    def _run(self, t: int) -> None:
        import httpx

        rng = random.Random(self.seed * 1000 + t)
        with httpx.Client() as client:
            while not self._stop.is_set():
                op = self._next_op()
                i = rng.randrange(len(self.cluster.nodes))
                node = self.cluster.nodes[i]
                now = time.monotonic()
                if rng.random() < self.evidence_share:
                    agents = list(self._agents) or [f"x{t}-{op}"]
                    items = [{"evidence_id": f"ev{t}-{op}-{k}", "agent_id": rng.choice(agents),
                              "evidence_type": rng.choice(EVIDENCE_TYPES),
                              "log_odds": rng.uniform(-3.0, 3.0), "confidence": rng.uniform(0.05, 1.0),
                              "timestamp": time.time()} for k in range(rng.randint(1, 3))]
                    record = WriteRecord(op, "evidence", i, node.region, items, now)
                    path, token = "/v1/evidence", OBSERVER
                else:
                    items = []
                    for k in range(self.rows_per_write):
                        agent = self._settled_agent(rng, now) if rng.random() < self.rewrite_share else None
                        if agent is None or any(r["agent_id"] == agent for r in items):
                            agent = f"a{t}-{op}-{k}"
                        items.append({"agent_id": agent,
                                      "features": [rng.gauss(0.0, 1.0) for _ in range(self.features)]})
                    record = WriteRecord(op, "behaviors", i, node.region, items, now)
                    path, token = "/v1/behaviors", INGEST
                    with self._lock:
                        for row in items:
                            self._agents.setdefault(row["agent_id"], []).append(record)
                self._send(client, node, record, path, token)
                with self._lock:
                    self.history.append(record)
                self._stop.wait(self.interval_s)

    def _send(self, client, node: ClusterNode, record: WriteRecord, path: str, token: str) -> None:
        import httpx

        state, epoch = node.state, node.epoch
        # a node known to be paused or down is still tried (its answer is recorded), briefly
        timeout = self.timeout_s if state == "up" else 1.0
        try:
            r = client.post(f"{node.url}{path}", content=_lines(record.items), timeout=timeout,
                            headers={"Content-Type": NDJSON, **_auth(token)})
            record.status = r.status_code
            body = r.json()
            if r.status_code == 200 and body.get("accepted") == len(record.items) and not body.get("rejected"):
                record.outcome = "ack"
            else:
                record.outcome, record.detail = "refused", json.dumps(body)[:300]
        except (httpx.HTTPError, ValueError) as exc:
            record.outcome, record.detail = "indeterminate", f"{type(exc).__name__}: {exc}"[:300]
        record.t_done = time.monotonic()
        record.live = state == "up" and node.state == "up" and node.epoch == epoch


# ============================================================================ the schedule
@dataclass(frozen=True)
class FaultEvent:
    """At ``at`` seconds into the fault phase: ``action`` (partition, cut, delay, heal, pause, resume,
    kill, restart) with its ``args``."""

    at: float
    action: str
    args: tuple = ()


def random_schedule(rng: random.Random, n: int, duration_s: float, *, step_s: tuple[float, float] = (1.0, 2.5),
                    max_down: int = 1, weights: dict[str, float] | None = None) -> list[FaultEvent]:
    """A seeded random fault schedule over ``duration_s`` seconds, ending healed with every node up.

    Each step picks a fault by ``weights`` (partition, cut, delay, pause, kill, heal); a paused
    or killed node comes back 1-3 steps later; at most ``max_down`` nodes are paused or down at
    once (so some node always answers).
    """
    weights = weights or {"partition": 3, "cut": 2, "delay": 1, "pause": 2, "kill": 2, "heal": 2}
    kinds, w = list(weights), list(weights.values())
    events: list[FaultEvent] = []
    back: dict[int, tuple[float, str]] = {}       # node -> (when it comes back, how)
    t = 0.0
    while True:
        t += rng.uniform(*step_s)
        if t >= duration_s:
            break
        for k, (when, how) in sorted(back.items()):
            if when <= t:
                events.append(FaultEvent(when, how, (k,)))
                del back[k]
        kind = rng.choices(kinds, w)[0]
        if kind == "partition":
            members = list(range(n))
            rng.shuffle(members)
            cut = rng.randint(1, n - 1)
            events.append(FaultEvent(t, "partition", (sorted(members[:cut]), sorted(members[cut:]),
                                                      rng.choice(("drop", "blackhole")))))
        elif kind == "cut":
            a, b = rng.sample(range(n), 2)
            events.append(FaultEvent(t, "cut", (a, b, rng.choice(("drop", "blackhole")))))
        elif kind == "delay":
            events.append(FaultEvent(t, "delay", (rng.choice((20, 100, 300)),)))
        elif kind == "heal":
            events.append(FaultEvent(t, "heal"))
        elif kind in ("pause", "kill") and len(back) < max_down:
            k = rng.choice([i for i in range(n) if i not in back])
            events.append(FaultEvent(t, kind, (k,)))
            back[k] = (t + rng.uniform(*step_s) * rng.randint(1, 3), "resume" if kind == "pause" else "restart")
    for k, (when, how) in sorted(back.items()):
        events.append(FaultEvent(min(when, duration_s), how, (k,)))
    events.append(FaultEvent(duration_s, "heal"))
    return sorted(events, key=lambda e: e.at)


def apply_event(cluster: Cluster, event: FaultEvent) -> None:
    a = event.args
    if event.action == "partition":
        cluster.partition([list(a[0]), list(a[1])], a[2])
    elif event.action == "cut":
        cluster.cut(a[0], a[1], a[2])
    elif event.action == "delay":
        cluster.delay(a[0])
    elif event.action == "heal":
        cluster.heal()
    elif event.action == "pause":
        cluster.nodes[a[0]].pause()
    elif event.action == "resume":
        cluster.nodes[a[0]].resume()
    elif event.action == "kill":
        cluster.nodes[a[0]].kill()
    elif event.action == "restart":
        cluster.nodes[a[0]].start_in_background(60.0)
    else:
        raise ValueError(f"unknown fault {event.action!r}")


# ============================================================================ a scenario
@dataclass(frozen=True)
class ScenarioConfig:
    nodes: int = 3
    seed: int = 1
    duration_s: float = 10.0           # the random fault phase
    probe_s: float = 8.0               # the confidence probe: one node cut off this long (> max staleness)
    sync_seconds: float = 0.3
    window_seconds: float = 0.5
    threads: int = 2
    interval_s: float = 0.05
    max_down: int = 1
    converge_deadline_s: float = 60.0
    step_s: tuple[float, float] = (1.0, 2.5)


@dataclass
class ProbeSample:
    """One reading of the cut-off node during the confidence probe."""

    elapsed_s: float                  # since the cut
    state: dict                       # its /v1/peer/state
    populations_cf: float | None      # /v1/populations' confidence_factor


@dataclass
class ScenarioResult:
    config: ScenarioConfig
    history: list[WriteRecord]
    events: list[FaultEvent]
    probe_node: int
    probe: list[ProbeSample]
    after_heal_cf: list[float | None]            # /v1/populations confidence_factor of each node at the end
    converge_s: float                            # heal -> every node holds every acknowledged write, same digest
    states: list[dict]                           # each node's /v1/peer/state at the end
    clusters: list[dict]                         # each node's /v1/cluster at the end
    link_bytes: int
    starts: list[int]
    ready_s: list[list[float]]                   # per node: seconds from each start to ready
    timings: dict[str, float] = field(default_factory=dict)


def _holds_everything(states: list[dict], history: list[WriteRecord]) -> bool:
    if len({s["digest"] for s in states}) != 1:
        return False
    state = states[0]
    agents = {r[0] for r in state["populations"].get("behaviors", {}).get("registers", [])}
    evidence = {row[2] for row in state["evidence"]["rows"]}
    for w in history:
        if w.outcome != "ack":
            continue
        if w.kind == "behaviors" and any(item["agent_id"] not in agents for item in w.items):
            return False
        if w.kind == "evidence" and any(item["evidence_id"] not in evidence for item in w.items):
            return False
    return True


def run_scenario(root: Path, config: ScenarioConfig, say=lambda line: None) -> ScenarioResult:
    """Start the cluster, run the probe and the schedule under the workload, heal, converge, read."""
    rng = random.Random(config.seed)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with Cluster(root, config.nodes, sync_seconds=config.sync_seconds,
                 window_seconds=config.window_seconds) as cluster:
        cluster.start()
        timings["start_s"] = time.monotonic() - t0
        workload = Workload(cluster, config.seed, threads=config.threads, interval_s=config.interval_s)
        workload.start()
        # the confidence probe: let writes spread, then cut one node off for probe_s
        time.sleep(2 * config.window_seconds + 3 * config.sync_seconds)
        probe_node = rng.randrange(config.nodes)
        cut_at = time.monotonic()
        cluster.isolate(probe_node, "drop")
        say(f"probe: node {probe_node} cut off for {config.probe_s} s")
        samples: list[ProbeSample] = []
        while time.monotonic() - cut_at < config.probe_s:
            time.sleep(min(1.0, max(0.0, config.probe_s - (time.monotonic() - cut_at))))
            elapsed = time.monotonic() - cut_at
            state = cluster.state(probe_node)
            cf = cluster.get(probe_node, "/v1/populations")["confidence_factor"]
            samples.append(ProbeSample(elapsed, state, cf))
        cluster.heal()
        # the random fault phase
        events = random_schedule(rng, config.nodes, config.duration_s, step_s=config.step_s,
                                 max_down=config.max_down)
        start = time.monotonic()
        for event in events:
            wait = start + event.at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            say(f"{time.monotonic() - start:6.2f} s  {event.action} {event.args}")
            apply_event(cluster, event)
        workload.stop()
        # heal everything (the schedule ends healed, every node up) and wait for convergence
        cluster.heal()
        for node in cluster.nodes:
            if node.state == "paused":
                node.resume()
            elif node.state == "down" and not node.running:
                node.start()
        for node in cluster.nodes:
            end = time.monotonic() + 90.0
            while node.state != "up" and time.monotonic() < end:     # a background start's thread
                time.sleep(0.05)
            if node.state != "up":
                raise TimeoutError(f"node {node.region} is not up after the heal: {node.log_tail()}")
        healed = time.monotonic()
        deadline = healed + config.converge_deadline_s
        converge_s = float("nan")
        while time.monotonic() < deadline:
            states = [cluster.state(i) for i in range(config.nodes)]
            if _holds_everything(states, workload.history):
                converge_s = time.monotonic() - healed
                break
            time.sleep(0.1)
        # a quiet period: nothing may change after convergence
        time.sleep(2 * config.window_seconds + 3 * config.sync_seconds)
        states = [cluster.state(i) for i in range(config.nodes)]
        clusters = [cluster.get(i, "/v1/cluster") for i in range(config.nodes)]
        after_cf = [cluster.get(i, "/v1/populations")["confidence_factor"] for i in range(config.nodes)]
        timings["total_s"] = time.monotonic() - t0
        return ScenarioResult(config, workload.history, events, probe_node, samples, after_cf, converge_s,
                              states, clusters, cluster.link_bytes(), [n.starts for n in cluster.nodes],
                              [list(n.ready_s) for n in cluster.nodes], timings)
