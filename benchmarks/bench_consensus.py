"""Benchmark of the evidence consensus (the guide's Solution 2).

Prints, for ``--rows`` evidence rows over ``--agents`` agents and ``--sources``
sources (defaults: 10**7, 10**6, 50):

1. batch ingestion + consensus for every agent: seconds, peak resident memory
   during that phase, and ratios against one bare ``math.fsum`` pass and one
   ``numpy.sum`` over the same contributions, timed in the same process (wall
   time, and process CPU time, which other jobs on a shared machine disturb less);
2. per-call cost of ``await add_evidence`` and ``await
   distributed_evidence_consensus`` for one agent with 1,000 pieces of evidence;
3. error of naive float summation vs ours on ill-conditioned input, against
   exact rational arithmetic.

Run: ``python benchmarks/bench_consensus.py`` (full size) or
``python benchmarks/bench_consensus.py --rows 1000000 --agents 100000`` (quick).
On virtual machines whose kernel compacts memory for huge pages, compare with
``NUMPY_MADVISE_HUGEPAGE=0 python benchmarks/bench_consensus.py`` (see the docs).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import resource
import threading
import time
from fractions import Fraction

import numpy as np

from swarmguard.api.consensus import StableBayesianConsensus
from swarmguard.api.evidence_types import BayesianEvidence


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples resident memory every 5 ms in a thread; ``peak`` is the largest seen."""

    def __enter__(self):
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def best_of(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def time_fsum_on_list(values: np.ndarray) -> float:
    as_list = values.tolist()  # conversion not timed: fsum's fastest input
    return best_of(lambda: math.fsum(as_list), 2)


def cpu_fsum_on_list(values: np.ndarray) -> float:
    """Best process CPU time of one fsum over the list (less sensitive than wall time
    to other jobs on a shared machine)."""
    as_list = values.tolist()
    best = math.inf
    for _ in range(2):
        t = time.process_time()
        math.fsum(as_list)
        best = min(best, time.process_time() - t)
    return best


def bench_scale(rows: int, agents: int, sources: int, liars: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    evidence_ids = np.arange(rows, dtype=np.int64)
    agent_ids = rng.integers(0, agents, size=rows)
    source_nodes = rng.integers(0, sources, size=rows)
    evidence_types = rng.integers(0, 6, size=rows).astype(np.int16)
    log_odds = rng.normal(0.0, 2.0, size=rows)
    log_odds[source_nodes < liars] = 50.0  # Byzantine sources always push up
    confidences = rng.uniform(0.0, 1.0, size=rows)
    timestamps = np.arange(rows, dtype=np.float64)
    contributions = confidences * log_odds

    fsum_array = best_of(lambda: math.fsum(contributions), 2)
    fsum_list = time_fsum_on_list(contributions)
    fsum_cpu = cpu_fsum_on_list(contributions)
    np_sum = best_of(lambda: np.sum(contributions), 5)

    baseline = rss_bytes()
    consensus = StableBayesianConsensus(byzantine_threshold=0.33, partition_size=10000)
    with PeakRSS() as peak:
        c0, t0 = time.process_time(), time.perf_counter()
        consensus.add_evidence_batch(evidence_ids, agent_ids, evidence_types, log_odds, confidences,
                                     timestamps, source_nodes)
        c1, t1 = time.process_time(), time.perf_counter()
        result = consensus.consensus_many()
        c2, t2 = time.process_time(), time.perf_counter()
    ingest, fuse = t1 - t0, t2 - t1
    # Process CPU time includes the sampling thread of PeakRSS (negligible: it sleeps).
    cpu_ingest, cpu_fuse = c1 - c0, c2 - c1
    total = ingest + fuse
    del consensus, result
    # The same work again in a fresh object: the process's allocator now has pages mapped,
    # which shows how much of the first pass was first-touch memory (page faults).
    again = StableBayesianConsensus(byzantine_threshold=0.33, partition_size=10000)
    t3 = time.perf_counter()
    again.add_evidence_batch(evidence_ids, agent_ids, evidence_types, log_odds, confidences,
                             timestamps, source_nodes)
    t4 = time.perf_counter()
    result = again.consensus_many()
    t5 = time.perf_counter()
    consensus = again
    print(f"== ingest + consensus: {rows:,} rows, {agents:,} agents, {sources} sources "
          f"({liars} lying), partition_size=10000")
    print(f"  partitions                  {consensus.n_partitions:,}")
    print(f"  add_evidence_batch          {ingest:8.3f} s")
    print(f"  consensus_many (all agents) {fuse:8.3f} s   ({len(result['log_odds']):,} agents)")
    print(f"  total                       {total:8.3f} s")
    print(f"  flagged sources             {result['byzantine_nodes']}")
    print(f"  peak RSS during the phase   {peak.peak / 2**30:8.3f} GiB "
          f"(process before it: {baseline / 2**30:.3f} GiB, inputs included)")
    print(f"  ru_maxrss (whole process)   {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:8.3f} GiB")
    print(f"  math.fsum over the {rows:,} contributions: {fsum_list:.3f} s (list), "
          f"{fsum_array:.3f} s (ndarray)")
    print(f"  numpy.sum over the same:    {np_sum:.4f} s")
    print(f"  ratio total / fsum(list)    {total / fsum_list:8.1f}x   (target <= 10x)")
    cpu_total = cpu_ingest + cpu_fuse
    print(f"  CPU time (process)          {cpu_ingest:.3f} s ingest + {cpu_fuse:.3f} s consensus = {cpu_total:.3f} s;"
          f" fsum(list) {fsum_cpu:.3f} s; ratio {cpu_total / fsum_cpu:.1f}x")
    print(f"  ratio total / fsum(ndarray) {total / fsum_array:8.1f}x")
    print(f"  ratio total / numpy.sum     {total / np_sum:8.0f}x")
    warm = t5 - t3
    print(f"  second pass, same process   {t4 - t3:8.3f} s ingest + {t5 - t4:.3f} s consensus = {warm:.3f} s"
          f"  ({warm / fsum_list:.1f}x fsum(list), {warm / fsum_array:.1f}x fsum(ndarray))")


def bench_per_call(n_evidence: int = 1000, sources: int = 50, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    consensus = StableBayesianConsensus()
    items = [BayesianEvidence(i, "agent-0", "behavioral_anomaly", float(rng.normal()), float(rng.uniform()),
                              float(i), f"node-{i % sources}") for i in range(n_evidence)]

    async def run():
        t = time.perf_counter()
        for e in items:
            await consensus.add_evidence(e)
        add = (time.perf_counter() - t) / n_evidence
        await consensus.distributed_evidence_consensus("agent-0")  # warm the reputation cache
        repeat = 200
        t = time.perf_counter()
        for _ in range(repeat):
            await consensus.distributed_evidence_consensus("agent-0")
        cons = (time.perf_counter() - t) / repeat
        # Interleaved: each consensus follows a new evidence (no cached result reusable).
        t = time.perf_counter()
        for i in range(repeat):
            await consensus.add_evidence(BayesianEvidence(n_evidence + i, "agent-0", "peer_report", 0.1, 1.0,
                                                          0.0, f"node-{i % sources}"))
            await consensus.distributed_evidence_consensus("agent-0")
        both = (time.perf_counter() - t) / repeat
        return add, cons, both

    add, cons, both = asyncio.run(run())
    print(f"== per call, one agent with {n_evidence:,} evidence from {sources} sources")
    print(f"  await add_evidence                       {add * 1e6:9.1f} us")
    print(f"  await distributed_evidence_consensus     {cons * 1e6:9.1f} us")
    print(f"  add + consensus, interleaved             {both * 1e6:9.1f} us")


def bench_error(seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    big = rng.uniform(-1e15, 1e15, size=50_000)
    small = rng.normal(0.0, 1.0, size=1_000)
    values = np.concatenate([big, small, -big])
    rng.shuffle(values)
    exact = sum((Fraction(v) for v in values.tolist()), Fraction(0))
    consensus = StableBayesianConsensus(aggregation="sum")
    n = values.size
    consensus.add_evidence_batch(np.arange(n), np.zeros(n, dtype=np.int64), "peer_report", values, np.ones(n),
                                 np.zeros(n), np.arange(n) % 50)
    ours = consensus.consensus(0)["log_odds"]
    naive_loop = 0.0
    for v in values.tolist():
        naive_loop += v
    naive_np = float(np.sum(values))
    print(f"== ill-conditioned input: {n:,} terms, +-1e15 pairs that cancel plus 1,000 N(0,1) terms")
    print(f"  exact (Fraction)          {float(exact)!r}")
    for name, got in (("left-to-right float", naive_loop), ("numpy.sum (pairwise)", naive_np),
                      ("StableBayesianConsensus", ours)):
        err = abs(Fraction(got) - exact)
        rel = float(err / abs(exact)) if exact else float(err)
        print(f"  {name:25s} {got!r:>24}  abs err {float(err):.3e}  rel err {rel:.3e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--agents", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=50)
    parser.add_argument("--liars", type=int, default=2, help="how many sources lie (always +50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    # NumPy asks the kernel for transparent huge pages on large arrays; where the kernel
    # compacts memory to satisfy that (defrag=madvise), first-touch memory costs far more
    # kernel time. NUMPY_MADVISE_HUGEPAGE=0 turns the request off.
    thp = "?"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/defrag") as f:
            thp = f.read().strip()
    except OSError:
        pass
    print(f"NUMPY_MADVISE_HUGEPAGE={os.environ.get('NUMPY_MADVISE_HUGEPAGE', 'unset')}, THP defrag: {thp}")
    bench_scale(args.rows, args.agents, args.sources, args.liars, args.seed)
    bench_per_call()
    bench_error()


if __name__ == "__main__":
    main()
