"""LWW register map: CRDT laws against a plain-Python reference fold."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.errors import (
    DimensionMismatchError,
    InvalidInputError,
    NonFiniteError,
    SwarmGuardError,
)
from swarmguard.values.lww_register_map import LWWRegisterMap

DIM = 2
REGIONS = ["b", "a", "c"]  # not in text order on purpose


def history_strategy():
    """A global history of writes: each (region, seq) dot names exactly one write."""
    write = st.tuples(
        st.sampled_from([0, 1, 2, "x", "y"]),  # agent
        st.sampled_from([0.0, 1.0, 2.0]),  # timestamps collide often: ties matter
        st.sampled_from(REGIONS),
        st.integers(-3, 3),  # feature seed
    )
    return st.lists(write, max_size=25)


def with_dots(history):
    seq = {r: 0 for r in REGIONS}
    out = []
    for agent, ts, region, v in history:
        seq[region] += 1
        out.append((agent, ts, region, seq[region], [float(v), float(v) / 2], float(v) * 0.1))
    return out


def entries_of(writes):
    """Wire entries for a list of dotted writes (the format ``merge_entries`` takes)."""
    ints = [w for w in writes if isinstance(w[0], int)]
    strs = [w for w in writes if isinstance(w[0], str)]
    ordered = ints + strs
    names = sorted(REGIONS)
    return {
        "format": np.array(1),
        "dim": np.array(DIM),
        "int_ids": np.array([w[0] for w in ints], dtype=np.int64),
        "str_ids": np.array([w[0] for w in strs], dtype=np.str_) if strs else np.empty(0, "<U1"),
        "timestamp": np.array([w[1] for w in ordered], dtype=float),
        "regions": np.array(names),
        "writer": np.array([names.index(w[2]) for w in ordered], dtype=np.int32),
        "seq": np.array([w[3] for w in ordered], dtype=np.int64),
        "features": np.array([w[4] for w in ordered], dtype=float).reshape(-1, DIM),
        "anomaly_score": np.array([w[5] for w in ordered], dtype=float),
    }


def build(writes):
    m = LWWRegisterMap(DIM)
    for w in writes:  # one at a time, in the given order
        m.merge_entries(entries_of([w]))
    return m


def reference(writes):
    """Plain Python: per agent the write with the largest (timestamp, region text, seq)."""
    best = {}
    for w in writes:
        key = (w[1], w[2], w[3])
        if w[0] not in best or key > best[w[0]][0]:
            best[w[0]] = (key, w)
    return {a: (w[1], w[2], w[3], w[4], w[5]) for a, (_, w) in best.items()}


def as_python(m):
    d = m.to_dict()
    ids = d["int_ids"].tolist() + d["str_ids"].tolist()
    names = d["regions"].tolist()
    return {
        a: (t, names[w], s, f, sc)
        for a, t, w, s, f, sc in zip(ids, d["timestamp"].tolist(), d["writer"].tolist(), d["seq"].tolist(),
                                     d["features"].tolist(), d["anomaly_score"].tolist(), strict=True)
    }


@settings(max_examples=60, deadline=None)
@given(history_strategy(), st.data())
def test_merge_laws_and_reference(history, data):
    writes = with_dots(history)
    pick = st.lists(st.sampled_from(writes), max_size=len(writes)) if writes else st.just([])
    a, b, c = (build(data.draw(pick)) for _ in range(3))
    assert a + b == b + a  # commutative
    assert (a + b) + c == a + (b + c)  # associative
    assert a + a == a  # idempotent
    ab = a + b
    assert ab + b == ab  # re-merging after a heal changes nothing
    whole = build(writes)
    assert as_python(whole) == reference(writes)
    # order of arrival does not matter
    assert build(data.draw(st.permutations(writes))) == whole


def test_region_text_breaks_timestamp_ties_then_seq():
    m = LWWRegisterMap(1)
    m.update(7, 1.0, "b", 1, [1.0], 0.0)
    assert not m.update(7, 1.0, "a", 1, [2.0], 0.0)  # "a" < "b": loses the tie
    assert m.update(7, 1.0, "c", 1, [3.0], 0.0)
    assert m.get(7)["features"].tolist() == [3.0]
    assert not m.update(7, 0.5, "z", 9, [4.0], 0.0)  # older: stale
    assert m.get(7)["region"] == "c"


def test_write_many_batch_semantics():
    m = LWWRegisterMap(1)
    X = np.array([[1.0], [2.0], [3.0], [4.0]])
    change, applied = m.write_many([1, 1, 2, 1], [5.0, 5.0, 1.0, 4.0], "eu", 1, X, [0, 0, 0, 0])
    # agent 1: ts 5 twice -> the later position wins; ts 4 is older
    assert applied.tolist() == [False, True, True, False]
    assert m.get(1)["features"].tolist() == [2.0]
    assert sorted(m.get(a)["seq"] for a in (1, 2)) == [1, 2]
    assert len(change) == 2 and (change.old_writer == -1).all()
    change, applied = m.write_many([2], [1.0], "eu", 3, np.array([[9.0]]), [1.0])
    assert applied.tolist() == [True]  # same region, same timestamp, later arrival wins
    assert change.old_values.tolist() == [[3.0, 0.0]]
    assert change.new_values.tolist() == [[9.0, 1.0]]


def test_serialisation_roundtrip_is_canonical():
    a = LWWRegisterMap(2)
    a.write_many(["s", 3, 1], [1.0, 2.0, 3.0], "eu", 1, np.arange(6.0).reshape(3, 2), [0.1, 0.2, 0.3])
    b = LWWRegisterMap(2)
    b.write_many([1, "s", 3], [3.0, 1.0, 2.0], "eu", 1, np.arange(6.0).reshape(3, 2)[[2, 0, 1]], [0.3, 0.1, 0.2])
    # same registers written in another order: identical bytes except seq numbers
    da, db = a.to_dict(), b.to_dict()
    for k in da:
        if k != "seq":
            assert np.array_equal(da[k], db[k]), k
    c = LWWRegisterMap.from_bytes(a.to_bytes())
    assert c == a and c.get("s")["anomaly_score"] == 0.1
    with pytest.raises(InvalidInputError):
        LWWRegisterMap.from_bytes(b"not an npz")


def _state(m):
    return {k: v.copy() for k, v in m.to_dict().items()}


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("features", np.array([[np.nan, 1.0]]), NonFiniteError),
        ("features", np.array([[1.0, 2.0, 3.0]]), DimensionMismatchError),
        ("timestamp", np.array([np.inf]), NonFiniteError),
        ("writer", np.array([5], dtype=np.int32), InvalidInputError),
        ("seq", np.array([0]), InvalidInputError),
        ("dim", np.array(3), DimensionMismatchError),
        ("format", np.array(99), InvalidInputError),
        ("regions", np.array(["a", "a", "b"]), InvalidInputError),
        ("str_ids", np.array(["extra"]), InvalidInputError),
    ],
)
def test_bad_entries_change_nothing(field, value, error):
    m = LWWRegisterMap(DIM)
    m.merge_entries(entries_of(with_dots([(1, 1.0, "a", 2)])))
    before = _state(m)
    bad = entries_of(with_dots([(2, 1.0, "b", 1)]))
    bad[field] = value
    with pytest.raises(error):
        m.merge_entries(bad)
    after = _state(m)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert 2 not in m


def test_missing_field_and_get_unknown():
    m = LWWRegisterMap(DIM)
    bad = entries_of([])
    del bad["seq"]
    with pytest.raises(InvalidInputError):
        m.merge_entries(bad)
    with pytest.raises(SwarmGuardError):
        m.get(12)
    with pytest.raises(KeyError):
        m.get("nobody")


def _three_registers(bad_score: float) -> dict:
    """Entries of three registers from region "b" whose middle score is ``bad_score``."""
    src = LWWRegisterMap(DIM)
    src.write_many([20, 21, 22], [5.0, 5.0, 5.0], "b", 1, np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
                   [0.5, bad_score, 2.0])
    return src.entries()


@pytest.mark.parametrize("bad_score, error", [
    (-1.0, InvalidInputError), (-5e-324, InvalidInputError),          # below 0, even the least subnormal
    (np.nan, NonFiniteError), (np.inf, NonFiniteError), (-np.inf, NonFiniteError),
])
def test_scores_below_zero_or_non_finite_are_refused_whole_when_asked(bad_score, error):
    m = LWWRegisterMap(DIM)
    m.merge_entries(entries_of(with_dots([(1, 1.0, "a", 2)])))
    before, version, regions = _state(m), m.version, list(m.region_names)
    bad = _three_registers(bad_score)
    with pytest.raises(error) as info:
        m.merge_entries(bad, nonnegative_scores=True)       # one bad entry among good ones
    assert isinstance(info.value, SwarmGuardError) and isinstance(info.value, ValueError)
    after = _state(m)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    assert m.version == version and m.region_names == regions and len(m) == 1
    assert all(a not in m for a in (20, 21, 22))


def test_scores_at_zero_join_when_asked_and_any_finite_score_joins_by_default():
    m = LWWRegisterMap(DIM)
    m.merge_entries(_three_registers(-0.0), nonnegative_scores=True)   # -0.0 is not below 0
    assert [m.get(a)["anomaly_score"] for a in (20, 21, 22)] == [0.5, 0.0, 2.0]
    # without the flag a negative score joins: a map takes any finite score on a write, so a
    # peer refusing it would never converge with the writer
    n = LWWRegisterMap(DIM)
    n.merge_entries(_three_registers(-1.0))
    assert n.get(21)["anomaly_score"] == -1.0 and len(n) == 3


def test_clamp_negative_scores_keeps_each_key_and_bumps_the_version():
    m = LWWRegisterMap(1)
    m.write_many([1, "b", 3], [1.0, 2.0, 3.0], "eu", 1, np.array([[1.0], [2.0], [3.0]]), [-1e-300, 0.5, -0.25])
    keys = {a: (m.get(a)["timestamp"], m.get(a)["seq"]) for a in (1, "b", 3)}
    version = m.version
    change = m.clamp_negative_scores()
    assert sorted(change.old_values[:, 1].tolist()) == [-0.25, -1e-300] and (change.new_values[:, 1] == 0).all()
    assert [m.get(a)["anomaly_score"] for a in (1, "b", 3)] == [0.0, 0.5, 0.0]
    assert {a: (m.get(a)["timestamp"], m.get(a)["seq"]) for a in (1, "b", 3)} == keys
    assert m.version > version
    version = m.version
    assert len(m.clamp_negative_scores()) == 0 and m.version == version    # none below 0: nothing changes
