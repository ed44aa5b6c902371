"""``HeadDeadlineH11Protocol``: uvicorn's h11 listener with the head-arrival clock
(:mod:`.head_deadline`), the node's listener where httptools cannot be used (``run.server_config``).

It overrides uvicorn internals with no public API (``RELIED_ON``); the import fails if one is
missing, and pyproject pins uvicorn to the tested range.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .head_deadline import RELIED_ON_STATE as _CLOCK_STATE
from .head_deadline import HeadDeadline

__all__ = ["HeadDeadlineH11Protocol", "RELIED_ON", "RELIED_ON_STATE"]

# the H11Protocol methods this class overrides or calls
RELIED_ON = ("connection_made", "connection_lost", "data_received", "on_response_complete",
             "_unset_keepalive_if_required")
# ... and the instance attributes it reads (a test checks them on a connection)
RELIED_ON_STATE = ("conn",) + _CLOCK_STATE

_missing = [name for name in RELIED_ON if not callable(getattr(H11Protocol, name, None))]
if _missing:        # an ImportError: run.server_config then serves with uvicorn's own h11 (no clock)
    raise ImportError(f"uvicorn's H11Protocol lacks {', '.join(_missing)}: this uvicorn release is not one "
                      f"HeadDeadlineH11Protocol was written for (see pyproject's pin)")


class HeadDeadlineH11Protocol(HeadDeadline, H11Protocol):
    """uvicorn's h11 listener with the head-arrival clock: a head is awaited while h11 waits
    for a request on both sides (``IDLE``), or while our answer is sent (``DONE``) and their body
    goes on (``SEND_BODY``), and part of one has arrived while h11 holds unparsed bytes (h11
    itself bounds their size: ``h11_max_incomplete_event_size``)."""

    def _awaiting_head(self) -> bool:
        # between requests, or our answer sent while their body goes on (h11 drops its Data)
        return ((self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE)
                or self._in_answered_body())

    def _in_answered_body(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY

    def _head_bytes_received(self) -> bool:
        # a copy of h11's buffer; asked only when a response has just ended and when the clock
        # runs out (a read cancels the keep-alive timer first, so the clock starts without it)
        return bool(self.conn.trailing_data[0])

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._update_head_clock()

    def connection_lost(self, exc) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_head_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()      # arms the keep-alive timer, parses what is buffered
        self._update_head_clock()
