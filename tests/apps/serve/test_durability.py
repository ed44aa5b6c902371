"""Durability: the node's state is rebuilt from its data folder; kill -9 loses nothing acknowledged;
SIGTERM drains (readyz 503, the open window closed and logged)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import (
    ManualClock,
    auth,
    close_window,
    lines,
    metric,
    population_rows,
    post_behaviors,
    post_evidence,
)

SRC = Path(__file__).resolve().parents[3] / "src"


def test_a_restarted_node_has_the_same_state(make_node, tmp_path):
    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(2)
    for w in range(3):
        _, rows = population_rows(rng, 80, 3, shifted=(5,))
        post_behaviors(client, rows)
        post_evidence(client, [{"evidence_id": f"e{w}", "agent_id": "a-5", "evidence_type": "peer_report",
                                "log_odds": 2.0, "confidence": 0.9, "timestamp": 1.0}])
        clock.t += 60
        close_window(client)
    _, rows = population_rows(rng, 10, 3)
    post_behaviors(client, rows)                        # the open window: acknowledged, not closed
    node.close()
    _, again, client2 = make_node(clock=clock)
    assert again.replayed == 3 + 3 + 3 + 1
    a, b = node.populations["behaviors"], again.populations["behaviors"]
    assert a.agents.keys() == b.agents.keys()
    for agent, state in a.agents.items():
        other = b.agents[agent]
        assert (state.score, state.p_value, state.isolated, state.cohort, state.window) == (
            other.score, other.p_value, other.isolated, other.cohort, other.window)
    assert b.agents["a-5"].isolated
    assert a.detector.consensus.state_fingerprint() == b.detector.consensus.state_fingerprint()
    assert len(b.window) == 10
    assert again.events.after(0)[0][1] == node.events.after(0)[0][1]
    close_window(client2)
    assert len(b.window) == 0 and b.windows_closed == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, port: int, tokens: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from swarmguard.cli import app; sys.argv[0] = 'swarmguard'; app()",
         "serve", "--port", str(port), "--data-dir", str(data_dir), "--tokens", str(tokens),
         "--window", "3600", "--warm-up", "10", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_ready(http, proc: subprocess.Popen, deadline_s: float = 60.0) -> None:
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the node did not become ready")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_at_random_points_loses_nothing_acknowledged(tmp_path, tokens_file):
    import httpx

    port, data = _free_port(), tmp_path / "data"
    rng, pick = np.random.default_rng(9), random.Random(9)
    acked_vectors: dict[str, list[float]] = {}       # agent -> its last acknowledged vector
    acked_evidence: dict[str, str] = {}               # evidence id -> its agent
    closed_acked = 0
    seq = 0
    for life in range(4):
        proc = _start(data, port, tokens_file)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                _wait_ready(http, proc)
                kill_after = pick.uniform(0.2, 1.2)
                t0 = time.monotonic()
                # post until the kill lands mid-stream (a request may be cut; it was never acknowledged)
                killer = None
                while True:
                    if killer is None and time.monotonic() - t0 > kill_after:
                        os.killpg(proc.pid, signal.SIGKILL)
                        killer = True
                    seq += 1
                    X, rows = population_rows(rng, 20, 3)
                    for r in rows:
                        r["agent_id"] = f"L{life}-{seq}-{r['agent_id']}"   # each vector its own agent
                    ev = [{"evidence_id": f"ev-{seq}", "agent_id": rows[0]["agent_id"], "evidence_type": "peer_report",
                           "log_odds": 1.0, "confidence": 1.0, "timestamp": 0.0}]
                    try:
                        r = http.post("/v1/behaviors", content=lines(rows), headers={
                            "Content-Type": "application/x-ndjson", **auth("t-ingest")})
                        if r.status_code == 200:
                            for row in rows:
                                acked_vectors[row["agent_id"]] = row["features"]
                        r = http.post("/v1/evidence", content=lines(ev), headers={
                            "Content-Type": "application/x-ndjson", **auth("t-obs7")})
                        if r.status_code == 200:
                            acked_evidence[ev[0]["evidence_id"]] = ev[0]["agent_id"]
                        if seq % 7 == 0:
                            r = http.post("/v1/admin/close-window", headers=auth("t-admin"))
                            if r.status_code == 200:
                                closed_acked += 1
                    except httpx.TransportError:
                        break
        finally:
            _stop(proc)
    # a last life: everything acknowledged is there
    proc = _start(data, port, tokens_file)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            _wait_ready(http, proc)
            r = http.post("/v1/admin/close-window", headers=auth("t-admin"))
            assert r.status_code == 200
            assert acked_vectors and acked_evidence
            listed = http.get("/v1/agents", params={"top": 100_000}, headers=auth("t-read")).json()["agents"]
            assert set(acked_vectors) <= {a["agent_id"] for a in listed}
            for agent in pick.sample(sorted(acked_vectors), min(200, len(acked_vectors))):
                r = http.get(f"/v1/agents/{agent}", headers=auth("t-read"))
                assert r.status_code == 200, (agent, r.text)
                actual = {c["feature"]: c["actual"] for c in r.json()["contributions"]}
                assert [actual[f"f{j}"] for j in range(3)] == acked_vectors[agent]
            pops = http.get("/v1/populations", headers=auth("t-read")).json()["populations"]
            whole = [p for p in pops if p["cohort"] == ""][0]
            assert whole["count"] >= len(acked_vectors)
            for agent in set(acked_evidence.values()):
                r = http.get(f"/v1/agents/{agent}", headers=auth("t-read"))
                assert r.status_code == 200, (agent, r.text)
                assert r.json()["consensus"]["evidence_count"] >= 1
    finally:
        _stop(proc)
    # the log itself: every acknowledged evidence id is there, under the observer's source
    from swarmguard.apps.serve.durable_log import EVIDENCE, DurableLog

    stored = DurableLog(data)
    logged = {row[0]: row for rec in stored.records() if rec.kind == EVIDENCE for row in rec.meta["rows"]}
    kept = stored.latest_snapshot()        # what compaction took out of the log is in the snapshot
    if kept is not None:
        import io
        import json

        with np.load(io.BytesIO(kept[1]), allow_pickle=False) as archive:
            meta = json.loads(archive["meta"].tobytes())
        ev = meta["populations"][0]["evidence"]
        for eid, agent, source in zip(ev["evidence_ids"], ev["agent_ids"], ev["source_nodes"], strict=True):
            logged.setdefault(eid, [eid, agent, None, None, None, None, source])
    stored.close()
    for eid, agent in acked_evidence.items():
        assert logged[eid][1] == agent and logged[eid][6] == "observer-7"
    assert closed_acked >= 1


@pytest.mark.slow
def test_sigterm_drains_closes_the_window_and_flushes(tmp_path, tokens_file):
    import httpx

    port, data = _free_port(), tmp_path / "data"
    proc = _start(data, port, tokens_file, "--drain-seconds", "1.5")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_ready(http, proc)
            _, rows = population_rows(np.random.default_rng(1), 30, 2)
            r = http.post("/v1/behaviors", content=lines(rows), headers={"Content-Type": "application/x-ndjson",
                                                                          **auth("t-ingest")})
            assert r.status_code == 200
            assert http.get("/v1/agents/a-0", headers=auth("t-read")).status_code == 404   # window open
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            r = http.get("/readyz")                          # draining: still listening, not ready
            assert r.status_code == 503 and r.json() == {"error": "node is draining"}
            r = http.post("/v1/behaviors", content=lines(rows), headers={"Content-Type": "application/x-ndjson",
                                                                          **auth("t-ingest")})
            assert r.status_code == 503 and "retry-after" in r.headers
            if importlib.util.find_spec("opentelemetry.proto") is not None:
                # POST /v1/traces (the middleware's direct call, past the router): the OTLP 503
                from swarmguard.apps.otlp.decode import decode_status

                from .test_traces import _request

                r = http.post("/v1/traces", content=_request(), headers={"Content-Type": "application/x-protobuf",
                                                                          **auth("t-ingest")})
                assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
                assert decode_status(r.content, "protobuf").code == 14
            # uvicorn shuts down, then re-raises the signal: the exit is SIGTERM's own
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        _stop(proc)
    from swarmguard.apps.serve.durable_log import CLOSE_WINDOW, DurableLog

    stored = DurableLog(data)
    records = list(stored.records())
    # the open window was closed on the way out, then the state snapshotted: the behaviours are
    # in the snapshot, the close record stays as the one it covers
    assert [rec.kind for rec in records] == [CLOSE_WINDOW]
    assert stored.latest_snapshot()[0] == records[0].seq
    stored.close()
    proc = _start(data, port, tokens_file)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_ready(http, proc)
            r = http.get("/v1/agents/a-0", headers=auth("t-read"))
            assert r.status_code == 200 and r.json()["window"] == 1
    finally:
        _stop(proc)


def test_a_round_that_refuses_its_input_neither_fails_the_close_nor_the_restart(make_node):
    from swarmguard.apps.serve.durable_log import BEHAVIORS

    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(6)
    _, rows = population_rows(rng, 30, 2)
    assert post_behaviors(client, rows).status_code == 200
    close_window(client)
    # a feeder that bypasses the ingest checks (another module calling the node): a vector the
    # detector refuses, logged and buffered like any other
    poison = np.array([[1e300, 1.0]])
    meta = {"population": "behaviors", "agents": ["poison"], "cohorts": [None], "d": 2, "feature_names": None}
    with node.lock:
        node._log_append(BEHAVIORS, clock(), meta, poison)
        node._apply_behaviors(clock(), meta, poison)
    clock.t += 60
    assert close_window(client) == []                    # the round refused; the close itself did not fail
    _, rows = population_rows(rng, 30, 2)
    assert post_behaviors(client, rows).status_code == 200
    close_window(client)
    node.close()
    _, again, client2 = make_node(clock=clock)           # replays the refused round without failing
    a, b = node.populations["behaviors"], again.populations["behaviors"]
    assert again.replayed == len(again.log) and b.windows_closed == a.windows_closed == 2
    assert {k: v.score for k, v in a.agents.items()} == {k: v.score for k, v in b.agents.items()}
    assert "poison" not in b.agents


# ---------------------------------------------------------------- a commit reported failed
class _CommitThenRaise:
    """The node's log connection with its next ``COMMIT`` reported failed: carried out first
    (``landed``: an fsync error after the WAL frame was written, a full disk on the checkpoint
    after it) or not at all (rolled back)."""

    def __init__(self, db, landed: bool):
        self.db, self.landed, self.left = db, landed, 1

    def execute(self, sql, *args):
        if self.left and sql == "COMMIT":
            self.left = 0
            if self.landed:
                self.db.execute(sql, *args)
            raise __import__("sqlite3").OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


@contextlib.contextmanager
def _failing_commit(node, fake, landed: bool):
    """Inside: the node's log connection is ``fake(real, landed)`` (its next commit fails); the
    real one again on leaving, as a disk that works again."""
    real = node.log._db
    node.log._db = fake(real, landed)
    try:
        yield
    finally:
        node.log._db = real


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "nothing-landed"])
def test_a_commit_reported_failed_leaves_the_node_of_a_run_that_never_failed(tmp_path, landed):
    """One request of each kind (behaviours, spans, evidence, a close) has its commit reported
    failed. Landed: the rows are the log's, the request is acknowledged and applied once, and a
    spans or evidence request sent again (an exporter that timed out) is not applied twice.
    Nothing landed: 503 with Retry-After, nothing applied, and the retry is applied once. Either
    way every later write succeeds, and the node, live and after a restart, is the node of the
    same run without a failure."""
    pytest.importorskip("opentelemetry.proto")
    from . import _snapshot_driver as drive

    ops = drive.build_ops(3, agents=30)
    kinds = {kind: [i for i, op in enumerate(ops) if op[0] == kind] for kind in ("behaviors", "spans", "evidence", "close")}
    failing = {kinds["behaviors"][2], kinds["spans"][3], kinds["evidence"][1], kinds["close"][1]}
    clock = drive.OpClock()
    node, client = drive.make(tmp_path / "a", 0, clock)
    for i, op in enumerate(ops):
        if i in failing:
            with _failing_commit(node, _CommitThenRaise, landed):
                acked = drive.run_op(client, clock, i, op)
            assert acked == landed, (i, op[0])
            if not landed:
                assert node.log.last_seq() == len(node.log) + (op[0] == "spans")   # the refused span record waits
            if not landed or op[0] in ("spans", "evidence"):
                assert drive.run_op(client, clock, i, op), (i, op[0])            # the retry
        else:
            assert drive.run_op(client, clock, i, op), (i, op[0])
    assert metric(client, "swarmguard_log_commits_landed_after_error") == (4 if landed else 0)
    assert client.get("/readyz").status_code == 200 and node.log.broken is None
    ref, ref_client = drive.make(tmp_path / "reference", 0, drive.OpClock())
    for i, op in enumerate(ops):
        assert drive.run_op(ref_client, ref_client.app.state.node.settings.clock, i, op)
    expected = drive.observed(ref, ref_client)
    drive.assert_same(drive.observed(node, client), expected)
    assert [(r.seq, r.kind, r.at) for r in node.log.records()] == [(r.seq, r.kind, r.at) for r in ref.log.records()]
    node.log.close()                                # the process dies (no drain)
    again, client2 = drive.make(tmp_path / "a", 0, clock)
    drive.assert_same(drive.observed(again, client2), expected)


class _CommitThenBlind(_CommitThenRaise):
    """As :class:`_CommitThenRaise`, and every read of the log after the failed commit fails too."""

    def execute(self, sql, *args):
        if self.left == 0 and sql.startswith("SELECT"):
            raise __import__("sqlite3").OperationalError("disk I/O error")
        return super().execute(sql, *args)


def _log_blind_after_a_failed_commit(make_node, seed: int):
    """A node that took 10 rows, then failed to commit 10 more (503) and could not read its log
    back; the disk readable again. Returns ``(clock, node, client, rows)``."""
    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(seed)
    _, rows = population_rows(rng, 20, 3)
    assert post_behaviors(client, rows[:10]).status_code == 200
    assert client.get("/healthz").status_code == 200
    with _failing_commit(node, _CommitThenBlind, landed=True):
        r = post_behaviors(client, rows[10:])
        assert r.status_code == 503 and r.headers["Retry-After"]
    return clock, node, client, rows


def test_a_log_that_cannot_tell_what_a_failed_commit_left_is_not_ready_until_a_restart(make_node):
    clock, node, client, rows = _log_blind_after_a_failed_commit(make_node, 4)
    # the disk is readable again: still refused, the node cannot know what it holds
    assert post_behaviors(client, rows[10:]).status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "restart" in ready.json()["error"]
    assert metric(client, "swarmguard_log_needs_restart") == 1
    node.close()
    _, again, client2 = make_node(clock=clock)           # the restart: the file decides
    assert client2.get("/readyz").status_code == 200
    assert len(again.populations["behaviors"].window) == 20 and again.replayed == 2
    assert post_behaviors(client2, rows[:5]).status_code == 200


def test_a_log_that_needs_a_restart_fails_the_liveness_probe_so_an_orchestrator_restarts_the_node(make_node):
    # /healthz is the liveness probe: a node whose log refuses every write until a restart
    # never heals by waiting, so /healthz says so (503, one line of JSON naming why), as /readyz does
    clock, node, client, _ = _log_blind_after_a_failed_commit(make_node, 5)
    live = client.get("/healthz")
    assert live.status_code == 503 and live.headers["content-type"] == "application/json"
    assert "\n" not in live.text and list(live.json()) == ["error"]
    assert "needs a restart" in live.json()["error"] and node.log.broken in live.json()["error"]
    assert client.get("/readyz").status_code == 503
    node.close()
    _, _, client2 = make_node(clock=clock)               # the restart the probe asked for
    assert client2.get("/healthz").status_code == 200 and client2.get("/readyz").status_code == 200


def test_the_503_of_a_write_the_log_cannot_tell_about_does_not_say_nothing_was_stored(make_node):
    # the write whose commit was reported failed and whose read-back failed may be in the file
    # (here it is: the restart replays it), so its answer must not promise that nothing was stored
    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(5)
    _, rows = population_rows(rng, 20, 3)
    with _failing_commit(node, _CommitThenBlind, landed=True):
        r = post_behaviors(client, rows)
    assert r.status_code == 503
    error = r.json()["error"]
    assert "nothing was stored" not in error and "restart" in error
    node.close()
    _, again, _ = make_node(clock=clock)
    assert len(again.populations["behaviors"].window) == 20        # it was stored



def test_a_node_whose_log_needs_a_restart_drains_without_raising(make_node):
    # SIGTERM's drain would log the open window's close and a snapshot, neither of which the log
    # takes: it raised, so the shutdown failed and node.close() (peer threads, detectors, the
    # log) never ran; the restart rebuilds the window from the file
    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(7)
    _, rows = population_rows(rng, 10, 3)
    assert post_behaviors(client, rows).status_code == 200
    with _failing_commit(node, _CommitThenBlind, landed=False):
        assert post_behaviors(client, rows).status_code == 503 and node.log.broken is not None
    assert node.drain() == [] and node.state == "draining"
    assert len(node.log) == 1 and node.log.latest_snapshot() is None   # nothing written
    node.close()
    _, again, _ = make_node(clock=clock)
    assert len(again.populations["behaviors"].window) == 10 and again.replayed == 1


def test_a_log_that_needs_a_restart_does_not_fail_a_window_close_at_every_tick(tmp_path, tokens_file):
    # the background closer would try (and fail, 500 in errors_total, a traceback in the log) twice
    # a second until the restart: the close cannot be written, so it is not tried
    from fastapi.testclient import TestClient

    from swarmguard.apps.serve import ServeNode, ServeSettings, create_app

    clock = ManualClock()
    settings = ServeSettings(clock=clock, close_windows=True, window_seconds=0.4, warm_up=20,
                             tokens_file=tokens_file)
    node = ServeNode(settings, tmp_path / "data")
    rng = np.random.default_rng(6)
    _, rows = population_rows(rng, 10, 3)
    with TestClient(create_app(settings, node), raise_server_exceptions=False) as client:
        assert post_behaviors(client, rows).status_code == 200
        with _failing_commit(node, _CommitThenBlind, landed=False):
            assert post_behaviors(client, rows).status_code == 503 and node.log.broken is not None
        clock.t += 10.0                                    # the open window is due
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(client, "swarmguard_errors_total", code="window", status="500") == 0
        assert node.opened_at is not None                  # the window stays open until the restart
    node.close()


@pytest.mark.parametrize("failure", ["refused", "cannot-tell"])
def test_a_drain_whose_window_close_cannot_be_written_does_not_raise(make_node, failure):
    # SIGTERM's drain logs the open window's close: a write that fails then (a full disk, or one
    # whose read-back fails too, which breaks the log during the drain) raised ApiError, so the
    # shutdown failed and node.close() never ran; the window stays open in the file, and the
    # restart rebuilds it
    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(8)
    _, rows = population_rows(rng, 10, 3)
    assert post_behaviors(client, rows).status_code == 200
    with _failing_commit(node, _CommitThenRaise if failure == "refused" else _CommitThenBlind, landed=False):
        assert node.drain() == [] and node.state == "draining"
    assert node.opened_at is not None and node.log.latest_snapshot() is None   # no snapshot of an open window
    node.close()
    _, again, _ = make_node(clock=clock)
    assert len(again.populations["behaviors"].window) == 10 and again.replayed == 1


def test_a_log_that_needs_a_restart_refuses_spans_before_keeping_them(tmp_path):
    # a span request was numbered for the group commit and applied in memory before commit_through
    # found the log refusing writes: 503, yet its spans counted in the open window and its record
    # waited in memory for a commit that never comes, so the window filled with refused spans (then
    # 429 "retry after it closes", for a window that cannot close until the restart)
    pytest.importorskip("opentelemetry.proto")
    from . import _snapshot_driver as drive

    ops = drive.build_ops(1, agents=20)
    spans = [op for op in ops if op[0] == "spans"]
    clock = drive.OpClock()
    node, client = drive.make(tmp_path / "a", 0, clock)
    assert drive.run_op(client, clock, 0, ops[0])
    with _failing_commit(node, _CommitThenBlind, landed=False):
        assert not drive.run_op(client, clock, 1, ops[1]) and node.log.broken is not None
    ingest = next(x for x in node.extensions if type(x).__name__ == "SpanIngest")
    r = client.post("/v1/traces", content=spans[0][1], headers={**drive.PB, "Authorization": "Bearer t-ingest"})
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert ingest.pending_spans == 0 and node.log._pending == [] and node.opened_at is not None
    assert node.log.last_seq() == 2                     # no number given out for it


def test_the_503_of_a_commit_that_read_back_as_none_does_not_say_nothing_was_stored(make_node):
    # after an fsync of the WAL that fails, the read-back sees none of the commit's rows, yet its
    # frames can be in the file and a kill -9 restart replays them (README: still at least once),
    # so the 503 promises only that nothing was applied
    clock = ManualClock()
    _, node, client = make_node(clock=clock)
    rng = np.random.default_rng(9)
    _, rows = population_rows(rng, 10, 3)
    with _failing_commit(node, _CommitThenRaise, landed=False):
        r = post_behaviors(client, rows)
    assert r.status_code == 503 and node.log.broken is None
    error = r.json()["error"]
    assert "nothing was stored" not in error and "nothing was applied" in error
    assert len(node.populations["behaviors"].window) == 0
