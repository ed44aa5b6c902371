"""Snapshots of a node's state, so that a restart replays only the log's tail.

Every ``--snapshot-every`` closed windows, and on graceful shutdown, the node writes
its whole state as of its last log record into the durable log's ``snapshot`` table
and deletes the records before it, in one SQLite transaction
(:meth:`~.durable_log.DurableLog.write_snapshot`): a ``kill -9`` anywhere leaves
either the previous snapshot with the whole log after it, or the new one with the
tail. A restart loads the snapshot and replays the records after it.

Snapshots are taken between windows only (the node's lock held, no window open), so
no open window's vectors or spans are in them. The state is made of the parts' own
exports, never pickle: per population the tree's ``to_dict(exact=True)`` (its layout and
the anchor of its moments too, so the restored moments are bitwise the live ones), the consensus's
``export_state`` (back with ``StableBayesianConsensus.from_state``), the CAP
resolver's ``to_bytes``, the detector's evidence counter, the agents' latest
results (as arrays), the window count and dimension; the node's clock and its
isolation events; each extension's ``export_state`` (the peer replication's evidence
ledger, whose rows the peer deltas and evidence records compaction deletes brought — the
replicas of other regions are in the CAP resolver's bytes already; the span ingest's name tables,
tool history and the window before's span ids; the dashboard's window history), named by
class: a node whose extensions differ refuses the snapshot, and a node with an extension that
has no ``export_state`` takes none. Encoding: one ``.npz`` archive
(``numpy.savez``, loaded with ``allow_pickle=False``) of arrays, plus one JSON
member for everything else. The in-process engine only: on Ray the node replays the
whole log (its actors' state is not the detector's to export here).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from typing import Any

import numpy as np

from ...api import HierarchicalStatisticalTree, StableBayesianConsensus, StatisticalCAPResolver
from ...errors import EvidenceStoreError, SwarmGuardError
from .agent_state import AgentState
from .population import detector_source_population

__all__ = ["Snapshots", "snapshot_bytes", "restore_snapshot", "FORMAT"]

FORMAT = 2     # 2: extensions' states named by their class
log = logging.getLogger("swarmguard.serve")


class Snapshots:
    """The node's snapshot policy: every ``every`` closed windows (0: never) and on drain."""

    def __init__(self, node: Any, every: int):
        self.node = node
        # an extension whose state cannot be exported would lose what compaction deletes: no
        # snapshots then (the whole log is replayed, as on Ray)
        unexported = [type(x).__name__ for x in node.extensions
                      if not (callable(getattr(x, "export_state", None)) and callable(getattr(x, "import_state", None)))]
        if unexported:
            log.warning("no snapshots: the node extension(s) %s cannot export their state", ", ".join(unexported))
        self.enabled = node.settings.backend == "inprocess" and not unexported
        self.every = int(every) if self.enabled else 0
        self.closed_since = 0           # windows closed since the last snapshot
        self.taken = 0                  # snapshots written by this process
        self.failed = 0                 # snapshots that could not be built or written
        self.covered = 0                # the log record the kept snapshot is as of

    def load(self) -> int:
        """Restore the kept snapshot into the (fresh) node; the record it covers (0: none)."""
        kept = self.node.log.latest_snapshot()
        if kept is None:
            return 0
        if not self.enabled:
            raise EvidenceStoreError(f"{self.node.log.path} holds a snapshot, which only the in-process "
                                     "engine can load; start the node with --backend inprocess")
        seq, body = kept
        restore_snapshot(self.node, body)
        self.covered = seq
        return seq

    def after_close(self, seq: int) -> None:
        """A window closed live, as of log record ``seq``: snapshot when ``every`` are due."""
        self.closed_since += 1
        if self.every and self.closed_since >= self.every:
            self.take(seq)

    def take(self, seq: int) -> None:
        """Snapshot the node as of record ``seq`` (under its lock, no window open) and compact.
        A failed write is logged and changes nothing: the log still holds everything."""
        if not self.enabled or seq <= self.covered:
            return
        try:
            body = snapshot_bytes(self.node)
        except Exception:       # noqa: BLE001 - a part that cannot export its state
            # the window's close is logged and applied already: failing here would answer 500 for
            # it (and stop the background closer); the log stays whole, so nothing is lost
            log.exception("cannot build a snapshot (the log is kept whole; the next one will try again)")
            self.failed += 1
            self.node.metrics.errors.labels("snapshot_failed", "500").inc()
            return
        try:
            deleted = self.node.log.write_snapshot(seq, body)
        except EvidenceStoreError as exc:
            log.error("%s (the log is kept whole; the next snapshot will try again)", exc)
            self.failed += 1
            self.node.metrics.errors.labels("snapshot_failed", "500").inc()
            return
        self.closed_since, self.covered = 0, seq
        self.taken += 1
        log.info("snapshot as of log record %d: %d records compacted", seq, deleted)


# ---------------------------------------------------------------- encoding
def snapshot_bytes(node: Any) -> bytes:
    """The node's state (module docstring) as one ``.npz`` archive."""
    arrays: dict[str, np.ndarray] = {}
    pops = []
    for k, pop in enumerate(node.populations.values()):
        prefix = f"p{k}."
        det = pop.detector
        for key, value in det.tree.to_dict(exact=True).items():
            arrays[prefix + "tree." + key] = np.asarray(value)
        arrays[prefix + "cap"] = np.frombuffer(det.cap_resolver.to_bytes(), dtype=np.uint8)
        evidence = det.consensus.export_state()
        columns = evidence["evidence"]
        for key in ("log_odds", "confidences", "timestamps"):
            arrays[prefix + "ev." + key] = np.asarray(columns[key], dtype=np.float64)
        ids = columns["evidence_ids"]
        int_ids = isinstance(ids, np.ndarray) and ids.dtype.kind in "iu"
        if int_ids:
            arrays[prefix + "ev.evidence_ids"] = ids.astype(np.int64)
        agents = list(pop.agents.values())
        d = pop.dimension or 0
        arrays[prefix + "ag.features"] = (np.stack([s.features for s in agents]).astype(np.float64)
                                          if agents else np.zeros((0, d)))
        for key, dtype in (("score", np.float64), ("p_value", np.float64), ("log_p", np.float64),
                           ("severity", np.int64), ("isolated", bool), ("confidence_factor", np.float64),
                           ("window", np.int64)):
            arrays[prefix + "ag." + key] = np.array([getattr(s, key) for s in agents], dtype=dtype)
        pops.append({
            "name": pop.name, "dimension": pop.dimension, "feature_names": pop.feature_names,
            "windows_closed": pop.windows_closed, "evidence_number": det._evidence_number,
            "agent_ids": [s.agent_id for s in agents], "cohorts": [s.cohort for s in agents],
            "evidence": {"int_ids": int_ids, "evidence_ids": None if int_ids else _plain(ids),
                         "agent_ids": _plain(columns["agent_ids"]), "evidence_types": _plain(columns["evidence_types"]),
                         "source_nodes": _plain(columns["source_nodes"]),
                         "founding_sources": _plain(evidence["founding_sources"])},
        })
    extensions = []
    for j, extension in enumerate(node.extensions):
        state = extension.export_state()
        extensions.append({"name": type(extension).__name__, "state": _split(state, arrays, f"x{j}.")})
    meta = {"format": FORMAT, "at": node._at, "populations": pops, "extensions": extensions,
            "events": {"next": node.events.last_id + 1, "items": [[i, e] for i, e in node.events.after(0)]}}
    arrays["meta"] = np.frombuffer(json.dumps(meta, separators=(",", ":"), allow_nan=True).encode(), dtype=np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def restore_snapshot(node: Any, body: bytes) -> None:
    """Load :func:`snapshot_bytes`'s archive into a fresh node (before its log tail replays)."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:    # BadZipFile: not an archive
        raise EvidenceStoreError(f"the snapshot in {node.log.path} cannot be read: {exc}") from None
    version = meta.get("format") if isinstance(meta, dict) else None
    if version != FORMAT:
        raise EvidenceStoreError(f"the snapshot in {node.log.path} has format {version!r}, this node reads {FORMAT}")
    try:
        _restore(node, meta, arrays)
    except EvidenceStoreError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, SwarmGuardError) as exc:
        # a damaged snapshot: the node refuses to start (the records it covers are gone from the
        # log, so starting without it would lose them), with one typed error naming the file
        raise EvidenceStoreError(f"the snapshot in {node.log.path} is malformed: "
                                 f"{type(exc).__name__}: {exc}") from None
    for pop in node.populations.values():
        node.metrics.agents.labels(pop.name).set(len(pop.agents))   # as a replayed close sets it


def _restore(node: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    node._at = float(meta["at"])
    for k, p in enumerate(meta["populations"]):
        _restore_population(node._population(p["name"]), p, arrays, f"p{k}.")
    kept = [x["name"] for x in meta["extensions"]]
    have = [type(x).__name__ for x in node.extensions]
    if kept != have:        # e.g. opentelemetry-proto gone: the span ingest's state has nowhere to go
        raise EvidenceStoreError(f"the snapshot in {node.log.path} holds the state of the node extensions "
                                 f"{kept}, this node has {have}")
    for j, (extension, x) in enumerate(zip(node.extensions, meta["extensions"], strict=True)):
        extension.import_state(_join(x["state"], arrays, f"x{j}."))
    events = node.events
    for event_id, data in meta["events"]["items"]:
        events._events.append((int(event_id), data))
    events._next = int(meta["events"]["next"])


def _restore_population(pop: Any, p: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> None:
    det = pop.detector
    engine = det.engine
    pop.dimension, pop.feature_names, pop.windows_closed = p["dimension"], p["feature_names"], p["windows_closed"]
    tree_state = {key[len(prefix) + 5:]: value for key, value in arrays.items() if key.startswith(prefix + "tree.")}
    tree = HierarchicalStatisticalTree.from_dict(tree_state)
    engine.tree = tree
    engine.protocol.tree = tree                 # the protocol scores against the engine's tree
    s = det.settings
    engine.cap_resolver = StatisticalCAPResolver.from_bytes(
        arrays[prefix + "cap"].tobytes(), consistency_model=s.consistency_model,
        max_staleness_seconds=s.max_staleness_seconds, confidence_decay_rate=s.confidence_decay_rate,
        clock=s.clock, auto_sync_seconds=s.auto_sync_seconds)
    _clamp_negative_scores(engine.cap_resolver, pop.name)
    ev = p["evidence"]
    evidence = {"evidence_ids": arrays[prefix + "ev.evidence_ids"] if ev["int_ids"] else _keys(ev["evidence_ids"]),
                "agent_ids": _keys(ev["agent_ids"]), "evidence_types": ev["evidence_types"],
                "log_odds": arrays[prefix + "ev.log_odds"], "confidences": arrays[prefix + "ev.confidences"],
                "timestamps": arrays[prefix + "ev.timestamps"], "source_nodes": _keys(ev["source_nodes"])}
    state = {"evidence": evidence,
             "founding_sources": None if ev["founding_sources"] is None else _keys(ev["founding_sources"])}
    if len(evidence["log_odds"]):
        settings = _consensus_settings(det)
        # the other nodes' detectors of this population that peer deltas brought are trusted
        # as the live node trusted them (Population.trust_detectors)
        settings["trusted_sources"] += sorted({src for src in evidence["source_nodes"]
                                              if detector_source_population(src) == pop.name} - {s.node_id})
        engine.consensus = StableBayesianConsensus.from_state(state, **settings)
    det._evidence_number = int(p["evidence_number"])
    features = arrays[prefix + "ag.features"]
    columns = [arrays[prefix + "ag." + key].tolist() for key in
               ("score", "p_value", "log_p", "severity", "isolated", "confidence_factor", "window")]
    pop.agents = {}
    negative = 0
    for i, (agent, cohort) in enumerate(zip(p["agent_ids"], p["cohorts"], strict=True)):
        score, p_value, log_p, severity, isolated, cf, window = (c[i] for c in columns)
        if score < 0.0:        # an older version's rounding-negative d² (ln p NaN): 0, as its register
            score, p_value, log_p, severity = 0.0, 1.0, 0.0, 0
            negative += 1
        pop.agents[agent] = AgentState(agent, pop.name, score, p_value, log_p, severity, isolated, cohort, cf,
                                       features[i].copy(), window)
    if negative:
        log.warning("population %r: %d agent score(s) below 0 in the snapshot held as 0", pop.name, negative)


def _clamp_negative_scores(resolver: Any, name: str) -> None:
    """A snapshot's registers load unchecked: a score below 0 (an older version wrote rounding-
    negative d² into them, or joined them from a peer before peers refused them) is held as 0,
    as :func:`~swarmguard.api.engine.register_scores` writes it now. Kept, it would ship in
    every delta, and every peer refuses such a delta (422): the node would never sync again."""
    clamped = 0
    for region in resolver.regions:
        replica = resolver.ensure_replica(region)
        if replica is not None:
            clamped += replica.clamp_negative_scores()
    if clamped:
        log.warning("population %r: %d register score(s) below 0 in the snapshot held as 0", name, clamped)


def _consensus_settings(det: Any) -> dict[str, Any]:
    """The settings the engine built its consensus with (InProcessEngine)."""
    s = det.settings
    return dict(byzantine_threshold=s.byzantine_threshold, partition_size=s.partition_size,
                prior_probability=s.prior_probability, trusted_sources=[s.node_id],
                probation_evidence=s.probation_evidence)


# ---------------------------------------------------------------- plain values
def _plain(values: Any) -> Any:
    """A list (or None) that JSON keeps exactly: tuple ids become lists (back: :func:`_keys`)."""
    if values is None:
        return None
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    return [list(v) if isinstance(v, tuple) else v for v in values]


def _keys(values: list[Any]) -> list[Any]:
    return [tuple(v) if isinstance(v, list) else v for v in values]


def _split(state: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """``state`` with its arrays moved into ``arrays`` (named ``prefix`` + path), for JSON."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[prefix + key] = value
            out[key] = {"__array__": prefix + key}
        elif isinstance(value, dict):
            out[key] = _split(value, arrays, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


def _join(state: dict[str, Any], arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, dict) and set(value) == {"__array__"}:
            out[key] = arrays[value["__array__"]]
        elif isinstance(value, dict):
            out[key] = _join(value, arrays, f"{prefix}{key}.")
        else:
            out[key] = value
    return out
