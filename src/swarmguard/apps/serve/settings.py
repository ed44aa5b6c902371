"""``ServeSettings``: everything one node of ``swarmguard serve`` is configured with."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidInputError
from .head_deadline import DEFAULT_HEADER_TIMEOUT

__all__ = ["ServeSettings", "DEFAULT_PORT", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_HEADER_BYTES",
           "DEFAULT_SNAPSHOT_EVERY", "is_loopback"]

DEFAULT_PORT = 8470
DEFAULT_MAX_BODY_BYTES = 64 << 20
# the request's header names and values together; the listener's own bound on a request head
# (answered 400 by the listener itself, uncounted: run.server_config) is 16 times this, so what
# the app can count it counts
DEFAULT_MAX_HEADER_BYTES = 64 << 10
HEAD_LIMIT_FACTOR = 16
DEFAULT_SNAPSHOT_EVERY = 10
MAX_DECODE_WORKERS = 64         # its one home: apps.otlp.decode_workers and the CLI check against it


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """One node's configuration (the ``swarmguard serve`` options).

    ``data_dir`` holds the durable log (None: the caller makes a temporary
    folder); ``tokens_file`` the TOML credentials (None: no authentication,
    loopback only); ``region`` the node's region (every vector's region in the
    detector); ``window_seconds`` the length of a window on the node's clock;
    ``features`` the dimension of ``/v1/behaviors`` vectors (None: the first
    vector fixes it); ``max_body_bytes`` the request body limit, compressed
    and decompressed; ``max_header_bytes`` the request's header names and values
    together (431 past it); ``metrics_public`` serves ``/metrics`` without a token;
    ``max_inflight`` ingest requests being worked on at once and
    ``max_window_rows`` vectors buffered in the open window before ingest
    answers 429 (bounded memory); ``max_event_streams`` open ``/v1/events`` streams (more: 503); ``body_timeout_seconds`` to read a request's whole body (408 past it); ``header_timeout_seconds`` for a request head to arrive, from the connection's open or, on a keep-alive connection, from the head's first byte (past it the listener answers 408 to part of a head, closes a connection that sent nothing, and counts either in ``swarmguard_header_timeouts_total``: :mod:`.head_deadline`); ``warm_up`` / ``significance_level`` /
    ``require`` go to the detector; ``backend`` the engine (``address``: a Ray cluster's, for ``ray``); ``certfile`` / ``keyfile`` serve TLS; ``clock`` the node's clock (arrival time);
    ``close_windows`` runs the background task that closes windows as the clock
    passes their end (tests turn it off and close windows themselves);
    ``snapshot_every`` closed windows between snapshots of the node's state, after
    which the log records they cover are deleted (0: none but at shutdown; :mod:`.snapshot`).
    ``peers``: the other nodes' base URLs (one node per region, :mod:`.peers`);
    ``sync_seconds`` between anti-entropy rounds; ``peer_token`` the secret this
    node presents to its peers; ``consistency``: ``statistical`` / ``eventual``
    (always writable) or ``strong`` (writes refused without a majority of nodes).
    ``decode_workers``: processes that decode ``POST /v1/traces`` bodies into span columns
    (0: the request's own thread does, under the node's GIL; :mod:`swarmguard.apps.otlp.decode_workers`).
    """

    data_dir: Path | None = None
    tokens_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    region: str = "local"
    window_seconds: float = 60.0
    features: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    metrics_public: bool = False
    max_inflight: int = 64
    max_window_rows: int = 2_000_000
    max_event_streams: int = 100
    body_timeout_seconds: float = 60.0
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT
    warm_up: int | None = None
    significance_level: float = 1e-3
    require: str = "both"
    backend: str = "inprocess"
    address: str | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    clock: Callable[[], float] = field(default=time.time, compare=False)
    close_windows: bool = True
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY
    peers: tuple[str, ...] = ()
    sync_seconds: float = 2.0
    peer_token: str | None = field(default=None, repr=False, compare=False)
    consistency: str = "statistical"
    decode_workers: int = 0

    def __post_init__(self) -> None:
        if not (self.window_seconds > 0):
            raise InvalidInputError(f"--window must be > 0 seconds, got {self.window_seconds}")
        if self.features is not None and self.features < 1:
            raise InvalidInputError(f"--features must be >= 1, got {self.features}")
        if self.max_body_bytes < 1:
            raise InvalidInputError(f"--max-body-bytes must be >= 1, got {self.max_body_bytes}")
        if self.max_header_bytes < 1024:
            raise InvalidInputError(f"--max-header-bytes must be >= 1024, got {self.max_header_bytes}")
        if self.max_inflight < 1 or self.max_window_rows < 1 or self.max_event_streams < 1:
            raise InvalidInputError("max_inflight, max_window_rows and max_event_streams must be >= 1")
        if not (self.body_timeout_seconds > 0):
            raise InvalidInputError(f"--body-timeout (body_timeout_seconds) must be > 0, got {self.body_timeout_seconds}")
        if not (self.header_timeout_seconds > 0):
            raise InvalidInputError(
                f"--header-timeout (header_timeout_seconds) must be > 0, got {self.header_timeout_seconds}")
        if self.backend not in ("inprocess", "ray"):
            raise InvalidInputError(f"--backend must be inprocess or ray, got {self.backend!r}")
        if self.address is not None and self.backend != "ray":
            raise InvalidInputError("--address needs --backend ray")
        if (self.certfile is None) != (self.keyfile is None):
            raise InvalidInputError("--certfile and --keyfile go together")
        if isinstance(self.snapshot_every, bool) or not isinstance(self.snapshot_every, int) or self.snapshot_every < 0:
            raise InvalidInputError(f"--snapshot-every must be a whole number >= 0, got {self.snapshot_every!r}")
        if not self.region:
            raise InvalidInputError("--region must not be empty")
        if not (self.sync_seconds > 0):
            raise InvalidInputError(f"--sync-seconds must be > 0, got {self.sync_seconds}")
        for url in self.peers:
            if not url.startswith(("http://", "https://")):
                raise InvalidInputError(f"--peers: {url!r} is not an http(s) URL")
        if (isinstance(self.decode_workers, bool) or not isinstance(self.decode_workers, int)
                or not 0 <= self.decode_workers <= MAX_DECODE_WORKERS):
            raise InvalidInputError(f"--decode-workers must be a whole number from 0 to {MAX_DECODE_WORKERS}, "
                                    f"got {self.decode_workers!r}")
        if self.consistency not in ("statistical", "eventual", "strong"):
            raise InvalidInputError(f"--consistency must be statistical, eventual or strong, got {self.consistency!r}")

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without credentials (anyone could post and read)."""
        if self.tokens_file is None and not is_loopback(self.host):
            raise InvalidInputError(
                f"refusing to listen on {self.host} without --tokens: anyone who can reach it could "
                "post behaviours and read scores; give a tokens file or bind 127.0.0.1")
