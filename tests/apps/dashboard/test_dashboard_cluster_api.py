"""``GET /v1/dashboard/cluster``: two nodes in one process, one partitioned for a while.

The series are checked against the node's clock (a manual one the test moves) and the
resolver's rule written out here, never against an earlier answer of the endpoint.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from swarmguard.apps.dashboard.history import history_of  # noqa: E402
from swarmguard.apps.serve.peers import replication_of  # noqa: E402

from ..serve.conftest import ManualClock, auth, close_window, post_behaviors  # noqa: E402
from ..serve.test_peers_node import PEER_HEADERS, PEER_TOKENS  # noqa: E402

READ = auth("t-read")


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture
def two_regions(tmp_path, make_node):
    tokens = tmp_path / "peer-tokens.toml"
    tokens.write_text(PEER_TOKENS)
    clock = ManualClock()
    made = {}
    for region, other in (("eu", "us"), ("us", "eu")):
        _, node, client = make_node(clock=clock, data_dir=tmp_path / region, region=region, tokens_file=tokens,
                                    peers=(f"http://{other}.test",), sync_seconds=3600.0)
        # the test drives every sync itself: the threads are stopped (and waited for), then the
        # stop flag is lowered again, since a stopped replication refuses deltas (shutdown)
        replication_of(node).stop()
        replication_of(node)._stop.clear()
        made[region] = (node, client)
    return clock, made


def test_the_cluster_series_shades_the_partition_and_names_the_unreachable_peer(two_regions):
    clock, made = two_regions
    (eu, eu_c), us_c = made["eu"], made["us"][1]
    rng = np.random.default_rng(3)
    link = replication_of(eu).links[0]
    down = httpx.Client(transport=httpx.MockTransport(_refused))
    closes = []

    # windows 1-2 in sync; 3-5 eu cannot reach us; 6 reachable again
    plan = [us_c, us_c, down, down, down, us_c]
    synced_at = {}
    for k, client in enumerate(plan):
        for c, prefix in ((eu_c, "e"), (us_c, "u")):
            rows = [{"agent_id": f"{prefix}-{i}", "features": rng.normal(size=2).tolist()} for i in range(30)]
            assert post_behaviors(c, rows).status_code == 200
        ok = replication_of(eu).sync_once(link, client, PEER_HEADERS)
        assert ok is (client is us_c)
        if ok:
            synced_at[k] = clock.t
        clock.t += 7.0
        close_window(us_c)
        close_window(eu_c)
        closes.append(clock.t)
        clock.t += 3.0
    answer = eu_c.get("/v1/dashboard/cluster", headers=READ)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["region"] == "eu" and body["at"] == closes
    regions = {g["region"]: g for g in body["regions"]}
    assert set(regions) == {"eu", "us"} and regions["eu"]["own"] and not regions["us"]["own"]
    assert regions["eu"]["staleness_seconds"] == [0.0] * 6 and regions["eu"]["confidence_factor"] == [1.0] * 6
    # us's staleness at each close: since eu last heard from us (the last successful sync)
    last = [synced_at[max(j for j in synced_at if j <= k)] for k in range(6)]
    staleness = regions["us"]["staleness_seconds"]
    assert staleness == [c - t for c, t in zip(closes, last, strict=True)], staleness
    # its part of the confidence: the resolver's rule (5 s allowed, then exp(-0.1 per s))
    part = [1.0 if s <= 5.0 else math.exp(-0.1 * (s - 5.0)) for s in staleness]
    assert regions["us"]["confidence_factor"] == pytest.approx(part, rel=1e-12)
    assert all(p < 1.0 for p in regions["us"]["confidence_factor"])      # 7 s between a sync and a close
    # the node's factor: the regions' parts weighted by their agents (30 each; us's first
    # registers reach eu at the second sync: us closes its first window after eu's first sync)
    us_agents = [0] + [30] * 5
    assert body["confidence_factor"] == pytest.approx(
        [math.fsum([30 * 1.0, n * p]) / (30 + n) for n, p in zip(us_agents, part, strict=True)], rel=1e-12)
    # the partition: from the first close eu saw us unreachable to the first it saw it again
    assert body["partitions"] == [{"peer": "http://us.test", "region": "us", "from": closes[2], "to": closes[5],
                                   "ongoing": False}]
    assert body["peers"][0]["url"] == "http://us.test" and body["peers"][0]["reachable"] is True
    # us cut off again: an ongoing partition up to now, and the peer named unreachable now
    assert replication_of(eu).sync_once(link, down, PEER_HEADERS) is False
    close_window(us_c)
    assert post_behaviors(eu_c, [{"agent_id": "e-0", "features": [0.0, 0.0]}]).status_code == 200
    close_window(eu_c)
    clock.t += 4.0
    body = eu_c.get("/v1/dashboard/cluster", headers=READ).json()
    assert body["partitions"][-1] == {"peer": "http://us.test", "region": "us", "from": body["at"][-1],
                                      "to": clock.t, "ongoing": True}
    now = body["peers"][0]
    assert now["reachable"] is False and now["sync_failures"] == 4 and "refused" in now["last_error"]
    assert now["seconds_since_sync"] == clock.t - synced_at[5]


def test_the_cluster_series_survives_the_history_s_snapshot_state(two_regions):
    clock, made = two_regions
    (eu, eu_c), us_c = made["eu"], made["us"][1]
    link = replication_of(eu).links[0]
    down = httpx.Client(transport=httpx.MockTransport(_refused))
    for client in (us_c, down):
        assert post_behaviors(eu_c, [{"agent_id": f"e-{i}", "features": [float(i), 1.0]} for i in range(25)]).status_code == 200
        replication_of(eu).sync_once(link, client, PEER_HEADERS)
        clock.t += 6.0
        close_window(eu_c)
    history = history_of(eu)
    state = history.export_state()
    records = history.cluster_windows()
    assert len(records) == 2 and [p.reachable for r in records for p in r.peers] == [True, False]
    history.cluster.clear()
    history.import_state(state)
    assert history.cluster_windows() == records
    # a snapshot written before the regions were recorded has no "cluster": nothing, not an error
    history.import_state({"populations": state["populations"]})
    assert history.cluster_windows() == []


def test_a_single_node_has_no_peers_and_no_partitions(make_node):
    _, node, client = make_node()
    assert post_behaviors(client, [{"agent_id": f"a-{i}", "features": [float(i), 1.0]} for i in range(25)]).status_code == 200
    close_window(client)
    body = client.get("/v1/dashboard/cluster", headers=READ).json()
    assert body["peers"] == [] and body["partitions"] == []
    assert [g["region"] for g in body["regions"]] == [node.settings.region]
    assert body["regions"][0]["staleness_seconds"] == [0.0]
    assert client.get("/v1/dashboard/cluster").status_code == 401


def test_the_cluster_query_needs_the_read_role_and_counts_its_refusals(make_node):
    from ..serve.conftest import metric

    _, node, client = make_node()
    unauthenticated = metric(client, "swarmguard_errors_total", code="unauthenticated")
    forbidden = metric(client, "swarmguard_errors_total", code="forbidden")
    r = client.get("/v1/dashboard/cluster")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert list(r.json()) == ["error"] and "\n" not in r.text
    r = client.get("/v1/dashboard/cluster", headers=auth("t-ingest"))
    assert r.status_code == 403 and r.json() == {"error": "role 'ingest' may not read"}
    assert metric(client, "swarmguard_errors_total", code="unauthenticated") == unauthenticated + 1
    assert metric(client, "swarmguard_errors_total", code="forbidden") == forbidden + 1
    r = client.get("/v1/dashboard/cluster?windows=121", headers=READ)
    assert r.status_code == 422 and list(r.json()) == ["error"] and "\n" not in r.json()["error"]
    assert client.get("/v1/dashboard/cluster", headers=READ).status_code == 200


def test_a_region_s_part_is_the_public_confidence_rule_even_where_exp_underflows(two_regions):
    """Each region's part is ``compute_confidence_factor`` of that region alone (the rule the
    node's factor comes from, clamped at the smallest positive float), not a copy of it: a
    region cut off for hours keeps a positive part, as the node's factor does."""
    import sys

    from swarmguard import compute_confidence_factor

    clock, made = two_regions
    (eu, eu_c), us_c = made["eu"], made["us"][1]
    link = replication_of(eu).links[0]
    down = httpx.Client(transport=httpx.MockTransport(_refused))
    rng = np.random.default_rng(5)
    for client, wait in ((us_c, 1.0), (us_c, 1.0), (down, 4 * 3600.0)):
        for c, prefix in ((eu_c, "e"), (us_c, "u")):
            rows = [{"agent_id": f"{prefix}-{i}", "features": rng.normal(size=2).tolist()} for i in range(20)]
            assert post_behaviors(c, rows).status_code == 200
        replication_of(eu).sync_once(link, client, PEER_HEADERS)
        clock.t += wait
        close_window(us_c)
        close_window(eu_c)
    body = eu_c.get("/v1/dashboard/cluster", headers=READ).json()
    us = next(g for g in body["regions"] if g["region"] == "us")
    parts = [compute_confidence_factor({"us": 1}, {"us": s}, "eu", 5.0, 0.1) for s in us["staleness_seconds"]]
    assert us["staleness_seconds"][-1] > 4 * 3600.0 - 1 and parts[-1] == sys.float_info.min
    assert us["confidence_factor"] == parts
    # the node's factor, from the same rule over both regions' agents (20 each)
    assert body["confidence_factor"][-1] == compute_confidence_factor(
        {"eu": 20, "us": 20}, {"us": us["staleness_seconds"][-1]}, "eu", 5.0, 0.1)


def test_the_cluster_series_is_bounded_and_its_snapshot_state_round_trips_through_json(two_regions):
    """A long-running node keeps the last ``max_windows`` closes (the oldest go first), and the
    state its snapshot writes (JSON, as serve.snapshot encodes it) comes back equal, capped too."""
    import json

    clock, made = two_regions
    eu, eu_c = made["eu"]
    history = history_of(eu)
    cap = history.max_windows
    closes = []
    for k in range(cap + 5):
        assert post_behaviors(eu_c, [{"agent_id": "e-0", "features": [float(k), 1.0]}]).status_code == 200
        clock.t += 1.5
        close_window(eu_c)
        closes.append(clock.t)
    records = history.cluster_windows()
    assert len(records) == cap and [r.at for r in records] == closes[-cap:]
    body = eu_c.get(f"/v1/dashboard/cluster?windows={cap}", headers=READ).json()
    assert body["at"] == closes[-cap:]
    # the peer was never reached (its region unknown): one ongoing partition from the oldest close kept
    assert body["partitions"] == [{"peer": "http://us.test", "region": None, "from": closes[-cap],
                                   "to": clock.t, "ongoing": True}]
    state = json.loads(json.dumps(history.export_state(), allow_nan=True))
    history.cluster.clear()
    history.import_state(state)
    assert history.cluster_windows() == records
    # a state longer than the cap (written by a node that kept more) keeps its newest records
    longer = dict(state, cluster=state["cluster"][:5] + state["cluster"])
    history.import_state(longer)
    assert history.cluster_windows() == records
