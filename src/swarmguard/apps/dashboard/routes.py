"""The dashboard's routes: ``GET /`` (the page), its static files, and the small JSON queries it reads.

``GET /`` and ``/dashboard/<file>`` are public (they hold no data; the page asks for a
token when the node wants one and sends it as a bearer header). The ``/v1/dashboard/*``
queries need the ``read`` role like every query, answer unknown names with 404 and
the node's one-line ``{"error": ...}``, and are pre-aggregated: none of them sends
more than ``top`` agents, whatever the population's size.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

from ..serve.auth import requires
from ..serve.http_errors import ApiError
from ..serve.read_view import answer
from .cluster_history import partitions, peers_now
from .history import P_VALUE_BINS, history_of

__all__ = ["router", "api_router", "page_router", "plotly_js_path"]

STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# The page talks to its node only: scripts, styles and requests from this origin (Plotly sets
# inline styles and draws data: images), nothing from any other host.
PAGE_POLICY = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data: blob:; font-src 'self' data:; base-uri 'none'; form-action 'none'; "
               "frame-ancestors 'none'")

page_router = APIRouter(tags=["dashboard"], include_in_schema=False)
api_router = APIRouter(tags=["dashboard"], dependencies=[Depends(requires("read"))])


def _static(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath("static", name)))


def plotly_js_path() -> Path:
    """The ``plotly.min.js`` the installed plotly package ships (served as is: no CDN)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise ApiError(404, f"plotly.min.js not found at {path}: reinstall plotly", code="no_plotly")
    return path


@page_router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html").read_text(encoding="utf-8"),
                        headers={"Cache-Control": "no-cache", "Referrer-Policy": "no-referrer",
                                 "Content-Security-Policy": PAGE_POLICY})


@page_router.get("/dashboard/plotly.min.js")
def plotly_js() -> FileResponse:
    return FileResponse(plotly_js_path(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@page_router.get("/dashboard/{name}")
def static_file(name: str) -> FileResponse:
    if name not in STATIC:
        raise ApiError(404, f"no dashboard file {name!r}", code="not_found")
    return FileResponse(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


# ---------------------------------------------------------------------- helpers
def _population(node, name: str | None):
    """The named population, or (None) the one with the most agents scored."""
    if name is not None:
        pop = node.populations.get(name)
        if pop is None:
            raise ApiError(404, f"unknown population {name!r}; known: {sorted(node.populations)}",
                           code="unknown_population")
        return pop
    return max(node.populations.values(), key=lambda p: (len(p.agents), p.name == "behaviors"))


def _history(node):
    history = history_of(node)
    if history is None:
        raise ApiError(404, "this node keeps no window history", code="no_history")
    return history


def _f(v) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------- queries
@api_router.get("/v1/dashboard/status", summary="What changed since the page last looked")
def status(request: Request) -> dict:
    """Windows closed per population, the newest event id, the open window's size and the peers
    not reachable now: the page polls this cheap answer and re-reads the rest when it changes."""
    def read(source) -> dict:
        return {"populations": {name: {"windows_closed": p.windows_closed, "agents": len(p.agents),
                                       "open_window_vectors": len(p.window)}
                                for name, p in source.populations.items()},
                "last_event_id": source.last_event_id, "window_end": source.window_end(),
                "window_seconds": source.settings.window_seconds, "region": source.settings.region,
                "state": source.state,
                "peers_unreachable": [p["url"] for p in peers_now(source.node) if not p["reachable"]]}

    return answer(request.app.state.node, read)


@api_router.get("/v1/dashboard/top", summary="The most anomalous agents, with what the table shows")
def top_agents(request: Request, top: int = Query(50, ge=1, le=1000), cohort: str | None = None,
               population: str | None = None) -> dict:
    """``agents``: the ``top`` lowest p-values (as ``/v1/agents``), each with its consensus
    probability, the window it was first isolated in and its two largest feature shares."""
    def read(source) -> dict:
        history = history_of(source)
        pop = _population(source, population)
        best = pop.ranked().top(top, cohort)       # as nlargest over the (cohort's) table, ranked once
        rows = []
        for s in best:
            row = s.summary()
            row["cohort"] = s.cohort or pop.region
            consensus = pop.consensus_of(s.agent_id)
            row["consensus_probability"] = consensus["probability"]
            row["evidence_count"] = consensus["evidence_count"]
            first = history.first_isolated(pop.name, s.agent_id) if history else None
            row["first_flagged"] = None if first is None else first[0]
            row["first_flagged_at"] = None if first is None else first[1]
            row["top_features"] = [{"feature": c["feature"], "share": c["share"]}
                                   for c in pop.contributions(s)[:2] if c["share"] is not None]
            row["window"] = s.window
            rows.append(row)
        return {"population": pop.name, "populations": sorted(source.populations),
                "cohorts": pop.cohorts(), "window": pop.windows_closed, "agents_scored": len(pop.agents),
                "open_window_vectors": len(pop.window), "agents": rows}

    return answer(request.app.state.node, read)


@api_router.get("/v1/dashboard/history", summary="Swim lanes and calibration over the last windows")
def window_history(request: Request, windows: int = Query(20, ge=1, le=120), top: int = Query(30, ge=1, le=200),
                   population: str | None = None) -> dict:
    """``windows``: the last closed windows (number, time, agents, newly isolated);
    ``cohort_lanes``: per cohort its largest severity per window; ``agent_lanes``: the ``top``
    most anomalous agents now, their severity per window (null: not active, or below that
    window's ``floor``, the lowest severity the history kept); ``calibration``: per cohort the
    histogram of the last window's p-values."""
    def read(source) -> dict:
        history = _history(source)
        pop = _population(source, population)
        records = history.windows(pop.name, windows)
        best = pop.ranked().top(top)
        agents = [s.agent_id for s in best]
        cohorts = sorted({c for r in records for c in r.cohorts})
        last = records[-1] if records else None
        return {
            "population": pop.name,
            "windows": [{"window": r.window, "at": r.at, "agents": r.agents, "newly_isolated": r.newly_isolated,
                         "floor": r.floor} for r in records],
            "cohort_lanes": {"cohorts": cohorts,
                             "severity": [[r.cohorts[c].max_severity if c in r.cohorts else None for r in records]
                                          for c in cohorts]},
            "agent_lanes": {"agents": agents, "cohorts": [s.cohort or pop.region for s in best],
                            "severity": [[r.top[a][0] if a in r.top else None for r in records] for a in agents]},
            "calibration": {"window": None if last is None else last.window,
                            "bin_edges": np.linspace(0.0, 1.0, P_VALUE_BINS + 1).tolist(),
                            "cohorts": {} if last is None else {c: w.p_value_counts for c, w in last.cohorts.items()},
                            "agents": {} if last is None else {c: w.agents for c, w in last.cohorts.items()}},
        }

    return answer(request.app.state.node, read)


@api_router.get("/v1/dashboard/agents/{agent_id:path}", summary="One agent's drill-down",
                responses={404: {"description": "unknown agent"}})
def agent_detail(request: Request, agent_id: str, population: str | None = None,
                 windows: int = Query(20, ge=1, le=120)) -> dict:
    """The agent's latest result and contributions, its features against the population's
    typical value and spread per window (the windows it was among the kept top), the window it
    was first isolated in, and the evidence about it by observer (flagged observers marked)."""
    def read(source) -> dict:
        history = _history(source)
        found = source.find_agent(agent_id, population)
        if found is None:
            raise ApiError(404, f"unknown agent {agent_id!r}", code="unknown_agent")
        pop, state = found
        out = state.summary()
        out["cohort"] = state.cohort or pop.region
        out["window"] = state.window
        out["confidence_factor"] = state.confidence_factor
        out["contributions"] = pop.contributions(state)
        out["consensus"] = pop.consensus_of(agent_id)
        first = history.first_isolated(pop.name, agent_id)
        out["first_flagged"] = None if first is None else first[0]
        out["first_flagged_at"] = None if first is None else first[1]
        records = history.windows(pop.name, windows)
        names = pop.names()
        out["history"] = {
            "windows": [r.window for r in records], "features": names,
            "severity": [r.top[agent_id][0] if agent_id in r.top else None for r in records],
            "actual": [[r.top[agent_id][2][j] if agent_id in r.top else None for r in records] for j in range(len(names))],
            "typical": [[r.typical[j] if j < len(r.typical) else None for r in records] for j in range(len(names))],
            "spread": [[r.spread[j] if j < len(r.spread) else None for r in records] for j in range(len(names))],
        }
        out["evidence"] = _evidence_by_observer(pop, agent_id)
        return out

    return answer(request.app.state.node, read)


def _evidence_by_observer(pop, agent_id: str) -> list[dict[str, Any]]:
    consensus = pop.detector.consensus
    ledger = getattr(consensus, "ledger", None)
    if ledger is None:       # the Ray engine's evidence lives in its partitions' actors: no per-observer rows
        return []
    row = ledger.agents.row_of(agent_id)
    if row < 0:
        return []
    n = ledger.size
    cols = ledger.columns
    mine = np.flatnonzero(cols["agent_row"][:n] == row)
    flagged = set(consensus.byzantine_nodes)
    out = []
    sources = cols["source_row"][:n][mine]
    log_odds = cols["log_odds"][:n][mine]
    for s in np.unique(sources).tolist():
        pick = sources == s
        key = ledger.sources.key_of(int(s))
        out.append({"observer": str(key), "evidence": int(pick.sum()),
                    "log_odds_sum": _f(math.fsum(log_odds[pick].tolist())), "flagged": key in flagged})
    out.sort(key=lambda r: -abs(r["log_odds_sum"] or 0.0))
    return out


@api_router.get("/v1/dashboard/observers", summary="Observers: reputation, outlier counts, Byzantine flags")
def observers(request: Request, population: str | None = None) -> dict:
    def read(source) -> dict:
        pop = _population(source, population)
        consensus = pop.detector.consensus
        if consensus.evidence_count == 0:
            return {"observers": []}
        out = []
        for key, rec in consensus.source_reputation().items():
            outliers = rec["low_outliers"] + rec["high_outliers"]
            out.append({"observer": str(key), "reports": rec["reports"], "outliers": outliers,
                        "expected_outliers": _f(rec["expected_low_outliers"] + rec["expected_high_outliers"]),
                        "outlier_rate": _f(outliers / rec["reports"]) if rec["reports"] else None,
                        "tail_bound": _f(rec["tail_bound"]), "flagged": rec["flagged"]})
        out.sort(key=lambda r: (not r["flagged"], r["tail_bound"] if r["tail_bound"] is not None else 1.0))
        return {"observers": out}

    return answer(request.app.state.node, read)


@api_router.get("/v1/dashboard/regions", summary="Each region's confidence factor and staleness per window")
def regions(request: Request, population: str | None = None, windows: int = Query(60, ge=1, le=120)) -> dict:
    def read(source) -> dict:
        history = _history(source)
        pop = _population(source, population)
        records = history.windows(pop.name, windows)
        names = sorted({name for r in records for name in r.regions})
        return {"windows": [r.window for r in records], "at": [r.at for r in records],
                "regions": [{"region": name,
                             "confidence_factor": [r.regions.get(name, (None, None))[0] for r in records],
                             "staleness_seconds": [r.regions.get(name, (None, None))[1] for r in records]}
                            for name in names]}

    return answer(request.app.state.node, read)


@api_router.get("/v1/dashboard/cluster", summary="The Regions panel: confidence, staleness and partitions over time")
def cluster(request: Request, windows: int = Query(60, ge=1, le=120)) -> dict:
    """The node's regions over its last live window closes (:mod:`.cluster_history`):
    ``at`` (node clock, s), ``confidence_factor`` (the node's), per region its part of the
    confidence and its staleness, ``partitions`` (per peer, the intervals it was unreachable)
    and ``peers`` as the node sees them now (``[]``: a single node)."""
    def read(source) -> dict:
        history = _history(source)
        records = history.cluster_windows(windows)
        now = source.settings.clock()
        names = list(dict.fromkeys(name for r in records for name in r.regions))
        return {"region": source.settings.region, "consistency": source.settings.consistency, "now": now,
                "at": [r.at for r in records], "confidence_factor": [r.confidence_factor for r in records],
                "regions": [{"region": name, "own": name == source.settings.region,
                             "confidence_factor": [r.regions.get(name, (None, None))[0] for r in records],
                             "staleness_seconds": [r.regions.get(name, (None, None))[1] for r in records]}
                            for name in names],
                "partitions": partitions(records, now), "peers": peers_now(source.node)}

    return answer(request.app.state.node, read)


router = APIRouter()
router.include_router(page_router)
router.include_router(api_router)
