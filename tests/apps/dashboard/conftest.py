"""A node served on loopback by uvicorn in a thread (bounded start and stop), and its feeders."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from swarmguard.apps.serve import ServeNode, ServeSettings, create_app  # noqa: E402

# the serve tests' in-process node factory (TestClient), for the JSON query tests
from ..serve.conftest import make_node, tokens_file  # noqa: E402,F401

TOKENS = """
[[token]]
secret = "t-ingest"
role = "ingest"
[[token]]
secret = "t-obs7"
role = "observer"
source = "observer-7"
[[token]]
secret = "t-obs8"
role = "observer"
source = "observer-8"
[[token]]
secret = "t-obs9"
role = "observer"
source = "observer-9"
[[token]]
secret = "t-obs10"
role = "observer"
source = "observer-10"
[[token]]
secret = "t-obs11"
role = "observer"
source = "observer-11"
[[token]]
secret = "t-read"
role = "read"
[[token]]
sha256 = "{admin_sha}"
role = "admin"
source = "admin-src"
"""
ADMIN = "t-admin"


def loopback_socket(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1 (``port`` 0: an ephemeral one), not yet listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class LoopbackNode:
    """``create_app`` on 127.0.0.1 (an ephemeral port) in a uvicorn thread."""

    def __init__(self, tmp: Path, tokens: bool, sock: socket.socket | None = None, **options):
        secrets = None
        if tokens:
            secrets = tmp / "tokens.toml"
            secrets.write_text(TOKENS.format(admin_sha=hashlib.sha256(ADMIN.encode()).hexdigest()))
        self.settings = ServeSettings(close_windows=False, warm_up=20, tokens_file=secrets, **options)
        self.node = ServeNode(self.settings, tmp / "data")
        sock = sock or loopback_socket()     # given: a port its peers were told before it started
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(self.settings, self.node), log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=5)   # a browser may still hold /v1/events open
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise TimeoutError("the node did not start")
            time.sleep(0.05)
        self.http = httpx.Client(base_url=self.url, timeout=120)

    def headers(self, secret: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret}"} if secret and self.settings.tokens_file else {}

    def post_behaviors(self, rows) -> dict:
        body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        r = self.http.post("/v1/behaviors", content=body,
                           headers={"Content-Type": "application/x-ndjson", **self.headers("t-ingest")})
        assert r.status_code == 200, r.text
        return r.json()

    def post_evidence(self, rows, secret: str) -> dict:
        body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
        r = self.http.post("/v1/evidence", content=body,
                           headers={"Content-Type": "application/x-ndjson", **self.headers(secret)})
        assert r.status_code == 200, r.text
        return r.json()

    def close_window(self) -> list:
        r = self.http.post("/v1/admin/close-window", headers=self.headers(ADMIN))
        assert r.status_code == 200, r.text
        return r.json()["closed"]

    def stop(self) -> None:
        self.http.close()
        # as ``swarmguard serve``'s SIGTERM (run.py): draining first, so that an open /v1/events
        # stream ends at once instead of holding the shutdown for timeout_graceful_shutdown
        self.node.state = "draining"
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the node did not stop"


PLANTED = {"a-7": 3, "a-42": 3, "a-150": 5}      # agent -> first window (1-based) it misbehaves in


def feed_windows(served: LoopbackNode, n: int, windows: int, d: int = 4, seed: int = 7, planted=PLANTED,
                 evidence: bool = True) -> None:
    """``windows`` windows of ``n`` agents in two cohorts; the planted agents shift by 12σ on
    features 1 and 3 from their window on. Observers 7, 9, 10 and 11 report them truthfully and
    call a-10 … a-49 normal; observer-8 calls those 40 agents misbehaving (five sources on each:
    enough for the consensus to flag the liar)."""
    rng = np.random.default_rng(seed)
    for w in range(1, windows + 1):
        X = rng.normal(size=(n, d))
        for agent, start in planted.items():
            if w >= start:
                i = int(agent.split("-")[1])
                X[i, 1] += 12.0
                X[i, 3] -= 9.0
        rows = [{"agent_id": f"a-{i}", "features": X[i].tolist(), "cohort": "eu-fleet" if i % 3 else "us-fleet"}
                for i in range(n)]
        served.post_behaviors(rows)
        if evidence:
            bad = [a for a, start in planted.items() if w >= start]
            honest = [{"evidence_id": f"o7-{w}-{a}", "agent_id": a, "evidence_type": "peer_report",
                       "log_odds": 3.0, "confidence": 0.9, "timestamp": float(w)} for a in bad]
            honest += [{"evidence_id": f"o7-{w}-a-{i}", "agent_id": f"a-{i}", "evidence_type": "peer_report",
                        "log_odds": -1.0, "confidence": 0.9, "timestamp": float(w)} for i in range(10, 50)]
            lies = [{"evidence_id": f"o8-{w}-{i}", "agent_id": f"a-{i}", "evidence_type": "peer_report",
                     "log_odds": 8.0, "confidence": 0.9, "timestamp": float(w)} for i in range(10, 50)]
            for observer, factor in (("7", 1.0), ("9", 0.8), ("10", 0.9), ("11", 1.1)):
                served.post_evidence([{**e, "evidence_id": f"o{observer}" + e["evidence_id"][2:],
                                       "log_odds": e["log_odds"] * factor} for e in honest], f"t-obs{observer}")
            served.post_evidence(lies, "t-obs8")
        served.close_window()


@pytest.fixture(scope="module")
def fed_node(tmp_path_factory):
    """A node with tokens and 6 windows of 300 agents, three of them planted anomalies."""
    served = LoopbackNode(tmp_path_factory.mktemp("node"), tokens=True, require="anomaly")
    try:
        feed_windows(served, 300, 6)
        yield served
    finally:
        served.stop()
