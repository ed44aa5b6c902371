"""``POST /v1/traces``: OTLP/HTTP trace ingest into the node's ``spans`` population.

The route answers as the OTLP specification says, not with the node's ``{"error"}``
bodies: 200 with an ``ExportTraceServiceResponse`` (``partial_success`` when spans were
refused — a span naming no agent), or a ``google.rpc.Status`` in the request's encoding
with 400 (malformed: the client must not retry), 401/403 (token), 413 (over
``--max-body-bytes``, decompressed too, or more spans than a window holds), 408 (the body took
longer than ``body_timeout_seconds`` to arrive), 415 (content
type or encoding), 429 (the open window holds ``max_window_rows`` spans) and 503
(draining), both with ``Retry-After``; another method than POST is a 405 Status too (the
node's handler, :func:`swarmguard.apps.serve.app.create_app`).

:class:`SpanIngest` is the node's extension (:func:`swarmguard.apps.serve.node.node_extensions`):
each request's spans, as columns (:mod:`.spans`), are written to the node's durable log
(one record, committed and synced before the 200; requests in flight together share one
commit) and kept in a
:class:`~swarmguard.apps.otlp.window.WindowAggregator`; when the node closes its window,
the aggregator's behaviour vectors (``docs/otlp-features.md``) join the ``spans``
population's window and are scored in that window's round, apart from the
``/v1/behaviors`` population. A restart replays the span records and the closes in
order, so the vectors — and the tool history that ``novel_tool_share`` reads — come out
the same.
With ``--decode-workers N`` (``ServeSettings.decode_workers``) the body is decoded into
columns by one of N worker processes (:mod:`.decode_workers`), off the node's GIL, with the
same answers; the rest is the same.

An exporter that gets no answer (a timeout, a broken connection) sends the same batch again;
the OTLP specification accepts the duplicates this makes, but here they would double the
agents' counts in the window (an honest agent that reads as a burst). So a span whose
``(agent id, span id)`` is already in the open window or the one before it is acknowledged
and not counted again (its id is logged with it, so a restart still knows it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ...errors import (
    BodyTooLargeError,
    EvidenceStoreError,
    MalformedBodyError,
    UnsupportedMediaTypeError,
)
from ..serve.auth import authenticate
from ..serve.body import body_chunks
from ..serve.http_errors import ApiError, one_line
from .decode import (
    JSON,
    PROTOBUF,
    decode_export_request,
    encode_export_response,
    encode_status,
    encoding_of,
)
from .decode_workers import DecodeWorkers
from .features import FEATURE_NAMES
from .spans import SpanColumns, cohort_name, span_columns
from .window import WindowAggregator

__all__ = ["router", "SpanIngest", "SPANS_POPULATION", "SPANS_RECORD", "cohort_name", "span_keys"]

SPANS_POPULATION = "spans"      # = serve.node.SPANS_POPULATION (not imported: node imports this module)
SPANS_RECORD = "spans"          # the durable log's record kind
_FOREVER = 1e300                # the node's clock closes windows, not the aggregator's
_ID_COLUMNS = 10                # a span record's matrix: 10 quantities, then the span id's halves


def _usable_agent(name: str) -> bool:
    return 0 < len(name) <= 1000 and name.isprintable()


class SpanIngest:
    """The node's span state between a request and the window's close (module docstring)."""

    kinds = (SPANS_RECORD,)

    def __init__(self, node: Any) -> None:
        self.node = node
        self.aggregator = WindowAggregator(_FOREVER, clock=lambda: 0.0)
        # span_keys((agent id, span id)) of the open window's spans, and of the window before it:
        # an int rather than the tuple halves the sets (up to 2 x max_window_rows entries); the
        # key is 64-bit and salted per process, the sets are rebuilt at each start
        self._seen: set[int] = set()
        self._seen_before: set[int] = set()
        # the (agent id, span id) pairs behind those hashes, per record (names, agent codes, ids):
        # a snapshot carries the window before's pairs, since the hashes do not outlive the process
        self._ids: list[tuple[list[str], np.ndarray, np.ndarray]] = []
        self._ids_before: list[tuple[list[str], np.ndarray, np.ndarray]] = []
        self._last_seq = 0      # the last span record this node logged (live)
        self.duplicates = 0     # spans acknowledged as repeats of kept ones, since the node started
        # --decode-workers: started by start() (the node's constructor, before it serves)
        self.decoders: DecodeWorkers | None = None

    def start(self) -> None:
        """Start the decode workers, if any, and wait until they are ready (the node's
        constructor calls this once it has replayed: ``/readyz`` is 503 until then)."""
        count = self.node.settings.decode_workers
        if count and self.decoders is None:
            decoders = DecodeWorkers(count)
            try:
                decoders.wait_ready()
            except BaseException:
                decoders.close()
                raise
            self.decoders = decoders

    def stop(self) -> None:
        """Stop the decode workers (the node's close, after its drain)."""
        if self.decoders is not None:
            self.decoders.close()

    def columns(self, body: bytes, content_type: str | None, content_encoding: str | None,
                max_bytes: int) -> SpanColumns:
        """A request's body as span columns: in a decode worker, or in this thread."""
        if self.decoders is not None:
            return self.decoders.columns(body, content_type, content_encoding, max_bytes)
        return span_columns(decode_export_request(body, content_type, content_encoding, max_bytes).request)

    @property
    def pending_spans(self) -> int:
        return self.aggregator.pending_spans

    # ------------------------------------------------------------ live requests
    def accept(self, columns: SpanColumns) -> tuple[int, int, str, int]:
        """Log and keep a request's spans (read with fresh name tables); returns (accepted,
        rejected, message, repeats): a span already kept (a retried batch, module docstring)
        is acknowledged but not kept again, and counted in ``repeats``. Raises
        :class:`ApiError` 503 while draining or while the durable log refuses writes until a
        restart, 429 when the open window would hold more than
        ``max_window_rows`` spans; then nothing changed."""
        rejected, why = columns.rejected + columns.bad_tokens, []
        if columns.rejected:
            why.append(f"{columns.rejected} spans name no agent (neither gen_ai.agent.id nor service.instance.id)")
        if columns.bad_tokens:
            why.append(f"{columns.bad_tokens} spans with a token count that is no count "
                       "(negative, infinite or over 2**53)")
        bad_agents = [i for i, name in enumerate(columns.agents) if not _usable_agent(name)]
        if bad_agents:
            keep = ~np.isin(columns.agent, bad_agents)
            dropped = int((~keep).sum())
            columns = _rows(columns, keep)
            rejected += dropped
            why.append(f"{dropped} spans with an unusable agent id (over 1000 characters or unprintable)")
        message = "; ".join(why)
        node = self.node
        with node.lock:
            node._check_open()
            if node.log.broken is not None:
                # checked here, not only at the commit: the record would be numbered and its spans kept
                # in the window for a commit that never comes (the window fills with refused spans)
                raise ApiError(503, f"the node's durable log refuses writes until the node restarts: "
                                    f"{node.log.broken}", code="log_write_failed", headers={"Retry-After": "5"})
            repeat, keys = self._repeats(columns)
            duplicates = int(repeat.sum())
            if duplicates:
                columns = _rows(columns, ~repeat)
                keys = keys[~repeat]
            n = len(columns)
            if n:
                limit = node.settings.max_window_rows
                if n > limit:           # no window can hold it: a 429 would be retried forever
                    raise ApiError(413, f"the request holds {n} spans, more than a window holds "
                                        f"(--max-window-rows {limit}): send smaller batches", code="too_large")
                if self.pending_spans + n > limit:
                    raise ApiError(429, f"the open window holds {self.pending_spans} spans (limit {limit}): "
                                        "retry after it closes", code="overloaded",
                                   headers={"Retry-After": str(node._retry_after())})
                at = node.settings.clock()
                meta, matrix = _record(columns)
                self._last_seq = node.log.append_grouped(SPANS_RECORD, at, meta, matrix)
                # kept as the request's own columns, not read back from the record (what a
                # replay does): the same values, without the matrix's slices and casts, and
                # the span keys of _repeats rather than computed again
                sid = np.zeros(n, np.uint64) if columns.span_id is None else columns.span_id
                self._keep(at, meta["agents"], meta["cohorts"], meta["tools"], columns.agent, columns.cohort,
                           columns.tool, columns, sid, keys)
                node.metrics.queue_depth.labels("window_spans").set(self.pending_spans)
            self.duplicates += duplicates
            # the spans a repeat stands for may still wait for their group's commit: ack after it too
            seq = self._last_seq if (n or duplicates) else 0
        # durable before the 200: concurrent requests share one commit (one fsync)
        if seq:
            try:
                node.log.commit_through(seq)
            except EvidenceStoreError as exc:
                # not acknowledged: 503, which an exporter retries (a 500 it drops); the records
                # wait in memory for the next commit, and the retry repeats them (not kept twice)
                raise ApiError(503, f"the node's durable log cannot be written: {str(exc).rsplit(': ', 1)[-1]}",
                               code="log_write_failed", headers={"Retry-After": "5"}) from None
        return n, rejected, message, duplicates

    def _repeats(self, columns: SpanColumns) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows whose (agent id, span id) was kept in this window or the one before, or comes
        earlier in the same request (a retried batch); a span without an id is never one. And
        every row's :func:`span_keys` key (None: no row has an id; a row without one has a key
        that means nothing)."""
        repeat = np.zeros(len(columns), dtype=bool)
        if columns.span_id is None:
            return repeat, None
        rows = np.flatnonzero(columns.span_id != 0)
        if rows.size == 0:
            return repeat, None
        all_keys = span_keys(columns.agents, columns.agent, columns.span_id)
        agent, sid = columns.agent[rows], columns.span_id[rows]
        keys = all_keys if rows.size == len(columns) else all_keys[rows]
        listed = keys.tolist()
        # the usual request repeats nothing: two set intersections and one lexsort, in C
        kept = self._seen.intersection(listed) | self._seen_before.intersection(listed)
        if kept:
            # a key is 64 bits for 64 bits of span id plus an agent id: two spans may share one,
            # so a hit is confirmed against the kept (agent id, span id) pairs themselves
            hit = np.fromiter(kept, dtype=np.uint64, count=len(kept))
            pairs = self._kept_pairs(hit)
            names = columns.agents
            for i in np.flatnonzero(np.isin(keys, hit)).tolist():
                if (names[int(agent[i])], int(sid[i])) in pairs:
                    repeat[rows[i]] = True
        # the same span twice in one request: the first counts (exact: codes and ids compared;
        # lexsort is stable, so each run of equal pairs starts with the earliest)
        order = np.lexsort((sid, agent))
        same = (agent[order[1:]] == agent[order[:-1]]) & (sid[order[1:]] == sid[order[:-1]])
        repeat[rows[order[1:][same]]] = True
        return repeat, all_keys

    def _kept_pairs(self, hit: np.ndarray) -> set[tuple[str, int]]:
        """The kept (agent id, span id) pairs whose key is in ``hit`` (a request's few)."""
        out: set[tuple[str, int]] = set()
        for names, codes, sid in (*self._ids_before, *self._ids):
            has = np.flatnonzero(sid != 0)
            if has.size == 0 or not names:
                continue
            match = has[np.isin(span_keys(names, codes[has], sid[has]), hit)]
            out.update((names[a], s) for a, s in zip(codes[match].tolist(), sid[match].tolist(), strict=True))
        return out

    # ------------------------------------------------------------ the node's hooks
    def apply(self, record: Any) -> None:
        """One of this extension's log records (replay)."""
        self._apply(record.at, record.meta, record.matrix)

    def _apply(self, at: float, meta: dict[str, Any], matrix: np.ndarray) -> None:
        """A span record read back (replay): its matrix as columns, kept as a live request's are."""
        local = matrix[:, [0, 1, 3]].astype(np.int64)
        quantities = SpanColumns(
            agent=local[:, 0], cohort=local[:, 1], operation=matrix[:, 2].astype(np.int8), tool=local[:, 2],
            duration_s=matrix[:, 4].copy(), input_tokens=matrix[:, 5].copy(), output_tokens=matrix[:, 6].copy(),
            error=matrix[:, 7] != 0, content_filter=matrix[:, 8] != 0, length=matrix[:, 9] != 0)
        sid = None
        if matrix.shape[1] >= _ID_COLUMNS + 2:       # records written before span ids were logged have none
            sid = ((matrix[:, _ID_COLUMNS].astype(np.uint64) << np.uint64(32))
                   | matrix[:, _ID_COLUMNS + 1].astype(np.uint64))
        self._keep(at, meta["agents"], meta["cohorts"], meta["tools"], local[:, 0], local[:, 1], local[:, 2],
                   quantities, sid, None)

    def _keep(self, at: float, names: list[str], cohort_names: list, tool_names: list[str], agent: np.ndarray,
              cohort: np.ndarray, tool: np.ndarray, quantities: SpanColumns, sid: np.ndarray | None,
              keys: np.ndarray | None) -> None:
        """Keep one request's spans in the open window: ``agent`` / ``cohort`` / ``tool`` code
        into the request's own tables (``names``, ``cohort_names``, ``tool_names``; a tool of -1
        or ``len(tool_names)``: none), the other quantities from ``quantities``; ``sid`` the span
        ids (0: none; None: a record from before span ids were logged) and ``keys`` their
        :func:`span_keys` (None: computed here)."""
        agg = self.aggregator
        agents, cohorts, tools = agg.tables
        agent_codes = np.array([agents.code(a) for a in names], dtype=np.int64)
        cohort_codes = np.array([cohorts.code(tuple(c)) for c in cohort_names], dtype=np.int64)
        tool_codes = np.array([tools.code(t) for t in tool_names] + [-1], dtype=np.int64)
        columns = SpanColumns(
            agent=agent_codes[agent], cohort=cohort_codes[cohort], operation=quantities.operation,
            tool=tool_codes[tool],        # -1 and len(tool_names) -> the appended -1
            duration_s=quantities.duration_s, input_tokens=quantities.input_tokens,
            output_tokens=quantities.output_tokens, error=quantities.error,
            content_filter=quantities.content_filter, length=quantities.length,
            agents=agents.names, cohorts=cohorts.names, tools=tools.names)
        if sid is not None:
            has = sid != 0
            if keys is None:
                keys = span_keys(names, agent[has], sid[has])
            elif not has.all():
                keys = keys[has]
            self._seen.update(keys.tolist())
            self._ids.append((names, agent, sid))
        agg.add_columns(columns, now=0.0)
        self.node.open_window(at)

    def before_close(self, at: float) -> None:
        """The open window's spans become the ``spans`` population's vectors of this window."""
        self._seen_before, self._seen = self._seen, set()
        self._ids_before, self._ids = self._ids, []
        if self.pending_spans == 0:
            return
        window = self.aggregator.close(now=0.0)
        if window.agent_ids.size == 0:
            return
        names: dict[tuple[str, ...], str] = {}     # a few cohorts for many agents: each named once
        for c in window.cohorts:
            if c not in names:
                names[c] = cohort_name(c)
        meta = {"population": SPANS_POPULATION, "agents": window.agent_ids.tolist(),
                "cohorts": [names[c] for c in window.cohorts], "d": window.features.shape[1],
                "feature_names": list(FEATURE_NAMES)}
        self.node._apply_behaviors(at, meta, window.features)
        self.node.metrics.queue_depth.labels("window_spans").set(0)


    # ------------------------------------------------------------ snapshots (serve.snapshot)
    def export_state(self) -> dict[str, Any]:
        """The state this extension carries between windows (taken between windows, under the
        node's lock): the aggregator's (:meth:`WindowAggregator.export_state`) and the span
        ids of the window before (``seen_agents``, ``seen_ids``), which repeats are checked
        against."""
        agents: list[str] = []
        ids = []
        for names, codes, sid in self._ids_before:
            keep = sid != 0
            agents += [names[a] for a in codes[keep].tolist()]
            ids.append(sid[keep])
        return {"aggregator": self.aggregator.export_state(), "seen_agents": agents,
                "seen_ids": np.concatenate(ids) if ids else np.zeros(0, np.uint64)}

    def import_state(self, state: dict[str, Any]) -> None:
        """Take :meth:`export_state`'s state (a node restarting from its snapshot)."""
        self.aggregator.import_state(state["aggregator"])
        agents = [str(a) for a in state["seen_agents"]]
        sid = np.asarray(state["seen_ids"], dtype=np.uint64)
        self._seen, self._ids = set(), []
        if len(agents) != sid.size:
            raise ValueError(f"a snapshot's span ids: {len(agents)} agents for {sid.size} ids")
        self._seen_before = set(span_keys(agents, np.arange(len(agents), dtype=np.int64), sid).tolist())
        self._ids_before = [(agents, np.arange(len(agents), dtype=np.int64), sid)] if agents else []


_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def span_keys(names: list[str], agent: np.ndarray, span_id: np.ndarray) -> np.ndarray:
    """One 64-bit key per (agent id, span id): the agent's name hashed by Python's ``hash``
    (salted per process), XOR the span id through SplitMix64's finalizer (a bijection, so one
    agent's distinct ids never share a key; two agents' keys may meet, so a key is only a
    filter: :meth:`SpanIngest._repeats` confirms a hit on the pairs). ``names[agent[i]]`` is
    row i's agent id; keys live only in this process's sets (rebuilt at each start from the
    log or the snapshot).

    >>> k = span_keys(["a", "b"], np.array([0, 1, 0]), np.array([7, 7, 8], dtype=np.uint64))
    >>> len(set(k.tolist())), k.dtype.name
    (3, 'uint64')
    """
    salted = np.array([hash(n) for n in names], dtype=np.int64).view(np.uint64)
    z = np.asarray(span_id, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return salted[np.asarray(agent, dtype=np.int64)] ^ z ^ (z >> np.uint64(31)) if len(names) else z[:0]


def _rows(columns: SpanColumns, keep: np.ndarray) -> SpanColumns:
    return SpanColumns(**{name: getattr(columns, name)[keep] for name in (
        "agent", "cohort", "operation", "tool", "duration_s", "input_tokens", "output_tokens", "error",
        "content_filter", "length")}, agents=columns.agents, cohorts=columns.cohorts, tools=columns.tools,
        rejected=columns.rejected, bad_tokens=columns.bad_tokens,
        span_id=None if columns.span_id is None else columns.span_id[keep])


def _record(columns: SpanColumns) -> tuple[dict[str, Any], np.ndarray]:
    """A request's spans as one log record: its own name tables in ``meta``, codes into them
    (a tool of -1 becomes ``len(tools)``) and the quantities in a float matrix, then each
    span id as two 32-bit halves (exact in float64; 0: no id)."""
    tool = np.where(columns.tool < 0, len(columns.tools), columns.tool)
    sid = np.zeros(len(columns), np.uint64) if columns.span_id is None else columns.span_id.astype(np.uint64)
    matrix = np.column_stack([columns.agent, columns.cohort, columns.operation, tool, columns.duration_s,
                              columns.input_tokens, columns.output_tokens, columns.error,
                              columns.content_filter, columns.length,
                              sid >> np.uint64(32), sid & np.uint64(0xFFFFFFFF)]).astype(np.float64)
    meta = {"rows": len(columns), "d": matrix.shape[1], "agents": list(columns.agents),
            "cohorts": [list(c) for c in columns.cohorts], "tools": list(columns.tools)}
    return meta, matrix


def _ingest_of(node: Any) -> SpanIngest:
    for extension in node.extensions:
        if isinstance(extension, SpanIngest):
            return extension
    raise ApiError(503, "this node has no span ingest", code="no_span_ingest")


# ---------------------------------------------------------------- the route
router = APIRouter(tags=["ingest"])

_RESPONSES = {
    200: {"description": "an ExportTraceServiceResponse (partial_success when spans were refused)"},
    400: {"description": "malformed body (google.rpc.Status; do not retry)"},
    401: {"description": "missing or unknown token"}, 403: {"description": "a role that may not ingest"},
    408: {"description": "the body took longer than body_timeout_seconds to arrive"},
    413: {"description": "over --max-body-bytes (decompressed too), or more spans than --max-window-rows"},
    415: {"description": "not application/x-protobuf or application/json, or an encoding other than gzip"},
    429: {"description": "the open window is full (Retry-After)"},
    503: {"description": "shutting down, the durable log cannot be written, or the decode worker died "
                        "(Retry-After)"},
}


def _answer(encoding: str, status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, headers=headers,
                    media_type=JSON if encoding == "json" else PROTOBUF)


async def _read(request: Request, limit: int, timeout: float) -> bytes:
    """The body as sent (still encoded), at most ``limit`` bytes, all of it within ``timeout``
    seconds (408 past it: a trickling client would hold a write slot forever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):     # isdigit() alone lets "²" reach int()
            raise MalformedBodyError("Content-Length is not a number")
        if int(declared) > limit:
            raise BodyTooLargeError(f"the request body is {declared} bytes, over the limit of {limit}", limit)
    chunks, size = [], 0
    async for chunk in body_chunks(request, timeout):
        size += len(chunk)
        if size > limit:                      # refused as it streams (a chunked upload)
            raise BodyTooLargeError(f"the request body passes the limit of {limit} bytes", limit)
        chunks.append(chunk)
    return b"".join(chunks)


_STATUS_OF = ((BodyTooLargeError, 413, "too_large"), (UnsupportedMediaTypeError, 415, "bad_content_type"),
              (MalformedBodyError, 400, "malformed_body"))


@router.post("/v1/traces", responses=_RESPONSES, summary="OTLP/HTTP trace export (protobuf or JSON)")
async def post_traces(request: Request) -> Response:
    """Spans as an OTLP ``ExportTraceServiceRequest`` (``application/x-protobuf`` or
    ``application/json``, optionally gzip): an ``ingest`` token's; acknowledged once durable.
    Grouped per agent (``gen_ai.agent.id``, else ``service.instance.id``) into the open
    window; its close scores the window's behaviour vectors (``docs/otlp-features.md``)."""
    settings, metrics = request.app.state.settings, request.app.state.metrics
    content_type = request.headers.get("content-type")
    encoding = "json" if (content_type or "").split(";")[0].strip().lower() == JSON else "protobuf"
    try:
        credential = authenticate(request)
        if not credential.may("ingest"):
            raise ApiError(403, f"role {credential.role!r} may not ingest", code="forbidden")
        node = request.app.state.node
        ingest = _ingest_of(node)
        encoding_of(content_type)            # a wrong type is refused before the body is read
        body = await _read(request, settings.max_body_bytes, settings.body_timeout_seconds)

        def work() -> tuple[int, int, str, int]:
            return ingest.accept(ingest.columns(body, content_type, request.headers.get("content-encoding"),
                                                settings.max_body_bytes))

        accepted, rejected, message, repeats = await run_in_threadpool(work)
    except ApiError as exc:
        metrics.errors.labels(exc.code, str(exc.status)).inc()
        return _answer(encoding, exc.status, encode_status(encoding, exc.status, exc.message), exc.headers)
    except (BodyTooLargeError, UnsupportedMediaTypeError, MalformedBodyError) as exc:
        status, code = next((s, c) for cls, s, c in _STATUS_OF if isinstance(exc, cls))
        metrics.errors.labels(code, str(status)).inc()
        return _answer(encoding, status, encode_status(encoding, status, one_line(exc)))
    metrics.accepted.labels("spans").inc(accepted)
    metrics.accepted.labels("spans_repeated").inc(repeats)      # acknowledged, not counted again
    metrics.refused.labels("spans").inc(rejected)
    return _answer(encoding, 200, encode_export_response(encoding, rejected, one_line(message)))
