"""OTLP spans to columns: one pass over a decoded export, reading only the GenAI attributes.

:func:`span_columns` walks an ``ExportTraceServiceRequest`` (or any object shaped like
one, e.g. a request decoded from a file of spans) once and returns a
:class:`SpanColumns`: one NumPy column per quantity the behaviour vector needs
(:mod:`swarmguard.apps.otlp.features`), agents and tools as integer codes into small
name tables. That Python loop is the only per-span work; everything after it runs on
arrays. It reads each attribute's key and, only for the keys it knows, the value.

Which attributes (the OpenTelemetry GenAI semantic conventions):

========================================  =============================================
``gen_ai.agent.id``                       the agent (span, then resource attribute);
                                          else the resource's ``service.instance.id``
``gen_ai.operation.name``                 ``invoke_agent``; ``chat`` / ``text_completion``
                                          / ``generate_content`` (model calls);
                                          ``execute_tool``
``gen_ai.tool.name``                      the tool of an ``execute_tool`` span
``gen_ai.usage.input_tokens`` / ``output_tokens``  tokens of a model call
``gen_ai.response.finish_reasons``        a string array; ``content_filter``, ``length``
``error.type``, status code ERROR         the span failed
``service.name``, ``deployment.environment[.name]``, ``cloud.region`` (or ``region``),
``gen_ai.agent.name``, ``gen_ai.agent.version`` (or ``service.version``),
``gen_ai.request.model``                  the agent's cohort
========================================  =============================================
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["cohort_name", "MAX_NAME", "OP_OTHER", "OP_INVOKE", "OP_MODEL", "OP_TOOL", "COHORT_FIELDS", "UNKNOWN", "SpanColumns",
           "span_columns", "NameTable"]

OP_OTHER, OP_INVOKE, OP_MODEL, OP_TOOL = 0, 1, 2, 3
_OPERATIONS = {"invoke_agent": OP_INVOKE, "chat": OP_MODEL, "text_completion": OP_MODEL,
               "generate_content": OP_MODEL, "execute_tool": OP_TOOL}
_STATUS_ERROR = 2            # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_F_ERROR, _F_CONTENT_FILTER, _F_LENGTH = 1, 2, 4     # a span's flags (one small int per span)

# the cohort of an agent: these, in this order ("unknown" where absent)
COHORT_FIELDS = ("service", "environment", "region", "agent_name", "agent_version", "model")
UNKNOWN = "unknown"
# characters kept of a tool name or a cohort attribute: the name tables live as long as the
# node and every record logs its own, so a megabyte-long name would be kept for good
MAX_NAME = 1000

# attribute key -> (slot): agent id, cohort fields, and the span quantities
_AGENT = "gen_ai.agent.id"
_INSTANCE = "service.instance.id"
_COHORT_KEYS = {
    "service.name": 0, "deployment.environment": 1, "deployment.environment.name": 1,
    "cloud.region": 2, "region": 2, "gen_ai.agent.name": 3, "gen_ai.agent.version": 4,
    "service.version": 4, "gen_ai.request.model": 5,
}
# span keys read by the loop (others are skipped after one dict miss)
_K_AGENT, _K_OP, _K_TOOL, _K_IN, _K_OUT, _K_FINISH, _K_ERROR, _K_NAME, _K_VERSION, _K_MODEL = range(10)
_SPAN_KEYS = {
    _AGENT: _K_AGENT, "gen_ai.operation.name": _K_OP, "gen_ai.tool.name": _K_TOOL,
    "gen_ai.usage.input_tokens": _K_IN, "gen_ai.usage.output_tokens": _K_OUT,
    "gen_ai.response.finish_reasons": _K_FINISH, "error.type": _K_ERROR,
    "gen_ai.agent.name": _K_NAME, "gen_ai.agent.version": _K_VERSION, "gen_ai.request.model": _K_MODEL,
}


_MAX_PART = 200                 # characters kept of each cohort attribute in a cohort's name


def cohort_name(fields: tuple[str, ...]) -> str:
    """One cohort name from the cohort's attribute values: ``service/env/region/agent/version/model``.

    >>> cohort_name(("support", "prod", "eu-west", "support", "1.5.0", "gpt-4o"))
    'support/prod/eu-west/support/1.5.0/gpt-4o'
    """
    parts = ("".join(ch for ch in f if ch.isprintable())[:_MAX_PART] or "unknown" for f in fields)
    return "/".join(parts)


class NameTable:
    """Strings to dense integer codes, in order of first appearance.

    >>> t = NameTable()
    >>> t.code("a"), t.code("b"), t.code("a"), t.names
    (0, 1, 0, ['a', 'b'])
    """

    __slots__ = ("codes", "names")

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}
        self.names: list[Any] = []

    def code(self, name: Any) -> int:
        """The code of ``name`` (a new one the first time)."""
        c = self.codes.get(name)
        if c is None:
            c = self.codes[name] = len(self.names)
            self.names.append(name)
        return c

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class SpanColumns:
    """The spans of one or more exports, as columns (one row per accepted span).

    ``agent`` codes index ``agents`` (agent id strings); ``cohort`` codes index
    ``cohorts`` (tuples of :data:`COHORT_FIELDS` values); ``tool`` codes index ``tools``
    (-1: no tool). ``operation`` is one of ``OP_*``; ``duration_s`` end minus start in
    seconds; ``input_tokens`` / ``output_tokens`` NaN where absent; ``error`` True for
    a span with ``error.type`` or status ERROR; ``content_filter`` / ``length`` True
    when ``gen_ai.response.finish_reasons`` names that reason. ``rejected`` counts the
    spans left out because they name no agent, ``bad_tokens`` those left out because a
    token count is a number that is no count (negative, infinite, over 2**53).
    ``span_id`` (uint64, optional) is each span's 8-byte id read big-endian, 0 where the
    span has none (or one of another length): what tells an exporter's retry of a batch
    from new spans. ``start_s`` (float64, optional) each span's start in Unix seconds (its
    end where it has no start, NaN where it has neither): what windows a file of spans by
    the spans' own clock (:mod:`swarmguard.apps.otlp.span_file`).
    """

    agent: np.ndarray
    cohort: np.ndarray
    operation: np.ndarray
    tool: np.ndarray
    duration_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    error: np.ndarray
    content_filter: np.ndarray
    length: np.ndarray
    agents: list[str] = field(default_factory=list)
    cohorts: list[tuple[str, ...]] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    rejected: int = 0
    bad_tokens: int = 0
    span_id: np.ndarray | None = None
    start_s: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.agent.size)


_MAX_COUNT = 2 ** 53
_MAX_TOKENS = float(_MAX_COUNT)   # above this a count is not an exact float: no model call reports that many
_BAD_COUNT = -1.0              # a token count present but not a count (the span is refused)


def _int_of(value: Any) -> float:
    """A token count sent as an int (the convention), a double or a numeric string.

    NaN (absent) for another type or a string that is no number, as for an attribute with
    no value; :data:`_BAD_COUNT` for a number that is no count: negative, infinite or over
    2**53. Such a count would make the window's vectors non-finite (the detector refuses
    them, and with them the window's close), so its span is refused.
    """
    kind = value.WhichOneof("value")
    if kind == "int_value":
        count = value.int_value
        return float(count) if 0 <= count <= _MAX_COUNT else _BAD_COUNT    # as an int (2**53 + 1)
    elif kind == "double_value":
        count = value.double_value
    elif kind == "string_value":
        text = value.string_value
        try:
            count = float(text)
        except ValueError:
            return np.nan
        if count == _MAX_TOKENS:         # "9007199254740993" reads as 2**53 too: the digits decide
            try:
                return count if int(text) <= _MAX_COUNT else _BAD_COUNT
            except ValueError:
                pass
    else:
        return np.nan
    if count != count:           # NaN: absent
        return np.nan
    return count if 0.0 <= count <= _MAX_TOKENS else _BAD_COUNT


def _array(code: str, values: list, dtype: type) -> np.ndarray:
    """``values`` as a writable NumPy array through an ``array.array`` of type ``code``."""
    return np.frombuffer(array.array(code, values), dtype=dtype) if values else np.zeros(0, dtype=dtype)


def _span_ids(ids: list[bytes]) -> np.ndarray:
    """8-byte span ids as big-endian uint64 (0 for an id of another length, or none)."""
    if not ids:
        return np.zeros(0, dtype=np.uint64)
    joined = b"".join(ids)
    if len(joined) == 8 * len(ids) and min(map(len, ids)) == 8:   # the usual case, at C speed
        return np.frombuffer(joined, dtype=">u8").astype(np.uint64)
    return np.array([int.from_bytes(b, "big") if len(b) == 8 else 0 for b in ids], dtype=np.uint64)


def _just_stop() -> Any:
    """``["stop"]`` as the ``ArrayValue`` of ``gen_ai.response.finish_reasons``: most model
    calls' reasons, which set no flag; comparing a span's array with it (upb compares in C)
    skips building a Python object for each reason (about 0.1 us a span)."""
    global _STOP_ARRAY
    if _STOP_ARRAY is None:
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
        _STOP_ARRAY = ArrayValue(values=[AnyValue(string_value="stop")])
    return _STOP_ARRAY


_STOP_ARRAY: Any = None


def _resource_context(resource: Any) -> tuple[str | None, list[str]]:
    """A resource's fallback agent id (``gen_ai.agent.id``, else ``service.instance.id``) and cohort fields."""
    cohort = [UNKNOWN] * len(COHORT_FIELDS)
    agent = instance = None
    for kv in resource.attributes:
        key = kv.key
        slot = _COHORT_KEYS.get(key)
        if slot is not None:
            text = kv.value.string_value[:MAX_NAME]
            if text:
                cohort[slot] = text
        elif key == _AGENT:
            agent = kv.value.string_value or None
        elif key == _INSTANCE:
            instance = kv.value.string_value or None
    return agent or instance, cohort


def span_columns(request: Any, agents: NameTable | None = None, cohorts: NameTable | None = None,
                 tools: NameTable | None = None) -> SpanColumns:
    """Read every span of ``request`` into :class:`SpanColumns`.

    ``agents``, ``cohorts`` and ``tools`` are name tables shared across calls (a window
    aggregator passes its own, so codes stay comparable across requests); fresh ones
    by default. A span without an agent id is not read, only counted in ``rejected``; one
    whose token count is no count likewise, in ``bad_tokens``.
    An agent's cohort is that of the first span it is seen with (in this request).

    Examples
    --------
    >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    >>> req = ExportTraceServiceRequest()
    >>> rs = req.resource_spans.add()
    >>> kv = rs.resource.attributes.add(key="service.name"); kv.value.string_value = "support"
    >>> span = rs.scope_spans.add().spans.add(name="chat gpt-4o", start_time_unix_nano=10**18,
    ...                                       end_time_unix_nano=10**18 + 2_500_000_000)
    >>> for k, v in [("gen_ai.agent.id", "a-1"), ("gen_ai.operation.name", "chat")]:
    ...     kv = span.attributes.add(key=k); kv.value.string_value = v
    >>> kv = span.attributes.add(key="gen_ai.usage.input_tokens"); kv.value.int_value = 812
    >>> _ = rs.scope_spans[0].spans.add(name="orphan")       # no agent id: rejected
    >>> cols = span_columns(req)
    >>> len(cols), cols.rejected, cols.agents, cols.cohorts[0][0]
    (1, 1, ['a-1'], 'support')
    >>> int(cols.operation[0]) == OP_MODEL, float(cols.duration_s[0]), float(cols.input_tokens[0])
    (True, 2.5, 812.0)
    """
    agents = NameTable() if agents is None else agents
    cohorts = NameTable() if cohorts is None else cohorts
    tools = NameTable() if tools is None else tools
    # The loop below is the per-span work of every request; it runs at the speed of its
    # bytecode, so it reads each field once, binds what it calls to locals, looks codes up in
    # the tables' dicts directly (a method call only for a new name), appends to one list per
    # column (error / content_filter / length as the bits of one flags column) and turns the
    # lists into arrays through buffers (array.array, bytearray), which NumPy reads at C speed.
    agent_codes, agent_code = agents.codes, agents.code
    tool_codes, tool_code = tools.codes, tools.code
    cohort_code = cohorts.code
    operations = _OPERATIONS
    span_keys = _SPAN_KEYS
    int_of = _int_of
    max_count = _MAX_COUNT
    just_stop = _just_stop()
    columns: tuple[list, ...] = tuple([] for _ in range(10))
    a_add, c_add, op_add, tool_add, start_add, end_add, in_add, out_add, flag_add, sid_add = (
        col.append for col in columns)
    nan = np.nan
    rejected = bad_tokens = 0
    agent_cohort: dict[int, int] = {}
    for rs in request.resource_spans:
        fallback_agent, resource_cohort = _resource_context(rs.resource)
        for ss in rs.scope_spans:
            for span in ss.spans:
                agent = fallback_agent
                op = OP_OTHER
                tool = -1
                tin = tout = nan
                flags = _F_ERROR if span.status.code == _STATUS_ERROR else 0
                # the cohort attributes matter only for an agent's first span here: kept unread
                name_kv = version_kv = model_kv = None
                for kv in span.attributes:
                    slot = span_keys.get(kv.key)
                    if slot is None:
                        continue
                    # the slots in the order of how often spans carry them
                    if slot == _K_OP:
                        op = operations.get(kv.value.string_value, OP_OTHER)
                    elif slot == _K_AGENT:
                        agent = kv.value.string_value or agent
                    elif slot == _K_MODEL:
                        model_kv = kv
                    elif slot == _K_IN:
                        value = kv.value
                        count = value.int_value     # an int (the convention) reads at once; else _int_of
                        if count:
                            # compared as an int: float(2**53 + 1) rounds down to 2**53, which passes
                            tin = float(count) if 0 <= count <= max_count else _BAD_COUNT
                        else:
                            tin = int_of(value)
                    elif slot == _K_OUT:
                        value = kv.value
                        count = value.int_value
                        if count:
                            tout = float(count) if 0 <= count <= max_count else _BAD_COUNT
                        else:
                            tout = int_of(value)
                    elif slot == _K_FINISH:
                        reasons = kv.value.array_value
                        if reasons != just_stop:      # the usual ["stop"]: one comparison in C
                            for reason in reasons.values:
                                text = reason.string_value
                                if text == "content_filter":
                                    flags |= _F_CONTENT_FILTER
                                elif text == "length":
                                    flags |= _F_LENGTH
                    elif slot == _K_TOOL:
                        text = kv.value.string_value[:MAX_NAME]
                        tool = tool_codes.get(text)
                        if tool is None:
                            tool = tool_code(text)
                    elif slot == _K_ERROR:
                        flags |= _F_ERROR
                    elif slot == _K_NAME:
                        name_kv = kv
                    else:
                        version_kv = kv
                if not agent:
                    rejected += 1
                    continue
                if tin < 0.0 or tout < 0.0:       # _BAD_COUNT (NaN, absent, compares False)
                    bad_tokens += 1
                    continue
                a = agent_codes.get(agent)
                if a is None:
                    a = agent_code(agent)
                c = agent_cohort.get(a)
                if c is None:
                    cohort = resource_cohort
                    name = None if name_kv is None else name_kv.value.string_value[:MAX_NAME]
                    version = None if version_kv is None else version_kv.value.string_value[:MAX_NAME]
                    model = None if model_kv is None else model_kv.value.string_value[:MAX_NAME]
                    if name or version or model:
                        cohort = list(resource_cohort)
                        if name:
                            cohort[3] = name
                        if version:
                            cohort[4] = version
                        if model:
                            cohort[5] = model
                    c = agent_cohort[a] = cohort_code(tuple(cohort))
                a_add(a)
                c_add(c)
                op_add(op)
                tool_add(tool)
                start_add(span.start_time_unix_nano)
                end_add(span.end_time_unix_nano)
                in_add(tin)
                out_add(tout)
                flag_add(flags)
                sid_add(span.span_id)
    a_col, c_col, op_col, tool_col, start_col, end_col, in_col, out_col, flag_col, sid_col = columns
    start = _array("Q", start_col, np.uint64)
    end = _array("Q", end_col, np.uint64)
    flag = np.frombuffer(bytearray(flag_col), dtype=np.uint8)
    # a span that ends before it starts (a clock step) counts as lasting 0 s, and so does one
    # with no start time (0, "unknown"): end - 0 would be the age of the epoch, ~1.7e9 s
    duration = np.where((end >= start) & (start > 0), end - start, 0).astype(np.float64) / 1e9
    when = np.where(start > 0, start, end).astype(np.float64) / 1e9
    when[when == 0] = np.nan
    return SpanColumns(start_s=when,
        span_id=_span_ids(sid_col), agent=_array("q", a_col, np.int64), cohort=_array("q", c_col, np.int64),
        operation=np.frombuffer(bytearray(op_col), dtype=np.int8), tool=_array("q", tool_col, np.int64),
        duration_s=duration, input_tokens=_array("d", in_col, np.float64),
        output_tokens=_array("d", out_col, np.float64), error=(flag & _F_ERROR) != 0,
        content_filter=(flag & _F_CONTENT_FILTER) != 0, length=(flag & _F_LENGTH) != 0,
        agents=agents.names, cohorts=cohorts.names, tools=tools.names, rejected=rejected,
        bad_tokens=bad_tokens)
