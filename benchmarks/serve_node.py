"""A ``swarmguard serve`` node in a subprocess on a free loopback port, for the serve benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class NodeProcess:
    """A running node: its base URL, its process, its data folder."""

    base: str
    proc: subprocess.Popen
    data_dir: Path
    stop_timeout: float = 60.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> float:
        """SIGTERM the node's process group (it drains: the open window's close, then its
        snapshot) and wait for it to exit; the seconds that took."""
        t0 = time.perf_counter()
        terminate(self.proc, self.stop_timeout)
        return time.perf_counter() - t0


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group this benchmark started (``start_new_session``: its id is the
    node's pid) and wait ``timeout`` s for the node to exit; past that, SIGKILL that group and
    raise, so that no node outlives its benchmark. Nothing is sent once the node has exited
    (its pid could then name another process)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise


@contextlib.contextmanager
def node_process(*, stop_timeout: float = 60.0, extra_args: Sequence[str] = ()) -> Iterator[NodeProcess]:
    """Start a node (one window of a day, a temporary data folder, ``extra_args`` appended to
    ``swarmguard serve``), wait until ``/readyz`` answers 200 (60 s at most), yield it;
    SIGTERM its process group on exit unless :meth:`NodeProcess.stop` already did (the data
    folder is still there after ``stop()``, until the block ends)."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen([sys.executable, "-c", "from swarmguard.cli import app; app()", "serve",
                                 "--port", str(port), "--data-dir", folder, "--window", "86400", *extra_args],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=base, timeout=5) as http:
                while True:             # bounded: 60 s, or the node's exit
                    try:
                        if http.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if proc.poll() is not None:
                        raise RuntimeError(f"the node exited with status {proc.returncode} before /readyz answered 200")
                    if time.monotonic() > deadline:
                        raise RuntimeError("the node's /readyz did not answer 200 within 60 s")
                    time.sleep(0.1)
            yield NodeProcess(base, proc, Path(folder), stop_timeout)
        finally:
            terminate(proc, stop_timeout)


@contextlib.contextmanager
def running_node(*, stop_timeout: float = 60.0) -> Iterator[str]:
    """Start a node (one window of a day, a temporary data folder), wait until ``/readyz``
    answers 200 (60 s at most), yield its base URL; SIGTERM its process group on exit."""
    with node_process(stop_timeout=stop_timeout) as node:
        yield node.base


def alternating_get_medians(client, urls: dict[str, str], reads: int) -> dict[str, float]:
    """Median latency (s) of ``GET`` on each of ``urls`` (name -> url) through ``client``, read
    ``reads`` times in turn, so a change of the machine's load hits every one; each answer must
    be 200, and the last answers of all must be equal (the peer answers as the route does)."""
    import statistics

    lat: dict[str, list[float]] = {name: [] for name in urls}
    answers = {}
    for _ in range(reads):
        for name, url in urls.items():
            t = time.perf_counter()
            r = client.get(url)
            lat[name].append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
            answers[name] = r.json()
    first, *others = answers.values()
    assert all(other == first for other in others), list(urls.values())
    return {name: statistics.median(v) for name, v in lat.items()}
