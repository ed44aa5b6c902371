"""What a node pulls from a peer is bounded like a request body: on the wire and after inflating."""

from __future__ import annotations

import gzip
import json

import httpx
import numpy as np

from swarmguard.apps.serve.peers import PeerLink, replication_of

from .conftest import close_window, post_behaviors
from .test_peers_node import PEER_HEADERS, _rows, pair  # noqa: F401 - the fixture


def _state(node):
    rep = replication_of(node)
    return rep.vectors().to_json(), rep.replicas.delta_since(None).to_bytes()


def test_a_pulled_delta_larger_than_the_body_limit_once_inflated_is_refused_and_changes_nothing(pair):  # noqa: F811
    clock, node = pair
    _, us, us_c = node("us")
    assert post_behaviors(us_c, _rows(np.random.default_rng(3), "u", 30)).status_code == 200
    close_window(us_c)
    _, whole = _state(us)
    gz = gzip.compress(whole, compresslevel=1)
    limit = (len(gz) + len(whole)) // 2          # the wire form passes, the inflated one does not
    assert len(gz) < limit < len(whole)
    _, eu, _ = node("eu", max_body_bytes=limit)
    before = _state(eu)
    link = PeerLink("http://testserver")
    assert not replication_of(eu).sync_once(link, us_c, PEER_HEADERS)
    assert "413" in link.last_error and "decompressed" in link.last_error, link.last_error
    assert _state(eu) == before
    # with room for it, the same pull joins (the bound, not the delta, refused it)
    _, eu2, _ = node("eu2", max_body_bytes=len(whole) + 1024)
    assert replication_of(eu2).sync_once(PeerLink("http://testserver"), us_c, PEER_HEADERS)
    assert replication_of(eu2).vectors().populations == replication_of(us).vectors().populations


def test_a_gzip_bomb_or_an_endless_answer_from_a_peer_to_any_exchange_is_refused_with_413(pair):  # noqa: F811
    clock, node = pair
    _, us, us_c = node("us")
    _, eu, _ = node("eu", max_body_bytes=1 << 16)
    answer = us_c.get("/v1/peer/vectors", headers=PEER_HEADERS).json()
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)     # 64 MiB of zeros in ~64 kB
    served = {}

    def peer(request: httpx.Request) -> httpx.Response:
        body = served.get(request.url.path)
        if body is not None:
            return httpx.Response(200, stream=httpx.ByteStream(body[0]), headers=body[1])
        return httpx.Response(200, stream=httpx.ByteStream(json.dumps(answer).encode()),
                              headers={"Content-Type": "application/json"})

    before = _state(eu)
    with httpx.Client(transport=httpx.MockTransport(peer), base_url="http://peer") as client:
        cases = {(path, kind): body for path in ("/v1/peer/pull", "/v1/peer/vectors", "/v1/peer/delta")
                 for kind, body in (("bomb", (bomb, {"Content-Encoding": "gzip"})),
                                    ("endless", (b"x" * (1 << 17), {})))}
        for case, (content, headers) in cases.items():
            served.clear()
            served[case[0]] = (content, {"Content-Type": "application/octet-stream", **headers})
            link = PeerLink("http://peer")
            assert not replication_of(eu).sync_once(link, client, PEER_HEADERS), case
            assert "413" in link.last_error, (case, link.last_error)
    assert _state(eu) == before
