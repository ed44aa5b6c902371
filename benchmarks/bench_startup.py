"""Benchmark start-up: ``swarmguard --help`` against ``python -c "import numpy"``.

Both commands run as fresh interpreters, alternately, ``--repeat`` times each (after
``--warmup`` untimed runs of each, so both read from a warm file cache); printed are
the median and the fastest wall time of each, and their ratio (the issue's target:
``--help`` within 4x of ``import numpy``). ``swarmguard --help`` runs exactly as the
installed console script does (``from swarmguard.cli import app; app()``), with this
interpreter and the ``swarmguard`` it imports (set ``PYTHONPATH=src`` for a checkout).
``--importtime`` also prints the ten slowest imports of ``--help`` (``python -X importtime``).

    python benchmarks/bench_startup.py              # 20 runs of each
    python benchmarks/bench_startup.py --repeat 50 --importtime
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

HELP = [sys.executable, "-c", "import sys; from swarmguard.cli import app; sys.argv[0] = 'swarmguard'; app()",
        "--help"]
NUMPY = [sys.executable, "-c", "import numpy"]


def run_once(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def slowest_imports(count: int) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the ``count`` slowest top-level imports of ``--help``."""
    err = subprocess.run([HELP[0], "-X", "importtime", *HELP[1:]], check=True, capture_output=True,
                         text=True).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        rows.append((int(cumulative) / 1e6, name.rstrip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20, help="timed runs of each command")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs of each command first")
    ap.add_argument("--importtime", action="store_true", help="also list the slowest imports of --help")
    args = ap.parse_args()

    import numpy

    import swarmguard

    print(f"# bench_startup: python {platform.python_version()}, numpy {numpy.__version__}, "
          f"swarmguard {swarmguard.__version__} from {swarmguard.__path__[0]}, {platform.machine()}")
    for _ in range(args.warmup):
        run_once(NUMPY)
        run_once(HELP)
    numpy_times, help_times = [], []
    for _ in range(args.repeat):      # alternating, so both see the same machine load
        numpy_times.append(run_once(NUMPY))
        help_times.append(run_once(HELP))
    med_numpy, med_help = statistics.median(numpy_times), statistics.median(help_times)
    print(f"python -c 'import numpy'   median {med_numpy * 1e3:7.1f} ms   fastest {min(numpy_times) * 1e3:7.1f} ms")
    print(f"swarmguard --help          median {med_help * 1e3:7.1f} ms   fastest {min(help_times) * 1e3:7.1f} ms")
    print(f"ratio --help / import numpy: median {med_help / med_numpy:.2f}x, "
          f"fastest {min(help_times) / min(numpy_times):.2f}x  ({args.repeat} runs each; target: within 4x)")
    if args.importtime:
        print("\nslowest imports of --help (cumulative, one run):")
        for seconds, name in slowest_imports(10):
            print(f"  {seconds * 1e3:7.1f} ms  {name}")


if __name__ == "__main__":
    main()
