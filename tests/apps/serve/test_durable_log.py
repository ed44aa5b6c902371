"""DurableLog's numbering and group commit (unit level: no node, no HTTP)."""

import sqlite3

import pytest

from swarmguard.apps.serve.durable_log import DurableLog
from swarmguard.errors import EvidenceStoreError


def _fail_next_write(log, monkeypatch):
    real = log._write
    calls = {"n": 0}

    def write(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(rows)

    monkeypatch.setattr(log, "_write", write)


def test_a_snapshot_after_a_failed_append_keeps_new_numbers_above_it_across_a_restart(tmp_path, monkeypatch):
    # a failed append consumes its number; a snapshot as of last_seq() then covers a record
    # that is not in the file and deletes every record before it: after a restart the next
    # number must still be above the snapshot's, or replay (records after the snapshot)
    # skips records that were acknowledged
    log = DurableLog(tmp_path)
    log.append("close", 1.0, {})
    _fail_next_write(log, monkeypatch)
    with pytest.raises(EvidenceStoreError):
        log.append("close", 2.0, {})
    covered = log.last_seq()
    log.write_snapshot(covered, b"state")
    log.close()

    again = DurableLog(tmp_path)
    assert again.latest_snapshot()[0] == covered
    seq = again.append("close", 3.0, {})
    assert seq > covered
    assert [r.at for r in again.records(after=covered)] == [3.0]
    again.close()


def test_a_failed_group_commit_is_refused_and_its_records_commit_once_in_order(tmp_path, monkeypatch):
    log = DurableLog(tmp_path)
    first = [log.append_grouped("spans", float(i), {"rows": 0, "d": 1, "agents": []}) for i in range(2)]
    _fail_next_write(log, monkeypatch)
    with pytest.raises(EvidenceStoreError):
        log.commit_through(first[-1])
    assert len(DurableLog(tmp_path)) == 0                 # refused: nothing durable, nothing claimed
    later = log.append_grouped("spans", 2.0, {"rows": 0, "d": 1, "agents": []})
    log.commit_through(first[0])                          # the put-back records are found and written
    assert [(r.seq, r.at) for r in DurableLog(tmp_path).records()] == [(s, float(i)) for i, s in
                                                                       enumerate([*first, later])]
    log.commit_through(later)
    assert len(DurableLog(tmp_path)) == 3
    log.close()


def test_numbers_after_a_restart_are_above_the_snapshot_even_when_no_record_holds_its_number(tmp_path):
    log = DurableLog(tmp_path)
    log.append("close", 1.0, {})
    log.write_snapshot(5, b"state")                       # as of a number no record in the file has
    log.close()
    again = DurableLog(tmp_path)
    assert again.append("close", 2.0, {}) == 6 and [r.at for r in again.records(after=5)] == [2.0]
    again.close()


# ---------------------------------------------------------------- a commit reported failed that landed
class _CommitThenRaise:
    """The log's connection, with the next ``COMMIT`` carried out and then reported failed (an
    fsync error after the WAL frame was written, a full disk on the checkpoint after it):
    ``landed`` False raises before committing instead (the transaction is rolled back)."""

    def __init__(self, db, landed: bool = True, times: int = 1):
        self.db, self.landed, self.left = db, landed, times

    def execute(self, sql, *args):
        if self.left and sql == "COMMIT":
            self.left -= 1
            if self.landed:
                self.db.execute(sql, *args)
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def _file_records(path):
    again = DurableLog(path)
    try:
        return [(r.seq, r.kind, r.at) for r in again.records()]
    finally:
        again.close()


def test_an_append_whose_commit_is_reported_failed_but_landed_keeps_the_log_writable(tmp_path):
    log = DurableLog(tmp_path)
    log.append("close", 1.0, {})
    log._db = _CommitThenRaise(log._db)
    seq = log.append("evidence", 2.0, {"rows": []})        # in the file: the write is done
    assert seq == 2 and log.last_seq() == 2
    assert log.append("close", 3.0, {}) == 3               # its number is not given out again
    log.close()
    assert _file_records(tmp_path) == [(1, "close", 1.0), (2, "evidence", 2.0), (3, "close", 3.0)]


def test_a_group_commit_reported_failed_but_landed_is_not_written_again(tmp_path):
    log = DurableLog(tmp_path)
    first = [log.append_grouped("spans", float(i), {"rows": 0, "d": 1, "agents": []}) for i in range(2)]
    log._db = _CommitThenRaise(log._db)
    log.commit_through(first[-1])                          # in the file: both requests are acknowledged
    later = log.append_grouped("spans", 2.0, {"rows": 0, "d": 1, "agents": []})
    log.commit_through(later)                              # no PRIMARY KEY conflict with the landed group
    assert log.append("close", 3.0, {}) == later + 1
    log.close()
    assert _file_records(tmp_path) == [(1, "spans", 0.0), (2, "spans", 1.0), (3, "spans", 2.0), (4, "close", 3.0)]


def test_an_append_whose_commit_failed_and_did_not_land_is_refused_and_gives_its_number_back(tmp_path):
    log = DurableLog(tmp_path)
    grouped = log.append_grouped("spans", 1.0, {"rows": 0, "d": 1, "agents": []})
    log._db = _CommitThenRaise(log._db, landed=False)
    with pytest.raises(EvidenceStoreError):
        log.append("evidence", 2.0, {"rows": []})
    assert _file_records(tmp_path) == []                   # refused: nothing durable
    assert log.last_seq() == grouped                       # the refused record's number is free again
    assert log.append("close", 3.0, {}) == grouped + 1     # the waiting grouped record goes first
    log.close()
    assert _file_records(tmp_path) == [(1, "spans", 1.0), (2, "close", 3.0)]


class _CommitThenBlind(_CommitThenRaise):
    """As :class:`_CommitThenRaise`, and every read after the failed commit fails too."""

    def execute(self, sql, *args):
        if self.left == 0 and sql.startswith("SELECT"):
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


@pytest.mark.parametrize("landed", [True, False])
def test_a_log_that_cannot_tell_what_a_failed_commit_left_refuses_writes_until_a_restart(tmp_path, landed):
    # the file decides what a restart replays: a number reused, or a record held as unwritten that
    # is there, would make the live node differ from the restarted one
    log = DurableLog(tmp_path)
    log.append("close", 1.0, {})
    log._db = _CommitThenBlind(log._db, landed=landed)
    with pytest.raises(EvidenceStoreError):
        log.append("evidence", 2.0, {"rows": []})
    seq = log.append_grouped("spans", 3.0, {})
    for write in (lambda: log.append("close", 4.0, {}), lambda: log.commit_through(seq),
                  lambda: log.write_snapshot(seq, b"state")):
        with pytest.raises(EvidenceStoreError, match="restart the node"):
            write()
    log.close()
    again = DurableLog(tmp_path)                           # the restart: the file is the truth
    expected = [(1, "close", 1.0), *([(2, "evidence", 2.0)] if landed else [])]
    assert [(r.seq, r.kind, r.at) for r in again.records()] == expected
    assert again.append("close", 5.0, {}) == expected[-1][0] + 1
    again.close()


def test_a_snapshot_whose_commit_is_reported_failed_but_landed_counts_as_written(tmp_path):
    log = DurableLog(tmp_path)
    for i in range(3):
        log.append("close", float(i), {})
    log._db = _CommitThenRaise(log._db)
    assert log.write_snapshot(3, b"state") == 2            # the two records before it are gone
    assert log.landed_after_error == 1
    assert log.append("close", 4.0, {}) == 4
    log.close()
    again = DurableLog(tmp_path)
    assert again.latest_snapshot() == (3, b"state") and [r.seq for r in again.records()] == [3, 4]
    again.close()


class _CommitAndRollbackFail:
    """The log's connection with the next ``COMMIT`` failing before it commits and the ``ROLLBACK``
    after it failing as well (``rollbacks`` times): the failed transaction stays open, and a read on
    this connection sees its uncommitted rows."""

    def __init__(self, db, rollbacks: int = 1):
        self.db, self.commits, self.rollbacks = db, 1, rollbacks

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.commits:
            self.commits = 0
            raise sqlite3.OperationalError("disk I/O error")
        if sql == "ROLLBACK" and self.rollbacks:
            self.rollbacks -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_rows_of_a_failed_transaction_still_open_do_not_count_as_landed(tmp_path):
    # the read-back after a failed commit must not see the failed transaction's own rows: they are
    # not in the file, and acknowledging them loses them (the next write's ROLLBACK discards them)
    log = DurableLog(tmp_path)
    log.append("close", 1.0, {})
    log._db = _CommitAndRollbackFail(log._db)
    with pytest.raises(EvidenceStoreError):
        log.append("evidence", 2.0, {"rows": []})
    assert log.landed_after_error == 0 and not log._db.in_transaction
    assert log.append("close", 3.0, {}) == 2                # the refused record's number is free again
    log.close()
    assert _file_records(tmp_path) == [(1, "close", 1.0), (2, "close", 3.0)]


def test_a_failed_transaction_that_cannot_be_rolled_back_makes_the_log_refuse_writes(tmp_path):
    log = DurableLog(tmp_path)
    log.append("close", 1.0, {})
    log._db = _CommitAndRollbackFail(log._db, rollbacks=2)  # the connection stays in the failed transaction
    with pytest.raises(EvidenceStoreError):
        log.append("evidence", 2.0, {"rows": []})
    assert log.landed_after_error == 0 and log.broken is not None
    with pytest.raises(EvidenceStoreError, match="restart the node"):
        log.append("close", 3.0, {})
    log.close()
    assert _file_records(tmp_path) == [(1, "close", 1.0)]


def _log_after_a_failed_snapshot(tmp_path, rollbacks: int) -> DurableLog:
    """A log of three closes whose snapshot (at 3) was refused: its COMMIT failed, and the first
    ``rollbacks`` ROLLBACKs too (2: its transaction stays open on the connection)."""
    log = DurableLog(tmp_path)
    for i in range(3):
        log.append("close", float(i), {})
    log._db = _CommitAndRollbackFail(log._db, rollbacks=rollbacks)
    with pytest.raises(EvidenceStoreError):
        log.write_snapshot(3, b"state")
    return log


@pytest.mark.parametrize("rollbacks", [1, 2])
def test_a_snapshot_whose_commit_and_rollback_fail_is_a_typed_refusal_and_not_counted_as_written(tmp_path, rollbacks):
    # the read-back inside the still-open snapshot transaction would find the snapshot and the
    # compacted log that the file does not hold; a failed ROLLBACK must not escape as sqlite3.Error
    log = _log_after_a_failed_snapshot(tmp_path, rollbacks)
    assert log.landed_after_error == 0
    log.close()
    again = DurableLog(tmp_path)
    assert again.latest_snapshot() is None and [r.seq for r in again.records()] == [1, 2, 3]
    again.close()


def test_a_write_after_a_snapshot_left_its_failed_transaction_open_is_not_refused(tmp_path):
    # the snapshot's COMMIT and both ROLLBACKs failed, so its transaction stayed open on the
    # connection: the next append's BEGIN failed ("cannot start a transaction within a
    # transaction") and a write to a healthy disk was refused (503) for the snapshot's leftover
    log = _log_after_a_failed_snapshot(tmp_path, 2)
    assert log.append("close", 4.0, {}) == 4 and log.broken is None
    log.close()
    assert _file_records(tmp_path) == [(1, "close", 0.0), (2, "close", 1.0), (3, "close", 2.0), (4, "close", 4.0)]
    again = DurableLog(tmp_path)
    assert again.latest_snapshot() is None
    again.close()


def test_a_snapshot_after_one_that_left_its_failed_transaction_open_is_written(tmp_path):
    # the same leftover before a snapshot (a drain right after a close whose snapshot failed so):
    # its BEGIN IMMEDIATE failed, and the drain's snapshot was lost for the leftover
    log = _log_after_a_failed_snapshot(tmp_path, 2)
    assert log.write_snapshot(3, b"state") == 2
    log.close()
    again = DurableLog(tmp_path)
    assert again.latest_snapshot() == (3, b"state") and [r.seq for r in again.records()] == [3]
    again.close()


@pytest.mark.parametrize("broken", ["not a database", "a log table without its columns"])
def test_a_log_that_fails_to_open_closes_its_connection_and_raises_a_typed_error(tmp_path, monkeypatch, broken):
    import swarmguard.apps.serve.durable_log as module

    path = tmp_path / "node.sqlite"
    if broken == "not a database":                  # the PRAGMAs fail: the open's first step
        path.write_bytes(b"this is not an SQLite file " * 100)
    else:                                           # opens, but the numbering's read fails
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE log (other TEXT)")
        db.close()
    opened = []
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        opened.append(real_connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(module.sqlite3, "connect", connect)
    with pytest.raises(EvidenceStoreError, match="node's log"):
        DurableLog(tmp_path)
    (db,) = opened
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        db.execute("SELECT 1")
