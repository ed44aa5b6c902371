"""The behaviour vector of an agent in one window, from its GenAI spans (``docs/otlp-features.md``).

:data:`FEATURES` is the list, in vector order; ``docs/otlp-features.md`` has the same
table (a test checks that they agree). :func:`behaviour_matrix` computes it for every
agent of a :class:`~swarmguard.apps.otlp.spans.SpanColumns` at once: group counts with
``np.bincount``, grouped percentiles from one ``np.lexsort``, tool-use entropy from the
(agent, tool) pair counts — no per-agent Python loop.

Conventions: a *model call* is a span whose ``gen_ai.operation.name`` is ``chat``,
``text_completion`` or ``generate_content``; a *tool call* ``execute_tool``; an
*invocation* ``invoke_agent``. Ratios ``per_invocation`` divide by ``max(invocations, 1)``
(an agent that reports no ``invoke_agent`` span counts as one invocation); a mean,
share or percentile over no spans is 0. Rare events (errors, filtered or cut answers)
are scored by their binomial surprise at the window's pooled rate
(:func:`binomial_surprise`), so that one failure in a handful of calls does not read as a
high rate (the detector's distance is a Gaussian one, and such shares have long right
tails); the output/input token ratio and the latencies by their logarithm, for the same
reason (durations are close to log-normal). Percentiles interpolate linearly between order
statistics (``numpy.percentile``'s default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...lazy_import import module_on_first_use
from .spans import OP_INVOKE, OP_MODEL, OP_TOOL, SpanColumns

__all__ = ["Feature", "FEATURES", "FEATURE_NAMES", "RARE_TOOL_AGENT_SHARE", "behaviour_matrix",
           "grouped_percentile", "grouped_percentiles", "pair_keys", "binomial_surprise"]

_special = module_on_first_use("scipy.special")
RARE_TOOL_AGENT_SHARE = 0.01   # a tool called by fewer than this share of the window's agents is rare


@dataclass(frozen=True)
class Feature:
    """One entry of the behaviour vector: its name, definition, unit and source attributes."""

    name: str
    definition: str
    unit: str
    sources: str


_OP = "`gen_ai.operation.name`"
FEATURES: tuple[Feature, ...] = (
    Feature("invocations", "invoke_agent spans in the window", "count", _OP),
    Feature("model_calls_per_invocation", "model-call spans / max(invocations, 1)", "calls", _OP),
    Feature("tool_calls_per_invocation", "execute_tool spans / max(invocations, 1)", "calls", _OP),
    Feature("distinct_tools", "distinct tool names among the tool calls", "count", "`gen_ai.tool.name`"),
    Feature("tool_entropy", "Shannon entropy of the tool names of the tool calls", "bits", "`gen_ai.tool.name`"),
    Feature("novel_tool_share", "share of tool calls to tools this agent called in no earlier window "
            "(0 in its first window)", "fraction", "`gen_ai.tool.name`, `gen_ai.agent.id`"),
    Feature("rare_tool_share", "share of tool calls to tools that fewer than 1% of the window's agents called",
            "fraction", "`gen_ai.tool.name`"),
    Feature("input_tokens_mean", "mean input tokens of the model calls that report them", "tokens",
            "`gen_ai.usage.input_tokens`"),
    Feature("input_tokens_p95", "95th percentile of the same", "tokens", "`gen_ai.usage.input_tokens`"),
    Feature("output_tokens_mean", "mean output tokens of the model calls that report them", "tokens",
            "`gen_ai.usage.output_tokens`"),
    Feature("output_tokens_p95", "95th percentile of the same", "tokens", "`gen_ai.usage.output_tokens`"),
    Feature("log_output_input_token_ratio", "ln((1 + sum of output tokens) / (1 + sum of input tokens)) over "
            "the model calls", "ln ratio", "`gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`"),
    Feature("log_invocation_latency_p50", "ln(1 + median duration in seconds of the invoke_agent spans)",
            "ln seconds", "span start/end time, " + _OP),
    Feature("log_invocation_latency_p95", "ln(1 + their 95th percentile in seconds)", "ln seconds",
            "span start/end time, " + _OP),
    Feature("log_tool_latency_p50", "ln(1 + median duration in seconds of the tool calls)", "ln seconds",
            "span start/end time, " + _OP),
    Feature("log_tool_latency_p95", "ln(1 + their 95th percentile in seconds)", "ln seconds",
            "span start/end time, " + _OP),
    Feature("error_rate_surprise", "surprise of the agent's failed spans (`error.type` set or status ERROR) "
            "among its spans", "nats", "`error.type`, span status"),
    Feature("tool_error_rate_surprise", "surprise of its failed tool calls among its tool calls", "nats",
            "`error.type`, span status, " + _OP),
    Feature("content_filter_surprise", "surprise of its model calls whose finish reasons include "
            "content_filter among its model calls", "nats", "`gen_ai.response.finish_reasons`"),
    Feature("length_stop_surprise", "surprise of its model calls whose finish reasons include length "
            "(cut at max tokens) among its model calls", "nats", "`gen_ai.response.finish_reasons`"),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


def pair_keys(agent: np.ndarray, tool: np.ndarray) -> np.ndarray:
    """One int64 key per (agent code, tool code) pair (codes below 2**31)."""
    return (agent.astype(np.int64) << 31) | tool.astype(np.int64)


def grouped_percentile(group: np.ndarray, values: np.ndarray, n_groups: int, q: float) -> np.ndarray:
    """The ``q``-th percentile (0–100, linear interpolation) of ``values`` within each group.

    ``group`` holds codes in ``[0, n_groups)``; a group with no value gets 0.

    >>> g = np.array([0, 1, 0, 0, 1]); v = np.array([3.0, 10.0, 1.0, 2.0, 20.0])
    >>> grouped_percentile(g, v, 3, 50).tolist()
    [2.0, 15.0, 0.0]
    """
    return grouped_percentiles(group, values, n_groups, (q,))[0]


def grouped_percentiles(group: np.ndarray, values: np.ndarray, n_groups: int,
                        qs: tuple[float, ...]) -> list[np.ndarray]:
    """:func:`grouped_percentile` for each of ``qs``, sorting ``values`` once (the sort is
    the cost: a window's close reads p50 and p95 of the same durations).

    >>> g = np.array([0, 1, 0, 0, 1]); v = np.array([3.0, 10.0, 1.0, 2.0, 20.0])
    >>> [p.tolist() for p in grouped_percentiles(g, v, 3, (0, 50, 100))]
    [[1.0, 10.0, 0.0], [2.0, 15.0, 0.0], [3.0, 20.0, 0.0]]
    """
    if values.size == 0:
        return [np.zeros(n_groups) for _ in qs]
    if n_groups <= 1 << 16:
        # lexsort's order, 1.4-1.5x as fast on a window's fleet durations: values stably, then
        # their groups stably as 16-bit codes, which NumPy sorts by radix (ties keep the values'
        # order, as lexsort does)
        order = np.argsort(values, kind="stable")
        order = order[np.argsort(group[order].astype(np.uint16), kind="stable")]
    else:
        order = np.lexsort((values, group))
    sorted_values = values[order]
    counts = np.bincount(group, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    has = counts > 0
    first, last = starts[has], counts[has] - 1
    results = []
    for q in qs:
        out = np.zeros(n_groups)
        position = (q / 100.0) * last
        lower = np.floor(position).astype(np.int64)
        upper = np.minimum(lower + 1, last)
        low_v = sorted_values[first + lower]
        high_v = sorted_values[first + upper]
        out[has] = low_v + (position - lower) * (high_v - low_v)
        results.append(out)
    return results


def binomial_surprise(k: np.ndarray, n: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """How surprising each agent's ``k`` events in ``n`` trials are at the pooled rate:
    ``-ln P(X >= k)`` for ``X ~ Binomial(n, p)``, ``p = sum(k) / sum(n)`` over ``rows``
    (default all); 0 where ``k`` is 0, ``n`` is 0, or ``p`` is 0 or 1.

    Rare events (an error, a filtered answer) make shares with long right tails: one
    failure in four calls reads as a 25% rate, and its z-score is large too. The
    surprise of an honest agent is about an exponential variable (light-tailed) whatever
    its number of calls, while a burst (15 failures in 24 calls at a 2% rate) is tens.

    >>> binomial_surprise(np.array([0, 1, 2, 15, 0]), np.array([10, 4, 4, 24, 50]), np.array([1, 1, 1, 0, 1], bool)).round(2).tolist()
    [0.0, 1.8, 4.51, 33.11, 0.0]
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    sel = slice(None) if rows is None else rows
    total = n[sel].sum()
    out = np.zeros(k.shape)
    if total <= 0:
        return out
    p = k[sel].sum() / total
    if p <= 0.0 or p >= 1.0:
        return out
    has = (n > 0) & (k > 0)
    # P(X >= k) is the regularized incomplete beta I_p(k, n - k + 1); scipy.special (which the
    # detector loads anyway) rather than scipy.stats (seconds to import). Tails below 1e-300
    # read as 1e-300: a surprise of at most ~690 nats.
    tail = _special().betainc(k[has], n[has] - k[has] + 1, p)
    out[has] = -np.log(np.maximum(tail, 1e-300))
    return np.maximum(out, 0.0)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def behaviour_matrix(columns: SpanColumns, agent_codes: np.ndarray | None = None,
                     known_pairs: np.ndarray | None = None,
                     earlier_agents: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The behaviour vectors (rows in :data:`FEATURES` order) of the agents in ``columns``.

    ``agent_codes`` lists the agents to return, in order (default: those with a span,
    sorted by code); ``known_pairs`` (sorted :func:`pair_keys` of earlier windows) and
    ``earlier_agents`` (a bool mask over agent codes: had an earlier window) feed
    ``novel_tool_share``: without them every agent is in its first window. Returns
    ``(agent_codes, X)`` with ``X`` of shape ``(len(agent_codes), len(FEATURES))``.

    Examples
    --------
    >>> from swarmguard.apps.otlp.spans import SpanColumns
    >>> cols = SpanColumns(agent=np.array([0, 0, 0, 0]), cohort=np.zeros(4, int),
    ...     operation=np.array([OP_INVOKE, OP_MODEL, OP_TOOL, OP_TOOL], dtype=np.int8),
    ...     tool=np.array([-1, -1, 0, 1]), duration_s=np.array([4.0, 1.0, 0.5, 1.5]),
    ...     input_tokens=np.array([np.nan, 1000.0, np.nan, np.nan]),
    ...     output_tokens=np.array([np.nan, 250.0, np.nan, np.nan]),
    ...     error=np.array([False, False, False, True]), content_filter=np.zeros(4, bool),
    ...     length=np.zeros(4, bool), agents=["a-1"], tools=["search", "calc"])
    >>> codes, X = behaviour_matrix(cols)
    >>> row = dict(zip(FEATURE_NAMES, X[0].tolist()))
    >>> row["tool_calls_per_invocation"], row["tool_entropy"], round(row["log_output_input_token_ratio"], 4)
    (2.0, 1.0, -1.3833)
    >>> round(row["tool_error_rate_surprise"], 4)     # 1 of 2 tool calls failed: the pooled rate is 1/2
    0.2877
    """
    agent = columns.agent
    n_all = max(int(agent.max()) + 1 if agent.size else 0, len(columns.agents))
    if agent_codes is None:
        agent_codes = np.flatnonzero(np.bincount(agent, minlength=n_all))
    agent_codes = np.asarray(agent_codes, dtype=np.int64)
    n_all = max(n_all, int(agent_codes.max()) + 1 if agent_codes.size else 0)
    op = columns.operation
    is_inv, is_model, is_tool = op == OP_INVOKE, op == OP_MODEL, op == OP_TOOL

    def count(mask: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(agent if mask is None else agent[mask], minlength=n_all).astype(np.float64)

    spans = count()
    invocations = count(is_inv)
    model_calls = count(is_model)
    tool_calls = count(is_tool)
    per_invocation = np.maximum(invocations, 1.0)

    # tools: (agent, tool) pair counts -> distinct tools, entropy, novel and rare shares
    tool_rows = is_tool & (columns.tool >= 0)
    keys = pair_keys(agent[tool_rows], columns.tool[tool_rows])
    pairs, pair_counts = np.unique(keys, return_counts=True)
    pair_agent = (pairs >> 31).astype(np.int64)
    pair_tool = (pairs & ((1 << 31) - 1)).astype(np.int64)
    named_calls = np.bincount(pair_agent, weights=pair_counts, minlength=n_all)
    distinct = np.bincount(pair_agent, minlength=n_all).astype(np.float64)
    p = pair_counts / named_calls[pair_agent] if pairs.size else np.zeros(0)
    entropy = np.bincount(pair_agent, weights=-p * np.log2(p), minlength=n_all) if pairs.size else np.zeros(n_all)
    entropy = np.maximum(entropy, 0.0)       # -0.0 and rounding below zero for one tool
    if earlier_agents is not None and pairs.size:
        returning = np.zeros(n_all, dtype=bool)
        returning[: min(n_all, earlier_agents.size)] = earlier_agents[:n_all]
        known = np.zeros(0, np.int64) if known_pairs is None else known_pairs
        novel = returning[pair_agent] & ~np.isin(pairs, known)   # an agent's first window has nothing novel
    else:
        novel = np.zeros(pairs.size, dtype=bool)
    novel_calls = np.bincount(pair_agent[novel], weights=pair_counts[novel], minlength=n_all)
    active = int(np.count_nonzero(spans))
    users = np.bincount(pair_tool, minlength=len(columns.tools) or 1)     # agents per tool
    rare = users[pair_tool] < RARE_TOOL_AGENT_SHARE * active
    rare_calls = np.bincount(pair_agent[rare], weights=pair_counts[rare], minlength=n_all)

    # tokens of model calls
    tin, tout = columns.input_tokens, columns.output_tokens
    has_in = is_model & ~np.isnan(tin)
    has_out = is_model & ~np.isnan(tout)
    in_sum = np.bincount(agent[has_in], weights=tin[has_in], minlength=n_all)
    out_sum = np.bincount(agent[has_out], weights=tout[has_out], minlength=n_all)
    in_mean = _safe_divide(in_sum, count(has_in))
    out_mean = _safe_divide(out_sum, count(has_out))
    in_p95 = grouped_percentile(agent[has_in], tin[has_in], n_all, 95)
    out_p95 = grouped_percentile(agent[has_out], tout[has_out], n_all, 95)

    duration = columns.duration_s
    inv_p50, inv_p95 = grouped_percentiles(agent[is_inv], duration[is_inv], n_all, (50, 95))
    tool_p50, tool_p95 = grouped_percentiles(agent[is_tool], duration[is_tool], n_all, (50, 95))

    error = columns.error
    active_rows = spans > 0

    def excess(k: np.ndarray, n: np.ndarray) -> np.ndarray:
        return binomial_surprise(k, n, active_rows)

    X = np.column_stack([
        invocations,
        model_calls / per_invocation,
        tool_calls / per_invocation,
        distinct,
        entropy,
        _safe_divide(novel_calls, named_calls),
        _safe_divide(rare_calls, named_calls),
        in_mean, in_p95, out_mean, out_p95,
        np.log1p(out_sum) - np.log1p(in_sum),    # a ratio of sums has a long right tail; its log does not
        np.log1p(inv_p50), np.log1p(inv_p95), np.log1p(tool_p50), np.log1p(tool_p95),
        excess(count(error), spans),
        excess(count(error & is_tool), tool_calls),
        excess(count(columns.content_filter & is_model), model_calls),
        excess(count(columns.length & is_model), model_calls),
    ])
    return agent_codes, X[agent_codes]
