"""A ``swarmguard serve`` cluster under a long seeded fault schedule, checked Jepsen-style.

Starts ``--nodes`` real nodes on loopback, every peer link through a fault-injecting
proxy (:mod:`cluster_proxy`), runs a workload of behaviours and evidence to random
nodes while a seeded schedule partitions and heals links (both ways and one-way,
dropping or black-holing), delays them, pauses nodes (SIGSTOP/SIGCONT) and kills them
(``kill -9``) and restarts them (:mod:`cluster_harness`); then heals everything and
checks availability, no lost update, convergence, agreement with a never-partitioned
reference node and the confidence decay (:mod:`cluster_checks`). Prints a table of the
figures and exits 1 if a check failed.

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/bench_cluster.py --nodes 5 --duration 60 --seed 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_checks import all_checks  # noqa: E402
from cluster_harness import ScenarioConfig, run_scenario  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the random fault phase")
    p.add_argument("--probe", type=float, default=8.0, help="seconds one node is cut off (confidence probe)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=3, help="client threads")
    p.add_argument("--interval", type=float, default=0.05, help="seconds each client waits between writes")
    p.add_argument("--max-down", type=int, default=2, help="nodes paused or down at once, at most")
    p.add_argument("--sync-seconds", type=float, default=0.3)
    p.add_argument("--window", type=float, default=0.5)
    p.add_argument("--verbose", action="store_true", help="print each fault as it is applied")
    args = p.parse_args(argv)
    config = ScenarioConfig(nodes=args.nodes, seed=args.seed, duration_s=args.duration, probe_s=args.probe,
                            sync_seconds=args.sync_seconds, window_seconds=args.window, threads=args.threads,
                            interval_s=args.interval, max_down=args.max_down, converge_deadline_s=120.0)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        t0 = time.monotonic()
        result = run_scenario(Path(tmp) / "cluster", config, say=print if args.verbose else (lambda line: None))
        checks = all_checks(result, Path(tmp) / "reference")
        wall = time.monotonic() - t0

    kinds = Counter(e.action for e in result.events)
    history = result.history
    acked = [w for w in history if w.outcome == "ack"]
    state = result.states[0]
    registers = len(state["populations"].get("behaviors", {}).get("registers", []))
    evidence = len(state["evidence"]["rows"])
    delivered = (config.nodes - 1) * (registers + evidence)     # each update reaches every other node
    restarts = [s for starts in result.ready_s for s in starts[1:]]
    availability = checks[0].figures
    rows = [
        ("nodes / seed / fault phase", f"{config.nodes} / {config.seed} / {config.duration_s:g} s "
                                       f"(+ {config.probe_s:g} s probe), wall {wall:.0f} s"),
        ("partitions (two-way) / one-way cuts / delays / heals",
         f"{kinds['partition']} / {kinds['cut']} / {kinds['delay']} / {kinds['heal']}"),
        ("pauses (SIGSTOP) / crashes (kill -9) survived", f"{kinds['pause']} / {kinds['kill']}"),
        ("writes sent / acknowledged", f"{len(history)} / {len(acked)}"),
        ("  behaviour writes acknowledged (rows)",
         f"{sum(w.kind == 'behaviors' for w in acked)} ({sum(len(w.items) for w in acked if w.kind == 'behaviors')})"),
        ("  evidence writes acknowledged (lines)",
         f"{sum(w.kind == 'evidence' for w in acked)} ({sum(len(w.items) for w in acked if w.kind == 'evidence')})"),
        ("writes to live nodes / acknowledged", f"{availability['to_live_nodes']} / {availability['acknowledged_live']}"
                                                f" ({100 * availability['availability']:.1f} %)"),
        ("writes to paused/down nodes: indeterminate / refused",
         f"{availability['indeterminate']} / {availability['refused']}"),
        ("agents / re-written agents / evidence rows held",
         f"{registers} / {checks[1].figures['rewritten_agents']} / {evidence}"),
        ("time to converge after the final heal", f"{result.converge_s:.2f} s"),
        ("restart to ready (replay), median / max",
         f"{statistics.median(restarts):.2f} s / {max(restarts):.2f} s" if restarts else "no restart"),
        ("bytes on the peer links (HTTP, both ways)", f"{result.link_bytes:,}"),
        ("updates delivered (registers + evidence) x (n - 1)", f"{delivered:,}"),
        ("bytes per synced update", f"{result.link_bytes / max(delivered, 1):.0f}"),
        ("one full-state copy (delta from nothing)",
         f"{state['full_state_bytes']:,} B = {state['full_state_bytes'] / max(registers + evidence, 1):.0f} B per update held"),
        ("link bytes / one full copy to every peer of every node",
         f"{result.link_bytes / max(1, config.nodes * (config.nodes - 1) * state['full_state_bytes']):.2f}"),
        ("population statistics vs reference (worst relative difference)",
         f"{checks[4].figures['worst_relative_difference']:.1e}"),
        ("confidence of the cut-off node (s after cut, factor)", " ".join(f"{t:g}:{c:.3f}" for t, c in
                                                                         checks[5].figures["readings"])),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'figure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 40}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print()
    for check in checks:
        print(("PASS " if check.ok else "FAIL ") + str(check).splitlines()[0].split(":")[0])
        if not check.ok:
            print("  " + "\n  ".join(check.failures))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
