"""The request header limit (``--max-header-bytes``): an oversize header is 431 with a one-line
JSON error, nothing changes, and ``/metrics`` counts it — in the app and on a real listener."""

from __future__ import annotations

import importlib.util
import socket
import threading

import httpx
import pytest

from swarmguard import InvalidInputError
from swarmguard.apps.serve import ServeSettings, create_app
from swarmguard.apps.serve.run import server_config
from swarmguard.apps.serve.settings import DEFAULT_MAX_HEADER_BYTES, HEAD_LIMIT_FACTOR

from .conftest import NDJSON, auth, lines, metric, wait_ready

ROW = [{"agent_id": "a-1", "features": [1.0, 2.0]}]


def _unchanged(node) -> None:
    assert len(node.log) == 0 and len(node.populations["behaviors"].window) == 0


def test_a_100_kib_header_is_431_one_line_nothing_changed_and_counted(served):
    _, node, client = served
    big = {"X-Padding": "x" * (100 << 10)}
    r = client.post("/v1/behaviors", content=lines(ROW), headers={**NDJSON, **auth("t-ingest"), **big})
    assert r.status_code == 431
    assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
    assert str(DEFAULT_MAX_HEADER_BYTES) in r.json()["error"]
    _unchanged(node)
    # refused before the token is looked at: a read request is 431 too, and so is a public path
    assert client.get("/v1/agents?top=1", headers={**auth("t-read"), **big}).status_code == 431
    assert client.get("/healthz", headers=big).status_code == 431
    assert metric(client, "swarmguard_errors_total", code="header_too_large", status="431") == 3
    # just under the limit the same request is taken
    fits = {"X-Padding": "x" * (DEFAULT_MAX_HEADER_BYTES - 1024)}
    r = client.post("/v1/behaviors", content=lines(ROW), headers={**NDJSON, **auth("t-ingest"), **fits})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert len(node.populations["behaviors"].window) == 1


def test_the_limit_is_a_setting_and_counts_names_and_values(make_node):
    _, node, client = make_node(max_header_bytes=4096)
    r = client.post("/v1/behaviors", content=lines(ROW),
                    headers={**NDJSON, **auth("t-ingest"), **{f"X-H{i}": "v" * 200 for i in range(30)}})
    assert r.status_code == 431 and "4096" in r.json()["error"]
    _unchanged(node)
    with pytest.raises(InvalidInputError, match="max-header-bytes"):
        ServeSettings(max_header_bytes=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_listener_answers_431_from_the_app_and_400_past_uvicorns_head_bound(tmp_path, tokens_file):
    import uvicorn

    settings = ServeSettings(host="127.0.0.1", port=_free_port(), data_dir=tmp_path / "data", tokens_file=tokens_file,
                             close_windows=False, warm_up=20)
    app = create_app(settings)
    config = server_config(app, settings)
    assert config.h11_max_incomplete_event_size == HEAD_LIMIT_FACTOR * settings.max_header_bytes
    # uvicorn's own httptools protocol would buffer a head of any size; the node's bounds it
    # (and where httptools is missing, as the serve extra does not allow, the parser is h11)
    if importlib.util.find_spec("httptools") is not None:
        from swarmguard.apps.serve.bounded_head import BoundedHeadHttpToolsProtocol

        assert issubclass(config.http, BoundedHeadHttpToolsProtocol)
    else:
        from swarmguard.apps.serve.h11_listener import HeadDeadlineH11Protocol

        assert issubclass(config.http, HeadDeadlineH11Protocol)
    assert config.http.header_timeout == settings.header_timeout_seconds     # and a head's time is bounded
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready(base)
        big = {"X-Padding": "x" * (100 << 10)}
        r = httpx.post(base + "/v1/behaviors", content=lines(ROW), timeout=10,
                       headers={**NDJSON, **auth("t-ingest"), **big})
        assert r.status_code == 431 and set(r.json()) == {"error"}
        # past uvicorn's own bound on a head the listener refuses it before the app (400, uncounted)
        # (a head well past it: h11, the fallback parser, checks its bound while the head is incomplete)
        huge = {"X-Padding": "x" * (4 * HEAD_LIMIT_FACTOR * settings.max_header_bytes)}
        try:
            r = httpx.post(base + "/v1/behaviors", content=lines(ROW), timeout=10,
                           headers={**NDJSON, **auth("t-ingest"), **huge})
            assert r.status_code == 400, (r.status_code, r.text[:200])
        except httpx.TransportError:      # or it closes the connection: either way nothing was taken
            pass
        node = app.state.node
        assert len(node.log) == 0 and len(node.populations["behaviors"].window) == 0
        text = httpx.get(base + "/metrics", headers=auth("t-read"), timeout=10).text
        assert 'swarmguard_errors_total{code="header_too_large",status="431"} 1.0' in text
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    assert not thread.is_alive()
