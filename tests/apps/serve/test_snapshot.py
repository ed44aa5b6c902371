"""Snapshots and log compaction: a node restarted from a snapshot and the log's tail is the node
that never stopped (same scores, isolations, consensus, query answers, and the same future);
kill -9 at any point of a snapshot loses nothing acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("opentelemetry.proto")

from . import _snapshot_driver as drive  # noqa: E402

SRC = Path(__file__).resolve().parents[3] / "src"
DRIVER = Path(__file__).resolve().parent / "_snapshot_driver.py"


def _run(node, client, clock, ops, start: int, stop: int) -> None:
    for i in range(start, stop):
        assert drive.run_op(client, clock, i, ops[i]), (i, ops[i][0])


def _reference(tmp_path: Path, ops, upto: int, name: str = "reference"):
    clock = drive.OpClock()
    node, client = drive.make(tmp_path / name, 0, clock)
    _run(node, client, clock, ops, 0, upto)
    return node, client, clock


def test_a_node_restarted_from_its_snapshot_is_the_node_that_never_stopped(tmp_path):
    ops = drive.build_ops(5)
    closes = [i for i, op in enumerate(ops) if op[0] == "close"]
    stop = closes[3] + 3                        # a snapshot after windows 2 and 4, then an open window
    clock = drive.OpClock()
    node, client = drive.make(tmp_path / "a", 2, clock)
    _run(node, client, clock, ops, 0, stop)
    assert node.snapshots.taken == 2
    tail = len(node.log)
    assert tail == stop - closes[3]             # the records before the last snapshot's are gone
    node.log.close()                            # the process dies (no drain)
    again, client2 = drive.make(tmp_path / "a", 2, clock)
    assert again.replayed == tail - 1           # only the tail after the covered record
    ref, ref_client, ref_clock = _reference(tmp_path, ops, stop)
    assert len(ref.log) == stop                 # snapshot_every=0: the whole log
    drive.assert_same(drive.observed(again, client2), drive.observed(ref, ref_client))
    assert again.populations["behaviors"].agents["a-5"].isolated
    # the same future: the rest of the run on both
    _run(again, client2, clock, ops, stop, len(ops))
    _run(ref, ref_client, ref_clock, ops, stop, len(ops))
    drive.assert_same(drive.observed(again, client2), drive.observed(ref, ref_client))


def test_graceful_shutdown_snapshots_and_the_restart_replays_nothing(tmp_path):
    ops = drive.build_ops(2)
    stop = len(ops) - 2                     # the second window is open (evidence and close not run)
    clock = drive.OpClock()
    node, client = drive.make(tmp_path / "a", 0, clock)
    _run(node, client, clock, ops, 0, stop)
    clock.t += 5
    node.drain()                            # what SIGTERM does: close the window, then snapshot
    node.close()
    again, client2 = drive.make(tmp_path / "a", 0, clock)
    assert again.replayed == 0 and len(again.log) == 1
    ref, ref_client, ref_clock = _reference(tmp_path, ops, stop)
    ref_clock.t = clock.t
    ref.close_window()
    drive.assert_same(drive.observed(again, client2), drive.observed(ref, ref_client))


def test_snapshot_every_is_checked():
    from swarmguard.apps.serve import ServeSettings
    from swarmguard.errors import InvalidInputError

    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError, match="snapshot-every"):
            ServeSettings(snapshot_every=bad)
    assert ServeSettings().snapshot_every == 10


def _matches_a_prefix(tmp_path: Path, ops, again, client, acked: int) -> int:
    """The restarted node equals the reference run of the first ``acked`` operations, or of one
    more (the one in flight may be durable without its answer); returns which."""
    seen = drive.observed(again, client)
    failures = []
    for upto in (acked, acked + 1):
        ref, ref_client, _ = _reference(tmp_path, ops, min(upto, len(ops)), name=f"ref{upto}")
        try:
            drive.assert_same(seen, drive.observed(ref, ref_client))
            return upto
        except AssertionError as exc:
            failures.append(exc)
        finally:
            ref.close()
    raise failures[0]


@pytest.mark.slow
@pytest.mark.parametrize("point", ["snapshot_written", "log_compacted", "committed", "random"])
def test_kill_9_around_a_snapshot_loses_nothing_acknowledged(tmp_path, point):
    windows = 4
    ops = drive.build_ops(windows)
    data = tmp_path / "data"
    args = [sys.executable, str(DRIVER), str(data), str(windows), "1"]
    if point != "random":
        args += [point, "2"]                   # inside the second snapshot
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    lines = []
    if point == "random":                      # kill -9 right after a random acknowledgement
        kill_at = random.Random(3).randrange(5, len(ops) - 5)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if not line or line.strip() == f"acked {kill_at}":
                break
        os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert "done" not in out and proc.returncode == -signal.SIGKILL, out[-500:]
    acked = [int(line.split()[1]) for line in out.splitlines() if line.startswith("acked")]
    assert acked == list(range(len(acked))) and acked
    clock = drive.OpClock()
    again, client = drive.make(data, 1, clock)
    upto = _matches_a_prefix(tmp_path, ops, again, client, len(acked))
    if point != "random":
        assert upto == len(acked) + 1          # killed in the close's snapshot: the close is durable
    # and it goes on like the node that never stopped
    _run(again, client, clock, ops, upto, len(ops))
    ref, ref_client, ref_clock = _reference(tmp_path, ops, len(ops), name="whole")
    drive.assert_same(drive.observed(again, client), drive.observed(ref, ref_client))


# ---------------------------------------------------------------- extensions (review fixes)
def _plain_node(data: Path, every: int, clock=None):
    from swarmguard.apps.serve import ServeNode, ServeSettings

    clock = clock or drive.OpClock()
    return ServeNode(ServeSettings(clock=clock, close_windows=False, warm_up=20, snapshot_every=every), data), clock


def _windows(node, clock, count: int, seed: int = 0) -> None:
    import numpy as np

    from swarmguard.apps.serve.records import BehaviorBatch

    rng = np.random.default_rng(seed)
    ids = [f"a-{i}" for i in range(30)]
    for _ in range(count):
        node.accept_behaviors(BehaviorBatch(agent_ids=ids, X=rng.normal(size=(30, 3)), cohorts=[None] * 30))
        clock.t += 60.0
        node.close_window()


def test_an_extension_that_cannot_export_its_state_turns_snapshots_off(tmp_path, monkeypatch):
    from swarmguard.apps.serve import node as node_module

    class Opaque:                     # keeps state of its own, with no export_state
        kinds = ()

        def __init__(self, node):
            self.closes = 0

        def apply(self, record):
            pass

        def before_close(self, at):
            self.closes += 1

    base = node_module.node_extensions
    monkeypatch.setattr(node_module, "node_extensions", lambda: [*base(), Opaque])
    node, clock = _plain_node(tmp_path / "a", 1)
    _windows(node, clock, 3)
    node.drain()
    # no compaction: the log holds every record, so the replay rebuilds Opaque's state too
    assert node.snapshots.taken == 0 and node.log.latest_snapshot() is None and len(node.log) == 6
    node.close()
    again, _ = _plain_node(tmp_path / "a", 1, clock)
    assert again.replayed == 6 and again.extensions[-1].closes == 3


def test_a_snapshot_of_other_extensions_is_refused_with_a_typed_error(tmp_path, monkeypatch):
    from swarmguard.apps.serve import node as node_module
    from swarmguard.errors import EvidenceStoreError

    node, clock = _plain_node(tmp_path / "a", 1)
    _windows(node, clock, 2)
    assert node.snapshots.taken == 2
    node.close()
    base = node_module.node_extensions
    monkeypatch.setattr(node_module, "node_extensions", lambda: base()[-1:])   # the span ingest gone
    with pytest.raises(EvidenceStoreError, match="extensions"):
        _plain_node(tmp_path / "a", 1, clock)


class _FailingCommit:
    """The log's connection, with the next ``COMMIT`` failing (a full disk, an I/O error)."""

    def __init__(self, db):
        self.db, self.fail = db, True

    def execute(self, sql, *args):
        if self.fail and sql == "COMMIT":
            self.fail = False
            raise __import__("sqlite3").OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_a_snapshot_whose_first_commit_fails_keeps_the_open_group_of_records(tmp_path):
    from swarmguard.apps.serve.durable_log import DurableLog
    from swarmguard.errors import EvidenceStoreError

    log = DurableLog(tmp_path)
    log.append("evidence", 1.0, {"rows": []})
    seq = log.append_grouped("spans", 2.0, {"n": 1})      # applied, its request waits to commit
    real = log._db
    log._db = _FailingCommit(real)
    with pytest.raises(EvidenceStoreError):
        log.write_snapshot(seq, b"state")
    log._db = real
    log.commit_through(seq)                                # the request is acknowledged now
    log.close()
    again = DurableLog(tmp_path)
    assert [r.seq for r in again.records()] == [1, seq] and again.latest_snapshot() is None
    again.close()


def test_a_snapshot_that_cannot_be_built_leaves_the_close_and_the_whole_log(tmp_path, monkeypatch):
    from swarmguard.apps.serve import snapshot

    def broken(node):
        raise RuntimeError("a part that cannot export")

    monkeypatch.setattr(snapshot, "snapshot_bytes", broken)
    node, clock = _plain_node(tmp_path / "a", 1)
    _windows(node, clock, 2)                       # each close tries a snapshot, and goes on
    assert node.snapshots.failed == 2 and node.snapshots.taken == 0
    assert node.populations["behaviors"].windows_closed == 2 and len(node.log) == 4
    assert node.metrics.errors.labels("snapshot_failed", "500")._value.get() == 2
    node.close()
    monkeypatch.undo()
    again, _ = _plain_node(tmp_path / "a", 1, clock)
    assert again.replayed == 4 and again.populations["behaviors"].windows_closed == 2


def _archive(meta: dict, **arrays) -> bytes:
    import io
    import json

    import numpy as np

    out = io.BytesIO()
    np.savez(out, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return out.getvalue()


@pytest.mark.parametrize("damage", ["not an archive", "other format", "no populations", "bad tree", "bad ids"])
def test_a_damaged_snapshot_is_refused_with_a_typed_error(tmp_path, damage):
    import io

    import numpy as np

    from swarmguard.apps.serve.durable_log import DurableLog
    from swarmguard.apps.serve.snapshot import FORMAT
    from swarmguard.errors import EvidenceStoreError

    node, clock = _plain_node(tmp_path / "a", 1)
    _windows(node, clock, 1)
    seq, body = node.log.latest_snapshot()
    node.close()
    with np.load(io.BytesIO(body), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    import json

    meta = json.loads(arrays.pop("meta").tobytes())
    if damage == "not an archive":
        bad = b"PK\x03\x04 truncated"
    elif damage == "other format":
        bad = _archive({**meta, "format": FORMAT + 1}, **arrays)
    elif damage == "no populations":
        bad = _archive({k: v for k, v in meta.items() if k != "populations"}, **arrays)
    elif damage == "bad tree":
        arrays["p0.tree.features"] = arrays["p0.tree.features"][:, :1]
        bad = _archive(meta, **arrays)
    else:
        meta["populations"][0]["agent_ids"] = meta["populations"][0]["agent_ids"][:-1]
        bad = _archive(meta, **arrays)
    log = DurableLog(tmp_path / "a")
    log.write_snapshot(seq, bad)
    log.close()
    with pytest.raises(EvidenceStoreError, match="snapshot"):
        _plain_node(tmp_path / "a", 1, clock)


def test_the_agents_gauge_is_set_by_a_restart_from_a_snapshot(tmp_path):
    node, clock = _plain_node(tmp_path / "a", 1)
    _windows(node, clock, 2)
    node.close()
    again, _ = _plain_node(tmp_path / "a", 1, clock)
    assert again.replayed == 0
    assert again.metrics.agents.labels("behaviors")._value.get() == 30


def test_an_agent_score_below_0_in_an_older_snapshot_loads_as_0(make_node, tmp_path):
    """An older version put a rounding-negative d² in the agent table as computed (χ² ``ln p``
    NaN): the snapshot's agents load it as 0 (p 1), as its registers already do, so the agent
    and its register agree and the table keeps a total order (no NaN key)."""
    import dataclasses
    import math

    import numpy as np

    from .conftest import auth, close_window, post_behaviors

    rng = np.random.default_rng(3)
    rows = [{"agent_id": f"a-{i}", "features": rng.normal(size=2).tolist()} for i in range(30)]
    _, node, client = make_node(data_dir=tmp_path / "old")
    assert post_behaviors(client, rows).status_code == 200
    close_window(client)
    pop = node.populations["behaviors"]
    table = dict(pop.agents)       # what the older version wrote: the d² as computed
    table["a-4"] = dataclasses.replace(table["a-4"], score=-1e-13, p_value=math.nan, log_p=math.nan, severity=0)
    pop.agents = table
    node.drain()
    node.close()
    _, again, again_c = make_node(data_dir=tmp_path / "old")
    state = again.populations["behaviors"].agents["a-4"]
    assert (state.score, state.p_value, state.log_p, state.severity) == (0.0, 1.0, 0.0, 0)
    assert again.populations["behaviors"].ranked().ordered
    r = again_c.get("/v1/agents/a-4", headers=auth("t-read"))
    assert r.status_code == 200 and r.json()["score"] == 0.0
