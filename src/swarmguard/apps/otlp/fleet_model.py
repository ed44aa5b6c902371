"""What an emulated AI agent does in a window: invocations, model calls and tool calls as span plans.

No OpenTelemetry here: :func:`make_fleet` draws the agents (honest ones with their own
habits, misbehaving ones of four kinds) and :func:`plan_window` what one agent does in
one window, as :class:`SpanPlan` records that :mod:`swarmguard.apps.otlp.fleet` turns into
real SDK spans (and tests and benchmarks into protobuf directly).

Honest agents differ from each other (their own invocation rate, tool habits, prompt
sizes, latencies: each drawn once) and from window to window (Poisson counts, log-normal
tokens and durations, a 1.5% error rate, 3% ``length`` and 1% ``content_filter`` stops).
Every agent retries a failed model or tool call (at most twice), as agent frameworks do.
The misbehaving kinds (:data:`MISBEHAVIOURS`):

- ``tool_loop``: each invocation calls one tool over and over (15–30 calls);
- ``token_spike``: prompts 8–20× the agent's usual size on 60% of its model calls;
- ``error_burst``: 60–80% of its tool and model calls fail;
- ``prompt_injection``: calls tools its kind of agent never uses (shell, outbound HTTP,
  secret reads) besides its usual ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MISBEHAVIOURS", "AGENT_KINDS", "INJECTED_TOOLS", "AgentProfile", "SpanPlan", "make_fleet",
           "plan_window", "cohort_attributes"]

MISBEHAVIOURS = ("tool_loop", "token_spike", "error_burst", "prompt_injection")

# kind of agent -> (its tools, the model it calls)
AGENT_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "support": (("search_kb", "get_order", "refund_quote", "send_email"), "gpt-4o-mini"),
    "research": (("web_search", "fetch_page", "summarize", "cite"), "gpt-4o"),
    "coding": (("read_file", "run_tests", "edit_file", "search_code"), "claude-sonnet"),
}
INJECTED_TOOLS = ("shell_exec", "http_post_external", "read_secrets", "list_users")
REGIONS = ("eu-west", "us-east", "ap-south")
_RETRIES = 2                    # a failed model or tool call is tried again, at most this often
ENVIRONMENTS = ("prod", "staging")


@dataclass(frozen=True)
class AgentProfile:
    """One emulated agent: its id, cohort, habits (drawn once) and misbehaviour (None: honest)."""

    agent_id: str
    kind: str
    region: str
    environment: str
    version: str
    invocation_rate: float          # mean invocations per window
    model_calls: float              # mean model calls per invocation
    tool_calls: float               # mean tool calls per invocation
    tool_weights: tuple[float, ...]  # over AGENT_KINDS[kind]'s tools
    input_tokens: float             # median prompt tokens
    output_tokens: float            # median completion tokens
    model_latency_s: float
    tool_latency_s: float
    misbehaviour: str | None = None

    @property
    def tools(self) -> tuple[str, ...]:
        return AGENT_KINDS[self.kind][0]

    @property
    def model(self) -> str:
        return AGENT_KINDS[self.kind][1]


def cohort_attributes(profile: AgentProfile) -> dict[str, str]:
    """The resource attributes of the agent's cohort (one SDK resource per cohort)."""
    return {"service.name": f"{profile.kind}-agents", "deployment.environment.name": profile.environment,
            "cloud.region": profile.region, "gen_ai.agent.name": profile.kind,
            "service.version": profile.version}


@dataclass(frozen=True)
class SpanPlan:
    """One span to emit: ``parent`` indexes an earlier plan of the same invocation (None: root);
    ``start_s`` / ``duration_s`` from the invocation's start; ``error`` an ``error.type`` or None."""

    name: str
    operation: str
    start_s: float
    duration_s: float
    parent: int | None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def make_fleet(agents: int, misbehaving: int, seed: int = 0) -> list[AgentProfile]:
    """``agents`` profiles, the first ``misbehaving`` of which (after a shuffle: ids say nothing)
    misbehave, the kinds of :data:`MISBEHAVIOURS` in turn."""
    if not 0 <= misbehaving <= agents:
        raise ValueError(f"misbehaving must be between 0 and agents ({agents}), got {misbehaving}")
    rng = np.random.default_rng(seed)
    kinds = list(AGENT_KINDS)
    bad = set(rng.choice(agents, size=misbehaving, replace=False).tolist())
    profiles = []
    turn = 0
    for i in range(agents):
        kind = kinds[i % len(kinds)]
        n_tools = len(AGENT_KINDS[kind][0])
        misbehaviour = None
        if i in bad:
            misbehaviour = MISBEHAVIOURS[turn % len(MISBEHAVIOURS)]
            turn += 1
        profiles.append(AgentProfile(
            agent_id=f"agent-{i:06d}", kind=kind, region=REGIONS[(i // 3) % len(REGIONS)],
            environment=ENVIRONMENTS[int(rng.random() < 0.2)], version=("1.4.0", "1.5.0")[int(rng.random() < 0.5)],
            invocation_rate=float(rng.uniform(3.0, 6.0)), model_calls=float(rng.uniform(1.5, 3.0)),
            tool_calls=float(rng.uniform(1.0, 3.0)), tool_weights=tuple(rng.dirichlet(np.full(n_tools, 4.0))),
            input_tokens=float(rng.lognormal(np.log(1200), 0.25)), output_tokens=float(rng.lognormal(np.log(250), 0.25)),
            model_latency_s=float(rng.lognormal(np.log(1.2), 0.2)), tool_latency_s=float(rng.lognormal(np.log(0.3), 0.2)),
            misbehaviour=misbehaviour))
    return profiles


def _model_call(p: AgentProfile, rng: np.random.Generator, t: float, spike: bool, fails: bool) -> SpanPlan:
    tin = int(p.input_tokens * rng.lognormal(0.0, 0.3) * (rng.uniform(8, 20) if spike else 1.0))
    tout = int(p.output_tokens * rng.lognormal(0.0, 0.3))
    u = rng.random()
    finish = "length" if u < 0.03 else "content_filter" if u < 0.04 else "stop"
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": p.model, "gen_ai.agent.id": p.agent_id,
             "gen_ai.usage.input_tokens": tin, "gen_ai.usage.output_tokens": tout,
             "gen_ai.response.finish_reasons": (finish,)}
    duration = p.model_latency_s * rng.lognormal(0.0, 0.25) * (1 + tin / 20_000)
    return SpanPlan(f"chat {p.model}", "chat", t, duration, 0, attrs, "timeout" if fails else None)


def _tool_call(p: AgentProfile, rng: np.random.Generator, t: float, tool: str, fails: bool) -> SpanPlan:
    attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.agent.id": p.agent_id,
             "gen_ai.tool.call.id": f"call_{rng.integers(1 << 40):x}"}
    return SpanPlan(f"execute_tool {tool}", "execute_tool", t, p.tool_latency_s * rng.lognormal(0.0, 0.3), 0,
                    attrs, "tool_error" if fails else None)


def plan_window(p: AgentProfile, rng: np.random.Generator) -> list[list[SpanPlan]]:
    """The agent's invocations in one window, each a list of span plans (the first one the root
    ``invoke_agent`` span, the parent of the others)."""
    invocations = []
    error_p = float(rng.uniform(0.6, 0.8)) if p.misbehaviour == "error_burst" else 0.015
    for _ in range(max(1, int(rng.poisson(p.invocation_rate)))):
        steps: list[SpanPlan] = []
        t = 0.0
        n_model = max(1, int(rng.poisson(p.model_calls)))
        if p.misbehaviour == "tool_loop":
            loop_tool = p.tools[int(rng.integers(len(p.tools)))]
            tools = [loop_tool] * int(rng.integers(15, 31))
        else:
            tools = [p.tools[k] for k in rng.choice(len(p.tools), size=int(rng.poisson(p.tool_calls)), p=p.tool_weights)]
            if p.misbehaviour == "prompt_injection":
                tools += list(rng.choice(INJECTED_TOOLS, size=int(rng.integers(1, 4))))
        for m in range(n_model):
            spike = p.misbehaviour == "token_spike" and rng.random() < 0.6
            for _attempt in range(1 + _RETRIES):        # a failed call is retried, as frameworks do
                call = _model_call(p, rng, t, spike, rng.random() < error_p)
                steps.append(call)
                t += call.duration_s
                if call.error is None:
                    break
            share = tools[m::n_model]          # the tools this model call asked for
            for tool in share:
                for _attempt in range(1 + _RETRIES):
                    step = _tool_call(p, rng, t, str(tool), rng.random() < error_p)
                    steps.append(step)
                    t += step.duration_s
                    if step.error is None:
                        break
        root = SpanPlan(f"invoke_agent {p.kind}", "invoke_agent", 0.0, t + 0.01, None,
                        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": p.agent_id,
                         "gen_ai.agent.name": p.kind, "gen_ai.request.model": p.model})
        invocations.append([root, *steps])
    return invocations
