"""POST /v1/traces: OTLP/HTTP status codes and answers, tokens, durability, the spans population."""

from __future__ import annotations

import gzip
import json
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard.apps.otlp.decode import decode_export_response, decode_status  # noqa: E402
from swarmguard.apps.otlp.features import FEATURE_NAMES  # noqa: E402
from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402
from swarmguard.apps.otlp.traces import SpanIngest  # noqa: E402

from .conftest import ADMIN_SECRET, auth, close_window, metric, start_uvicorn  # noqa: E402

PB = {"Content-Type": "application/x-protobuf"}


def _ingest(node) -> SpanIngest:
    return next(e for e in node.extensions if isinstance(e, SpanIngest))


def _request(agents=("a-1", "a-2"), orphans: int = 0) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "svc"
    spans = rs.scope_spans.add().spans
    for agent in agents:
        for op in ("invoke_agent", "chat", "execute_tool"):
            s = spans.add(name=op, start_time_unix_nano=0, end_time_unix_nano=10**9)
            s.attributes.add(key="gen_ai.agent.id").value.string_value = agent
            s.attributes.add(key="gen_ai.operation.name").value.string_value = op
            if op == "chat":
                s.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 100
    for _ in range(orphans):
        spans.add(name="nobody")
    return req.SerializeToString()


def test_protobuf_export_is_200_with_an_empty_response_and_counts_the_spans(served):
    _, node, client = served
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    assert not decode_export_response(r.content, "protobuf").HasField("partial_success")
    assert _ingest(node).pending_spans == 6
    assert metric(client, "swarmguard_accepted_total", kind="spans") == 6


def test_spans_without_an_agent_are_refused_through_partial_success(served):
    _, node, client = served
    r = client.post("/v1/traces", content=_request(orphans=3), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200
    partial = decode_export_response(r.content, "protobuf").partial_success
    assert partial.rejected_spans == 3 and "name no agent" in partial.error_message
    assert _ingest(node).pending_spans == 6
    assert metric(client, "swarmguard_refused_total", kind="spans") == 3


def test_json_export_answers_in_json(served):
    _, node, client = served
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat", "kind": 3,
         "startTimeUnixNano": "1", "endTimeUnixNano": "2",
         "attributes": [{"key": "gen_ai.agent.id", "value": {"stringValue": "a-9"}}]},
        {"spanId": "eee19b7ec3c1b175", "name": "orphan"}]}]}]}
    r = client.post("/v1/traces", content=json.dumps(doc), headers={"Content-Type": "application/json",
                                                                     **auth("t-ingest")})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert _ingest(node).pending_spans == 1


@pytest.mark.parametrize(("headers", "body", "status"), [
    ({**PB}, b"\x0a\x05ab", 400),
    ({"Content-Type": "application/json"}, b"{nope", 400),
    ({**PB, "Content-Encoding": "gzip"}, b"not gzip", 400),
    ({"Content-Type": "text/plain"}, b"hello", 415),
    ({**PB, "Content-Encoding": "br"}, b"x", 415),
])
def test_bad_bodies_get_an_otlp_status_and_change_nothing(served, headers, body, status):
    _, node, client = served
    r = client.post("/v1/traces", content=body, headers={**headers, **auth("t-ingest")})
    assert r.status_code == status
    encoding = "json" if "json" in headers["Content-Type"] else "protobuf"
    st = decode_status(r.content, encoding)
    assert st.code == 3 and st.message and "\n" not in st.message
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", status=str(status)) == 1


def test_over_the_limit_is_413_compressed_or_not(make_node):
    _, node, client = make_node(max_body_bytes=2000)
    big = _request(agents=[f"agent-{i}" for i in range(40)])
    assert len(big) > 2000
    r = client.post("/v1/traces", content=big, headers={**PB, **auth("t-ingest")})
    assert r.status_code == 413
    packed = gzip.compress(big)
    assert len(packed) < 2000
    r = client.post("/v1/traces", content=packed, headers={**PB, "Content-Encoding": "gzip", **auth("t-ingest")})
    assert r.status_code == 413 and "more than 2000 bytes" in decode_status(r.content, "protobuf").message
    # a chunked upload (no Content-Length) is refused as it streams
    r = client.post("/v1/traces", content=iter([big[:1500], big[1500:]]), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 413
    assert _ingest(node).pending_spans == 0


def test_tokens_401_and_403(served):
    _, node, client = served
    assert client.post("/v1/traces", content=_request(), headers=PB).status_code == 401
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("wrong")})
    assert r.status_code == 401 and decode_status(r.content, "protobuf").code == 16
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-read")})
    assert r.status_code == 403 and decode_status(r.content, "protobuf").code == 7
    assert client.post("/v1/traces", content=_request(), headers={**PB, **auth(ADMIN_SECRET)}).status_code == 200
    assert _ingest(node).pending_spans == 6


def test_a_full_window_is_429_and_draining_is_503_with_retry_after(make_node):
    _, node, client = make_node(max_window_rows=10)
    assert client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")}).status_code == 200
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert decode_status(r.content, "protobuf").code == 8          # RESOURCE_EXHAUSTED
    assert _ingest(node).pending_spans == 6
    node.state = "draining"
    r = client.post("/v1/traces", content=_request(("a-3",)), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 503 and "Retry-After" in r.headers and decode_status(r.content, "protobuf").code == 14


def test_a_closed_window_scores_the_span_vectors_as_their_own_population(served):
    _, node, client = served
    profiles = make_fleet(60, 0, seed=1)
    for body in window_requests(profiles, np.random.default_rng(0)):
        assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    (closed,) = close_window(client)
    assert closed["population"] == "spans" and closed["agents"] == 60
    one = client.get("/v1/agents/agent-000007", headers=auth("t-read")).json()
    assert one["population"] == "spans"
    assert {c["feature"] for c in one["contributions"]} == set(FEATURE_NAMES)
    p = profiles[7]
    assert one["cohort"] == f"{p.kind}-agents/{p.environment}/{p.region}/{p.kind}/{p.version}/{p.model}"
    assert node.dimension("behaviors") is None                   # the other population is untouched
    assert metric(client, "swarmguard_windows_closed_total") == 1


def test_a_restart_replays_the_spans_and_gives_the_same_scores(make_node, tmp_path):
    from .conftest import ManualClock

    clock = ManualClock()
    profiles = make_fleet(50, 2, seed=4)
    rng = np.random.default_rng(3)
    windows = [window_requests(profiles, rng) for _ in range(3)]

    def feed(client, bodies):
        for body in bodies:
            assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200

    _, node, client = make_node(clock=clock, data_dir=tmp_path / "a")
    for w in windows[:2]:
        feed(client, w)
        clock.t += 1
        close_window(client)
    feed(client, windows[2])                 # an open window with spans, then the node dies
    node.log.close()
    _, again, client2 = make_node(clock=clock, data_dir=tmp_path / "a")
    assert _ingest(again).pending_spans == _ingest(node).pending_spans > 0
    _, fresh, client3 = make_node(clock=ManualClock(), data_dir=tmp_path / "b")
    for w in windows[:2]:
        feed(client3, w)
        close_window(client3)
    feed(client3, windows[2])
    close_window(client2)
    close_window(client3)
    a = client2.get("/v1/agents?top=50", headers=auth("t-read")).json()["agents"]
    b = client3.get("/v1/agents?top=50", headers=auth("t-read")).json()["agents"]
    assert [(x["agent_id"], x["score"]) for x in a] == [(x["agent_id"], x["score"]) for x in b]
    # novel_tool_share read the replayed tool history: the same vectors
    va = client2.get("/v1/agents/agent-000003", headers=auth("t-read")).json()["contributions"]
    vb = client3.get("/v1/agents/agent-000003", headers=auth("t-read")).json()["contributions"]
    assert {c["feature"]: c["actual"] for c in va} == {c["feature"]: c["actual"] for c in vb}


def _uvicorn(settings, node):
    """The app on a real socket on 127.0.0.1 (a free port), in a thread; (server, url, thread)."""
    import uvicorn

    from swarmguard.apps.serve import create_app

    server, thread, port = start_uvicorn(uvicorn.Config(create_app(settings, node), host="127.0.0.1", port=0,
                                                        log_level="warning", lifespan="on"))
    return server, f"http://127.0.0.1:{port}", thread


@pytest.mark.slow
def test_a_standard_sdk_exporter_configured_by_environment_works_unchanged(make_node, monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    settings, node, _ = make_node()
    server, url, thread = _uvicorn(settings, node)
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20t-ingest")
        provider = TracerProvider(resource=Resource.create({"service.name": "sdk-test",
                                                            "service.instance.id": "pod-1"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        tracer = provider.get_tracer("test")
        for i in range(700):                                # two batches of at most 512
            with tracer.start_as_current_span("invoke_agent") as span:
                span.set_attribute("gen_ai.operation.name", "invoke_agent")
                if i % 2:
                    span.set_attribute("gen_ai.agent.id", f"agent-{i % 5}")
        assert provider.force_flush(30_000)
        provider.shutdown()
        assert _ingest(node).pending_spans == 700
        outcomes = node.close_window()
        assert outcomes[0].population == "spans" and outcomes[0].agents == 1 + 5   # pod-1 and agent-0 … agent-4
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.slow
def test_the_fleet_s_misbehaving_agents_are_the_top_k_within_two_windows(make_node):
    pytest.importorskip("opentelemetry.sdk")
    import httpx

    from swarmguard.apps.otlp.fleet import run_fleet

    settings, node, _ = make_node()
    server, url, thread = _uvicorn(settings, node)
    try:
        def close(_window):
            r = httpx.post(url + "/v1/admin/close-window", headers=auth(ADMIN_SECRET), timeout=60)
            assert r.status_code == 200, r.text

        report = run_fleet(url, agents=800, misbehaving=4, windows=2, token="t-ingest",
                           observers=[("observer-7", "t-obs7")], seed=5, read_token="t-read", on_window=close)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert report.flushed and sum(report.spans_per_window) == metric_total(node)
    assert report.evidence_posted > 0 and report.evidence_refused == 0
    assert report.precision >= 0.95 and report.recall >= 0.95, (report.top, report.misbehaving)


def metric_total(node) -> float:
    return node.metrics.accepted.labels("spans")._value.get()


def test_group_commit_makes_records_durable_only_at_commit(tmp_path):
    from swarmguard.apps.serve.durable_log import DurableLog

    log = DurableLog(tmp_path)
    seqs = [log.append_grouped("spans", float(i), {"rows": 0, "d": 1, "agents": []}) for i in range(3)]
    assert len(DurableLog(tmp_path)) == 0                 # another reader: nothing committed yet
    log.commit_through(seqs[1])                           # one commit covers every record written
    assert len(DurableLog(tmp_path)) == 3
    log.commit_through(seqs[2])                           # already durable: no second commit needed
    s4 = log.append_grouped("spans", 3.0, {"rows": 0, "d": 1, "agents": []})
    log.append("close", 4.0, {})                          # a plain append commits the open group too
    assert len(DurableLog(tmp_path)) == 5 and s4 == 4
    assert [r.kind for r in DurableLog(tmp_path).records()] == ["spans"] * 4 + ["close"]


def test_concurrent_exports_are_all_durable_when_acknowledged(make_node, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    _, node, client = make_node()
    bodies = [_request(agents=[f"t{i}-a{j}" for j in range(5)]) for i in range(24)]
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda b: client.post("/v1/traces", content=b,
                                                    headers={**PB, **auth("t-ingest")}).status_code, bodies))
    assert codes == [200] * 24
    from swarmguard.apps.serve.durable_log import DurableLog

    assert sum(r.meta["rows"] for r in DurableLog(tmp_path / "data").records()) == 24 * 15


def test_too_many_writes_in_flight_is_an_otlp_503_on_traces(make_node):
    from swarmguard.apps.serve.app import _ServeMiddleware

    _, node, client = make_node(max_inflight=1)
    client.get("/healthz")                                     # builds the middleware stack
    stack = client.app.middleware_stack
    while stack is not None and not isinstance(stack, _ServeMiddleware):
        stack = getattr(stack, "app", None)
    assert stack is not None
    stack.inflight = 1            # the one write slot is taken: the next POST is refused before the route
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.headers["content-type"] == "application/x-protobuf"
    assert decode_status(r.content, "protobuf").code == 14
    r = client.post("/v1/behaviors", content=b"{}\n", headers={"Content-Type": "application/x-ndjson",
                                                              **auth("t-ingest")})
    assert r.status_code == 503 and "error" in r.json()          # the node's other routes keep their JSON
    stack.inflight = 0
    assert _ingest(node).pending_spans == 0


def test_an_unusable_agent_id_is_refused_through_partial_success(served):
    _, node, client = served
    r = client.post("/v1/traces", content=_request(agents=("ok-1", "bad\x00id", "x" * 1001)),
                    headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200
    partial = decode_export_response(r.content, "protobuf").partial_success
    assert partial.rejected_spans == 6 and "unusable agent id" in partial.error_message
    assert _ingest(node).pending_spans == 3
    (closed,) = close_window(client)
    assert closed["agents"] == 1


def _bad_token_request(set_value) -> bytes:
    req = ExportTraceServiceRequest()
    s = req.resource_spans.add().scope_spans.add().spans.add(name="chat", start_time_unix_nano=1,
                                                             end_time_unix_nano=10**9)
    s.attributes.add(key="gen_ai.agent.id").value.string_value = "bad-tokens"
    s.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    set_value(s.attributes.add(key="gen_ai.usage.output_tokens").value)
    return req.SerializeToString()


_NO_COUNTS = [
    lambda v: setattr(v, "double_value", float("inf")),
    lambda v: setattr(v, "double_value", 1e308),            # finite, but sums overflow
    lambda v: setattr(v, "int_value", -5),
    lambda v: setattr(v, "string_value", "-inf"),
    lambda v: setattr(v, "string_value", "1e300"),
]
_NOT_NUMBERS = [                                            # read as absent, as before
    lambda v: setattr(v, "double_value", float("nan")),
    lambda v: setattr(v, "string_value", "many"),
    lambda v: setattr(v, "bool_value", True),
    lambda v: v.array_value.values.add().__setattr__("int_value", 3),
]


@pytest.mark.parametrize(("set_value", "refused"), [(f, True) for f in _NO_COUNTS] + [(f, False) for f in _NOT_NUMBERS],
                         ids=["inf", "1e308", "negative", "-inf-string", "1e300-string", "nan", "word", "bool",
                              "array"])
def test_a_token_count_that_is_no_count_is_refused_and_the_window_still_closes(served, set_value, refused):
    # before: the span was kept, its window's vectors were non-finite, and the close (logged
    # first) failed with a 500 -- live and again at every restart's replay
    _, node, client = served
    profiles = make_fleet(20, 0, seed=1)
    for body in window_requests(profiles, np.random.default_rng(0)):
        assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    before = _ingest(node).pending_spans
    r = client.post("/v1/traces", content=_bad_token_request(set_value), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200
    partial = decode_export_response(r.content, "protobuf").partial_success
    if refused:
        assert partial.rejected_spans == 1 and "token count" in partial.error_message
        assert metric(client, "swarmguard_refused_total", kind="spans") == 1
    else:
        assert partial.rejected_spans == 0
    assert _ingest(node).pending_spans == before + (not refused)
    (closed,) = close_window(client)
    assert closed["agents"] == 20 + (not refused)
    got = client.get("/v1/agents/bad-tokens", headers=auth("t-read"))
    assert got.status_code == (404 if refused else 200)


def test_a_token_count_as_a_numeric_string_or_a_whole_double_is_read():
    from swarmguard.apps.otlp.spans import span_columns

    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for setter in (lambda v: setattr(v, "string_value", "812"), lambda v: setattr(v, "double_value", 812.0),
                   lambda v: setattr(v, "int_value", 812), lambda v: None):   # the last: no value, absent
        s = spans.add(name="chat")
        s.attributes.add(key="gen_ai.agent.id").value.string_value = "a"
        setter(s.attributes.add(key="gen_ai.usage.input_tokens").value)
    cols = span_columns(req)
    assert cols.bad_tokens == 0 and cols.input_tokens[:3].tolist() == [812.0] * 3
    assert np.isnan(cols.input_tokens[3])


def _with_ids(agents=("a-1", "a-2"), first_id: int = 1) -> bytes:
    req = ExportTraceServiceRequest.FromString(_request(agents))
    for i, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
        span.trace_id = bytes(15) + b"\x01"
        span.span_id = (first_id + i).to_bytes(8, "big")
    return req.SerializeToString()


def test_a_retried_batch_is_acknowledged_and_not_counted_twice(make_node, tmp_path):
    # before: the exporter's retry of a batch whose answer it lost doubled every agent's counts
    _, node, client = make_node(data_dir=tmp_path / "node")
    body = _with_ids()
    for _ in range(2):
        r = client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")})
        assert r.status_code == 200 and not decode_export_response(r.content, "protobuf").HasField("partial_success")
    assert _ingest(node).pending_spans == 6
    assert metric(client, "swarmguard_accepted_total", kind="spans") == 6
    assert metric(client, "swarmguard_accepted_total", kind="spans_repeated") == 6
    # a request that repeats itself, and new spans beside old ones
    both = ExportTraceServiceRequest.FromString(_with_ids(("a-1",), first_id=100))
    both.MergeFrom(ExportTraceServiceRequest.FromString(_with_ids(("a-1",), first_id=100)))
    assert client.post("/v1/traces", content=both.SerializeToString(), headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 9
    # the same span id under another agent is another span
    assert client.post("/v1/traces", content=_with_ids(("a-3",)), headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 12
    # a restart still knows the window's span ids (they are logged)
    client.close()
    _, node, client = make_node(data_dir=tmp_path / "node")
    assert _ingest(node).pending_spans == 12
    assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 12
    (closed,) = close_window(client)
    one = client.get("/v1/agents/a-1", headers=auth("t-read")).json()
    assert one["window"] == closed["window"]
    invocations = next(c for c in one["contributions"] if c["feature"] == "invocations")
    assert invocations["actual"] == 2.0                    # ids 1 and 100, once each
    # a retry arriving just after the close is still a repeat; two windows later it is new
    assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 0
    assert close_window(client) == []
    _ingest(node).before_close(0.0)                        # another (empty) window goes by
    assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 6


def test_two_spans_whose_64_bit_keys_meet_are_both_kept(served, monkeypatch):
    # the repeat check's keys are 64 bits for an agent id and a 64-bit span id, so distinct
    # spans can share one; every key made equal, no real span may be taken for a repeat
    import swarmguard.apps.otlp.traces as traces

    monkeypatch.setattr(traces, "span_keys", lambda names, agent, sid: np.zeros(len(sid), np.uint64))
    _, node, client = served
    for body, pending in ((_with_ids(), 6), (_with_ids(), 6), (_with_ids(("a-3",), first_id=1), 9),
                          (_with_ids(first_id=100), 15), (_with_ids(first_id=100), 15)):
        assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
        assert _ingest(node).pending_spans == pending
    assert metric(client, "swarmguard_accepted_total", kind="spans_repeated") == 12


def test_a_failed_group_commit_is_an_otlp_503_and_the_retry_keeps_the_spans_once(served, monkeypatch):
    # a 500 is not retryable for an OTLP exporter (it drops the batch); the commit failing is
    # the disk's trouble, retryable: 503 with Retry-After, and the retry is acknowledged once durable
    import sqlite3

    from swarmguard.apps.serve.durable_log import DurableLog

    _, node, client = served
    real, calls = node.log._write, []

    def write(rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real(rows)

    monkeypatch.setattr(node.log, "_write", write)
    body = _with_ids()
    r = client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")})
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert decode_status(r.content, "protobuf").code != 0
    assert len(DurableLog(node.log.path.parent)) == 0             # refused: nothing durable
    assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 6                       # kept once
    assert sum(r.meta["rows"] for r in DurableLog(node.log.path.parent).records()) == 6


def test_spans_without_ids_are_all_counted(served):
    _, node, client = served
    for _ in range(2):
        assert client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")}).status_code == 200
    assert _ingest(node).pending_spans == 12


def test_a_retry_is_acknowledged_only_once_the_spans_it_repeats_are_committed(served, monkeypatch):
    # the original's record may still wait for its group commit when its retry arrives: the
    # retry's 200 must not come first (a kill -9 between would lose acknowledged spans)
    _, node, client = served
    commits = []
    real = node.log.commit_through
    monkeypatch.setattr(node.log, "commit_through", lambda seq: (commits.append(seq), real(seq))[1])
    body = _with_ids()
    for _ in range(2):
        assert client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")}).status_code == 200
    assert len(commits) == 2 and commits[0] == commits[1] > 0
    assert client.post("/v1/traces", content=_request(orphans=0, agents=()), headers={**PB, **auth("t-ingest")}).status_code == 200
    assert len(commits) == 2                               # nothing kept, nothing repeated: nothing to wait for


@pytest.mark.slow
def test_kill_9_during_concurrent_exports_loses_no_acknowledged_span(tmp_path, tokens_file):
    # group commit under load: every 200 must mean its spans (and a retry's) survive a kill -9
    import random
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from .test_durability import _free_port, _start, _stop, _wait_ready

    port, data = _free_port(), tmp_path / "data"
    pick = random.Random(13)
    acked: set[str] = set()
    counter = iter(range(10**9))
    for life in range(3):
        proc = _start(data, port, tokens_file)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                _wait_ready(http, proc)
                stop = time.monotonic() + pick.uniform(0.5, 1.5)

                def post_until_killed(worker: int, life: int = life) -> None:
                    while True:
                        n = next(counter)
                        agents = [f"L{life}-w{worker}-{n}-{j}" for j in range(4)]
                        body = _with_ids(agents, first_id=1 + 16 * n)
                        try:
                            for _ in range(1 + n % 2):            # every other batch sent twice (a retry)
                                r = http.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")})
                                if r.status_code == 200:
                                    acked.update(agents)
                            if n % 9 == 0:
                                http.post("/v1/admin/close-window", headers=auth("t-admin"))
                        except httpx.TransportError:
                            return

                with ThreadPoolExecutor(4) as pool:
                    futures = [pool.submit(post_until_killed, w) for w in range(4)]
                    while time.monotonic() < stop:
                        time.sleep(0.05)
                    os.killpg(proc.pid, signal.SIGKILL)
                    for f in futures:
                        f.result(timeout=60)
        finally:
            _stop(proc)
    proc = _start(data, port, tokens_file)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            _wait_ready(http, proc)
            assert http.post("/v1/admin/close-window", headers=auth("t-admin")).status_code == 200
            assert acked
            listed = http.get("/v1/agents", params={"top": 100_000, "population": "spans"},
                              headers=auth("t-read")).json()["agents"]
            assert acked <= {a["agent_id"] for a in listed}
            for agent in pick.sample(sorted(acked), min(60, len(acked))):
                one = http.get(f"/v1/agents/{agent}", headers=auth("t-read")).json()
                actual = {c["feature"]: c["actual"] for c in one["contributions"]}
                assert actual["invocations"] == 1.0, agent            # a retry is not counted again
    finally:
        _stop(proc)


def test_a_request_larger_than_any_window_is_413_not_a_429_retried_forever(make_node):
    _, node, client = make_node(max_window_rows=5)
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})     # 6 spans
    assert r.status_code == 413 and "Retry-After" not in r.headers
    assert decode_status(r.content, "protobuf").code == 3 and "smaller batches" in decode_status(r.content, "protobuf").message
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", status="413") == 1
    assert client.post("/v1/traces", content=_request(("a-1",)), headers={**PB, **auth("t-ingest")}).status_code == 200


def test_the_middleware_calls_post_traces_directly_and_the_route_stays_documented(served, monkeypatch):
    """POST /v1/traces skips FastAPI's routing (the middleware's direct call): the router is
    never asked, the answer and the counts are the route's, and /openapi.json still lists it."""
    from fastapi.routing import APIRouter

    _, node, client = served
    routed = []
    original = APIRouter.__call__

    async def spy(self, scope, receive, send):
        routed.append(scope["path"])
        return await original(self, scope, receive, send)

    monkeypatch.setattr(APIRouter, "__call__", spy)
    r = client.post("/v1/traces", content=_request(orphans=1), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200
    assert decode_export_response(r.content, "protobuf").partial_success.rejected_spans == 1
    assert _ingest(node).pending_spans == 6
    assert "/v1/traces" not in routed
    assert client.get("/healthz").status_code == 200 and "/healthz" in routed      # the others are routed
    r = client.post("/v1/traces", content=_request(), headers=PB)                    # no token: the route's 401
    assert r.status_code == 401 and decode_status(r.content, "protobuf").code == 16
    assert "post" in client.get("/openapi.json").json()["paths"]["/v1/traces"]
    # another spelling of the path is the router's, as before (its redirect to /v1/traces)
    r = client.post("/v1/traces/", content=_request(), headers={**PB, **auth("t-ingest")}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"].endswith("/v1/traces") and "/v1/traces/" in routed


def test_an_unexpected_error_in_post_traces_is_the_otlp_500_and_counted(served, monkeypatch):
    from swarmguard.apps.otlp import traces

    _, node, client = served

    def broken(request):
        raise RuntimeError("a bug")

    monkeypatch.setattr(traces, "span_columns", broken)
    before = metric(client, "swarmguard_errors_total", code="internal", status="500")
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 500 and r.headers["content-type"] == "application/x-protobuf"
    status = decode_status(r.content, "protobuf")
    assert status.code == 13 and "internal error" in status.message and "a bug" not in status.message
    assert metric(client, "swarmguard_errors_total", code="internal", status="500") == before + 1
    assert _ingest(node).pending_spans == 0


def test_a_node_that_failed_to_start_answers_v1_traces_with_an_otlp_503(tokens_file, tmp_path):
    from fastapi.testclient import TestClient

    from swarmguard.apps.serve import ServeSettings, create_app

    app = create_app(ServeSettings(close_windows=False, tokens_file=tokens_file, data_dir=tmp_path / "d"))
    client = TestClient(app, raise_server_exceptions=False)        # no lifespan: no node is built
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert decode_status(r.content, "protobuf").message == "the node is starting"
    app.state.failed = "OSError: disk gone"
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 503 and r.headers["content-type"] == "application/x-protobuf"
    assert "failed to start" in decode_status(r.content, "protobuf").message
    r = client.post("/v1/traces", content=b"{}", headers={"Content-Type": "application/json", **auth("t-ingest")})
    assert r.status_code == 503 and "failed to start" in decode_status(r.content, "json").message
    r = client.post("/v1/behaviors", content=b"{}\n", headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 503 and "failed to start" in r.json()["error"]      # the node's JSON elsewhere


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_another_method_on_v1_traces_is_405_with_an_otlp_status(served, method):
    """OTLP/HTTP: every 4xx/5xx body on the endpoint is a google.rpc.Status, in the request's
    encoding; the other methods are still the router's (the direct call is POST only)."""
    _, node, client = served
    r = client.request(method, "/v1/traces", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["content-type"] == "application/x-protobuf"
    if method != "HEAD":
        assert decode_status(r.content, "protobuf").message == "Method Not Allowed"
    r = client.request(method, "/v1/traces", headers={"Content-Type": "application/json", **auth("t-ingest")})
    assert r.status_code == 405 and r.headers["content-type"].startswith("application/json")
    if method != "HEAD":
        assert decode_status(r.content, "json").message == "Method Not Allowed"
    assert metric(client, "swarmguard_errors_total", code="http", status="405") == 2
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert client.get("/v1/nothing-here").json() == {"error": "Not Found"}      # the node's other paths


def test_the_direct_call_keeps_the_middleware_s_checks_and_counts(make_node):
    """What the middleware does around POST /v1/traces, now that the router is skipped: the
    header bound (431), the latency histogram and the refusal counters by reason; a query
    string or a percent-encoded spelling is the same path (the same checks), an observer's
    token is refused like a reader's."""
    _, node, client = make_node(max_header_bytes=4096)
    seconds = {"route": "/v1/traces"}
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-ingest"), "X-Pad": "p" * 5000})
    assert r.status_code == 431 and r.headers["content-type"] == "application/x-protobuf"
    assert "4096" in decode_status(r.content, "protobuf").message
    r = client.post("/v1/traces", content=_request(), headers={**PB, **auth("t-obs7")})
    assert r.status_code == 403 and decode_status(r.content, "protobuf").code == 7
    r = client.post("/v1/traces?x=1", content=_request(), headers=PB)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/%74races?x=1", content=_request(), headers={**PB, **auth("t-read")})
    assert r.status_code == 403
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    r = client.post("/v1/traces?x=1", content=_request(), headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200 and _ingest(node).pending_spans == 6
    assert metric(client, "swarmguard_errors_total", code="header_too_large", status="431") == 1
    assert metric(client, "swarmguard_errors_total", code="forbidden", status="403") == 2
    assert metric(client, "swarmguard_errors_total", code="unauthenticated", status="401") == 1
    assert metric(client, "swarmguard_request_seconds_count", **seconds) == 5
    assert metric(client, "swarmguard_queue_depth", queue="inflight") == 0


def test_a_span_body_that_trickles_past_the_timeout_is_an_otlp_408_and_frees_its_write_slot(make_node):
    """As on /v1/behaviors (README: "a slow client cannot hold a write slot"): the body must
    arrive within body_timeout_seconds, else 408 (a google.rpc.Status), nothing kept."""
    _, node, client = make_node(body_timeout_seconds=0.5, max_inflight=1)
    body, stop = _request(), threading.Event()

    def trickle():                      # a few bytes, then nothing for longer than the timeout
        yield body[:8]
        stop.wait(3)
        yield body[8:]

    r = client.post("/v1/traces", content=trickle(), headers={**PB, **auth("t-ingest")})
    stop.set()
    assert r.status_code == 408
    assert r.headers["content-type"] == "application/x-protobuf"
    status = decode_status(r.content, "protobuf")
    assert "0.5 s" in status.message and status.code == 4          # DEADLINE_EXCEEDED
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", code="body_timeout", status="408") == 1
    r = client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")})
    assert r.status_code == 200 and _ingest(node).pending_spans == 6        # the slot was given back


def test_a_content_length_of_non_ascii_digits_is_a_400_not_a_500(served):
    """str.isdigit() is true of "²" (a latin-1 header byte), which int() refuses: called as
    the ASGI server hands it over (h11 would refuse it first; another server may not)."""
    import asyncio

    _, node, client = served
    body, sent = _request(), []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/traces", "raw_path": b"/v1/traces", "root_path": "",
             "query_string": b"", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/x-protobuf"), (b"authorization", b"Bearer t-ingest"),
                         (b"content-length", b"\xb2")]}
    asyncio.run(client.app(scope, receive, send))
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [400]
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert decode_status(answer, "protobuf").message == "Content-Length is not a number"
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", code="internal", status="500") == 0


@pytest.mark.parametrize(("path", "content_type"), [("/v1/traces", b"application/x-protobuf"),
                                                    ("/v1/behaviors", b"application/x-ndjson")])
def test_a_client_that_leaves_mid_body_is_counted_as_such_not_as_an_internal_error(served, path, content_type):
    """The ASGI server's http.disconnect while the body is read: nothing kept, no 500 in
    /metrics (an alert on internal errors would fire on every impatient client), its own count."""
    import asyncio

    _, node, client = served
    parts, sent = [{"type": "http.request", "body": b"\x0a\x05", "more_body": True}, {"type": "http.disconnect"}], []

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", content_type), (b"authorization", b"Bearer t-ingest"),
                         (b"content-length", b"1000")]}
    asyncio.run(client.app(scope, receive, send))
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", code="internal", status="500") == 0
    assert metric(client, "swarmguard_errors_total", code="client_disconnected", status="499") == 1
    assert metric(client, "swarmguard_queue_depth", queue="inflight") == 0


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_an_export_whose_headers_are_over_the_limit_is_431_with_the_status_of_a_request_too_large(make_node, encoding):
    """A 431 (request head too large) is answered as a 413 (body too large) is: INVALID_ARGUMENT,
    a request the node will never take as sent (not UNKNOWN; not RESOURCE_EXHAUSTED, whose
    HTTP twin 429 tells an exporter to retry). In the request's encoding, one line, nothing kept."""
    from google.rpc import code_pb2

    from swarmguard.apps.otlp.decode import status_code_for_http

    _, node, client = make_node(max_header_bytes=4096)
    content_type = {"Content-Type": "application/json" if encoding == "json" else "application/x-protobuf"}
    body = (json.dumps({"resourceSpans": []}).encode() if encoding == "json" else _request())
    r = client.post("/v1/traces", content=body, headers={**content_type, **auth("t-ingest"), "X-Padding": "x" * 5000})
    assert r.status_code == 431 and r.headers["content-type"] == content_type["Content-Type"]
    st = decode_status(r.content, encoding)
    assert st.code == code_pb2.INVALID_ARGUMENT == status_code_for_http(413)
    assert "4096" in st.message and "\n" not in st.message
    assert _ingest(node).pending_spans == 0 and len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", code="header_too_large", status="431") == 1


def test_the_answer_to_a_client_that_left_is_the_status_cancelled():
    """google/rpc/code.proto maps HTTP 499 (Client Closed Request) to CANCELLED (1), not UNKNOWN:
    what a proxy or a log that reads the Status should see for the 499 counted above."""
    from google.rpc import code_pb2

    from swarmguard.apps.otlp.decode import encode_status, status_code_for_http

    assert code_pb2.CANCELLED == 1 and status_code_for_http(499) == 1
    assert decode_status(encode_status("json", 499, "gone"), "json").code == 1
