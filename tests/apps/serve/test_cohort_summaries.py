"""``/v1/populations``' summaries are kept per agent table (.cohort_summaries): the cached answer
is the one a fresh pass over the agents gives, after closes, peer merges and restarts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swarmguard.apps.serve.peers import PeerLink, replication_of

from .conftest import ManualClock, auth, close_window, post_behaviors
from .test_peers_node import PEER_HEADERS, PEER_TOKENS

READ = auth("t-read")


@pytest.fixture
def pair(tmp_path, make_node):
    tokens = tmp_path / "peer-tokens.toml"
    tokens.write_text(PEER_TOKENS)
    clock = ManualClock()
    return lambda region: make_node(clock=clock, data_dir=tmp_path / region, region=region, tokens_file=tokens)


def _rows(rng, prefix, n, cohorts, shift=0.0):
    return [{"agent_id": f"{prefix}-{i}", "features": (rng.normal(size=2) + shift).tolist(),
             "cohort": f"c{i % cohorts}"} for i in range(n)]


def _fresh(node) -> list[dict]:
    """Every summary as a pass over the agent table now gives it (no cache): the population,
    then each cohort by name, each from Population.cohort_summary's own scan of the agents."""
    out = []
    for pop in node.populations.values():
        names = sorted({s.cohort or pop.region for s in pop.agents.values()})
        for cohort in ["", *names]:
            summary = pop.cohort_summary(cohort)
            if summary is not None:
                out.append(summary)
    return json.loads(json.dumps(out))


def _answer(client) -> list[dict]:
    r = client.get("/v1/populations", headers=READ)
    assert r.status_code == 200, r.text
    return r.json()["populations"]


def test_the_cached_summaries_are_a_fresh_pass_after_closes_peer_merges_and_restarts(pair):
    rng = np.random.default_rng(12)
    _, us, us_c = pair("us")
    assert post_behaviors(us_c, _rows(rng, "u", 60, 6)).status_code == 200
    close_window(us_c)
    first = _answer(us_c)
    assert first == _fresh(us) and len(first) == 7
    kept = us.populations["behaviors"]._summaries
    assert _answer(us_c) == first and us.populations["behaviors"]._summaries is kept    # the table's own
    one = us_c.get("/v1/populations/c3", headers=READ).json()
    assert one == next(p for p in first if p["cohort"] == "c3")

    # a close: old agents move (shifted vectors), new ones and a new cohort arrive
    assert post_behaviors(us_c, _rows(rng, "u", 90, 9, shift=3.0)).status_code == 200
    close_window(us_c)
    second = _answer(us_c)
    assert second == _fresh(us) and second != first and len(second) == 10
    assert us_c.get("/v1/populations/c8", headers=READ).json() == next(p for p in second if p["cohort"] == "c8")

    # a peer merge: registers and evidence change, the summaries do not (and stay current)
    _, eu, eu_c = pair("eu")
    assert post_behaviors(eu_c, _rows(rng, "e", 40, 4)).status_code == 200
    close_window(eu_c)
    assert replication_of(eu).sync_once(PeerLink("http://us"), us_c, PEER_HEADERS)
    assert us_c.get("/v1/cluster", headers=READ).json()["version_vector"]["eu"] == 40
    merged = _answer(us_c)
    assert merged == _fresh(us) == second

    # a restart (the log replayed), then one with a snapshot (us drains, the restart loads it)
    us.close()
    _, us2, us2_c = pair("us")
    assert _answer(us2_c) == _fresh(us2) == second
    us2.drain()
    us2.close()
    _, us3, us3_c = pair("us")
    assert us3.log.latest_snapshot() is not None
    assert _answer(us3_c) == _fresh(us3) == second
    # and a close after the restart rebuilds them
    assert post_behaviors(us3_c, _rows(rng, "v", 30, 3, shift=-2.0)).status_code == 200
    close_window(us3_c)
    third = _answer(us3_c)
    assert third == _fresh(us3) and third != second


def test_feature_names_named_after_the_summaries_were_built_are_answered(make_node):
    """A population first fed unnamed vectors (``f0``, ``f1``) takes the names of the first
    batch that brings some (``node.accept_behaviors(batch, population, feature_names)``, the
    routers' call) without a close: the summaries answer the names it has now, as a fresh
    pass does, not those of the table's first request."""
    from swarmguard.apps.serve.records import parse_behavior_lines

    from .conftest import lines

    rng = np.random.default_rng(5)
    _, node, client = make_node()
    assert post_behaviors(client, _rows(rng, "u", 30, 3)).status_code == 200
    close_window(client)
    assert _answer(client)[0]["features"] == ["f0", "f1"]
    batch = parse_behavior_lines(lines([{"agent_id": "n-1", "features": [1.0, 2.0]}]), 2)
    node.accept_behaviors(batch, "behaviors", ["cpu", "mem"])
    assert node.populations["behaviors"].names() == ["cpu", "mem"]
    answered = _answer(client)
    assert answered == _fresh(node) and {tuple(s["features"]) for s in answered} == {("cpu", "mem")}
    assert client.get("/v1/populations/c1", headers=READ).json()["features"] == ["cpu", "mem"]
