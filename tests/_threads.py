"""Run callables in threads started together, interleaved often (the thread-safety tests)."""

from __future__ import annotations

import sys
import threading


def run_threads(workers, switch_interval=1e-6):
    """Run ``workers`` (callables) in threads started together; return their results, re-raising
    the first exception. A tiny switch interval makes the interpreter interleave them often."""
    barrier = threading.Barrier(len(workers))
    results, errors = [None] * len(workers), []

    def run(i):
        barrier.wait()
        try:
            results[i] = workers[i]()
        except BaseException as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]
    return results
