"""Three ``swarmguard serve`` processes on loopback as one cluster: convergence, a paused node, STRONG.

Each node is a subprocess in its own session (its process group is its pid), on a free
127.0.0.1 port, with its own data dir; every loop has a deadline; the test stops only
the processes it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import ADMIN_SECRET, NDJSON, TOKENS, auth, lines
from .test_durability import _free_port

SRC = Path(__file__).resolve().parents[3] / "src"
REGIONS = ("eu", "us", "ap")
READ = auth("t-read")
pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, tmp_path: Path, consistency: str = "statistical", sync_seconds: float = 0.3):
        self.tmp = tmp_path
        self.tokens = tmp_path / "tokens.toml"
        self.tokens.write_text(TOKENS.format(admin_sha=hashlib.sha256(ADMIN_SECRET.encode()).hexdigest())
                               + '[[token]]\nsecret = "t-peer"\nrole = "peer"\n')
        (tmp_path / "peer.secret").write_text("t-peer\n")
        self.ports = {r: _free_port() for r in REGIONS}
        self.url = {r: f"http://127.0.0.1:{p}" for r, p in self.ports.items()}
        self.consistency, self.sync_seconds = consistency, sync_seconds
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, region: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        peers = ",".join(self.url[r] for r in REGIONS if r != region)
        log = open(self.tmp / f"{region}.log", "ab")        # noqa: SIM115 - the child holds it
        self.procs[region] = subprocess.Popen(
            [sys.executable, "-m", "swarmguard", "serve", "--port", str(self.ports[region]),
             "--data-dir", str(self.tmp / region), "--tokens", str(self.tokens), "--region", region,
             "--window", "3600", "--warm-up", "5", "--peers", peers, "--sync-seconds", str(self.sync_seconds),
             "--peer-token-file", str(self.tmp / "peer.secret"), "--consistency", self.consistency],
            env=env, stdout=log, stderr=log, start_new_session=True)
        log.close()

    def wait_ready(self, deadline_s: float = 90.0) -> None:
        import httpx

        end = time.monotonic() + deadline_s
        pending = set(self.procs)
        while pending and time.monotonic() < end:
            for region in sorted(pending):
                assert self.procs[region].poll() is None, (self.tmp / f"{region}.log").read_text()
                try:
                    if httpx.get(f"{self.url[region]}/readyz", timeout=2).status_code == 200:
                        pending.discard(region)
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        assert not pending, f"not ready: {pending}"

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def signal(self, region: str, sig: int) -> None:
        os.killpg(self.procs[region].pid, sig)


@pytest.fixture
def cluster_factory(tmp_path):
    made = []

    def make(**options) -> Cluster:
        c = Cluster(tmp_path, **options)
        made.append(c)
        for region in REGIONS:
            c.start(region)
        c.wait_ready()
        return c

    yield make
    for c in made:
        c.stop_all()


def _post(http, url, path, rows, token):
    return http.post(f"{url}{path}", content=lines(rows), headers={**NDJSON, **auth(token)})


def _close(http, url):
    r = http.post(f"{url}/v1/admin/close-window", headers=auth(ADMIN_SECRET))
    assert r.status_code == 200, r.text


def _state(http, url, agents):
    c = http.get(f"{url}/v1/cluster", headers=READ).json()
    consensus = {a: http.get(f"{url}/v1/agents/{a}", headers=READ).json().get("consensus") for a in agents}
    return {"version_vector": c["version_vector"], "evidence": c["evidence"], "consensus": consensus,
            "populations": {n: {k: v[k] for k in ("count", "mean", "registers_sha256", "region_counts")}
                            for n, v in c["populations"].items()}}


def _converged(http, urls, agents, deadline_s=60.0):
    """Poll until every node answers the same state; that state."""
    end, states = time.monotonic() + deadline_s, None
    while time.monotonic() < end:
        states = [_state(http, u, agents) for u in urls]
        if all(s == states[0] for s in states[1:]):
            return states[0]
        time.sleep(0.2)
    raise AssertionError(f"no convergence within {deadline_s} s: {states}")


def _until(predicate, deadline_s=30.0, what="the condition"):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not hold within {deadline_s} s")


def _behaviors(rng, prefix, n, shared=()):
    rows = [{"agent_id": f"{prefix}-{i}", "features": rng.normal(size=3).tolist()} for i in range(n)]
    # the shared agents sit near the centre, so no node's detector flags them: its own evidence
    # on an agent it flags stays on that node (not replicated) and would differ between nodes
    return rows + [{"agent_id": a, "features": (0.05 * rng.uniform(-1, 1, size=3)).tolist()} for a in shared]


def _ev(eid, agent, log_odds):
    return {"evidence_id": eid, "agent_id": agent, "evidence_type": "anomaly", "log_odds": log_odds,
            "confidence": 0.9, "timestamp": time.time()}


def test_three_processes_converge_and_stay_available_while_one_is_paused(cluster_factory):
    import httpx

    c = cluster_factory()
    rng = np.random.default_rng(21)
    shared = [f"s-{i}" for i in range(6)]          # written on every node: last writer wins everywhere
    urls = [c.url[r] for r in REGIONS]
    with httpx.Client(timeout=10) as http:
        for region in REGIONS:
            r = _post(http, c.url[region], "/v1/behaviors", _behaviors(rng, region, 20, shared), "t-ingest")
            assert r.status_code == 200 and r.json()["accepted"] == 26, r.text
            _close(http, c.url[region])
        assert _post(http, c.url["eu"], "/v1/evidence", [_ev("e-1", "s-1", 2.0), _ev("x-1", "s-2", 1.5)],
                     "t-obs7").json()["accepted"] == 2
        assert _post(http, c.url["us"], "/v1/evidence", [_ev("e-2", "s-1", 1.0)], "t-obs8").json()["accepted"] == 1
        # the same key with other content on another node: refused there if eu's row arrived first,
        # else accepted, and then (the conflict rule) both count everywhere
        r = _post(http, c.url["ap"], "/v1/evidence", [_ev("x-1", "s-2", -0.5)], "t-obs7")
        both_count = r.status_code == 200 and r.json()["accepted"] == 1
        assert both_count or (r.status_code == 400 and "different content" in r.text), r.text
        state = _converged(http, urls, shared)
        pop = state["populations"]["behaviors"]
        assert pop["count"] == 3 * 20 + len(shared)
        assert state["evidence"]["rows"] == (4 if both_count else 3)
        assert state["evidence"]["log_odds_sum"] == 2.0 + 1.5 + 1.0 - (0.5 if both_count else 0.0)
        assert state["consensus"]["s-1"]["evidence_count"] == 2
        assert state["consensus"]["s-2"]["evidence_count"] == (2 if both_count else 1)

        # ap paused: eu and us keep accepting (statistical) and see ap unreachable
        c.signal("ap", signal.SIGSTOP)
        for region in ("eu", "us"):
            r = _post(http, c.url[region], "/v1/behaviors", _behaviors(rng, f"{region}2", 5, shared), "t-ingest")
            assert r.status_code == 200, r.text
            _close(http, c.url[region])
        assert _post(http, c.url["us"], "/v1/evidence", [_ev("e-3", "s-3", 0.75)], "t-obs8").status_code == 200

        def ap_unreachable(region):
            peers = http.get(f"{c.url[region]}/v1/cluster", headers=READ).json()["peers"]
            return all(not p["reachable"] for p in peers if p["url"] == c.url["ap"])

        _until(lambda: ap_unreachable("eu") and ap_unreachable("us"), what="ap unreachable from eu and us")
        both = _converged(http, [c.url["eu"], c.url["us"]], shared)
        assert both["populations"]["behaviors"]["count"] == 3 * 20 + 2 * 5 + len(shared)
        assert both != state

        # ap resumes: all three converge on the writes made while it was paused
        c.signal("ap", signal.SIGCONT)
        healed = _converged(http, urls, shared)
        assert healed["populations"] == both["populations"]
        assert healed["evidence"]["rows"] == state["evidence"]["rows"] + 1
        _until(lambda: not ap_unreachable("eu"), what="ap reachable from eu again")


def test_strong_refuses_writes_without_a_majority_and_accepts_again_after(cluster_factory):
    import httpx

    c = cluster_factory(consistency="strong", sync_seconds=0.3)
    rng = np.random.default_rng(22)
    eu = c.url["eu"]
    with httpx.Client(timeout=10) as http:
        def write():
            return _post(http, eu, "/v1/behaviors", _behaviors(rng, "eu", 2), "t-ingest")

        _until(lambda: write().status_code == 200, what="eu writable with its peers up")
        c.signal("us", signal.SIGSTOP)
        c.signal("ap", signal.SIGSTOP)
        refused = {}

        def is_refused():
            r = write()
            refused["r"] = r
            return r.status_code == 503

        _until(is_refused, what="a 503 on eu with both peers paused")
        r = refused["r"]
        assert "not a majority" in r.json()["error"] and r.headers["Retry-After"]
        c.signal("us", signal.SIGCONT)                      # two of three: a majority again
        _until(lambda: write().status_code == 200, what="eu writable again with a majority")
