"""``BoundedHeadHttpToolsProtocol`` (the node's listener): httptools' parser with a bound on a
request head, counted as the bytes arrive. Here on an in-memory transport, byte-exact at the
bound and at every way of splitting a request into reads; tests/apps/serve/test_header_limit.py
and test_bounded_head_listener.py drive it through a real socket."""

from __future__ import annotations

import asyncio
import inspect
import sys

import pytest

pytest.importorskip("httptools")

import uvicorn  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from swarmguard.apps.serve import bounded_head  # noqa: E402
from swarmguard.apps.serve.bounded_head import REFUSAL, BoundedHeadHttpToolsProtocol  # noqa: E402
from swarmguard.apps.serve.head_deadline import with_header_timeout  # noqa: E402

LIMIT = 1024


class _Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed or paused reading."""

    def __init__(self):
        super().__init__()
        self.written, self.closed, self.paused = bytearray(), False, False

    def write(self, data):
        assert not self.closed, "written after close"
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8470)}.get(name, default)


def _open_protocol(app, limit, loop, header_timeout=3600.0):
    """``BoundedHeadHttpToolsProtocol`` at head bound ``limit`` on ``loop`` for ASGI ``app``,
    connected to a fresh ``_Transport``: ``(protocol, transport)``. Its head clock
    (``--header-timeout``) runs as the node's does, at ``header_timeout`` seconds (an hour: it
    never runs out here, but :func:`_clock_agrees` can check when it runs)."""
    listener = with_header_timeout(BoundedHeadHttpToolsProtocol, header_timeout)
    config = uvicorn.Config(app, http=listener, h11_max_incomplete_event_size=limit,
                            log_level="critical", lifespan="off")
    config.load()
    protocol = listener(config, ServerState(), {}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def _clock_agrees(protocol, transport) -> bool:
    """The head clock runs exactly while the connection is open, waits for a head or the rest of
    an answered body (none in flight or queued, nothing held) and nothing else bounds that wait:
    no keep-alive timer, or part of the head already here (head_deadline's rule, from the
    protocol's own state)."""
    waiting = (not transport.closed and not protocol._upgraded and not protocol.refused and not protocol.pipeline
               and not protocol._held and (protocol.cycle is None or protocol.cycle.response_complete))
    runs = waiting and (protocol.timeout_keep_alive_task is None or (protocol.in_head and protocol.head_bytes > 0))
    return (protocol._head_clock is not None) == runs


class _Connection:
    """One connection of the protocol over ``_Transport`` to an app that records each request
    (method, path, header bytes, body) and answers 200 with the body's length."""

    def __init__(self, limit=LIMIT):
        self.requests = []
        self.loop = asyncio.new_event_loop()

        async def app(scope, receive, send):
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            self.requests.append((scope["method"], scope["path"], body))
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

        self.protocol, self.transport = _open_protocol(app, limit, self.loop)

    def send(self, *reads: bytes) -> None:
        for read in reads:
            if self.transport.closed:
                break
            self.protocol.data_received(read)
            self.settle()
            assert _clock_agrees(self.protocol, self.transport), read[:80]

    def settle(self) -> None:
        for _ in range(20):                 # let the app's tasks answer
            self.loop.run_until_complete(asyncio.sleep(0))

    @property
    def refused(self) -> bool:
        return self.transport.closed and bytes(self.transport.written).endswith(REFUSAL)

    def answers(self) -> int:
        return bytes(self.transport.written).count(b"HTTP/1.1 200 OK")

    def close(self):
        self.protocol.connection_lost(None)
        self.settle()
        self.loop.close()


@pytest.fixture
def connection():
    made = []

    def make(limit=LIMIT):
        made.append(_Connection(limit))
        return made[-1]

    yield make
    for c in made:
        c.close()


def head_of(size: int, path: str = "/x", extra: bytes = b"") -> bytes:
    """A GET head of exactly ``size`` bytes (its CRLF CRLF included)."""
    start = f"GET {path} HTTP/1.1\r\nHost: t\r\n".encode() + extra + b"X-Pad: "
    pad = size - len(start) - 4
    assert pad >= 1
    head = start + b"p" * pad + b"\r\n\r\n"
    assert len(head) == size
    return head


def test_the_internals_it_relies_on_are_there():
    """Fails loudly on a uvicorn whose HttpToolsProtocol changed (pyproject pins the range)."""
    for name in bounded_head.RELIED_ON:
        assert callable(getattr(HttpToolsProtocol, name, None)), f"uvicorn's HttpToolsProtocol lost {name}"
        assert getattr(BoundedHeadHttpToolsProtocol, name) is not None
    for name in ("data_received", "on_headers_complete", "on_message_complete", "on_response_complete"):
        ours, theirs = getattr(BoundedHeadHttpToolsProtocol, name), getattr(HttpToolsProtocol, name)
        assert ours is not theirs, f"{name} is overridden"
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters), name
    assert list(inspect.signature(HttpToolsProtocol.__init__).parameters) == \
        ["self", "config", "server_state", "app_state", "_loop"]
    c = _Connection()
    try:
        c.protocol.data_received(head_of(200))
        for name in bounded_head.RELIED_ON_STATE:
            assert hasattr(c.protocol, name), f"uvicorn's HttpToolsProtocol no longer keeps {name}"
        assert c.protocol.headers and c.protocol.cycle is not None
    finally:
        c.close()
    major, minor = (int(x) for x in uvicorn.__version__.split(".")[:2])
    assert (major, minor) == (0, 55), f"uvicorn {uvicorn.__version__}: not the release the subclass was tested on"


@pytest.mark.parametrize("split", [None, 1, 3, 17, LIMIT - 4, LIMIT - 3, LIMIT - 2, LIMIT - 1])
def test_a_head_of_exactly_the_bound_is_served_and_one_byte_more_is_refused(connection, split):
    for size, served in ((LIMIT, True), (LIMIT + 1, False)):
        c, head = connection(), head_of(size)
        reads = [head] if split is None else [head[:split], head[split:]]
        c.send(*reads)
        assert (c.answers(), c.refused) == ((1, False) if served else (0, True)), (size, split)
        assert len(c.requests) == (1 if served else 0)


def test_a_head_trickled_byte_by_byte_is_refused_at_the_first_byte_past_the_bound(connection):
    c = connection()
    head = head_of(LIMIT + 200)
    for i in range(LIMIT):
        c.protocol.data_received(head[i:i + 1])
    assert not c.transport.closed and not c.transport.written and c.protocol.head_bytes == LIMIT
    c.protocol.data_received(head[LIMIT:LIMIT + 1])
    assert c.refused and c.requests == []
    assert bytes(c.transport.written) == REFUSAL


def test_bytes_before_the_request_line_count_too(connection):
    """llhttp skips empty lines before a request (no callback): they are still head bytes."""
    for leading, served in ((b"\r\n\r\n", True), (b"\r\n\r\n\r\n", False)):
        c = connection()
        c.send(leading + head_of(LIMIT - 4))
        assert (c.answers(), c.refused) == ((1, False) if served else (0, True)), leading


@pytest.mark.parametrize("shape", ["one value", "many headers", "url"])
def test_every_shape_of_head_is_bounded(connection, shape):
    c = connection()
    if shape == "one value":
        reads = [b"GET / HTTP/1.1\r\nX-Big: "] + [b"v" * 100] * 30
    elif shape == "many headers":
        reads = [b"GET / HTTP/1.1\r\n"] + [f"X-H{i}: v\r\n".encode() for i in range(300)]
    else:
        reads = [b"GET /"] + [b"u" * 100] * 30
    c.send(*reads)
    assert c.refused and c.requests == []
    assert c.protocol.head_bytes <= LIMIT      # what the parser saw of it


def test_the_count_starts_again_for_every_request_on_a_connection(connection):
    c = connection()
    body = b"b" * 3000
    post = (f"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    for i in range(40):
        c.send(head_of(LIMIT - 10, path=f"/r{i}"), post)
    assert c.answers() == 80 and not c.transport.closed
    assert [r[1] for r in c.requests[:2]] == ["/r0", "/p"] and c.requests[1][2] == body


@pytest.mark.parametrize("cut", [0, 5, 100, 3000])
def test_pipelined_requests_in_one_read_are_counted_each_from_its_first_byte(connection, cut):
    """A body of known length ends exactly where the next head starts, however the reads fall."""
    body = b"b" * 3000
    post = (f"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    stream = post + head_of(LIMIT, "/a") + post + head_of(LIMIT, "/b")
    c = connection()
    c.send(*([stream] if cut == 0 else [stream[:cut], stream[cut:]]))
    assert c.answers() == 4 and not c.transport.closed, bytes(c.transport.written)[-300:]
    assert [r[1] for r in c.requests] == ["/p", "/a", "/p", "/b"]


def test_a_pipelined_request_past_the_bound_is_refused_after_the_ones_before_it_are_answered(connection):
    c = connection()
    c.send(head_of(300, "/first") + head_of(300, "/second") + head_of(LIMIT + 1, "/third"))
    assert [r[1] for r in c.requests] == ["/first", "/second"]
    written = bytes(c.transport.written)
    assert written.count(b"HTTP/1.1 200 OK") == 2 and written.endswith(REFUSAL) and c.transport.closed


def test_after_a_chunked_body_the_next_head_is_still_bounded(connection):
    chunked = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    c = connection()
    c.send(chunked + head_of(300, "/after"))            # under the bound (the whole read counts)
    assert [r[1] for r in c.requests] == ["/c", "/after"] and c.requests[0][2] == b"hello"
    c.send(chunked)
    c.send(b"GET /big HTTP/1.1\r\nX-Big: ", *[b"v" * 100] * 20)
    assert c.refused and [r[1] for r in c.requests] == ["/c", "/after", "/c"]


def test_a_malformed_head_is_uvicorns_400_as_before(connection):
    c = connection()
    c.send(b"GET / HTTP/1.1\nHost: t\n\n")
    assert c.transport.closed and b"400 Bad Request" in bytes(c.transport.written)
    assert c.requests == []


def test_the_refusal_is_the_answer_h11_gives():
    """400, text/plain, connection close, "Invalid HTTP request received." (uvicorn's h11_impl)."""
    head, _, body = REFUSAL.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    assert fields == {b"content-type": b"text/plain; charset=utf-8", b"connection": b"close",
                      b"content-length": str(len(body)).encode()}
    source = inspect.getsource(__import__("uvicorn.protocols.http.h11_impl", fromlist=["x"]))
    assert '"Invalid HTTP request received."' in source and body == b"Invalid HTTP request received."


def test_the_listener_falls_back_to_h11_without_httptools_or_without_the_internals(monkeypatch):
    from swarmguard.apps.serve.run import listener_protocol

    assert listener_protocol() is BoundedHeadHttpToolsProtocol
    monkeypatch.delitem(sys.modules, "swarmguard.apps.serve.bounded_head")
    monkeypatch.setitem(sys.modules, "httptools", None)        # as if not installed
    assert listener_protocol() == "h11"
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "swarmguard.apps.serve.bounded_head")
    monkeypatch.delattr(HttpToolsProtocol, "on_response_complete")   # as if uvicorn changed
    with pytest.raises(ImportError, match="on_response_complete"):
        __import__("swarmguard.apps.serve.bounded_head")
    assert listener_protocol() == "h11"


def test_pipelined_requests_past_the_first_wait_unparsed_so_one_read_is_all_that_is_held(connection):
    """While one request is in flight and another queued, the rest of the read is held as
    bytes, not parsed into more queued requests (uvicorn's base class queues every head of
    every read it still parses: a client sending pipelined GETs faster than they are answered
    grew the queue without bound, 208 673 entries in 8 s on a real socket)."""
    c = connection()
    many = b"".join(head_of(100, f"/r{i}") for i in range(500))
    c.protocol.data_received(many)              # the app has not run yet: /r0 in flight
    assert len(c.protocol.pipeline) <= 1
    c.settle()
    for _ in range(50):
        if c.answers() == 500:
            break
        c.settle()
        assert len(c.protocol.pipeline) <= 1
    assert c.answers() == 500 and not c.transport.closed
    assert [r[1] for r in c.requests] == [f"/r{i}" for i in range(500)]


def test_a_chunked_body_longer_than_the_bound_in_one_read_leaves_the_connection_open(connection):
    """A legitimate keep-alive request after a chunked body whose last read is longer than the
    bound is served, not refused (the whole read used to be counted as the next head's)."""
    body = b"x" * (3 * LIMIT)
    chunked = (b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    c = connection()
    c.send(chunked)
    c.send(head_of(300, "/after"))
    assert not c.transport.closed and [r[1] for r in c.requests] == ["/c", "/after"]
    assert c.requests[0][2] == body
    c.send(chunked + head_of(300, "/pipelined"))
    assert not c.transport.closed and [r[1] for r in c.requests][-2:] == ["/c", "/pipelined"]


@pytest.mark.parametrize("cut", [None, 1, 2, 3, 4])
def test_a_head_past_the_bound_in_the_read_that_ends_a_chunked_body_is_still_refused(connection, cut):
    """The bytes after the chunked body's last CRLF CRLF count, whether it ends in this read or
    straddles the previous one (``cut`` bytes of ``0 CRLF CRLF`` left in the next read)."""
    chunked = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    big = b"GET /big HTTP/1.1\r\nX-Big: " + b"v" * LIMIT
    c = connection()
    if cut is None:
        c.send(chunked + big)
    else:
        c.send(chunked[:-cut], chunked[-cut:] + big)
    assert c.refused and [r[1] for r in c.requests] == ["/c"]


@pytest.mark.parametrize("cut", [None, 1, 2, 3, 4, 5])
def test_heads_of_exactly_the_bound_after_a_chunked_body_are_served_however_the_reads_fall(connection, cut):
    """A chunked body ends only just after a CRLF CRLF, so it is fed up to each one: the next
    head is counted from its first byte, even with a body framed by Content-Length after it in
    the same read and the chunked body's last CRLF CRLF split across reads (``cut``)."""
    data = b"ab\r\n\r\ncd\r\n\r\n\r\n" * 40
    chunked = (b"POST /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
    body = b"z" * (LIMIT // 2)
    framed = head_of(300, "/c", extra=f"Content-Length: {len(body)}\r\n".encode()) + body
    second = [chunked] if cut is None else [chunked[:-cut], chunked[-cut:]]
    c = connection()
    c.send(chunked + framed, head_of(LIMIT, "/a"), *second, head_of(LIMIT, "/b"))
    c.settle()
    assert not c.transport.closed, bytes(c.transport.written)[-200:]
    assert [r[1] for r in c.requests] == ["/k", "/c", "/a", "/k", "/b"] and c.requests[0][2] == data


def test_a_chunked_body_full_of_crlf_crlf_costs_a_bounded_number_of_parser_calls_a_read(connection, monkeypatch):
    """Cutting a chunked body at each CRLF CRLF would be one parser call (and one on_body
    append) per 4 bytes for a body of nothing else: the body is framed here as the parser
    frames it, so a read of it is one parser call, however many CRLF CRLF or chunks it holds."""
    calls = []
    feed = BoundedHeadHttpToolsProtocol._feed
    monkeypatch.setattr(BoundedHeadHttpToolsProtocol, "_feed", lambda self, piece: calls.append(1) or feed(self, piece))
    data = b"\r\n\r\n" * 16384
    c = connection()
    c.send(b"POST /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           + f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n" + head_of(LIMIT, "/a"))
    assert [r[1] for r in c.requests] == ["/k", "/a"] and c.requests[0][2] == data
    assert len(calls) <= 4, len(calls)         # the head, the body, the next head
    calls.clear()
    tiny = b"".join(b"1\r\n\n\r\n" for _ in range(5000))
    c.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + tiny + b"0\r\n\r\n"
           + head_of(LIMIT, "/b"))
    assert [r[1] for r in c.requests][-2:] == ["/t", "/b"] and c.requests[-2][2] == b"\n" * 5000
    assert len(calls) <= 4, len(calls)


def _chunked_post(data: bytes, path: str = "/k", trailers: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + trailers + b"\r\n")


def test_a_head_past_the_bound_after_a_chunked_body_full_of_crlf_crlf_is_refused(connection):
    """The head after a chunked body is bounded however many CRLF CRLF the body holds (past 16
    in one read the rest of the read used to reach the parser in one piece, uncounted: a head
    of 20 times the bound was served)."""
    big = b"GET /big HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * (20 * LIMIT) + b"\r\n\r\n"
    c = connection()
    c.send(_chunked_post(b"\r\n\r\n" * 17) + big)
    assert c.refused and [r[1] for r in c.requests] == ["/k"]


def test_pipelined_requests_after_a_chunked_body_full_of_crlf_crlf_wait_unparsed(connection):
    """At most one request is queued parsed, however many CRLF CRLF the chunked body before them
    holds (past 16 in one read every request after it in the read was parsed into the queue)."""
    gets = b"".join(head_of(60, f"/g{i}") for i in range(300))
    c = connection()
    c.protocol.data_received(_chunked_post(b"\r\n\r\n" * 17) + gets)
    assert len(c.protocol.pipeline) <= 1
    for _ in range(100):
        c.settle()
        assert len(c.protocol.pipeline) <= 1
    assert [r[1] for r in c.requests] == ["/k"] + [f"/g{i}" for i in range(300)]


@pytest.mark.parametrize("crlfs", [17, 100])
@pytest.mark.parametrize("last", [0, 1])
def test_a_head_of_exactly_the_bound_after_a_chunked_body_full_of_crlf_crlf_is_served(connection, crlfs, last):
    """The documented residual (a head near the bound over-counted after more than 16 CRLF CRLF
    in one read, with a Content-Length request between, the head's ``last`` bytes in the next
    read) is gone: every head counts from its own first byte."""
    body = b"z" * 50
    framed = head_of(300, "/c", extra=f"Content-Length: {len(body)}\r\n".encode()) + body
    stream = _chunked_post(b"ab\r\n\r\n" * crlfs) + framed + head_of(LIMIT, "/a")
    c = connection()
    c.send(*([stream] if not last else [stream[:-last], stream[-last:]]))
    c.settle()
    assert not c.transport.closed, bytes(c.transport.written)[-200:]
    assert [r[1] for r in c.requests] == ["/k", "/c", "/a"]


@pytest.mark.parametrize("split", [None, 1, 7])
def test_a_chunked_bodys_trailers_are_bounded_as_a_head_is(connection, split):
    """Trailers are header lines the parser buffers as it does a head's (h11 bounds them with
    the same limit): past the bound they are refused, within it served."""
    c = connection()
    stream = _chunked_post(b"hello", trailers=b"X-T: " + b"a" * (2 * LIMIT) + b"\r\n")
    c.send(*([stream] if split is None else [stream[i:i + split] for i in range(0, len(stream), split)]))
    assert c.refused and c.requests == []
    c = connection()
    stream = _chunked_post(b"hello", trailers=b"X-T: " + b"a" * (LIMIT // 2) + b"\r\n") + head_of(LIMIT, "/a")
    c.send(*([stream] if split is None else [stream[i:i + split] for i in range(0, len(stream), split)]))
    c.settle()
    assert not c.transport.closed and [r[1] for r in c.requests] == ["/k", "/a"]
    assert c.requests[0][2] == b"hello"


@pytest.mark.parametrize("split", [None, 1, 2, 3, 5])
def test_chunked_bodies_of_every_chunk_shape_are_framed_like_the_parser_does(connection, split):
    """Many chunks, upper-case hex, leading zeros, extensions, empty trailers: the body is what
    was sent and the next head still counts from its first byte (exactly the bound served)."""
    chunks = [b"x" * 10, b"\r\n\r\n" * 3, b"y" * 255, b"0\r\n\r\n"]
    body = (b"".join(f"{len(p):X}\r\n".encode() + p + b"\r\n" for p in chunks[:2])
            + b"00ff;name=value;q=\"a b\"\r\n" + chunks[2] + b"\r\n"
            + b"5;e\r\n" + chunks[3] + b"\r\n" + b"000;last\r\n\r\n")
    stream = b"POST /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body + head_of(LIMIT, "/a")
    c = connection()
    c.send(*([stream] if split is None else [stream[i:i + split] for i in range(0, len(stream), split)]))
    c.settle()
    assert not c.transport.closed, bytes(c.transport.written)[-200:]
    assert [r[1] for r in c.requests] == ["/k", "/a"] and c.requests[0][2] == b"".join(chunks)


@pytest.mark.parametrize("shift", [-3, 2, None])
def test_should_the_parser_end_a_chunked_body_elsewhere_than_its_framing_the_connection_is_refused(
        connection, monkeypatch, shift):
    """A framing that disagrees with llhttp's (simulated: its end moved by ``shift`` bytes, or
    not found) is refused, not fed on: what follows would not be counted from its first byte."""
    framing = BoundedHeadHttpToolsProtocol._chunked_end

    def moved(self, data, pos):
        end = framing(self, data, pos)
        return end if end < 0 else (-1 if shift is None else end + shift)

    monkeypatch.setattr(BoundedHeadHttpToolsProtocol, "_chunked_end", moved)
    c = connection()
    c.send(_chunked_post(b"hello") + head_of(200, "/a") + head_of(200, "/b"))
    c.settle()
    assert c.transport.closed and bytes(c.transport.written).endswith(REFUSAL)
    assert [r[1] for r in c.requests] in ([], ["/k"]) and "/a" not in [r[1] for r in c.requests]



def test_held_bytes_stay_one_read_while_the_request_in_flight_polls_receive(connection):
    """The request in flight resumes reading each time its app calls ``receive`` (Starlette's
    ``is_disconnected``, which the event stream polls every 0.1 s): while bytes are held no
    read is let in, so they stay the rest of one read (they grew by a read a poll, without
    bound), and every request is still served once, in order."""
    c = connection()
    c.protocol.data_received(head_of(100, "/a") + head_of(100, "/b") + head_of(100, "/c"))
    held = len(c.protocol._held)
    assert held == 100 and c.transport.paused and len(c.protocol.pipeline) == 1
    for i in range(50):
        c.protocol.flow.resume_reading()        # what /a's receive() does
        if not c.transport.paused:              # a read comes only while reading is on
            c.protocol.data_received(head_of(100, f"/m{i}"))
    assert len(c.protocol._held) == held and c.transport.paused
    for _ in range(10):
        c.settle()
    assert [r[1] for r in c.requests] == ["/a", "/b", "/c"] and not c.transport.paused
    c.send(head_of(100, "/d"))
    assert [r[1] for r in c.requests] == ["/a", "/b", "/c", "/d"] and not c.transport.closed


def test_a_chunk_size_of_many_leading_zeros_is_the_size_it_ends_in(connection):
    """llhttp takes any number of leading zeros in a chunk size, across reads too: 256 KiB of
    them is still the size it ends in (such sizes take the framing's digit-by-run path)."""
    c = connection()
    zeros = b"0" * (1 << 18)
    c.send(b"POST /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n", zeros, zeros + b"5\r\nhello\r\n",
           zeros, zeros + b"0\r\n\r\n" + head_of(LIMIT, "/a"))
    assert [r[1] for r in c.requests] == ["/k", "/a"] and c.requests[0][2] == b"hello"
    assert not c.transport.closed


def test_trailers_past_the_bound_after_the_response_started_close_the_connection():
    """An app that starts its response before it has read its whole body (a streaming echo):
    trailers past the bound must still end the connection, as llhttp's own error there does
    in uvicorn, rather than leave reading paused with the app waiting in ``receive`` for a
    body that never comes (with reading paused not even the client's close is seen)."""
    seen = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"transfer-encoding", b"chunked")]})
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b"done"})

    loop = asyncio.new_event_loop()
    protocol, transport = _open_protocol(app, LIMIT, loop)
    try:
        protocol.data_received(b"POST /k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0))
        protocol.data_received(b"0\r\nX-T: " + b"a" * (2 * LIMIT) + b"\r\n\r\n")
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0))
        assert protocol.refused and transport.closed
        assert seen[-1] == "http.disconnect"        # the app's receive returned: it is not left waiting
    finally:
        protocol.connection_lost(None)
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.mark.parametrize("body_sent", [0, 5])
def test_a_framing_that_misses_a_chunked_bodys_end_is_refused_even_when_a_next_body_is_open(
        connection, monkeypatch, body_sent):
    """Should the framing miss a chunked body's end (simulated: it never finds one), the parser
    may go on, in the same piece, through the whole head of a next request with a body still
    to come: that head (here past the bound) was fed uncounted and its request started, as
    the check looked for a misframed end only when the piece ended in a head."""
    monkeypatch.setattr(BoundedHeadHttpToolsProtocol, "_chunked_end", lambda self, data, pos: -1)
    c = connection()
    big = head_of(3 * LIMIT, "/a", extra=b"Content-Length: 10\r\n")
    c.send(_chunked_post(b"hello") + big + b"x" * body_sent)
    # refused in the read that carried it, not left running on a head past the bound
    assert c.protocol.refused and c.transport.closed and bytes(c.transport.written).endswith(REFUSAL)
    assert [r[1] for r in c.requests] == ["/k"]
