"""The body deadline (408) and a client leaving mid-body (499) on a real listener.

Starlette's TestClient reads a request body whole (``httpx.Request.read()``) before the
app's first ``receive`` returns, blocking the event loop meanwhile: a 408 there comes from
the after-the-read check alone, never from the timeout cancelling a read that waits. So
these tests speak raw HTTP/1.1 to uvicorn on 127.0.0.1 (a free port), the node's own
parser (h11), and count the write slots through the node's gauge.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn")

from .conftest import metric, uvicorn_in_thread  # noqa: E402

BEHAVIOR = b'{"agent_id": "a-1", "features": [1.0, 2.0, 3.0]}\n'
EVIDENCE = (b'{"evidence_id": "e-1", "agent_id": "a-1", "evidence_type": "peer_report", "log_odds": 1.0, '
            b'"confidence": 1.0, "timestamp": 1000000.0}\n')


def _routes():
    """(path, content type, token, a valid body, answer form) of every body-reading ingest route."""
    routes = [("/v1/behaviors", "application/x-ndjson", "t-ingest", BEHAVIOR, "error"),
              ("/v1/evidence", "application/x-ndjson", "t-obs7", EVIDENCE, "error")]
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError:
        return routes
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(name="chat", end_time_unix_nano=10**9)
    span.attributes.add(key="gen_ai.agent.id").value.string_value = "a-1"
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"name": "chat", "endTimeUnixNano": "1000000000",
         "attributes": [{"key": "gen_ai.agent.id", "value": {"stringValue": "a-2"}}]}]}]}]}
    return routes + [("/v1/traces", "application/x-protobuf", "t-ingest", req.SerializeToString(), "protobuf"),
                     ("/v1/traces", "application/json", "t-ingest", json.dumps(doc).encode(), "json")]


ROUTES = _routes()


def _parsers():
    from swarmguard.apps.serve.run import listener_protocol

    node_parser = listener_protocol()       # the node's own (bounded httptools), and h11 its fallback
    return ["h11"] + ([node_parser] if node_parser != "h11" else [])


@pytest.fixture(params=_parsers(), ids=lambda p: p if isinstance(p, str) else p.__name__)
def listener(make_node, request):
    """(node, client, port) of a node with a 0.6 s body deadline and 2 write slots, listening."""
    import uvicorn

    from swarmguard.apps.serve import create_app

    settings, node, client = make_node(body_timeout_seconds=0.6, max_inflight=2)
    with uvicorn_in_thread(uvicorn.Config(create_app(settings, node), host="127.0.0.1", port=0, http=request.param,
                                          log_level="warning", lifespan="on")) as (_, port):
        yield node, client, port


def _head(path: str, content_type: str, token: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: {length}\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the one answer on ``sock`` (bounded by ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            if len(body) >= int(headers.get("content-length", "0")):
                return int(lines[0].split()[1]), headers, body[: int(headers.get("content-length", "0"))]
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"no whole answer within {timeout} s: {data[:200]!r}")


def _inflight(node) -> float:
    return node.metrics.queue_depth.labels("inflight")._value.get()


def _wait(predicate, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.01)


def _check_form(form: str, status: int, headers: dict[str, str], body: bytes, rpc_code: int) -> str:
    """The answer's message, having checked its form: the node's JSON, or OTLP's Status."""
    if form == "error":
        assert headers["content-type"] == "application/json"
        return json.loads(body)["error"]
    from swarmguard.apps.otlp.decode import decode_status

    assert headers["content-type"].startswith("application/x-protobuf" if form == "protobuf" else "application/json")
    status_message = decode_status(body, form)
    assert status_message.code == rpc_code, (status, status_message)
    return status_message.message


@pytest.mark.parametrize(("path", "content_type", "token", "body", "form"), ROUTES)
def test_a_client_that_goes_silent_mid_body_gets_its_408_at_the_deadline(listener, path, content_type, token,
                                                                          body, form):
    """Not at its next byte (the client may never send one): the read that waits is cut."""
    node, client, port = listener
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(path, content_type, token, len(body)) + body[:3])
        t0 = time.monotonic()
        status, headers, answer = _answer(sock, timeout=10)
        took = time.monotonic() - t0
    assert status == 408 and 0.5 < took < 3.0, (status, took)
    assert "0.6 s" in _check_form(form, status, headers, answer, 4)          # DEADLINE_EXCEEDED
    assert metric(client, "swarmguard_errors_total", code="body_timeout", status="408") == 1
    assert len(node.log) == 0 and _inflight(node) == 0


@pytest.mark.parametrize(("path", "content_type", "token", "body", "form"), ROUTES)
def test_the_deadline_is_for_the_whole_body_not_each_chunk(listener, path, content_type, token, body, form):
    """A byte every 0.1 s (each well within 0.6 s of the one before) for 5 s: 408 near 0.6 s."""
    node, client, port = listener
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(_head(path, content_type, token, len(body) + 100))

        def drip():
            for _ in range(50):
                if stop.wait(0.1):
                    return
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

        dripper = threading.Thread(target=drip)
        t0 = time.monotonic()
        dripper.start()
        try:
            status, headers, answer = _answer(sock, timeout=10)
            took = time.monotonic() - t0
        finally:
            stop.set()
            dripper.join(timeout=10)
    assert status == 408 and 0.5 < took < 3.0, (status, took)
    _check_form(form, status, headers, answer, 4)
    assert len(node.log) == 0


def test_many_timeouts_and_disconnects_give_every_write_slot_back(listener):
    """Two slots, every route: rounds of two requests holding both slots (a third is 503),
    then leaving mid-body or going silent; each is counted once (499 / 408), the gauge
    returns to 0, and valid bodies are then accepted (no slot leaked)."""
    node, client, port = listener
    left = timed_out = 0
    for round_ in range(12):
        path, content_type, token, body, _ = ROUTES[round_ % len(ROUTES)]
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            for sock in socks:
                sock.sendall(_head(path, content_type, token, len(body) + 50) + body[:2])
            _wait(lambda: _inflight(node) == 2, "both requests hold a slot")
            with socket.create_connection(("127.0.0.1", port)) as third:
                third.sendall(_head(path, content_type, token, len(body)) + body)
                assert _answer(third)[0] == 503                      # the slots are really held
            if round_ % 3 == 2:                                      # silent: both time out
                assert [_answer(sock)[0] for sock in socks] == [408, 408]
                timed_out += 2
            else:                                                    # they leave mid-body
                left += 2
        finally:
            for sock in socks:
                sock.close()
        _wait(lambda: _inflight(node) == 0, f"round {round_}: the slots were given back")
    _wait(lambda: metric(client, "swarmguard_errors_total", code="client_disconnected", status="499") == left,
          "every client that left is counted once")
    assert metric(client, "swarmguard_errors_total", code="body_timeout", status="408") == timed_out
    assert metric(client, "swarmguard_errors_total", code="overloaded", status="503") == 12
    assert metric(client, "swarmguard_errors_total", code="internal", status="500") == 0
    assert len(node.log) == 0                                        # nothing of a cut body kept
    for path, content_type, token, body, _ in ROUTES:                # both slots usable, each route
        with socket.create_connection(("127.0.0.1", port)) as a, socket.create_connection(("127.0.0.1", port)) as b:
            a.sendall(_head(path, content_type, token, len(body)) + body)
            b.sendall(_head(path, content_type, token, len(body)) + body)
            assert (_answer(a)[0], _answer(b)[0]) == (200, 200)
    # the slot is given back once the answer is sent, which the client can read first: wait for it
    _wait(lambda: _inflight(node) == 0, "the last requests' slots were given back")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` while the client goes on sending."""
    end = time.monotonic() + seconds
    sock.settimeout(0.1)
    while time.monotonic() < end:
        try:
            sock.sendall(b"x" * 64)
            if sock.recv(64) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:                         # reset: closed with our bytes unread
            return True
    return False


@pytest.mark.parametrize(("path", "content_type", "token", "body", "form"), ROUTES)
def test_a_408_closes_the_connection_so_the_slow_client_holds_nothing(listener, path, content_type, token,
                                                                       body, form):
    """RFC 9110 15.5.9: a 408 says the server closes the connection ("close" in the answer);
    kept open, the client could go on trickling the rest of its body into it for ever."""
    node, client, port = listener
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(path, content_type, token, 10**6) + body[:3])
        status, headers, _ = _answer(sock, timeout=10)
        assert status == 408 and headers.get("connection") == "close"
        assert _closed_within(sock, 5.0)
    assert _inflight(node) == 0
