"""The listener's bound on the *time* a request head takes to arrive (``--header-timeout``).

uvicorn bounds only the idle time between requests of a keep-alive connection
(``timeout_keep_alive``, armed when a response ends, cancelled by the next read's first byte):
nothing runs from ``connection_made`` before a connection's first byte, nor while a head is
arriving, so a client that opens a connection and sends nothing, or sends its head a byte every
few seconds (slowloris), holds the connection forever, on either of uvicorn's parsers (checked
with real sockets against uvicorn's own protocols: ``tests/apps/serve/test_header_timeout.py``).

:class:`HeadDeadline` is the bound, for either parser: a clock runs whenever the listener waits
for a request head (no request is being answered) and nothing else bounds that wait, that is

- from the connection's open (after the TLS handshake, which asyncio bounds to 60 s itself),
- on a keep-alive connection, from the first byte of the next head: the idle time before it is
  uvicorn's keep-alive timeout's, which that byte cancels (so the two never run together, and a
  head is bounded wherever it starts: ``timeout_keep_alive`` + ``header_timeout`` at most
  from the previous response's end),
- and from the previous response's end for a head already partly received (pipelined),

until the head is complete (its CRLF CRLF parsed); it is never restarted by more bytes. The
rest of a body that the app answered without reading (a 401, 405, 415 or 503 given before reading it, ``/healthz`` with a body)
is timed the same way, from its first byte after the answer (or the answer's end, if some
were already there) until the next head is complete: each byte cancels the keep-alive timer
and no head is arriving, so it would otherwise hold the connection for ever. Past it,
a connection with part of a head gets :func:`timeout_answer`'s 408 (one-line JSON error,
``connection: close``) and is closed, a connection that sent nothing is closed without an
answer, a connection still sending an answered body is closed without a second answer, and
``on_header_timeout`` is called with ``"partial"``, ``"empty"`` or ``"body"`` (the node counts
them in ``swarmguard_header_timeouts_total{head}``). A head that is complete is never timed:
a long body is ``--body-timeout``'s, a long response (``/v1/events``) nobody's.

Mixed into ``bounded_head.BoundedHeadHttpToolsProtocol`` (the node's listener) and
``h11_listener.HeadDeadlineH11Protocol`` (uvicorn's h11 one, ``run.server_config``'s fallback
where httptools cannot be used). It reads uvicorn internals of either (:data:`RELIED_ON_STATE`:
the keep-alive timer, the transport, the loop; the method ``_unset_keepalive_if_required``),
which the listeners' tests check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

__all__ = ["HeadDeadline", "with_header_timeout", "timeout_answer", "DEFAULT_HEADER_TIMEOUT", "RELIED_ON_STATE"]

DEFAULT_HEADER_TIMEOUT = 10.0       # nginx's client_header_timeout is 60 s, Apache's reqtimeout 20-40 s
# what the clock reads of a uvicorn HTTP protocol (either parser's; the listeners' tests check them)
RELIED_ON_STATE = ("transport", "loop", "timeout_keep_alive_task")


def timeout_answer(seconds: float) -> bytes:
    """The 408 a connection with part of a head gets once ``seconds`` have passed: the node's
    one-line JSON error, ``connection: close`` (RFC 9110 15.5.9: the rest of that head is never read)."""
    body = json.dumps({"error": f"the request head did not arrive within {seconds:g} s (--header-timeout)"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class HeadDeadline:
    """The head-arrival clock (module docstring), mixed into a uvicorn HTTP protocol.

    ``header_timeout`` (seconds; None or infinite: no clock) and ``on_header_timeout`` (called
    with ``"partial"``, ``"empty"`` or ``"body"``) are class attributes, set by
    :func:`with_header_timeout`. The protocol says whether it waits for a head
    (:meth:`_awaiting_head`: no request is being answered or queued, so what arrives is the next
    head or the rest of an answered request's body), whether it is in such a body
    (:meth:`_in_answered_body`) and whether part of a head has arrived
    (:meth:`_head_bytes_received`), and calls :meth:`_update_head_clock` wherever these may
    change (after a read, a response's end, the connection's open).
    """

    header_timeout: float | None = None
    on_header_timeout: Callable[[str], None] | None = None
    _head_clock = None              # the running clock's TimerHandle

    def _awaiting_head(self) -> bool:       # pragma: no cover - each protocol's own
        raise NotImplementedError

    def _head_bytes_received(self) -> bool:     # pragma: no cover - each protocol's own
        raise NotImplementedError

    def _in_answered_body(self) -> bool:     # pragma: no cover - each protocol's own
        raise NotImplementedError

    def _update_head_clock(self) -> None:
        timeout = self.header_timeout
        if timeout is None or math.isinf(timeout):
            return
        transport = self.transport
        if transport is None or transport.is_closing() or not self._awaiting_head():
            self._stop_head_clock()
        elif self._head_clock is None:
            if self.timeout_keep_alive_task is None:            # nothing else bounds this wait
                self._head_clock = self.loop.call_later(timeout, self._head_clock_ran_out)
            elif self._head_bytes_received():
                # part of a head already here as the keep-alive timer is armed (pipelined): the
                # head's bound is this one, not the idle connection's
                self._unset_keepalive_if_required()
                self._head_clock = self.loop.call_later(timeout, self._head_clock_ran_out)

    def _stop_head_clock(self) -> None:
        if self._head_clock is not None:
            self._head_clock.cancel()
            self._head_clock = None

    def _head_clock_ran_out(self) -> None:
        self._head_clock = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        if self._in_answered_body():        # its request has its answer: a second one would be no one's
            what = "body"
        elif self._head_bytes_received():
            what = "partial"
            self.transport.write(timeout_answer(self.header_timeout))
        else:
            what = "empty"
        self.transport.close()
        if self.on_header_timeout is not None:
            self.on_header_timeout(what)


def with_header_timeout(protocol: type, seconds: float | None, on_timeout: Callable[[str], None] | None = None):
    """A subclass of ``protocol`` (a :class:`HeadDeadline` class: ``bounded_head``'s or
    ``h11_listener``'s; ``run.with_header_timeout`` also takes ``"h11"``) whose connections time
    their heads out after ``seconds``, calling ``on_timeout("partial" | "empty" | "body")`` each
    time; :class:`TypeError` for a protocol without the clock."""
    if not (isinstance(protocol, type) and issubclass(protocol, HeadDeadline)):
        raise TypeError(f"{protocol!r} has no head-arrival clock")
    attrs = {"header_timeout": seconds, "on_header_timeout": staticmethod(on_timeout) if on_timeout else None}
    return type(protocol.__name__, (protocol,), attrs)
