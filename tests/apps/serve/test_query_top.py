"""``GET /v1/agents?top=K`` (and the dashboard's tables) through the app, against sorted()
over every state of the node: randomized populations with tied scores, every filter, with
and without replicas, after a restart's replay, and during a close (through the read view)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from swarmguard.apps.serve.agent_state import severity_of
from swarmguard.apps.serve.peers import PeerLink
from swarmguard.apps.serve.records import BehaviorBatch
from swarmguard.structures.chi2 import chi2_logsf

from .conftest import auth, closing_in_thread, slowed_round
from .test_peers_node import _sync, pair  # noqa: F401 - the fixture

READ = auth("t-read")
COHORTS = [None, "c-1", "c-2"]
WAIT = 10.0


def _feed(node, rng, prefix: str, n: int, pool, extra=()) -> None:
    """A window of a random subset of ``n`` agents (and the ``extra`` ids), vectors drawn from
    ``pool`` (so many agents share a vector, and so a score), posted to both populations (the
    same batch: equal scores across populations too), the window closed."""
    picked = [i for i in rng.permutation(n).tolist() if rng.random() < 0.8]
    ids = [f"{prefix}-{i}" for i in picked] + list(extra)
    X = pool[rng.integers(len(pool), size=len(ids))]
    cohorts = [COHORTS[int(rng.integers(len(COHORTS)))] for _ in ids]
    for population in ("behaviors", "spans"):
        node.accept_behaviors(BehaviorBatch(ids, X.copy(), cohorts), population=population)
    node.close_window()


def _reference(node, top, cohort, population):
    """What ``/v1/agents`` answers, by sorted() over every scored state and every register of
    an agent the population did not score (each population's table order, then its entries'
    order: equal keys keep it)."""
    region = node.settings.region
    pops = [p for p in node.populations.values() if population in (None, p.name)]
    items = [(s.log_p, s.score, {**s.summary(), "source": "scored"}) for p in pops for s in p.agents.values()
             if cohort is None or (s.cohort or region) == cohort]
    for p in pops if cohort is None else []:
        replica = p.replica(region)
        if replica is None or not len(replica.registers):
            continue
        e = replica.registers.entries()
        ids = [*e["int_ids"].tolist(), *e["str_ids"].tolist()]
        scores = np.asarray(e["anomaly_score"], dtype=np.float64)
        log_p = np.asarray(chi2_logsf(scores, int(e["dim"])), dtype=np.float64).tolist()
        for i, a in enumerate(ids):
            if a in p.agents:
                continue
            items.append((log_p[i], float(scores[i]), {
                "agent_id": a, "severity": severity_of(log_p[i]), "p_value": math.exp(log_p[i]),
                "score": float(scores[i]), "isolated": False, "cohort": None, "population": p.name,
                "source": "replica", "writer_region": str(e["regions"][int(e["writer"][i])]),
                "timestamp": float(e["timestamp"][i])}))
    best = sorted(items, key=lambda t: (-t[0], t[1]), reverse=True)[:top]
    return json.loads(json.dumps({"agents": [t[2] for t in best]}))


def _queries(n_all):
    tops = [1, 2, 5, 17, n_all, n_all + 3]
    cohorts = [None, "c-1", "c-2", "us", "eu", "nowhere"]
    populations = [None, "behaviors", "spans", "nowhere"]
    return list(itertools.product(tops, cohorts, populations))


def _url(top, cohort, population):
    url = f"/v1/agents?top={top}"
    url += "" if cohort is None else f"&cohort={cohort}"
    return url + ("" if population is None else f"&population={population}")


def _answers(client, queries):
    out = {}
    for q in queries:
        r = client.get(_url(*q), headers=READ)
        assert r.status_code == 200, r.text
        out[q] = r.json()
    return out


def _check_against_reference(node, client, queries):
    answers = _answers(client, queries)
    for q in queries:
        assert answers[q] == _reference(node, *q), q
    return answers


def test_top_k_answers_as_sorted_over_every_state_with_replicas_and_after_restart(pair):  # noqa: F811
    clock, node = pair
    rng = np.random.default_rng(11)
    pool = rng.normal(size=(4, 3))
    _, eu, eu_c = node("eu")
    settings_us, us, us_c = node("us")
    for _ in range(3):                      # agents in older windows keep their state
        _feed(us, rng, "u", 40, pool)
        _feed(eu, rng, "e", 30, pool)
        clock.t += 1.0
    _feed(eu, rng, "u", 10, pool)           # agents both nodes scored: us answers its own
    queries = _queries(len(us.populations["behaviors"].agents) + 40)
    alone = _check_against_reference(us, us_c, queries)     # no replica of another node yet
    assert any(r["agents"] and r["agents"][0]["source"] == "scored" for r in alone.values())
    assert _sync(eu, us_c, PeerLink("http://us"))
    with_replicas = _check_against_reference(us, us_c, queries)
    sources = {a["source"] for r in with_replicas.values() for a in r["agents"]}
    assert sources == {"scored", "replica"}
    # many exact ties between scored agents, across populations and with replicated agents
    keys = [(a["p_value"], a["score"]) for a in with_replicas[(queries[-1][0], None, None)]["agents"]]
    assert len(set(keys)) < len(keys) / 4
    # another window on us (agents move, the ranking is built again; agents it held only as
    # replicas become its own, and new ones come), then a restart's replay
    _feed(us, rng, "u", 40, pool, extra=["e-1", "e-2", "e-5", "new-1", "new-2"])
    assert {"e-1", "new-1"} <= set(us.populations["behaviors"].agents)
    before = _check_against_reference(us, us_c, queries)
    us.close()
    _, again, again_c = node("us")
    assert _check_against_reference(again, again_c, queries) == before


def test_top_k_during_a_close_answers_from_the_view_as_before_it(pair, monkeypatch):  # noqa: F811
    clock, node = pair
    rng = np.random.default_rng(12)
    pool = rng.normal(size=(3, 3))
    _, eu, _ = node("eu")
    _, us, us_c = node("us")
    _feed(us, rng, "u", 30, pool)
    _feed(eu, rng, "e", 20, pool)
    assert _sync(eu, us_c, PeerLink("http://us"))
    queries = _queries(60)
    before = _check_against_reference(us, us_c, queries)
    # the next window's round waits until the reads are done: they answer from the view
    started, release = slowed_round(us, monkeypatch, wait=WAIT)
    picked = [f"u-{i}" for i in range(30)] + ["u-new"]
    us.accept_behaviors(BehaviorBatch(picked, pool[rng.integers(3, size=len(picked))] * 3.0, [None] * len(picked)))
    with closing_in_thread(us.close_window, started, release, WAIT) as closer:
        during = _answers(us_c, queries)
        assert closer.is_alive()            # answered while the close held the lock
    assert during == before
    after = _check_against_reference(us, us_c, queries)
    assert after != before                  # the close moved the agents


def test_dashboard_tables_rank_as_sorted_over_the_table(pair):  # noqa: F811
    clock, node = pair
    rng = np.random.default_rng(13)
    pool = rng.normal(size=(3, 2))
    _, us, us_c = node("us")
    for _ in range(2):
        _feed(us, rng, "u", 50, pool)
    pop = us.populations["behaviors"]
    for cohort in (None, "c-1", "us", "nowhere"):
        states = [s for s in pop.agents.values() if cohort is None or (s.cohort or pop.region) == cohort]
        for top in (1, 7, 60):
            want = [s.agent_id for s in sorted(states, key=lambda s: (-s.log_p, s.score), reverse=True)[:top]]
            url = f"/v1/dashboard/top?top={top}" + ("" if cohort is None else f"&cohort={cohort}")
            r = us_c.get(url, headers=READ)
            assert r.status_code == 200, r.text
            assert [a["agent_id"] for a in r.json()["agents"]] == want
            assert r.json()["cohorts"] == sorted({s.cohort or pop.region for s in pop.agents.values()})
            if cohort is None:
                lanes = us_c.get(f"/v1/dashboard/history?top={min(top, 200)}", headers=READ).json()
                assert lanes["agent_lanes"]["agents"] == want


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")   # severities(NaN)
def test_a_nan_key_among_the_replicated_agents_answers_as_the_full_pass(pair):  # noqa: F811
    """A register whose score is negative (written here straight into the registers: a peer's
    delta holding one is refused, a delta logged before that check replays unchecked) has ln p
    NaN: no total order, so the route must answer as ``heapq.nlargest`` over every state
    followed by the replica's top, as it did, not over each table's first K."""
    import heapq

    from swarmguard.apps.serve.replica_read import _top_from_entries

    clock, node = pair
    rng = np.random.default_rng(14)
    pool = rng.normal(size=(4, 3))
    _, us, us_c = node("us")
    for _ in range(2):
        _feed(us, rng, "u", 12, pool)
        clock.t += 1.0
    pops = list(us.populations.values())
    for p in pops:
        registers = p.replica("us").registers
        n = 4
        registers.write_many([f"far-{i}" for i in range(n)], np.full(n, clock.t), "eu", 1,
                             rng.normal(size=(n, 3)), np.array([-5.0, 1.0, -2.0, 3.0]))
    n_scored = sum(len(p.agents) for p in pops)
    for top in range(1, n_scored + 10):
        states = [(s, None) for p in pops for s in p.agents.values()]
        states += [(r.state, r) for p in pops for r in _top_from_entries(p, p.replica("us").registers.entries(),
                                                                        top, None)]
        want = [s.agent_id for s, _ in heapq.nlargest(top, states, key=lambda e: (-e[0].log_p, e[0].score))]
        r = us_c.get(f"/v1/agents?top={top}", headers=READ)
        assert r.status_code == 200, r.text
        assert [a["agent_id"] for a in r.json()["agents"]] == want, top
