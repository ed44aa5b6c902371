"""The dashboard's JSON queries (/v1/dashboard/*) and its static files, through the node's app.

Each answer is checked against what the node says elsewhere (``/v1/agents``,
``/v1/populations``, ``/v1/events``) or against the vectors posted, never against
an earlier answer of its own.
"""

from __future__ import annotations

import json
import math
import tomllib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from swarmguard.apps.dashboard.history import P_VALUE_BINS  # noqa: E402

from ..serve.conftest import ManualClock, auth, close_window, metric, post_behaviors, post_evidence  # noqa: E402

READ = auth("t-read")
ROOT = Path(__file__).resolve().parents[3]
STATIC = ROOT / "src" / "swarmguard" / "apps" / "dashboard" / "static"
PLANTED = {"a-3": 2, "a-11": 3}          # agent -> first window it misbehaves in


def feed(client, clock, windows=4, n=120, d=3, seed=5):
    """``windows`` windows of ``n`` agents in two cohorts; returns each window's matrix."""
    rng = np.random.default_rng(seed)
    sent = []
    for w in range(1, windows + 1):
        X = rng.normal(size=(n, d))
        for agent, start in PLANTED.items():
            if w >= start:
                X[int(agent[2:]), 0] += 14.0
        rows = [{"agent_id": f"a-{i}", "features": X[i].tolist(), "cohort": "north" if i % 2 else "south"}
                for i in range(n)]
        assert post_behaviors(client, rows).status_code == 200
        clock.t += 61
        close_window(client)
        sent.append(X)
    return sent


@pytest.fixture
def fed(make_node):
    clock = ManualClock()
    settings, node, client = make_node(clock=clock, require="anomaly")
    sent = feed(client, clock)
    return node, client, sent


def test_static_files_are_served_without_a_token_and_ship_in_the_wheel(make_node):
    _, _, client = make_node()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard/plotly.min.js"></script>' in page.text and "http" not in page.text.split("<body>")[0]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "connect-src 'self';" in policy and "default-src 'none'" in policy
    import plotly

    plotly_js = client.get("/dashboard/plotly.min.js")
    assert plotly_js.status_code == 200
    assert plotly_js.content == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    for name in ("dashboard.js", "dashboard.css"):
        r = client.get(f"/dashboard/{name}")
        assert r.status_code == 200 and r.content == (STATIC / name).read_bytes()
    r = client.get("/dashboard/tokens.toml")
    assert r.status_code == 404 and list(r.json()) == ["error"]
    # the page's own files are package data (pyproject), so `pip install` ships them
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = {p for pattern in patterns["swarmguard.apps.dashboard"] for p in (STATIC.parent).glob(pattern)}
    assert shipped == set(STATIC.iterdir())
    # the script reads the token from sessionStorage and sends it as a header, never in a URL
    script = (STATIC / "dashboard.js").read_text()
    assert "sessionStorage" in script and "Authorization" in script and "new EventSource" not in script
    assert "?token" not in script and "access_token" not in script


def test_queries_need_the_read_role_and_answer_errors_in_one_line(fed):
    node, client, _ = fed
    for path in ("/v1/dashboard/status", "/v1/dashboard/top", "/v1/dashboard/history", "/v1/dashboard/agents/a-3",
                 "/v1/dashboard/observers", "/v1/dashboard/regions"):
        r = client.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and list(r.json()) == ["error"]
        assert client.get(path, headers=auth("t-ingest")).status_code == 403
        assert client.get(path, headers=READ).status_code == 200, path
    before = metric(client, "swarmguard_errors_total", code="unknown_agent")
    r = client.get("/v1/dashboard/agents/nobody", headers=READ)
    assert (r.status_code, r.json()) == (404, {"error": "unknown agent 'nobody'"})
    assert metric(client, "swarmguard_errors_total", code="unknown_agent") == before + 1
    r = client.get("/v1/dashboard/top?population=nope", headers=READ)
    assert r.status_code == 404 and "unknown population 'nope'" in r.json()["error"]
    r = client.get("/v1/dashboard/top?top=0", headers=READ)
    assert r.status_code == 422 and list(r.json()) == ["error"] and "\n" not in r.json()["error"]
    assert client.get("/v1/dashboard/history?windows=121", headers=READ).status_code == 422


def test_top_rows_match_the_node_and_name_the_first_isolation(fed):
    node, client, sent = fed
    top = client.get("/v1/dashboard/top?top=5", headers=READ).json()
    listed = client.get("/v1/agents?top=5", headers=READ).json()["agents"]
    assert [r["agent_id"] for r in top["agents"]] == [r["agent_id"] for r in listed]
    assert {r["agent_id"] for r in top["agents"][:2]} == set(PLANTED)
    with client.stream("GET", "/v1/events?since=0&timeout=0.5", headers=READ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    first = {}
    for e in events:
        first.setdefault(e["agent_id"], e["window"])
    for row, plain in zip(top["agents"], listed, strict=True):
        assert (row["severity"], row["p_value"], row["isolated"]) == (plain["severity"], plain["p_value"], plain["isolated"])
        assert row["first_flagged"] == first.get(row["agent_id"])
        detail = client.get(f"/v1/agents/{row['agent_id']}", headers=READ).json()
        assert row["top_features"] == [{"feature": c["feature"], "share": c["share"]} for c in detail["contributions"][:2]]
        assert row["consensus_probability"] == detail["consensus"]["probability"]
    for agent, start in PLANTED.items():
        assert first[agent] >= start
        assert next(r for r in top["agents"] if r["agent_id"] == agent)["top_features"][0]["feature"] == "f0"
    south = client.get("/v1/dashboard/top?top=100&cohort=south", headers=READ).json()["agents"]
    assert south and all(r["cohort"] == "south" for r in south) and len(south) == 60


def test_history_lanes_and_calibration_are_the_windows_results(fed):
    node, client, sent = fed
    h = client.get("/v1/dashboard/history?top=4&windows=3", headers=READ).json()
    assert [w["window"] for w in h["windows"]] == [2, 3, 4] and all(w["agents"] == 120 for w in h["windows"])
    everyone = {a["agent_id"]: a for a in client.get("/v1/agents?top=1000", headers=READ).json()["agents"]}
    lanes = h["agent_lanes"]
    assert len(lanes["agents"]) == 4 and set(PLANTED) <= set(lanes["agents"][:2])
    for agent, row in zip(lanes["agents"], lanes["severity"], strict=True):
        assert row[-1] == everyone[agent]["severity"]
    for agent, start in PLANTED.items():
        row = lanes["severity"][lanes["agents"].index(agent)]
        assert all(s == 100 for s in row[max(0, start - 2):])     # 14σ on one feature: p far below 1e-12
    # calibration: per cohort, the last window's p-values counted into equal bins over [0, 1]
    edges = [Fraction(k, P_VALUE_BINS) for k in range(P_VALUE_BINS + 1)]
    assert [Fraction(e).limit_denominator(1000) for e in h["calibration"]["bin_edges"]] == edges
    for cohort in ("north", "south"):
        ps = [Fraction(a["p_value"]) for a in everyone.values() if a["cohort"] == cohort]
        want = [sum(1 for p in ps if edges[k] <= p < edges[k + 1] or (k == P_VALUE_BINS - 1 and p == 1))
                for k in range(P_VALUE_BINS)]
        assert h["calibration"]["cohorts"][cohort] == want and sum(want) == 60
    # cohort lanes: the largest severity of the cohort's agents in the last window
    for cohort, row in zip(h["cohort_lanes"]["cohorts"], h["cohort_lanes"]["severity"], strict=True):
        assert row[-1] == max(a["severity"] for a in everyone.values() if a["cohort"] == cohort)


def test_drill_down_has_the_posted_vectors_the_typical_values_and_the_evidence(fed):
    node, client, sent = fed
    post_evidence(client, [{"evidence_id": "x1", "agent_id": "a-3", "evidence_type": "peer_report",
                            "log_odds": 2.5, "confidence": 0.9, "timestamp": 1.0},
                           {"evidence_id": "x2", "agent_id": "a-3", "evidence_type": "peer_report",
                            "log_odds": 0.5, "confidence": 0.9, "timestamp": 2.0}], token="t-obs7")
    d = client.get("/v1/dashboard/agents/a-3", headers=READ).json()
    assert d["first_flagged"] is not None and d["first_flagged"] >= PLANTED["a-3"]
    h = d["history"]
    assert h["windows"] == [1, 2, 3, 4] and h["features"] == ["f0", "f1", "f2"]
    for k, X in enumerate(sent):                   # a-3 is among each window's kept top (120 < 200)
        assert [h["actual"][j][k] for j in range(3)] == X[3].tolist()
    populations = client.get("/v1/populations", headers=READ).json()["populations"]
    whole = next(p for p in populations if p["cohort"] == "" and p["population"] == "behaviors")
    assert [h["typical"][j][-1] for j in range(3)] == whole["mean"]
    assert all(math.isclose(h["spread"][j][-1], whole["covariance"]["std"][j], rel_tol=1e-9) for j in range(3))
    evidence = {e["observer"]: e for e in d["evidence"]}
    assert evidence["observer-7"]["evidence"] == 2 and evidence["observer-7"]["log_odds_sum"] == 3.0
    assert evidence["observer-7"]["flagged"] is False


def test_a_restarted_node_has_the_same_history(make_node, tmp_path):
    clock = ManualClock()
    _, node, client = make_node(clock=clock, require="anomaly", data_dir=tmp_path / "d")
    feed(client, clock, windows=3)
    want = client.get("/v1/dashboard/history", headers=READ).json()
    want_agent = client.get("/v1/dashboard/agents/a-11", headers=READ).json()
    node.close()
    _, _, again = make_node(clock=clock, require="anomaly", data_dir=tmp_path / "d")
    assert again.get("/v1/dashboard/history", headers=READ).json() == want
    assert again.get("/v1/dashboard/agents/a-11", headers=READ).json()["history"] == want_agent["history"]


def test_an_empty_node_answers_empty_queries(make_node):
    _, _, client = make_node()
    s = client.get("/v1/dashboard/status", headers=READ).json()
    assert s["populations"]["behaviors"] == {"windows_closed": 0, "agents": 0, "open_window_vectors": 0}
    assert client.get("/v1/dashboard/top", headers=READ).json()["agents"] == []
    h = client.get("/v1/dashboard/history", headers=READ).json()
    assert h["windows"] == [] and h["agent_lanes"]["agents"] == [] and h["calibration"]["cohorts"] == {}
    assert client.get("/v1/dashboard/observers", headers=READ).json() == {"observers": []}
    assert client.get("/v1/dashboard/regions", headers=READ).json()["regions"] == []
