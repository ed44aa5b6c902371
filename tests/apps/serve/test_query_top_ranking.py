"""The top-K rankings (``.ranked_agents``, ``.replica_read``) against sorted() over every state.

``GET /v1/agents?top=K`` answered ``heapq.nlargest(K, states, key=(-ln p, score))`` over
every state; the rankings must give the same K states in the same order, ties included.
"""

from __future__ import annotations

import heapq
import math
from types import SimpleNamespace

import numpy as np
import pytest

from swarmguard.apps.serve.agent_state import AgentState, severity_of
from swarmguard.apps.serve.ranked_agents import RankedAgents, rank_key
from swarmguard.apps.serve.replica_read import replica_ranking, top_replica_agents
from swarmguard.structures.chi2 import chi2_logsf
from swarmguard.values.lww_register_map import LWWRegisterMap

REGION = "eu"


def _state(agent_id: str, log_p: float, score: float, cohort: str | None) -> AgentState:
    return AgentState(agent_id, "behaviors", score, math.exp(log_p), log_p, severity_of(log_p), False, cohort,
                      1.0, np.zeros(2), 1)


def _table(rng, n: int, nan: bool = False) -> dict[str, AgentState]:
    """n states whose keys come from a few values (many exact ties, -0.0 and 0.0, -inf),
    in a shuffled table order."""
    log_ps = np.array([0.0, -0.0, -1.5, -3.0, -np.inf, -700.25])
    scores = np.array([0.0, -0.0, 2.5, 9.0, 1e300])
    cohorts = [None, "eu", "us", "c-1"]
    table = {}
    for i in rng.permutation(n).tolist():
        lp, sc = float(rng.choice(log_ps)), float(rng.choice(scores))
        if nan and rng.random() < 0.2:
            lp = math.nan
        table[f"a-{i}"] = _state(f"a-{i}", lp, sc, cohorts[int(rng.integers(len(cohorts)))])
    return table


def _reference(table, k, cohort):
    states = [s for s in table.values() if cohort is None or (s.cohort or REGION) == cohort]
    return sorted(states, key=rank_key, reverse=True)[:k]          # stable: equal keys in table order


def test_nlargest_puts_the_earlier_of_equal_keys_first():
    """What today's answer did on ties (heapq.nlargest's documented equivalence to
    ``sorted(..., reverse=True)[:n]``, which is stable), on every path nlargest takes
    (n = 1: max; n >= len: sorted; otherwise the heap)."""
    items = [("a", 1), ("b", 2), ("c", 1), ("d", 2), ("e", 0), ("f", 2)]
    for n in (1, 2, 4, 6, 9):
        got = [name for name, _ in heapq.nlargest(n, items, key=lambda t: t[1])]
        assert got == ["b", "d", "f", "a", "c", "e"][:n]


@pytest.mark.parametrize("seed", range(8))
def test_the_ranked_table_answers_as_sorted_over_every_state(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 60))
    table = _table(rng, n)
    ranked = RankedAgents.of(table, REGION)
    assert ranked.ordered and len(ranked) == n
    for cohort in (None, "eu", "us", "c-1", "unknown", ""):
        for k in (1, 2, 3, 7, n, n + 5):
            if k < 1:
                continue
            want = _reference(table, k, cohort)
            got = ranked.top(k, cohort)
            assert [s.agent_id for s in got] == [s.agent_id for s in want]
            assert all(a is b for a, b in zip(got, want, strict=True))
            filtered = [s for s in table.values() if cohort is None or (s.cohort or REGION) == cohort]
            assert got == heapq.nlargest(k, filtered, key=rank_key)
            # the route merges candidates with nlargest: they must hold the top k, in rank order
            assert heapq.nlargest(k, ranked.candidates(k, cohort), key=rank_key) == want


@pytest.mark.parametrize("seed", range(4))
def test_a_table_with_nan_keys_answers_as_nlargest_over_it(seed):
    """NaN keys give no total order: nlargest's answer then depends on how it walks the
    table, and the ranking hands it the whole table in its own order."""
    rng = np.random.default_rng(100 + seed)
    table = _table(rng, 40, nan=True)
    ranked = RankedAgents.of(table, REGION)
    assert not ranked.ordered
    for cohort in (None, "eu", "us"):
        for k in (1, 5, 40):
            filtered = [s for s in table.values() if cohort is None or (s.cohort or REGION) == cohort]
            assert ranked.top(k, cohort) == heapq.nlargest(k, filtered, key=rank_key)
            assert ranked.candidates(k, cohort) == filtered


def _registers(rng, ids, dim=2, scores=(0.0, 1.0, 4.0, 4.0, 30.0)):
    reg = LWWRegisterMap(dim)
    score = rng.choice(np.array(scores), size=len(ids))
    reg.write_many(ids, np.full(len(ids), 5.0), "us", 1, rng.normal(size=(len(ids), dim)), score)
    return reg


def _replica_pop(reg, agents):
    replica = SimpleNamespace(registers=reg)
    return SimpleNamespace(name="behaviors", agents=agents, replica=lambda region: replica)


def _replica_reference(pop, reg, k):
    """sorted() over every register whose agent the table does not hold (entries order)."""
    e = reg.entries()
    ids = [*e["int_ids"].tolist(), *e["str_ids"].tolist()]
    scores = np.asarray(e["anomaly_score"], dtype=np.float64)
    log_p = np.asarray(chi2_logsf(scores, int(e["dim"])), dtype=np.float64)
    names = e["regions"].tolist()
    rows = [i for i, a in enumerate(ids) if a not in pop.agents]
    best = sorted(rows, key=lambda i: (-log_p[i], scores[i]), reverse=True)[:k]
    return [(ids[i], float(scores[i]), float(log_p[i]), severity_of(float(log_p[i])), names[int(e["writer"][i])],
             float(e["timestamp"][i]), e["features"][i].tolist()) for i in best]


def _answer(agents):
    return [(r.state.agent_id, r.state.score, r.state.log_p, r.state.severity, r.writer_region, r.timestamp,
             r.state.features.tolist()) for r in agents]


@pytest.mark.parametrize("seed", range(6))
def test_the_replica_ranking_answers_as_sorted_over_every_register(seed):
    rng = np.random.default_rng(200 + seed)
    ids = [f"r-{i}" for i in rng.permutation(50).tolist()]
    reg = _registers(rng, ids)
    agents = {a: None for a in ids if rng.random() < 0.4}      # scored here: left out
    pop = _replica_pop(reg, agents)
    for k in (1, 3, 10, 50, 80):
        assert _answer(top_replica_agents(pop, REGION, k, 1.0)) == _replica_reference(pop, reg, k)
    first = replica_ranking(pop, reg)
    assert replica_ranking(pop, reg) is first                 # nothing changed: not ranked again
    # new registers (rows added, scores tied with the old ones), an overwritten one, a new table
    reg.write_many([f"n-{i}" for i in range(7)] + [ids[0]], np.full(8, 9.0), "us", 100,
                   rng.normal(size=(8, 2)), rng.choice(np.array([1.0, 4.0]), size=8))
    assert replica_ranking(pop, reg) is not first
    for k in (1, 5, 60):
        assert _answer(top_replica_agents(pop, REGION, k, 1.0)) == _replica_reference(pop, reg, k)
    pop.agents = {**agents, ids[1]: None, "n-3": None}
    for k in (1, 5, 60):
        assert _answer(top_replica_agents(pop, REGION, k, 1.0)) == _replica_reference(pop, reg, k)
    # a table grown by a close (a copy with agents appended, noted as close_window notes it):
    # only its new agents are matched, some already in the registers, some not yet
    before = pop.agents
    grown = {**before, ids[2]: None, ids[3]: None, "later-1": None}
    pop._table_grown, pop.agents = (id(before), len(before), grown), grown
    reg.write_many(["later-1", "later-2"], np.full(2, 9.0), "us", 200, rng.normal(size=(2, 2)), np.array([4.0, 30.0]))
    ranking = replica_ranking(pop, reg)
    for k in (1, 5, 60):
        assert _answer(top_replica_agents(pop, REGION, k, 1.0)) == _replica_reference(pop, reg, k)
    assert {ids[2], ids[3], "later-1"}.isdisjoint(reg.index.keys_of(ranking.rows).tolist())


def test_registers_with_int_ids_are_ranked_from_their_entries():
    """A map holding an int id (a serve node's are strings) lists int ids first: ranked from
    its entries, as before."""
    rng = np.random.default_rng(9)
    reg = _registers(rng, ["s-1", "s-2", "s-3"])
    reg.write_many([7, 3], np.full(2, 5.0), "us", 10, rng.normal(size=(2, 2)), np.array([4.0, 4.0]))
    pop = _replica_pop(reg, {"s-2": None})
    assert replica_ranking(pop, reg) is None
    for k in (1, 2, 5):
        assert _answer(top_replica_agents(pop, REGION, k, 1.0)) == _replica_reference(pop, reg, k)


def test_a_ranking_given_up_for_int_ids_does_not_keep_the_old_table_alive():
    """Once the registers hold an int id, the population's string-id ranking is never current
    again: it must not stay on the population, holding the agent table it ranked (and its
    states) alive through every later close."""
    import gc
    import weakref

    rng = np.random.default_rng(10)
    reg = _registers(rng, ["s-1", "s-2", "s-3"])

    class Table(dict):            # a dict that can be weakly referenced
        pass

    old = Table({"s-2": None})
    pop = _replica_pop(reg, old)
    assert replica_ranking(pop, reg) is not None
    reg.write_many([7], np.full(1, 5.0), "us", 10, rng.normal(size=(1, 2)), np.array([4.0]))
    pop.agents = Table({"s-1": None})          # a close swapped in a new table
    assert replica_ranking(pop, reg) is None
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None
