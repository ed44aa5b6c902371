"""A live node and the node restarted from its data folder hold bit-identical span state.

Live requests are kept from their own decoded columns; a restart keeps them from the log
record's float matrix (``traces.SpanIngest._apply``). Both must give the same window rows,
the same floats (dtype and bytes), the same repeat filter, and the same round.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402
from swarmguard.apps.otlp.traces import SpanIngest  # noqa: E402

from .conftest import ManualClock, auth, close_window  # noqa: E402

PB = {"Content-Type": "application/x-protobuf"}
_FIELDS = ("agent", "cohort", "operation", "tool", "duration_s", "input_tokens", "output_tokens", "error",
           "content_filter", "length")


def _ingest(node) -> SpanIngest:
    return next(e for e in node.extensions if isinstance(e, SpanIngest))


def _set(attrs, key, value):
    _set_any(attrs.add(key=key).value, value)


def _set_any(v, item):
    """Write ``item`` into the OTLP ``AnyValue`` ``v`` (bool before int: a bool is an int)."""
    if isinstance(item, str):
        v.string_value = item
    elif isinstance(item, bool):
        v.bool_value = item
    elif isinstance(item, int):
        v.int_value = item
    elif isinstance(item, float):
        v.double_value = item
    elif isinstance(item, list):
        for x in item:
            _set_any(v.array_value.values.add(), x)
    elif isinstance(item, dict):
        for k, x in item.items():
            _set_any(v.kvlist_value.values.add(key=k).value, x)


_TOKENS = [None, 0, 1, 812, 2 ** 53, 2 ** 53 - 1, 2 ** 53 + 1, -1, 2 ** 62, 0.0, -0.0, 0.5, 1e15 + 0.5,
           float("nan"), float("inf"), "12.5", "1e3", "nope", "nan", True, 9007199254740993.0]
_REASONS = [None, ["stop"], [], ["length"], ["content_filter", "stop"], ["stop", "stop"], [1], ["stop", 2],
            [["stop"]], {"a": "length"}, "length", ["Stop"], ["length", "content_filter"]]
_AGENTS = ["a-1", "a-2", "é-3", "", "x" * 1001, "bad\nagent", "a-1"]


def _crafted(rng: np.random.Generator, n_spans: int, id_base: int) -> ExportTraceServiceRequest:
    """Spans with every edge the column reader and the record meet (see _TOKENS, _REASONS)."""
    req = ExportTraceServiceRequest()
    for r in range(2):
        rs = req.resource_spans.add()
        _set(rs.resource.attributes, "service.name", f"svc-{r}")
        if r:
            _set(rs.resource.attributes, "service.instance.id", "inst-1")
        spans = rs.scope_spans.add().spans
        for _span in range(n_spans):
            start = int(rng.integers(0, 3)) * 10 ** 18 + int(rng.integers(0, 10 ** 12))
            end = start + int(rng.integers(-10 ** 9, 10 ** 11))
            s = spans.add(name="s", start_time_unix_nano=start if rng.random() > 0.1 else 0,
                          end_time_unix_nano=max(end, 0))
            kind = rng.integers(0, 4)
            if kind == 0:
                s.span_id = int(id_base + rng.integers(0, 40)).to_bytes(8, "big")   # repeats
            elif kind == 1:
                s.span_id = bytes(rng.integers(0, 256, 8).astype(np.uint8))
            elif kind == 2:
                s.span_id = b"\x01\x02\x03"                                         # no id
            if rng.random() < 0.9:
                _set(s.attributes, "gen_ai.agent.id", _AGENTS[int(rng.integers(0, len(_AGENTS)))])
            _set(s.attributes, "gen_ai.operation.name",
                 ["invoke_agent", "chat", "execute_tool", "other", "generate_content"][int(rng.integers(0, 5))])
            for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
                t = _TOKENS[int(rng.integers(0, len(_TOKENS)))]
                if t is not None:
                    _set(s.attributes, key, t)
            reasons = _REASONS[int(rng.integers(0, len(_REASONS)))]
            if reasons is not None:
                _set(s.attributes, "gen_ai.response.finish_reasons", reasons)
            if rng.random() < 0.5:
                _set(s.attributes, "gen_ai.tool.name", ["t1", "t2", "", "y" * 1500][int(rng.integers(0, 4))])
            if rng.random() < 0.2:
                _set(s.attributes, "error.type", "boom")
            if rng.random() < 0.1:
                s.status.code = 2
            if rng.random() < 0.3:
                _set(s.attributes, "gen_ai.request.model", f"m-{int(rng.integers(0, 3))}")
    return req


def _state(ingest: SpanIngest) -> dict:
    """Everything the open window holds, as exact bytes."""
    agg = ingest.aggregator
    chunks = []
    for c in agg._chunks:
        chunks.append(tuple((name, getattr(c, name).dtype.str, getattr(c, name).tobytes()) for name in _FIELDS)
                      + (list(c.agents), list(c.cohorts), list(c.tools)))
    ids = [(list(names), codes.dtype.str, codes.tobytes(), sid.dtype.str, sid.tobytes())
           for names, codes, sid in ingest._ids]
    # the window before's pairs: a snapshot keeps them as one flat table (export_state), a log
    # replay per record, so what must match is the (agent id, span id) pairs themselves
    ids_before = sorted((names[a], int(i)) for names, codes, sid in ingest._ids_before
                        for a, i in zip(codes.tolist(), sid.tolist(), strict=True) if i)
    return {"chunks": chunks, "pending": agg.pending_spans, "tables": [list(t.names) for t in agg.tables],
            "seen": set(ingest._seen), "seen_before": set(ingest._seen_before), "ids": ids,
            "ids_before": ids_before, "index": agg._index, "known_pairs": agg._known_pairs.tobytes(),
            "earlier": agg._earlier.tobytes(), "agent_cohort": agg._agent_cohort.tobytes()}


def _bodies(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    fleet = window_requests(make_fleet(12, 2, seed=seed), rng, batch_spans=64)
    crafted = [_crafted(rng, 30, id_base=1000 * k).SerializeToString() for k in range(4)]
    bodies = fleet[:3] + crafted + fleet[3:6] + [crafted[0], crafted[2]]     # retried batches too
    return bodies


@pytest.mark.parametrize(("seed", "snapshot_every"), [(1, 0), (2, 0), (3, 1)], ids=["log", "log-2", "snapshot"])
def test_a_node_restarted_from_its_log_holds_exactly_what_the_live_node_held(make_node, tmp_path, seed,
                                                                             snapshot_every):
    # snapshot_every=1: the restart reads the snapshot taken at the first close, then the log's tail
    clock = ManualClock()
    _, live, client = make_node(clock=clock, data_dir=tmp_path / "live", snapshot_every=snapshot_every)
    bodies = _bodies(seed)
    half = len(bodies) // 2
    for round_ in range(2):                   # a closed window, then an open one
        for body in bodies[:half] if round_ == 0 else bodies[half:]:
            r = client.post("/v1/traces", content=body, headers={**PB, **auth("t-ingest")})
            assert r.status_code == 200, r.text
        if round_ == 0:
            clock.t += 1
            close_window(client)
    before = _state(_ingest(live))
    assert before["pending"] > 0 and any(before["seen"]) and _ingest(live).duplicates > 0
    shutil.copytree(tmp_path / "live", tmp_path / "copy")
    _, again, client2 = make_node(clock=clock, data_dir=tmp_path / "copy", snapshot_every=snapshot_every)
    after = _state(_ingest(again))
    assert after.keys() == before.keys()
    for key in before:
        assert after[key] == before[key], key
    # and the round: the same vectors, the same scores
    clock.t += 1
    a, b = close_window(client), close_window(client2)
    assert a == b and a
    top_a = client.get("/v1/agents?top=100", headers=auth("t-read")).json()["agents"]
    top_b = client2.get("/v1/agents?top=100", headers=auth("t-read")).json()["agents"]
    assert top_a == top_b and top_a
    for agent in top_a[:5]:
        ca = client.get(f"/v1/agents/{agent['agent_id']}", headers=auth("t-read")).json()
        cb = client2.get(f"/v1/agents/{agent['agent_id']}", headers=auth("t-read")).json()
        assert ca == cb
