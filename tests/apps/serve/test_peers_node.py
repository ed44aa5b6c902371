"""Two nodes in one process: peer deltas over the HTTP route, the cluster view, confidence, STRONG."""

from __future__ import annotations

import contextlib
import math
from fractions import Fraction

import numpy as np
import pytest

from swarmguard.apps.serve.peer_delta import LocalReplicas
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


def _two_fed_regions(node, rng, n_eu, n_us):
    """Nodes "eu" and "us", each fed its own rows (prefixes e-, u-) with its window closed."""
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    assert post_behaviors(eu_c, _rows(rng, "e", n_eu)).status_code == 200
    assert post_behaviors(us_c, _rows(rng, "u", n_us)).status_code == 200
    close_window(eu_c)
    close_window(us_c)
    return eu, eu_c, us, us_c


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


def _delta_with_score(score: float) -> bytes:
    """A delta from region "eu" (no node behind it) of two "behaviors" registers, the second
    with anomaly score ``score``."""
    eu = LocalReplicas("eu")
    eu.replica_of("behaviors", 2).update_many(["e-1", "e-2"], [1.0, 1.0], [[0.5, 1.0], [2.0, -1.0]],
                                              [1.5, score], now=1.0)
    return eu.replica_set().delta_since(None, now=1.0).to_bytes()


def test_a_peer_delta_with_a_score_below_zero_is_refused_whole(pair):
    """A register's score is a squared distance; below 0 its ln p would be NaN here."""
    _, node = pair
    _, us, us_c = node("us")
    r = us_c.post("/v1/peer/delta", content=_delta_with_score(-0.25), headers=PEER_HEADERS)
    assert r.status_code == 422 and "\n" not in r.text.strip()
    assert r.json()["error"].startswith("peer delta refused, nothing changed") and "below 0" in r.json()["error"]
    assert metric(us_c, "swarmguard_errors_total", code="bad_delta", status="422") == 1.0
    assert us_c.get("/v1/cluster", headers=auth("t-read")).json()["version_vector"] == {}
    assert us_c.get("/v1/agents/e-1", headers=auth("t-read")).status_code == 404
    # the same delta with the score at 0 joins whole
    r = us_c.post("/v1/peer/delta", content=_delta_with_score(0.0), headers=PEER_HEADERS)
    assert r.status_code == 200, r.text
    assert us_c.get("/v1/cluster", headers=auth("t-read")).json()["version_vector"] == {"eu": 2}
    assert us_c.get("/v1/agents/e-2", headers=auth("t-read")).json()["score"] == 0.0


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
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 20, 30)
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



def test_a_delta_of_another_dimension_than_the_open_window_is_refused_and_the_window_closes_whole(pair):
    """Regression: a peer's 3-d delta joined into a node whose open window held 2-d vectors (no
    replica yet) fixed the resolver's dimension to 3, and the window's acknowledged rows were
    dropped at its close."""
    clock, node = pair
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    rng = np.random.default_rng(1)
    assert post_behaviors(eu_c, _rows(rng, "e", 25, d=2)).status_code == 200    # eu's window: open, 2-d
    assert post_behaviors(us_c, _rows(rng, "u", 25, d=3)).status_code == 200
    close_window(us_c)
    before = replication_of(eu).vectors()
    r = eu_c.post("/v1/peer/delta", content=replication_of(us).replicas.delta_since(None).to_bytes(),
                  headers=PEER_HEADERS)
    assert r.status_code == 422 and "dimension" in r.json()["error"], r.text
    assert replication_of(eu).vectors() == before
    closed = close_window(eu_c)
    assert [c["agents"] for c in closed] == [25], closed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_delta_with_a_non_finite_evidence_number_is_422_and_changes_nothing(pair, bad):
    """Regression: json.loads reads NaN / Infinity; two such rows under one key reached the
    conflict alias, whose JSON refuses them: a 500 instead of the documented 422."""
    import json

    from swarmguard.values.npz import dict_from_bytes, dict_to_bytes

    clock, node = pair
    _, eu, eu_c = node("eu")
    _, us, _ = node("us")
    state = dict_from_bytes(replication_of(us).replicas.delta_since(None).to_bytes(), "delta")
    row = ["x-1", "agent-1", "behavioral_anomaly", bad, 0.9, clock.t, "observer-7"]
    blob = json.dumps([["us", 1, *row], ["us", 2, *row]]).encode("utf-8")
    state["evidence.json"] = np.frombuffer(blob, dtype=np.uint8)
    before = replication_of(eu).vectors()
    r = eu_c.post("/v1/peer/delta", content=dict_to_bytes(state), headers=PEER_HEADERS)
    assert r.status_code == 422 and "finite" in r.json()["error"], r.text
    assert replication_of(eu).vectors() == before


def test_a_window_closed_early_does_not_stamp_its_vectors_with_the_future_window_end(pair):
    """Regression: vectors were stamped with their window's end also when the window closed
    early (admin close, drain): a write on ``us`` closed early then tied, at that future end, with a
    later write of the same agent on ``eu`` closed before it, and won the tie (``us`` sorts last)."""
    clock, node = pair
    clock.t = 60.0 * 16667                                    # an aligned window starts: both writes fall in it
    _, us, us_c = node("us", window_seconds=60.0)
    _, eu, eu_c = node("eu", window_seconds=60.0)
    assert post_behaviors(us_c, [{"agent_id": "x", "features": [1.0, 1.0]}]).status_code == 200
    clock.t += 1
    close_window(us_c)                                        # early: the window ends in 59 s
    clock.t += 4
    assert post_behaviors(eu_c, [{"agent_id": "x", "features": [2.0, 2.0]}]).status_code == 200
    clock.t += 5
    close_window(eu_c)                                        # early too, and later than us's close
    assert _sync(us, eu_c, PeerLink("http://eu")) and _sync(eu, us_c, PeerLink("http://us"))
    for n in (us, eu):
        replica = replication_of(n).replicas.replicas()["behaviors"]
        assert replica.estimate().count == 1 and replica.estimate().mean.tolist()[:2] == [2.0, 2.0]


def test_an_idle_cluster_ships_contacts_not_deltas_and_stays_confident(pair):
    """No writes for several rounds: each push and pull answer is a "nothing new" contact of a
    few hundred bytes (an empty npz delta, gzipped, is ~1 kB), and it still counts as contact:
    both nodes' confidence factor stays 1 although each round is past the staleness limit."""
    import gzip

    clock, node = pair
    rng = np.random.default_rng(11)
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 20, 30)
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


def test_a_contact_with_a_future_freshness_time_does_not_keep_confidence_up(pair):
    """A contact claiming it heard a region far in the future (a forged or skewed clock) is
    read at the receiver's now: once the staleness limit passes without contact, confidence
    drops as it would after a truthful contact."""
    clock, node = pair
    rng = np.random.default_rng(17)
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 5, 5)
    to_us = PeerLink("http://us")
    assert _sync(eu, us_c, to_us) and _sync(eu, us_c, to_us)
    with eu.lock:
        vectors = replication_of(eu).vectors().to_json()
    with us.lock:
        held = set(replication_of(us).vectors().populations)
    vectors["populations"] = {n: v for n, v in vectors["populations"].items() if n in held}
    contact = {"contact": 1, "sender": "eu", "vectors": vectors,
               "freshness": {n: {"eu": clock.t + 1e6} for n in vectors["populations"]}}
    r = us_c.post("/v1/peer/delta", json=contact, headers={**PEER_HEADERS, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    confidence = lambda: us_c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"]  # noqa: E731
    assert confidence() == 1.0
    clock.t += 60.0                                   # far past the 5 s staleness limit, no contact since
    assert confidence() < 1.0


class _Relabelled:
    """A peer client whose every answer (and request) carries ``label`` as its Content-Type,
    as a misconfigured proxy between two nodes might do."""

    def __init__(self, client, label):
        self.client, self.label = client, label

    def __getattr__(self, name):
        return getattr(self.client, name)

    @contextlib.contextmanager
    def stream(self, method, url, **kwargs):
        kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": self.label}
        with self.client.stream(method, url, **kwargs) as response:
            response.headers["content-type"] = self.label
            yield response


@pytest.mark.parametrize("label", ["application/json", "application/octet-stream"])
def test_deltas_and_contacts_are_told_apart_by_their_body_not_their_label(pair, label):
    """A delta labelled JSON and a contact labelled octet-stream (by a proxy) still join: the
    nodes converge and the idle rounds after it still count as contact."""
    clock, node = pair
    rng = np.random.default_rng(19)
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 6, 7)
    to_us = PeerLink("http://us")
    relabelled = _Relabelled(us_c, label)
    for _ in range(3):                                # delta both ways, then contacts both ways
        assert _sync(eu, relabelled, to_us), to_us.last_error
    view = lambda c: c.get("/v1/cluster", headers=auth("t-read")).json()  # noqa: E731
    assert view(eu_c)["version_vector"] == view(us_c)["version_vector"]
    assert view(eu_c)["evidence"] == view(us_c)["evidence"]
    clock.t += 10.0
    assert _sync(eu, relabelled, to_us), to_us.last_error
    confidence = lambda c: c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"]  # noqa: E731
    assert confidence(eu_c) == confidence(us_c) == 1.0


def test_a_valid_contact_from_a_non_peer_token_is_403_and_changes_nothing(pair):
    clock, node = pair
    rng = np.random.default_rng(23)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_behaviors(eu_c, _rows(rng, "e", 5))
    close_window(eu_c)
    to_us = PeerLink("http://us")
    assert _sync(eu, us_c, to_us) and _sync(eu, us_c, to_us)
    with eu.lock:
        vectors = replication_of(eu).vectors().to_json()
    with us.lock:
        held = set(replication_of(us).vectors().populations)
    vectors["populations"] = {n: v for n, v in vectors["populations"].items() if n in held}
    clock.t += 60.0
    contact = {"contact": 1, "sender": "eu", "vectors": vectors,
               "freshness": {n: {"eu": clock.t} for n in vectors["populations"]}}
    before = us_c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"]
    for token in ("t-read", "t-ingest", "t-admin"):
        r = us_c.post("/v1/peer/delta", json=contact, headers=auth(token))
        assert r.status_code == 403 and "peer" in r.json()["error"], (token, r.text)
    assert us_c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"] == before < 1.0
    r = us_c.post("/v1/peer/delta", json=contact, headers=auth("t-peer"))   # the same contact, a peer's token
    assert r.status_code == 200, r.text
    assert us_c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"] == 1.0


def test_a_node_whose_log_needs_a_restart_pushes_but_does_not_pull_or_blame_the_peer(pair):
    # a pulled delta is joined through the log; on a node whose log refuses writes until a restart
    # every pull failed with 503, marked the healthy peer unreachable and counted a sync failure
    # against it every sync_seconds. Now: it pushes (the peer gets what it acknowledged), skips the
    # pull, counts no failure and keeps no last_sync (its confidence in the peer decays)
    clock, node = pair
    rng = np.random.default_rng(11)
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 20, 30)
    eu.log._broken = "records 9..9 may or may not be in the file after a failed commit (test)"
    to_us = PeerLink("http://us")
    before = eu_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert not _sync(eu, us_c, to_us)
    assert to_us.failures == 0 and to_us.reachable and to_us.last_sync is None
    assert "refuses writes until a restart" in to_us.last_error
    assert metric(eu_c, "swarmguard_peer_sync_failures_total", peer="http://us") == 0.0
    got = us_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert got["version_vector"] == {"eu": 20, "us": 30}                  # eu's registers reached us
    assert got["populations"]["behaviors"]["count"] == 50
    after = eu_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert after["version_vector"] == before["version_vector"] == {"eu": 20}   # nothing pulled into eu
    assert after["populations"] == before["populations"]


class _BreaksTheLogDuringThePull:
    """A client to a peer that, while the pull's request is in flight, breaks ``node``'s log (as a
    write of another thread whose commit failed half-way would)."""

    def __init__(self, client, node):
        self._client, self._node = client, node

    def stream(self, method, url, **kwargs):
        if url.endswith("/v1/peer/pull"):
            self._node.log._broken = "records 9..9 may or may not be in the file after a failed commit (test)"
        return self._client.stream(method, url, **kwargs)


def test_a_log_that_breaks_while_a_pull_is_in_flight_does_not_blame_the_peer(pair):
    # the log was checked once, before the pull: one breaking while the pull's answer was on its
    # way failed the join with 503 and counted a sync failure against the healthy peer
    clock, node = pair
    rng = np.random.default_rng(12)
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 20, 30)
    to_us = PeerLink("http://us")
    before = eu_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert not _sync(eu, _BreaksTheLogDuringThePull(us_c, eu), to_us)
    assert to_us.failures == 0 and to_us.reachable and to_us.last_sync is None
    assert "refuses writes until a restart" in to_us.last_error
    assert metric(eu_c, "swarmguard_peer_sync_failures_total", peer="http://us") == 0.0
    assert us_c.get("/v1/cluster", headers=auth("t-read")).json()["version_vector"] == {"eu": 20, "us": 30}
    after = eu_c.get("/v1/cluster", headers=auth("t-read")).json()
    assert after["version_vector"] == before["version_vector"] == {"eu": 20}   # nothing pulled into eu
    assert after["populations"] == before["populations"]


def test_a_node_whose_log_needs_a_restart_loses_confidence_until_a_contact_says_it_lacks_nothing(pair):
    # what the README says of it: pushing only, eu's view of us ages (decay 0.1/s past 5 s); us's own
    # push, a "nothing new" contact, is joined without a log write and restores it; us's rows eu
    # cannot take are refused 503 (counted by us, against eu) and the view ages again
    clock, node = pair
    rng = np.random.default_rng(13)
    eu, eu_c, us, us_c = _two_fed_regions(node, rng, 20, 30)
    to_us, to_eu = PeerLink("http://us"), PeerLink("http://eu")
    assert _sync(eu, us_c, to_us) and _sync(us, eu_c, to_eu)
    conf = lambda: eu_c.get("/v1/populations", headers=auth("t-read")).json()["confidence_factor"]  # noqa: E731
    assert conf() == 1.0
    eu.log._broken = "records 9..9 may or may not be in the file after a failed commit (test)"
    synced = to_us.last_sync
    clock.t += 25.0
    assert not _sync(eu, us_c, to_us) and to_us.last_sync == synced and to_us.failures == 0
    assert conf() == pytest.approx((20 + 30 * math.exp(-0.1 * (25.0 - 5.0))) / 50, rel=1e-12)
    assert _sync(us, eu_c, to_eu)                       # us lacks nothing from eu, eu nothing from us
    assert conf() == 1.0
    assert post_behaviors(us_c, _rows(rng, "v", 4)).status_code == 200
    close_window(us_c)
    clock.t += 25.0
    assert not _sync(us, eu_c, to_eu) and to_eu.failures == 1 and "503" in to_eu.last_error
    assert conf() == pytest.approx((20 + 30 * math.exp(-0.1 * (25.0 - 5.0))) / 50, rel=1e-12)


def _held_scores(node) -> list[float]:
    return sorted(replication_of(node).replicas.replicas()["behaviors"].registers.anomaly_scores().tolist())


@pytest.mark.parametrize("kept_in", ["log", "snapshot"])
def test_a_negative_score_an_older_node_holds_is_zero_after_restart_and_peers_take_its_delta(
        pair, monkeypatch, kept_in):
    """A node of an older version joined (and logged, or snapshotted) a delta holding a score
    below 0 before peers refused them: its restart holds that score as 0, so its next delta
    is accepted by a peer with the check on (else that peer would answer 422 on every sync)."""
    from swarmguard.apps.serve.peer_delta import ReplicaSet

    _, node = pair
    _, us, us_c = node("us")
    checked_plan = ReplicaSet.plan
    with monkeypatch.context() as m:      # the older version: no check, through the node's own log writing
        m.setattr(ReplicaSet, "plan", lambda self, delta, require_base=False, nonnegative_scores=False:
                  checked_plan(self, delta, require_base))
        r = us_c.post("/v1/peer/delta", content=_delta_with_score(-0.25), headers=PEER_HEADERS)
    assert r.status_code == 200, r.text
    assert _held_scores(us) == [-0.25, 1.5]
    _, jp, jp_c = node("jp")
    to_jp = PeerLink("http://jp")
    assert not _sync(us, jp_c, to_jp)                           # refused whole: the failure this fixes
    assert metric(jp_c, "swarmguard_errors_total", code="bad_delta", status="422") == 1.0
    if kept_in == "snapshot":
        us.drain()
        assert us.log.latest_snapshot() is not None and list(us.log.records(after=us.snapshots.covered)) == []
    us.close()
    _, us2, us2_c = node("us")
    assert _held_scores(us2) == [0.0, 1.5]
    assert us2_c.get("/v1/agents/e-2", headers=auth("t-read")).json()["score"] == 0.0
    assert _sync(us2, jp_c, PeerLink("http://jp"))
    assert jp_c.get("/v1/cluster", headers=auth("t-read")).json()["version_vector"] == {"eu": 2}
    assert _held_scores(jp) == [0.0, 1.5]
