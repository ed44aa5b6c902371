"""Benchmark of the hierarchical tree and its scoring (issue: Solution 1).

Prints, for a population of ``--agents`` agents with ``--features`` features:

1. one update through the guide's async API (``await protocol.update_agent_behavior``):
   median and p99 µs, beside River's ``EmpiricalCovariance.update`` on the same
   vectors measured in the same run (River keeps one flat covariance and scores
   nothing; we keep a tree and score);
2. a full round (replace every agent's vector, then score all of them) beside
   the bare NumPy time for the same arithmetic (mean, covariance, Cholesky,
   Mahalanobis for every row) on the same matrix, and the ratio (of wall-clock
   times, and of this process's CPU times, which other processes on a shared
   machine do not inflate);
3. peak memory with the population resident, and how both times grow from
   ``--agents / 10`` to ``--agents``.

Run: ``python benchmarks/bench_tree.py`` (defaults: 10^6 agents, d = 10).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import time

import numpy as np
import scipy.linalg as sl

from swarmguard import BehavioralData, BehavioralDistributedProtocol, HierarchicalStatisticalTree


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bare_numpy_round(X: np.ndarray) -> np.ndarray:
    """Mean, covariance, Cholesky and every row's Mahalanobis distance: the floor."""
    mu = X.mean(axis=0)
    C = X - mu
    cov = (C.T @ C) / (X.shape[0] - 1)
    L = np.linalg.cholesky(cov)
    Z = sl.solve_triangular(L, C.T, lower=True, check_finite=False)
    return np.einsum("ij,ij->j", Z, Z)


def build(n: int, d: int, rng: np.random.Generator):
    ids = np.arange(n, dtype=np.int64)
    ids.flags.writeable = False   # lets the tree reuse its id -> slot mapping across rounds
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=d)
    tree = HierarchicalStatisticalTree(branching_factor=10, feature_dimensions=d)
    proto = BehavioralDistributedProtocol(tree)
    t0 = time.perf_counter()
    tree.update_many(ids, X)
    return tree, proto, ids, X, time.perf_counter() - t0


def time_single_updates(proto, n: int, d: int, k: int, rng) -> np.ndarray:
    agents = rng.integers(0, n, size=k)
    vecs = rng.normal(size=(k, d))
    items = [BehavioralData(int(a), v) for a, v in zip(agents, vecs, strict=True)]
    out = np.empty(k)

    async def run():
        for i, item in enumerate(items):
            t = time.perf_counter_ns()
            await proto.update_agent_behavior(item)
            out[i] = time.perf_counter_ns() - t

    asyncio.run(run())
    return out / 1e3


def time_river(d: int, k: int, rng) -> np.ndarray | None:
    try:
        from river import covariance
    except ImportError:
        return None
    cov = covariance.EmpiricalCovariance()
    rows = [{f"f{j}": float(v) for j, v in enumerate(r)} for r in rng.normal(size=(k + 1000, d))]
    for r in rows[:1000]:
        cov.update(r)
    out = np.empty(k)
    for i, r in enumerate(rows[1000:]):
        t = time.perf_counter_ns()
        cov.update(r)
        out[i] = time.perf_counter_ns() - t
    return out / 1e3


def root_drift(tree) -> float:
    """Max relative difference of the root's covariance (before any flush) from a fresh two-pass one."""
    n, _, m2 = tree._tree.root_moments()
    leaves = tree._tree.X[tree._tree.occupied]
    fresh = np.cov(leaves.T)
    scale = np.sqrt(np.outer(np.diag(fresh), np.diag(fresh)))
    return float(np.max(np.abs(m2 / (n - 1) - fresh) / scale))


def full_round(proto, ids, X, rng, repeats: int) -> tuple[float, float, int, float, float]:
    """Best wall-clock times of our round and of bare NumPy's, alternately, and the best
    CPU times of this process for each (on a shared machine the wall clock also counts
    the time other processes held the cores; the CPU time does not)."""
    best_ours = best_bare = cpu_ours = cpu_bare = float("inf")
    flagged = 0
    for _ in range(repeats):
        Xn = X + rng.normal(scale=0.01, size=X.shape)
        t, c = time.perf_counter(), time.process_time()
        res = proto.update_and_score_many(ids, Xn)
        best_ours = min(best_ours, time.perf_counter() - t)
        cpu_ours = min(cpu_ours, time.process_time() - c)
        flagged = int(res["is_anomaly"].sum())
        t, c = time.perf_counter(), time.process_time()
        bare_numpy_round(Xn)
        best_bare = min(best_bare, time.perf_counter() - t)
        cpu_bare = min(cpu_bare, time.process_time() - c)
    return best_ours, best_bare, flagged, cpu_ours, cpu_bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--updates", type=int, default=20_000, help="single updates timed")
    ap.add_argument("--repeats", type=int, default=3, help="full rounds timed (best kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    d = args.features

    print(f"swarmguard tree benchmark: d={d}, branching 10, numpy {np.__version__}")
    rows = []
    for n in (args.agents // 10, args.agents):
        gc.collect()
        tree, proto, ids, X, t_build = build(n, d, rng)
        single = time_single_updates(proto, n, d, args.updates, rng)
        drift = root_drift(tree)
        ours, bare, flagged, cpu_ours, cpu_bare = full_round(proto, ids, X, rng, args.repeats)
        rows.append((n, t_build, np.median(single), np.percentile(single, 99), ours, bare, tree.depth))
        print(f"\nn = {n:,} agents (tree depth {tree.depth}), initial bulk load {t_build:.2f} s")
        print(f"  single update, await update_agent_behavior: median {np.median(single):.1f} µs, "
              f"p99 {np.percentile(single, 99):.1f} µs, mean {single.mean():.1f} µs  "
              f"(guide claims 40 µs average)")
        print(f"  root after {args.updates:,} single updates vs a fresh computation over the leaves: "
              f"max relative difference {drift:.1e} (covariance; tolerance 1e-9)")
        print(f"  full round (update + score all): {ours:.3f} s; bare NumPy {bare:.3f} s; "
              f"ratio {ours / bare:.2f}x (target <= 3x); flagged {flagged} at alpha 1e-3")
        print(f"  same, CPU time of this process: {cpu_ours:.3f} s vs {cpu_bare:.3f} s, "
              f"ratio {cpu_ours / cpu_bare:.2f}x")
        del tree, proto, ids, X
    river = time_river(d, args.updates, rng)
    if river is None:
        print("\nRiver not installed (pip install -e '.[bench]'): no River baseline.")
    else:
        med = rows[-1][2]
        print(f"\nRiver EmpiricalCovariance.update (same run): median {np.median(river):.1f} µs, "
              f"p99 {np.percentile(river, 99):.1f} µs; ours / River median = {med / np.median(river):.2f}")
    (n0, _, m0, _, r0, _, _), (n1, _, m1, _, r1, _, _) = rows
    print(f"\ngrowth {n0:,} -> {n1:,}: single-update median x{m1 / m0:.2f}, full round x{r1 / r0:.2f}")
    print(f"peak RSS of this process: {peak_rss_mb():.0f} MB (target <= 2048 MB with 10^6 agents resident)")


if __name__ == "__main__":
    main()
