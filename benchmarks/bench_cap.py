"""Benchmark the statistical CAP resolver: update throughput and delta-sync cost.

Scenario (defaults): 10^6 agents spread over 4 regions, 10 features. Each region
ingests its agents through the batch path; then the network splits into four
isolated regions, 10% of all agents change (a tenth of those move to another
region), the network heals and one anti-entropy round runs. Printed: updates per
second per region (batch path and per-item path), the cost of the first full
replication, the delta sync after the partition (rows, bytes in memory and as
``.npz`` on the wire, seconds), and what a full-state sync would have shipped.

    python benchmarks/bench_cap.py             # full size (about a minute, ~3 GiB RAM)
    python benchmarks/bench_cap.py --quick     # 10^5 agents, a few seconds
    python benchmarks/bench_cap.py --moments-only   # just the exact-moments guard (seconds)

It starts with the exact-moments guard: a replica's exact per-region moments
(``ExactMoments``) against float64 peers measured in the same run, on ordinary
data and on hostile magnitude spreads, printed as ratios. Peers: the
pre-exact float path (``Moments.update_many`` / ``revert_many``, also dropped
into the same ``RegionReplica`` in place of ``ExactMoments``) and a bare NumPy
two-pass mean and co-moment. ``--check`` exits non-zero when an ordinary-data
write is more than ``--max-ratio`` times its float peer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import time

import numpy as np

import swarmguard.structures.replica as replica_module
from swarmguard.api.cap import StatisticalCAPResolver, StatisticalUpdate
from swarmguard.structures.replica import RegionReplica
from swarmguard.values.exact_moments import ExactMoments
from swarmguard.values.moments import Moments
from swarmguard.values.version_vector import VersionVector


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


class FloatMomentsPeer:
    """The pre-exact float path, with ExactMoments' interface as RegionReplica uses it:
    a write's delta carries its rows, and adding it reverts the removed rows and adds
    the new ones to the region's float ``Moments`` (Welford / Chan updates)."""

    def __init__(self, dim: int):
        self.moments = Moments(dim)
        self.rows = self.weights = None

    @property
    def count(self) -> int:
        return self.moments.count

    def _add_rows(self, rows: np.ndarray, weights: np.ndarray) -> None:
        self.rows, self.weights = rows, weights

    def __iadd__(self, delta: FloatMomentsPeer) -> FloatMomentsPeer:
        removed, added = delta.rows[delta.weights < 0], delta.rows[delta.weights > 0]
        if removed.shape[0]:
            self.moments.revert_many(removed)
        if added.shape[0]:
            self.moments.update_many(added)
        return self


@contextlib.contextmanager
def float_moments_in_replicas():
    """RegionReplica with FloatMomentsPeer in place of ExactMoments (the peer of a write)."""
    exact = replica_module.ExactMoments
    replica_module.ExactMoments = FloatMomentsPeer
    try:
        yield
    finally:
        replica_module.ExactMoments = exact


def numpy_moments(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bare NumPy float64 moments: two-pass mean and centred co-moment."""
    mean = Z.mean(axis=0)
    C = Z - mean
    return mean, C.T @ C


def moment_cases(rng: np.random.Generator, n: int, d: int) -> dict[str, np.ndarray]:
    """Features of the guard's cases (the anomaly score column is added per write)."""
    signs = rng.choice([-1.0, 1.0], size=(n, d))
    return {
        "ordinary: normal + 1e3": rng.normal(size=(n, d)) + 1e3,
        "ordinary: normal(0, 1)": rng.normal(size=(n, d)),
        "hostile: normal * 2**U[-990, 320) (issue 10)": rng.normal(size=(n, d)) * np.exp2(rng.integers(-990, 320, size=(n, d))),
        "hostile: +-1e95 / +-1e-300 / 0 mix": signs * rng.choice([1e95, 1e-300, 0.0, 1.0], size=(n, d)) * (1 + rng.random((n, d))),
    }


def time_case(X: np.ndarray, scores: np.ndarray, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of the exact and the float moments, alone and in a replica write."""
    n, d = X.shape
    ids = np.arange(n)
    Z = np.column_stack([X, scores])
    ones = np.ones(n, np.int64)
    best: dict[str, float] = {}

    def timed(key: str, fn, *args) -> None:
        t0 = time.perf_counter()
        fn(*args)
        best[key] = min(best.get(key, np.inf), time.perf_counter() - t0)

    def write(key: str) -> None:
        r = RegionReplica("eu", d)
        timed(key + " insert", r.update_many, ids, np.ones(n), X, scores)
        timed(key + " replace", r.update_many, ids, np.full(n, 2.0), X[::-1].copy(), scores[::-1].copy())

    for _ in range(repeats):        # interleaved, so load changes hit both sides alike
        timed("exact step", ExactMoments(d + 1)._add_rows, Z, ones)
        timed("float step", Moments(d + 1).update_many, Z)
        timed("numpy step", numpy_moments, Z)
        write("exact")
        with float_moments_in_replicas():
            write("float")
    return best


def exact_moments_guard(n: int, d: int, repeats: int, seed: int) -> dict[str, tuple[float, float]]:
    """Time exact moments against float64 peers in the same run; print ratios.

    Returns the replica-write ratios (insert, replace) per case."""
    rng = np.random.default_rng(seed)
    scores = rng.random(n)
    print(f"\n## exact moments guard: {n:,} rows x {d} features + score, best of {repeats}, "
          f"ratios against float64 peers timed in the same run")
    print("case | moments step: exact / Moments.update_many (/ bare NumPy) | replica insert: exact / float "
          "| replica replace: exact / float")
    ratios = {}
    for name, X in moment_cases(rng, n, d).items():
        best = time_case(X, scores, repeats)
        ms = {k: 1e3 * v for k, v in best.items()}
        ins = best["exact insert"] / best["float insert"]
        rep = best["exact replace"] / best["float replace"]
        ratios[name] = (ins, rep)
        print(f"{name}: {ms['exact step']:.1f} / {ms['float step']:.1f} ms = "
              f"{best['exact step'] / best['float step']:.2f}x (/ {ms['numpy step']:.2f} ms = "
              f"{best['exact step'] / best['numpy step']:.1f}x) | {ms['exact insert']:.1f} / {ms['float insert']:.1f} ms "
              f"= {ins:.2f}x | {ms['exact replace']:.1f} / {ms['float replace']:.1f} ms = {rep:.2f}x")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=1_000_000)
    ap.add_argument("--regions", type=int, default=4)
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per handle_updates_many call")
    ap.add_argument("--changed", type=float, default=0.10, help="share of agents that change while split")
    ap.add_argument("--moved", type=float, default=0.10, help="share of the changed agents that move region")
    ap.add_argument("--item-updates", type=int, default=5_000, help="per-item handle_update calls per region")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10^5 agents, 1000 per-item updates")
    ap.add_argument("--moment-rows", type=int, default=20_000, help="rows per write in the exact-moments guard")
    ap.add_argument("--moment-repeats", type=int, default=5, help="timings per case in the guard (best kept)")
    ap.add_argument("--moments-only", action="store_true", help="run only the exact-moments guard")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if an ordinary-data replica write is over --max-ratio x its float peer")
    ap.add_argument("--max-ratio", type=float, default=2.0)
    args = ap.parse_args()
    if args.quick:
        args.agents, args.item_updates = 100_000, 1_000

    print(f"# bench_cap: python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    ratios = exact_moments_guard(args.moment_rows, args.dim, args.moment_repeats, args.seed)
    over = {k: r for k, r in ratios.items() if k.startswith("ordinary") and max(r) > args.max_ratio}
    if over:
        print(f"ordinary-data writes over {args.max_ratio}x their float peer: {sorted(over)}")
        if args.check:
            raise SystemExit(1)
    if args.moments_only:
        return

    rng = np.random.default_rng(args.seed)
    regions = [f"r{i}" for i in range(args.regions)]
    res = StatisticalCAPResolver(regions=regions, feature_dimensions=args.dim)
    home = rng.integers(0, args.regions, args.agents)
    agent_ids = rng.permutation(args.agents).astype(np.int64) * 7 + 11  # sparse, unordered ids
    X = rng.normal(size=(args.agents, args.dim)) + 1e3
    scores = rng.random(args.agents)
    print(f"\n# resolver: {args.agents:,} agents, {args.regions} regions, {args.dim} features, "
          f"batch {args.batch:,}")

    # ---------------------------------------------------------------- ingest (batch path)
    print("\n## update throughput, batch path (handle_updates_many, new agents)")
    t_now = 0.0
    for r, name in enumerate(regions):
        idx = np.flatnonzero(home == r)
        t0 = time.perf_counter()
        for lo in range(0, idx.size, args.batch):
            sel = idx[lo : lo + args.batch]
            res.handle_updates_many(name, agent_ids[sel], np.full(sel.size, t_now), X[sel], scores[sel])
        dt = time.perf_counter() - t0
        print(f"{name}: {idx.size:>9,} updates in {dt:6.2f} s = {idx.size / dt:>12,.0f} updates/s")

    # ---------------------------------------------------------------- full replication
    t0 = time.perf_counter()
    first = res.sync()
    print(f"\n## first sync (full replication, every replica gets every agent)\n"
          f"{first.pairs} pairs, {first.rows_shipped:,} rows, {mib(first.bytes_shipped)}, "
          f"{time.perf_counter() - t0:.2f} s")

    # ---------------------------------------------------------------- per-item path
    print("\n## update throughput, per-item path (handle_update_sync, existing agents, with update ids)")
    uid = 0
    for r, name in enumerate(regions):
        idx = np.flatnonzero(home == r)[: args.item_updates]
        ups = [StatisticalUpdate(uid + i, int(agent_ids[j]), 1.0, X[j] + 0.5, float(scores[j]), name)
               for i, j in enumerate(idx.tolist())]
        uid += len(ups)
        t0 = time.perf_counter()
        for u in ups:
            res.handle_update_sync(u)
        dt = time.perf_counter() - t0
        print(f"{name}: {len(ups):>9,} updates in {dt:6.2f} s = {len(ups) / dt:>12,.0f} updates/s "
              f"({1e6 * dt / len(ups):.0f} us each, result dict with global estimate included)")
    res.sync()

    # ---------------------------------------------------------------- partition, change 10%
    res.partition([[name] for name in regions])
    n_changed = int(args.changed * args.agents)
    changed = rng.choice(args.agents, n_changed, replace=False)
    new_home = home[changed].copy()
    movers = rng.random(n_changed) < args.moved
    new_home[movers] = (new_home[movers] + rng.integers(1, args.regions, movers.sum())) % args.regions
    print(f"\n## partition: {args.regions} isolated regions; {n_changed:,} agents change "
          f"({int(movers.sum()):,} of them move region)")
    for r, name in enumerate(regions):
        sel = changed[new_home == r]
        t0 = time.perf_counter()
        for lo in range(0, sel.size, args.batch):
            s = sel[lo : lo + args.batch]
            res.handle_updates_many(name, agent_ids[s], np.full(s.size, 2.0), X[s] + 1.0, scores[s],
                                    update_ids=np.arange(uid, uid + s.size))
            uid += s.size
        dt = time.perf_counter() - t0
        print(f"{name}: {sel.size:>9,} updates in {dt:6.2f} s = {sel.size / dt:>12,.0f} updates/s "
              f"(with update ids), confidence {res.confidence_factor(name):.3f}")
    home[changed] = new_home

    # ---------------------------------------------------------------- heal and delta sync
    res.heal()
    # wire size of one delta, serialised as .npz (what a message between actors would carry)
    a, b = res.replica(regions[0]), res.replica(regions[1])
    delta = a.delta_since(b.version, now=0.0)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    np.savez(buf, **delta)
    t_ser = time.perf_counter() - t0
    full = a.delta_since(VersionVector(), now=0.0)
    full_bytes = sum(v.nbytes for v in full.values())

    rep = res.sync()
    print(f"\n## heal + one sync round (delta sync with version vectors)\n"
          f"{rep.pairs} pairs, {rep.rows_shipped:,} rows shipped, {mib(rep.bytes_shipped)} in memory, "
          f"{rep.seconds:.2f} s")
    print(f"one delta {regions[0]}->{regions[1]}: {delta['registers.seq'].size:,} rows, "
          f"{mib(sum(v.nbytes for v in delta.values()))} in memory, {mib(len(buf.getvalue()))} as .npz "
          f"(serialised in {t_ser:.3f} s)")
    print(f"a full-state sync would ship {rep.pairs} x {mib(full_bytes)} = {mib(rep.pairs * full_bytes)} "
          f"({rep.pairs * full_bytes / max(rep.bytes_shipped, 1):.1f}x the delta)")

    # ---------------------------------------------------------------- check and estimate cost
    ok = all(res.replica(n).same_state(res.replica(regions[0])) for n in regions)
    counts = res.global_estimate(regions[0])["global_estimate"]["region_counts"]
    expected = {name: int((home == r).sum()) for r, name in enumerate(regions)}
    print(f"\nconverged: {ok}; region counts match the simulation: {counts == expected}")
    t0 = time.perf_counter()
    k = 2000
    for _ in range(k):
        res.global_estimate(regions[0])
    print(f"global_estimate(region): {1e6 * (time.perf_counter() - t0) / k:.0f} us per call "
          f"(O(regions) merge of derived moments)")
    if not (ok and counts == expected):
        raise SystemExit("benchmark state check failed")


if __name__ == "__main__":
    main()
