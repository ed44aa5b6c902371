"""The fleet emulator on the real OpenTelemetry SDK exporter, against a loopback OTLP receiver."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")

from swarmguard.apps.otlp.decode import decode_export_request, encode_export_response  # noqa: E402
from swarmguard.apps.otlp.features import FEATURE_NAMES  # noqa: E402
from swarmguard.apps.otlp.fleet import FleetEmitter, observer_evidence  # noqa: E402
from swarmguard.apps.otlp.fleet_model import MISBEHAVIOURS, make_fleet, plan_window  # noqa: E402
from swarmguard.apps.otlp.window import WindowAggregator  # noqa: E402


class _Receiver:
    """A tiny OTLP/HTTP receiver on 127.0.0.1: decodes every request with our decoder."""

    def __init__(self, token: str | None = None):
        self.aggregator = WindowAggregator(3600.0)
        self.requests = 0
        self.spans = 0
        self.content_types: set[str] = set()
        self.errors: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    assert self.path == "/v1/traces", self.path
                    assert token is None or self.headers.get("Authorization") == f"Bearer {token}"
                    decoded = decode_export_request(body, self.headers.get("Content-Type"),
                                                    self.headers.get("Content-Encoding"))
                    result = receiver.aggregator.add(decoded.request)
                    receiver.requests += 1
                    receiver.spans += result.accepted
                    receiver.content_types.add(self.headers.get("Content-Type"))
                    answer = encode_export_response(decoded.encoding, result.rejected)
                    self.send_response(200)
                except Exception as exc:        # noqa: BLE001 - reported by the test
                    receiver.errors.append(repr(exc))
                    answer = b""
                    self.send_response(400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_the_sdk_exporter_s_requests_decode_and_every_span_arrives():
    profiles = make_fleet(60, 4, seed=3)
    with _Receiver(token="s3cret-ingest") as receiver:
        emitter = FleetEmitter(receiver.url, profiles, token="s3cret-ingest")
        try:
            sent = emitter.emit_window(np.random.default_rng(0))
            assert emitter.flush()
        finally:
            emitter.shutdown()
        window = receiver.aggregator.close()
    assert receiver.errors == []
    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.spans == sent == window.spans and sent > 60 * 5
    assert receiver.requests >= sent / 512                     # batches of at most 512 spans
    assert sorted(window.agent_ids.tolist()) == sorted(p.agent_id for p in profiles)
    by_id = {p.agent_id: p for p in profiles}
    for agent, cohort in zip(window.agent_ids.tolist(), window.cohorts, strict=True):
        p = by_id[agent]
        assert cohort == (f"{p.kind}-agents", p.environment, p.region, p.kind, p.version, p.model)
    row = dict(zip(FEATURE_NAMES, window.features[0], strict=True))
    assert row["invocations"] >= 1 and row["input_tokens_mean"] > 0 and row["log_invocation_latency_p50"] > 0


def _windows_of(profiles, windows: int, seed: int):
    """The fleet's windows as protobuf batches of 512 spans (no SDK, no network) -> the aggregator."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from swarmguard.apps.otlp.synthetic import window_requests

    aggregator = WindowAggregator(3600.0)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(windows):
        bodies = window_requests(profiles, rng)
        assert all(len(ExportTraceServiceRequest.FromString(b).resource_spans[0].scope_spans[0].spans) <= 512
                   for b in bodies)
        for body in bodies:
            aggregator.add(ExportTraceServiceRequest.FromString(body))
        out.append(aggregator.close())
    return out


@pytest.mark.slow
def test_misbehaving_agents_are_the_top_k_of_their_population_by_the_second_window():
    from swarmguard import BehavioralDistributedProtocol, HierarchicalStatisticalTree

    k = 20                                     # 0.5% of the fleet, 5 of each misbehaviour
    profiles = make_fleet(4000, k, seed=0)
    bad = {p.agent_id for p in profiles if p.misbehaviour}
    assert {p.misbehaviour for p in profiles if p.misbehaviour} == set(MISBEHAVIOURS)
    second = _windows_of(profiles, 2, seed=100)[1]
    assert second.agent_ids.size == 4000
    tree = HierarchicalStatisticalTree(feature_dimensions=len(FEATURE_NAMES))
    protocol = BehavioralDistributedProtocol(tree)
    tree.update_many(second.agent_ids, second.features)
    scores = protocol.score_many(fdr=None)
    order = np.argsort(-scores["mahalanobis_squared"])
    top = set(np.asarray(scores["agent_ids"])[order[:k]].tolist())
    precision = len(top & bad) / k            # = recall: K flagged, K misbehaving
    assert precision >= 0.95


def test_observers_report_misbehaving_agents_more_often():
    profiles = make_fleet(2000, 100, seed=1)
    lines = observer_evidence(profiles, "observer-1", 0, np.random.default_rng(0))
    bad = {p.agent_id for p in profiles if p.misbehaviour}
    positive = [e for e in lines if e["log_odds"] > 0]
    assert {"evidence_id", "agent_id", "evidence_type", "log_odds", "confidence", "timestamp"} == set(lines[0])
    rate_bad = sum(e["agent_id"] in bad for e in positive) / len(bad)
    rate_honest = sum(e["agent_id"] not in bad for e in positive) / (len(profiles) - len(bad))
    assert rate_bad > 10 * rate_honest
    assert len({e["evidence_id"] for e in lines}) == len(lines)


def test_plans_are_shaped_like_genai_spans():
    (p,) = make_fleet(1, 0, seed=0)
    for invocation in plan_window(p, np.random.default_rng(0)):
        root, *children = invocation
        assert root.operation == "invoke_agent" and root.parent is None
        assert {c.operation for c in children} <= {"chat", "execute_tool"} and all(c.parent == 0 for c in children)
        assert all(c.start_s + c.duration_s <= root.duration_s for c in children)
