"""``DecodeWorkers``: OTLP trace bodies to span columns in worker processes (``serve --decode-workers N``).

In the node, ``ExportTraceServiceRequest.FromString`` and :func:`~.spans.span_columns` are
about half of its CPU a span, and they run under the GIL in its threadpool. With
``--decode-workers N`` each request's body goes, still as sent (gzip included: the worker
inflates it, under the same decompressed-size limit), to one of N worker processes, which
decodes it and returns its :class:`~.spans.SpanColumns`; the node then keeps them as it does
in-thread (repeat check, log record, group commit, the 200 after it).

How, and why so:

- One Unix socket pair per worker, framed by ``multiprocessing.connection.Connection``.
  A request's thread takes the worker with the fewest requests in flight (at most two: one
  it decodes, the next already in its socket, so it never waits for a node thread to get
  the GIL back), writes two frames (a small pickled header, then the body's bytes as they
  are: no copy, no pickling), then blocks in ``recv_bytes`` (the GIL released) when its
  reply's turn comes (a worker answers in the order it was written to). ``concurrent.futures``'
  ``ProcessPoolExecutor`` would add, for each request, a pickled call item, its feeder thread
  and its result-management thread waking up in the node (each one taking the GIL the node is
  short of) and a lock-protected result queue: hops this design does not have.
- The answer is one pickle (protocol 5) of the columns: NumPy arrays as they are (buffers,
  not Python lists) and the small name tables (a request's agents, cohorts, tools). Its
  arrays are the in-thread ones, same dtypes, so the node's code after it is the same.
- Errors the in-thread path raises (400 malformed, 413 too large, 415) come back as the same
  exceptions; any other exception in the worker as a :class:`RuntimeError` (a 500, as
  in-thread). A worker that dies (crash, OOM kill) closes its end of the socket: the request
  waiting on it gets :class:`ApiError` 503 with ``Retry-After`` (nothing was kept or logged,
  so the exporter's retry is a first delivery) and a new worker takes its place. So does one
  that has not begun a reply ``_REPLY_TIMEOUT_S`` (60 s) after its turn came (stopped, swapping):
  it is killed first. Any other exception while a request is written or read takes the worker
  for lost as well (its stream may hold half a frame), so that the requests queued behind it
  still get their turn. When no worker can take the place (``_Worker()`` fails: out of file
  handles; or the new worker dies before its hello: a broken install), the requests meanwhile
  go to the workers left, or are 503 ``decode_worker_unavailable`` at once when none is, and
  one start is tried again ``_RESTART_DELAY_S`` after the failure, by the next request (not by
  each one: no loop of failing starts), until there are ``count`` workers again.
- A worker never outlives the node: its only link is the socket, so when the node exits, even
  by ``kill -9``, its next read of the socket sees end-of-file and it exits. Workers ignore SIGINT and
  SIGTERM (a Ctrl-C or a ``kill`` of the node's process group reaches them too): the node
  drains first, using them, and closes their sockets last (:meth:`DecodeWorkers.close`).
- A worker is a fresh interpreter (``python -c``, this swarmguard first on its path, its end
  of the socket pair passed as a file descriptor): none of the node's threads or locks
  inherited, and unlike ``multiprocessing``'s ``spawn`` it does not import the node's
  ``__main__`` again (a script without a ``__main__`` guard would fail) nor start a resource
  tracker. They start before the node answers ``/readyz`` 200 (:meth:`DecodeWorkers.wait_ready`).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import BodyTooLargeError, MalformedBodyError, UnsupportedMediaTypeError
from .spans import SpanColumns

if TYPE_CHECKING:
    from ..serve.http_errors import ApiError

__all__ = ["DecodeWorkers"]

log = logging.getLogger(__name__)
_OK, _TOO_LARGE, _UNSUPPORTED, _MALFORMED, _FAILED = range(5)
_READY = b"ready"
_FIELDS = tuple(f.name for f in fields(SpanColumns))
_SOURCE = str(Path(__file__).resolve().parents[3])     # the folder swarmguard is imported from
_START_TIMEOUT_S = 120.0      # a cold interpreter importing protobuf and NumPy on a loaded machine
# a reply not begun this long after its turn came: the worker is taken for hung (stopped,
# swapping), killed and replaced, and its requests are 503s; without it one such worker held
# its requests, then (every later one waiting for a worker) the node's threadpool, /readyz
# included, until a SIGTERM's graceful timeout. A 512-span request decodes in about 3 ms, a
# 30 MB one in about 1 s (review probe, one worker)
_REPLY_TIMEOUT_S = 60.0
# requests in flight per worker: one it decodes, one waiting in its socket, so that it never
# waits for a node thread to get the GIL back before it can start the next one
_DEPTH = 2
# no worker running and the last start failed (out of file handles, a broken interpreter): the
# requests meanwhile are 503s at once, and a new start is tried by the first request this long
# after the failure, not by every request (a hot loop of failing starts)
_RESTART_DELAY_S = 1.0
_now = time.monotonic        # the restart delay's clock (a test moves its own)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500]


def _unavailable(message: str, code: str, retry_after: int) -> ApiError:
    """A 503 with ``Retry-After``. Imported here, not at the top: a worker imports this module,
    and ``swarmguard.apps.serve`` (FastAPI and the rest) would double its start-up time."""
    from ..serve.http_errors import ApiError

    return ApiError(503, message, code=code, headers={"Retry-After": str(retry_after)})


def _reply_of(header: bytes, body: bytes) -> bytes:
    """One request's answer, in the worker: the columns (pickle protocol 5) or the error."""
    from .decode import decode_export_request
    from .spans import span_columns

    content_type, content_encoding, max_bytes = pickle.loads(header)
    try:
        columns = span_columns(decode_export_request(body, content_type, content_encoding, max_bytes).request)
        reply: tuple = (_OK, tuple(getattr(columns, name) for name in _FIELDS))
    except BodyTooLargeError as exc:
        reply = (_TOO_LARGE, str(exc), exc.limit)
    except UnsupportedMediaTypeError as exc:
        reply = (_UNSUPPORTED, str(exc))
    except MalformedBodyError as exc:
        reply = (_MALFORMED, str(exc))
    except Exception as exc:          # the in-thread path would answer 500: so does this one
        reply = (_FAILED, f"{type(exc).__name__}: {_one_line(exc)}")
    return pickle.dumps(reply, protocol=5)


def worker_main(fd: int) -> None:
    """A worker's loop over its end of the socket pair (file descriptor ``fd``): one request
    (header frame, body frame) in, one reply out, until the node's end closes (the node
    stopped it, or died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # the node drains with us, then closes the socket
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from . import decode, spans  # noqa: F401  (imported before "ready": the first request pays nothing)

    conn = Connection(fd)
    try:
        conn.send_bytes(_READY)
        while True:
            header = conn.recv_bytes()
            body = conn.recv_bytes()
            conn.send_bytes(_reply_of(header, body))
    except (EOFError, OSError):          # the node closed its end or is gone
        return


class _Worker:
    """One worker process and the node's end of its socket pair; ``ready``: its hello was read."""

    __slots__ = ("process", "conn", "ready", "sending", "turn", "sent", "answered", "outstanding", "broken")

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        fd = theirs.fileno()
        # -P: not the current directory first on its path (the node, a console script, does
        # not have it: a numpy.py or pickle.py there would be imported by the worker alone)
        code = (f"import sys; sys.path.insert(0, {_SOURCE!r}) if {_SOURCE!r} not in sys.path else None; "
                f"from swarmguard.apps.otlp.decode_workers import worker_main; worker_main({fd})")
        try:
            self.process = subprocess.Popen([sys.executable, "-P", "-c", code], pass_fds=(fd,), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()       # only the worker holds its end: its death is our end-of-file
        self.conn = Connection(ours.detach())
        self.ready = False
        # requests are pipelined: each sender takes a ticket (the order it wrote in) and reads
        # the reply of that ticket when its turn comes (the worker answers in order)
        self.sending = threading.Lock()
        self.turn = threading.Condition()
        self.sent = self.answered = 0
        self.outstanding = 0     # requests written and not yet answered (DecodeWorkers._lock)
        self.broken = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        if not self.ready:
            try:
                hello = self.conn.poll(_START_TIMEOUT_S)
                said = self.conn.recv_bytes() if hello else None
            except EOFError:        # its socket ended: it exited (or closed it), say how
                raise EOFError(self.exit_reason()) from None
            if said is None:        # still running, silent: not an exit (a kill after it is ours)
                raise EOFError(f"no hello within {_START_TIMEOUT_S:g} s (the worker still ran)")
            if said != _READY:
                raise EOFError("the decode worker said something else than ready")
            self.ready = True

    def exit_reason(self) -> str:
        """Why the worker's socket ended before its hello: its exit code (its traceback, if
        any, went to the node's stderr, which the worker shares), or that it still runs."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)      # it closed the socket: it is exiting, give it the time
        code = self.process.returncode
        if code is None:
            return "it closed its socket before saying ready but still runs"
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
               else f"exit code {code}")
        return f"it exited before saying ready ({how}; its error, if any, is on the node's stderr above)"

    def reap(self, timeout: float) -> None:
        """Close our end (the worker's next read is end-of-file: it exits) and wait for it;
        killed past ``timeout``."""
        self.conn.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)


class DecodeWorkers:
    """``count`` worker processes that turn OTLP trace bodies into :class:`SpanColumns`
    (module docstring). :meth:`columns` is called from the node's request threads, any
    number at once; each call holds one worker while it decodes."""

    def __init__(self, count: int) -> None:
        # imported here: a worker does not import serve (FastAPI: its start-up time doubled)
        from ..serve.settings import MAX_DECODE_WORKERS

        if not 1 <= count <= MAX_DECODE_WORKERS:
            raise ValueError(f"decode workers: 1 to {MAX_DECODE_WORKERS}, got {count}")
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)      # a worker has room for one more request
        self._closed = False
        self._workers: list[_Worker] = []
        self._count = count      # the workers there should be: _take starts those missing
        self.replaced = 0        # workers that died and were replaced
        self._starting = 0       # replacements being started (_lost): _take waits for them
        self._start_error: str | None = None     # why the last start failed (None: it did not)
        self._retry_at = 0.0     # _now() from which _take may try a start again
        try:
            for _ in range(count):
                worker = _Worker()
                with self._lock:
                    self._workers.append(worker)
        except BaseException:
            self.close()         # those already started: none left running
            raise

    def _take(self) -> _Worker:
        """The worker with the fewest requests in flight (waits while each has ``_DEPTH``);
        first, one start of a missing worker (a start failed) once ``_RESTART_DELAY_S`` has
        passed since the failure."""
        with self._lock:
            while True:
                if self._closed:
                    raise _unavailable("the node is shutting down", "draining", 5)
                # a broken worker still listed is not missing: its request's _lost replaces it
                # (a start here too would leave more workers than count)
                if len(self._workers) + self._starting < self._count and _now() >= self._retry_at:
                    self._start()
                live = [w for w in self._workers if not w.broken]
                if live:
                    worker = min(live, key=lambda w: w.outstanding)
                    if worker.outstanding < _DEPTH:
                        worker.outstanding += 1
                        return worker
                elif not self._workers and not self._starting:     # none left, none coming
                    raise _unavailable(f"no decode worker is running: {self._start_error}; retry",
                                       "decode_worker_unavailable", 1)
                self._freed.wait()

    def _start(self) -> bool:
        """Start a worker into the pool (hold ``_lock``); False, the failure noted, when it
        cannot be (a worker that dies before its hello is noted by :meth:`_lost`)."""
        try:
            self._workers.append(_Worker())
        except Exception as exc:        # EMFILE, ENOMEM, no interpreter: say so, try again later
            self._failed_start(f"a decode worker could not be started: {type(exc).__name__}: {_one_line(exc)}")
            return False
        self._freed.notify_all()
        return True

    def _failed_start(self, why: str) -> None:
        """Note why a start failed (hold ``_lock``): no new start before ``_RESTART_DELAY_S``."""
        log.error("%s (the next start is tried by a request in %g s)", why, _RESTART_DELAY_S)
        self._start_error = why
        self._retry_at = _now() + _RESTART_DELAY_S
        self._freed.notify_all()        # those waiting for a worker: none is coming, answer 503

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            worker.outstanding -= 1
            self._freed.notify()

    @property
    def pids(self) -> list[int]:
        """The workers' process ids (those started so far)."""
        with self._lock:
            return [w.pid for w in self._workers]

    def wait_ready(self) -> None:
        """Wait until every worker has started (imported what it decodes with); raises
        :class:`RuntimeError` when one cannot."""
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            try:
                worker.wait_ready()
            except (EOFError, OSError) as exc:
                raise RuntimeError(f"a decode worker (pid {worker.pid}) did not start: "
                                   f"{_one_line(exc) or type(exc).__name__}") from None

    def columns(self, body: bytes, content_type: str | None, content_encoding: str | None,
                max_bytes: int) -> SpanColumns:
        """``span_columns(decode_export_request(body, content_type, content_encoding,
        max_bytes).request)``, computed by a worker: the same columns, or the same
        exceptions (:class:`MalformedBodyError`, :class:`BodyTooLargeError`,
        :class:`UnsupportedMediaTypeError`); :class:`ApiError` 503 when the worker died
        on it (replaced) or the workers are stopped."""
        worker = self._take()
        try:
            reply = self._exchange(worker, body, pickle.dumps((content_type, content_encoding, max_bytes),
                                                               protocol=5))
        except BaseException:
            self._give_back(worker)
            if worker.broken:    # taken out, as below: _take waits for a listed broken worker's _lost
                self._lost(worker)
            raise
        self._give_back(worker)
        if reply is None:
            replaced = self._lost(worker)
            raise _unavailable("the worker decoding this request died (or hung: killed); "
                               f"{'it was replaced' if replaced else 'none could take its place yet'}: retry",
                               "decode_worker_lost", 1)
        kind = reply[0]
        if kind == _OK:
            return SpanColumns(**dict(zip(_FIELDS, reply[1], strict=True)))
        if kind == _TOO_LARGE:
            raise BodyTooLargeError(reply[1], reply[2])
        if kind == _UNSUPPORTED:
            raise UnsupportedMediaTypeError(reply[1])
        if kind == _MALFORMED:
            raise MalformedBodyError(reply[1])
        raise RuntimeError(f"decode worker: {reply[1]}")

    @staticmethod
    def _exchange(worker: _Worker, body: bytes, header: bytes) -> tuple | None:
        """Write one request to ``worker`` and read its reply in turn; None: the worker is gone.

        Any failure of the exchange (not only the socket's OSError and EOFError) takes the
        worker for lost: a frame may be half written, so its stream can no longer be trusted;
        the request is a 503 (nothing was kept, a retry goes to another worker), an exception
        that is not the socket's logged with its traceback (it would be this module's bug).
        Whatever happens, the ticket's turn ends (``answered``): the requests after it on
        this worker would wait for it forever."""
        with worker.sending:
            ticket = worker.sent
            worker.sent += 1
            try:
                if not worker.broken:
                    worker.conn.send_bytes(header)
                    worker.conn.send_bytes(body)
            except OSError:
                worker.broken = True
            except Exception:
                worker.broken = True
                log.exception("writing a request to decode worker %d failed: taken for lost", worker.pid)
            except BaseException:
                worker.broken = True     # this ticket is never answered: those after it stop waiting
                with worker.turn:
                    worker.turn.notify_all()
                raise
        with worker.turn:
            blob = None
            try:
                while worker.answered != ticket and not worker.broken:
                    worker.turn.wait()
                if not worker.broken:
                    try:
                        worker.wait_ready()
                        if not worker.conn.poll(_REPLY_TIMEOUT_S):
                            raise EOFError("no reply within the reply timeout")
                        blob = worker.conn.recv_bytes()
                    except (EOFError, OSError):
                        worker.broken = True
                    except Exception:
                        worker.broken = True
                        log.exception("reading a reply from decode worker %d failed: taken for lost", worker.pid)
            except BaseException:
                worker.broken = True     # e.g. interrupted in wait(): the stream's state is unknown
                raise
            finally:
                worker.answered += 1
                worker.turn.notify_all()
        return None if blob is None else pickle.loads(blob)

    def _lost(self, worker: _Worker) -> bool:
        """A worker whose socket broke: reaped, and replaced unless the workers are stopping
        (once, by the first of its requests to see it); True when a replacement runs. One that
        died before its hello is not replaced at once (it would die the same way: a broken
        install), nor one whose replacement cannot start: :meth:`_take` tries again later."""
        with self._lock:
            if worker not in self._workers:
                return bool(self._workers)
            self._workers.remove(worker)
            self._starting += 1
        try:
            return self._replace(worker)
        finally:
            with self._lock:
                self._starting -= 1
                self._freed.notify_all()

    def _replace(self, worker: _Worker) -> bool:
        if worker.process.poll() is None:     # a broken socket (or no reply) with the process still up
            worker.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):     # not a 500: Popen reaps it later
            worker.process.wait(5)
        # closed only once no thread uses the socket: the other request written to this worker
        # may still be in send_bytes (the worker is dead: it ends at once with EPIPE) or in its
        # turn; closing under it would make it fail with TypeError (a 500, not this 503) or
        # write into the file descriptor the replacement's socket pair gets next
        with worker.sending, worker.turn:
            worker.conn.close()
        with self._lock:          # one step with close(): no worker is started once it began
            if self._closed:
                return False
            if not worker.ready:
                self._failed_start(f"a decode worker (pid {worker.pid}) did not start: {worker.exit_reason()}")
                return False
            if not self._start():
                return False
            self.replaced += 1
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop every worker (call once no request uses them: the node's drain is done);
        a :meth:`columns` call after it answers 503."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            workers, self._workers = self._workers, []
            self._freed.notify_all()
        for worker in workers:
            worker.reap(timeout)

