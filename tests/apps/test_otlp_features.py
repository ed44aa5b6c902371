"""GenAI spans to behaviour vectors: the columns, the features against a per-agent reference, windows."""

from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard.apps.otlp.features import (  # noqa: E402
    FEATURE_NAMES,
    FEATURES,
    behaviour_matrix,
    grouped_percentile,
    grouped_percentiles,
)
from swarmguard.apps.otlp.spans import (  # noqa: E402
    OP_INVOKE,
    OP_MODEL,
    OP_OTHER,
    OP_TOOL,
    SpanColumns,
    span_columns,
)
from swarmguard.apps.otlp.window import WindowAggregator  # noqa: E402

DOC = Path(__file__).resolve().parents[2] / "docs" / "otlp-features.md"


def test_the_documented_table_is_the_code_s_feature_list():
    rows = [line for line in DOC.read_text(encoding="utf-8").splitlines() if re.match(r"\| \d+ \| `", line)]
    table = [tuple(cell.strip() for cell in row.strip("|").split("|")) for row in rows]
    assert [(int(r[0]), r[1].strip("`"), r[2], r[3], r[4]) for r in table] == [
        (i, f.name, f.definition, f.unit, f.sources) for i, f in enumerate(FEATURES)]
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)


def _add(attrs, key, value):
    kv = attrs.add(key=key)
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, list):
        for v in value:
            kv.value.array_value.values.add().string_value = v
    else:
        kv.value.string_value = value


def test_span_columns_read_the_genai_attributes():
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in [("service.name", "support"), ("deployment.environment.name", "prod"), ("cloud.region", "eu"),
                 ("service.instance.id", "pod-7"), ("service.version", "1.2")]:
        _add(rs.resource.attributes, k, v)
    spans = rs.scope_spans.add().spans
    s = spans.add(start_time_unix_nano=10**18, end_time_unix_nano=10**18 + 3 * 10**9)
    for k, v in [("gen_ai.operation.name", "chat"), ("gen_ai.usage.input_tokens", 7.0),
                 ("gen_ai.usage.output_tokens", "12"), ("gen_ai.response.finish_reasons", ["length", "content_filter"]),
                 ("gen_ai.request.model", "gpt-4o"), ("gen_ai.agent.name", "helper")]:
        _add(s.attributes, k, v)
    s = spans.add(start_time_unix_nano=5, end_time_unix_nano=4)      # ends before it starts: 0 s
    _add(s.attributes, "gen_ai.operation.name", "execute_tool")
    _add(s.attributes, "gen_ai.tool.name", "search")
    _add(s.attributes, "gen_ai.agent.id", "agent-9")                 # the span's own id wins
    s.status.code = 2                                                # ERROR
    s = spans.add()
    _add(s.attributes, "gen_ai.operation.name", "embeddings")
    _add(s.attributes, "error.type", "timeout")
    _add(s.attributes, "gen_ai.usage.input_tokens", "not a number")
    orphan = req.resource_spans.add().scope_spans.add().spans
    orphan.add(name="no agent anywhere")
    orphan.add(name="nor here")
    cols = span_columns(req)
    assert cols.rejected == 2 and len(cols) == 3
    assert [cols.agents[a] for a in cols.agent] == ["pod-7", "agent-9", "pod-7"]
    assert cols.operation.tolist() == [OP_MODEL, OP_TOOL, OP_OTHER]
    assert cols.duration_s.tolist() == [3.0, 0.0, 0.0]
    assert cols.input_tokens[0] == 7.0 and cols.output_tokens[0] == 12.0 and np.isnan(cols.input_tokens[2])
    assert cols.content_filter.tolist() == [True, False, False] and cols.length.tolist() == [True, False, False]
    assert cols.error.tolist() == [False, True, True]
    assert cols.tools[cols.tool[1]] == "search" and cols.tool[0] == -1
    assert cols.cohorts[cols.cohort[0]] == ("support", "prod", "eu", "helper", "1.2", "gpt-4o")
    assert cols.cohorts[cols.cohort[1]] == ("support", "prod", "eu", "unknown", "1.2", "unknown")


@pytest.mark.parametrize("reasons", [
    ["stop"], ["stop", "length"], ["content_filter", "stop"], ["stop", "stop"], ["stop "], ["length"], [],
    ["content_filter"], ["Stop"]])
def test_finish_reasons_set_the_flags_whatever_the_array(reasons):
    # ["stop"] alone is recognised by one message comparison (spans.py): any other array is read
    req = ExportTraceServiceRequest()
    s = req.resource_spans.add().scope_spans.add().spans.add()
    _add(s.attributes, "gen_ai.agent.id", "a-1")
    _add(s.attributes, "gen_ai.response.finish_reasons", reasons)
    cols = span_columns(req)
    assert cols.content_filter.tolist() == ["content_filter" in reasons]
    assert cols.length.tolist() == ["length" in reasons]


def _random_columns(rng, n_spans=3000, n_agents=40, n_tools=6) -> SpanColumns:
    op = rng.choice([OP_INVOKE, OP_MODEL, OP_TOOL, OP_OTHER], size=n_spans, p=[0.15, 0.4, 0.4, 0.05]).astype(np.int8)
    tool = np.where(op == OP_TOOL, rng.integers(-1, n_tools, size=n_spans), -1)
    tin = np.where(rng.random(n_spans) < 0.8, rng.integers(0, 5000, size=n_spans).astype(float), np.nan)
    tout = np.where(rng.random(n_spans) < 0.8, rng.integers(0, 900, size=n_spans).astype(float), np.nan)
    agent = rng.integers(0, n_agents, size=n_spans)
    agent[agent == 3] = 4          # agent 3 has no span at all
    return SpanColumns(agent=agent, cohort=np.zeros(n_spans, np.int64), operation=op, tool=tool,
                       duration_s=rng.exponential(2.0, size=n_spans), input_tokens=tin, output_tokens=tout,
                       error=rng.random(n_spans) < 0.1, content_filter=rng.random(n_spans) < 0.05,
                       length=rng.random(n_spans) < 0.05, agents=[f"a{i}" for i in range(n_agents)],
                       tools=[f"t{i}" for i in range(n_tools)])


def _reference_row(c: SpanColumns, a: int, known: set, earlier: set, rare_tools: set,
                   pooled: list[Fraction]) -> list[float]:
    """One agent's vector the slow way: Python loops, math.fsum, numpy.percentile per agent."""
    rows = [i for i in range(len(c)) if c.agent[i] == a]
    ops = [int(c.operation[i]) for i in rows]
    inv = ops.count(OP_INVOKE)
    per = max(inv, 1)
    model = [i for i in rows if c.operation[i] == OP_MODEL]
    tools = [i for i in rows if c.operation[i] == OP_TOOL]
    named = [int(c.tool[i]) for i in tools if c.tool[i] >= 0]
    counts = Counter(named)
    entropy = -math.fsum(k / len(named) * math.log2(k / len(named)) for k in counts.values()) if named else 0.0
    novel = sum(1 for t in named if a in earlier and (a, t) not in known)
    rare = sum(1 for t in named if t in rare_tools)

    def mean(v):
        return math.fsum(v) / len(v) if v else 0.0

    def pct(v, q):
        return float(np.percentile(v, q)) if v else 0.0

    tin = [c.input_tokens[i] for i in model if not np.isnan(c.input_tokens[i])]
    tout = [c.output_tokens[i] for i in model if not np.isnan(c.output_tokens[i])]
    inv_d = [c.duration_s[i] for i in rows if c.operation[i] == OP_INVOKE]
    tool_d = [c.duration_s[i] for i in tools]
    return [inv, len(model) / per, len(tools) / per, len(counts), max(entropy, 0.0),
            novel / len(named) if named else 0.0, rare / len(named) if named else 0.0,
            mean(tin), pct(tin, 95), mean(tout), pct(tout, 95),
            math.log((1 + math.fsum(tout)) / (1 + math.fsum(tin))),
            *[math.log1p(v) for v in (pct(inv_d, 50), pct(inv_d, 95), pct(tool_d, 50), pct(tool_d, 95))],
            *[_surprise(k_, n_, pooled[j]) for j, (k_, n_) in enumerate([
                (sum(bool(c.error[i]) for i in rows), len(rows)),
                (sum(bool(c.error[i]) for i in tools), len(tools)),
                (sum(bool(c.content_filter[i]) for i in model), len(model)),
                (sum(bool(c.length[i]) for i in model), len(model))])]]


def _pooled_rates(c: SpanColumns) -> list[Fraction]:
    """The window's pooled rates of the four rare events, exactly."""
    op = c.operation
    pairs = [(c.error, np.ones(len(c), bool)), (c.error, op == OP_TOOL),
             (c.content_filter, op == OP_MODEL), (c.length, op == OP_MODEL)]
    return [Fraction(int((event & trials).sum()), int(trials.sum())) for event, trials in pairs]


def _surprise(k: int, n: int, p: Fraction) -> float:
    """-ln P(X >= k), X ~ Binomial(n, p), summed exactly in fractions."""
    if k == 0 or n == 0 or p in (0, 1):
        return 0.0
    tail = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
    return -math.log(tail)


def test_a_span_without_a_start_time_lasts_zero_seconds_not_since_the_epoch():
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    end = 1_700_000_000 * 10**9
    for start in (0, end - 2 * 10**9):
        s = spans.add(start_time_unix_nano=start, end_time_unix_nano=end)
        _add(s.attributes, "gen_ai.agent.id", "a")
    assert span_columns(req).duration_s.tolist() == [0.0, 2.0]


@pytest.mark.parametrize("seed", [0, 1])
def test_behaviour_matrix_matches_a_per_agent_reference(seed):
    rng = np.random.default_rng(seed)
    c = _random_columns(rng)
    known_pairs_py = {(a, t) for a in range(0, 40, 2) for t in range(0, 6, 2)}
    earlier_py = set(range(0, 30))
    from swarmguard.apps.otlp.features import RARE_TOOL_AGENT_SHARE, pair_keys
    known = np.sort(pair_keys(np.array([p[0] for p in known_pairs_py]), np.array([p[1] for p in known_pairs_py])))
    earlier = np.zeros(40, bool)
    earlier[list(earlier_py)] = True
    codes, X = behaviour_matrix(c, known_pairs=known, earlier_agents=earlier)
    active = sorted(set(c.agent.tolist()))
    assert codes.tolist() == active and 3 not in active
    users = Counter(t for (a, t) in {(int(c.agent[i]), int(c.tool[i])) for i in range(len(c))
                                     if c.operation[i] == OP_TOOL and c.tool[i] >= 0})
    rare_tools = {t for t, k in users.items() if k < RARE_TOOL_AGENT_SHARE * len(active)}
    pooled = _pooled_rates(c)
    expected = np.array([_reference_row(c, a, known_pairs_py, earlier_py, rare_tools, pooled) for a in active])
    np.testing.assert_allclose(X[:, :-4], expected[:, :-4], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(X[:, -4:], expected[:, -4:], rtol=1e-9, atol=1e-12)   # scipy's binomial tail
    assert X[:, FEATURE_NAMES.index("novel_tool_share")].max() > 0      # the check can see novelty


def test_rare_tools_are_those_few_agents_call():
    n = 300
    agent = np.repeat(np.arange(n), 2)
    tool = np.zeros(2 * n, np.int64)
    tool[1] = 1                                    # agent 0's second call: a tool nobody else calls
    c = SpanColumns(agent=agent, cohort=np.zeros(2 * n, np.int64), operation=np.full(2 * n, OP_TOOL, np.int8),
                    tool=tool, duration_s=np.ones(2 * n), input_tokens=np.full(2 * n, np.nan),
                    output_tokens=np.full(2 * n, np.nan), error=np.zeros(2 * n, bool),
                    content_filter=np.zeros(2 * n, bool), length=np.zeros(2 * n, bool),
                    agents=[str(i) for i in range(n)], tools=["search", "exfiltrate"])
    _, X = behaviour_matrix(c)
    share = X[:, FEATURE_NAMES.index("rare_tool_share")]
    assert share[0] == 0.5 and not share[1:].any()


def test_grouped_percentile_is_numpy_percentile_per_group():
    rng = np.random.default_rng(5)
    g = rng.integers(0, 30, size=2000)
    v = rng.normal(size=2000)
    for q in (0, 37.5, 50, 95, 100):
        got = grouped_percentile(g, v, 31, q)
        want = [np.percentile(v[g == k], q) if (g == k).any() else 0.0 for k in range(31)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)


def test_grouped_percentiles_from_one_sort_are_numpy_percentiles_per_group():
    rng = np.random.default_rng(6)
    g = rng.integers(0, 30, size=2000)
    v = rng.normal(size=2000)
    qs = (0, 37.5, 50, 95, 100)
    for q, got in zip(qs, grouped_percentiles(g, v, 31, qs), strict=True):
        want = [np.percentile(v[g == k], q) if (g == k).any() else 0.0 for k in range(31)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    # past 2**16 groups the other sort (lexsort): the same percentiles
    wide = grouped_percentiles(g * 3000, v, 31 * 3000, qs)
    for got, narrow in zip(wide, grouped_percentiles(g, v, 31, qs), strict=True):
        np.testing.assert_array_equal(got[::3000], narrow)
        assert not got[np.arange(got.size) % 3000 != 0].any()
    empty = grouped_percentiles(g[:0], v[:0], 4, (50, 95))
    assert [e.tolist() for e in empty] == [[0.0] * 4, [0.0] * 4]


def _request(spans: list[tuple[str, str, str | None]]) -> ExportTraceServiceRequest:
    """(agent, operation, tool) per span, one resource."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _add(rs.resource.attributes, "service.name", "svc")
    out = rs.scope_spans.add().spans
    for agent, op, tool in spans:
        s = out.add(start_time_unix_nano=0, end_time_unix_nano=10**9)
        _add(s.attributes, "gen_ai.agent.id", agent)
        _add(s.attributes, "gen_ai.operation.name", op)
        if tool:
            _add(s.attributes, "gen_ai.tool.name", tool)
    return req


def test_windows_close_on_the_clock_and_a_late_request_counts_in_the_open_window():
    now = [0.0]
    agg = WindowAggregator(10.0, clock=lambda: now[0])
    first = _request([("a", "invoke_agent", None), ("a", "execute_tool", "search"), ("b", "invoke_agent", None)])
    assert agg.add(first).closed == ()
    now[0] = 9.999
    assert agg.poll() == () and agg.pending_spans == 3
    now[0] = 35.0                                   # 2 more windows went by empty
    second = _request([("a", "invoke_agent", None), ("a", "execute_tool", "shell"), ("c", "execute_tool", "search")])
    result = agg.add(second)
    (closed,) = result.closed
    assert (closed.index, closed.start, closed.end, closed.spans) == (0, 0.0, 10.0, 3)
    assert closed.agent_ids.tolist() == ["a", "b"]
    assert agg.window_index == 3 and agg.window_end == 40.0
    window = agg.close()
    assert window.index == 3 and window.agent_ids.tolist() == ["a", "c"]
    novel = window.features[:, FEATURE_NAMES.index("novel_tool_share")]
    assert novel.tolist() == [1.0, 0.0]            # a's shell is new to a; c has no earlier window
    assert window.cohorts == [("svc",) + ("unknown",) * 5] * 2
    assert agg.close().agent_ids.size == 0         # an empty window closes to no agents


def test_bad_window_lengths_are_refused():
    from swarmguard.errors import InvalidInputError
    for bad in (0, -1.0, float("nan"), "60"):
        with pytest.raises(InvalidInputError):
            WindowAggregator(bad)


def test_a_file_of_otlp_json_exports_gives_the_vectors_the_server_would(tmp_path):
    import gzip

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from swarmguard.apps.otlp.decode import encode_otlp_json
    from swarmguard.apps.otlp.fleet_model import make_fleet
    from swarmguard.apps.otlp.span_file import iter_span_file_windows, read_span_file
    from swarmguard.apps.otlp.synthetic import window_requests
    from swarmguard.errors import MalformedInputError

    bodies = window_requests(make_fleet(30, 2, seed=2), np.random.default_rng(1))
    direct = WindowAggregator(3600.0)
    for body in bodies:
        direct.add(ExportTraceServiceRequest.FromString(body))
    expected = direct.close()
    path = tmp_path / "spans.jsonl.gz"
    path.write_bytes(gzip.compress(b"\n".join(encode_otlp_json(ExportTraceServiceRequest.FromString(b))
                                              for b in bodies) + b"\n"))
    window = read_span_file(path)
    assert window.agent_ids.tolist() == expected.agent_ids.tolist() and window.spans == expected.spans
    np.testing.assert_array_equal(window.features, expected.features)
    assert len(list(iter_span_file_windows(path, window_lines=1))) == len(bodies)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"resourceSpans": []}\n{oops\n')
    with pytest.raises(MalformedInputError, match="line 2"):
        read_span_file(bad)


def test_huge_tool_names_and_cohort_values_are_cut_before_they_are_kept():
    from swarmguard.apps.otlp.spans import MAX_NAME

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _add(rs.resource.attributes, "service.name", "s" * 3_000_000)
    s = rs.scope_spans.add().spans.add()
    for k, v in [("gen_ai.agent.id", "a"), ("gen_ai.operation.name", "execute_tool"),
                 ("gen_ai.tool.name", "t" * 3_000_000), ("gen_ai.request.model", "m" * 5000)]:
        _add(s.attributes, k, v)
    cols = span_columns(req)
    assert cols.tools == ["t" * MAX_NAME]
    assert cols.cohorts[0][0] == "s" * MAX_NAME and cols.cohorts[0][5] == "m" * MAX_NAME


def test_grouped_percentiles_are_exact_on_ties_single_values_and_empty_groups():
    """Against exact arithmetic (linear interpolation between order statistics, as
    ``numpy.percentile``'s default): a group of one value or of equal values is that value at
    every q, an empty group 0, and two values interpolate exactly where q/100 is a dyadic."""
    g = np.array([0, 2, 2, 2, 2, 3, 3, 0, 0])           # groups 1 and 4 empty
    v = np.array([0.75, 2.5, 2.5, 2.5, 2.5, -1.0, 3.0, 0.75, 0.75])
    qs = (0, 12.5, 25, 50, 75, 100)
    got = grouped_percentiles(g, v, 5, qs)
    for q, row in zip(qs, got, strict=True):
        t = Fraction(q) / 100                               # group 3: -1 + t * (3 - -1)
        assert row.tolist() == [0.75, 0.0, 2.5, float(-1 + t * 4), 0.0]
    one = grouped_percentiles(np.array([1]), np.array([7.25]), 2, (0, 33.3, 100))
    assert [p.tolist() for p in one] == [[0.0, 7.25]] * 3


@pytest.mark.parametrize(("set_value", "refused"), [
    (lambda v: setattr(v, "int_value", 2 ** 53), False),
    (lambda v: setattr(v, "int_value", 2 ** 53 + 1), True),       # float() of it rounds down to 2**53
    (lambda v: setattr(v, "int_value", 2 ** 53 + 2), True),
    (lambda v: setattr(v, "string_value", "9007199254740992"), False),
    (lambda v: setattr(v, "string_value", "9007199254740993"), True),
    (lambda v: setattr(v, "string_value", "9007199254740992.25"), False),   # not an int: as the double reads
], ids=["2**53", "2**53+1", "2**53+2", "str-2**53", "str-2**53+1", "str-2**53-frac"])
def test_a_token_count_over_2_53_is_refused_even_where_its_float_rounds_to_2_53(set_value, refused):
    for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
        req = ExportTraceServiceRequest()
        s = req.resource_spans.add().scope_spans.add().spans.add()
        _add(s.attributes, "gen_ai.agent.id", "a-1")
        set_value(s.attributes.add(key=key).value)
        cols = span_columns(req)
        assert (cols.bad_tokens, len(cols)) == ((1, 0) if refused else (0, 1))
        if not refused:
            assert getattr(cols, key.rsplit(".", 1)[1]).tolist() == [float(2 ** 53)]
