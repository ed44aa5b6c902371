"""The evidence conflict rule across nodes: one key, two contents posted to two nodes, every node converges."""

from __future__ import annotations

import itertools

import pytest

from swarmguard.apps.serve.peers import PeerLink, conflict_alias, replication_of

from .conftest import post_evidence
from .test_peers_node import PEER_HEADERS, pair  # noqa: F401 - the fixture


def _ev(evidence_id, agent, log_odds, t):
    return {"evidence_id": evidence_id, "agent_id": agent, "evidence_type": "anomaly", "log_odds": log_odds,
            "confidence": 0.9, "timestamp": t}


def _consensus(node, agent):
    return node.populations["behaviors"].consensus_of(agent)


def _fields(node, agent):
    c = _consensus(node, agent)
    return (c["evidence_count"], c["log_odds"], c["probability"], c["consensus_reached"])


@pytest.mark.parametrize("order", list(itertools.permutations(["eu", "us"])))
def test_same_key_other_content_on_two_nodes_counts_twice_everywhere(pair, order):  # noqa: F811
    clock, node = pair
    nodes = {r: node(r) for r in ("eu", "us", "ap")}
    (_, eu, eu_c), (_, _, us_c), (_, _, ap_c) = nodes["eu"], nodes["us"], nodes["ap"]
    t = clock.t
    a, b = _ev("x-1", "agent-1", 2.0, t), _ev("x-1", "agent-1", 3.5, t)
    c = _ev("y-1", "agent-2", 1.25, t)
    assert post_evidence(eu_c, [a, c]).json()["accepted"] == 2
    assert post_evidence(us_c, [b]).json()["accepted"] == 1
    assert post_evidence(ap_c, [c]).json()["accepted"] == 1     # an observer's retry on another node
    links = {(s, d): PeerLink(f"http://{d}") for s in nodes for d in nodes if s != d}

    def sync(src, dst):
        assert replication_of(nodes[src][1]).sync_once(links[src, dst], nodes[dst][2], PEER_HEADERS), \
            links[src, dst].last_error

    # ap first hears of one content, then of the other (the two orders), then everyone syncs
    first, second = order
    sync(first, "ap")
    sync(second, "ap")
    for src, dst in itertools.permutations(nodes, 2):
        sync(src, dst)
    for src, dst in itertools.permutations(nodes, 2):          # a second round: resending changes nothing
        links[src, dst].vectors = None
        sync(src, dst)
    views = {r: _fields(n[1], "agent-1") for r, n in nodes.items()}
    assert views["eu"] == views["us"] == views["ap"]
    assert views["eu"][0] == 2                                # both contents count, once each
    retries = {r: _fields(n[1], "agent-2") for r, n in nodes.items()}
    assert retries["eu"] == retries["us"] == retries["ap"] and retries["eu"][0] == 1
    # the ledgers hold the same rows, each once
    ledgers = [replication_of(n[1]).replicas.ledger for n in nodes.values()]
    assert ledgers[0] == ledgers[1] == ledgers[2]
    # on the node that already holds the key, the other content is refused at ingest (that line alone)
    r = post_evidence(eu_c, [_ev("x-1", "agent-1", 9.0, t), _ev("z-1", "agent-3", 1.0, t)]).json()
    assert r["accepted"] == 1 and r["rejected"] == 1
    assert _fields(eu, "agent-1") == views["eu"]


def test_alias_is_the_content_hash_and_restart_rebuilds_the_same_counts(pair):  # noqa: F811
    clock, node = pair
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    a, b = _ev("x-1", "agent-1", 2.0, clock.t), _ev("x-1", "agent-1", -1.0, clock.t)
    post_evidence(eu_c, [a])
    post_evidence(us_c, [b])
    assert replication_of(us).sync_once(PeerLink("http://eu"), eu_c, PEER_HEADERS)
    want = _fields(eu, "agent-1")
    assert want[0] == 2
    row_b = replication_of(eu).replicas.ledger.rows_of("us")[0]       # us's row, as eu's ledger holds it
    assert row_b[0] == "x-1" and row_b[3] == -1.0 and row_b[6] == "observer-7"
    alias = conflict_alias(row_b)
    assert alias.startswith("~") and len(alias) == 33
    consensus = eu.populations["behaviors"].detector.consensus
    assert consensus.holds_evidence("observer-7", alias) and consensus.holds_evidence("observer-7", "x-1")
    eu.close()
    _, eu2, _ = node("eu")
    assert _fields(eu2, "agent-1") == want


def test_a_delta_delivered_three_times_then_replayed_counts_its_evidence_once(pair):  # noqa: F811
    """Pushed, pushed again from scratch vectors, and pulled: the receiver counts each evidence
    once, and so does the same node rebuilt from its log (replay is a join, not an add)."""
    clock, node = pair
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    post_evidence(eu_c, [_ev("d-1", "agent-1", 1.5, clock.t), _ev("d-2", "agent-1", 0.25, clock.t)])
    assert replication_of(eu).sync_once(PeerLink("http://us"), us_c, PEER_HEADERS)      # push (and pull)
    again = replication_of(eu).replicas.delta_since(None).to_bytes()                   # everything, again
    assert us_c.post("/v1/peer/delta", content=again, headers=PEER_HEADERS).status_code == 200
    assert replication_of(us).sync_once(PeerLink("http://eu"), eu_c, PEER_HEADERS)      # and pulled
    want = _fields(eu, "agent-1")                  # the node the observer posted to, once
    assert want[0] == 2
    assert _fields(us, "agent-1") == want
    us.close()
    _, us2, _ = node("us")
    assert _fields(us2, "agent-1") == want
    assert replication_of(us2).replicas.ledger == replication_of(eu).replicas.ledger
