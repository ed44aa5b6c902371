"""The peer sync threads start once the node is whole and are gone when it has closed."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from swarmguard.apps.serve.http_errors import ApiError
from swarmguard.apps.serve.peers import replication_of

from .conftest import close_window, post_behaviors
from .test_peers_node import _rows, pair  # noqa: F401 - the fixture


@pytest.fixture
def black_hole():
    """A loopback port that takes connections and never answers (a peer stuck mid-request)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _sync_threads(url):
    return [t for t in threading.enumerate() if t.name == f"peer-sync-{url}"]


def test_close_waits_for_a_sync_thread_stuck_in_a_request_and_nothing_joins_after(pair, black_hole):  # noqa: F811
    clock, node = pair
    _, eu, eu_c = node("eu", peers=(black_hole,), sync_seconds=0.05)
    assert post_behaviors(eu_c, _rows(np.random.default_rng(5), "e", 20)).status_code == 200
    close_window(eu_c)                                   # pokes the thread: it connects and waits
    deadline = time.monotonic() + 5
    while replication_of(eu).links[0].failures == 0 and time.monotonic() < deadline:
        time.sleep(0.05)                                 # at least one exchange ran into the hole
    assert _sync_threads(black_hole), "the sync thread should be running"
    replication = replication_of(eu)
    _, us, _ = node("us")
    delta = replication_of(us).replicas.delta_since(None).to_bytes()
    eu.close()
    assert _sync_threads(black_hole) == []
    before = replication.vectors()
    with pytest.raises(ApiError) as refused:
        replication.receive(delta)
    assert refused.value.status == 503
    assert replication.vectors() == before


def test_threads_start_only_after_the_log_replayed(pair, black_hole, monkeypatch):  # noqa: F811
    from swarmguard.apps.serve import node as node_module

    def broken(self):
        raise RuntimeError("replay failed")

    monkeypatch.setattr(node_module.ServeNode, "replay", broken)
    clock, node = pair
    with pytest.raises(RuntimeError, match="replay failed"):
        node("eu", peers=(black_hole,), sync_seconds=0.05)
    assert _sync_threads(black_hole) == []
