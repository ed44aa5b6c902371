"""The dashboard's data routes while a window closes: at once, from before the close; after it, from after."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")


from ..serve.conftest import (  # noqa: E402
    ManualClock,
    auth,
    closing_in_thread,
    hold_with_published_view,
    in_thread,
    post_behaviors,
    slowed_round,
)
from .test_dashboard_api import feed  # noqa: E402

READ = auth("t-read")
AT_ONCE = ["/v1/dashboard/status", "/v1/dashboard/top?top=20", "/v1/dashboard/history",
           "/v1/dashboard/observers", "/v1/dashboard/regions", "/v1/dashboard/cluster"]
DRILL_DOWN = "/v1/dashboard/agents/a-3"
WAIT = 10.0


def _answers(client, routes):
    return {r: (lambda g: (g.status_code, g.json()))(client.get(r, headers=READ)) for r in routes}


@pytest.fixture
def fed_node(make_node):
    clock = ManualClock()
    _, node, client = make_node(clock=clock, require="anomaly")
    feed(client, clock, windows=3)
    return node, client, clock


def test_the_view_answers_the_dashboard_as_the_live_node(fed_node):
    node, client, _ = fed_node
    live = _answers(client, [*AT_ONCE, DRILL_DOWN])
    assert all(status == 200 for status, _ in live.values())
    holder, held, release = hold_with_published_view(node, WAIT)
    try:
        assert held.wait(WAIT)
        reader, got = in_thread(lambda: _answers(client, AT_ONCE))
        reader.join(WAIT / 2)
        assert not reader.is_alive() and holder.is_alive()      # answered while the lock is held
        assert got["value"] == {r: live[r] for r in AT_ONCE}
        # the drill-down's evidence rows are read from the live node only: it waits for the lock
        drill, drilled = in_thread(lambda: _answers(client, [DRILL_DOWN]))
        drill.join(0.3)
        assert drill.is_alive()
    finally:
        release.set()
        holder.join(WAIT)
        drill.join(WAIT)
    assert drilled["value"][DRILL_DOWN] == live[DRILL_DOWN]


def test_during_a_slowed_close_the_dashboard_answers_from_before_it(fed_node, monkeypatch):
    node, client, clock = fed_node
    rows = [{"agent_id": f"a-{i}", "features": [float(i), 1.0, 2.0], "cohort": "north"} for i in range(40)]
    assert post_behaviors(client, rows).status_code == 200
    clock.t += 61                          # the window is due (the clock is no part of a close)
    before = _answers(client, AT_ONCE)
    started, release = slowed_round(node, monkeypatch, wait=WAIT)
    with closing_in_thread(node.close_window, started, release, WAIT) as closer:
        reader, got = in_thread(lambda: _answers(client, AT_ONCE))
        reader.join(WAIT / 2)
        assert not reader.is_alive() and closer.is_alive()
        assert got["value"] == before
    after = _answers(client, AT_ONCE)
    status_before, status_after = before["/v1/dashboard/status"][1], after["/v1/dashboard/status"][1]
    assert status_after["populations"]["behaviors"]["windows_closed"] == \
        status_before["populations"]["behaviors"]["windows_closed"] + 1
    assert status_before["populations"]["behaviors"]["open_window_vectors"] == 40
    assert status_after["populations"]["behaviors"]["open_window_vectors"] == 0
    assert after["/v1/dashboard/history"] != before["/v1/dashboard/history"]
