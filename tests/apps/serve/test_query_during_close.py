"""Reads while a window closes: answered at once, wholly from before the close, then wholly after it."""

from __future__ import annotations

import threading

import numpy as np

from swarmguard.apps.serve.peers import PeerLink

from .conftest import (
    auth,
    close_window,
    closing_in_thread,
    hold_with_published_view,
    in_thread,
    population_rows,
    post_behaviors,
    post_evidence,
    slowed_round,
)
from .test_peers_node import _sync, pair  # noqa: F401 - the fixture

READ = auth("t-read")
ROUTES = ["/v1/agents?top=5", "/v1/agents/a-7", "/v1/agents/a-8", "/v1/populations", "/v1/populations/eu"]
WAIT = 10.0          # the longest a test waits for anything (a hang fails, it does not block the run)


def _cohort(i: int) -> str:
    return "eu" if i % 2 else "us"


def _node_with_one_closed_window(make_node, **options):
    settings, node, client = make_node(**options)
    rng = np.random.default_rng(5)
    for _ in range(2):
        _, rows = population_rows(rng, 60, 3, shifted=(7,), cohort=_cohort)
        assert post_behaviors(client, rows).status_code == 200
        close_window(client)
    post_evidence(client, [{"evidence_id": "e-8", "agent_id": "a-8", "evidence_type": "peer_report",
                            "log_odds": 1.5, "confidence": 1.0, "timestamp": 0.0}])
    before = {r: client.get(r, headers=READ).json() for r in ROUTES}
    # the next window moves every agent (a-8 far out): each answer after its close differs
    _, rows = population_rows(rng, 60, 3, shifted=(7, 8), shift=40.0, cohort=_cohort)
    assert post_behaviors(client, rows).status_code == 200
    return node, client, before


def test_reads_during_a_close_answer_at_once_from_before_it_and_after_it_from_after(make_node, monkeypatch):
    node, client, before = _node_with_one_closed_window(make_node)
    started, release = slowed_round(node, monkeypatch, hold_after_round=False)
    with closing_in_thread(lambda: close_window(client), started, release, WAIT) as closer:
        reader, got = in_thread(lambda: {r: client.get(r, headers=READ).json() for r in ROUTES})
        reader.join(WAIT / 2)
        # answered while the round still waits: the close holds the node's lock all along
        assert not reader.is_alive() and closer.is_alive()
        assert got["value"] == before
    assert not closer.is_alive()
    after = {r: client.get(r, headers=READ).json() for r in ROUTES}
    for route in ROUTES:
        assert after[route] != before[route], route
    assert after["/v1/agents/a-8"]["window"] == before["/v1/agents/a-8"]["window"] + 1
    assert after["/v1/agents?top=5"]["agents"][0]["agent_id"] in {"a-7", "a-8"}


def test_a_read_the_round_changed_midway_waits_and_answers_from_after_the_close(make_node, monkeypatch):
    node, client, before = _node_with_one_closed_window(make_node)
    started, release = slowed_round(node, monkeypatch, hold_after_round=True)
    with closing_in_thread(lambda: close_window(client), started, release, WAIT) as closer:
        # the round added its own evidence (a-8 is far out): the consensus is no longer the
        # one before the close, so an answer holding it waits for the close ...
        assert node.populations["behaviors"].detector.last_round_evidence is not None
        agent, got_agent = in_thread(lambda: client.get("/v1/agents/a-8", headers=READ).json())
        # ... while one that holds no consensus answers from before the close at once
        top = client.get("/v1/agents?top=5", headers=READ).json()
        assert top == before["/v1/agents?top=5"]
        agent.join(0.5)
        assert agent.is_alive() and closer.is_alive()
    agent.join(WAIT)
    assert not closer.is_alive() and not agent.is_alive()
    after = client.get("/v1/agents/a-8", headers=READ).json()
    assert got_agent["value"] == after != before["/v1/agents/a-8"]
    assert after["window"] == before["/v1/agents/a-8"]["window"] + 1
    assert after["consensus"]["evidence_count"] > before["/v1/agents/a-8"]["consensus"]["evidence_count"]


def test_the_view_answers_as_the_live_node_replicas_included(pair):  # noqa: F811
    """Every route answers from a view exactly what the node answered live in the same state:
    scored agents, agents only the replica holds (posted to the peer), cohorts."""

    clock, node = pair
    _, us, us_c = node("us")
    _, eu, eu_c = node("eu")
    rng = np.random.default_rng(9)
    _, us_rows = population_rows(rng, 30, 3, cohort=_cohort)
    eu_rows = [{**r, "agent_id": f"e-{i}"} for i, r in enumerate(population_rows(rng, 40, 3, shifted=(7,))[1])]
    assert post_behaviors(us_c, us_rows).status_code == 200 and post_behaviors(eu_c, eu_rows).status_code == 200
    close_window(us_c)
    close_window(eu_c)
    assert _sync(eu, us_c, PeerLink("http://us"))
    routes = ["/v1/agents?top=50", "/v1/agents/e-7", "/v1/agents/a-3", "/v1/agents/nobody",
              "/v1/populations", "/v1/populations/eu", "/v1/populations/nowhere"]
    live = {r: (lambda g: (g.status_code, g.json()))(us_c.get(r, headers=READ)) for r in routes}
    assert live["/v1/agents/e-7"][1]["source"] == "replica" and live["/v1/agents/a-3"][1]["source"] == "scored"
    holder, held, release = hold_with_published_view(us, WAIT)
    try:
        assert held.wait(WAIT)
        reader, got = in_thread(lambda: {r: (lambda g: (g.status_code, g.json()))(us_c.get(r, headers=READ))
                                          for r in routes})
        reader.join(WAIT / 2)
        assert not reader.is_alive() and holder.is_alive()     # answered from the view, the lock still held
    finally:
        release.set()
        holder.join(WAIT)
    assert got["value"] == live


def test_a_view_that_cannot_be_built_does_not_stop_the_close(make_node, monkeypatch):
    from swarmguard.apps.serve import node as node_module

    node, client, before = _node_with_one_closed_window(make_node)

    def broken(_node):
        raise RuntimeError("no view")

    monkeypatch.setattr(node_module, "publish_view", broken)
    closed = close_window(client)
    assert [c["population"] for c in closed] == ["behaviors"] and node.read_view is None
    after = client.get("/v1/agents/a-8", headers=READ).json()
    assert after["window"] == before["/v1/agents/a-8"]["window"] + 1


def test_an_isolation_event_is_not_seen_before_the_reads_show_it(make_node, monkeypatch):
    """``/v1/events`` reads the event log without the node's lock: an isolation it streams
    while the close still holds the lock (the round ran, the extensions' ``after_close``
    not yet) must not be followed by a read that answers from before that close."""
    from swarmguard.apps.dashboard.history import WindowHistory

    node, client, before = _node_with_one_closed_window(make_node, require="anomaly")
    seen_before = node.events.last_id
    history = next(e for e in node.extensions if isinstance(e, WindowHistory))
    started, release = threading.Event(), threading.Event()
    original = history.after_close

    def slowed(at, outcomes):
        started.set()
        release.wait(WAIT)
        return original(at, outcomes)

    monkeypatch.setattr(history, "after_close", slowed)
    closer, _ = in_thread(lambda: close_window(client))
    try:
        assert started.wait(WAIT)
        streamed = [data["agent_id"] for _, data in node.events.after(seen_before)]    # what SSE sends now
        # the list holds no consensus: it would answer from the view published before the close
        reader, got = in_thread(lambda: client.get("/v1/agents?top=5", headers=READ).json())
        reader.join(WAIT / 2)
        assert not reader.is_alive() and closer.is_alive()      # answered from the view, at once
        listed = {a["agent_id"]: a["isolated"] for a in got["value"]["agents"]}
        # an event that says a-8 is isolated is followed by reads that say so too
        assert "a-8" not in streamed or listed.get("a-8") is True, (streamed, listed)
    finally:
        release.set()
        closer.join(WAIT)
        reader.join(WAIT)
    assert not closer.is_alive()
    after = client.get("/v1/agents/a-8", headers=READ).json()
    assert after["isolated"] and not before["/v1/agents/a-8"]["isolated"]      # the close did isolate a-8
    assert "a-8" in [data["agent_id"] for _, data in node.events.after(seen_before)]


def test_the_view_copies_only_the_registers_a_read_answers_from(pair):  # noqa: F811
    """A read answers from a register only for an agent the population did not score
    (.replica_read): the view copies those registers, not every register each close."""
    from swarmguard.apps.serve.read_view import publish_view

    clock, node = pair
    _, us, us_c = node("us")
    _, eu, eu_c = node("eu")
    rng = np.random.default_rng(9)
    _, us_rows = population_rows(rng, 30, 3)
    eu_rows = [{**r, "agent_id": f"e-{i}"} for i, r in enumerate(population_rows(rng, 40, 3)[1])]
    assert post_behaviors(us_c, us_rows).status_code == 200 and post_behaviors(eu_c, eu_rows).status_code == 200
    close_window(us_c)
    close_window(eu_c)
    assert _sync(eu, us_c, PeerLink("http://us"))
    live = us.populations["behaviors"].replica("us").registers
    held = set(live.index.keys_of(np.arange(len(live))).tolist())
    assert held == {f"a-{i}" for i in range(30)} | {f"e-{i}" for i in range(40)}     # both regions' registers
    with us.lock:
        view = publish_view(us)
    copied = view.populations["behaviors"].replica("us").registers.entries()
    assert sorted([*copied["int_ids"].tolist(), *copied["str_ids"].tolist()]) == sorted(f"e-{i}" for i in range(40))
    for i in (0, 39):
        got, want = view.populations["behaviors"].replica("us").registers.get(f"e-{i}"), live.get(f"e-{i}")
        assert got["anomaly_score"] == want["anomaly_score"] and got["timestamp"] == want["timestamp"]
        assert np.array_equal(got["features"], want["features"]) and got["region"] == want["region"] == "eu"


def test_the_view_is_withdrawn_when_the_round_raises_or_the_close_cannot_be_logged(make_node, monkeypatch):
    import pytest

    from swarmguard.apps.serve.http_errors import ApiError
    from swarmguard.errors import EvidenceStoreError

    node, client, before = _node_with_one_closed_window(make_node)
    published = []
    real_publish = node._published_view
    monkeypatch.setattr(node, "_published_view", lambda: published.append(real_publish()) or published[-1])

    def unwritable(*args, **kwargs):
        raise EvidenceStoreError("the disk is gone")

    with monkeypatch.context() as m:
        m.setattr(node.log, "append", unwritable)
        with pytest.raises(ApiError):
            node.close_window()
    assert published[-1] is not None and node.read_view is None

    def broken_round(*args, **kwargs):
        raise RuntimeError("the round broke")

    monkeypatch.setattr(node.populations["behaviors"].detector, "process_round", broken_round)
    with pytest.raises(RuntimeError):
        node.close_window()
    assert len(published) == 2 and published[-1] is not None and node.read_view is None
    # nothing waits for a view that is gone: reads answer from the live node at once
    reader, got = in_thread(lambda: client.get("/v1/agents?top=5", headers=READ).status_code)
    reader.join(WAIT)
    assert not reader.is_alive() and got["value"] == 200
