"""The fleet's span plans as OTLP protobuf requests directly, without the SDK (benchmarks, tests).

:func:`window_requests` builds what the SDK's exporter would send for one window of the
fleet — one resource per cohort, spans in batches of ``batch_spans`` (512, the SDK's
default), the same attributes — but at protobuf speed, so a benchmark can prepare 10⁴
agents' windows in seconds and time only the receiver.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .fleet_model import AgentProfile, cohort_attributes, plan_window

__all__ = ["window_requests"]

_NS = 1_000_000_000
_KIND_INTERNAL, _KIND_CLIENT = 1, 3
_STATUS_ERROR = 2


def _set(attributes: Any, key: str, value: Any) -> None:
    kv = attributes.add(key=key)
    if isinstance(value, str):
        kv.value.string_value = value
    elif isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, (int, np.integer)):
        kv.value.int_value = int(value)
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        for item in value:
            kv.value.array_value.values.add().string_value = str(item)


def window_requests(profiles: Sequence[AgentProfile], rng: np.random.Generator, batch_spans: int = 512,
                    now_ns: int | None = None) -> list[bytes]:
    """One window of every agent's spans, serialized ``ExportTraceServiceRequest`` bodies of at
    most ``batch_spans`` spans each (a batch holds one cohort, as one SDK provider's would)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    by_cohort: dict[tuple, list[AgentProfile]] = defaultdict(list)
    for p in profiles:
        by_cohort[tuple(sorted(cohort_attributes(p).items()))].append(p)
    bodies: list[bytes] = []
    for attrs, members in by_cohort.items():
        request = span_list = None
        count = 0

        def flush(attrs: tuple = attrs) -> None:
            nonlocal request, span_list, count
            if request is not None and count:
                bodies.append(request.SerializeToString())
            request = ExportTraceServiceRequest()
            rs = request.resource_spans.add()
            for key, value in attrs:
                _set(rs.resource.attributes, key, value)
            scope = rs.scope_spans.add()
            scope.scope.name = "swarmguard.fleet"
            span_list = scope.spans
            count = 0

        flush()
        for p in members:
            for plans in plan_window(p, rng):
                start = now_ns - int(plans[0].duration_s * _NS)
                trace_id = rng.bytes(16)
                root_id = rng.bytes(8)
                for i, plan in enumerate(plans):
                    if count >= batch_spans:
                        flush()
                    span = span_list.add(
                        trace_id=trace_id, span_id=root_id if i == 0 else rng.bytes(8), name=plan.name,
                        kind=_KIND_INTERNAL if i == 0 else _KIND_CLIENT,
                        start_time_unix_nano=start + int(plan.start_s * _NS),
                        end_time_unix_nano=start + int((plan.start_s + plan.duration_s) * _NS))
                    if i:
                        span.parent_span_id = root_id
                    for key, value in plan.attributes.items():
                        _set(span.attributes, key, value)
                    if plan.error:
                        _set(span.attributes, "error.type", plan.error)
                        span.status.code = _STATUS_ERROR
                    count += 1
        flush()
    return bodies
