"""Benchmark the node's listener protocols alone: CPU time per request of uvicorn's h11
protocol, its httptools protocol, and ``BoundedHeadHttpToolsProtocol`` (httptools with the
node's bound on a request head), each of the node's two also with the head's clock
(``--header-timeout``, as ``run.server_config`` makes them), on the same requests, in one process.

Each protocol gets one keep-alive connection over an in-memory transport and an ASGI app
that reads the whole body and answers 200 (no node behind it: what is measured is the
listener's parsing and uvicorn's request cycle). The requests are shaped like an OTLP export
of 512 spans: ``POST /v1/traces``, the SDK's headers, a ``--body-bytes`` protobuf-sized body,
handed to the protocol in reads of ``--read-bytes`` (a socket's reads). The protocols take
turns, ``--rounds`` times; printed: each one's median CPU µs a request (``time.process_time``,
so the machine's other load matters less than for wall time) and the ratios.

    python benchmarks/bench_listener_parser.py                  # 129 kB bodies, 64 KiB reads
    python benchmarks/bench_listener_parser.py --requests 500 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import uvicorn  # noqa: E402
from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from swarmguard.apps.serve.bounded_head import BoundedHeadHttpToolsProtocol  # noqa: E402
from swarmguard.apps.serve.head_deadline import DEFAULT_HEADER_TIMEOUT, with_header_timeout  # noqa: E402
from swarmguard.apps.serve.settings import DEFAULT_MAX_HEADER_BYTES, HEAD_LIMIT_FACTOR  # noqa: E402


class _Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.answers, self.closed = 0, False

    def write(self, data):
        self.answers += data.count(b"HTTP/1.1 200 ")

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8470)}.get(name, default)


async def _app(scope, receive, send):
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def _request(body_bytes: int) -> bytes:
    head = (f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:8470\r\nUser-Agent: OTel-OTLP-Exporter-Python/1.25.0\r\n"
            f"Accept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"
            f"Content-Type: application/x-protobuf\r\nAuthorization: Bearer s3cret-ingest\r\n"
            f"Content-Length: {body_bytes}\r\n\r\n").encode()
    return head + os.urandom(body_bytes)


def _run(protocol_class, request: bytes, requests: int, read_bytes: int) -> float:
    """CPU seconds a request over one keep-alive connection."""
    loop = asyncio.new_event_loop()
    config = uvicorn.Config(_app, http=protocol_class, log_level="critical", lifespan="off",
                            h11_max_incomplete_event_size=HEAD_LIMIT_FACTOR * DEFAULT_MAX_HEADER_BYTES)
    config.load()
    protocol = protocol_class(config, ServerState(), {}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    reads = [request[i:i + read_bytes] for i in range(0, len(request), read_bytes)]
    t0 = time.process_time()
    for _ in range(requests):
        for read in reads:
            protocol.data_received(read)
        for _ in range(4):              # the app's task reads the body and answers
            loop.run_until_complete(asyncio.sleep(0))
    seconds = time.process_time() - t0
    assert transport.answers == requests and not transport.closed, (protocol_class.__name__, transport.answers)
    protocol.connection_lost(None)
    loop.close()
    return seconds / requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000, help="requests a protocol a round")
    ap.add_argument("--body-bytes", type=int, default=129_000, help="bytes a body (129 kB: 512 spans)")
    ap.add_argument("--read-bytes", type=int, default=64 << 10, help="bytes a read from the socket")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    protocols = {"h11": H11Protocol, "httptools": HttpToolsProtocol, "bounded httptools": BoundedHeadHttpToolsProtocol,
                 # the node's listeners: with the head's clock
                 "bounded + clock": with_header_timeout(BoundedHeadHttpToolsProtocol, DEFAULT_HEADER_TIMEOUT),
                 "h11 + clock": with_header_timeout("h11", DEFAULT_HEADER_TIMEOUT)}
    print(f"# bench_listener_parser: python {platform.python_version()}, uvicorn {uvicorn.__version__}, "
          f"{os.cpu_count()} CPUs, {args.requests} requests of {args.body_bytes:,} body bytes in reads of "
          f"{args.read_bytes:,}, {args.rounds} rounds")
    request = _request(args.body_bytes)
    times = {name: [] for name in protocols}
    for _ in range(args.rounds):
        for name, cls in protocols.items():
            times[name].append(_run(cls, request, args.requests, args.read_bytes))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        runs = " / ".join(f"{x * 1e6:.1f}" for x in t)
        print(f"{name:>18}: median {median[name] * 1e6:7.1f} CPU µs a request   (rounds: {runs})")
    print(f"h11 / bounded httptools: {median['h11'] / median['bounded httptools']:.2f}x; "
          f"bounded / plain httptools: {median['bounded httptools'] / median['httptools']:.3f}x; "
          f"with / without the clock: bounded {median['bounded + clock'] / median['bounded httptools']:.3f}x, "
          f"h11 {median['h11 + clock'] / median['h11']:.3f}x")


if __name__ == "__main__":
    main()
