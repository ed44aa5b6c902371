"""``--header-timeout`` on a real listener (``run.server_config``), on both parsers the node can
run (bounded httptools, and h11, its fallback): a head that does not arrive in time is 408 +
close, a connection that sends nothing is closed, each counted in
``swarmguard_header_timeouts_total{head}``; a head that arrives in time is served, whatever its
body, pipelining, keep-alive or an event stream then do. Raw sockets on 127.0.0.1, a 0.3 s
timeout, every wait bounded."""

from __future__ import annotations

import importlib.util
import json
import select
import socket
import time

import httpx
import pytest

pytest.importorskip("uvicorn")

from swarmguard.apps.serve import ServeSettings, create_app  # noqa: E402
from swarmguard.apps.serve import run as run_module  # noqa: E402
from swarmguard.apps.serve.head_deadline import HeadDeadline, timeout_answer  # noqa: E402

from .conftest import start_uvicorn, uvicorn_in_thread, wait_ready  # noqa: E402

TIMEOUT = 0.3
WAIT = 10.0                 # the most any step waits for an answer or a close
GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
BEHAVIOR = b'{"agent_id": "a-1", "features": [1.0, 2.0, 3.0]}\n'


def _parsers():
    parsers = ["h11"]
    if run_module.listener_protocol() != "h11":
        parsers.append("httptools")
    return parsers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=_parsers())
def node(request, tmp_path_factory):
    """(port, app) of a node on 127.0.0.1 with a 0.3 s header timeout, on the parser ``param``."""

    settings = ServeSettings(host="127.0.0.1", port=_free_port(), data_dir=tmp_path_factory.mktemp("data"),
                             header_timeout_seconds=TIMEOUT, close_windows=False, warm_up=20, features=3)
    app = create_app(settings)
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "h11":          # as where httptools cannot be used
            patch.setattr(run_module, "listener_protocol", lambda: "h11")
        config = run_module.server_config(app, settings)
    assert issubclass(config.http, HeadDeadline) and config.http.header_timeout == TIMEOUT
    assert ("H11" in config.http.__name__) == (request.param == "h11")
    with uvicorn_in_thread(config, join_s=60):
        wait_ready(f"http://127.0.0.1:{settings.port}")
        yield settings.port, app


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _until_closed(sock: socket.socket, buffered: bytes = b"") -> bytes:
    """Everything ``sock`` receives until the listener closes it (fails past ``WAIT``). A reset
    is a close too: a byte the client sent as the listener closed makes its kernel answer RST."""
    data, end = bytearray(buffered), time.monotonic() + WAIT
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk
    raise AssertionError(f"the listener did not close the connection: {bytes(data)[:200]!r}")


def _answer(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    """The next answer on ``sock``: status, header fields, body (Content-Length or chunked)."""
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        head, sep, rest = bytes(buffered).partition(b"\r\n\r\n")
        if sep:
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
            if b"content-length" in fields:
                length = int(fields[b"content-length"])
                if len(rest) >= length:
                    del buffered[:len(head) + 4 + length]
                    return int(head.split()[1]), fields, rest[:length]
            elif rest.endswith(b"0\r\n\r\n"):       # a chunked body's last chunk (the event stream's)
                del buffered[:]
                return int(head.split()[1]), fields, rest
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffered += chunk
    raise AssertionError(f"no whole answer: {bytes(buffered)[:200]!r}")


def _timeouts(port: int, head: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=WAIT).text
    prefix = f'swarmguard_header_timeouts_total{{head="{head}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def _refused_408(received: bytes) -> dict:
    """The listener's 408 (and nothing after it): its JSON error."""
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 408 Request Timeout", received[:200]
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    assert fields[b"connection"] == b"close" and fields[b"content-type"] == b"application/json"
    assert int(fields[b"content-length"]) == len(body) and received == timeout_answer(TIMEOUT)
    return json.loads(body)


def test_a_head_trickled_a_byte_at_a_time_gets_408_and_a_close(node):
    port, _ = node
    before = _timeouts(port, "partial")
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        answered = False
        # a byte every 0.05 s, 100 of them: the head would take 5 s; more bytes do not restart the clock
        for _ in range(100):
            if select.select([sock], [], [], 0.05)[0]:
                answered = True
                break
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
        assert answered, "no answer while the head trickled for 5 s"
        error = _refused_408(_until_closed(sock))
    assert set(error) == {"error"} and f"within {TIMEOUT:g} s" in error["error"]
    assert _timeouts(port, "partial") == before + 1


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(node):
    port, _ = node
    before = _timeouts(port, "empty"), _timeouts(port, "partial")
    with _connect(port) as first, _connect(port) as second:
        assert _until_closed(first) == b"" and _until_closed(second) == b""
    assert (_timeouts(port, "empty"), _timeouts(port, "partial")) == (before[0] + 2, before[1])


def test_a_head_arriving_in_pieces_within_the_timeout_is_served_and_its_body_may_take_longer(node):
    port, app = node
    before = _timeouts(port, "partial"), _timeouts(port, "empty")
    head = (b"POST /v1/behaviors HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\n"
            b"Content-Length: " + str(len(BEHAVIOR)).encode() + b"\r\n\r\n")
    rows = len(app.state.node.populations["behaviors"].window)
    with _connect(port) as sock:
        for i in range(0, len(head), 16):   # the head in pieces over about a third of the timeout
            sock.sendall(head[i:i + 16])
            time.sleep(TIMEOUT / 3 / (len(head) // 16 + 1))
        # the body after twice the header timeout: the head is complete, its clock stopped
        time.sleep(2 * TIMEOUT)
        sock.sendall(BEHAVIOR)
        status, _, body = _answer(sock, bytearray())
        assert status == 200, body
        # ... and a chunked upload whose chunks span the header timeout several times
        sock.sendall(b"POST /v1/behaviors HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        for part in (BEHAVIOR[:20], BEHAVIOR[20:]):
            time.sleep(TIMEOUT)
            sock.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        time.sleep(TIMEOUT)
        sock.sendall(b"0\r\n\r\n")
        status, _, body = _answer(sock, bytearray())
        assert status == 200, body
    assert len(app.state.node.populations["behaviors"].window) == rows + 2
    assert (_timeouts(port, "partial"), _timeouts(port, "empty")) == before


def test_an_idle_keep_alive_connection_is_uvicorns_but_its_next_slow_head_is_bounded(node):
    port, _ = node
    before = _timeouts(port, "partial")
    with _connect(port) as sock:
        buffered = bytearray()
        sock.sendall(GET)
        assert _answer(sock, buffered)[0] == 200
        # idle for 3x the header timeout (uvicorn's keep-alive timeout, 5 s, bounds that wait):
        # still open, and it serves the next request
        assert not select.select([sock], [], [], 3 * TIMEOUT)[0]
        sock.sendall(GET)
        assert _answer(sock, buffered)[0] == 200
        time.sleep(TIMEOUT)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")        # the next head starts, and stops
        _refused_408(_until_closed(sock, bytes(buffered)))
    assert _timeouts(port, "partial") == before + 1


def test_pipelined_requests_are_answered_then_a_partial_head_after_them_times_out(node):
    port, _ = node
    before = _timeouts(port, "partial")
    with _connect(port) as sock:
        sock.sendall(GET + GET + b"GET /healthz HTTP/1.1\r\n")
        buffered = bytearray()
        assert [_answer(sock, buffered)[0] for _ in range(2)] == [200, 200]
        _refused_408(_until_closed(sock, bytes(buffered)))
    assert _timeouts(port, "partial") == before + 1


@pytest.mark.parametrize("framing", [b"Content-Length: 1000000\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n100000\r\n"],
                         ids=["content-length", "chunked"])
def test_the_rest_of_a_body_the_app_never_read_trickled_after_its_answer_is_bounded_too(node, framing):
    """A complete head whose body the app does not read (``/healthz`` answers without it; so
    do a 401, 405, 415 or 503): the answer is sent, then the client trickles the body. The keep-alive
    timer is cancelled by each byte and no head is arriving, so without the clock the connection
    stayed open for ever. It is closed (no second answer to the same request), counted as ``body``."""
    port, _ = node
    before = _timeouts(port, "body"), _timeouts(port, "partial"), _timeouts(port, "empty")
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + framing)
        buffered = bytearray()
        assert _answer(sock, buffered)[0] == 200
        closed = False
        for _ in range(100):                # a byte every 0.05 s: 5 s, 16x the header timeout
            if select.select([sock], [], [], 0.05)[0]:
                closed = True
                break
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the rest of an answered body held the connection for 5 s"
        assert _until_closed(sock, bytes(buffered)) == b""
    assert (_timeouts(port, "body"), _timeouts(port, "partial"), _timeouts(port, "empty")) == (
        before[0] + 1, before[1], before[2])


def test_the_rest_of_an_answered_body_sent_at_once_keeps_the_connection(node):
    """... while a client that sends that rest promptly keeps its keep-alive connection."""
    port, _ = node
    before = _timeouts(port, "body")
    with _connect(port) as sock:
        buffered = bytearray()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        assert _answer(sock, buffered)[0] == 200
        sock.sendall(b"12345" + GET)
        assert _answer(sock, buffered)[0] == 200
        time.sleep(2 * TIMEOUT)             # idle: the keep-alive timer's (5 s), not the clock's
        sock.sendall(GET)
        assert _answer(sock, buffered)[0] == 200
    assert _timeouts(port, "body") == before


def test_an_event_stream_longer_than_the_header_timeout_is_not_cut(node):
    port, _ = node
    before = _timeouts(port, "partial"), _timeouts(port, "empty")
    with _connect(port) as sock:
        sock.sendall(b"GET /v1/events?timeout=1 HTTP/1.1\r\nHost: t\r\n\r\n")   # 1 s: 3x the header timeout
        buffered = bytearray()
        status, fields, body = _answer(sock, buffered)
        assert status == 200 and fields[b"content-type"].startswith(b"text/event-stream")
        assert b": swarmguard isolation events" in body
        sock.sendall(GET)                   # the connection is kept alive after the stream
        assert _answer(sock, buffered)[0] == 200
    assert (_timeouts(port, "partial"), _timeouts(port, "empty")) == before


def _uvicorn_parsers():
    from uvicorn.protocols.http.h11_impl import H11Protocol

    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return [H11Protocol]
    return [H11Protocol, HttpToolsProtocol]


@pytest.mark.parametrize("protocol", _uvicorn_parsers(), ids=lambda p: p.__name__)
def test_uvicorns_own_protocols_bound_no_head_only_the_keep_alive_wait(protocol):
    """Why the clock is the node's: on uvicorn's own protocols (keep-alive timeout 0.2 s) a
    connection that sends nothing, a slow first head and a slow head after a keep-alive
    response all stay open 3x that long, while an idle keep-alive connection is closed. If
    uvicorn starts bounding heads, this fails, and the node's clock may double up with it."""
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    keep_alive = 0.2
    server, thread, port = start_uvicorn(uvicorn.Config(app, host="127.0.0.1", port=0, http=protocol, lifespan="off",
                                                        timeout_keep_alive=keep_alive, log_level="warning"))
    try:
        with _connect(port) as silent, _connect(port) as slow, _connect(port) as after, _connect(port) as idle:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
            for sock in (after, idle):
                sock.sendall(GET)
                assert _answer(sock, bytearray())[0] == 200
            after.sendall(b"GET / HTTP/1.1\r\nHo")
            time.sleep(3 * keep_alive)
            assert _until_closed(idle) == b""                   # the keep-alive timeout closed it
            for sock in (silent, slow, after):
                assert not select.select([sock], [], [], 0)[0], "uvicorn answered or closed it"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_a_bad_header_timeout_is_refused_with_the_typed_error():
    from swarmguard.errors import InvalidInputError

    for bad in (0, -1.0, float("nan")):
        with pytest.raises(InvalidInputError, match=r"--header-timeout \(header_timeout_seconds\) must be > 0") as raised:
            ServeSettings(header_timeout_seconds=bad)
        assert isinstance(raised.value, ValueError)
    assert ServeSettings(header_timeout_seconds=0.25).header_timeout_seconds == 0.25


def test_the_h11_internals_it_relies_on_are_there():
    """Fails loudly on a uvicorn whose H11Protocol changed (pyproject pins the range)."""
    import asyncio
    import inspect

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    from swarmguard.apps.serve import h11_listener
    from swarmguard.apps.serve.h11_listener import HeadDeadlineH11Protocol

    for name in h11_listener.RELIED_ON:
        assert callable(getattr(H11Protocol, name, None)), f"uvicorn's H11Protocol lost {name}"
    for name in ("connection_made", "connection_lost", "data_received", "on_response_complete"):
        ours, theirs = getattr(HeadDeadlineH11Protocol, name), getattr(H11Protocol, name)
        assert ours is not theirs and list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)

    class Transport(asyncio.Transport):
        closed = False

        def is_closing(self):
            return self.closed

        def close(self):
            self.closed = True

        def get_extra_info(self, name, default=None):
            return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8470)}.get(name, default)

    loop = asyncio.new_event_loop()
    try:
        listener = run_module.with_header_timeout("h11", 3600.0)
        config = uvicorn.Config(lambda *a: None, http=listener, log_level="critical", lifespan="off")
        config.load()
        protocol = listener(config, ServerState(), {}, _loop=loop)
        protocol.connection_made(Transport())
        for name in h11_listener.RELIED_ON_STATE:
            assert hasattr(protocol, name), f"uvicorn's H11Protocol no longer keeps {name}"
        assert protocol._head_clock is not None          # from the connection's open
        protocol.data_received(b"GET / HTTP/1.1\r\nHo")
        clock = protocol._head_clock
        assert clock is not None and protocol._head_bytes_received()
        protocol.data_received(b"st: t\r\n")
        assert protocol._head_clock is clock             # more bytes do not restart it
        protocol.connection_lost(None)
        assert protocol._head_clock is None and clock.cancelled()
    finally:
        loop.close()


def test_without_the_h11_internals_the_fallback_is_uvicorns_own_h11_and_a_plain_class_has_no_clock(monkeypatch, tmp_path):
    import sys

    from uvicorn.protocols.http.h11_impl import H11Protocol

    settings = ServeSettings(host="127.0.0.1", data_dir=tmp_path)
    app = create_app(settings)
    monkeypatch.setattr(run_module, "listener_protocol", lambda: "h11")
    assert issubclass(run_module.server_config(app, settings).http, HeadDeadline)
    monkeypatch.setitem(sys.modules, "swarmguard.apps.serve.h11_listener", None)    # as if it failed to import
    assert run_module.server_config(app, settings).http == "h11"
    with pytest.raises(TypeError, match="no head-arrival clock"):
        run_module.with_header_timeout(H11Protocol, 1.0)


@pytest.mark.parametrize("parser", _parsers())
def test_a_websocket_upgraded_before_the_timeout_is_not_cut_by_the_clock(parser):
    """An upgrade hands the connection to uvicorn's WebSocket protocol: the HTTP protocol's
    clock, running since the connection's open, must stop there (on httptools it did not, and
    closed the WebSocket ``header_timeout`` after the open, counted as ``empty``). The node has
    no WebSocket route; a bare ASGI app that accepts and echoes stands in for one."""
    import base64

    import uvicorn

    if not (importlib.util.find_spec("websockets") or importlib.util.find_spec("wsproto")):
        pytest.skip("uvicorn has no WebSocket library here")
    with_header_timeout = run_module.with_header_timeout

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (await receive())["type"] != "websocket.disconnect":
                await send({"type": "websocket.send", "text": "echo"})

    timeouts = []
    base = "h11" if parser == "h11" else run_module.listener_protocol()
    server, thread, port = start_uvicorn(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off",
                                                        log_level="warning",
                                                        http=with_header_timeout(base, TIMEOUT, timeouts.append)))
    try:
        with _connect(port) as sock:
            key = base64.b64encode(b"0123456789abcdef")
            sock.sendall(b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
            received = bytearray()
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(4096)
                assert chunk, bytes(received)
                received += chunk
            assert received.startswith(b"HTTP/1.1 101 ")
            assert not select.select([sock], [], [], 3 * TIMEOUT)[0], "the WebSocket was closed"
            mask = b"\x01\x02\x03\x04"
            sock.sendall(b"\x81\x82" + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"hi")))
            assert sock.recv(4096) == b"\x81\x04echo"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive() and timeouts == []
