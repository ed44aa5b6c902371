"""The app's own life: it builds its node in the background, closes windows on the clock, drains on exit."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from swarmguard.apps.serve import ServeSettings, create_app
from swarmguard.apps.serve.durable_log import CLOSE_WINDOW, DurableLog

from .conftest import auth, post_behaviors


def test_windows_close_on_the_clock(tmp_path, tokens_file):
    settings = ServeSettings(data_dir=tmp_path / "data", tokens_file=tokens_file, window_seconds=0.3, warm_up=5)
    app = create_app(settings)
    with TestClient(app) as client:
        for _ in range(200):                              # the node is built in the background
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
        assert post_behaviors(client, [{"agent_id": "a", "features": [1.0, 2.0]}]).status_code == 200
        for _ in range(100):                              # the ticker closes the window after ~0.3 s
            if client.get("/v1/agents/a", headers=auth("t-read")).status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/v1/agents/a", headers=auth("t-read")).status_code == 200


def test_shutdown_drains_and_closes_the_open_window(tmp_path, tokens_file):
    settings = ServeSettings(data_dir=tmp_path / "data", tokens_file=tokens_file, close_windows=False)
    app = create_app(settings)
    with TestClient(app) as client:
        for _ in range(200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert post_behaviors(client, [{"agent_id": "b", "features": [1.0, 2.0]}]).status_code == 200
        node = app.state.node
        assert "b" not in node.populations["behaviors"].agents
    assert node.state == "draining" and "b" in node.populations["behaviors"].agents
    stored = DurableLog(tmp_path / "data")
    records = list(stored.records())
    # closed, then snapshotted: the behaviours are in the snapshot, the close record it covers stays
    assert [r.kind for r in records] == [CLOSE_WINDOW]
    assert stored.latest_snapshot()[0] == records[0].seq
    stored.close()


def test_routes_answer_503_until_the_node_is_built(tmp_path, tokens_file):
    settings = ServeSettings(data_dir=tmp_path / "data", tokens_file=tokens_file, close_windows=False)
    app = create_app(settings)
    client = TestClient(app)                              # no lifespan: the node is never built
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json() == {"error": "node is starting"}
    r = client.get("/v1/agents", headers=auth("t-read"))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200


def test_a_node_that_cannot_replay_its_log_says_it_failed_instead_of_starting_forever(tmp_path, tokens_file, caplog):
    import sqlite3

    from swarmguard.apps.serve.durable_log import DurableLog

    DurableLog(tmp_path / "data").close()
    with sqlite3.connect(tmp_path / "data" / "node.sqlite") as db:     # a record no replay can read
        db.execute("INSERT INTO log (kind, at, body) VALUES ('behaviors', 1.0, x'7b6e6f74')")
    settings = ServeSettings(data_dir=tmp_path / "data", tokens_file=tokens_file, close_windows=False)
    app = create_app(settings)
    with caplog.at_level("ERROR", logger="swarmguard.serve"), TestClient(app) as client:
        for _ in range(200):
            r = client.get("/readyz")
            if r.json() != {"error": "node is starting"}:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and r.json() == {"error": "node failed to start: see its log"}
        r = client.get("/v1/agents", headers=auth("t-read"))
        assert r.status_code == 503 and "failed to start" in r.json()["error"]
    assert any("failed to start" in rec.getMessage() for rec in caplog.records)


def test_closing_a_node_runs_every_step_when_one_extensions_stop_fails_and_raises_that_error(tmp_path):
    import sqlite3

    import pytest

    from swarmguard.apps.serve import ServeNode

    node = ServeNode(ServeSettings(close_windows=False), tmp_path / "data")
    stopped = []

    class Failing:
        def stop(self):
            stopped.append("failing")
            raise RuntimeError("this extension could not stop")

    class Later:                        # e.g. the decode workers, after the peer sync threads
        def stop(self):
            stopped.append("later")

    node.extensions = [Failing(), *node.extensions, Later()]
    with pytest.raises(RuntimeError, match="this extension could not stop"):
        node.close()
    assert stopped == ["failing", "later"]
    with pytest.raises(sqlite3.ProgrammingError):          # the log was closed all the same
        node.log._db.execute("SELECT 1")
