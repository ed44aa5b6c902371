"""``swarmguard detect --label-column``: the flags' realised FDR, precision and recall against ground truth."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from swarmguard.apps.detect import detect
from swarmguard.cli import app
from swarmguard.errors import InvalidInputError, MalformedInputError
from tests.apps.test_detect import runner, write_csv

N = 400
SHIFTED = (5, 50, 77, 123, 300)        # planted far out and labelled anomalies
UNSEEN = (8, 9)                        # labelled anomalies that look normal: recall below 1


def _world(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 3))
    X[list(SHIFTED), 1] += 30.0
    X[3, 0] += 30.0                    # far out but labelled normal: a false flag
    label = np.zeros(N, dtype=bool)
    label[list(SHIFTED) + list(UNSEEN)] = True
    return [f"a{i}" for i in range(N)], X, label


def _expected(res, ids, label):
    """The rates from the flags and the labels as written, in exact arithmetic."""
    truth = dict(zip(ids, label.tolist(), strict=True))
    flags = [str(a) for a in res.agent_ids[res.is_anomaly]]
    true_flags = sum(truth[a] for a in flags)
    return {"flagged": len(flags), "true_flags": true_flags, "false_flags": len(flags) - true_flags,
            "realised_fdr": float(Fraction(len(flags) - true_flags, len(flags))),
            "precision": float(Fraction(true_flags, len(flags))),
            "recall": float(Fraction(true_flags, int(label.sum()))), "anomalies": int(label.sum())}


def _csv(path, ids, X, labels):
    rows = [[a, lab, *map(repr, map(float, x))] for a, lab, x in zip(ids, labels, X, strict=True)]
    return write_csv(path, ["agent_id", "truth", "x", "y", "z"], rows)


def test_the_rates_are_the_flags_against_the_labels_and_the_label_is_not_scored(tmp_path):
    ids, X, label = _world()
    src = _csv(tmp_path / "t.csv", ids, X, label.astype(int).tolist())
    res = detect(src, label_column="truth", warm_up=50)
    assert res.features == ["x", "y", "z"]
    plain = detect(src, features="x,y,z", warm_up=50)
    np.testing.assert_array_equal(res.score, plain.score)            # the label changes nothing scored
    want = _expected(res, ids, label)
    got = res.truth
    assert {k: getattr(got, k) for k in want} == want
    assert got.flagged == 6 and got.true_flags == 5                  # the five shifted, and agent 3
    assert got.realised_fdr == pytest.approx(1 / 6) and got.recall == pytest.approx(5 / 7)
    assert plain.truth is None and plain.label is None


@pytest.mark.parametrize("engine", ["auto", "python"])
def test_words_bools_and_numbers_are_read_alike_in_every_format(tmp_path, engine):
    ids, X, label = _world(1)
    words = [("YES" if v else "no") if i % 3 == 0 else ("true" if v else "False") if i % 3 == 1 else
             ("2.5" if v else "0") for i, v in enumerate(label)]
    base = detect(_csv(tmp_path / "w.csv", ids, X, words), label_column="truth", warm_up=50, csv_engine=engine)
    lines = [json.dumps({"agent_id": a, "truth": bool(v), "x": x[0], "y": x[1], "z": x[2]})
             for a, v, x in zip(ids, label, X.tolist(), strict=True)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    js = detect(tmp_path / "t.jsonl", label_column="truth", warm_up=50, csv_engine=engine, chunk_rows=97)
    ints = [json.dumps({"agent_id": a, "truth": int(v), "x": x[0], "y": x[1], "z": x[2]})
            for a, v, x in zip(ids, label, X.tolist(), strict=True)]
    (tmp_path / "i.jsonl").write_text("\n".join(ints) + "\n")
    ji = detect(tmp_path / "i.jsonl", label_column="truth", warm_up=50, csv_engine=engine)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"agent_id": ids, "truth": label, "x": X[:, 0], "y": X[:, 1], "z": X[:, 2]}),
                   tmp_path / "t.parquet")
    pqt = detect(tmp_path / "t.parquet", label_column="truth", warm_up=50)
    for res in (base, js, ji, pqt):
        np.testing.assert_array_equal(res.label, label)
        assert res.truth == base.truth
    assert base.truth.recall == pytest.approx(_expected(base, ids, label)["recall"])


def test_the_label_of_the_latest_row_counts(tmp_path):
    ids, X, label = _world(2)
    rows = [[a, 1 - int(v), 0, *map(repr, map(float, x))] for a, v, x in zip(ids, label, X, strict=True)]
    rows += [[a, int(v), 1, *map(repr, map(float, x))] for a, v, x in zip(ids, label, X, strict=True)]
    rows = rows[N:] + rows[:N]              # the later rows (ts 1) come first in the file
    src = write_csv(tmp_path / "ts.csv", ["agent_id", "truth", "ts", "x", "y", "z"], rows)
    res = detect(src, label_column="truth", timestamp_column="ts", warm_up=50, chunk_rows=150)
    np.testing.assert_array_equal(res.label, label)
    no_ts = detect(src, label_column="truth", features="x,y,z", warm_up=50)      # the last row in the file
    np.testing.assert_array_equal(no_ts.label, ~label)


def test_an_unreadable_label_is_a_malformed_row(tmp_path):
    ids, X, label = _world(3)
    labels = label.astype(int).tolist()
    labels[10], labels[20] = "maybe", ""
    src = _csv(tmp_path / "bad.csv", ids, X, labels)
    for engine in ("auto", "python"):
        with pytest.raises(MalformedInputError) as info:
            detect(src, label_column="truth", warm_up=50, csv_engine=engine)
        assert info.value.line == 12 and info.value.column == "truth" and "maybe" in info.value.reason
    res = detect(src, label_column="truth", warm_up=50, skip_bad=True)
    assert res.rows_skipped == 2 and res.agents == N - 2
    assert "missing label (column 'truth')" in res.skipped_examples[1]


def test_the_cli_reports_the_rates_and_refuses_a_label_that_is_another_column(tmp_path):
    ids, X, label = _world()
    src = _csv(tmp_path / "t.csv", ids, X, label.astype(int).tolist())
    out = runner.invoke(app, ["detect", str(src), "--label-column", "truth", "--warm-up", "50", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output)
    res = detect(src, label_column="truth", warm_up=50)
    assert summary["labels"] == {"column": "truth", **_expected(res, ids, label)}
    table = runner.invoke(app, ["detect", str(src), "--label-column", "truth", "--warm-up", "50"])
    assert table.exit_code == 0 and "realised FDR" in table.output and "0.1667" in table.output
    assert json.loads(runner.invoke(app, ["detect", str(src), "--warm-up", "50", "--json"]).output)["labels"] is None
    bad = runner.invoke(app, ["detect", str(src), "--label-column", "agent_id"])
    assert bad.exit_code == 2 and "different columns" in bad.output
    with pytest.raises(InvalidInputError, match="label"):
        detect(src, label_column="truth", features="x,truth")
    with pytest.raises(InvalidInputError, match="no column 'nope'"):
        detect(src, label_column="nope")


def test_with_a_window_the_rates_count_only_the_agents_judged(tmp_path):
    # agents whose latest row is outside the window are scored but never flagged: their labels are not misses
    ids, X, label = _world(4)
    ts = np.arange(N)
    stale = np.arange(20)                     # ts 0..19: outside a window of 300 from ts 399
    X[stale[:4], 2] += 30.0
    label[stale[:4]] = True
    rows = [[a, int(v), t, *map(repr, map(float, x))] for a, v, t, x in zip(ids, label, ts, X, strict=True)]
    src = write_csv(tmp_path / "w.csv", ["agent_id", "truth", "ts", "x", "y", "z"], rows)
    res = detect(src, label_column="truth", timestamp_column="ts", window=300, warm_up=50)
    inside = ts >= N - 1 - 300
    assert not res.is_anomaly[~inside].any()
    assert res.truth.anomalies == int(label[inside].sum())
    assert res.truth.recall == pytest.approx(float(Fraction(int((res.is_anomaly & label).sum()),
                                                            int(label[inside].sum()))))
    np.testing.assert_array_equal(res.label, label)          # the labels themselves are every agent's
