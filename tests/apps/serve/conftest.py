"""Shared pieces of the serve tests: a manual clock, tokens, a node and its in-process client."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from swarmguard.apps.serve import ServeNode, ServeSettings, create_app  # noqa: E402

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
secret = "t-read"
role = "read"
[[token]]
sha256 = "{admin_sha}"
role = "admin"
source = "admin-src"
"""
ADMIN_SECRET = "t-admin"
NDJSON = {"Content-Type": "application/x-ndjson"}


class ManualClock:
    """A clock the test moves."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def lines(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def population_rows(rng, n: int, d: int, shifted=(), shift=15.0, cohort=None):
    X = rng.normal(size=(n, d))
    for i in shifted:
        X[i] += shift
    return X, [{"agent_id": f"a-{i}", "features": X[i].tolist(), **({"cohort": cohort(i)} if cohort else {})}
               for i in range(n)]


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    import hashlib

    path = tmp_path / "tokens.toml"
    path.write_text(TOKENS.format(admin_sha=hashlib.sha256(ADMIN_SECRET.encode()).hexdigest()))
    return path


@pytest.fixture
def make_node(tmp_path: Path, tokens_file: Path):
    """A factory of (settings, node, client) over one data folder (a restart is a second call)."""
    made = []

    def make(clock=None, data_dir=None, **options):
        settings = ServeSettings(clock=clock or ManualClock(), close_windows=False, warm_up=20,
                                 tokens_file=options.pop("tokens_file", tokens_file), **options)
        node = ServeNode(settings, data_dir or tmp_path / "data")
        client = TestClient(create_app(settings, node), raise_server_exceptions=False)
        made.append(node)
        return settings, node, client

    yield make
    for node in made:
        try:
            node.close()
        except Exception:
            pass


@pytest.fixture
def served(make_node):
    return make_node()


def post_behaviors(client, rows, token="t-ingest", **headers):
    return client.post("/v1/behaviors", content=lines(rows), headers={**NDJSON, **auth(token), **headers})


def post_evidence(client, rows, token="t-obs7"):
    return client.post("/v1/evidence", content=lines(rows), headers={**NDJSON, **auth(token)})


def close_window(client):
    r = client.post("/v1/admin/close-window", headers=auth(ADMIN_SECRET))
    assert r.status_code == 200, r.text
    return r.json()["closed"]


def metric(client, name: str, **labels) -> float:
    """The value of one sample of /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics", headers=auth("t-read")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


__all__ = ["ManualClock", "auth", "lines", "population_rows", "post_behaviors", "post_evidence",
           "close_window", "metric", "ADMIN_SECRET", "NDJSON", "np"]


def slowed_round(node, monkeypatch, *, hold_after_round: bool = False, wait: float = 10.0):
    """Make the behaviours population's round wait for ``release`` (before it starts, or once
    it ran: its evidence added, the agent table not yet swapped in); ``started`` is set then.
    Returns ``(started, release)``; each wait gives up after ``wait`` seconds."""
    import threading

    started, release = threading.Event(), threading.Event()
    detector = node.populations["behaviors"].detector
    original = detector.process_round

    def slowed(*args, **kwargs):
        if not hold_after_round:
            started.set()
            release.wait(wait)
        result = original(*args, **kwargs)
        if hold_after_round:
            started.set()
            release.wait(wait)
        return result

    monkeypatch.setattr(detector, "process_round", slowed)
    return started, release


def in_thread(fn):
    """Run ``fn`` in a daemon thread; returns ``(thread, box)``, ``box["value"]`` its result."""
    import threading

    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    thread.start()
    return thread, box


def hold_with_published_view(node, wait: float = 10.0):
    """Hold ``node.lock`` with a read view published, as a window close does, in a thread,
    until ``release`` is set (or ``wait`` seconds pass); returns ``(holder, held, release)``,
    ``held`` set once the view is up."""
    import threading

    from swarmguard.apps.serve.read_view import publish_view

    held, release = threading.Event(), threading.Event()

    def hold_as_a_close_does():
        with node.lock:
            node.read_view = publish_view(node)
            held.set()
            release.wait(wait)
            node.read_view = None

    holder, _ = in_thread(hold_as_a_close_does)
    return holder, held, release


def wait_ready(base_url: str, deadline_s: float = 60.0) -> None:
    """Poll ``base_url``'s ``/readyz`` until it answers 200; fail the test after ``deadline_s``."""
    import time

    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the node did not become ready in {deadline_s:g} s")


def start_uvicorn(config):
    """``uvicorn.Server(config)`` run in a daemon thread, once it has started (at most 30 s, or the
    thread's death, fails the test): (server, thread, port of its first socket)."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


@contextlib.contextmanager
def uvicorn_in_thread(config, join_s: float = 30.0):
    """:func:`start_uvicorn` as a context: yields (server, port); on leaving, asks the server to
    exit and joins its thread (a server still running after ``join_s`` fails the test)."""
    server, thread, port = start_uvicorn(config)
    try:
        yield server, port
    finally:
        server.should_exit = True
        thread.join(timeout=join_s)
    assert not thread.is_alive()


@contextlib.contextmanager
def closing_in_thread(close, started, release, wait: float = 10.0):
    """Run ``close`` (a window close whose round :func:`slowed_round` holds) in a thread and
    yield that thread once the round has started; on leaving, release the round and join the
    thread (at most ``wait`` seconds: a hang fails the test, it does not block the run)."""
    closer, _ = in_thread(close)
    try:
        assert started.wait(wait)
        yield closer
    finally:
        release.set()
        closer.join(wait)
