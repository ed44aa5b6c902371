"""Every node trusts every node's detector of a population as its own node does: a detector's
rows weigh alike on all nodes, so they reach the same consensus on the same rows (issue 14).

The consensus's trusted sources always vote, never end the founding and are never flagged.
Were ``serve:eu:behaviors`` trusted on eu alone, us would end its founding on eu's flags
(a source, untrusted there, with ``probation_evidence`` rows) while eu would not, and a later
observer would vote on eu and sit on probation on us: two probabilities for one agent."""

from __future__ import annotations

import numpy as np
import pytest

from swarmguard.apps.serve.peers import PeerLink, replication_of

from .conftest import ADMIN_SECRET, ManualClock, close_window, post_behaviors, post_evidence
from .test_peers_node import PEER_HEADERS

pytest.importorskip("opentelemetry.proto")

TOKENS = f"""
[[token]]
secret = "t-ingest"
role = "ingest"
[[token]]
secret = "t-read"
role = "read"
[[token]]
secret = "t-peer"
role = "peer"
[[token]]
secret = "{ADMIN_SECRET}"
role = "admin"
""" + "".join(f'[[token]]\nsecret = "t-obs{k}"\nrole = "observer"\nsource = "obs-{k}"\n' for k in (1, 2, 3))


def _evidence(eid: str, agent: str, log_odds: float) -> list[dict]:
    return [{"evidence_id": eid, "agent_id": agent, "evidence_type": "peer_report", "log_odds": log_odds,
             "confidence": 0.9, "timestamp": 1.0}]


@pytest.mark.parametrize("restart_us", [False, True])
def test_a_detectors_rows_weigh_alike_on_every_node(tmp_path, make_node, restart_us):
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS)
    clock = ManualClock()

    def node(region):
        return make_node(clock=clock, data_dir=tmp_path / region, region=region, tokens_file=tokens,
                         snapshot_every=1)[1:]

    eu, eu_c = node("eu")
    us, us_c = node("us")
    rng = np.random.default_rng(3)
    for w in range(12):                       # eu's detector flags one shifted agent a window
        X = rng.normal(size=(30, 3))
        X[5] += 12.0
        assert post_behaviors(eu_c, [{"agent_id": f"e{w}-{i}", "features": X[i].tolist()}
                                     for i in range(30)]).status_code == 200
        clock.t += 10.0
        close_window(eu_c)
    assert post_behaviors(us_c, [{"agent_id": f"u-{i}", "features": rng.normal(size=3).tolist()}
                                 for i in range(30)]).status_code == 200
    close_window(us_c)
    flags = [r for r in replication_of(eu).replicas.ledger.rows_of("eu") if r[6] == "serve:eu:behaviors"]
    probation = eu.populations["behaviors"].detector.settings.probation_evidence
    assert len(flags) >= probation            # enough rows to end a founding, were they untrusted
    for k in (1, 2):
        assert post_evidence(eu_c, _evidence(f"o{k}", "e0-5", 1.0), token=f"t-obs{k}").status_code == 200
    eu_link, us_link = PeerLink("http://us"), PeerLink("http://eu")
    assert replication_of(eu).sync_once(eu_link, us_c, PEER_HEADERS), eu_link.last_error
    if restart_us:                            # us restarts from a snapshot holding eu's flags
        us.drain()
        us.close()
        us, us_c = node("us")
        assert us.snapshots.covered > 0 and us.replayed == 0
        us_link = PeerLink("http://eu")
    # an observer seen after eu's flags: voting on every node, or on probation on every node
    assert post_evidence(eu_c, _evidence("o3", "e0-5", 2.0), token="t-obs3").status_code == 200
    assert replication_of(eu).sync_once(eu_link, us_c, PEER_HEADERS), eu_link.last_error
    assert replication_of(us).sync_once(us_link, eu_c, PEER_HEADERS), us_link.last_error
    eu_pop, us_pop = eu.populations["behaviors"], us.populations["behaviors"]
    assert eu_pop.consensus_of("e0-5")["evidence_count"] == 4        # eu's flag and three observers
    for agent in ["e0-5", *(r[1] for r in flags)]:
        assert us_pop.consensus_of(agent) == eu_pop.consensus_of(agent), agent
    assert us_pop.detector.consensus.founding_sources == eu_pop.detector.consensus.founding_sources
