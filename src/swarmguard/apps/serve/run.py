"""``run_server(settings)``: ``swarmguard serve`` — the app on uvicorn, with a draining SIGTERM.

SIGTERM (or Ctrl-C): the node turns ``draining`` at once (``/readyz`` 503, writes 503),
uvicorn stops accepting connections and finishes the requests in flight, then the app's
shutdown closes the open window (its round runs and is logged) and closes the log.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
from collections.abc import Callable

from . import head_deadline
from .app import create_app, resolve_data_dir
from .settings import HEAD_LIMIT_FACTOR, ServeSettings

__all__ = ["run_server", "server_config", "listener_protocol", "import_serving_modules"]


def import_serving_modules(settings: ServeSettings | None = None) -> None:
    """Import what the node needs before it listens: uvicorn and its h11 parser (the fallback of
    :func:`listener_protocol`), the metrics'
    prometheus_client, SciPy's LAPACK bindings, and with ``settings``, Ray for ``--backend
    ray`` and httpx for ``--peers``.

    uvicorn imports its parser only once it starts listening, the app its metrics only when it
    is made (after the data folder), the node Ray only when it builds its populations (in the
    background, the port already bound: the node would answer "failed to start" forever) and
    the peer sync httpx at its first round (every round failing): each imported here, its
    absence stops the start like any other.

    Every window's round scores with SciPy's LAPACK bindings, which swarmguard imports on first
    use (swarmguard.lazy_import: `import swarmguard` and --help stay light). A node will need
    them at its first close anyway: imported before it serves, that close does not stall on the
    import (44 modules, 0.03-0.25 s on a 2-core machine, with every request waiting behind the
    node's lock), :func:`run_server`'s freeze covers them too, and a module that cannot be
    imported stops the start (:class:`ImportError`) before a data folder is made or a port bound
    (``swarmguard serve`` says so in one line)."""
    import importlib

    importlib.import_module("uvicorn")
    importlib.import_module("uvicorn.protocols.http.h11_impl")      # listener_protocol's fallback
    importlib.import_module("prometheus_client")
    importlib.import_module("scipy.linalg.lapack")
    if settings is not None and settings.backend == "ray":
        importlib.import_module("ray")
    if settings is not None and settings.peers:
        importlib.import_module("httpx")


def listener_protocol():
    """The protocol uvicorn parses the node's requests with: ``BoundedHeadHttpToolsProtocol``
    (httptools, with a bound on a request head), or ``"h11"`` where httptools is not installed
    (it comes with the ``serve`` extra) or uvicorn lacks the internals that class relies on."""
    try:
        from .bounded_head import BoundedHeadHttpToolsProtocol
    except ImportError:
        return "h11"
    return BoundedHeadHttpToolsProtocol


def with_header_timeout(protocol, seconds: float | None, on_timeout: Callable[[str], None] | None = None):
    """:func:`head_deadline.with_header_timeout`, ``protocol`` also ``"h11"`` (uvicorn's name for
    its h11 listener: ``h11_listener.HeadDeadlineH11Protocol`` here; :class:`ImportError` on a
    uvicorn without what that class relies on). Resolved here, not in ``head_deadline``, which
    ``h11_listener`` imports."""
    if protocol == "h11":
        from .h11_listener import HeadDeadlineH11Protocol as protocol
    return head_deadline.with_header_timeout(protocol, seconds, on_timeout)


def server_config(app, settings: ServeSettings):
    """uvicorn's configuration of the node's listener: address, TLS, the bound on a request
    head (``HEAD_LIMIT_FACTOR`` × ``--max-header-bytes``: a head up to it reaches the app,
    which answers 431 and counts it; past it the listener answers 400 itself, before the app,
    and closes the connection), and the time a head may take to arrive (``--header-timeout``,
    :mod:`.head_deadline`: 408 or a close, counted in ``app.state.metrics``'
    ``swarmguard_header_timeouts_total``), on either parser.

    The parser is httptools through ``bounded_head.BoundedHeadHttpToolsProtocol``: uvicorn's
    own httptools protocol buffers a request head of any size, this subclass counts each
    head's bytes as they arrive and refuses it once past the bound, as h11 does (h11 serves
    15-21 % fewer spans or lines per second here: README, "The listener's parser"). The
    subclass relies on uvicorn internals (pyproject pins uvicorn to the tested releases);
    without httptools, or on a uvicorn without them, the listener parses with h11, whose
    ``h11_max_incomplete_event_size`` is the same bound (checked while a head is incomplete),
    through ``h11_listener.HeadDeadlineH11Protocol`` (uvicorn's h11 protocol with the head's
    clock; on a uvicorn without the internals that one relies on, uvicorn's own, unclocked)."""
    import uvicorn

    metrics = getattr(app.state, "metrics", None)

    def count(head: str) -> None:
        if metrics is not None:
            metrics.header_timeouts.labels(head).inc()

    parser = listener_protocol()
    try:
        http = with_header_timeout(parser, settings.header_timeout_seconds, count)
    except ImportError as exc:  # h11_listener's internals missing: uvicorn's own h11, without the clock
        import logging

        logging.getLogger("swarmguard.serve").warning("--header-timeout is not applied: %s", exc)
        http = parser
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", http=http,
                          ssl_certfile=str(settings.certfile) if settings.certfile else None,
                          ssl_keyfile=str(settings.keyfile) if settings.keyfile else None,
                          h11_max_incomplete_event_size=HEAD_LIMIT_FACTOR * settings.max_header_bytes,
                          timeout_graceful_shutdown=30)


def run_server(settings: ServeSettings, say: Callable[[str], None] = print, drain_seconds: float = 0.0) -> None:
    """Serve until SIGTERM / SIGINT (module docstring); ``say`` prints the start-up lines;
    ``drain_seconds``: how long ``/readyz`` answers 503 before the listener closes."""
    import_serving_modules(settings)
    import uvicorn

    settings.check_exposure()
    data_dir, temporary = resolve_data_dir(settings)
    settings = dataclasses.replace(settings, data_dir=data_dir)
    app = create_app(settings)
    scheme = "https" if settings.certfile else "http"
    say(f"swarmguard serve: {scheme}://{settings.host}:{settings.port} (region {settings.region}, "
        f"windows of {settings.window_seconds:g} s, backend {settings.backend})")
    if temporary:
        say(f"no --data-dir: keeping state in the temporary folder {data_dir} (kept after exit; delete it when done)")
    else:
        say(f"state in {data_dir} (replayed on start)")
    if app.state.tokens is None:
        say("no --tokens: every caller on this machine may post and read (loopback only)")

    config = server_config(app, settings)
    # The modules and the app made so far (FastAPI, pydantic, NumPy, SciPy: most of the
    # process's objects) live as long as the process: frozen, the collector's full passes no
    # longer walk them (measured: the one full pass of an OTLP benchmark run cost 0.04-0.1 s,
    # about half of all the collector's time there; the node's own state is collected as before).
    # Thawed when the server returns: a caller serving from its own process (a test, an
    # embedding program) gets its collector back as it was (left alone if it had frozen some).
    thaw = gc.get_freeze_count() == 0
    gc.freeze()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):              # readyz 503 first, then uvicorn's own exit
            node = app.state.node
            if node is not None:
                node.state = "draining"
            if drain_seconds > 0 and not self.should_exit:
                threading.Timer(drain_seconds, super().handle_exit, (sig, frame)).start()
            else:
                super().handle_exit(sig, frame)

    try:
        Server(config).run()
    finally:
        if thaw:
            gc.unfreeze()
