"""POST /v1/behaviors and /v1/evidence: formats, per-line refusals, limits, nothing changed on refusal."""

from __future__ import annotations

import gzip
import io
import json
import math

import numpy as np
import pytest

from .conftest import NDJSON, auth, close_window, lines, metric, post_behaviors, post_evidence


def _evidence(i, agent="a-1", **extra):
    return {"evidence_id": f"e-{i}", "agent_id": agent, "evidence_type": "peer_report", "log_odds": 1.5,
            "confidence": 0.5, "timestamp": 1.0, **extra}


def test_behaviors_are_counted_and_bad_lines_refused_alone(served):
    _, node, client = served
    body = [{"agent_id": "a-1", "features": [1.0, 2.0, 3.0], "timestamp": 5.0, "cohort": "eu"},
            {"agent_id": 7, "features": [1, 2, 3]},
            {"agent_id": "a-3", "features": [1.0, 2.0]},                       # wrong dimension
            {"agent_id": "a-4", "features": [1.0, "x", 3.0]},                  # not a number
            {"agent_id": "a-5", "features": [1.0, 2.0, 3.0], "color": "red"},  # unknown field
            {"features": [1.0, 2.0, 3.0]}]                                     # no agent id
    r = post_behaviors(client, body)
    assert r.status_code == 200
    out = r.json()
    assert (out["accepted"], out["rejected"]) == (2, 4)
    assert [e["line"] for e in out["errors"]] == [3, 4, 5, 6]
    assert "have 3" in out["errors"][0]["error"]
    assert node.dimension() == 3 and len(node.populations["behaviors"].window) == 2
    assert metric(client, "swarmguard_accepted_total", kind="behaviors") == 2
    assert metric(client, "swarmguard_refused_total", kind="behaviors") == 4


def test_jsonl_content_type_and_non_json_line(served):
    _, _, client = served
    body = b'{"agent_id": "a", "features": [1.5]}\nnot json\n'
    r = client.post("/v1/behaviors", content=body, headers={"Content-Type": "application/jsonl; charset=utf-8",
                                                             **auth("t-ingest")})
    assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["errors"][0]["line"] == 2


def test_a_body_with_no_line_accepted_is_400_and_changes_nothing(served):
    _, node, client = served
    r = post_behaviors(client, [{"agent_id": "a", "features": []}])
    assert r.status_code == 400 and set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    assert node.dimension() is None and len(node.log) == 0
    assert client.post("/v1/behaviors", content=b"\n\n", headers={**NDJSON, **auth("t-ingest")}).status_code == 400


def test_wrong_content_type_is_415(served):
    _, node, client = served
    r = client.post("/v1/behaviors", content=b'{"agent_id": "a", "features": [1]}',
                    headers={"Content-Type": "application/json", **auth("t-ingest")})
    assert r.status_code == 415 and "application/x-ndjson" in r.json()["error"]
    assert len(node.log) == 0
    assert metric(client, "swarmguard_errors_total", code="bad_content_type", status="415") == 1


def test_the_first_vector_fixes_the_dimension_and_features_option_sets_it(served, make_node, tmp_path):
    _, node, client = served
    assert post_behaviors(client, [{"agent_id": "a", "features": [1.0, 2.0]}]).status_code == 200
    r = post_behaviors(client, [{"agent_id": "b", "features": [1.0, 2.0, 3.0]}])
    assert r.status_code == 400 and "have 2" in r.json()["error"]
    _, fixed, c2 = make_node(data_dir=tmp_path / "d2", features=4)
    r = post_behaviors(c2, [{"agent_id": "a", "features": [1.0, 2.0]}])
    assert r.status_code == 400 and "have 4" in r.json()["error"]


def test_arrow_stream_with_feature_columns_and_with_a_list_column(served):
    pa = pytest.importorskip("pyarrow")

    _, node, client = served

    def stream(table):
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        return sink.getvalue()

    cols = pa.table({"agent_id": ["a", "b", "c"], "f0": [1.0, 2.0, None], "f1": [3, 4, 5],
                     "cohort": ["eu", None, "us"]})
    r = client.post("/v1/behaviors", content=stream(cols),
                    headers={"Content-Type": "application/vnd.apache.arrow.stream", **auth("t-ingest")})
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (2, 1)
    assert r.json()["errors"][0]["line"] == 3
    listed = pa.table({"agent_id": ["d", "e"], "features": [[1.0, 2.0], [1.0]]})
    r = client.post("/v1/behaviors", content=stream(listed),
                    headers={"Content-Type": "application/vnd.apache.arrow.stream", **auth("t-ingest")})
    assert (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
    ids, X, cohorts = node.populations["behaviors"].window.take()
    assert ids.tolist() == ["a", "b", "d"] and X.tolist() == [[1.0, 3.0], [2.0, 4.0], [1.0, 2.0]]
    assert cohorts == ["eu", None, None]
    r = client.post("/v1/behaviors", content=b"garbage",
                    headers={"Content-Type": "application/vnd.apache.arrow.stream", **auth("t-ingest")})
    assert r.status_code == 400 and "Arrow" in r.json()["error"]


def test_body_limits_content_length_chunked_and_gzip_bomb(make_node):
    _, node, client = make_node(max_body_bytes=1000)
    big = lines([{"agent_id": f"a-{i}", "features": [1.0, 2.0]} for i in range(100)])
    assert len(big) > 1000
    r = post_behaviors(client, [{"agent_id": f"a-{i}", "features": [1.0, 2.0]} for i in range(100)])
    assert r.status_code == 413 and "1000 bytes" in r.json()["error"]

    def chunks():                                     # no Content-Length: refused as it streams
        for _ in range(100):
            yield b" " * 100

    r = client.post("/v1/behaviors", content=chunks(), headers={**NDJSON, **auth("t-ingest")})
    assert r.status_code == 413
    bomb = gzip.compress(b"\n" * 500_000, compresslevel=9)
    assert len(bomb) < 1000
    r = client.post("/v1/behaviors", content=bomb, headers={**NDJSON, **auth("t-ingest"), "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    ok = gzip.compress(lines([{"agent_id": "a", "features": [1.0, 2.0]}]))
    r = client.post("/v1/behaviors", content=ok, headers={**NDJSON, **auth("t-ingest"), "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = client.post("/v1/behaviors", content=b"xx", headers={**NDJSON, **auth("t-ingest"), "Content-Encoding": "br"})
    assert r.status_code == 415
    assert len(node.log) == 1
    assert metric(client, "swarmguard_errors_total", code="too_large", status="413") == 3


def test_evidence_takes_the_tokens_source_and_refuses_another_alone(served):
    _, node, client = served
    r = post_evidence(client, [_evidence(1), _evidence(2, source_node="observer-9"), _evidence(3, source_node="observer-7"),
                               _evidence(4, confidence=2.0), _evidence(5, evidence_type="nonsense")])
    assert r.status_code == 200
    out = r.json()
    assert (out["accepted"], out["rejected"]) == (2, 3)
    assert [e["line"] for e in out["errors"]] == [2, 4, 5]
    assert "observer-9" in out["errors"][0]["error"]
    consensus = node.populations["behaviors"].detector.consensus
    assert consensus.holds_evidence("observer-7", "e-1") and consensus.holds_evidence("observer-7", "e-3")
    assert not consensus.holds_evidence("observer-9", "e-2")
    c = consensus.consensus("a-1")
    assert c["evidence_count"] == 2
    # the exact sum of confidence x log-odds, plus the prior
    prior = math.log(0.01 / 0.99)
    assert c["sum_log_odds"] == pytest.approx(math.fsum([prior, 0.75, 0.75]), abs=1e-12)
    # same id again with the same content: accepted (a retry); with other content: refused alone
    r = post_evidence(client, [_evidence(1), _evidence(3, log_odds=9.0), _evidence(6)])
    assert (r.json()["accepted"], r.json()["rejected"]) == (2, 1) and r.json()["errors"][0]["line"] == 2
    assert consensus.consensus("a-1")["evidence_count"] == 3
    assert metric(client, "swarmguard_refused_total", kind="evidence") == 4


def test_admin_posts_evidence_under_its_own_source(served):
    from .conftest import ADMIN_SECRET

    _, node, client = served
    r = post_evidence(client, [_evidence(1)], token=ADMIN_SECRET)
    assert r.json()["accepted"] == 1
    assert node.populations["behaviors"].detector.consensus.holds_evidence("admin-src", "e-1")


def test_an_agent_with_several_vectors_in_a_window_is_scored_on_its_last(served):
    _, node, client = served
    rng = np.random.default_rng(3)
    rows = [{"agent_id": f"a-{i}", "features": rng.normal(size=2).tolist()} for i in range(30)]
    post_behaviors(client, rows)
    post_behaviors(client, [{"agent_id": "a-0", "features": [5.0, -5.0]}])
    close_window(client)
    state = node.populations["behaviors"].agents["a-0"]
    assert state.features.tolist() == [5.0, -5.0]
    stats = node.populations["behaviors"].detector.get_global_statistics()
    assert stats["count"] == 30
    expected = [math.fsum([5.0] + [r["features"][0] for r in rows[1:]]) / 30,
                math.fsum([-5.0] + [r["features"][1] for r in rows[1:]]) / 30]
    assert np.asarray(stats["mean"]).tolist() == pytest.approx(expected, rel=1e-13)


def test_window_full_is_429_with_retry_after_and_nothing_changed(make_node):
    _, node, client = make_node(max_window_rows=5)
    assert post_behaviors(client, [{"agent_id": f"a-{i}", "features": [1.0]} for i in range(4)]).status_code == 200
    r = post_behaviors(client, [{"agent_id": f"b-{i}", "features": [1.0]} for i in range(2)])
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert len(node.populations["behaviors"].window) == 4 and len(node.log) == 1
    assert metric(client, "swarmguard_errors_total", code="overloaded", status="429") == 1


def test_error_bodies_are_one_line_json_for_unknown_routes_and_bad_parameters(served):
    _, _, client = served
    r = client.get("/v1/nowhere", headers=auth("t-read"))
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = client.get("/v1/agents?top=0", headers=auth("t-read"))
    assert r.status_code == 422 and "top" in r.json()["error"]
    r = client.put("/v1/behaviors", headers=auth("t-ingest"))
    assert r.status_code == 405 and set(r.json()) == {"error"}


def test_json_is_strict_about_numbers(served):
    _, _, client = served
    body = b'{"agent_id": "a", "features": [NaN, 1.0]}\n{"agent_id": "b", "features": [1e400, 1.0]}\n' \
           b'{"agent_id": "c", "features": [true, 1.0]}\n{"agent_id": "d", "features": [2, 1.0]}\n'
    r = client.post("/v1/behaviors", content=body, headers={**NDJSON, **auth("t-ingest")})
    assert r.json()["accepted"] == 1 and r.json()["rejected"] == 3, json.dumps(r.json())
    assert [e["line"] for e in r.json()["errors"]] == [1, 2, 3]


def test_writes_over_the_inflight_bound_are_503_with_retry_after(make_node):
    import threading

    _, node, client = make_node(max_inflight=1)
    release = threading.Event()
    started = threading.Event()

    def slow_body():                  # holds the one write slot until the test lets it go
        started.set()
        release.wait(10)
        yield lines([{"agent_id": "a", "features": [1.0]}])

    answers = {}
    worker = threading.Thread(target=lambda: answers.setdefault("slow", client.post(
        "/v1/behaviors", content=slow_body(), headers={**NDJSON, **auth("t-ingest")})))
    worker.start()
    assert started.wait(10)
    deadline = 0
    while deadline < 100:             # the slow request is inside the app once the slot is taken
        r = post_behaviors(client, [{"agent_id": "b", "features": [1.0]}])
        if r.status_code == 503:
            break
        deadline += 1
    release.set()
    worker.join(10)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "in flight" in r.json()["error"]
    assert answers["slow"].status_code == 200
    assert client.get("/v1/agents", headers=auth("t-read")).status_code == 200     # reads are not bounded


def test_lines_of_one_body_that_clash_are_refused_and_the_others_kept(served):
    _, node, client = served
    r = post_evidence(client, [_evidence(1), _evidence(2), _evidence(1, log_odds=-3.0), _evidence(3)])
    out = r.json()
    assert (out["accepted"], out["rejected"]) == (2, 2) and [e["line"] for e in out["errors"]] == [1, 3]
    consensus = node.populations["behaviors"].detector.consensus
    assert not consensus.holds_evidence("observer-7", "e-1")
    assert consensus.holds_evidence("observer-7", "e-2") and consensus.holds_evidence("observer-7", "e-3")


def test_an_evidence_body_with_no_good_line_is_400_and_logs_nothing(served):
    _, node, client = served
    r = post_evidence(client, [_evidence(1, source_node="observer-8"), {"evidence_id": "x"}])
    assert r.status_code == 400 and "observer-8" in r.json()["error"]
    assert len(node.log) == 0 and node.populations["behaviors"].detector.consensus.evidence_count == 0


def test_deflate_bodies_are_read_and_truncated_or_corrupt_ones_are_400(served):
    import zlib

    _, node, client = served
    body = lines([{"agent_id": "a", "features": [1.0, 2.0]}])
    headers = {**NDJSON, **auth("t-ingest")}
    r = client.post("/v1/behaviors", content=zlib.compress(body), headers={**headers, "Content-Encoding": "deflate"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    r = client.post("/v1/behaviors", content=gzip.compress(body)[:-12], headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    r = client.post("/v1/behaviors", content=b"\x1f\x8bnot gzip", headers={**headers, "Content-Encoding": "gzip"})
    assert r.status_code == 400 and "cannot be decoded" in r.json()["error"]
    assert len(node.log) == 1


def test_a_refused_evidence_line_is_found_without_a_check_per_line(served, monkeypatch):
    _, node, client = served
    assert post_evidence(client, [_evidence(0)]).json()["accepted"] == 1
    pops = list(node.populations.values())
    calls = []
    original = type(pops[0]).check_evidence

    def counting(self, columns):
        calls.append(len(columns[0]))
        return original(self, columns)

    monkeypatch.setattr(type(pops[0]), "check_evidence", counting)
    rows = [_evidence(i, agent=f"a-{i % 7}") for i in range(1, 1024)]
    rows.insert(600, _evidence(0, log_odds=-4.0))          # the stored id with other content
    r = post_evidence(client, rows)
    assert (r.json()["accepted"], r.json()["rejected"]) == (1023, 1) and r.json()["errors"][0]["line"] == 601
    assert len(calls) <= len(pops) * 2 * (2 * 10 + 2)        # one check per line was 1,024 per population
    assert node.populations["behaviors"].detector.consensus.evidence_count == 1024


def test_evidence_sent_again_is_acknowledged_once_and_a_partial_repeat_is_logged_for_its_new_lines(served):
    # an observer whose answer was lost sends the body again: every line is held with the same
    # content, so nothing is logged or numbered for the peers again; a body with one new line is
    # logged (the held lines change nothing in the consensus)
    from swarmguard.apps.serve.peers import replication_of

    _, node, client = served
    body = [_evidence(i, agent=f"a-{i}") for i in range(3)]
    assert post_evidence(client, body).json()["accepted"] == 3
    ledger = replication_of(node).replicas.ledger.export_state()
    for _ in range(2):
        r = post_evidence(client, body)
        assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (3, 0)
    assert len(node.log) == 1 and replication_of(node).replicas.ledger.export_state() == ledger
    assert metric(client, "swarmguard_accepted_total", kind="evidence_repeated") == 6
    assert metric(client, "swarmguard_accepted_total", kind="evidence") == 3
    assert post_evidence(client, [*body, _evidence(3)]).json()["accepted"] == 4
    assert len(node.log) == 2
    assert all(p.detector.consensus.evidence_count == 4 for p in node.populations.values())
