"""GET /v1/agents, /v1/agents/{id}, /v1/populations, /v1/events, and the windows behind them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from swarmguard.apps.serve.agent_state import severity_of
from swarmguard.structures.chi2 import chi2_logsf
from tests._exact import whitened_share_reference

from .conftest import auth, close_window, population_rows, post_behaviors, post_evidence

READ = auth("t-read")


def _three_windows(client, rng, n=120, d=4, shifted=(7,), cohort=None):
    for _ in range(3):
        X, rows = population_rows(rng, n, d, shifted=shifted, cohort=cohort)
        assert post_behaviors(client, rows).status_code == 200
        close_window(client)
    return X


def test_an_agent_is_visible_once_the_window_holding_it_closes(served):
    _, _, client = served
    post_behaviors(client, [{"agent_id": "a-1", "features": [1.0, 2.0]}])
    assert client.get("/v1/agents/a-1", headers=READ).status_code == 404
    assert client.get("/v1/agents", headers=READ).json() == {"agents": []}
    close_window(client)
    r = client.get("/v1/agents/a-1", headers=READ)
    assert r.status_code == 200 and r.json()["agent_id"] == "a-1"


def test_agent_ids_with_slashes_are_found(served):
    _, _, client = served
    post_behaviors(client, [{"agent_id": "team/a 1", "features": [1.0]}])
    close_window(client)
    r = client.get("/v1/agents/team/a%201", headers=READ)
    assert r.status_code == 200 and r.json()["agent_id"] == "team/a 1"


def test_evidence_without_behaviour_is_404(served):
    _, _, client = served
    post_evidence(client, [{"evidence_id": "e", "agent_id": "ghost", "evidence_type": "peer_report",
                            "log_odds": 2.0, "confidence": 1.0, "timestamp": 0.0}])
    r = client.get("/v1/agents/ghost", headers=READ)
    assert r.status_code == 404 and r.json() == {"error": "unknown agent 'ghost'"}


def test_the_shifted_agent_is_first_isolated_and_explained(served):
    _, node, client = served
    rng = np.random.default_rng(11)
    X = _three_windows(client, rng, shifted=(7,), cohort=lambda i: "eu" if i % 2 else "us")
    top = client.get("/v1/agents?top=3", headers=READ).json()["agents"]
    assert [a["agent_id"] for a in top][0] == "a-7"
    assert set(top[0]) >= {"agent_id", "severity", "p_value", "score", "isolated", "cohort"}
    assert top[0]["isolated"] is True and top[0]["cohort"] == "eu"
    assert top[0]["severity"] >= top[1]["severity"] >= top[2]["severity"]
    agent = client.get("/v1/agents/a-7", headers=READ).json()
    # score: the squared leave-one-out Mahalanobis distance; p-value its chi2(d) tail
    pop = node.populations["behaviors"]
    expected = pop.detector.protocol.score_agent_sync("a-7")["mahalanobis_squared"]
    assert agent["score"] == pytest.approx(expected, rel=1e-9)
    assert agent["p_value"] == pytest.approx(math.exp(chi2_logsf(agent["score"], 4)), rel=1e-9)
    assert agent["severity"] == severity_of(float(chi2_logsf(agent["score"], 4)))
    shares = [c["share"] for c in agent["contributions"]]
    assert math.fsum(shares) == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= v <= 1.0 for v in shares)
    assert shares == sorted(shares, reverse=True)
    # the documented definition (whitened parts, docs/scoring.md), from the population directly
    _, want = whitened_share_reference(X, 7, "auto")
    got = {c["feature"]: c["share"] for c in agent["contributions"]}
    np.testing.assert_allclose([got[f"f{j}"] for j in range(4)], want, rtol=1e-7, atol=1e-12)
    by_name = {c["feature"]: c for c in agent["contributions"]}
    for j in range(4):
        assert by_name[f"f{j}"]["actual"] == X[7, j]
        assert by_name[f"f{j}"]["typical"] == pytest.approx(math.fsum(X[:, j]) / len(X), rel=1e-12, abs=1e-15)
    assert agent["consensus"]["evidence_count"] >= 1 and 0.0 <= agent["consensus"]["probability"] <= 1.0
    assert set(agent["consensus"]) >= {"probability", "log_odds", "evidence_count"}
    assert agent["confidence_factor"] == 1.0
    cohort_top = client.get("/v1/agents?top=100&cohort=us", headers=READ).json()["agents"]
    assert cohort_top and all(a["cohort"] == "us" for a in cohort_top) and len(cohort_top) == 60


def test_populations_count_agents_and_mean_is_exact(served):
    _, _, client = served
    rng = np.random.default_rng(5)
    X = _three_windows(client, rng, n=60, d=3, shifted=(), cohort=lambda i: "eu" if i < 20 else "us")
    pops = {p["cohort"]: p for p in client.get("/v1/populations", headers=READ).json()["populations"]}
    assert set(pops) == {"", "eu", "us"}
    assert (pops[""]["count"], pops["eu"]["count"], pops["us"]["count"]) == (60, 20, 40)
    for j in range(3):
        assert pops["eu"]["mean"][j] == pytest.approx(math.fsum(X[:20, j]) / 20, rel=1e-12, abs=1e-15)
    one = client.get("/v1/populations/us", headers=READ).json()
    assert one["count"] == 40 and one["scores"]["max"] >= one["scores"]["p50"]
    assert client.get("/v1/populations/mars", headers=READ).status_code == 404


def test_events_stream_isolations_and_closes_when_asked(served):
    _, _, client = served
    rng = np.random.default_rng(11)
    _three_windows(client, rng, shifted=(7, 9))
    with client.stream("GET", "/v1/events?since=0&limit=2", headers=READ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert sorted(e["agent_id"] for e in events) == ["a-7", "a-9"]
    assert all(e["type"] == "isolation" for e in events)
    with client.stream("GET", "/v1/events?since=1&limit=1", headers=READ) as r:
        text = r.read().decode()
    assert "id: 2" in text and "id: 1\n" not in text
    # nothing new: the stream ends at its timeout with no event
    with client.stream("GET", "/v1/events?timeout=0.3", headers=READ) as r:
        assert "data:" not in r.read().decode()


def test_the_client_reads_the_same_answers(served):
    from swarmguard.client import NodeError, SwarmGuardClient

    _, _, tc = served
    rng = np.random.default_rng(11)
    node = SwarmGuardClient("http://testserver", token="t-ingest", http=tc)
    X, rows = population_rows(rng, 120, 4, shifted=(7,))
    assert node.post_behaviors(rows).accepted == 120
    with pytest.raises(NodeError) as info:
        node.close_window()
    assert info.value.status == 403
    admin = SwarmGuardClient("http://testserver", http=tc)
    admin._http.headers["Authorization"] = "Bearer t-admin"
    for _ in range(3):
        admin.post_behaviors(population_rows(rng, 120, 4, shifted=(7,))[1])
        admin.close_window()
    assert admin.top_agents(1)[0].agent_id == "a-7"
    assert admin.agent("a-7")["isolated"] is True
    assert [e.data["agent_id"] for e in admin.events(since=0, limit=1)] == ["a-7"]
    with pytest.raises(NodeError) as info:
        admin.agent("nobody")
    assert info.value.status == 404


def test_metrics_count_windows_and_isolations_and_openapi_is_served(served):
    from .conftest import metric

    _, _, client = served
    _three_windows(client, np.random.default_rng(11), shifted=(7,))
    assert metric(client, "swarmguard_windows_closed_total") == 3
    assert metric(client, "swarmguard_isolations_total") == 1
    assert metric(client, "swarmguard_agents", population="behaviors") == 120
    assert metric(client, "swarmguard_request_seconds_count", route="/v1/behaviors") == 3
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/behaviors", "/v1/evidence", "/v1/agents", "/v1/agents/{agent_id}", "/v1/populations",
            "/v1/events", "/metrics", "/healthz", "/readyz"} <= set(paths)


def test_populations_group_the_agents_once_not_once_per_cohort(served):
    _, node, client = served
    rng = np.random.default_rng(8)
    _three_windows(client, rng, n=90, d=2, shifted=(), cohort=lambda i: f"c{i % 30}")
    pop = node.populations["behaviors"]

    class CountingDict(dict):
        scans = 0

        def values(self):
            CountingDict.scans += 1
            return super().values()

    pop.agents = CountingDict(pop.agents)
    answer = client.get("/v1/populations", headers=READ).json()["populations"]
    assert CountingDict.scans <= 3                 # one pass per cohort made the answer quadratic
    by_cohort = {p["cohort"]: p for p in answer}
    assert len(by_cohort) == 31 and all(by_cohort[f"c{j}"]["count"] == 3 for j in range(30))
    for cohort in ["", "c0", "c17"]:               # the same answer as a cohort's own scan
        assert by_cohort[cohort] == json.loads(json.dumps(pop.cohort_summary(cohort)))


def test_the_client_quotes_agent_ids_in_the_path(served):
    from swarmguard.client import NodeError, SwarmGuardClient

    _, _, tc = served
    odd = ["q?population=spans", "50% off", "x#y", "../populations", "team/a 1"]
    post_behaviors(tc, [{"agent_id": a, "features": [float(i)]} for i, a in enumerate(odd)])
    admin = SwarmGuardClient("http://testserver", token="t-admin", http=tc)
    admin.close_window()
    for a in odd:
        assert admin.agent(a)["agent_id"] == a
    with pytest.raises(NodeError) as info:
        admin.agent("q")
    assert info.value.status == 404
