"""``create_app(settings) -> FastAPI``: the node's HTTP service, and where routes are mounted.

Adding routes (e.g. ``POST /v1/traces``): pass routers to :func:`create_app`
(``create_app(settings, routers=[traces.router])``), or register a router once
with :func:`register_router` before the app is created (``swarmguard serve`` mounts
every registered router). In a handler, ``request.app.state.node`` is the
:class:`~.node.ServeNode` (``node.accept_behaviors(batch, population, feature_names)``
feeds vectors into the open window, durably), ``request.app.state.settings`` the
:class:`~.settings.ServeSettings`, ``auth.requires("ingest")`` the token check,
``body.read_body(request, settings.max_body_bytes)`` the bounded body, and
``request.app.state.metrics`` the Prometheus counters. An :class:`~.http_errors.ApiError`
raised anywhere becomes ``{"error": "<one line>"}`` with its status, counted in
``swarmguard_errors_total``; a router may install its own handler for its own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ... import __version__
from .http_errors import ApiError, one_line
from .metrics import ServeMetrics
from .node import ServeNode
from .peer_state import router as peer_state_router
from .peers import router as peers_router
from .routes_ingest import router as ingest_router
from .routes_ops import router as ops_router
from .routes_query import router as query_router
from .settings import ServeSettings
from .tokens import load_tokens

__all__ = ["create_app", "register_router", "resolve_data_dir"]

log = logging.getLogger("swarmguard.serve")

_REGISTERED: list[APIRouter] = []
_PUBLIC = ("/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc",
           # the dashboard's page and files load while the node starts (the page then says so)
           "/", "/dashboard/plotly.min.js", "/dashboard/dashboard.js", "/dashboard/dashboard.css")


def register_router(router: APIRouter) -> None:
    """Mount ``router`` in every app :func:`create_app` makes from now on (once per router)."""
    if router not in _REGISTERED:
        _REGISTERED.append(router)


def resolve_data_dir(settings: ServeSettings) -> tuple[Path, bool]:
    """The data folder, and whether it is a fresh temporary one (no ``--data-dir``)."""
    if settings.data_dir is not None:
        return Path(settings.data_dir), False
    return Path(tempfile.mkdtemp(prefix="swarmguard-serve-")), True


def _error(status: int, message: str, headers: dict[str, str] | None = None, path: str = "",
           content_type: str | None = None):
    """The node's one-line JSON error; on ``/v1/traces`` the OTLP answer (a ``google.rpc.Status``
    in the request's encoding) that OTLP exporters read."""
    if path == "/v1/traces":
        try:
            from ..otlp.decode import JSON, PROTOBUF, encode_status
        except ImportError:
            pass
        else:
            encoding = "json" if (content_type or "").split(";")[0].strip().lower() == JSON else "protobuf"
            return Response(encode_status(encoding, status, message), status_code=status, headers=headers,
                            media_type=JSON if encoding == "json" else PROTOBUF)
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def _content_type(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.decode("latin-1")
    return None


def _route_label(path: str) -> str:
    """A bounded label for the latency histogram (agent ids and cohorts folded)."""
    path = re.sub(r"^/v1/agents/.+", "/v1/agents/{id}", path)
    path = re.sub(r"^/v1/dashboard/agents/.+", "/v1/dashboard/agents/{id}", path)
    path = re.sub(r"^/v1/populations/.+", "/v1/populations/{cohort}", path)
    return path if path.startswith(("/v1/", "/healthz", "/readyz", "/metrics", "/docs", "/openapi")) else "other"


def _header_bytes(scope) -> int:
    """The request's header names and values, in bytes (what ``--max-header-bytes`` bounds)."""
    return sum(len(name) + len(value) for name, value in scope.get("headers", ()))


class _ServeMiddleware:
    """Header size bound (431 over ``max_header_bytes``), latency histogram, in-flight bound
    (503 + Retry-After over ``max_inflight`` writes) and 503 while the node is still starting;
    pure ASGI, so streaming bodies stay streams."""

    def __init__(self, app, state, direct=None):
        self.app, self.state, self.inflight = app, state, 0
        # {(method, path): endpoint} called straight from here, past FastAPI's routing: an
        # endpoint that takes only the Request and answers its own errors (POST /v1/traces).
        # Routing, the exception middleware and the endpoint wrapper cost the event loop about
        # 0.2 ms a request, a tenth of a span ingest's time there. An exception it raises still
        # reaches the app's 500 handler (ServerErrorMiddleware, outside this middleware).
        self.direct = direct or {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics: ServeMetrics = self.state.metrics
        path, method = scope["path"], scope["method"]
        label, t0 = _route_label(path), time.perf_counter()
        write = method == "POST"
        try:
            limit = self.state.settings.max_header_bytes
            if _header_bytes(scope) > limit:      # before anything reads them (or the body)
                metrics.errors.labels("header_too_large", "431").inc()
                return await _error(431, f"request headers over {limit} bytes (--max-header-bytes)", None, path,
                                    _content_type(scope))(scope, receive, send)
            if getattr(self.state, "node", None) is None and path not in _PUBLIC:
                if getattr(self.state, "failed", None):
                    metrics.errors.labels("failed", "503").inc()
                    return await _error(503, "the node failed to start (its log has why)", None, path,
                                        _content_type(scope))(scope, receive, send)
                metrics.errors.labels("starting", "503").inc()
                return await _error(503, "the node is starting", {"Retry-After": "1"}, path,
                                    _content_type(scope))(scope, receive, send)
            if write and self.inflight >= self.state.settings.max_inflight:
                metrics.errors.labels("overloaded", "503").inc()
                return await _error(503, f"{self.inflight} requests in flight: retry later",
                                    {"Retry-After": "1"}, path, _content_type(scope))(scope, receive, send)
            if write:
                self.inflight += 1
                metrics.queue_depth.labels("inflight").set(self.inflight)
            try:
                endpoint = self.direct.get((method, path)) if not scope.get("root_path") else None
                if endpoint is None:
                    await self.app(scope, receive, send)
                else:
                    response = await endpoint(Request(scope, receive, send))
                    await response(scope, receive, send)
            finally:
                if write:
                    self.inflight -= 1
                    metrics.queue_depth.labels("inflight").set(self.inflight)
        finally:
            metrics.request_seconds.labels(label).observe(time.perf_counter() - t0)


def create_app(settings: ServeSettings, node: ServeNode | None = None,
               routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The node's FastAPI app (module docstring for mounting routes).

    ``node``: serve this node (tests build one with their own clock); None: the app
    builds it from ``settings`` at start-up, in the background (``/readyz`` is 503 and
    every other route 503 until its log is replayed). On shutdown the app drains the
    node: it refuses writes, closes the open window and closes the log.
    """
    tokens = load_tokens(settings.tokens_file) if settings.tokens_file is not None else None
    metrics = node.metrics if node is not None else ServeMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        builder = None
        if app.state.node is None:
            data_dir, temporary = resolve_data_dir(settings)
            app.state.data_dir, app.state.temporary = data_dir, temporary

            async def build():
                try:
                    app.state.node = await run_in_threadpool(ServeNode, settings, data_dir, metrics=metrics)
                except Exception as exc:        # say so: a node that cannot replay would look "starting" forever
                    log.exception("the node failed to start from %s", data_dir)
                    app.state.failed = one_line(f"{type(exc).__name__}: {exc}")
                    return
                log.info("node ready: %d log records replayed from %s", app.state.node.replayed, data_dir)

            builder = asyncio.create_task(build())
        ticker = asyncio.create_task(_close_windows(app)) if settings.close_windows else None
        try:
            yield
        finally:
            if ticker is not None:
                ticker.cancel()
            if builder is not None:
                with contextlib.suppress(Exception):
                    await builder
            if app.state.node is not None:
                await run_in_threadpool(_drain, app.state.node)

    app = FastAPI(title="swarmguard node", version=__version__, lifespan=lifespan,
                  description="One swarmguard node: behaviour vectors and observer evidence in, "
                              "anomalous agents out. Every error is {\"error\": \"<one line>\"}.")
    app.state.settings, app.state.tokens, app.state.metrics, app.state.node = settings, tokens, metrics, node
    app.state.failed = None            # why building the node failed (then /readyz says so)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.errors.labels(exc.code, str(exc.status)).inc()
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.errors.labels("http", str(exc.status_code)).inc()
        # on /v1/traces (a 405 for another method) the OTLP Status, as every error there
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None), request.url.path,
                      request.headers.get("content-type"))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid_parameter", "422").inc()
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        metrics.errors.labels("internal", "500").inc()
        log.exception("internal error on %s", request.url.path)
        # the exception's text stays in the node's log: it may hold paths or request content
        return _error(500, "internal error (the node's log has the details)", None, request.url.path,
                      request.headers.get("content-type"))

    dashboard, traces, direct = _optional_routers()
    # POST /v1/traces first: the router tries the included routers in order, each match costing
    # tens of microseconds, and the span ingest is the node's busiest route (0.15-0.2 ms of the
    # event loop's time per request saved; no other route's path can match /v1/traces)
    for router in (*traces, ops_router, ingest_router, query_router, peers_router, peer_state_router, dashboard,
                   *_REGISTERED, *routers):
        app.include_router(router)
    app.add_middleware(_ServeMiddleware, state=app.state, direct=direct)
    return app


def _optional_routers() -> tuple[APIRouter, list[APIRouter], dict]:
    """The dashboard (``GET /`` and ``/v1/dashboard/*``), ``POST /v1/traces`` (a list: empty
    unless ``opentelemetry-proto`` is installed) and its endpoint for the middleware's direct
    call (``{("POST", "/v1/traces"): post_traces}``; the route stays for the OpenAPI schema)."""
    from ..dashboard.routes import router as dashboard_router

    try:
        from ..otlp.traces import post_traces
        from ..otlp.traces import router as traces_router
    except ImportError:
        return dashboard_router, [], {}
    return dashboard_router, [traces_router], {("POST", "/v1/traces"): post_traces}


def _drain(node: ServeNode) -> None:
    outcomes = node.drain()
    if outcomes:
        log.info("closed the open window on shutdown: %s", json.dumps([o.agents for o in outcomes]))
    node.close()


async def _close_windows(app: FastAPI) -> None:
    """Close the open window whenever the node's clock passes its end."""
    settings: ServeSettings = app.state.settings
    tick = min(0.5, settings.window_seconds / 4)
    while True:
        await asyncio.sleep(tick)
        node = app.state.node
        # a log that needs a restart takes no close: trying at every tick would only log a 500
        if node is not None and node.state == "ready" and node.log.broken is None and node.window_due():
            try:
                await run_in_threadpool(node.close_window)
            except Exception:                        # keep ticking; the error is in the log
                log.exception("closing a window failed")
                app.state.metrics.errors.labels("window", "500").inc()
