"""Reads on any node: an agent posted to another node answers from this node's replica."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from swarmguard.apps.serve.agent_state import severity_of
from swarmguard.apps.serve.peers import PeerLink

from .conftest import auth, close_window, population_rows, post_behaviors
from .test_peers_node import _sync, pair  # noqa: F401 - the fixture

READ = auth("t-read")


def _two_synced(node, rng, n_eu=40, n_us=30, d=3):
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    _, eu_rows = population_rows(rng, n_eu, d, shifted=(7,))
    us_rows = [{**r, "agent_id": f"u-{i}"} for i, r in enumerate(population_rows(rng, n_us, d)[1])]
    assert post_behaviors(eu_c, eu_rows).status_code == 200
    assert post_behaviors(us_c, us_rows).status_code == 200
    close_window(eu_c)
    close_window(us_c)
    assert _sync(eu, us_c, PeerLink("http://us"))
    return eu, eu_c, us_c, eu_rows, us_rows


def test_an_agent_posted_to_a_peer_answers_from_the_replica(pair):  # noqa: F811
    clock, node = pair
    rng = np.random.default_rng(3)
    eu, eu_c, us_c, eu_rows, _ = _two_synced(node, rng)
    agent = eu_rows[7]["agent_id"]
    on_eu = eu_c.get(f"/v1/agents/{agent}", headers=READ)
    on_us = us_c.get(f"/v1/agents/{agent}", headers=READ)
    assert on_eu.status_code == 200 and on_us.status_code == 200, on_us.text
    a, b = on_eu.json(), on_us.json()
    assert a["source"] == "scored" and b["source"] == "replica"
    assert b["score"] == a["score"]                       # the register holds the writer's d², bit for bit
    # the p-value and severity: the χ² tail of the score with d = 3 (SciPy, not our own code)
    assert b["p_value"] == pytest.approx(stats.chi2.sf(a["score"], 3), rel=1e-12)
    assert b["severity"] == a["severity"] == severity_of(math.log(stats.chi2.sf(a["score"], 3)))
    written = eu.populations["behaviors"].detector.cap_resolver.ensure_replica("eu").registers.get(agent)
    assert b["writer_region"] == "eu" and b["timestamp"] == written["timestamp"]
    assert b["writer_staleness_seconds"] == pytest.approx(0.0)
    cf = us_c.get("/v1/populations", headers=READ).json()["confidence_factor"]
    assert b["confidence_factor"] == cf and 0.0 < cf <= 1.0
    assert b["isolated"] is False and b["cohort"] is None and b["window"] is None
    # contributions against us's own population (30 agents): the features as posted, shares summing to 1
    actual = {c["feature"]: c["actual"] for c in b["contributions"]}
    assert [actual[f"f{j}"] for j in range(3)] == eu_rows[7]["features"]
    assert math.fsum(c["share"] for c in b["contributions"]) == pytest.approx(1.0, rel=1e-12)
    # an agent unknown everywhere is still 404; an agent us scored itself stays "scored"
    assert us_c.get("/v1/agents/nobody", headers=READ).status_code == 404
    assert eu_c.get("/v1/agents/nobody", headers=READ).status_code == 404
    assert us_c.get("/v1/agents/u-1", headers=READ).json()["source"] == "scored"


def test_top_k_merges_replicated_agents_by_severity(pair):  # noqa: F811
    _, node = pair
    rng = np.random.default_rng(5)
    _, eu_c, us_c, eu_rows, us_rows = _two_synced(node, rng)
    top = us_c.get("/v1/agents?top=70", headers=READ).json()["agents"]
    assert len(top) == 70                                  # every agent of both nodes, once each
    assert {r["agent_id"] for r in top} == {r["agent_id"] for r in eu_rows + us_rows}
    sources = {r["agent_id"]: r["source"] for r in top}
    assert all(sources[r["agent_id"]] == "replica" for r in eu_rows)
    assert all(sources[r["agent_id"]] == "scored" for r in us_rows)
    keys = [(-r["p_value"], r["score"]) for r in top]      # most anomalous first
    assert keys == sorted(keys, reverse=True)
    assert top[0]["agent_id"] == eu_rows[7]["agent_id"]    # the shifted agent of eu ranks first on us
    # its score equals the one eu answers; a cohort filter lists scored agents only
    assert top[0]["score"] == eu_c.get(f"/v1/agents/{top[0]['agent_id']}", headers=READ).json()["score"]
    filtered = us_c.get("/v1/agents?top=70&cohort=us", headers=READ).json()["agents"]
    assert {r["source"] for r in filtered} == {"scored"} and len(filtered) == len(us_rows)


def test_a_node_with_no_window_of_its_own_answers_replicas(pair):  # noqa: F811
    _, node = pair
    rng = np.random.default_rng(9)
    _, eu, eu_c = node("eu")
    _, us, us_c = node("us")
    _, rows = population_rows(rng, 20, 2)
    assert post_behaviors(eu_c, rows).status_code == 200
    close_window(eu_c)
    assert _sync(eu, us_c, PeerLink("http://us"))
    got = us_c.get(f"/v1/agents/{rows[0]['agent_id']}", headers=READ)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["source"] == "replica"
    assert body["score"] == eu_c.get(f"/v1/agents/{rows[0]['agent_id']}", headers=READ).json()["score"]
    # us's own population holds no agent: no statistics to split the distance against
    assert body["contributions"] == []


def test_the_client_reads_replicated_items(pair):  # noqa: F811
    from swarmguard.client import SwarmGuardClient

    _, node = pair
    rng = np.random.default_rng(13)
    _, eu_c, us_c, eu_rows, _ = _two_synced(node, rng)
    client = SwarmGuardClient("http://testserver", token="t-read", http=us_c)
    first = client.top_agents(1)[0]
    assert first.agent_id == eu_rows[7]["agent_id"]
    assert first.source == "replica" and first.writer_region == "eu"
    assert first.score == eu_c.get(f"/v1/agents/{first.agent_id}", headers=READ).json()["score"]
