"""The checks of a cluster run (:mod:`cluster_harness`): availability, no lost update,
convergence, agreement with a never-partitioned reference node, confidence.

Each ``check_*`` returns a :class:`Check` (its name, whether it held, the failures
found, at most 20 listed, and the figures behind it). Nothing here trusts the nodes'
own arithmetic for what it checks: the expected register of each agent comes from
the client's history, the confidence factor is recomputed from the documented rule
(:func:`expected_confidence`, written out here with :func:`math.exp` and
:func:`math.fsum`), and the population statistics come from a separate node that
was fed the same writes without any fault.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_harness import (
    ADMIN,
    INGEST,
    NDJSON,
    OBSERVER,
    TOKENS,
    ClusterNode,
    ScenarioResult,
    WriteRecord,
    _auth,
    _lines,
    free_port,
)

__all__ = ["Check", "check_availability", "check_registers", "check_evidence", "check_convergence",
           "check_reference", "check_confidence", "expected_confidence", "all_checks", "applied_writes"]

POPULATION = "behaviors"


@dataclass
class Check:
    name: str
    ok: bool = True
    failures: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.ok = False
        if len(self.failures) < 20:
            self.failures.append(message)

    def __str__(self) -> str:
        head = f"{self.name}: {'ok' if self.ok else 'FAILED'} {self.figures}"
        return "\n  ".join([head, *self.failures])


def _registers(state: dict) -> dict[str, list]:
    return {r[0]: r for r in state["populations"].get(POPULATION, {}).get("registers", [])}


def _features(row: list) -> list[float]:
    return [float.fromhex(h) for h in row[4]]


# ---------------------------------------------------------------------------- availability
def check_availability(history: list[WriteRecord]) -> Check:
    """Under STATISTICAL every write to a live node (up for the whole request) is acknowledged."""
    check = Check("availability")
    live = [w for w in history if w.live]
    acked = [w for w in live if w.outcome == "ack"]
    for w in live:
        if w.outcome != "ack":
            check.fail(f"op {w.op} {w.kind} to {w.region} (live): {w.outcome} {w.status} {w.detail}")
    check.figures = {"writes": len(history), "to_live_nodes": len(live), "acknowledged_live": len(acked),
                     "acknowledged_all": sum(w.outcome == "ack" for w in history),
                     "indeterminate": sum(w.outcome == "indeterminate" for w in history),
                     "refused": sum(w.outcome == "refused" for w in history),
                     "availability": (len(acked) / len(live)) if live else float("nan")}
    if not live:
        check.fail("no write reached a live node")
    return check


# ---------------------------------------------------------------------------- registers
def _writes_by_agent(history: list[WriteRecord]) -> dict[str, list[tuple[WriteRecord, dict]]]:
    out: dict[str, list[tuple[WriteRecord, dict]]] = {}
    for w in sorted((w for w in history if w.kind == "behaviors"), key=lambda w: w.t_send):
        for item in w.items:
            out.setdefault(item["agent_id"], []).append((w, item))
    return out


def check_registers(result: ScenarioResult) -> Check:
    """No lost update: on every node, every agent's register is its last acknowledged write (LWW:
    the workload re-writes an agent only well after its last write was acknowledged, so the later
    write is the later one on every node's clock) or an unacknowledged write sent after it; no
    register holds a value nobody wrote; an agent only written by failed requests may be absent."""
    check = Check("no lost update (registers)")
    by_agent = _writes_by_agent(result.history)
    checked = 0
    for i, state in enumerate(result.states):
        regs = _registers(state)
        for agent in regs:
            if agent not in by_agent:
                check.fail(f"node {i}: register of {agent!r}, which nobody wrote")
        for agent, writes in by_agent.items():
            acked = [k for k, (w, _) in enumerate(writes) if w.outcome == "ack"]
            last = acked[-1] if acked else -1
            allowed = [(w, item) for k, (w, item) in enumerate(writes)
                       if k == last or (k > last and w.outcome == "indeterminate")]
            row = regs.get(agent)
            if row is None:
                if acked:
                    check.fail(f"node {i}: acknowledged agent {agent!r} (op {writes[last][0].op}) is missing")
                continue
            got = _features(row)
            match = [(w, item) for w, item in allowed if item["features"] == got]
            if not match:
                check.fail(f"node {i}: agent {agent!r} holds {got} from {row[2]}, not its last acknowledged "
                           f"write {writes[last][1]['features'] if acked else None} (op "
                           f"{writes[last][0].op if acked else None}, {len(writes)} writes)")
            elif match[0][0].region != row[2]:
                check.fail(f"node {i}: agent {agent!r}'s register names writer {row[2]}, the write went to "
                           f"{match[0][0].region}")
            checked += 1
    check.figures = {"agents": len(by_agent), "rewritten_agents": sum(len(v) > 1 for v in by_agent.values()),
                     "registers_checked": checked}
    return check


def check_evidence(result: ScenarioResult) -> Check:
    """Every acknowledged evidence line is held on every node, once; nothing else is held; each
    agent's consensus counts exactly its rows."""
    check = Check("no lost update (evidence)")
    sent: dict[str, tuple[WriteRecord, dict]] = {}
    for w in result.history:
        if w.kind == "evidence":
            for item in w.items:
                sent[item["evidence_id"]] = (w, item)
    for i, state in enumerate(result.states):
        rows = state["evidence"]["rows"]
        ids = [row[2] for row in rows]
        held = set(ids)
        if len(held) != len(ids):
            dup = sorted({x for x in ids if ids.count(x) > 1})
            check.fail(f"node {i}: evidence ids held twice: {dup[:5]}")
        for row in rows:
            origin, ev = row[0], row[2]
            if ev not in sent:
                check.fail(f"node {i}: evidence {ev!r} that nobody sent")
                continue
            w, item = sent[ev]
            if w.outcome == "refused":
                check.fail(f"node {i}: evidence {ev!r} was refused yet is held")
            if origin != w.region:
                check.fail(f"node {i}: evidence {ev!r} numbered by {origin}, sent to {w.region}")
            if [row[3], row[4], row[5], row[6], row[7]] != [item["agent_id"], item["evidence_type"],
                                                           item["log_odds"], item["confidence"], item["timestamp"]]:
                check.fail(f"node {i}: evidence {ev!r} differs from what was sent: {row}")
        for ev, (w, _) in sent.items():
            if w.outcome == "ack" and ev not in held:
                check.fail(f"node {i}: acknowledged evidence {ev!r} (op {w.op} to {w.region}) is missing")
        per_agent: dict[str, int] = {}
        for row in rows:
            per_agent[str(row[3])] = per_agent.get(str(row[3]), 0) + 1
        for agent, n in per_agent.items():
            got = state["evidence"]["consensus"].get(agent, {}).get("evidence_count")
            if got != n:
                check.fail(f"node {i}: agent {agent!r}: consensus counts {got} evidence, the ledger holds {n}")
    check.figures = {"evidence_sent": len(sent), "evidence_acknowledged": sum(w.outcome == "ack" for w, _ in sent.values()),
                     "evidence_held": len(result.states[0]["evidence"]["rows"]) if result.states else 0}
    return check


# ---------------------------------------------------------------------------- convergence
def check_convergence(result: ScenarioResult) -> Check:
    """Every node: the same digest (registers and evidence rows, bit for bit), version vector,
    consensus and replicated count/mean; reached ``converge_s`` after the heal."""
    check = Check("convergence")
    states, clusters = result.states, result.clusters
    for what, values in (("digest", [s["digest"] for s in states]),
                         ("version vector", [s["version_vector"] for s in states]),
                         ("consensus", [s["evidence"]["consensus"] for s in states]),
                         ("registers", [s["populations"].get(POPULATION, {}).get("registers") for s in states]),
                         ("mean", [s["populations"].get(POPULATION, {}).get("mean") for s in states]),
                         ("covariance", [s["populations"].get(POPULATION, {}).get("covariance") for s in states]),
                         ("/v1/cluster version_vector", [c["version_vector"] for c in clusters]),
                         ("/v1/cluster populations", [c["populations"] for c in clusters])):
        if any(v != values[0] for v in values[1:]):
            check.fail(f"nodes differ in {what}")
    if not math.isfinite(result.converge_s):
        check.fail("the nodes did not converge before the deadline")
    check.figures = {"converge_s": round(result.converge_s, 3), "digest": states[0]["digest"][:16] if states else None}
    return check


# ---------------------------------------------------------------------------- the reference
def applied_writes(result: ScenarioResult) -> tuple[list[list[dict]], list[dict]]:
    """What the cluster accepted: behaviour rows by generation (an agent's k-th applied write in
    generation k) and evidence lines — the acknowledged ones, plus the unacknowledged ones the
    cluster holds (a request that timed out after the node stored it)."""
    regs = _registers(result.states[0])
    held_evidence = {row[2] for row in result.states[0]["evidence"]["rows"]}
    generations: list[list[dict]] = []
    for agent, writes in _writes_by_agent(result.history).items():
        final = regs.get(agent)
        applied = [item for w, item in writes if w.outcome == "ack"
                   or (w.outcome == "indeterminate" and final is not None and item["features"] == _features(final))]
        for g, item in enumerate(applied):
            while len(generations) <= g:
                generations.append([])
            generations[g].append(item)
    evidence = [item for w in result.history if w.kind == "evidence" for item in w.items
                if w.outcome == "ack" or (w.outcome == "indeterminate" and item["evidence_id"] in held_evidence)]
    return generations, evidence


def reference_state(root: Path, generations: list[list[dict]], evidence: list[dict], *, warm_up: int = 1_000_000) -> dict:
    """A single node (no peers, no faults) fed ``generations`` (a window closed after each) and
    ``evidence``; its ``/v1/peer/state``."""
    import httpx

    root.mkdir(parents=True, exist_ok=True)
    (root / "tokens.toml").write_text(TOKENS)
    data = root / "node-ref"
    data.mkdir(exist_ok=True)
    node = ClusterNode(-1, "ref", free_port(), data, ["--tokens", str(root / "tokens.toml"), "--window", "3600",
                                                       "--warm-up", str(warm_up)], root / "node-ref.log")
    node.start()
    try:
        node.wait_ready()
        with httpx.Client(base_url=node.url, timeout=60.0) as client:
            def post(path, rows, token):
                for k in range(0, len(rows), 500):
                    r = client.post(path, content=_lines(rows[k:k + 500]),
                                    headers={"Content-Type": NDJSON, **_auth(token)})
                    if r.status_code != 200 or r.json().get("rejected"):
                        raise RuntimeError(f"the reference refused {path}: {r.status_code} {r.text[:300]}")
            for rows in generations:
                post("/v1/behaviors", rows, INGEST)
                r = client.post("/v1/admin/close-window", headers=_auth(ADMIN))
                r.raise_for_status()
            post("/v1/evidence", evidence, OBSERVER)
            r = client.get("/v1/peer/state", headers=_auth(ADMIN))
            r.raise_for_status()
            return r.json()
    finally:
        node.stop()


def _rel(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))


def check_reference(result: ScenarioResult, reference: dict, rel: float = 1e-12) -> Check:
    """The cluster's population statistics (count, mean, covariance of the agents' latest vectors)
    and every agent's consensus equal those of the reference node, to ``rel`` (relative)."""
    check = Check("reference (never partitioned)")
    ref_pop = reference["populations"].get(POPULATION, {})
    ref_regs = _registers(reference)
    worst = 0.0
    for i, state in enumerate(result.states):
        pop = state["populations"].get(POPULATION, {})
        if pop.get("count") != ref_pop.get("count"):
            check.fail(f"node {i}: count {pop.get('count')}, reference {ref_pop.get('count')}")
            continue
        regs = _registers(state)
        if set(regs) != set(ref_regs):
            check.fail(f"node {i}: agents differ from the reference's ({len(set(regs) ^ set(ref_regs))})")
        for agent, row in regs.items():
            if agent in ref_regs and _features(row) != _features(ref_regs[agent]):
                check.fail(f"node {i}: agent {agent!r} holds {_features(row)}, the reference "
                           f"{_features(ref_regs[agent])}")
        for what in ("mean", "covariance"):
            a, b = pop.get(what), ref_pop.get(what)
            flat_a = [float.fromhex(x) for x in (a if what == "mean" else sum(a or [], []))] if a else []
            flat_b = [float.fromhex(x) for x in (b if what == "mean" else sum(b or [], []))] if b else []
            if len(flat_a) != len(flat_b):
                check.fail(f"node {i}: {what} has {len(flat_a)} entries, the reference {len(flat_b)}")
                continue
            for x, y in zip(flat_a, flat_b, strict=True):
                worst = max(worst, _rel(x, y))
                if _rel(x, y) > rel:
                    check.fail(f"node {i}: {what} {x!r} vs reference {y!r}")
        ref_c, got_c = reference["evidence"]["consensus"], state["evidence"]["consensus"]
        if set(ref_c) != set(got_c):
            check.fail(f"node {i}: consensus agents differ from the reference's")
        for agent, c in ref_c.items():
            g = got_c.get(agent)
            if g is None:
                continue
            if g["evidence_count"] != c["evidence_count"]:
                check.fail(f"node {i}: agent {agent!r} evidence {g['evidence_count']}, reference {c['evidence_count']}")
            if (g["log_odds"] is None) != (c["log_odds"] is None):
                check.fail(f"node {i}: agent {agent!r} log_odds {g['log_odds']}, reference {c['log_odds']}")
            elif g["log_odds"] is not None:
                x, y = float.fromhex(g["log_odds"]), float.fromhex(c["log_odds"])
                worst = max(worst, _rel(x, y))
                if _rel(x, y) > rel:
                    check.fail(f"node {i}: agent {agent!r} log_odds {x!r}, reference {y!r}")
    check.figures = {"count": ref_pop.get("count"), "worst_relative_difference": worst,
                     "consensus_agents": len(reference["evidence"]["consensus"])}
    return check


# ---------------------------------------------------------------------------- confidence
def expected_confidence(counts: dict[str, int], ages: dict[str, float], own: str,
                        max_staleness: float, decay: float) -> float:
    """The documented rule: the agents' share, each region's part weighted by 1 while it was heard
    from within ``max_staleness`` seconds and by ``exp(-decay * (age - max_staleness))`` after."""
    total = sum(counts.values())
    if total == 0:
        return 1.0
    terms = []
    for region, n in counts.items():
        age = 0.0 if region == own else ages.get(region, math.inf)
        terms.append(n * (1.0 if age <= max_staleness else math.exp(-decay * (age - max_staleness))))
    return min(1.0, max(math.fsum(terms) / total, 2.2250738585072014e-308))


def check_confidence(result: ScenarioResult, slack_s: float = 1.5) -> Check:
    """While one node is cut off, its view's confidence factor follows the documented decay (its
    ages of the other regions grow with the time since the cut, and the factor is the rule applied
    to them); after the heal every node's factor is 1."""
    check = Check("confidence")
    k = result.probe_node
    readings = []
    for sample in result.probe:
        pop = sample.state["populations"].get(POPULATION)
        if pop is None:
            check.fail("the cut-off node has no behaviours population")
            continue
        own = sample.state["region"]
        for region, age in pop["ages"].items():
            if pop["region_counts"].get(region) and age < sample.elapsed_s - slack_s:
                check.fail(f"{sample.elapsed_s:.2f} s after the cut node {k} heard from {region} {age:.2f} s ago")
        want = expected_confidence(pop["region_counts"], pop["ages"], own, pop["max_staleness_seconds"],
                                   pop["confidence_decay_rate"])
        if _rel(want, pop["confidence_factor"]) > 1e-12:
            check.fail(f"{sample.elapsed_s:.2f} s: confidence {pop['confidence_factor']!r}, the rule gives {want!r}")
        stale = sample.elapsed_s > pop["max_staleness_seconds"] + slack_s + result.config.sync_seconds
        others = sum(n for r, n in pop["region_counts"].items() if r != own)
        if stale and others and not pop["confidence_factor"] < 1.0:
            check.fail(f"{sample.elapsed_s:.2f} s after the cut node {k}'s confidence is still "
                       f"{pop['confidence_factor']}")
        if stale and others and not (sample.populations_cf is not None and sample.populations_cf < 1.0):
            check.fail(f"{sample.elapsed_s:.2f} s: /v1/populations confidence_factor {sample.populations_cf}")
        readings.append((round(sample.elapsed_s, 2), round(pop["confidence_factor"], 6)))
    if not any(r[1] < 1.0 for r in readings):
        check.fail("the confidence factor never decayed during the probe")
    for i, cf in enumerate(result.after_heal_cf):
        if cf != 1.0:
            check.fail(f"node {i}: confidence {cf} after the heal")
    check.figures = {"probe_node": k, "readings": readings, "after_heal": result.after_heal_cf}
    return check


def all_checks(result: ScenarioResult, reference_root: Path) -> list[Check]:
    t0 = time.monotonic()
    generations, evidence = applied_writes(result)
    reference = reference_state(reference_root, generations, evidence)
    checks = [check_availability(result.history), check_registers(result), check_evidence(result),
              check_convergence(result), check_reference(result, reference), check_confidence(result)]
    result.timings["reference_s"] = time.monotonic() - t0
    return checks
