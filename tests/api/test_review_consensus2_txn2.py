"""Regression tests from the review of the fix/consensus2 and fix/txn2 merges.

Each test documents a defect found in review and is marked ``xfail(strict=True)``: it fails
now, and will report XPASS (a failure under strict) once the defect is fixed, so the marker
must then be removed.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from swarmguard import (
    BayesianEvidence,
    StableBayesianConsensus,
    SwarmGuardError,
    UnknownEvidenceTypeError,
)


# ---------------------------------------------------------------------- founding sources
@pytest.mark.xfail(strict=True, reason="review: one identity that sends probation_evidence pieces before anyone "
                   "else is the only founding source; the honest sources that come later never vote on its "
                   "agent, so it alone decides that agent with consensus_reached=True (docs/consensus.md "
                   "promises up to byzantine_threshold liars cannot leave the honest range)")
def test_one_early_identity_cannot_alone_decide_an_agent_that_ten_honest_sources_report_on():
    c = StableBayesianConsensus(byzantine_threshold=0.33)

    async def run():
        for k in range(10):       # the early identity whitewashes agent 0 with 10 pieces
            await c.add_evidence(BayesianEvidence(f"a{k}", 0, "peer_report", -8.0, 1.0, float(k), "early"))
        rng = np.random.default_rng(0)
        for agent in range(50):   # the guide's per-item loop: 10 honest observers, one piece per agent
            for node in range(10):
                await c.add_evidence(BayesianEvidence(f"{agent}-{node}", agent, "peer_report",
                                                      float(rng.normal(3.0, 1.0)), 1.0, 0.0, f"node-{node}"))
        return await c.distributed_evidence_consensus(0)

    r = asyncio.run(run())
    honest = c.export_evidence()["log_odds"][10:20].tolist()   # agent 0's ten honest totals (confidence 1)
    n = 11
    in_honest_range = n * min(honest) <= r["log_odds"] <= n * max(honest)
    assert in_honest_range or not r["consensus_reached"], (r["log_odds"], r["source_count"],
                                                          r["probation_source_count"])


# ---------------------------------------------------------------------- typed errors
@pytest.mark.xfail(strict=True, reason="review: holds_evidence (new in fix/txn2) raises a bare TypeError for "
                   "an unhashable source or id instead of a SwarmGuardError")
@pytest.mark.parametrize("source, evidence_id", [(["x"], "e1"), ("obs", ["e1"])])
def test_holds_evidence_refuses_unhashable_keys_with_a_typed_error(source, evidence_id):
    c = StableBayesianConsensus()
    c.add_evidence_batch(["e1"], [7], "behavioral_anomaly", [1.0], [1.0], [0.0], ["obs"])
    with pytest.raises(SwarmGuardError):
        c.holds_evidence(source, evidence_id)


@pytest.mark.xfail(strict=True, reason="review (older code, seen here): EvidenceType.from_code(-1) returns the "
                   "last member (Python negative index), so a code array with -1 is stored as code -1; the "
                   "export reads it as 'statistical_outlier' and re-sending the export is a conflict")
def test_negative_evidence_type_codes_are_refused():
    c = StableBayesianConsensus()
    before = c.state_fingerprint()
    with pytest.raises(UnknownEvidenceTypeError):
        c.add_evidence_batch([1], [1], np.array([-1]), [1.0], [1.0], [0.0], ["a"])
    assert c.state_fingerprint() == before


@pytest.mark.xfail(strict=True, reason="review: merge/+= (and export_evidence + add_evidence_batch, the documented "
                   "way to serialise a consensus) adds everything as one call, so sources on probation in the "
                   "original become founding sources of the copy: three throw-away ids flip agent 0 from "
                   "log-odds 7 to -144")
def test_a_merged_copy_keeps_the_sources_on_probation_on_probation():
    c = StableBayesianConsensus(probation_evidence=3)
    c.add_evidence_batch(["x0", "x1", "x2", "y", "z"], [0, 0, 1, 0, 0], "peer_report", [1.0, 1.0, 1.0, 2.0, 3.0],
                         [1.0] * 5, [0.0] * 5, ["a", "a", "a", "b", "c"])
    for k in range(3):        # after the founding: each on probation in c
        c.add_evidence_batch([f"s{k}"], [0], "peer_report", [-50.0], [1.0], [0.0], [f"sybil{k}"])
    want = c.consensus(0)
    assert want["probation_source_count"] == 3 and want["log_odds"] == 7.0
    copy = StableBayesianConsensus(probation_evidence=3)
    copy.merge(c)
    got = copy.consensus(0)
    assert (got["log_odds"], got["source_count"], got["probation_source_count"]) == (7.0, 3, 3)


@pytest.mark.xfail(strict=True, reason="review: probation counts pieces, not covered agents: 10 mild pieces per "
                   "throw-away id, all on ONE agent a founding source reports on, buy each id a full vote, and "
                   "the docs' own attack (tests/api/test_consensus.py::_honest_and_sybils) again gets all 10 "
                   "honest sources flagged and stops consensus on the agents the Sybils never touched")
def test_throwaway_ids_cannot_buy_their_vote_with_ten_pieces_on_one_covered_agent():
    rng = np.random.default_rng(0)
    c = StableBayesianConsensus()
    src = np.repeat(np.arange(10), 500)
    agents = np.concatenate([rng.permutation(np.tile(np.arange(200), 3))[:500] for _ in range(10)])
    truth = np.where(np.arange(200) % 2 == 0, 2.0, -2.0)
    lo = truth[agents] + rng.normal(size=src.size) * 0.5
    c.add_evidence_batch(np.arange(src.size), agents, "peer_report", lo, np.ones(src.size), np.zeros(src.size), src)
    before = c.consensus_many()
    touched = np.repeat(np.arange(80), 20)
    sybils = 10_000 + np.arange(touched.size)
    earn = np.repeat(sybils, 10)                 # 10 pieces each, all on agent 199, honest-looking values
    c.add_evidence_batch(100_000 + np.arange(earn.size), np.full(earn.size, 199), "peer_report",
                         np.full(earn.size, truth[199] / 10), np.ones(earn.size), np.zeros(earn.size), earn)
    lies = -truth[touched] * 1000.0 + rng.normal(size=touched.size)
    c.add_evidence_batch(np.arange(touched.size), touched, "peer_report", lies, np.ones(touched.size),
                         np.zeros(touched.size), sybils)
    after = c.consensus_many()
    assert not set(range(10)) & set(after["byzantine_nodes"])
    keys = list(after["agent_ids"])
    untouched = [keys.index(a) for a in range(80, 199)]
    assert before["consensus_reached"][80:199].all() and after["consensus_reached"][untouched].all()
