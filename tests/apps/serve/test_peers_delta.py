"""The peer delta wire format: bytes without pickle, all-or-nothing, idempotent in any delivery order."""

from __future__ import annotations

import io
import zipfile
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.apps.serve.peer_delta import LocalReplicas, decode_delta
from swarmguard.errors import InvalidInputError, SwarmGuardError

REGIONS = ("eu", "us", "ap")


def _writer_deltas(script):
    """Replay a script of writes on three sender regions; collect the delta each ships after
    each write: since nothing (a first contact) or since the vector of a receiver that holds
    every earlier delta of the script (an anti-entropy round after an acknowledgement)."""
    senders = {r: LocalReplicas(r) for r in REGIONS}
    sets = {r: senders[r].replica_set() for r in REGIONS}
    deltas, ev = [], 0
    acked = LocalReplicas("ack").replica_set()     # holds every delta shipped so far
    for step, (region, agent, value, with_evidence, since_empty) in enumerate(script):
        rep = senders[region].replica_of("behaviors", 2)
        rep.update_many([f"a{agent}"], [float(step)], [[value, -value]], [value / 2], now=float(step))
        if with_evidence:
            ev += 1
            sets[region].ledger.append_local([[f"e{ev}", f"a{agent}", "anomaly", value, 0.5, float(step), "obs"]])
        peer = None if since_empty else acked.vectors()
        deltas.append(sets[region].delta_since(peer, now=float(step)).to_bytes())
        acked.apply(deltas[-1])
    return deltas


def _receive(deltas_in_order):
    recv = LocalReplicas("zz")
    rs = recv.replica_set()
    for d in deltas_in_order:
        rs.apply(d)
    return recv, rs


script_strategy = st.lists(
    st.tuples(st.sampled_from(REGIONS), st.integers(0, 4), st.floats(-1e6, 1e6, allow_nan=False, width=32),
              st.booleans(), st.booleans()),
    min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(script=script_strategy, data=st.data())
def test_any_order_and_duplication_converges_to_applying_once_in_order(script, data):
    deltas = _writer_deltas(script)
    ref, ref_set = _receive(deltas)
    # any delivery: a permutation of the deltas, some delivered two or three times
    order = data.draw(st.permutations(range(len(deltas))))
    extra = data.draw(st.lists(st.sampled_from(range(len(deltas))), max_size=len(deltas)))
    delivery = [deltas[i] for i in list(order) + extra]
    got, got_set = _receive(delivery)
    a, b = ref.by_name["behaviors"], got.by_name["behaviors"]
    assert a.registers == b.registers and a.version == b.version
    assert ref_set.ledger == got_set.ledger
    assert ref_set.vectors().combined() == got_set.vectors().combined()
    assert a.estimate().mean.tolist() == b.estimate().mean.tolist()
    # and the state is the exact last-writer-wins outcome of the script
    latest = {}
    for step, (_, agent, value, _, _) in enumerate(script):
        latest[agent] = (step, value)
    want = [Fraction(v) for _, v in latest.values()]
    assert b.estimate().count == len(latest)
    assert Fraction(b.estimate().mean.tolist()[0]) == pytest.approx(sum(want) / len(want), rel=1e-12, abs=1e-9)
    evidence_rows = sum(1 for s in script if s[3])
    assert sum(len(got_set.ledger.rows_of(r)) for r in REGIONS) == evidence_rows


def test_wire_format_is_npz_without_pickle_and_versioned():
    eu = LocalReplicas("eu")
    eu.replica_of("behaviors", 2).update_many(["a"], [1.0], [[1.0, 2.0]], [0.5], now=1.0)
    data = eu.replica_set().delta_since(None, now=2.0).to_bytes()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "schema.npy" in names and "sender.npy" in names and "evidence.json.npy" in names
    with np.load(io.BytesIO(data), allow_pickle=False) as z:     # loads without pickle
        assert int(z["schema"]) == 1 and str(z["sender"]) == "eu"
    assert decode_delta(data).register_rows == 1


def _tampered(data: bytes, key: str, value) -> bytes:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    state[key] = value
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()


@pytest.mark.parametrize("key,value", [
    ("schema", np.array(2)),
    ("p0.registers.seq", np.array([1, 2, 3])),          # inconsistent register columns
    ("evidence.json", np.frombuffer(b'[["eu", 1, "e", "a", "anomaly", 1.0, 0.5, 1.0, "o"],'
                                    b'["us", 1, "e2", "c", "anomaly", 1.0, 0.5, 1.0, "o"]]', np.uint8)),  # us#1 differs
    ("evidence.json", np.frombuffer(b"not json", np.uint8)),
])
def test_bad_delta_is_refused_whole_and_changes_nothing(key, value):
    eu = LocalReplicas("eu")
    eu_set = eu.replica_set()
    eu.replica_of("behaviors", 2).update_many(["a", "b"], [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]], [0.5, 0.1], now=1.0)
    eu_set.ledger.append_local([["e1", "a", "anomaly", 1.0, 0.5, 1.0, "o"]])
    good = eu_set.delta_since(None, now=2.0).to_bytes()
    us = LocalReplicas("us")
    us_set = us.replica_set()
    us_set.ledger.append_local([["e9", "c", "anomaly", 2.0, 0.5, 1.0, "o"]])
    ledger_before = us_set.ledger.rows_of("us")
    us.replica_of("behaviors", 2).update_many(["c"], [1.0], [[9.0, 9.0]], [0.0], now=1.0)
    before_regs, before_vectors = us.by_name["behaviors"].registers.entries(np.arange(1)), us_set.vectors().to_json()
    with pytest.raises(InvalidInputError) as info:
        us_set.apply(_tampered(good, key, value))
    assert isinstance(info.value, SwarmGuardError)
    assert us_set.vectors().to_json() == before_vectors
    after = us.by_name["behaviors"].registers.entries(np.arange(1))
    assert all(np.array_equal(before_regs[k], after[k]) for k in before_regs)
    assert us_set.ledger.rows_of("us") == ledger_before and us_set.ledger.rows_of("eu") == []
    us_set.apply(good)                          # the untampered delta still joins
    assert us_set.vectors().combined() == {"eu": 3, "us": 2}


def test_a_delta_claiming_the_receivers_own_region_is_refused():
    a, b = LocalReplicas("eu"), LocalReplicas("eu")
    a.replica_of("behaviors", 1).update_many(["x"], [1.0], [[1.0]], [0.0], now=1.0)
    with pytest.raises(InvalidInputError):
        b.replica_set().apply(a.replica_set().delta_since(None).to_bytes())
    assert b.names() == []
