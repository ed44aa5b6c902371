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
