"""``GET /v1/peer/state`` (admin): a node's replicated state, exactly; two nodes that synced agree on it."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from swarmguard.apps.serve.peers import PeerLink, replication_of

from .conftest import auth, close_window, post_behaviors, post_evidence
from .test_peers_node import PEER_HEADERS, _rows, pair  # noqa: F401 - the fixture


def _state(client):
    r = client.get("/v1/peer/state", headers=auth("t-admin"))
    assert r.status_code == 200, r.text
    return r.json()


def test_state_is_admin_only(pair):  # noqa: F811
    _, node = pair
    _, _, c = node("eu")
    assert c.get("/v1/peer/state", headers=auth("t-read")).status_code == 403
    assert c.get("/v1/peer/state").status_code == 401
    assert _state(c)["populations"] == {} and _state(c)["evidence"]["rows"] == []


def test_state_lists_registers_evidence_and_exact_statistics_and_synced_nodes_agree(pair):  # noqa: F811
    clock, node = pair
    rng = np.random.default_rng(11)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    eu_rows, us_rows = _rows(rng, "e", 6), _rows(rng, "u", 5)
    post_behaviors(eu_c, eu_rows)
    post_behaviors(us_c, us_rows)
    close_window(eu_c)
    close_window(us_c)
    ev = {"evidence_id": "ev-1", "agent_id": "e-2", "evidence_type": "anomaly", "log_odds": 1.5,
          "confidence": 0.5, "timestamp": 3.0}
    assert post_evidence(eu_c, [ev]).status_code == 200
    a = _state(eu_c)
    regs = a["populations"]["behaviors"]["registers"]
    assert [r[0] for r in regs] == sorted(f"e-{i}" for i in range(6))
    assert all(r[2] == "eu" for r in regs)
    assert [[float.fromhex(x) for x in r[4]] for r in regs] == [row["features"] for row in eu_rows]
    assert a["evidence"]["rows"] == [["eu", 1, "ev-1", "e-2", "behavioral_anomaly", 1.5, 0.5, 3.0, "observer-7"]]
    assert a["evidence"]["consensus"]["e-2"]["evidence_count"] == 1
    # sync both ways: the same digest, registers and statistics
    replication_of(eu).sync_once(PeerLink("http://us"), us_c, PEER_HEADERS)
    replication_of(us).sync_once(PeerLink("http://eu"), eu_c, PEER_HEADERS)
    a, b = _state(eu_c), _state(us_c)
    assert a["digest"] == b["digest"]
    assert a["populations"]["behaviors"]["registers"] == b["populations"]["behaviors"]["registers"]
    pop = a["populations"]["behaviors"]
    assert pop["count"] == 11 and pop["region_counts"] == {"eu": 6, "us": 5}
    everyone = eu_rows + us_rows
    for j in range(2):           # the mean and covariance of the features, correctly rounded
        exact_mean = sum(Fraction(r["features"][j]) for r in everyone) / 11
        assert float.fromhex(pop["mean"][j]) == float(exact_mean)
    exact_cov = sum((Fraction(r["features"][0]) - sum(Fraction(s["features"][0]) for s in everyone) / 11)
                    * (Fraction(r["features"][1]) - sum(Fraction(s["features"][1]) for s in everyone) / 11)
                    for r in everyone) / 10
    assert float.fromhex(pop["covariance"][0][1]) == float(exact_cov)
    assert b["evidence"]["rows"] == a["evidence"]["rows"]
    assert b["evidence"]["consensus"] == a["evidence"]["consensus"]
    # confidence inputs: 30 s later nothing heard from eu on us; the documented rule on them
    clock.t += 30.0
    b = _state(us_c)["populations"]["behaviors"]
    assert b["ages"] == {"eu": 30.0}
    want = (5 + 6 * math.exp(-b["confidence_decay_rate"] * (30.0 - b["max_staleness_seconds"]))) / 11
    assert b["confidence_factor"] == pytest.approx(want, rel=1e-12)


def test_detector_evidence_replicates_like_observer_evidence(pair):  # noqa: F811
    _, node = pair
    rng = np.random.default_rng(4)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    rows = _rows(rng, "e", 60, d=3)
    rows[7]["features"] = [40.0, -40.0, 40.0]           # far outside: the round flags e-7
    post_behaviors(eu_c, rows)
    close_window(eu_c)
    assert eu.populations["behaviors"].consensus_of("e-7")["evidence_count"] >= 1
    replication_of(eu).sync_once(PeerLink("http://us"), us_c, PEER_HEADERS)
    assert _state(us_c)["populations"]["behaviors"]["registers"] == _state(eu_c)["populations"]["behaviors"]["registers"]
    assert _state(us_c)["evidence"]["consensus"] == _state(eu_c)["evidence"]["consensus"]
