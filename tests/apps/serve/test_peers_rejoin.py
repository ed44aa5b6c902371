"""Rejoining: a node back from its data dir catches up by delta; a new node gets one full transfer, then deltas."""

from __future__ import annotations

import gzip

import numpy as np

from swarmguard.apps.serve.peers import WIRE_GZIP_LEVEL, PeerLink, replication_of

from .conftest import auth, close_window, metric, post_behaviors
from .test_peers_node import PEER_HEADERS, _rows, pair  # noqa: F401 - the fixture


def _view(client):
    body = client.get("/v1/cluster", headers=auth("t-read")).json()
    return body["populations"], body["version_vector"]


def _sync(src, dst_client, link):
    ok = replication_of(src).sync_once(link, dst_client, PEER_HEADERS)
    assert ok, link.last_error
    return link


def _full_size(node) -> int:
    """The node's whole state as one delta, as it travels (gzip, the wire's level)."""
    return len(gzip.compress(replication_of(node).replicas.delta_since(None).to_bytes(), WIRE_GZIP_LEVEL))


def test_restart_catches_up_by_delta_and_a_new_node_by_one_full_transfer(pair):  # noqa: F811
    clock, node = pair
    rng = np.random.default_rng(11)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_behaviors(eu_c, _rows(rng, "e", 1500))
    post_behaviors(us_c, _rows(rng, "u", 1500))
    close_window(eu_c)
    close_window(us_c)
    eu_to_us = _sync(eu, us_c, PeerLink("http://us"))
    assert _view(eu_c) == _view(us_c)
    us.close()                                          # us is down: eu goes on writing
    post_behaviors(eu_c, _rows(rng, "e2", 5))
    close_window(eu_c)
    _, us2, us2_c = node("us")                           # back from its data dir (its log)
    full = _full_size(eu)
    us_to_eu = _sync(us2, eu_c, PeerLink("http://eu"))  # a fresh process: first contact asks for vectors
    assert _view(us2_c) == _view(eu_c)
    assert _view(us2_c)[0]["behaviors"]["count"] == 3005
    # the catch-up is the 5 new registers, not the 3005: well under a tenth of the full state
    # (a delta has a fixed ~1 kB, gzip of the npz headers of about 20 arrays)
    assert 0 < us_to_eu.bytes_received * 10 < full
    assert us_to_eu.bytes_shipped * 10 < full           # nor did us push its state back
    assert metric(us2_c, "swarmguard_peer_bytes_received_total", peer="http://eu") == us_to_eu.bytes_received
    _sync(eu, us2_c, eu_to_us)                          # eu's old link still holds: us has what it answered
    # a new node (empty data dir) joins: one full transfer from eu, then deltas from us
    _, ap, ap_c = node("ap")
    ap_to_eu = _sync(ap, eu_c, PeerLink("http://eu"))
    assert _view(ap_c)[0] == _view(eu_c)[0]
    assert ap_to_eu.bytes_received >= 0.9 * full       # eu's whole state (ap's own freshness aside)
    ap_to_us = _sync(ap, us2_c, PeerLink("http://us"))
    assert ap_to_us.bytes_received * 10 < full
    assert _view(ap_c)[0] == _view(us2_c)[0] == _view(eu_c)[0]


def test_a_delta_made_since_vectors_the_receiver_lacks_is_409_and_the_sender_asks_again(pair):  # noqa: F811
    _, node = pair
    rng = np.random.default_rng(12)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    _, ap, ap_c = node("ap")
    post_behaviors(us_c, _rows(rng, "u", 20))
    close_window(us_c)
    link = _sync(eu, us_c, PeerLink("http://us"))          # eu now believes the peer holds us's 20
    post_behaviors(eu_c, _rows(rng, "e", 10))
    close_window(eu_c)
    # another node answers at that address (or us lost its data dir): the delta since us's vectors is refused
    assert not replication_of(eu).sync_once(link, ap_c, PEER_HEADERS)
    assert link.last_error.startswith("409") and link.vectors is None
    assert metric(ap_c, "swarmguard_errors_total", code="stale_delta", status="409") == 1.0
    assert _view(ap_c)[1] == {}                             # nothing changed there
    _sync(eu, ap_c, link)                                   # the next round asks first, then ships eu's state
    assert _view(ap_c)[0]["behaviors"]["region_counts"] == {"eu": 10, "us": 20}


def test_pull_and_vectors_need_a_peer_token_and_a_bad_pull_changes_nothing(pair):  # noqa: F811
    _, node = pair
    _, us, us_c = node("us")
    for method, path in (("GET", "/v1/peer/vectors"), ("POST", "/v1/peer/pull")):
        r = us_c.request(method, path, headers=auth("t-read"), content=b"{}")
        assert r.status_code == 403 and "peer" in r.json()["error"]
    assert us_c.get("/v1/peer/vectors", headers=PEER_HEADERS).json() == {
        "region": "us", "version_vector": {}, "vectors": {"populations": {}, "evidence": {}}}
    for body in (b"not json", b"[1]", b'{"vectors": {"populations": 3}}'):
        r = us_c.post("/v1/peer/pull", content=body, headers={**PEER_HEADERS, "Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("a pull is")
    assert metric(us_c, "swarmguard_errors_total", code="bad_pull", status="422") == 3.0
    assert _view(us_c)[1] == {}
