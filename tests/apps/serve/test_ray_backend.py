"""``swarmguard serve --backend ray``: a node on the Ray engine ingests behaviours and evidence
and answers the query API as the in-process node does on the same input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from .conftest import auth, close_window, population_rows, post_behaviors, post_evidence

pytestmark = pytest.mark.slow
READ = auth("t-read")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="the Ray backend needs the swarmguard[ray] extra")
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        started = True
    yield ray
    if started:
        ray.shutdown()


def _feed(client, seed: int = 3):
    """Three windows of 90 agents in two cohorts, agents 7 and 12 shifted, and evidence on 7."""
    rng = np.random.default_rng(seed)
    for _ in range(3):
        X, rows = population_rows(rng, 90, 4, shifted=(7, 12), cohort=lambda i: "eu" if i % 2 else "us")
        assert post_behaviors(client, rows).status_code == 200
        close_window(client)
    evidence = [{"evidence_id": f"e-{k}", "agent_id": "a-7", "evidence_type": "behavioral_anomaly",
                 "log_odds": 2.0, "confidence": 0.9, "timestamp": 1.7e9 + k} for k in range(3)]
    r = post_evidence(client, evidence)
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    bad = dict(evidence[0], evidence_id="e-bad", confidence=7.0)          # refused on Ray as in process
    r = post_evidence(client, [bad])
    assert r.status_code == 400 and set(r.json()) == {"error"}
    return X


def _answers(client) -> dict:
    top = client.get("/v1/agents?top=10", headers=READ).json()["agents"]
    return {
        "top": top,
        "agent": client.get("/v1/agents/a-7", headers=READ).json(),
        "populations": client.get("/v1/populations", headers=READ).json()["populations"],
        "eu": client.get("/v1/populations/eu", headers=READ).json(),
        "dashboard": client.get("/v1/dashboard/agents/a-7", headers=READ),
        "unknown": client.get("/v1/agents/nobody", headers=READ).status_code,
    }


def test_a_ray_node_answers_as_the_in_process_node_on_the_same_input(make_node, tmp_path, ray_local):
    _, _, local = make_node(data_dir=tmp_path / "local")
    X = _feed(local)
    want = _answers(local)
    _, ray_node, on_ray = make_node(data_dir=tmp_path / "ray", backend="ray")
    assert type(ray_node.populations["behaviors"].detector.engine).__name__ == "RayEngine"
    assert np.array_equal(_feed(on_ray), X)
    got = _answers(on_ray)

    assert [a["agent_id"] for a in got["top"]] == [a["agent_id"] for a in want["top"]]
    assert {a["agent_id"] for a in got["top"][:2]} == {"a-7", "a-12"}
    for g, w in zip(got["top"], want["top"], strict=True):
        assert g["score"] == pytest.approx(w["score"], rel=1e-9)
        assert (g["severity"], g["isolated"], g["cohort"]) == (w["severity"], w["isolated"], w["cohort"])
    agent, ref = got["agent"], want["agent"]
    assert agent["isolated"] is True and agent["cohort"] == "eu"
    shares = [c["share"] for c in agent["contributions"]]
    assert None not in shares and math.fsum(shares) == pytest.approx(1.0, abs=1e-12)
    assert [c["feature"] for c in agent["contributions"]] == [c["feature"] for c in ref["contributions"]]
    np.testing.assert_allclose(shares, [c["share"] for c in ref["contributions"]], rtol=1e-7)
    assert agent["consensus"]["evidence_count"] == ref["consensus"]["evidence_count"] >= 3
    assert agent["consensus"]["probability"] == pytest.approx(ref["consensus"]["probability"], rel=1e-12)
    assert agent["confidence_factor"] == ref["confidence_factor"]
    assert [(p["cohort"], p["count"]) for p in got["populations"]] == [(p["cohort"], p["count"])
                                                                       for p in want["populations"]]
    np.testing.assert_allclose(got["populations"][0]["mean"], want["populations"][0]["mean"], rtol=1e-12)
    assert got["eu"]["count"] == want["eu"]["count"] == 45
    np.testing.assert_allclose(got["eu"]["mean"], want["eu"]["mean"], rtol=1e-12)
    assert got["dashboard"].status_code == 200 and want["dashboard"].status_code == 200
    assert got["unknown"] == want["unknown"] == 404
