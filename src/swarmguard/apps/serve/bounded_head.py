"""``BoundedHeadHttpToolsProtocol``: uvicorn's httptools listener with a bound on a request head.

uvicorn's ``HttpToolsProtocol`` parses faster than its h11 one (15-21 % more spans or lines a
second through the node, README "The listener's parser"), but it buffers a request head of
any size: httptools joins a header's name and value across reads until the value ends, and
uvicorn joins the URL's pieces, so one client could hold megabytes a connection before the
app sees a header. This subclass counts the bytes of each request head as they arrive, from
the byte after the previous message (or the connection's first byte) — so bytes before the
parser's first callback count too, and every keep-alive or pipelined request starts again
from zero — until the parser says the headers are complete. Past the bound (uvicorn's
``h11_max_incomplete_event_size``, which the node sets to ``HEAD_LIMIT_FACTOR`` ×
``--max-header-bytes``) while still in the head, the connection gets the answer uvicorn's h11
listener gives there (400, ``text/plain``, "Invalid HTTP request received.", connection
closed) and is closed; the bytes past the bound are never given to the parser.

How the bytes of a read are split between a head and what follows: the parser is fed a read
in pieces. While in a head, the piece ends just after the first ``CRLF CRLF`` (looked for
across reads; httptools' llhttp takes no other end of a head, a bare LF is an error), or at
the bound; once the head is complete, a body of known ``Content-Length`` is fed exactly that
many bytes, so the next pipelined request's head is counted from its first byte. A chunked
body is framed here as llhttp frames it (chunk-size line, that many bytes and a CRLF, to the
last chunk), so it too is fed exactly up to its end, in one piece a read, and the next head
is counted from its first byte; its trailers (header lines the parser buffers as it does a
head's) are bounded as a head is, as h11 bounds them. Should the parser end a chunked body
anywhere else, the framing is not the parser's: the connection is refused as for a head past
the bound (400 + close), rather than letting the rest of the read reach the parser uncounted.

This relies on uvicorn internals with no public API (``data_received``,
``on_headers_complete``, ``on_message_complete``, ``parser``, ``headers``, the upgrade
helpers): ``RELIED_ON`` lists them, the import fails (and ``server_config`` falls back to
h11) if one is missing, tests check them, and pyproject pins uvicorn to the tested range.
"""

from __future__ import annotations

import re

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .head_deadline import RELIED_ON_STATE as _CLOCK_STATE
from .head_deadline import HeadDeadline

__all__ = ["BoundedHeadHttpToolsProtocol", "RELIED_ON", "RELIED_ON_STATE", "REFUSAL", "DEFAULT_HEAD_LIMIT"]

# h11's own default (h11.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE), when the config leaves it unset
DEFAULT_HEAD_LIMIT = 16 * 1024
# the attributes of HttpToolsProtocol this class calls or overrides
RELIED_ON = ("connection_made", "connection_lost", "data_received", "on_message_begin", "on_headers_complete", "on_message_complete", "on_response_complete",
             "_unset_keepalive_if_required", "send_400_response", "_should_upgrade",
             "handle_websocket_upgrade", "_unsupported_upgrade_warning")
# ... and these instance attributes (a test checks them on a connection)
RELIED_ON_STATE = ("parser", "headers", "cycle", "pipeline", "flow", "logger") + _CLOCK_STATE
_MESSAGE = b"Invalid HTTP request received."
# what uvicorn's h11 listener writes for a head past its bound (h11_impl.send_400_response:
# status, content type, connection close, the message); here with its length too
REFUSAL = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
           b"content-length: " + str(len(_MESSAGE)).encode() + b"\r\nconnection: close\r\n\r\n" + _MESSAGE)
_END_OF_HEAD = b"\r\n\r\n"
_HEX_RUN = re.compile(rb"[0-9a-fA-F]*")
# a chunk's size line with no leading zero (at most 64 bits, in group 1): its first digit fixed,
# so that a run of zeros cannot make the match backtrack (0.1 s a 256 KiB read of them)
_WHOLE_CHUNK = re.compile(rb"([1-9a-fA-F][0-9a-fA-F]{0,15})(?![0-9a-fA-F])[^\n]*\n")
# a chunk size past this is llhttp's error (HPE_INVALID_CHUNK_SIZE, 64 bits): not grown further
_CHUNK_SIZE_CAP = 1 << 64
# states of the chunked framing (_chunk_state): in the size's hex digits, in the rest of the
# size line (extensions) to its LF, in the chunk's data, in the CRLF after it, in the trailers
_SIZE, _SIZE_LINE, _DATA, _DATA_END, _TRAILERS = range(5)

_missing = [name for name in RELIED_ON if not callable(getattr(HttpToolsProtocol, name, None))]
if _missing:        # an ImportError, so that server_config falls back to h11
    raise ImportError(f"uvicorn's HttpToolsProtocol lacks {', '.join(_missing)}: this uvicorn release is "
                      f"not one BoundedHeadHttpToolsProtocol was written for (see pyproject's pin)")


class _HeldFirstFlowControl(FlowControl):
    """uvicorn's flow control, except that reading is not resumed while the protocol holds the
    rest of a read: the request in flight resumes it each time its app calls ``receive`` (as
    Starlette's ``is_disconnected`` does, polled by the event stream), and each read then let
    in would be held too, without bound. The protocol resumes it once the held bytes are fed."""

    def __init__(self, transport, protocol: BoundedHeadHttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if not self._protocol._held:
            super().resume_reading()


class BoundedHeadHttpToolsProtocol(HeadDeadline, HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head past ``head_limit`` bytes as it
    arrives (module docstring); ``head_limit`` is the config's ``h11_max_incomplete_event_size``
    (16 KiB when unset, h11's default), so one setting bounds either parser. With
    ``header_timeout`` set (``head_deadline.with_header_timeout``), a head is also bounded in
    time (:mod:`.head_deadline`): awaited while no request is in flight or queued (in a head, or
    in the rest of an answered body: ``in_head`` False), part of it received once ``head_bytes`` > 0."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limit = config.h11_max_incomplete_event_size
        self.head_limit: int = DEFAULT_HEAD_LIMIT if limit is None else int(limit)
        self.head_bytes = 0             # bytes of the current head so far
        self.in_head = True             # between a message's end (or the connection's start) and its headers
        self.body_left: int | None = None   # bytes of the current body still to come, None: unknown (chunked)
        self._tail = b""                # the head's last 3 bytes so far: its CRLF CRLF may span two reads
        self._head_piece_ends_head = False  # the piece being fed ends just after a CRLF CRLF
        self.messages_done = 0          # messages the parser has ended on this connection
        self._chunk_state: int | None = None    # where in a chunked body (None: not in one)
        self._chunk_left = 0            # the chunk size so far (_SIZE, _SIZE_LINE), bytes left (_DATA, _DATA_END)
        self._trailer_bytes = 0         # bytes of the trailers so far
        self._begun = False             # a message began after the last one ended
        self.refused = False            # a head went past the bound: nothing more is read
        # the rest of a read while a request waits in the pipeline, fed once it is started: the
        # base class parses every pipelined head of every read into the queue, without bound
        self._held = b""
        self._upgraded = False          # handed to the WebSocket protocol: no head is awaited here

    # Parser callbacks (called from inside feed_data)
    def on_headers_complete(self) -> None:
        self.in_head, self.body_left, self._tail = False, None, b""
        if self._head_piece_ends_head:      # the head ended where this piece does: what follows is body
            self.body_left = self._content_length()
            if self.body_left is None:      # chunked (llhttp refuses any other framing of a request)
                self._chunk_state, self._chunk_left, self._trailer_bytes = _SIZE, 0, 0
        super().on_headers_complete()

    def on_message_begin(self) -> None:
        self._begun = True                  # the parser met the next request line's first byte
        super().on_message_begin()

    def on_message_complete(self) -> None:
        # the next message's head starts with the next byte
        self.in_head, self.head_bytes, self._tail, self.body_left = True, 0, b"", None
        self._chunk_state, self._begun = None, False
        self.messages_done += 1
        super().on_message_complete()

    def _content_length(self) -> int | None:
        """The body's length if ``Content-Length`` frames it (else None: chunked, or for the
        parser to refuse)."""
        length = None
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
        return 0 if length is None else length     # a request with neither has no body

    # Protocol interface
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.flow = _HeldFirstFlowControl(transport, self)     # before any request's cycle takes it
        self._update_head_clock()

    def connection_lost(self, exc) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # the transport is the WebSocket protocol's from here: this clock, running since the
        # connection's open, would close it (data_received's update must not start it again)
        self._upgraded = True
        self._stop_head_clock()
        super().handle_websocket_upgrade()

    def _awaiting_head(self) -> bool:
        # in a head, or in the rest of a body its answer did not wait for
        return (not self._upgraded and not self.refused and not self.pipeline and not self._held
                and (self.cycle is None or self.cycle.response_complete))

    def _head_bytes_received(self) -> bool:
        return self.in_head and self.head_bytes > 0

    def _in_answered_body(self) -> bool:
        return not self.in_head

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        finally:
            self._update_head_clock()

    def _receive(self, data: bytes) -> None:
        """``data_received``'s work: the read fed to the parser in pieces (module docstring)."""
        if self.refused:                # reading is paused; a read already on its way is dropped
            return
        self._unset_keepalive_if_required()
        if not isinstance(data, bytes):
            data = bytes(data)
        if self.pipeline or self._held:     # a read already on its way while one waits: kept in order
            self._held += data
            self.flow.pause_reading()
            return
        view, pos, size = None, 0, len(data)
        while pos < size:
            left, ends_head, body_cut = size - pos, False, False
            if self.in_head:
                budget = self.head_limit - self.head_bytes
                end = self._end_of_head(data, pos, budget)
                if end < 0 and left > budget:
                    self._refuse()          # the bytes past the bound never reach the parser
                    return
                take = left if end < 0 else end - pos
                ends_head = end >= 0
                self.head_bytes += take
            elif self.body_left is not None:
                take = min(self.body_left, left)
                self.body_left -= take
            else:
                # a chunked body: fed up to its end, framed here as the parser frames it
                end = self._chunked_end(data, pos) if self._chunk_state is not None else -1
                if end == -2:               # trailers past the bound
                    self._refuse()
                    return
                if self._chunk_state is None and end < 0:
                    # a body whose head did not end where a piece did: never so, as heads are cut
                    # at their CRLF CRLF; refused rather than fed unframed (its messages uncounted)
                    self._refuse("a body this listener cannot frame")
                    return
                take = left if end < 0 else end - pos
                body_cut = end >= 0
            if take == size:
                piece = data
            else:
                view = memoryview(data) if view is None else view
                piece = view[pos:pos + take]
            done, was_in_head, framed = self.messages_done, self.in_head, self.body_left is not None
            self._head_piece_ends_head = ends_head
            try:
                if not self._feed(piece):
                    return
            finally:
                self._head_piece_ends_head = False
            pos += take
            if self.messages_done == done:
                if self.in_head or not (framed or ends_head):  # the same head (or chunked body) goes on
                    self._tail = (self._tail + data[pos - min(3, take):pos])[-3:]
                elif self.body_left == 0:
                    self.body_left = None   # the parser did not end the body where its length does
            elif not ((was_in_head and ends_head) or framed or body_cut):
                # the parser ended a chunked body inside this piece, where this framing did not:
                # what follows is not counted from its first byte (whether the piece ends in a
                # head or, past a next head already parsed, in that request's body)
                self._refuse("a chunked body the parser ended elsewhere")
                return
            if body_cut and (self.messages_done != done + 1 or self._begun or not self.in_head):
                # the parser did not end the body where its framing does (or ended it earlier and
                # went on into a next message, uncounted)
                self._refuse("a chunked body the parser did not end where its framing does")
                return
            if self.pipeline and pos < size:
                # a request waits (reading paused): the rest is parsed once it is started
                self._held = data[pos:]
                return

    def _chunked_end(self, data: bytes, pos: int) -> int:
        """The offset in ``data`` just past the end of the chunked body that goes on at ``pos``,
        else -1 (the state is kept for the next read) or -2 (its trailers go past the bound).

        The framing llhttp takes: a chunk-size line (hex digits, extensions to its LF), that many
        bytes and their CRLF, ...; after the last (size 0) chunk's line, trailer lines ending
        in an empty one, so at a CRLF CRLF (its CR the size line's own with no trailers). What
        llhttp would refuse (a bare LF, a bad digit) is the parser's to refuse; this framing
        only has to agree with it on what it accepts.
        """
        size, state, left = len(data), self._chunk_state, self._chunk_left
        j, tail = pos, self._tail          # the body's last 3 bytes before pos

        while j < size:
            if state == _DATA or state == _DATA_END:
                step = min(left, size - j)
                j, left = j + step, left - step
                if left == 0:
                    state, left = (_DATA_END, 2) if state == _DATA else (_SIZE, 0)
            elif state == _SIZE:
                if not left:                # a whole chunk in this read: one step (tiny chunks are many)
                    whole = _WHOLE_CHUNK.match(data, j)
                    if whole is not None:
                        after = whole.end() + int(whole.group(1), 16) + 2
                        if after <= size:
                            j = after
                            continue
                end = _HEX_RUN.match(data, j).end()
                run = data[j:end] if left else data[j:end].lstrip(b"0")   # leading zeros: llhttp's too
                if len(run) > 17 or left >= _CHUNK_SIZE_CAP:
                    left = _CHUNK_SIZE_CAP
                elif run:
                    left = min((left << 4 * len(run)) + int(run, 16), _CHUNK_SIZE_CAP)
                j = end
                if j < size:                # the digits end in this read
                    state = _SIZE_LINE
            elif state == _SIZE_LINE:
                lf = data.find(b"\n", j)
                if lf < 0:
                    j = size
                    break
                j = lf + 1
                if left:
                    state = _DATA
                else:                       # the last chunk: the trailers' end ends the body
                    state, self._trailer_bytes = _TRAILERS, 0
                    tail = (tail + data[pos:j])[-3:] if j - pos < 3 else data[j - 3:j]
            else:                           # _TRAILERS
                budget = self.head_limit - self._trailer_bytes
                end = self._end_of_head(data, j, budget, tail)
                tail = b""                  # past j, the bytes from this read only
                if end >= 0:
                    self._chunk_state = None
                    return end
                if size - j > budget:
                    return -2
                self._trailer_bytes += size - j
                j = size
        self._chunk_state, self._chunk_left = state, left
        return -1

    def _end_of_head(self, data: bytes, pos: int, budget: int, tail: bytes | None = None) -> int:
        """The offset in ``data`` just past the head's first CRLF CRLF (the one that may begin
        in ``tail``, the 3 bytes before ``pos``: by default the previous read's) if it lies
        within ``budget`` bytes of ``pos``, else -1."""
        if budget <= 0:
            return -1
        tail = self._tail if tail is None else tail
        if tail:
            at = (tail + data[pos:pos + 3]).find(_END_OF_HEAD)
            if at >= 0:
                end = pos + at + 4 - len(tail)
                return end if end - pos <= budget else -1
        at = data.find(_END_OF_HEAD, pos, pos + budget)
        return -1 if at < 0 else at + 4

    def _feed(self, piece) -> bool:
        """Feed the parser as ``HttpToolsProtocol.data_received`` does; False once the
        connection is answered (a parse error, an upgrade)."""
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        return True

    def _refuse(self, why: str = "") -> None:
        """Answer 400 and close, as h11 does for a head past its bound; the requests before
        this one on the connection (pipelined) are answered first, with reading paused."""
        self.logger.warning("Invalid HTTP request received. (%s)",
                            why or f"a request head or trailers past {self.head_limit} bytes")
        self.refused = True
        if not self.in_head and self.cycle is not None and not self.cycle.response_started:
            # inside a body (its trailers, its framing): the app waits for a body that will not
            # come, so answered now, as uvicorn answers the parser's error there
            self._send_refusal()
            return
        if not self.in_head and self.cycle is not None and not self.cycle.response_complete:
            # ... its response already begun: no 400 can be sent, but the app must not wait for
            # that body with reading paused (not even the client's close would be seen), so the
            # connection is closed and the app's receive told, as llhttp's own error there does
            self.cycle.disconnected = True
            self.cycle.message_event.set()
            self.transport.close()
            return
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self.flow.pause_reading()
            return
        self._send_refusal()

    def on_response_complete(self) -> None:
        try:
            self._response_complete()
        finally:
            self._update_head_clock()           # a head partly received before it is timed from here

    def _response_complete(self) -> None:
        super().on_response_complete()          # starts the next pipelined request, if any
        if self.transport.is_closing():
            return
        if self.refused:
            if self.pipeline or not self.cycle.response_complete:
                self.flow.pause_reading()       # super resumed it for the next request
            else:
                self._send_refusal()
        elif self._held and not self.pipeline:
            held, self._held = self._held, b""
            self.flow.resume_reading()          # what super did (not while bytes were held) ...
            self.data_received(held)            # ... paused again if these fill a body or a queue
        elif self._held:
            self.flow.pause_reading()           # the held bytes come first

    def _send_refusal(self) -> None:
        self.transport.write(REFUSAL)
        self.transport.close()
