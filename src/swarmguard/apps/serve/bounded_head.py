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
many bytes, so the next pipelined request's head is counted from its first byte. A body only the
parser can frame (chunked) is fed up to just after each ``CRLF CRLF`` in it (across reads
too), the only place a chunked body can end, so the next head is again counted from its first
byte; after ``BODY_CUTS_PER_READ`` such pieces, the rest of the read is cut once, after its
last ``CRLF CRLF`` (a body of nothing else would otherwise cost a parser call per 4 bytes).
Should a message still end inside a piece, the next head counts nothing if no request line
began after it, else the bytes after the piece's last ``CRLF CRLF`` (an open head holds
none: an upper bound, which can refuse a pipelined head of nearly the bound after a chunked
body with more than ``BODY_CUTS_PER_READ`` of them in one read).

This relies on uvicorn internals with no public API (``data_received``,
``on_headers_complete``, ``on_message_complete``, ``parser``, ``headers``, the upgrade
helpers): ``RELIED_ON`` lists them, the import fails (and ``server_config`` falls back to
h11) if one is missing, tests check them, and pyproject pins uvicorn to the tested range.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["BoundedHeadHttpToolsProtocol", "RELIED_ON", "RELIED_ON_STATE", "REFUSAL", "DEFAULT_HEAD_LIMIT"]

# h11's own default (h11.DEFAULT_MAX_INCOMPLETE_EVENT_SIZE), when the config leaves it unset
DEFAULT_HEAD_LIMIT = 16 * 1024
# the attributes of HttpToolsProtocol this class calls or overrides
RELIED_ON = ("data_received", "on_message_begin", "on_headers_complete", "on_message_complete", "on_response_complete",
             "_unset_keepalive_if_required", "send_400_response", "_should_upgrade",
             "handle_websocket_upgrade", "_unsupported_upgrade_warning")
# ... and these instance attributes (a test checks them on a connection)
RELIED_ON_STATE = ("parser", "headers", "cycle", "pipeline", "flow", "transport", "logger")
_MESSAGE = b"Invalid HTTP request received."
# what uvicorn's h11 listener writes for a head past its bound (h11_impl.send_400_response:
# status, content type, connection close, the message); here with its length too
REFUSAL = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
           b"content-length: " + str(len(_MESSAGE)).encode() + b"\r\nconnection: close\r\n\r\n" + _MESSAGE)
_END_OF_HEAD = b"\r\n\r\n"
# pieces a read of a chunked body is cut into at its first CRLF CRLFs before the rest is cut
# once, at its last (each piece is a parser call)
BODY_CUTS_PER_READ = 16

_missing = [name for name in RELIED_ON if not callable(getattr(HttpToolsProtocol, name, None))]
if _missing:        # an ImportError, so that server_config falls back to h11
    raise ImportError(f"uvicorn's HttpToolsProtocol lacks {', '.join(_missing)}: this uvicorn release is "
                      f"not one BoundedHeadHttpToolsProtocol was written for (see pyproject's pin)")


class BoundedHeadHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head past ``head_limit`` bytes as it
    arrives (module docstring); ``head_limit`` is the config's ``h11_max_incomplete_event_size``
    (16 KiB when unset, h11's default), so one setting bounds either parser."""

    def __init__(self, config, server_state, app_state, _loop=None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limit = config.h11_max_incomplete_event_size
        self.head_limit: int = DEFAULT_HEAD_LIMIT if limit is None else int(limit)
        self.head_bytes = 0             # bytes of the current head so far (an upper bound after a chunked body)
        self.in_head = True             # between a message's end (or the connection's start) and its headers
        self.body_left: int | None = None   # bytes of the current body still to come, None: unknown (chunked)
        self._tail = b""                # the head's last 3 bytes so far: its CRLF CRLF may span two reads
        self._head_piece_ends_head = False  # the piece being fed ends just after a CRLF CRLF
        self.messages_done = 0          # messages the parser has ended on this connection
        self._begun = False             # a message began after the last one ended
        self.refused = False            # a head went past the bound: nothing more is read
        # the rest of a read while a request waits in the pipeline, fed once it is started: the
        # base class parses every pipelined head of every read into the queue, without bound
        self._held = b""

    # Parser callbacks (called from inside feed_data)
    def on_headers_complete(self) -> None:
        self.in_head, self.body_left, self._tail = False, None, b""
        if self._head_piece_ends_head:      # the head ended where this piece does: what follows is body
            self.body_left = self._content_length()
        super().on_headers_complete()

    def on_message_begin(self) -> None:
        self._begun = True                  # the parser met the next request line's first byte
        super().on_message_begin()

    def on_message_complete(self) -> None:
        # the next message's head starts with the next byte
        self.in_head, self.head_bytes, self._tail, self.body_left = True, 0, b"", None
        self._begun = False
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
    def data_received(self, data: bytes) -> None:
        if self.refused:                # reading is paused; a read already on its way is dropped
            return
        self._unset_keepalive_if_required()
        if not isinstance(data, bytes):
            data = bytes(data)
        if self.pipeline or self._held:     # a read already on its way while one waits: kept in order
            self._held += data
            self.flow.pause_reading()
            return
        view, pos, size, body_cuts = None, 0, len(data), 0
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
                # a body only the parser can frame (chunked): fed up to just after each CRLF CRLF,
                # where alone a chunked body ends, so the next head starts at a piece's start
                # After BODY_CUTS_PER_READ such pieces the rest of the read is cut once, after its
                # last CRLF CRLF (an open head holds none, so a head open there starts there):
                # a body full of CRLF CRLF costs a bounded number of feeds a read, not one each
                if body_cuts < BODY_CUTS_PER_READ:
                    end = self._end_of_head(data, pos, left)
                    body_cuts += 1
                else:
                    at = data.rfind(_END_OF_HEAD, pos)
                    end = -1 if at < 0 else at + 4
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
                if self.in_head or not (framed or ends_head):  # the same head (or unframed body) goes on
                    self._tail = (self._tail + data[pos - min(3, take):pos])[-3:]
                elif self.body_left == 0:
                    self.body_left = None   # the parser did not end the body where its length does
            elif self.in_head and not ((was_in_head and ends_head) or framed or body_cut):
                # a message ended inside this piece, not at its end (after a chunked body): the
                # head left open starts after the piece's last CRLF CRLF (a chunked body, and the
                # head of any message after it in the piece, ends with one; an open head holds
                # none), so the bytes after it are an upper bound (the whole piece if none)
                # (none at all if no request line began after the message ended: llhttp skips
                # the blank lines there without keeping them)
                start = max(0, pos - take - 3)
                last = data.rfind(_END_OF_HEAD, start, pos)
                self.head_bytes = 0 if not self._begun else take if last < 0 else pos - (last + 4)
                self._tail = data[pos - min(3, take):pos]
                if self.head_bytes > self.head_limit:
                    self._refuse()
                    return
            if self.pipeline and pos < size:
                # a request waits (reading paused): the rest is parsed once it is started
                self._held = data[pos:]
                return

    def _end_of_head(self, data: bytes, pos: int, budget: int) -> int:
        """The offset in ``data`` just past the head's first CRLF CRLF (the one that may begin
        in the previous read's tail) if it lies within ``budget`` bytes of ``pos``, else -1."""
        if budget <= 0:
            return -1
        tail = self._tail
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

    def _refuse(self) -> None:
        """Answer 400 and close, as h11 does for a head past its bound; the requests before
        this one on the connection (pipelined) are answered first, with reading paused."""
        self.logger.warning("Invalid HTTP request received. (a request head past %d bytes)", self.head_limit)
        self.refused = True
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self.flow.pause_reading()
            return
        self._send_refusal()

    def on_response_complete(self) -> None:
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
            self.data_received(held)
        elif self._held:
            self.flow.pause_reading()           # super resumed it; the held bytes come first

    def _send_refusal(self) -> None:
        self.transport.write(REFUSAL)
        self.transport.close()
