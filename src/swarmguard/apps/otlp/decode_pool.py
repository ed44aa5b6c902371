"""``swarmguard serve --decode-workers N``: decode OTLP bodies into span columns in worker processes.

The node's Python work is bound by one GIL; decoding a request (``FromString``) and reading its
spans into columns (:func:`~swarmguard.apps.otlp.spans.span_columns`) is about half of it. A
:class:`DecodePool` runs those two steps in ``N`` worker processes (``spawn``: no fork of a
process with threads), so they run beside the node's own work (the listener, the repeat check,
the durable log's commit) on another core. A worker returns the request's
:class:`~swarmguard.apps.otlp.spans.SpanColumns`, whose codes index the request's own name
lists; the node maps them to its name tables and proceeds as without workers (repeat check,
log record, group commit, 200 only after the commit).

What a worker sends back is the columns, or a decoding error as a tag (the error's kind, its
message, the size limit), raised again here as the same typed error: the route answers the
same 400 / 413 / 415 as in-thread decoding.

A worker that dies (``BrokenProcessPool``) changes nothing in the node: the request has not
reached the node's state yet, so it is answered 503 with ``Retry-After`` (an OTLP exporter
retries it) and the pool is started again. Workers leave the node's process group (a SIGTERM
or Ctrl-C sent to the group reaches the node, which drains and then shuts the pool down) and
exit when the node's process ends, however it ends (``kill -9`` included): each watches its
parent's sentinel.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ...errors import BodyTooLargeError, MalformedBodyError, UnsupportedMediaTypeError
from ..serve.http_errors import ApiError
from .decode_worker import OK, decode_columns, init_worker
from .spans import SpanColumns

__all__ = ["DecodePool"]

_ERRORS = {"malformed": MalformedBodyError, "media_type": UnsupportedMediaTypeError, "too_large": BodyTooLargeError}


def _columns_of(answer: tuple) -> SpanColumns:
    if answer[0] == OK:
        return answer[1]
    kind, message, limit = answer
    if kind == "too_large":
        raise BodyTooLargeError(message, limit)
    raise _ERRORS[kind](message)


class DecodePool:
    """``workers`` processes decoding OTLP bodies into span columns (module docstring).

    :meth:`start` starts them (and waits until each has imported the decoder), :meth:`columns`
    decodes one body, :meth:`shutdown` stops them. ``restarts`` counts pools started again
    after a worker died."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a decode pool needs at least one worker, got {workers}")
        self.workers = workers
        self.restarts = 0
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker)

    def start(self) -> None:
        """Start the workers and wait for each to be ready (blocking: call it from a thread)."""
        with self._lock:
            if self._executor is None:
                self._executor = self._new_executor()
            executor = self._executor
        for f in [executor.submit(os.getpid) for _ in range(self.workers)]:
            f.result(timeout=120)

    def pids(self) -> list[int]:
        """The worker processes' ids (tests)."""
        executor = self._executor
        return [] if executor is None else [p.pid for p in list((executor._processes or {}).values())]

    def submit(self, body: bytes, content_type: str | None, content_encoding: str | None,
               max_bytes: int) -> tuple[ProcessPoolExecutor, Future]:
        """Hand one body to a worker: the executor it went to and its future."""
        with self._lock:
            if self._executor is None:
                raise ApiError(503, "the node's decode workers are stopped", code="decode_workers_down",
                               headers={"Retry-After": "1"})
            executor = self._executor
        try:
            return executor, executor.submit(decode_columns, body, content_type, content_encoding, max_bytes)
        except BrokenProcessPool:
            self._restart(executor)
            raise self._broken() from None
        except RuntimeError:         # shut down (the node is draining)
            raise ApiError(503, "the node's decode workers are stopped", code="decode_workers_down",
                           headers={"Retry-After": "1"}) from None

    async def columns(self, body: bytes, content_type: str | None, content_encoding: str | None,
                      max_bytes: int) -> SpanColumns:
        """The body's span columns, decoded in a worker. Raises the typed decoding errors as
        :func:`~swarmguard.apps.otlp.decode.decode_export_request` does, and :class:`ApiError`
        503 (``Retry-After``) when the worker died (the pool is started again) or the pool is
        stopped."""
        executor, future = self.submit(body, content_type, content_encoding, max_bytes)
        try:
            answer = await asyncio.wrap_future(future)
        except BrokenProcessPool:
            await asyncio.get_running_loop().run_in_executor(None, self._restart, executor)
            raise self._broken() from None
        return _columns_of(answer)

    @staticmethod
    def _broken() -> ApiError:
        return ApiError(503, "a decode worker died; nothing of this request was kept: retry",
                        code="decode_worker_died", headers={"Retry-After": "1"})

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        """Replace ``broken`` by a new pool, once however many requests saw it break."""
        with self._lock:
            if self._executor is not broken:
                return
            self._executor = self._new_executor()
            self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        """Stop the workers (their queued work is cancelled) and wait for them to exit."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

