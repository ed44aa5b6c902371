"""``swarmguard fleet``: emulated AI agents sending real OTLP spans through the OpenTelemetry SDK.

Each cohort of agents (kind, region, environment, version) is one SDK ``TracerProvider``
with that cohort's ``Resource``, one ``BatchSpanProcessor`` and one ``OTLPSpanExporter``
(OTLP/HTTP protobuf, batches of 512, the SDK's default); the agent itself is the span
attribute ``gen_ai.agent.id``, as the GenAI conventions have it. That is what scales:
a provider per *agent* would start a batch thread and an HTTP session per agent, which
10⁴ agents cannot afford, while ~36 cohorts cost 36 threads whatever the fleet's size.

Observers post evidence about the agents (``POST /v1/evidence``, JSON Lines, with their
own ``observer`` tokens): they notice misbehaving agents more often than honest ones,
and sometimes err.

Needs the ``fleet`` extra (``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .fleet_model import AgentProfile, SpanPlan, cohort_attributes, make_fleet, plan_window

__all__ = ["FleetEmitter", "FleetReport", "observer_evidence", "run_fleet", "import_fleet_modules"]

_NS = 1_000_000_000


def _sdk() -> Any:
    """The SDK modules (imported on first use: ``swarmguard --help`` stays light)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode
    return trace, OTLPSpanExporter, Resource, TracerProvider, BatchSpanProcessor, SpanKind, Status, StatusCode


def import_fleet_modules() -> None:
    """Import what the fleet needs (the OpenTelemetry SDK and its OTLP/HTTP exporter, httpx),
    which this module imports only on first use: a module that cannot be imported stops
    ``swarmguard fleet`` before it says it starts (:class:`ImportError`), not mid-run."""
    import httpx  # noqa: F401

    _sdk()


class FleetEmitter:
    """The fleet's agents on the OpenTelemetry SDK, one ``TracerProvider`` per cohort.

    Parameters
    ----------
    endpoint : str
        The node's base URL (``http://127.0.0.1:8470``); spans go to ``endpoint/v1/traces``.
    profiles : sequence of AgentProfile
    token : str, optional
        Sent as ``Authorization: Bearer <token>`` (an ``ingest`` token).
    exporter_factory : callable, optional
        ``() -> SpanExporter``, instead of the OTLP/HTTP exporter (tests).
    """

    def __init__(self, endpoint: str, profiles: Sequence[AgentProfile], token: str | None = None,
                 exporter_factory: Callable[[], Any] | None = None, timeout_s: float = 30.0) -> None:
        trace, OTLPSpanExporter, Resource, TracerProvider, BatchSpanProcessor, SpanKind, Status, StatusCode = _sdk()
        self._trace, self._kind, self._status = trace, SpanKind, (Status, StatusCode)
        self.profiles = list(profiles)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        url = endpoint.rstrip("/") + "/v1/traces"
        groups: dict[tuple, list[AgentProfile]] = defaultdict(list)
        for p in self.profiles:
            groups[tuple(sorted(cohort_attributes(p).items()))].append(p)
        self.providers = []
        self._tracers: dict[str, Any] = {}
        for attrs, members in groups.items():
            exporter = exporter_factory() if exporter_factory else OTLPSpanExporter(
                endpoint=url, headers=headers, timeout=timeout_s)
            provider = TracerProvider(resource=Resource.create(dict(attrs)))
            # a window's spans arrive at once: the queue holds them all rather than dropping
            provider.add_span_processor(BatchSpanProcessor(
                exporter, max_queue_size=1 << 20, max_export_batch_size=512, schedule_delay_millis=200))
            tracer = provider.get_tracer("swarmguard.fleet")
            self.providers.append(provider)
            for p in members:
                self._tracers[p.agent_id] = tracer

    def emit_invocation(self, profile: AgentProfile, plans: list[SpanPlan], start_ns: int) -> int:
        """Emit one invocation's spans (root first) starting at ``start_ns``; returns the span count."""
        tracer = self._tracers[profile.agent_id]
        Status, StatusCode = self._status
        root_plan = plans[0]
        root = tracer.start_span(root_plan.name, kind=self._kind.INTERNAL, attributes=root_plan.attributes,
                                 start_time=start_ns)
        context = self._trace.set_span_in_context(root)
        for plan in plans[1:]:
            child = tracer.start_span(plan.name, context=context, kind=self._kind.CLIENT, attributes=plan.attributes,
                                      start_time=start_ns + int(plan.start_s * _NS))
            if plan.error:
                child.set_attribute("error.type", plan.error)
                child.set_status(Status(StatusCode.ERROR, plan.error))
            child.end(end_time=start_ns + int((plan.start_s + plan.duration_s) * _NS))
        root.end(end_time=start_ns + int(root_plan.duration_s * _NS))
        return len(plans)

    def emit_window(self, rng: np.random.Generator, now_ns: int | None = None) -> int:
        """Every agent's invocations of one window, emitted now; returns the span count."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        spans = 0
        for p in self.profiles:
            for plans in plan_window(p, rng):
                spans += self.emit_invocation(p, plans, now_ns - int(plans[0].duration_s * _NS))
        return spans

    def flush(self, timeout_s: float = 120.0) -> bool:
        """Export everything queued; True when every provider finished in time."""
        return all(p.force_flush(int(timeout_s * 1000)) for p in self.providers)

    def shutdown(self) -> None:
        for p in self.providers:
            p.shutdown()


def observer_evidence(profiles: Sequence[AgentProfile], source: str, window: int, rng: np.random.Generator,
                      attention: float = 0.3) -> list[dict[str, Any]]:
    """One observer's evidence for a window: it looks at a share ``attention`` of the agents
    and reports a misbehaving one it looks at with probability 0.7 (log-odds +2..+4), an
    honest one with probability 0.02 (a false alarm, +1..+2) and otherwise, now and then,
    clears it (log-odds -1..-0.5)."""
    out = []
    now = time.time()
    for p in profiles:
        if rng.random() >= attention:
            continue
        u = rng.random()
        if p.misbehaviour is not None and u < 0.7:
            log_odds = float(rng.uniform(2.0, 4.0))
        elif p.misbehaviour is None and u < 0.02:
            log_odds = float(rng.uniform(1.0, 2.0))
        elif u > 0.9:
            log_odds = float(rng.uniform(-1.0, -0.5))
        else:
            continue
        out.append({"evidence_id": f"{source}:{window}:{p.agent_id}", "agent_id": p.agent_id,
                    "evidence_type": "behavioral_anomaly", "log_odds": log_odds,
                    "confidence": float(rng.uniform(0.6, 0.95)), "timestamp": now})
    return out


@dataclass
class FleetReport:
    """What a fleet run sent: spans per window, evidence lines posted/refused, the misbehaving agents."""

    spans_per_window: list[int] = field(default_factory=list)
    evidence_posted: int = 0
    evidence_refused: int = 0
    flushed: bool = True
    overran: int = 0                 # windows whose burst took longer than 90% of the window
    misbehaving: dict[str, str] = field(default_factory=dict)
    top: list[str] | None = None
    precision: float | None = None
    recall: float | None = None


def _post_evidence(client: Any, endpoint: str, token: str, lines: list[dict[str, Any]], report: FleetReport) -> None:
    if not lines:
        return
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    response = client.post(endpoint.rstrip("/") + "/v1/evidence", content=body,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})
    if response.status_code // 100 == 2:
        answer = response.json()
        report.evidence_posted += int(answer.get("accepted", 0))
        report.evidence_refused += int(answer.get("rejected", 0))
    else:
        report.evidence_refused += len(lines)


def _sleep_to_next_window(window_s: float, offset: float) -> None:
    """Sleep until ``offset`` seconds into the next window: the node's windows end at whole
    multiples of ``--window`` seconds of the clock (Unix time), so a burst sent just after
    a boundary falls in one node window."""
    now = time.time()
    time.sleep((now // window_s + 1) * window_s + offset - now)


def run_fleet(endpoint: str, agents: int, misbehaving: int, windows: int = 3, window_s: float = 60.0,
              token: str | None = None, observers: Sequence[tuple[str, str]] = (), seed: int = 0,
              read_token: str | None = None, on_window: Callable[[int], None] | None = None,
              log: Callable[[str], None] = lambda _: None) -> FleetReport:
    """Emulate ``agents`` agents (``misbehaving`` of them misbehaving) for ``windows`` windows.

    Each window's spans are emitted and flushed as one burst, and the observers'
    evidence (``observers``: (source name, token) pairs) posted. Pacing: with
    ``on_window``, it is called after each window (a test closes the node's window
    there); without, each burst starts just after a boundary of the node's windows of
    ``window_s`` seconds (the node's ``--window``), and after the last the fleet waits
    for that window to close. With ``read_token``, it then reads ``/v1/agents?top=K``
    (K = ``misbehaving``, population ``spans``) and reports precision and recall.
    """
    import httpx

    profiles = make_fleet(agents, misbehaving, seed)
    rng = np.random.default_rng(seed + 1)
    report = FleetReport(misbehaving={p.agent_id: p.misbehaviour for p in profiles if p.misbehaviour})
    emitter = FleetEmitter(endpoint, profiles, token=token)
    offset = min(1.0, 0.05 * window_s)
    try:
        with httpx.Client(timeout=30.0) as client:
            for w in range(windows):
                if on_window is None:
                    _sleep_to_next_window(window_s, offset)
                started = time.monotonic()
                report.spans_per_window.append(emitter.emit_window(rng))
                report.flushed &= emitter.flush()
                took = time.monotonic() - started
                if on_window is None and took > 0.9 * window_s:
                    # the burst ran into the node's next window: that window sees two of an agent's
                    report.overran += 1
                    log(f"window {w}: sending took {took:.1f} s of a {window_s:g} s window; use a longer --window "
                        "(the SDK emits a few thousand spans a second per core)")
                for source, observer_token in observers:
                    _post_evidence(client, endpoint, observer_token,
                                   observer_evidence(profiles, source, w, rng), report)
                log(f"window {w}: {report.spans_per_window[-1]} spans sent")
                if on_window is not None:
                    on_window(w)
            if on_window is None:
                _sleep_to_next_window(window_s, offset + 1.0)    # the node closes the last window
            if read_token and misbehaving:
                response = client.get(endpoint.rstrip("/") + "/v1/agents",
                                      params={"top": misbehaving, "population": "spans"},
                                      headers={"Authorization": f"Bearer {read_token}"})
                response.raise_for_status()
                report.top = [a["agent_id"] for a in response.json()["agents"]]
                hits = len(set(report.top) & set(report.misbehaving))
                report.precision = hits / len(report.top) if report.top else 0.0
                report.recall = hits / len(report.misbehaving)
    finally:
        emitter.shutdown()
    return report
