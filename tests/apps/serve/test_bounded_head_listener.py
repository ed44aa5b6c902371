"""The node's listener (``run.server_config``: httptools through ``BoundedHeadHttpToolsProtocol``)
on a real socket: a request head past ``HEAD_LIMIT_FACTOR`` × ``--max-header-bytes`` is refused
as it arrives, whatever its shape, and a long keep-alive connection is not."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

pytest.importorskip("httptools")

from swarmguard.apps.serve import ServeSettings, create_app  # noqa: E402
from swarmguard.apps.serve.bounded_head import REFUSAL, BoundedHeadHttpToolsProtocol  # noqa: E402
from swarmguard.apps.serve.run import server_config  # noqa: E402
from swarmguard.apps.serve.settings import HEAD_LIMIT_FACTOR  # noqa: E402

from .conftest import uvicorn_in_thread, wait_ready  # noqa: E402

MAX_HEADER_BYTES = 1024
LIMIT = HEAD_LIMIT_FACTOR * MAX_HEADER_BYTES


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """(port, app) of one node listening on 127.0.0.1 with --max-header-bytes 1024, no tokens."""

    settings = ServeSettings(host="127.0.0.1", port=_free_port(), data_dir=tmp_path_factory.mktemp("data"),
                             max_header_bytes=MAX_HEADER_BYTES, close_windows=False, warm_up=20)
    app = create_app(settings)
    config = server_config(app, settings)
    assert issubclass(config.http, BoundedHeadHttpToolsProtocol)     # with the head's clock (--header-timeout)
    with uvicorn_in_thread(config, join_s=60):
        wait_ready(f"http://127.0.0.1:{settings.port}")
        yield settings.port, app


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _answer(sock: socket.socket, buffered: bytearray) -> tuple[int, bytes]:
    """The status and body of the next answer on ``sock`` (it has a Content-Length)."""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        head, sep, rest = bytes(buffered).partition(b"\r\n\r\n")
        if sep:
            fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
            length = int(fields[b"content-length"])
            if len(rest) >= length:
                del buffered[:len(head) + 4 + length]
                return int(head.split()[1]), rest[:length]
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffered += chunk
    raise AssertionError(f"no whole answer: {bytes(buffered)[:200]!r}")


def _refused(sock: socket.socket, buffered: bytearray = None) -> None:
    """The rest of what ``sock`` receives is the listener's 400, then the connection closes."""
    data = bytearray(buffered or b"")
    end = time.monotonic() + 10
    try:
        while time.monotonic() < end:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:          # the node closed with bytes of ours unread: after its answer
        pass
    assert bytes(data) == REFUSAL, bytes(data)[:300]


def _errors_431(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('swarmguard_errors_total{code="header_too_large",status="431"}'):
            return float(line.split()[-1])
    return 0.0


def _healthz(extra: bytes = b"") -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"


def test_a_trickled_head_is_refused_at_the_first_byte_past_the_bound(node):
    port, _ = node
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * (2 * LIMIT)
    with _connect(port) as sock:
        for i in range(64):                 # the method, the URL, one header: byte by byte
            sock.sendall(head[i:i + 1])
            time.sleep(0.002)
        for i in range(64, LIMIT, 512):
            sock.sendall(head[i:min(i + 512, LIMIT)])
            time.sleep(0.002)
        sock.settimeout(0.5)                # LIMIT bytes of an unfinished head: held, not answered
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.settimeout(10)
        sock.sendall(head[LIMIT:LIMIT + 1])
        _refused(sock)


@pytest.mark.parametrize("shape", ["one huge header", "many headers", "huge url"])
def test_a_head_past_the_bound_is_refused_before_the_app_whatever_its_shape(node, shape):
    port, _ = node
    before = _errors_431(port)
    if shape == "one huge header":
        head = _healthz(b"X-Big: " + b"b" * (LIMIT + 100) + b"\r\n")
    elif shape == "many headers":
        head = _healthz(b"".join(f"X-H{i}: v\r\n".encode() for i in range(LIMIT // 8)))
    else:
        head = b"GET /healthz?q=" + b"u" * (LIMIT + 100) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert len(head) > LIMIT
    with _connect(port) as sock:
        sock.sendall(head)
        _refused(sock)
    assert _errors_431(port) == before          # the app never saw it
    with _connect(port) as sock:                # and the node serves the next connection
        sock.sendall(_healthz())
        assert _answer(sock, bytearray())[0] == 200


def test_a_head_over_max_header_bytes_but_under_the_bound_reaches_the_app_431_and_counted(node):
    port, _ = node
    before = _errors_431(port)
    with _connect(port) as sock:
        sock.sendall(_healthz(b"X-Big: " + b"b" * (LIMIT - 200) + b"\r\n"))
        status, body = _answer(sock, bytearray())
    assert status == 431 and b"1024" in body
    assert _errors_431(port) == before + 1


def test_a_pipelined_second_request_past_the_bound_is_refused_after_the_first_is_answered(node):
    port, _ = node
    with _connect(port) as sock:
        sock.sendall(_healthz() + _healthz(b"X-Big: " + b"b" * (LIMIT + 100) + b"\r\n"))
        buffered = bytearray()
        status, _ = _answer(sock, buffered)
        assert status == 200
        _refused(sock, buffered)


def test_a_keep_alive_connection_is_counted_afresh_for_every_request(node):
    """300 requests on one connection, 30 times the bound in all, some heads near the bound
    (the app's 431), and pipelined pairs: every one answered, the connection kept."""
    port, _ = node
    near = _healthz(b"X-Big: " + b"b" * (LIMIT - 200) + b"\r\n")
    small = _healthz(b"X-Pad: " + b"p" * 800 + b"\r\n")
    sent = 0
    with _connect(port) as sock:
        buffered = bytearray()
        for _ in range(100):
            sock.sendall(small)
            assert _answer(sock, buffered)[0] == 200
            sock.sendall(near)
            assert _answer(sock, buffered)[0] == 431
            sock.sendall(small + small)                 # pipelined in one send
            assert [_answer(sock, buffered)[0] for _ in range(2)] == [200, 200]
            sent += len(near) + 3 * len(small)
        assert sent > 30 * LIMIT
        sock.sendall(_healthz())                        # still open
        assert _answer(sock, buffered)[0] == 200
