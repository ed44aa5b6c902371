"""A deterministic run of a node (behaviours, spans, evidence, window closes), for the snapshot
tests: the same operations on the same clock give the same node, so a node restarted from a
snapshot can be compared with one that never stopped. Also run as a script (the kill -9 test):
``python _snapshot_driver.py DATA_DIR WINDOWS SNAPSHOT_EVERY [CRASH_POINT HIT]`` prints ``acked i``
after each acknowledged operation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

BASE_T = 1_000_000.0
PB = {"Content-Type": "application/x-protobuf"}
NDJSON = {"Content-Type": "application/x-ndjson"}
ADMIN = {"Authorization": "Bearer t-admin"}


class OpClock:
    """The node's clock: a function of the operation being run (so two runs read the same times)."""

    def __init__(self) -> None:
        self.t = BASE_T

    def __call__(self) -> float:
        return self.t


def build_ops(windows: int, agents: int = 60, seed: int = 7) -> list[tuple]:
    """Per window: two behaviour batches (a shifted agent), the fleet's spans, evidence, a close."""
    from swarmguard.apps.otlp.fleet_model import make_fleet
    from swarmguard.apps.otlp.synthetic import window_requests

    rng = np.random.default_rng(seed)
    profiles = make_fleet(agents, 3, seed=seed)
    ops: list[tuple] = []
    for w in range(windows):
        n = agents + 7 * w                  # agents join in both cohorts: the tree's layout grows
        X = rng.normal(size=(n, 3))
        X[5] += 12.0
        rows = [{"agent_id": f"a-{i}", "features": X[i].tolist(), "cohort": "eu" if i % 2 else "us"}
                for i in range(n)]
        ops.append(("behaviors", rows[: n // 2]))
        ops.append(("behaviors", rows[n // 2:]))
        for body in window_requests(profiles, rng, batch_spans=256):
            ops.append(("spans", body))
        ops.append(("evidence", [{"evidence_id": f"e{w}-{k}", "agent_id": f"a-{int(a)}", "evidence_type": "peer_report",
                                  "log_odds": float(lo), "confidence": 0.9, "timestamp": float(w)}
                                 for k, (a, lo) in enumerate(zip(rng.integers(0, agents, 4), rng.normal(2, 1, 4), strict=True))]))
        ops.append(("close",))
    return ops


def run_op(client, clock: OpClock, index: int, op: tuple) -> bool:
    """Run operation ``index``; True when the node acknowledged it."""
    clock.t = BASE_T + 10.0 * index
    kind = op[0]
    if kind == "close":
        r = client.post("/v1/admin/close-window", headers=ADMIN)
    elif kind == "spans":
        r = client.post("/v1/traces", content=op[1], headers={**PB, "Authorization": "Bearer t-ingest"})
    else:
        body = b"".join(json.dumps(row).encode() + b"\n" for row in op[1])
        token = "t-ingest" if kind == "behaviors" else "t-obs7"
        r = client.post(f"/v1/{kind}", content=body, headers={**NDJSON, "Authorization": f"Bearer {token}"})
    return r.status_code == 200


TOKENS = """
[[token]]
secret = "t-ingest"
role = "ingest"
[[token]]
secret = "t-obs7"
role = "observer"
source = "observer-7"
[[token]]
secret = "t-read"
role = "read"
[[token]]
secret = "t-admin"
role = "admin"
source = "admin-src"
"""


def make(data_dir: Path, snapshot_every: int, clock: OpClock):
    """(node, client) over ``data_dir`` (tokens written next to it)."""
    from fastapi.testclient import TestClient

    from swarmguard.apps.serve import ServeNode, ServeSettings, create_app

    tokens = Path(data_dir).parent / (Path(data_dir).name + ".tokens.toml")
    tokens.write_text(TOKENS)
    settings = ServeSettings(clock=clock, close_windows=False, warm_up=20, tokens_file=tokens,
                             snapshot_every=snapshot_every)
    node = ServeNode(settings, data_dir)
    return node, TestClient(create_app(settings, node), raise_server_exceptions=False)


def observed(node, client) -> dict:
    """Everything the tests compare: each population's agents (every field), consensus,
    population statistics, events, and the query API's answers."""
    read = {"Authorization": "Bearer t-read"}
    out: dict = {"at": node._at, "events": node.events.after(0)}
    for name, pop in node.populations.items():
        det = pop.detector
        stats = det.tree.get_global_statistics() if det.tree.agent_ids() else None
        out[name] = {
            "agents": {a: (s.score, s.p_value, s.log_p, s.severity, s.isolated, s.cohort, s.confidence_factor,
                           s.features.tolist(), s.window) for a, s in pop.agents.items()},
            "order": list(pop.agents), "windows": pop.windows_closed, "dimension": pop.dimension,
            "consensus": det.consensus.state_fingerprint(), "evidence_number": det._evidence_number,
            "tree": None if stats is None else (stats["count"], np.asarray(stats["mean"]).tolist()),
            "tree_ids": sorted(det.tree.agent_ids()),
        }
    from dataclasses import asdict

    from swarmguard.apps.dashboard.history import history_of

    history = history_of(node)          # the dashboard's past windows: compaction must keep them
    out["history"] = {name: ([asdict(r) for r in h.windows], dict(h.first_isolated))
                      for name, h in history.populations.items()}
    out["peers"] = peer_state(node)
    out["top"] = client.get("/v1/agents?top=1000", headers=read).json()
    out["populations"] = client.get("/v1/populations", headers=read).json()
    for summary in out["populations"]["populations"]:
        if "covariance" in summary and (summary["count"] <= len(summary["mean"])
                                        or summary["population"] == "spans"):
            # a singular covariance (no more agents than features, or the span features this
            # fleet never varies): its log-determinant is the log of an eigenvalue that is
            # rounding noise, not a property of the population
            summary["covariance"].pop("log_determinant")
    for agent in ("a-5", "a-1", "agent-000001"):
        r = client.get(f"/v1/agents/{agent}", headers=read)
        out[f"agent {agent}"] = (r.status_code, r.json())
    return out


def peer_state(node) -> dict:
    """The peer replication's state: the node's vectors, its evidence ledger (every row by
    origin and seq) and each population's replica of its region (registers of every region,
    version vector, freshness, acks), every array as a list (compared bitwise)."""
    from swarmguard.apps.serve.peers import replication_of

    replication = replication_of(node)
    replicas = {}
    for name, replica in replication.replicas.replicas().items():
        state = replica.to_dict()
        replicas[name] = {key: np.asarray(state[key]).tolist() for key in sorted(state)}
    return {"vectors": replication.vectors().to_json(), "ledger": replication.replicas.ledger.export_state(),
            "replicas": replicas}


def assert_same(a, b, path: str = "", rel: float = 0.0) -> None:
    """``a == b``, bitwise (``rel`` 0: a snapshot holds the trees' exact layout and anchor,
    ``to_dict(exact=True)``, so the restored moments are the live ones); ``rel`` > 0 compares
    floats to that relative tolerance (1e-12 absolute), every other value exactly."""
    import math

    if isinstance(a, float) and isinstance(b, float):
        close = a == b if rel == 0 else math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
        assert (math.isnan(a) and math.isnan(b)) or close, (path, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        assert list(a) == list(b), (path, list(a), list(b))
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}", rel)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]", rel)
    else:
        assert type(a) is type(b) and a == b, (path, a, b)


if __name__ == "__main__":            # the kill -9 test's node
    data_dir, windows, every = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:             # kill -9 this process at the given point of the given snapshot
        import os
        import signal

        from swarmguard.apps.serve import durable_log

        point, hit = sys.argv[4], int(sys.argv[5])
        hits = [0]

        def crash(name: str) -> None:
            if name == point:
                hits[0] += 1
                if hits[0] == hit:
                    os.kill(os.getpid(), signal.SIGKILL)

        durable_log._crash_point = crash
    clock = OpClock()
    node, client = make(data_dir, every, clock)
    for i, op in enumerate(build_ops(windows)):
        if run_op(client, clock, i, op):
            print(f"acked {i}", flush=True)
        else:
            print(f"refused {i}", flush=True)
    print("done", flush=True)
