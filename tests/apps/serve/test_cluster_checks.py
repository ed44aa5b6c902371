"""The harness's checks (benchmarks/cluster_checks.py) can fail: each one, run on a real node's
state and the history that made it, holds; run on a doctored history or state, it fails."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from cluster_checks import (  # noqa: E402
    check_availability,
    check_convergence,
    check_evidence,
    check_reference,
    check_registers,
    expected_confidence,
)
from cluster_harness import ScenarioResult, WriteRecord  # noqa: E402

from .conftest import ADMIN_SECRET, auth, close_window, post_behaviors, post_evidence  # noqa: E402
from .test_peers_node import pair  # noqa: E402, F401 - the fixture


@pytest.fixture
def served_history(pair):  # noqa: F811
    """One node (region r0) fed two behaviour writes and one evidence line, and that history."""
    clock, node = pair
    _, r0, c = node("r0")
    rng = np.random.default_rng(11)
    rows = [{"agent_id": f"a{i}", "features": rng.normal(size=2).tolist()} for i in range(8)]
    evidence = [{"evidence_id": "e1", "agent_id": "a1", "evidence_type": "behavioral_anomaly", "log_odds": 0.75,
                 "confidence": 0.5, "timestamp": clock.t}]
    assert post_behaviors(c, rows).status_code == 200
    close_window(c)
    assert post_evidence(c, evidence).status_code == 200
    state = c.get("/v1/peer/state", headers=auth(ADMIN_SECRET)).json()
    cluster = c.get("/v1/cluster", headers=auth("t-read")).json()
    history = [WriteRecord(0, "behaviors", 0, "r0", rows, t_send=1.0, t_done=1.1, outcome="ack", status=200, live=True),
               WriteRecord(1, "evidence", 0, "r0", evidence, t_send=2.0, t_done=2.1, outcome="ack", status=200,
                           live=True)]
    return state, cluster, history


def _result(history, states, clusters, converge_s=1.0):
    return ScenarioResult(config=None, history=history, events=[], probe_node=0, probe=[], after_heal_cf=[],
                          converge_s=converge_s, states=states, clusters=clusters, link_bytes=0, starts=[],
                          ready_s=[])


def test_checks_hold_on_the_history_that_made_the_state(served_history):
    state, cluster, history = served_history
    result = _result(history, [state, copy.deepcopy(state)], [cluster, copy.deepcopy(cluster)])
    for check in (check_availability(history), check_registers(result), check_evidence(result),
                  check_convergence(result), check_reference(result, state)):
        assert check.ok, str(check)


def test_a_refused_write_to_a_live_node_fails_availability(served_history):
    _, _, history = served_history
    doctored = copy.deepcopy(history)
    doctored[0].outcome, doctored[0].status = "refused", 503
    assert not check_availability(doctored).ok


def test_a_lost_update_fails_the_register_check(served_history):
    state, cluster, history = served_history
    later = WriteRecord(2, "behaviors", 0, "r0", [{"agent_id": "a3", "features": [9.0, 9.0]}], t_send=3.0,
                        t_done=3.1, outcome="ack", status=200, live=True)
    check = check_registers(_result([*history, later], [state], [cluster]))
    assert not check.ok and any("'a3'" in f for f in check.failures), str(check)
    # a register nobody wrote
    check = check_registers(_result([history[1]], [state], [cluster]))
    assert not check.ok and any("nobody wrote" in f for f in check.failures), str(check)


def test_missing_duplicated_or_altered_evidence_fails_the_evidence_check(served_history):
    state, cluster, history = served_history
    missing = copy.deepcopy(state)
    missing["evidence"]["rows"] = []
    twice = copy.deepcopy(state)
    twice["evidence"]["rows"] = twice["evidence"]["rows"] * 2
    altered = copy.deepcopy(state)
    altered["evidence"]["rows"][0][5] = 0.5
    for doctored in (missing, twice, altered):
        assert not check_evidence(_result(history, [state, doctored], [cluster, cluster])).ok


def test_diverged_nodes_or_no_convergence_fail_the_convergence_check(served_history):
    state, cluster, history = served_history
    other = copy.deepcopy(state)
    other["digest"] = "0" * 64
    assert not check_convergence(_result(history, [state, other], [cluster, cluster])).ok
    assert not check_convergence(_result(history, [state, state], [cluster, cluster], converge_s=math.inf)).ok


def test_statistics_off_the_reference_by_more_than_1e_12_fail_the_reference_check(served_history):
    state, cluster, history = served_history
    reference = copy.deepcopy(state)
    mean = reference["populations"]["behaviors"]["mean"]
    mean[0] = float.hex(float.fromhex(mean[0]) * (1 + 1e-9))
    check = check_reference(_result(history, [state], [cluster]), reference)
    assert not check.ok and any("mean" in f for f in check.failures), str(check)


def test_expected_confidence_is_the_documented_rule():
    # 3 agents of the own region, 1 of a region silent 2 s past the 5 s limit, decay 0.5
    got = expected_confidence({"a": 3, "b": 1}, {"b": 7.0}, "a", 5.0, 0.5)
    assert got == math.fsum([3.0, math.exp(-1.0)]) / 4
    assert expected_confidence({"a": 3, "b": 1}, {"b": 4.0}, "a", 5.0, 0.5) == 1.0
