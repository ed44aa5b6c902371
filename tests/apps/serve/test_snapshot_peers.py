"""Snapshots of a replicating node: restarted from its snapshot and its log's tail, a node whose
peers' deltas were compacted away is the node that never stopped (its evidence ledger, vectors
and replicas bit for bit), and it still catches up with its peers by delta."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from swarmguard.apps.serve.peers import PEER_DELTA, WIRE_GZIP_LEVEL, PeerLink, replication_of

from . import _snapshot_driver as drive
from .conftest import ManualClock, auth, close_window, post_behaviors, post_evidence
from .test_peers_node import PEER_HEADERS, PEER_TOKENS

pytest.importorskip("opentelemetry.proto")


class _Run:
    """Two nodes, eu and us, on one clock; the same steps give the same nodes (module docstring)."""

    def __init__(self, root, make_node, eu_every: int):
        self.root, self.make_node, self.eu_every = root, make_node, eu_every
        root.mkdir(parents=True, exist_ok=True)
        tokens = root / "tokens.toml"
        tokens.write_text(PEER_TOKENS)
        self.tokens, self.clock, self.step = tokens, ManualClock(), 0
        self.us, self.us_c = self._node("us", 0)
        self.eu, self.eu_c = self._node("eu", eu_every)
        self.links = {"eu>us": PeerLink("http://us"), "us>eu": PeerLink("http://eu")}

    def _node(self, region: str, every: int):
        _, node, client = self.make_node(clock=self.clock, data_dir=self.root / region, region=region,
                                         tokens_file=self.tokens, snapshot_every=every)
        return node, client

    def tick(self) -> None:
        self.step += 1
        self.clock.t = drive.BASE_T + 10.0 * self.step

    def behaviors(self, client, rows) -> None:
        self.tick()
        assert post_behaviors(client, rows).status_code == 200

    def evidence(self, client, rows) -> None:
        self.tick()
        assert post_evidence(client, rows).status_code == 200

    def close(self, client) -> None:
        self.tick()
        close_window(client)

    def sync(self, src: str, dst: str) -> PeerLink:
        self.tick()
        link = self.links[f"{src}>{dst}"]
        node, client = (self.eu, self.us_c) if src == "eu" else (self.us, self.eu_c)
        assert replication_of(node).sync_once(link, client, PEER_HEADERS), link.last_error
        return link

    def restart_eu(self, how: str | None) -> None:
        """eu's process ends (``kill``: the log as it is; ``drain``: what SIGTERM does, a snapshot)
        and starts again from its data dir; None: it goes on. Either way its link to us is then a
        fresh process's (it asks for us's vectors first), so both runs ship the same deltas."""
        if how == "kill":
            self.eu.log.close()
        elif how == "drain":
            self.eu.drain()
            self.eu.close()
        if how is not None:
            self.eu, self.eu_c = self._node("eu", self.eu_every)
        self.links["eu>us"] = PeerLink("http://us")


def _rows(rng, prefix: str, n: int, shifted: int | None = None) -> list[dict]:
    X = rng.normal(size=(n, 3))
    if shifted is not None:
        X[shifted] += 12.0
    return [{"agent_id": f"{prefix}-{i}", "features": X[i].tolist()} for i in range(n)]


def _evidence(prefix: str, agent: str, log_odds: float, t: float) -> list[dict]:
    return [{"evidence_id": prefix, "agent_id": agent, "evidence_type": "peer_report", "log_odds": log_odds,
             "confidence": 0.9, "timestamp": t}]


def _first_part(run: _Run, rng) -> None:
    """Writes on both nodes, deltas both ways, a conflicting evidence id, three eu windows."""
    for w in range(3):
        run.behaviors(run.eu_c, _rows(rng, f"e{w}", 30, shifted=5))
        run.behaviors(run.us_c, _rows(rng, f"u{w}", 25))
        run.evidence(run.eu_c, _evidence(f"ev-{w}", "e0-5", 1.5 + w, float(w)))
        # the same key with other content on both nodes before they sync: the conflict rule's alias
        run.evidence(run.us_c, _evidence(f"ev-{w}", "e0-5", -0.5 - w, float(w)))
        run.close(run.us_c)
        run.sync("us", "eu")                   # logged on eu as peer deltas
        run.close(run.eu_c)
        run.sync("eu", "us")
    run.behaviors(run.us_c, _rows(rng, "u-late", 4))
    run.sync("us", "eu")                       # a peer delta in eu's log tail, after its last snapshot


def _second_part(run: _Run, rng) -> None:
    # the restarted node's first contact, before it writes (a node's sync threads run at its start)
    run.sync("eu", "us")
    run.behaviors(run.eu_c, _rows(rng, "e-after", 6))
    run.evidence(run.us_c, _evidence("ev-after", "e0-5", 0.75, 9.0))
    run.close(run.eu_c)
    run.sync("eu", "us")
    run.sync("us", "eu")


def _observed(run: _Run) -> dict:
    return {"eu": drive.observed(run.eu, run.eu_c), "us": drive.observed(run.us, run.us_c)}


def _without_heard(observed: dict) -> dict:
    """``observed`` less what unlogged deltas carry: when each region was last heard of, the
    peers' acknowledgements, and the confidence factor computed from them."""
    for replica in observed["eu"]["peers"]["replicas"].values():
        for key in ("freshness.times", "acked.counts"):
            replica.pop(key)
    observed["eu"]["populations"].pop("confidence_factor")
    return observed


def _own_rows(node, origin: str) -> list[list]:
    """The detector evidence rows of ``origin`` the node's ledger holds."""
    return [row for row in replication_of(node).replicas.ledger.rows_of(origin) if row[2] == "behavioral_anomaly"]


def _peer_delta_records(node) -> int:
    return sum(1 for r in node.log.records(after=0) if r.kind == PEER_DELTA)


@pytest.mark.parametrize("how", ["kill", "drain"])
def test_a_replicating_node_restarted_from_its_snapshot_is_the_node_that_never_stopped(tmp_path, make_node, how):
    run = _Run(tmp_path / "run", make_node, eu_every=2)
    ref = _Run(tmp_path / "ref", make_node, eu_every=0)
    for r in (run, ref):
        _first_part(r, np.random.default_rng(5))
    assert run.eu.snapshots.taken == 1 and ref.eu.snapshots.taken == 0
    # the peer deltas before the snapshot are compacted away; the later ones are in the tail
    tail_deltas = _peer_delta_records(run.eu)
    assert 0 < tail_deltas < _peer_delta_records(ref.eu)
    tail = len(run.eu.log)
    ledger = replication_of(ref.eu).replicas.ledger
    assert ledger.origins() == ["eu", "us"] and len(ledger.rows_of("us")) == 3
    consensus = ref.eu.populations["behaviors"].detector.consensus.export_state()["evidence"]
    assert sum(str(i).startswith("~") for i in consensus["evidence_ids"]) == 3    # the three aliases
    run.restart_eu(how)
    ref.restart_eu(None)
    # kill: only the tail after the snapshot is replayed; drain: a snapshot of everything, nothing
    assert run.eu.replayed == (tail - 1 if how == "kill" else 0)
    if how == "drain":                                    # a snapshot of everything: bit for bit
        drive.assert_same(_observed(run), _observed(ref))
    else:
        # killed: a delta that brought no register or evidence row (a pull of nothing new) is not
        # logged, so the freshness and the peer's acknowledgement it carried since the last logged
        # record are gone until the next sync; everything else is bit for bit
        seen, held = _observed(run), _observed(ref)
        assert seen["eu"]["peers"]["replicas"]["behaviors"]["freshness.times"] != \
            held["eu"]["peers"]["replicas"]["behaviors"]["freshness.times"]
        drive.assert_same(_without_heard(seen), _without_heard(held))
    own = _own_rows(run.eu, "eu")      # the detector's flags of the shifted agents: eu's observations
    assert [row[1] for row in own] == ["e0-5", "e1-5", "e2-5"]
    assert all(row[6] == "serve:eu:behaviors" for row in own)
    assert own == _own_rows(ref.eu, "eu") and len({row[0] for row in own}) == len(own)   # never doubled
    for r in (run, ref):                                  # the same future, syncing by delta
        _second_part(r, np.random.default_rng(6))
    drive.assert_same(_observed(run), _observed(ref))
    # us holds eu's flags as eu does, and so the same consensus on the flagged agent
    own = _own_rows(run.eu, "eu")
    assert _own_rows(run.us, "eu") == own
    for agent in ("e0-5", "e1-5", "e2-5"):
        assert run.us.populations["behaviors"].consensus_of(agent) == run.eu.populations["behaviors"].consensus_of(agent)
    eu, us = (c.get("/v1/cluster", headers=auth("t-read")).json() for c in (run.eu_c, run.us_c))
    assert eu["version_vector"] == us["version_vector"] and eu["populations"] == us["populations"]
    assert eu["evidence"] == us["evidence"] and eu["evidence"]["rows"] == 7 + len(own)   # observers' and eu's flags


def test_a_node_restarted_from_its_snapshot_catches_up_from_its_peer_by_delta(tmp_path, make_node):
    run = _Run(tmp_path / "run", make_node, eu_every=1)
    rng = np.random.default_rng(8)
    _first_part(run, rng)
    run.behaviors(run.us_c, _rows(rng, "bulk", 1500))    # enough state that a full transfer would show
    run.close(run.us_c)
    run.sync("us", "eu")
    run.close(run.eu_c)                                   # a snapshot after it
    before = _peer_delta_records(run.eu)
    run.restart_eu("kill")
    assert run.eu.snapshots.covered > 0 and run.eu.replayed == len(run.eu.log) - 1
    assert _peer_delta_records(run.eu) == before      # what compaction left: the restart replays it
    run.behaviors(run.us_c, _rows(rng, "u-new", 5))       # us writes while eu was down
    run.close(run.us_c)
    full = len(gzip.compress(replication_of(run.us).replicas.delta_since(None).to_bytes(), WIRE_GZIP_LEVEL))
    link = run.sync("eu", "us")                           # a fresh process: asks for us's vectors first
    assert 0 < link.bytes_received * 10 < full and link.bytes_shipped * 10 < full
    eu, us = (c.get("/v1/cluster", headers=auth("t-read")).json() for c in (run.eu_c, run.us_c))
    assert eu["version_vector"] == us["version_vector"] and eu["populations"] == us["populations"]
    assert eu["populations"]["behaviors"]["count"] == 3 * 30 + 3 * 25 + 4 + 1500 + 5
    assert eu["evidence"] == us["evidence"]


def test_the_ledger_state_round_trips_rows_past_a_gap_and_refuses_damage():
    from swarmguard.apps.serve.evidence_ledger import EvidenceLedger
    from swarmguard.errors import InvalidInputError

    ledger = EvidenceLedger("eu")
    ledger.append_local([["a", "x", "peer_report", 0.1, 0.9, 1.0, "obs"], [7, "y", "anomaly", -2.5, 1.0, 2.0, "obs"]])
    row = ["b", "z", "peer_report", 1 / 3, 0.5, 3.0, "obs-us"]
    ledger.commit(ledger.plan(_ledger_delta([["us", 1, *row], ["us", 3, *row[:3], 0.1 + 0.2, *row[4:]]])))
    back = EvidenceLedger.from_state(json.loads(json.dumps(ledger.export_state())))
    assert back == ledger and back.region == "eu"
    assert back.version.to_mapping() == ledger.version.to_mapping() == {"eu": 2, "us": 1}    # us#3 past a gap
    assert back.rows_of("us")[1][3] == 0.1 + 0.2 and back.rows_of("eu")[1][0] == 7
    for bad in ({"region": "eu"}, {"region": "eu", "rows": {"us": [[0, *row]]}},
                {"region": "eu", "rows": {"us": [[1, *row], [1, *row]]}}, {"region": "eu", "rows": {"us": [[1]]}},
                # not lists, a NaN: typed errors too, not the unpacking's TypeError or json's ValueError
                {"region": "eu", "rows": {"us": 5}}, {"region": "eu", "rows": {"us": [5]}},
                {"region": "eu", "rows": {"us": [[1, *row[:3], float("nan"), *row[4:]]]}},
                {"region": "eu", "rows": {"us": [[1, *row[:3], object(), *row[4:]]]}}):
        with pytest.raises(InvalidInputError):
            EvidenceLedger.from_state(bad)


def _ledger_delta(items: list) -> dict:
    return {"evidence.json": np.frombuffer(json.dumps(items).encode(), dtype=np.uint8)}


def test_a_detector_row_counts_in_its_population_and_an_observer_row_in_every_one():
    from swarmguard.apps.serve.peers import detector_population

    row = ["serve:eu:behaviors:0:0", "a-1", "behavioral_anomaly", 3.0, 0.8, 1.0, "serve:eu:behaviors"]
    assert detector_population(row) == "behaviors"
    assert detector_population([*row[:6], "serve:us:spans"]) == "spans"
    assert detector_population([*row[:6], "observer-7"]) is None
    assert detector_population([*row[:2], "peer_report", *row[3:]]) is None     # an observer's report type
