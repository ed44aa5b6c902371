"""Hostile and odd input found in review: each is its documented status with a one-line error,
nothing changed (the window, the log), and a count in /metrics."""

from __future__ import annotations

import json

import pytest

from .conftest import NDJSON, auth, metric


def _unchanged(node) -> None:
    assert len(node.log) == 0 and len(node.populations["behaviors"].window) == 0


def test_an_integer_too_large_for_a_float_is_refused_alone_not_a_500(served):
    _, node, client = served
    huge = str(10**400).encode()
    body = b'{"agent_id": "a", "features": [1.0, 2.0]}\n{"agent_id": "b", "features": [' + huge + b', 1.0]}\n'
    r = client.post("/v1/behaviors", content=body, headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["rejected"]) == (1, 1) and r.json()["errors"][0]["line"] == 2
    assert len(node.populations["behaviors"].window) == 1
    r = client.post("/v1/behaviors", content=b'{"agent_id": "c", "features": [' + huge + b', 1.0]}\n',
                    headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 400 and "overflow" in r.json()["error"]
    assert len(node.log) == 1 and len(node.populations["behaviors"].window) == 1
    assert metric(client, "swarmguard_errors_total", code="internal", status="500") == 0


def test_a_malformed_last_event_id_is_400_not_a_500(served):
    _, _, client = served
    for bad in ("9" * 5000, "1e3", "-1"):
        r = client.get("/v1/events?timeout=0.2", headers={**auth("t-read"), "Last-Event-ID": bad})
        assert r.status_code == 400 and set(r.json()) == {"error"} and "Last-Event-ID" in r.json()["error"]
    r = client.get("/v1/events?timeout=0.2", headers={**auth("t-read"), "Last-Event-ID": b"\xb2"})
    assert r.status_code == 400
    assert metric(client, "swarmguard_errors_total", code="bad_header", status="400") == 4
    with client.stream("GET", "/v1/events?timeout=0.2", headers={**auth("t-read"), "Last-Event-ID": "0"}) as r:
        assert r.status_code == 200


def test_a_request_larger_than_the_window_limit_is_413_not_a_429_to_retry_forever(make_node):
    _, node, client = make_node(max_window_rows=5)
    rows = b"".join(b'{"agent_id": "a-%d", "features": [1.0]}\n' % i for i in range(6))
    r = client.post("/v1/behaviors", content=rows, headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 413 and "retry-after" not in r.headers and "5" in r.json()["error"]
    _unchanged(node)
    assert metric(client, "swarmguard_errors_total", code="too_many_vectors", status="413") == 1


def _arrow(table, **options) -> bytes:
    import io

    import pyarrow as pa

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, **options) as w:
        w.write_table(table)
    return sink.getvalue()


ARROW = {"Content-Type": "application/vnd.apache.arrow.stream", **auth("t-ingest")}


def test_arrow_bodies_that_would_expand_past_the_limit_are_refused_before_decoding(make_node):
    import numpy as np
    import pyarrow as pa

    _, node, client = make_node(max_body_bytes=100_000)
    n = 1_000_000                     # 9 MB of columns in a body of a few kB
    zeros = pa.table({"agent_id": np.zeros(n, dtype=np.int8), "f0": np.zeros(n)})
    body = _arrow(zeros, options=pa.ipc.IpcWriteOptions(compression="zstd"))
    assert len(body) < 100_000
    r = client.post("/v1/behaviors", content=body, headers=ARROW)
    assert r.status_code == 400 and "compressed" in r.json()["error"]
    # a list of nulls and a dictionary column have no buffer to count: refused by type
    nulls = pa.table({"agent_id": ["a"], "features": pa.array([[None] * 100_000], type=pa.list_(pa.null()))})
    r = client.post("/v1/behaviors", content=_arrow(nulls), headers=ARROW)
    assert r.status_code == 400 and "'features'" in r.json()["error"] and "list of numbers" in r.json()["error"]
    ids = pa.array(["y" * 200] * 1000).dictionary_encode()
    r = client.post("/v1/behaviors", content=_arrow(pa.table({"agent_id": ids, "f0": np.zeros(1000)})), headers=ARROW)
    assert r.status_code == 400 and "dictionary" in r.json()["error"]
    _unchanged(node)
    assert metric(client, "swarmguard_errors_total", code="malformed_body", status="400") == 3
    ok = pa.table({"agent_id": ["a", "b"], "f0": [1.0, 2.0], "f1": [3, 4]})
    r = client.post("/v1/behaviors", content=_arrow(ok), headers=ARROW)
    assert r.status_code == 200 and r.json()["accepted"] == 2


def test_a_body_of_many_bad_lines_lists_100_counts_all_and_stays_small(served):
    import tracemalloc

    from swarmguard.apps.serve.records import (
        MAX_LISTED_ERRORS,
        parse_behavior_lines,
        parse_evidence_lines,
    )

    bad = 200_000
    body = b'{"agent_id": "a", "features": [1.0]}\n' + b"1\n" * bad
    tracemalloc.start()
    try:
        batch = parse_behavior_lines(body, None)
        evidence = parse_evidence_lines(b"[]\n" * bad, "observer-7")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (batch.size, len(batch.errors), batch.unlisted) == (1, MAX_LISTED_ERRORS, bad - MAX_LISTED_ERRORS)
    assert (len(evidence.errors), evidence.unlisted) == (MAX_LISTED_ERRORS, bad - MAX_LISTED_ERRORS)
    assert [e.line for e in batch.errors] == list(range(2, 2 + MAX_LISTED_ERRORS))
    assert peak < 4 << 20, peak                      # one object per bad line would be ~50 MB
    _, node, client = served
    r = client.post("/v1/behaviors", content=body, headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, bad)
    assert len(r.json()["errors"]) == MAX_LISTED_ERRORS
    assert metric(client, "swarmguard_refused_total", kind="behaviors") == bad


def test_a_batch_of_the_wrong_dimension_names_each_rows_line(served):
    from swarmguard.apps.serve.records import parse_behavior_lines

    _, node, client = served
    assert client.post("/v1/behaviors", content=b'{"agent_id": "a", "features": [1.0, 2.0]}\n',
                       headers={**NDJSON, **auth("t-ingest")}).status_code == 200
    # parsed before the dimension was known (two first requests racing), checked under the lock
    batch = parse_behavior_lines(b'\n{"agent_id": "b", "features": [1.0]}\n\n{"agent_id": "c", "features": [2.0]}\n', None)
    result = node.accept_behaviors(batch)
    assert result.accepted == 0 and [e.line for e in result.errors] == [2, 4]
    assert "have 2" in result.errors[0].error and len(node.log) == 1


def test_a_failed_log_write_is_503_and_nothing_is_acknowledged_or_applied(served):
    from swarmguard.apps.serve.durable_log import DurableLog

    _, node, client = served
    ok = b'{"agent_id": "a", "features": [1.0, 2.0]}\n'
    assert client.post("/v1/behaviors", content=ok, headers={**NDJSON, **auth("t-ingest")}).status_code == 200
    pages = node.log._db.execute("PRAGMA page_count").fetchone()[0]
    node.log._db.execute(f"PRAGMA max_page_count = {pages}")        # the disk is full: SQLITE_FULL
    big = b"".join(b'{"agent_id": "b-%d", "features": [1.0, 2.0]}\n' % i for i in range(2000))
    r = client.post("/v1/behaviors", content=big, headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 503 and r.headers["retry-after"] and set(r.json()) == {"error"}
    assert "durable log" in r.json()["error"] and "Error:" not in r.json()["error"]
    evidence = b'{"evidence_id": "e", "agent_id": "a", "evidence_type": "peer_report", "log_odds": 1.0, ' \
               b'"confidence": 1.0, "timestamp": 0.0}\n' * 1
    r = client.post("/v1/evidence", content=evidence * 1, headers={**NDJSON, **auth("t-obs7")})
    assert r.status_code in (200, 503)        # a tiny record may still fit in the last page
    held_evidence = node.populations["behaviors"].detector.consensus.evidence_count
    assert len(node.populations["behaviors"].window) == 1
    assert metric(client, "swarmguard_errors_total", code="log_write_failed", status="503") >= 1
    assert metric(client, "swarmguard_accepted_total", kind="behaviors") == 1
    node.log._db.execute("PRAGMA max_page_count = 1073741823")
    assert client.post("/v1/behaviors", content=big, headers={**NDJSON, **auth("t-ingest")}).status_code == 200
    node.close()
    kinds = [rec.kind for rec in DurableLog(node.data_dir).records()]
    assert kinds.count("behaviors") == 2 and kinds.count("evidence") == held_evidence


def test_event_streams_are_bounded_and_a_closed_stream_frees_its_place(make_node):
    import threading

    _, node, client = make_node(max_event_streams=1)
    opened, release = threading.Event(), threading.Event()

    def hold():
        with client.stream("GET", "/v1/events?timeout=5", headers=auth("t-read")) as r:
            for _ in r.iter_lines():
                opened.set()
                if release.is_set():
                    break
                release.wait(5)
                break

    worker = threading.Thread(target=hold)
    worker.start()
    assert opened.wait(10)
    r = client.get("/v1/events?timeout=0.2", headers=auth("t-read"))
    assert r.status_code == 503 and r.headers["retry-after"] and "event streams" in r.json()["error"]
    release.set()
    worker.join(10)
    for _ in range(50):                   # the first stream notices its client left within ~0.1 s
        r = client.get("/v1/events?timeout=0.2", headers=auth("t-read"))
        if r.status_code == 200:
            break
        threading.Event().wait(0.1)
    assert r.status_code == 200
    assert metric(client, "swarmguard_errors_total", code="too_many_streams", status="503") >= 1


def test_events_after_an_id_across_the_ring_wrap():
    from swarmguard.apps.serve.events import EventLog

    log = EventLog(capacity=5)
    assert log.after(0) == []
    for i in range(1, 13):
        log.publish({"n": i})
    assert [e[0] for e in log.after(0)] == [8, 9, 10, 11, 12]          # the ring keeps the last 5
    assert [e[0] for e in log.after(9)] == [10, 11, 12]
    assert [e[0] for e in log.after(9, limit=2)] == [10, 11] and log.after(12) == [] and log.after(99) == []
    assert [e[1]["n"] for e in log.after(7, limit=1)] == [8]


def test_a_gzip_body_of_several_members_is_read_whole_and_trailing_bytes_are_400(make_node):
    import gzip
    import zlib

    _, node, client = make_node(max_body_bytes=2000)
    one, two = b'{"agent_id": "a", "features": [1.0]}\n', b'{"agent_id": "b", "features": [2.0]}\n'
    headers = {**NDJSON, **auth("t-ingest"), "Content-Encoding": "gzip"}
    r = client.post("/v1/behaviors", content=gzip.compress(one) + gzip.compress(two), headers=headers)
    assert r.status_code == 200 and r.json()["accepted"] == 2          # `cat a.gz b.gz` is one gzip file
    # members that are small alone but pass the limit together
    r = client.post("/v1/behaviors", content=gzip.compress(b"\n" * 1500) * 2, headers=headers)
    assert r.status_code == 413
    r = client.post("/v1/behaviors", content=gzip.compress(one) + b"junk", headers=headers)
    assert r.status_code == 400
    r = client.post("/v1/behaviors", content=zlib.compress(one) + b"junk",
                    headers={**headers, "Content-Encoding": "deflate"})
    assert r.status_code == 400 and "after its end" in r.json()["error"]
    assert len(node.log) == 1 and len(node.populations["behaviors"].window) == 2


def test_a_feature_the_detector_would_refuse_is_refused_at_ingest_not_at_the_windows_round(served):
    import numpy as np
    import pyarrow as pa

    _, node, client = served
    rng = np.random.default_rng(4)
    good = b"".join(b'{"agent_id": "g-%d", "features": [%r, %r]}\n' % (i, *rng.normal(size=2).tolist())
                    for i in range(30))
    body = good + b'{"agent_id": "big", "features": [1e300, 1.0]}\n{"agent_id": "neg", "features": [-1e100, 1.0]}\n'
    r = client.post("/v1/behaviors", content=body, headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (30, 2)
    assert [e["line"] for e in r.json()["errors"]] == [31, 32] and "1e+100" in r.json()["errors"][0]["error"]
    table = pa.table({"agent_id": ["arrow-big", "arrow-ok"], "f0": [1e200, 0.5], "f1": [1.0, 2.0]})
    r = client.post("/v1/behaviors", content=_arrow(table), headers=ARROW)
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
    r = client.post("/v1/admin/close-window", headers=auth("t-admin"))
    assert r.status_code == 200 and r.json()["closed"][0]["agents"] == 31      # the round ran
    assert "big" not in node.populations["behaviors"].agents


def test_posts_racing_window_closes_lose_nothing_and_count_nothing_twice(served, make_node):
    import threading

    from .conftest import lines

    _, node, client = served
    posted, closed_agents, failures = [], [], []

    def poster(t: int) -> None:
        for k in range(15):
            rows = [{"agent_id": f"t{t}-{k}-{i}", "features": [float(i), float(k + t)]} for i in range(20)]
            r = client.post("/v1/behaviors", content=lines(rows), headers={**NDJSON, **auth("t-ingest")})
            if r.status_code != 200:
                failures.append(r.text)
            else:
                posted.extend(row["agent_id"] for row in rows)

    def closer() -> None:
        for _ in range(20):
            r = client.post("/v1/admin/close-window", headers=auth("t-admin"))
            closed_agents.extend(o["agents"] for o in r.json()["closed"])

    threads = [threading.Thread(target=poster, args=(t,)) for t in range(3)] + [threading.Thread(target=closer)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    closed_agents.extend(o["agents"] for o in client.post("/v1/admin/close-window", headers=auth("t-admin")).json()["closed"])
    assert not failures and len(posted) == 3 * 15 * 20
    pop = node.populations["behaviors"]
    assert sum(closed_agents) == len(posted) == len(pop.agents)        # each vector in exactly one round
    assert set(pop.agents) == set(posted)
    assert pop.detector.get_global_statistics()["count"] == len(posted)
    # logged once. The 20 closes passed --snapshot-every (10): the older records were compacted into
    # the snapshot, so the log's tail holds exactly the vectors of the windows closed after it, and a
    # node rebuilt from the data folder (snapshot + tail) holds every posted vector once
    from swarmguard.apps.serve.durable_log import CLOSE_WINDOW

    records = list(node.log.records())
    kept = node.log.latest_snapshot()
    covered = 0 if kept is None else kept[0]
    logged = sum(len(rec.meta["agents"]) for rec in records if rec.kind == "behaviors")
    closes_after = sum(rec.kind == CLOSE_WINDOW and rec.seq > covered for rec in records)
    assert all(rec.seq >= covered for rec in records)
    _, again, _ = make_node(data_dir=node.data_dir)
    rebuilt = again.populations["behaviors"]
    assert set(rebuilt.agents) == set(posted) and rebuilt.detector.get_global_statistics()["count"] == len(posted)
    in_snapshot = rebuilt.windows_closed - closes_after
    assert logged == sum(s.window > in_snapshot for s in rebuilt.agents.values())
    assert kept is not None or logged == len(posted)


def test_a_500_says_nothing_of_the_exception_and_a_draining_node_ends_event_streams(served, monkeypatch):
    import time

    _, node, client = served

    def broken(*args, **kwargs):
        raise RuntimeError("/secret/path/node.sqlite token=abc")

    monkeypatch.setattr(node, "accept_behaviors", broken)
    r = client.post("/v1/behaviors", content=b'{"agent_id": "a", "features": [1.0]}\n',
                    headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 500 and set(r.json()) == {"error"}
    assert "secret" not in r.text and "RuntimeError" not in r.text
    assert metric(client, "swarmguard_errors_total", code="internal", status="500") == 1
    node.state = "draining"
    t0 = time.monotonic()
    with client.stream("GET", "/v1/events", headers=auth("t-read")) as r:      # no limit, no timeout
        r.read()
    assert time.monotonic() - t0 < 5


def test_a_body_that_trickles_past_the_timeout_is_408_and_frees_its_write_slot(make_node):
    import threading

    _, node, client = make_node(body_timeout_seconds=0.5, max_inflight=1)
    stop = threading.Event()

    def trickle():                      # one byte, then nothing for longer than the timeout
        yield b"{"
        stop.wait(3)
        yield b'"agent_id": "a", "features": [1.0]}\n'

    r = client.post("/v1/behaviors", content=trickle(), headers={**NDJSON, **auth("t-ingest")})
    stop.set()
    assert r.status_code == 408 and "0.5 s" in r.json()["error"]
    _unchanged(node)
    r = client.post("/v1/behaviors", content=b'{"agent_id": "a", "features": [1.0]}\n',
                    headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 200                 # the slot was given back
    assert metric(client, "swarmguard_errors_total", code="body_timeout", status="408") == 1


@pytest.mark.parametrize("declared", [b"-1", b"+45", b"4_5", b"\xb2"])
@pytest.mark.parametrize("path", ["/v1/behaviors", "/v1/evidence"])
def test_a_content_length_that_is_not_digits_is_400_as_on_v1_traces(served, path, declared):
    """int() takes a sign and underscores ("-1", "+45", "4_5"); a Content-Length is digits
    only (RFC 9110 8.6), as POST /v1/traces reads it. Called as the ASGI server hands the
    header over (h11 refuses such a head before the app; another server may not)."""
    import asyncio

    _, node, client = served
    body = (b'{"agent_id": "a", "features": [1.0]}\n' if path == "/v1/behaviors" else
            b'{"evidence_id": "e-1", "agent_id": "a", "evidence_type": "peer_report", "log_odds": 1.0, '
            b'"confidence": 1.0, "timestamp": 1000000.0}\n')
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    token = b"Bearer t-ingest" if path == "/v1/behaviors" else b"Bearer t-obs7"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/x-ndjson"), (b"authorization", token),
                         (b"content-length", declared)]}
    asyncio.run(client.app(scope, receive, send))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [400]
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(answer) == {"error": "Content-Length is not a number"}
    _unchanged(node)
    assert metric(client, "swarmguard_errors_total", code="bad_header", status="400") == 1


def test_a_compressed_body_is_inflated_off_the_event_loop_as_on_v1_traces(served, monkeypatch):
    """Up to --max-body-bytes (64 MiB) inflated is ~0.1 s of CPU: on the event loop it would
    stall every other request (and their body deadlines) meanwhile; POST /v1/traces inflates
    in the thread pool, and so does read_body."""
    import asyncio
    import gzip

    from swarmguard.apps.serve import body as body_module

    _, node, client = served
    on_loop, real = [], body_module.inflate

    def inflate(raw, encoding, limit):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:                    # a worker thread: no running loop
            on_loop.append(False)
        return real(raw, encoding, limit)

    monkeypatch.setattr(body_module, "inflate", inflate)
    r = client.post("/v1/behaviors", content=gzip.compress(b'{"agent_id": "a", "features": [1.0]}\n'),
                    headers={**NDJSON, **auth("t-ingest"), "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert on_loop == [False]


def test_both_json_lines_parsers_refuse_a_body_of_blank_lines_whole_and_a_bad_line_alone():
    from swarmguard.apps.serve.http_errors import ApiError
    from swarmguard.apps.serve.records import parse_behavior_lines, parse_evidence_lines

    for parse in (lambda body: parse_behavior_lines(body, None), lambda body: parse_evidence_lines(body, "obs")):
        for body in (b"", b"\n \n\t\n"):
            with pytest.raises(ApiError) as refused:
                parse(body)
            assert (refused.value.status, refused.value.code) == (400, "empty_body")
        batch = parse(b"\n[]\n")       # one line, not an object: that line is refused, not the body
        assert [e.line for e in batch.errors] == [2]
