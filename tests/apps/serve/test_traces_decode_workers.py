"""``swarmguard serve --decode-workers N``: POST /v1/traces decoded in worker processes answers as
in-thread decoding does; a dead worker is a 503 and a new pool; workers never outlive the node."""

from __future__ import annotations

import gzip
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard import InvalidInputError  # noqa: E402
from swarmguard.apps.otlp.decode import decode_export_response, decode_status  # noqa: E402
from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402
from swarmguard.apps.serve.settings import ServeSettings  # noqa: E402

from .conftest import auth, close_window, metric  # noqa: E402
from .test_traces import PB, _ingest, _request, _with_ids  # noqa: E402


def _odd_bodies() -> list[tuple[dict, bytes]]:
    """Bodies beside the fleet's: spans naming no agent, a token count that is no count, a
    retried batch, a gzip body."""
    bad_tokens = ExportTraceServiceRequest.FromString(_request(("t-1", "t-2")))
    for span in bad_tokens.resource_spans[0].scope_spans[0].spans:
        for kv in span.attributes:
            if kv.key == "gen_ai.usage.input_tokens":
                kv.value.int_value = -5
    retried = _with_ids(("r-1", "r-2"), first_id=40)
    return [(PB, _request(("o-1",), orphans=3)), (PB, bad_tokens.SerializeToString()), (PB, retried), (PB, retried),
            ({**PB, "Content-Encoding": "gzip"}, gzip.compress(_request(("g-1", "g-2"))))]


def _run(make_node, data_dir: Path, workers: int, bodies) -> tuple[list, dict, int]:
    """Post ``bodies`` to a node with ``workers`` decode workers, close the window; every
    answer (status, body), each agent's features, the accepted spans counted."""
    _, node, client = make_node(data_dir=data_dir, decode_workers=workers)
    with client:                                        # the lifespan: starts (and stops) the pool
        assert (client.app.state.decode_pool is None) == (workers == 0)
        answers = []
        for headers, body in bodies:
            r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
            answers.append((r.status_code, r.content))
        accepted = metric(client, "swarmguard_accepted_total", kind="spans")
        close_window(client)
        listed = client.get("/v1/agents", params={"top": 10_000, "population": "spans"},
                            headers=auth("t-read")).json()["agents"]
        vectors = {}
        for a in listed:
            one = client.get(f"/v1/agents/{a['agent_id']}", headers=auth("t-read")).json()
            vectors[a["agent_id"]] = {c["feature"]: c["actual"] for c in one["contributions"]}
    return answers, vectors, accepted


def test_workers_give_the_same_answers_and_vectors_as_in_thread_decoding(make_node, tmp_path):
    profiles = make_fleet(80, 2, seed=3)
    fleet = window_requests(profiles, np.random.default_rng(5), batch_spans=256, now_ns=10**18)
    bodies = [(PB, b) for b in fleet] + _odd_bodies()
    base_answers, base_vectors, base_accepted = _run(make_node, tmp_path / "in-thread", 0, bodies)
    answers, vectors, accepted = _run(make_node, tmp_path / "workers", 1, bodies)
    assert answers == base_answers
    assert all(status == 200 for status, _ in answers)
    partial = [decode_export_response(body, "protobuf").partial_success.rejected_spans for _, body in answers]
    assert partial[len(fleet):len(fleet) + 2] == [3, 2]      # 3 orphans; 2 spans with a negative count
    assert accepted == base_accepted > 0
    assert len(vectors) == 80 + 7 and vectors == base_vectors
    assert vectors["r-1"]["invocations"] == 1.0                # the retried batch counted once


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({**PB}, b"\x0a\x05ab", 400),
    ({"Content-Type": "application/json"}, b"{nope", 400),
    ({**PB, "Content-Encoding": "gzip"}, b"not gzip", 400),
    ({**PB, "Content-Encoding": "gzip"}, gzip.compress(bytes(50_000)), 413),       # over the limit inflated
    ({**PB, "Content-Encoding": "br"}, b"x", 415),
], ids=["bad-protobuf", "bad-json", "bad-gzip", "gzip-bomb", "unknown-encoding"])
def test_a_bad_body_decoded_in_a_worker_gets_the_same_status(make_node, tmp_path, headers, body, status):
    outcomes = []
    for workers in (0, 1):
        _, node, client = make_node(data_dir=tmp_path / f"w{workers}", decode_workers=workers, max_body_bytes=20_000)
        with client:
            r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
            encoding = "json" if "json" in headers["Content-Type"] else "protobuf"
            st = decode_status(r.content, encoding)
            outcomes.append((r.status_code, st.code, st.message))
            assert _ingest(node).pending_spans == 0 and len(node.log) == 0
            assert metric(client, "swarmguard_errors_total", status=str(status)) == 1
    assert outcomes[0] == outcomes[1] and outcomes[0][0] == status


def _gone(pid: int, within: float = 20.0) -> bool:
    """Whether process ``pid`` ends (or is a zombie) within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.05)
    return False


def test_a_worker_that_dies_is_a_503_with_retry_after_then_a_new_pool_serves(make_node, tmp_path):
    _, node, client = make_node(decode_workers=1)
    with client:
        pool = client.app.state.decode_pool
        (pid,) = pool.pids()
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid)
        r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert decode_status(r.content, "protobuf").code == 14          # UNAVAILABLE: the exporter retries
        assert _ingest(node).pending_spans == 0 and len(node.log) == 0   # nothing kept, nothing logged
        assert metric(client, "swarmguard_errors_total", code="decode_worker_died") == 1
        r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
        assert r.status_code == 200 and _ingest(node).pending_spans == 6
        assert pool.restarts == 1 and pool.pids() and pid not in pool.pids()
    assert client.app.state.decode_pool is None


def test_decode_workers_must_be_a_whole_number_at_least_0():
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError, match="decode-workers"):
            ServeSettings(decode_workers=bad)


def _descendants(pid: int) -> set[int]:
    """``pid``'s child processes and theirs (Linux /proc)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = {int(c) for c in f.read().split()}
            except FileNotFoundError:
                continue
            todo += sorted(kids - out)
            out |= kids
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_kill_9_leaves_no_worker_and_loses_no_acknowledged_span(tmp_path, tokens_file):
    import httpx

    from .test_durability import _free_port, _start, _stop, _wait_ready

    port, data = _free_port(), tmp_path / "data"
    acked = []
    for life in range(2):
        proc = _start(data, port, tokens_file, "--decode-workers", "1")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                _wait_ready(http, proc)
                workers = _descendants(proc.pid)
                assert workers                                  # the decode worker (and spawn's tracker)
                for n in range(5):
                    agents = [f"L{life}-{n}-{j}" for j in range(3)]
                    r = http.post("/v1/traces", content=_with_ids(agents, first_id=1 + 16 * n),
                                  headers={**PB, **auth("t-ingest")})
                    assert r.status_code == 200
                    acked += agents
                # the node's process group, as the durability tests kill it: the workers left it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                assert all(_gone(w) for w in workers), [w for w in workers if not _gone(w, 0)]
        finally:
            _stop(proc)
    proc = _start(data, port, tokens_file, "--decode-workers", "1")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            _wait_ready(http, proc)
            workers = _descendants(proc.pid)
            assert http.post("/v1/admin/close-window", headers=auth("t-admin")).status_code == 200
            listed = http.get("/v1/agents", params={"top": 10_000, "population": "spans"},
                              headers=auth("t-read")).json()["agents"]
            assert set(acked) <= {a["agent_id"] for a in listed}
            # SIGTERM: the node drains, stops its pool and exits; no worker is left
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=60) in (0, -signal.SIGTERM)     # uvicorn re-raises it once drained
            assert all(_gone(w) for w in workers)
    finally:
        _stop(proc)
