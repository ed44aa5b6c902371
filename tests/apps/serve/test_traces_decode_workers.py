"""POST /v1/traces with --decode-workers: the same answers and state as in-thread decoding; a lost worker is a 503."""

from __future__ import annotations

import gzip
import os
import signal

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from swarmguard.apps.otlp.decode import decode_export_response, decode_status  # noqa: E402
from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402
from swarmguard.apps.otlp.traces import SpanIngest  # noqa: E402
from swarmguard.apps.serve import ServeSettings  # noqa: E402
from swarmguard.errors import InvalidInputError  # noqa: E402

from .conftest import ManualClock, auth, close_window, metric  # noqa: E402

PB = {"Content-Type": "application/x-protobuf"}


def _ingest(node) -> SpanIngest:
    return next(e for e in node.extensions if isinstance(e, SpanIngest))


def _bodies() -> list[tuple[bytes, dict[str, str]]]:
    fleet = window_requests(make_fleet(80, 4, 0), np.random.default_rng(3))
    return [(b, PB) for b in fleet[:3]] + [(gzip.compress(fleet[3]), {**PB, "Content-Encoding": "gzip"})]


def _serve_and_close(make_node, tmp_path, name: str, workers: int):
    _, node, client = make_node(data_dir=tmp_path / name, decode_workers=workers)
    answers = []
    for body, headers in _bodies() * 2:             # the second pass: every span a repeat
        r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
        answers.append((r.status_code, r.content))
    pending = _ingest(node).pending_spans
    counts = (metric(client, "swarmguard_accepted_total", kind="spans"),
              metric(client, "swarmguard_accepted_total", kind="spans_repeated"))
    closed = close_window(client)
    return node, answers, pending, counts, closed


def test_workers_answer_and_keep_what_in_thread_decoding_does(make_node, tmp_path):
    node, answers, pending, counts, closed = _serve_and_close(make_node, tmp_path, "workers", 1)
    assert _ingest(node).decoders is not None and all(w.ready for w in _ingest(node).decoders._workers)
    node0, answers0, pending0, counts0, closed0 = _serve_and_close(make_node, tmp_path, "in-thread", 0)
    assert _ingest(node0).decoders is None
    assert answers == answers0 and all(status == 200 for status, _ in answers)
    assert pending == pending0 > 0 and counts == counts0 and counts[1] == counts[0]   # repeats detected
    assert closed == closed0


def test_a_body_malformed_in_the_worker_is_a_400_status_and_nothing_is_logged(make_node, tmp_path):
    _, node, client = make_node(decode_workers=1)
    before = node.log.last_seq()
    r = client.post("/v1/traces", content=b"\x0a\x05junk", headers={**PB, **auth("t-ingest")})
    assert r.status_code == 400 and r.headers["content-type"] == "application/x-protobuf"
    assert "not an ExportTraceServiceRequest" in decode_status(r.content, "protobuf").message
    assert node.log.last_seq() == before and _ingest(node).pending_spans == 0
    assert metric(client, "swarmguard_errors_total", code="malformed_body", status="400") == 1


def test_a_killed_worker_is_a_503_with_retry_after_then_the_retry_is_accepted(make_node):
    _, node, client = make_node(decode_workers=1)
    decoders = _ingest(node).decoders
    os.kill(decoders.pids[0], signal.SIGKILL)
    body, headers = _bodies()[0]
    before = node.log.last_seq()
    r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert "died" in decode_status(r.content, "protobuf").message
    assert node.log.last_seq() == before and _ingest(node).pending_spans == 0        # nothing kept
    assert metric(client, "swarmguard_errors_total", code="decode_worker_lost", status="503") == 1
    r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
    assert r.status_code == 200 and not decode_export_response(r.content, "protobuf").HasField("partial_success")
    assert decoders.replaced == 1 and _ingest(node).pending_spans > 0


def test_closing_the_node_stops_its_decode_workers(make_node):
    _, node, _ = make_node(decode_workers=2)
    processes = [w.process for w in _ingest(node).decoders._workers]
    assert len(processes) == 2 and all(p.poll() is None for p in processes)
    node.drain()
    node.close()
    assert all(p.returncode is not None for p in processes)


@pytest.mark.parametrize("bad", [-1, 65, True, 1.5])
def test_decode_workers_must_be_a_whole_number_from_0_to_64(bad):
    with pytest.raises(InvalidInputError, match="--decode-workers"):
        ServeSettings(clock=ManualClock(), decode_workers=bad)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], seconds: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_running(p) for p in pids)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_served_nodes_workers_end_with_it_on_sigterm_and_on_kill_9(tmp_path, tokens_file, how):
    import httpx

    from .test_durability import _free_port, _start, _stop, _wait_ready

    port = _free_port()
    proc = _start(tmp_path / "data", port, tokens_file, "--decode-workers", "2")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            _wait_ready(http, proc)
            workers = _children(proc.pid)
            assert len(workers) == 2                     # started before /readyz said 200
            body, headers = _bodies()[0]
            assert http.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")}).status_code == 200
        os.kill(proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)    # the node alone
        code = proc.wait(timeout=60)       # SIGTERM: drained, then uvicorn re-raises the signal
        assert code in ((0, -signal.SIGTERM) if how == "sigterm" else (-signal.SIGKILL,))
        assert _wait_gone(workers)
    finally:
        _stop(proc)
        if proc.poll() is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)      # whatever of this test's session is left
            except ProcessLookupError:
                pass


def test_a_node_whose_decode_workers_cannot_start_stops_its_peer_sync_and_closes_its_log(tmp_path, monkeypatch):
    import threading

    from swarmguard.apps.serve import ServeNode
    from swarmguard.apps.serve.durable_log import DurableLog

    closed = []
    real_close = DurableLog.close
    monkeypatch.setattr(DurableLog, "close", lambda log: (closed.append(log.path), real_close(log))[1])

    import swarmguard.apps.otlp.decode_workers as module

    broken = tmp_path / "broken" / "swarmguard"     # a worker's swarmguard: exits with code 3
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(module, "_SOURCE", str(broken.parent))
    settings = ServeSettings(clock=ManualClock(), close_windows=False, decode_workers=1,
                             peers=("http://127.0.0.1:9",), sync_seconds=0.2)
    with pytest.raises(RuntimeError, match=r"^a decode worker \(pid \d+\) did not start: .*exit code 3") as failed:
        ServeNode(settings, tmp_path / "data")
    assert "\n" not in str(failed.value)
    assert closed == [tmp_path / "data" / "node.sqlite"]
    assert not [t for t in threading.enumerate() if t.name.startswith("peer-sync-") and t.is_alive()]


def test_no_decode_worker_left_is_a_503_with_retry_after_counted_not_a_hang(make_node, monkeypatch):
    import swarmguard.apps.otlp.decode_workers as module

    _, node, client = make_node(decode_workers=1)

    def no_file_handles():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(module, "_Worker", no_file_handles)
    os.kill(_ingest(node).decoders.pids[0], signal.SIGKILL)
    body, headers = _bodies()[0]
    before = node.log.last_seq()
    messages = []
    for _ in range(2):               # the lost worker's request, then one with no worker at all
        r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        messages.append(decode_status(r.content, "protobuf").message)
    assert "Too many open files" in messages[1]
    assert metric(client, "swarmguard_errors_total", code="decode_worker_lost", status="503") == 1
    assert metric(client, "swarmguard_errors_total", code="decode_worker_unavailable", status="503") == 1
    assert node.log.last_seq() == before and _ingest(node).pending_spans == 0
