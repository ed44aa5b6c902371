"""``POST /v1/behaviors`` and ``POST /v1/evidence``: JSON Lines (and Arrow) in, durable, counted."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .auth import requires
from .body import media_type, read_body
from .http_errors import ApiError
from .node import BEHAVIORS_POPULATION, IngestResult
from .records import (
    ARROW_STREAM_TYPE,
    JSON_LINES_TYPES,
    parse_behavior_arrow,
    parse_behavior_lines,
    parse_evidence_lines,
)
from .tokens import Credential

__all__ = ["router"]

router = APIRouter(tags=["ingest"])

_INGEST = Depends(requires("ingest"))
_EVIDENCE = Depends(requires("evidence"))

_RESPONSES = {200: {"description": "`{\"accepted\": n, \"rejected\": m, \"errors\": [{\"line\", \"error\"}]}`"},
              400: {"description": "no line accepted, or an unreadable body"},
              401: {"description": "missing or unknown token"}, 403: {"description": "wrong role"},
              408: {"description": "the body took longer than body_timeout_seconds to arrive"},
              413: {"description": "over --max-body-bytes (decompressed too), or more vectors than the window holds"},
              415: {"description": "unsupported Content-Type or Content-Encoding"},
              429: {"description": "the open window is full (Retry-After)"},
              503: {"description": "overloaded, shutting down, or the durable log cannot be written (Retry-After)"}}


def _answer(result: IngestResult, kind: str) -> JSONResponse:
    """200 with the counts; 400 when lines came and none was accepted (nothing changed)."""
    if result.accepted == 0 and result.rejected:
        first = result.errors[0]
        where = f"line {first.line}: " if first.line else ""
        raise ApiError(400, f"no {kind} accepted ({result.rejected} refused); {where}{first.error}",
                       code=f"rejected_{kind}")
    return JSONResponse(result.to_dict())


@router.post("/v1/behaviors", responses=_RESPONSES, summary="Post behaviour vectors")
async def post_behaviors(request: Request, credential: Credential = _INGEST) -> JSONResponse:
    """JSON Lines (``application/x-ndjson`` or ``application/jsonl``) of
    ``{"agent_id", "features": [...], "timestamp"?, "cohort"?}``, or an Arrow IPC stream
    (``application/vnd.apache.arrow.stream``). Acknowledged once durable; the vectors count in
    the open window (an agent's last vector of a window is the one scored)."""
    node = request.app.state.node
    kind = media_type(request.headers.get("content-type"))
    if kind not in (*JSON_LINES_TYPES, ARROW_STREAM_TYPE):
        raise ApiError(415, f"Content-Type must be application/x-ndjson, application/jsonl or "
                            f"{ARROW_STREAM_TYPE}, got {kind or 'none'!r}", code="bad_content_type")
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    parse = parse_behavior_arrow if kind == ARROW_STREAM_TYPE else parse_behavior_lines

    def work() -> IngestResult:
        batch = parse(body, node.dimension(BEHAVIORS_POPULATION))
        return node.accept_behaviors(batch, BEHAVIORS_POPULATION)

    return _answer(await run_in_threadpool(work), "behaviours")


@router.post("/v1/evidence", responses=_RESPONSES, summary="Post observer evidence")
async def post_evidence(request: Request, credential: Credential = _EVIDENCE) -> JSONResponse:
    """JSON Lines of ``{"evidence_id", "agent_id", "evidence_type", "log_odds", "confidence",
    "timestamp"}``; the ``source_node`` is the token's source (a line naming another is refused
    alone). Acknowledged once durable."""
    node = request.app.state.node
    if credential.source is None:
        raise ApiError(403, "this credential has no source: evidence needs an observer (or admin) "
                            "token with source = \"...\"", code="forbidden")
    kind = media_type(request.headers.get("content-type"))
    if kind not in JSON_LINES_TYPES:
        raise ApiError(415, f"Content-Type must be application/x-ndjson or application/jsonl, "
                            f"got {kind or 'none'!r}", code="bad_content_type")
    body = await read_body(request, request.app.state.settings.max_body_bytes)

    def work() -> IngestResult:
        return node.accept_evidence(parse_evidence_lines(body, credential.source))

    return _answer(await run_in_threadpool(work), "evidence")
