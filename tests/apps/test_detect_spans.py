"""``swarmguard detect --spans``: a file of OTLP spans (JSON lines or length-prefixed protobuf)
windowed by the spans' own timestamps, the node's feature extraction, scored per window."""

from __future__ import annotations

import csv
import gzip
import json
import random

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from swarmguard.apps.detect_spans import detect_spans  # noqa: E402
from swarmguard.apps.otlp.decode import encode_otlp_json  # noqa: E402
from swarmguard.apps.otlp.features import FEATURE_NAMES  # noqa: E402
from swarmguard.apps.otlp.fleet_model import make_fleet  # noqa: E402
from swarmguard.apps.otlp.span_file import read_span_file_by_time  # noqa: E402
from swarmguard.apps.otlp.synthetic import window_requests  # noqa: E402
from swarmguard.apps.otlp.window import WindowAggregator  # noqa: E402
from swarmguard.cli import app  # noqa: E402
from swarmguard.errors import InvalidInputError, MalformedInputError  # noqa: E402
from tests._exact import exact_loo_squared_distance  # noqa: E402

NS = 10**9
BASE = 1_700_000_000 * NS
WINDOW = 100.0


def _sentinel() -> bytes:
    """One span at BASE + 20 s: the file's earliest, so the windows start there."""
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="invoke_agent", start_time_unix_nano=BASE + 20 * NS,
                                                                end_time_unix_nano=BASE + 21 * NS)
    kv = span.attributes.add(key="gen_ai.agent.id")
    kv.value.string_value = "sentinel"
    kv = span.attributes.add(key="gen_ai.operation.name")
    kv.value.string_value = "invoke_agent"
    return req.SerializeToString()


@pytest.fixture(scope="module")
def fleet_windows():
    """Three windows of a 120-agent fleet (6 misbehaving); window k's spans start within
    [BASE + 100k + 34 s, BASE + 100k + 50 s], inside the k-th window of 100 s from BASE + 20 s."""
    profiles = make_fleet(120, 6, seed=4)
    rng = np.random.default_rng(9)
    windows = [window_requests(profiles, rng, now_ns=BASE + (100 * k + 50) * NS) for k in range(3)]
    windows[0] = [_sentinel(), *windows[0]]
    return profiles, windows


def _direct(windows):
    """The node's extraction, one window at a time (what the file's windows must equal)."""
    agg = WindowAggregator(1e300, clock=lambda: 0.0)
    out = []
    for bodies in windows:
        for b in bodies:
            agg.add(ExportTraceServiceRequest.FromString(b), now=0.0)
        out.append(agg.close(now=0.0))
    return out


def _json_file(path, windows, shuffle=True):
    lines = [encode_otlp_json(ExportTraceServiceRequest.FromString(b)) for bodies in windows for b in bodies]
    if shuffle:                               # a file's exports need not be in time order
        random.Random(3).shuffle(lines)
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _proto_file(path, windows):
    path.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for bodies in windows for b in bodies))
    return path


def test_spans_are_windowed_by_their_own_timestamps_into_the_nodes_vectors(tmp_path, fleet_windows):
    _, windows = fleet_windows
    want = _direct(windows)
    for path in (_json_file(tmp_path / "spans.jsonl", windows, shuffle=False),
                 _json_file(tmp_path / "shuffled.jsonl.gz", windows), _proto_file(tmp_path / "spans.pb", windows)):
        got = read_span_file_by_time(path, WINDOW)
        assert got.encoding == ("protobuf" if path.suffix == ".pb" else "json")
        assert got.t0 == (BASE + 20 * NS) / NS and got.untimed == 0
        assert [w.index for w in got.windows] == [0, 1, 2]
        assert [w.start for w in got.windows] == [got.t0 + k * WINDOW for k in range(3)]
        if path.name == "shuffled.jsonl.gz":      # another order of lines: the same agents and vectors
            for g, w in zip(got.windows, want, strict=True):
                order_g, order_w = np.argsort(g.agent_ids), np.argsort(w.agent_ids)
                assert g.agent_ids[order_g].tolist() == w.agent_ids[order_w].tolist()
                np.testing.assert_allclose(g.features[order_g], w.features[order_w], rtol=1e-12, atol=1e-12)
            continue
        for g, w in zip(got.windows, want, strict=True):
            assert g.agent_ids.tolist() == w.agent_ids.tolist() and g.spans == w.spans
            np.testing.assert_array_equal(g.features, w.features)
            assert g.cohorts == w.cohorts


def test_each_window_is_scored_leave_one_out_and_the_misbehaving_agents_lead(tmp_path, fleet_windows):
    profiles, windows = fleet_windows
    path = _json_file(tmp_path / "spans.jsonl", windows)
    res = detect_spans(path, window=WINDOW, warm_up=20, shrinkage=0.1, explain=True, top=6)
    want = _direct(windows)
    assert res.windows == 3 and res.agent_ids.size == sum(w.agent_ids.size for w in want)
    first = res.window == 0
    X = want[0].features
    ids0 = want[0].agent_ids.tolist()
    for a in ("sentinel", ids0[5], ids0[40]):     # window 0: the tree holds exactly its agents
        i = ids0.index(a)
        row = np.flatnonzero(first & (res.agent_ids == a))[0]
        assert res.score[row] == pytest.approx(exact_loo_squared_distance(X, i, 0.1), rel=1e-9)
        assert res.p_value[row] == pytest.approx(_chi2_sf(res.score[row], X.shape[1]), rel=1e-9)
    bad = {p.agent_id for p in profiles if p.misbehaviour is not None}
    last = res.window == 2
    order = np.argsort(-res.score[last])
    ranked = res.agent_ids[last][order].tolist()
    # 120 agents and 20 features is a small population: the 6 lead, give or take one honest agent
    assert bad <= set(ranked[:8]) and len(bad & set(ranked[:6])) >= 5, [ranked.index(a) for a in bad]
    assert len(bad & set(res.agent_ids[last & res.is_anomaly].tolist())) >= 5
    assert res.why_share.shape == (res.agent_ids.size, 3)
    assert ((res.why_share >= 0) & (res.why_share <= 1)).all()
    assert set(res.why_feature.ravel().tolist()) <= set(FEATURE_NAMES)


def _chi2_sf(x, d):
    from scipy.stats import chi2

    return float(chi2.sf(x, d))


def test_the_command_writes_one_row_per_agent_and_window(tmp_path, fleet_windows):
    _, windows = fleet_windows
    src = _proto_file(tmp_path / "spans.pb", windows)
    out = tmp_path / "scores.csv"
    r = CliRunner().invoke(app, ["detect", str(src), "--spans", "--window", "100", "--warm-up", "20", "-o", str(out),
                                 "--explain", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["encoding"] == "protobuf" and summary["windows"] == 3 and summary["features"] == list(FEATURE_NAMES)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["agent_id", "window", "window_start", "cohort", "score", "p_value", "is_anomaly",
                             "feature_1", "share_1", "feature_2", "share_2", "feature_3", "share_3"]
    assert len(rows) == summary["agent_windows"] and {r["window"] for r in rows} == {"0", "1", "2"}
    assert all(r["is_anomaly"] in ("true", "false") and "/" in r["cohort"] for r in rows)
    assert all(0.0 <= float(r["share_1"]) <= 1.0 for r in rows)


def test_malformed_lines_and_messages_are_named_and_exit_2(tmp_path, fleet_windows):
    _, windows = fleet_windows
    good = encode_otlp_json(ExportTraceServiceRequest.FromString(windows[0][1]))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good + b"\n\n" + b'{"resourceSpans": "no"}\n')
    with pytest.raises(MalformedInputError) as err:
        detect_spans(bad)
    assert err.value.line == 3 and err.value.unit == "line"
    r = CliRunner().invoke(app, ["detect", str(bad), "--spans"])
    assert r.exit_code == 2 and "line 3" in r.stderr
    body = windows[0][1]
    truncated = tmp_path / "cut.pb"
    truncated.write_bytes(len(body).to_bytes(4, "big") + body + len(body).to_bytes(4, "big") + body[:10])
    with pytest.raises(MalformedInputError, match="message 2.*truncated") as err:
        read_span_file_by_time(truncated, 60)
    assert err.value.unit == "message"
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\x00\x00\x00\x05hello")
    with pytest.raises(MalformedInputError, match="message 1"):
        read_span_file_by_time(garbage, 60)
    r = CliRunner().invoke(app, ["detect", str(bad), "--spans", "--cohort-column", "region"])
    assert r.exit_code == 2 and "--cohort-column" in r.stderr
    r = CliRunner().invoke(app, ["detect", str(bad), "--spans", "--label-column", "truth"])
    assert r.exit_code == 2 and "--label-column" in r.stderr
    r = CliRunner().invoke(app, ["detect", str(bad), "--spans", "--window", "-5"])
    assert r.exit_code == 2 and "window" in r.stderr


def test_a_damaged_gzip_file_or_an_undecodable_message_is_named_and_nothing_is_written(tmp_path, fleet_windows):
    _, windows = fleet_windows
    good = encode_otlp_json(ExportTraceServiceRequest.FromString(windows[0][1]))
    not_gzip = tmp_path / "spans.jsonl.gz"
    not_gzip.write_bytes(good + b"\n")                       # named .gz, not compressed
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(good + b"\n" + good + b"\n")[:-30])   # ends inside the stream
    out = tmp_path / "scores.csv"
    for path in (not_gzip, cut):
        with pytest.raises(MalformedInputError, match="gzip") as err:
            read_span_file_by_time(path, 60)
        assert err.value.line >= 1 and err.value.unit == "line"
        r = CliRunner().invoke(app, ["detect", str(path), "--spans", "-o", str(out)])
        assert r.exit_code == 2 and "gzip" in r.stderr and not out.exists()
        assert list(tmp_path.glob(".scores.csv.tmp-*")) == []
    # a message that does not decode: its number and its byte offset
    body = windows[0][1]
    pb = tmp_path / "spans.pb"
    pb.write_bytes(len(body).to_bytes(4, "big") + body + (5).to_bytes(4, "big") + b"\xff\xff\xff\xff\xff")
    with pytest.raises(MalformedInputError, match=f"message 2: the message at byte {4 + len(body)}") as err:
        read_span_file_by_time(pb, 60)
    assert err.value.line == 2 and err.value.unit == "message"


def test_a_window_too_short_for_the_files_time_range_is_refused_not_wrapped(tmp_path, fleet_windows):
    # two spans 1.7e9 s apart in windows of 1e-12 s: 1.7e21 windows, past int64
    def line(agent, t_ns):
        return ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"invoke_agent","startTimeUnixNano":"'
                + str(t_ns) + '","attributes":[{"key":"gen_ai.agent.id","value":{"stringValue":"' + agent
                + '"}}]}]}]}]}')
    path = tmp_path / "far.jsonl"
    path.write_text(line("a-1", 10**9) + "\n" + line("a-2", BASE) + "\n")
    with pytest.raises(InvalidInputError, match="too short"):
        read_span_file_by_time(path, 1e-12)
    got = read_span_file_by_time(path, 1e6)              # a usable window: both spans, none untimed
    assert got.untimed == 0 and sum(w.spans for w in got.windows) == 2
