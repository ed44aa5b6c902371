"""``/healthz``, ``/readyz``, ``/metrics`` and ``POST /v1/admin/close-window``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from .auth import requires

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Alive (no token); 503 when only a restart can heal the node: its durable "
            "log cannot tell what a failed commit left")
def healthz(request: Request) -> JSONResponse:
    """The liveness probe: 200 while the process answers, starting and draining included (waiting
    heals those); 503 when the log refuses every write until a restart, so that an orchestrator
    restarts the node (its log is the state: the restart rebuilds it from the file)."""
    node = getattr(request.app.state, "node", None)
    if node is not None and node.log.broken is not None:
        return JSONResponse({"error": _needs_restart(node)}, status_code=503)
    return JSONResponse({"status": "ok"})


def _needs_restart(node) -> str:
    return f"the node's durable log needs a restart: {node.log.broken}"


@router.get("/readyz", summary="Ready for traffic (no token); 503 while starting, draining, or until a restart "
            "when the durable log cannot tell what a failed commit left")
def readyz(request: Request) -> JSONResponse:
    node = getattr(request.app.state, "node", None)
    state = "starting" if node is None else node.state
    if node is None and getattr(request.app.state, "failed", None):
        return JSONResponse({"error": "node failed to start: see its log"}, status_code=503)
    if state != "ready":
        return JSONResponse({"error": f"node is {state}"}, status_code=503, headers={"Retry-After": "1"})
    if node.log.broken is not None:         # every write is 503 until a restart rebuilds the state
        return JSONResponse({"error": _needs_restart(node)}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics (a read token unless --metrics-public)")
def metrics(request: Request) -> Response:
    if not request.app.state.settings.metrics_public:
        requires("read")(request)
    node = request.app.state.node
    node.metrics.log_landed_after_error.set(node.log.landed_after_error)   # the log keeps no metrics itself
    node.metrics.log_needs_restart.set(0 if node.log.broken is None else 1)
    body, content_type = node.metrics.render()
    return Response(body, media_type=content_type)


@router.post("/v1/admin/close-window", summary="Close the open window now (admin)",
             dependencies=[Depends(requires("admin"))])
async def close_window(request: Request) -> dict:
    """Runs the open window's round now; ``{"closed": [{"population", "window", "agents", "isolated"}]}``."""
    outcomes = await run_in_threadpool(request.app.state.node.close_window)
    return {"closed": [{"population": o.population, "window": o.window, "agents": o.agents,
                        "isolated": o.isolated} for o in outcomes]}
