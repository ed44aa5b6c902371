"""``GET /v1/agents``, ``/v1/agents/{id}``, ``/v1/populations[/{cohort}]`` and the ``/v1/events`` stream.

Each answer is read over one state of the node (:func:`.read_view.answer`): under its lock,
or while a window closes, over the view of the state before the close."""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import re
import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from .auth import requires
from .http_errors import ApiError
from .ranked_agents import rank_key
from .read_view import answer
from .replica_read import (
    SOURCE_SCORED,
    replica_agent,
    replica_contributions,
    top_replica_agents,
    writer_staleness,
)

__all__ = ["router"]

_EVENT_ID = re.compile(r"[0-9]{1,18}")     # ASCII digits only: str.isdigit() lets "²" through to int()

router = APIRouter(tags=["query"], dependencies=[Depends(requires("read"))])


@router.get("/v1/agents", summary="The most anomalous agents")
def list_agents(request: Request, top: int = Query(10, ge=1, le=100_000), cohort: str | None = None,
                population: str | None = None) -> dict:
    """``{"agents": [{"agent_id", "severity", "p_value", "score", "isolated", "cohort", "population",
    "source"}]}``, the ``top`` highest scores (squared distance) first; ``cohort`` / ``population`` filter.

    Agents this node scored (``"source": "scored"``) and, without a ``cohort`` filter (a
    register carries no cohort), the agents only its replicas hold (``"source": "replica"``,
    with ``writer_region`` and ``timestamp``: :mod:`.replica_read`), merged by the same order."""
    def read(source) -> dict:
        region = source.region
        pops = [p for p in source.populations.values() if population in (None, p.name)]
        ranked = [p.ranked() for p in pops]
        replicated = []
        if cohort is None and any(_replicates(p) for p in pops):
            cf = source.confidence_factor
            replicated = [(r.state, r) for p in pops for r in top_replica_agents(p, region, top, cf)]
        # a register's score below 0 has ln p NaN: as a NaN in a table, it leaves no total order.
        # A peer delta holding one is refused (PeerReplication._receive_checked), and the durable
        # log's deltas and the snapshot hold one as 0 when they load, but the registers themselves
        # take any finite score: kept as defence in depth
        nan = any(math.isnan(s.log_p) or math.isnan(s.score) for s, _ in replicated)
        if all(r.ordered for r in ranked) and not nan:
            # each population's first ``top`` (of the cohort), in rank order: nlargest over them,
            # in population order, answers as over every state of every population (.ranked_agents)
            states = [(s, None) for r in ranked for s in r.candidates(top, cohort)]
        else:                          # a NaN key: no total order, so every state, as the table holds them
            states = [(s, None) for p in pops for s in p.agents.values()
                      if cohort is None or (s.cohort or region) == cohort]
        best = heapq.nlargest(top, states + replicated, key=lambda e: rank_key(e[0]))
        return {"agents": [_scored(s) if r is None else r.summary() for s, r in best]}

    return answer(request.app.state.node, read)


def _replicates(pop) -> bool:
    # the in-process resolver keeps the replicas here; the Ray engine's view keeps them in its actors
    return hasattr(pop.detector.cap_resolver, "ensure_replica")


def _scored(state) -> dict:
    return {**state.summary(), "source": SOURCE_SCORED}


@router.get("/v1/agents/{agent_id:path}", summary="One agent's latest result",
            responses={404: {"description": "unknown agent (neither a closed window nor a replica holds a vector of it)"}})
def get_agent(request: Request, agent_id: str, population: str | None = None) -> dict:
    """The agent's list item plus ``contributions`` ([{feature, share, typical, actual}], largest
    share first), ``consensus`` ({probability, log_odds, evidence_count}), ``confidence_factor``
    and ``window``; ``source``: ``"scored"`` (this node's window) or ``"replica"`` (a peer's
    register replicated here, with ``writer_region``, ``timestamp`` and ``writer_staleness_seconds``;
    :mod:`.replica_read` says how each value is derived)."""
    clock = request.app.state.node.settings.clock

    def read(source) -> dict:
        found = source.find_agent(agent_id, population)
        if found is not None:
            pop, state = found
            out = _scored(state)
        else:
            pop, replica = _find_replica(source, agent_id, population)
            if replica is None:
                raise ApiError(404, f"unknown agent {agent_id!r}", code="unknown_agent")
            state = replica.state
            out = replica.summary()
            out["writer_staleness_seconds"] = writer_staleness(pop, source.region, replica.writer_region, clock())
        out["contributions"] = pop.contributions(state) if found is not None else replica_contributions(pop, state)
        out["consensus"] = pop.consensus_of(agent_id)
        out["confidence_factor"] = state.confidence_factor
        out["window"] = state.window
        return out

    return answer(request.app.state.node, read)


def _find_replica(source, agent_id: str, population: str | None):
    """(population, :class:`~.replica_read.ReplicaAgent`) of an agent only a replica holds."""
    pops = [p for p in source.populations.values() if population in (None, p.name) and _replicates(p)]
    if not pops:
        return None, None
    cf = source.confidence_factor
    for pop in pops:
        found = replica_agent(pop, source.region, agent_id, cf)
        if found is not None:
            return pop, found
    return None, None


@router.get("/v1/populations", summary="Every cohort's count, mean, covariance and scores")
def list_populations(request: Request) -> dict:
    """``{"region", "confidence_factor", "populations": [{"cohort", "count", "mean", ...}]}``;
    cohort ``""`` is the whole population; ``count`` counts agents."""
    def read(source) -> dict:
        out = []
        for pop in source.populations.values():
            out.extend(pop.cohort_summaries().values())      # built once per agent table
        # this node's region and the confidence factor of its replicated view (.peers)
        return {"region": source.region, "confidence_factor": source.confidence_factor, "populations": out}

    return answer(request.app.state.node, read)


@router.get("/v1/populations/{cohort:path}", summary="One cohort", responses={404: {"description": "unknown cohort"}})
def get_population(request: Request, cohort: str, population: str | None = None) -> dict:
    def read(source) -> dict:
        for pop in source.populations.values():
            if population not in (None, pop.name):
                continue
            summary = pop.cohort_summaries().get(cohort)
            if summary is not None:
                return summary
        raise ApiError(404, f"unknown cohort {cohort!r}", code="unknown_cohort")

    return answer(request.app.state.node, read)


@router.get("/v1/events", summary="Server-Sent Events of isolations")
async def events(request: Request, since: int | None = Query(None, ge=0),
                 limit: int | None = Query(None, ge=1, le=1_000_000),
                 timeout: float | None = Query(None, gt=0, le=86_400)) -> StreamingResponse:
    """``event: isolation`` per newly isolated agent (``data``: agent_id, population, cohort,
    severity, p_value, score, window, at). Starts after the newest event, or after ``since``
    (or the ``Last-Event-ID`` header; ``since=0``: every event still held, the last 10,000);
    ends after ``limit`` events or ``timeout`` seconds, else when the client leaves."""
    node = request.app.state.node
    log = node.events
    header = request.headers.get("last-event-id")
    if header is not None and since is None and not _EVENT_ID.fullmatch(header):
        raise ApiError(400, "Last-Event-ID must be an event id (1 to 18 ASCII digits)", code="bad_header")
    start = since if since is not None else (int(header) if header is not None else log.last_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    state = request.app.state
    open_streams = getattr(state, "event_streams", 0)
    if open_streams >= state.settings.max_event_streams:
        raise ApiError(503, f"{open_streams} event streams are open: retry later", code="too_many_streams",
                       headers={"Retry-After": "5"})

    async def stream():
        # counted while it runs (the event loop's thread only: no lock); a stream never started
        # is never counted, so the count cannot leak
        state.event_streams = getattr(state, "event_streams", 0) + 1
        try:
            async for chunk in _events(start):
                yield chunk
        finally:                                   # the end, the limit, a timeout or a client gone
            state.event_streams -= 1

    async def _events(start):
        last, sent, idle = start, 0, 0.0
        yield ": swarmguard isolation events\n\n"
        while limit is None or sent < limit:
            batch = log.after(last, None if limit is None else limit - sent)
            for event_id, data in batch:
                yield f"id: {event_id}\nevent: isolation\ndata: {json.dumps(data)}\n\n"
                last, sent = event_id, sent + 1
            if limit is not None and sent >= limit:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            if node.state == "draining":           # let SIGTERM's shutdown finish instead of waiting 30 s
                break
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.1)
            idle += 0.1
            if idle >= 15.0:                       # keep proxies from closing a quiet stream
                idle = 0.0
                yield ": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


