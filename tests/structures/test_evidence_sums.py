"""Exact per-(agent, source) accumulators."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmguard.errors import InvalidInputError
from swarmguard.structures.pair_sums import PairSums

value = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False) | st.sampled_from(
    [1e15, -1e15, 5e-324, -5e-324, 0.1, -0.1, 1e-300])
rows = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), value), min_size=1, max_size=80)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@given(rows, st.randoms(use_true_random=False), st.integers(1, 6))
@settings(max_examples=150, deadline=None)
def test_partitioned_sums_match_fsum_and_each_other(data, rnd, n_parts):
    agent = np.array([a for a, _, _ in data])
    source = np.array([s for _, s, _ in data])
    contribution = np.array([v for _, _, v in data])
    whole = PairSums.from_rows(agent, source, contribution)
    order = list(range(len(data)))
    rnd.shuffle(order)
    cuts = sorted(rnd.randint(0, len(order)) for _ in range(n_parts - 1))
    parts = [PairSums.from_rows(agent[idx], source[idx], contribution[idx])
             for lo, hi in zip([0, *cuts], [*cuts, len(order)], strict=True)
             for idx in [np.array(order[lo:hi], dtype=np.int64)]]
    merged = PairSums.merge_all(parts[::-1])
    assert merged == whole
    one_by_one = PairSums()
    for p in parts:
        one_by_one += p
    assert one_by_one == whole
    a, s, c, t = merged.totals()
    for i in range(a.size):
        mine = [v for (aa, ss, v) in data if aa == a[i] and ss == s[i]]
        assert c[i] == len(mine)
        assert bits(t[i]) == bits(math.fsum(mine))
    pa, ps, pc, pt, ac, at = PairSums.merged_totals(parts, 7, prior=0.25)
    assert np.array_equal(pt.view(np.int64), t.view(np.int64))
    for agent_row in range(7):
        mine = [v for (aa, _, v) in data if aa == agent_row]
        assert bits(at[agent_row]) == bits(math.fsum([0.25, *mine]))
        assert ac[agent_row] == len(mine)
        sel = merged.select_agent(agent_row)
        assert sel.totals()[2].sum() == len(mine)


def test_state_round_trip():
    p = PairSums.from_rows(np.array([0, 1, 1]), np.array([2, 0, 0]), np.array([1e300, -1.0, 1e-300]))
    again = PairSums.from_dict(p.to_dict())
    assert again == p


@given(rows, st.integers(1, 5), st.randoms(use_true_random=False))
@settings(max_examples=80, deadline=None)
def test_grouped_build_equals_one_accumulator_per_part(data, n_parts, rnd):
    agent = np.array([a for a, _, _ in data])
    source = np.array([s for _, s, _ in data])
    contribution = np.array([v for _, _, v in data])
    part = np.array([rnd.randrange(n_parts) for _ in data], dtype=np.int64)
    built = PairSums.from_rows_grouped(part, n_parts, agent, source, contribution)
    for i in range(n_parts):
        sel = part == i
        assert built[i] == PairSums.from_rows(agent[sel], source[sel], contribution[sel])


def test_partitions_ship_as_plain_arrays_and_merge_exactly():
    from swarmguard.errors import InvalidInputError
    from swarmguard.structures.evidence import EvidenceLedger, EvidencePartition

    rng = np.random.default_rng(3)
    n = 700
    ledger = EvidenceLedger(partition_size=100)
    agent, source = rng.integers(0, 30, size=n), rng.integers(0, 6, size=n)
    log_odds, conf = rng.normal(size=n) * 1e10, rng.uniform(size=n)
    ledger.append(agent, source, np.zeros(n, np.int16), log_odds, conf, np.zeros(n))
    shipped = [EvidencePartition.from_dict(p.to_dict()) for p in ledger.partitions()]
    assert [p.size for p in shipped] == [p.size for p in ledger.partitions()]
    merged = PairSums.merge_all([p.sums() for p in shipped])
    a, s, c, t = merged.totals()
    contribution = conf * log_odds
    for i in range(a.size):
        mine = contribution[(agent == a[i]) & (source == s[i])]
        assert c[i] == mine.size and bits(t[i]) == bits(math.fsum(mine.tolist()))
    with pytest.raises(InvalidInputError):
        EvidencePartition.from_dict({"capacity": 1, "seq": np.arange(3), "agent": np.zeros(3),
                                     "source": np.zeros(3), "contribution": np.zeros(3)})


def test_ledger_batch_partitions_share_no_writable_memory():
    from swarmguard.structures.evidence import EvidenceLedger

    rng = np.random.default_rng(0)
    n = 5000
    agent = rng.integers(0, 20000, size=n)
    source = rng.integers(0, 7, size=n)
    lo, conf = rng.normal(size=n), rng.uniform(size=n)
    ledger = EvidenceLedger(partition_size=300)
    ledger.append(agent, source, np.zeros(n, np.int16), lo, conf, np.zeros(n))
    before = [(p.seq.copy(), p.agent.copy(), p.source.copy(), p.contribution.copy()) for p in ledger.partitions()]
    # Growing a partition that holds views must not write into its neighbours.
    ledger.append(agent[:50], source[:50], np.zeros(50, np.int16), lo[:50], conf[:50], np.zeros(50))
    for p, (seq, a, s, c) in zip(ledger.partitions(), before, strict=False):
        assert np.array_equal(p.seq[: seq.size], seq) and np.array_equal(p.agent[: a.size], a)
        assert np.array_equal(p.source[: s.size], s) and np.array_equal(p.contribution[: c.size], c)
    # Every row is in exactly one partition, with its fields.
    seq = np.concatenate([p.seq for p in ledger.partitions()])
    assert np.array_equal(np.sort(seq), np.arange(n + 50))
    for p in ledger.partitions():
        rows = ledger.rows(p.seq)
        assert np.array_equal(rows["source_row"], p.source)
        assert np.array_equal(rows["agent_row"] & 8191, p.agent)
        assert np.array_equal(rows["confidence"] * rows["log_odds"], p.contribution)


def _shipped_states():
    from swarmguard.structures.evidence import EvidencePartition
    part = EvidencePartition(4)
    part.extend(np.array([0, 1]), np.array([0, 1], np.int32), np.array([0, 0], np.int32), np.array([1.0, 2.5]))
    return part.to_dict(), part.sums().to_dict()


HOSTILE_VALUES = ["x", None, 2 ** 70, -5, 1.5, True, object(), np.array([1e300, 1.0]), np.array(["a", "b"]),
                  np.array([2 ** 40, 1]), np.array([[1, 2]]), np.array([np.nan, 1.0]), np.array([1.5, 2.5]),
                  np.array([-1, 0]), np.array([40_000, 0]), np.array([2 ** 31, 0]), np.array([True, False]),
                  # a value float64 cannot hold (where long double is wider): refused, never rounded
                  np.array([1, 1]) + np.ldexp(np.array([1, 0], dtype=np.longdouble), -60)]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=lambda v: type(v).__name__ + str(getattr(v, "dtype", "")))
def test_partition_and_pair_sums_loaders_refuse_damaged_states(value):
    from swarmguard.structures.evidence import EvidencePartition

    part_state, sums_state = _shipped_states()
    for loader, state in ((EvidencePartition.from_dict, part_state), (PairSums.from_dict, sums_state)):
        for field in state:
            tampered = dict(state, **{field: value})
            try:
                loaded = loader(tampered)
            except InvalidInputError:
                continue
            # Accepted only when every field reads back exactly as given: never a silent cast.
            again = loaded.to_dict()
            for name, sent in tampered.items():
                assert np.array_equal(np.asarray(again[name]), np.asarray(sent)), (field, value, name)
    for loader in (EvidencePartition.from_dict, PairSums.from_dict):
        for state in ("not a dict", None, [1, 2], {}):
            with pytest.raises(InvalidInputError):
                loader(state)


# ------------------------------------------------------------------ covered agents (probation)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5)), min_size=1, max_size=120),
       st.lists(st.booleans(), min_size=6, max_size=6), st.integers(1, 5), st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)
def test_covered_counts_are_distinct_covered_agents_up_to_the_cap_whatever_the_calls(rows_, base, cap, rnd):
    """CoveredCounts against its definition, computed from scratch: per non-base source, the
    number of distinct agents it reports on that some base source reports on, capped; the
    ledger is fed in random chunks and asked after each (evidence arrives in any order)."""
    from swarmguard.structures.evidence import CoveredCounts, EvidenceLedger

    ledger = EvidenceLedger(partition_size=16)
    ledger.agents.add_new(list(range(8)))
    ledger.sources.add_new(list(range(6)))
    base = np.array(base)
    counter = CoveredCounts()
    done = 0
    while done < len(rows_):
        step = rnd.randint(1, 12)
        chunk = rows_[done:done + step]
        done += len(chunk)
        ledger.append(np.array([a for a, _ in chunk]), np.array([s for _, s in chunk]),
                      np.zeros(len(chunk), np.int16), np.ones(len(chunk)), np.ones(len(chunk)), np.zeros(len(chunk)))
        seen = rows_[:done]
        covered = {a for a, s in seen if base[s]}
        want = [0 if base[s] else min(len({a for a, t in seen if t == s and a in covered}), cap) for s in range(6)]
        assert counter.counts(ledger, base, cap).tolist() == want
