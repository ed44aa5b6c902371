"""The worker side of :mod:`.decode_pool`: what a decode worker process imports and runs.

Kept apart from :mod:`.decode_pool` (which imports the server's error type, and with it FastAPI)
so that a worker imports only this package's decoding (``opentelemetry-proto``, NumPy) and
the ``swarmguard`` package's own ``__init__``, not FastAPI, uvicorn or SciPy.
"""

from __future__ import annotations

import multiprocessing
import os
import threading

from ...errors import BodyTooLargeError, MalformedBodyError, UnsupportedMediaTypeError
from .decode import decode_export_request
from .spans import span_columns

__all__ = ["OK", "init_worker", "decode_columns"]

OK = "ok"


def _exit_with_parent() -> None:
    """Wait for the parent's end (its sentinel becomes readable), then exit at once: a node
    killed with -9 leaves no worker behind (the call queue's pipe gives no EOF here, since each
    worker holds its write end too)."""
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        wait([parent.sentinel])
    else:                                       # no sentinel: poll who the parent is
        ppid = os.getppid()
        while os.getppid() == ppid:
            threading.Event().wait(0.5)
    os._exit(0)


def init_worker() -> None:
    """A worker's start (the decoder is imported with this module): leave the node's process
    group, so that a SIGTERM or Ctrl-C sent to it reaches only the node, which drains and then
    stops the pool; and exit when the parent does."""
    os.setpgrp()
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


def decode_columns(body: bytes, content_type: str | None, content_encoding: str | None,
                   max_bytes: int) -> tuple:
    """A worker's task: ``(\"ok\", SpanColumns)``, or ``(kind, message, limit)`` for a body
    that does not decode (kind a key of the typed errors: each is raised again in the node)."""
    try:
        decoded = decode_export_request(body, content_type, content_encoding, max_bytes)
    except BodyTooLargeError as exc:
        return ("too_large", str(exc), exc.limit)
    except UnsupportedMediaTypeError as exc:
        return ("media_type", str(exc), None)
    except MalformedBodyError as exc:
        return ("malformed", str(exc), None)
    return (OK, span_columns(decoded.request))
