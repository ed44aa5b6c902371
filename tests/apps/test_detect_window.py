"""swarmguard detect --window: scored against the agents whose latest row is recent enough."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from swarmguard import InvalidInputError
from swarmguard.apps.detect import detect


def write(path, stamps, X, iso=False):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["agent_id", "ts", *[f"f{j}" for j in range(X.shape[1])]])
        for i, (t, x) in enumerate(zip(stamps, X, strict=True)):
            ts = f"2026-01-01T00:{int(t) // 60:02d}:{int(t) % 60:02d}Z" if iso else repr(float(t))
            w.writerow([f"a{i}", ts, *map(repr, x.tolist())])


def from_scratch(X, inside):
    """Inside: leave-one-out among the inside rows; outside: against all inside rows (no shrinkage)."""
    K = X[inside]
    out = np.empty(X.shape[0])
    k = 0
    for i in range(X.shape[0]):
        if inside[i]:
            others = np.delete(K, k, axis=0)
            k += 1
        else:
            others = K
        diff = X[i] - others.mean(axis=0)
        out[i] = diff @ np.linalg.solve(np.cov(others.T), diff)
    return out


@pytest.mark.parametrize("iso", [False, True])
def test_window_scores_against_the_recent_agents(tmp_path, iso):
    rng = np.random.default_rng(0)
    n = 400
    stamps = np.where(np.arange(n) < 150, 10.0, 200.0) + rng.integers(0, 30, size=n)
    X = rng.normal(size=(n, 3)) + np.where(stamps[:, None] > 100, 6.0, 0.0)   # the population moved
    path = tmp_path / "t.csv"
    write(path, stamps, X, iso)
    res = detect(path, timestamp_column="ts", window=60, shrinkage=0.0, warm_up=10)
    inside = stamps >= stamps.max() - 60
    assert res.window_agents == int(inside.sum()) > 200
    np.testing.assert_allclose(res.score, from_scratch(X, inside), rtol=1e-6)
    plain = detect(path, timestamp_column="ts", shrinkage=0.0, warm_up=10)
    assert plain.window_agents is None
    np.testing.assert_allclose(plain.score, from_scratch(X, np.ones(n, bool)), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [({"window": 5.0}, "timestamp-column"),
                                          ({"window": 0.0, "timestamp_column": "ts"}, "window"),
                                          ({"window": float("nan"), "timestamp_column": "ts"}, "window")])
def test_bad_window_is_refused_before_the_file_is_read(tmp_path, kwargs, match):
    missing = tmp_path / "nothing-here.csv"     # never opened: the options are checked first
    with pytest.raises(InvalidInputError, match=match):
        detect(missing, **kwargs)
