"""Two nodes in one process: peer deltas over the HTTP route, the cluster view, confidence, STRONG."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from swarmguard.apps.serve.peers import PeerLink, replication_of

from .conftest import ManualClock, auth, close_window, metric, post_behaviors, post_evidence

PEER_TOKENS = """
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
[[token]]
secret = "t-peer"
role = "peer"
"""
PEER_HEADERS = {"Content-Type": "application/octet-stream", **auth("t-peer")}


@pytest.fixture
def pair(tmp_path, make_node):
    tokens = tmp_path / "peer-tokens.toml"
    tokens.write_text(PEER_TOKENS)
    clock = ManualClock()

    def node(region, **options):
        return make_node(clock=clock, data_dir=tmp_path / region, region=region, tokens_file=tokens, **options)

    return clock, node


def _rows(rng, prefix, n, d=2):
    return [{"agent_id": f"{prefix}-{i}", "features": rng.normal(size=d).tolist()} for i in range(n)]


def _sync(src_node, dst_client, link):
    return replication_of(src_node).sync_once(link, dst_client, PEER_HEADERS)


def test_two_nodes_converge_by_delta_and_resending_changes_nothing(pair):
    clock, node = pair
    rng = np.random.default_rng(7)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    eu_rows, us_rows = _rows(rng, "e", 25), _rows(rng, "u", 30)
    assert post_behaviors(eu_c, eu_rows).status_code == 200
    assert post_behaviors(us_c, us_rows).status_code == 200
    close_window(eu_c)
    close_window(us_c)
    ev = [{"evidence_id": "ev-1", "agent_id": "e-3", "evidence_type": "anomaly", "log_odds": 2.0,
           "confidence": 0.9, "timestamp": clock.t}]
    assert post_evidence(eu_c, ev).status_code == 200
    to_us, to_eu = PeerLink("http://us"), PeerLink("http://eu")
    assert _sync(eu, us_c, to_us) and _sync(us, eu_c, to_eu)
    assert to_us.region == "us" and to_eu.region == "eu"
    a, b = eu_c.get("/v1/cluster", headers=auth("t-read")).json(), us_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert a["region"] == "eu" and b["region"] == "us"
    assert a["version_vector"] == b["version_vector"] == {"eu": 26, "us": 30}   # 25 registers + 1 evidence row
    assert a["populations"]["behaviors"] == b["populations"]["behaviors"]
    assert a["populations"]["behaviors"]["count"] == 55
    # the replicated mean is the exact mean of the 55 latest vectors (correctly rounded)
    for j in range(2):
        exact = sum(Fraction(r["features"][j]) for r in eu_rows + us_rows) / 55
        assert a["populations"]["behaviors"]["mean"][j] == float(exact)
    us_pop = us.populations["behaviors"]
    assert us_pop.consensus_of("e-3")["evidence_count"] == 1      # eu's evidence reached us
    # a second delivery of everything: nothing changes, and nothing is logged for an empty delta
    before = us_c.get("/v1/cluster", headers=auth("t-read")).json()
    to_us.vectors = None
    assert _sync(eu, us_c, to_us)
    after = us_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert after["version_vector"] == before["version_vector"]
    assert after["populations"] == before["populations"]
    assert us_pop.consensus_of("e-3")["evidence_count"] == 1
    assert metric(eu_c, "swarmguard_peer_bytes_shipped_total", peer="http://us") == to_us.bytes_shipped > 0
    pops = us_c.get("/v1/populations", headers=auth("t-read")).json()
    assert pops["region"] == "us" and pops["confidence_factor"] == 1.0


def test_peer_route_needs_a_peer_token_and_refuses_garbage_whole(pair):
    _, node = pair
    _, us, us_c = node("us")
    r = us_c.post("/v1/peer/delta", content=b"x", headers={**PEER_HEADERS, **auth("t-read")})
    assert r.status_code == 403 and "peer" in r.json()["error"]
    r = us_c.post("/v1/peer/delta", content=b"not an npz", headers=PEER_HEADERS)
    assert r.status_code == 422 and r.json()["error"].startswith("not a peer delta")
    assert metric(us_c, "swarmguard_errors_total", code="bad_delta", status="422") == 1.0
    assert us_c.get("/v1/cluster", headers=auth("t-read")).json()["version_vector"] == {}


def test_restart_replays_received_deltas(pair, tmp_path):
    _, node = pair
    rng = np.random.default_rng(3)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_behaviors(eu_c, _rows(rng, "e", 25))
    close_window(eu_c)
    assert _sync(eu, us_c, PeerLink("http://us"))
    want = us_c.get("/v1/cluster", headers=auth("t-read")).json()
    us.close()
    _, us2, us2_c = node("us")
    got = us2_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert got["version_vector"] == want["version_vector"] == {"eu": 25}
    assert got["populations"] == want["populations"]


def test_confidence_decays_while_a_peer_is_silent_and_returns_after_sync(pair):
    clock, node = pair
    rng = np.random.default_rng(5)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_behaviors(eu_c, _rows(rng, "e", 20))
    post_behaviors(us_c, _rows(rng, "u", 30))
    close_window(eu_c)
    close_window(us_c)
    to_us = PeerLink("http://us")
    assert _sync(eu, us_c, to_us)
    pops = lambda: us_c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"]  # noqa: E731
    assert pops() == 1.0
    clock.t += 25.0                                  # 25 s without word from eu (staleness limit 5 s, decay 0.1/s)
    want = (30 * 1.0 + 20 * math.exp(-0.1 * (25.0 - 5.0))) / 50
    assert pops() == pytest.approx(want, rel=1e-12)
    assert _sync(eu, us_c, to_us)                    # heal: eu's freshness arrives with the delta
    assert pops() == 1.0


def test_strong_refuses_writes_without_a_majority_statistical_accepts(pair):
    _, node = pair
    rng = np.random.default_rng(1)
    closed = ("http://127.0.0.1:9", "http://127.0.0.1:9")    # port 9 (discard): nothing listens
    _, strong, strong_c = node("eu", peers=closed, consistency="strong", sync_seconds=1000.0)
    r = post_behaviors(strong_c, _rows(rng, "e", 3))
    assert r.status_code == 503 and "not a majority" in r.json()["error"]
    assert strong.window_rows == 0
    _, stat, stat_c = node("us", peers=closed, sync_seconds=1000.0)
    assert post_behaviors(stat_c, _rows(rng, "u", 3)).status_code == 200



def test_an_idle_cluster_ships_contacts_not_deltas_and_stays_confident(pair):
    """No writes for several rounds: each push and pull answer is a "nothing new" contact of a
    few hundred bytes (an empty npz delta, gzipped, is ~1 kB), and it still counts as contact:
    both nodes' confidence factor stays 1 although each round is past the staleness limit."""
    import gzip

    clock, node = pair
    rng = np.random.default_rng(11)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_behaviors(eu_c, _rows(rng, "e", 20))
    post_behaviors(us_c, _rows(rng, "u", 30))
    close_window(eu_c)
    close_window(us_c)
    to_us, to_eu = PeerLink("http://us"), PeerLink("http://eu")
    assert _sync(eu, us_c, to_us) and _sync(us, eu_c, to_eu)
    assert _sync(eu, us_c, to_us) and _sync(us, eu_c, to_eu)      # both now know the other's vectors
    confidence = lambda c: c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"]  # noqa: E731
    view = lambda c: c.get("/v1/cluster", headers=auth("t-read")).json()  # noqa: E731
    before = view(eu_c), view(us_c)
    with eu.lock:
        empty_delta = len(gzip.compress(replication_of(eu).replicas.delta_since(to_us.vectors).to_bytes(), 1))
    wire = [to_us.bytes_shipped + to_us.bytes_received, to_eu.bytes_shipped + to_eu.bytes_received]
    rounds = 6
    for _ in range(rounds):
        clock.t += 10.0                               # past the 5 s staleness limit every round
        assert _sync(eu, us_c, to_us) and _sync(us, eu_c, to_eu)
        assert confidence(eu_c) == confidence(us_c) == 1.0
    idle = [to_us.bytes_shipped + to_us.bytes_received - wire[0], to_eu.bytes_shipped + to_eu.bytes_received - wire[1]]
    # per round and link: one push and one pull answer, each a contact far below an empty delta
    assert all(0 < b <= rounds * 2 * 400 for b in idle), idle
    assert all(b * 2 < rounds * 2 * empty_delta for b in idle), (idle, empty_delta)
    after = view(eu_c), view(us_c)
    for b, a in zip(before, after, strict=True):      # contacts changed no register, vector or evidence
        assert a["version_vector"] == b["version_vector"] and a["populations"] == b["populations"]
        assert a["evidence"] == b["evidence"]
    assert metric(eu_c, "swarmguard_peer_bytes_shipped_total", peer="http://us") == to_us.bytes_shipped


def test_a_contact_claiming_vectors_the_node_lacks_is_refused_and_changes_nothing(pair):
    clock, node = pair
    rng = np.random.default_rng(13)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_behaviors(eu_c, _rows(rng, "e", 5))
    close_window(eu_c)
    with eu.lock:
        vectors = replication_of(eu).vectors().to_json()
    contact = {"contact": 1, "sender": "eu", "vectors": vectors,
               "freshness": {n: {"eu": clock.t + 50.0} for n in vectors["populations"]}}
    headers = {**PEER_HEADERS, "Content-Type": "application/json"}
    before = us_c.get("/v1/cluster", headers=auth("t-read")).json()
    r = us_c.post("/v1/peer/delta", json=contact, headers=headers)
    assert r.status_code == 409 and "contact" in r.json()["error"]
    r = us_c.post("/v1/peer/delta", content=b'{"contact": 1}', headers=headers)
    assert r.status_code == 422 and r.json()["error"].startswith("not a peer contact")
    after = us_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert after == before
