"""Jepsen-style: real ``swarmguard serve`` processes behind fault-injecting proxies.

The harness lives in ``benchmarks/`` (``cluster_proxy``, ``cluster_harness``,
``cluster_checks``) so that ``benchmarks/bench_cluster.py`` runs the same code on a
long schedule; this file puts that folder on ``sys.path``. Services listen on
127.0.0.1 only; every wait has a deadline; the harness stops only the processes it
started, by pid.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from cluster_checks import all_checks  # noqa: E402
from cluster_harness import INGEST, Cluster, ScenarioConfig, _auth, _lines, run_scenario  # noqa: E402
from cluster_proxy import ProxyHub  # noqa: E402


# ---------------------------------------------------------------------------- the proxy
class _Echo:
    """A loopback server answering each received chunk with the same bytes (bounded: daemon
    threads, closed by the test)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        conn.settimeout(5.0)
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        return s.recv(65536)


@pytest.fixture
def echo_and_hub():
    echo, hub = _Echo(), ProxyHub()
    yield echo, hub
    hub.close()
    echo.close()


def test_proxy_passes_drops_blackholes_and_delays(echo_and_hub):
    echo, hub = echo_and_hub
    link = hub.add("a->b", echo.port)
    assert _roundtrip(link.port) == b"ping"
    end = time.monotonic() + 5.0          # counted just after the bytes are handed on: poll briefly
    while (link.counters.bytes_up, link.counters.bytes_down) != (4, 4) and time.monotonic() < end:
        time.sleep(0.01)
    assert (link.counters.bytes_up, link.counters.bytes_down) == (4, 4)
    link.set("drop")
    with pytest.raises(OSError):            # reset at once (or read as an empty answer)
        if _roundtrip(link.port) == b"":
            raise ConnectionResetError
    link.set("blackhole")
    with pytest.raises(socket.timeout):     # accepted, never answered
        _roundtrip(link.port, timeout=0.5)
    link.set("pass", delay_ms=300)
    t0 = time.monotonic()
    assert _roundtrip(link.port) == b"ping"
    assert time.monotonic() - t0 >= 0.55    # the delay applies to each direction's chunk
    link.set("pass")
    assert _roundtrip(link.port) == b"ping"


def test_dropping_a_link_resets_its_open_connections(echo_and_hub):
    echo, hub = echo_and_hub
    link = hub.add("a->b", echo.port)
    with socket.create_connection(("127.0.0.1", link.port), timeout=2.0) as s:
        s.sendall(b"one")
        assert s.recv(100) == b"one"
        link.set("drop")
        with pytest.raises(OSError):
            s.sendall(b"two")
            if s.recv(100) == b"":
                raise ConnectionResetError
    with pytest.raises(ValueError):
        link.set("sideways")


def test_one_way_cut_blocks_one_direction_only(echo_and_hub):
    echo, hub = echo_and_hub
    other = _Echo()
    try:
        ab, ba = hub.add("a->b", echo.port), hub.add("b->a", other.port)
        ab.set("drop")
        assert _roundtrip(ba.port) == b"ping"
        with pytest.raises(OSError):
            if _roundtrip(ab.port) == b"":
                raise ConnectionResetError
    finally:
        other.close()


# ---------------------------------------------------------------------------- real nodes
def test_a_write_acknowledged_before_a_crash_never_overwrites_a_later_write(tmp_path):
    """Regression (found by the harness): node A acknowledges ``x = 1`` and is killed before its
    window closes; node B acknowledges ``x = 2`` later; A restarts, replays and closes its window.
    Last-writer-wins must keep ``x = 2`` on both (A's late close used to stamp ``x = 1`` later)."""
    headers = {"Content-Type": "application/x-ndjson", **_auth(INGEST)}
    with Cluster(tmp_path, 2, sync_seconds=0.3, window_seconds=0.5) as cluster:
        cluster.start()
        a, b = cluster.nodes
        r = httpx.post(f"{a.url}/v1/behaviors", content=_lines([{"agent_id": "x", "features": [1.0, 1.0]}]),
                       headers=headers, timeout=10)
        assert r.status_code == 200 and r.json()["accepted"] == 1
        a.kill()
        time.sleep(1.0)
        r = httpx.post(f"{b.url}/v1/behaviors", content=_lines([{"agent_id": "x", "features": [2.0, 2.0]}]),
                       headers=headers, timeout=10)
        assert r.status_code == 200 and r.json()["accepted"] == 1
        a.start()
        a.wait_ready()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            states = [cluster.state(0), cluster.state(1)]
            regs = [s["populations"].get("behaviors", {}).get("registers") for s in states]
            if regs[0] and regs[0] == regs[1]:
                break
            time.sleep(0.2)
        assert regs[0] == regs[1], "the two nodes did not converge"
        (agent, _ts, writer, _seq, features, _score), = regs[0]
        assert (agent, writer, [float.fromhex(f) for f in features]) == ("x", "r1", [2.0, 2.0])


@pytest.mark.slow
def test_seeded_fault_schedule_keeps_every_promise(tmp_path):
    """Three nodes; a confidence probe (one node cut off past the staleness limit) then a seeded
    schedule of partitions (both ways and one-way, dropping or black-holing), delays, pauses and
    kill -9 with restarts, under a workload of behaviours and evidence to random nodes. After the
    heal: 100 % availability of live nodes, no lost update, bit-identical convergence, the
    reference node's statistics (1e-12), the documented confidence decay and its return to 1."""
    # seed 160: a one-way black-hole, a kill -9, a partition (black-hole), the restart, a pause
    config = ScenarioConfig(nodes=3, seed=160, duration_s=7.0, probe_s=6.5, max_down=1, interval_s=0.1)
    result = run_scenario(tmp_path / "cluster", config)
    checks = all_checks(result, tmp_path / "reference")
    assert all(c.ok for c in checks), "\n".join(str(c) for c in checks if not c.ok)
    kinds = {e.action for e in result.events}
    assert {"partition", "cut", "pause", "kill", "restart"} <= kinds, kinds   # the seed exercises every fault
    availability = checks[0].figures
    assert availability["to_live_nodes"] > 50 and availability["availability"] == 1.0
