"""Differential fuzz of ``BoundedHeadHttpToolsProtocol``'s chunked framing against llhttp's own:
random valid and mutated streams of pipelined requests (chunked bodies with leading zeros, mixed
hex case, extensions with quoted strings, trailers; Content-Length bodies; GETs), cut into reads
at random points, fed to the listener in memory and, as the oracle, to a bare httptools parser
(set up as uvicorn sets it up). Every request the listener serves must be llhttp's, in order,
with llhttp's body and a head within the bound; a valid stream must be served whole. A second
framer beside the parser's is a smuggling risk only where the two disagree: this looks for that."""

from __future__ import annotations

import asyncio
import random

import pytest

httptools = pytest.importorskip("httptools")

from tests.apps.serve.test_bounded_head import _clock_agrees, _open_protocol  # noqa: E402

_MUTATIONS = [b"\r", b"\n", b";", b'"', b"0", b"a", b"F", b" ", b"\t", b"\r\n", b"\r\n\r\n", b"\\", b"G", b"\x00"]


def _hex(rng, n):
    s = format(n, "x")
    s = "".join(c.upper() if rng.random() < .4 else c for c in s)
    return (b"0" * rng.randint(1, 20) if rng.random() < .2 else b"") + s.encode()


def _extensions(rng):
    out = b""
    for _ in range(rng.choice([0, 0, 1, 2])):
        name = rng.choice([b"a", b"foo", b"x-y"])
        out += rng.choice([b";" + name, b";" + name + b"=tok",
                           b";" + name + b'="' + rng.choice([b"", b"a b", b"x;y", b'q\\"r', b"\\\\"]) + b'"'])
    return out


def _chunked(rng, path):
    chunks = b""
    for _ in range(rng.randint(0, 5)):
        data = bytes(rng.choice(b"abc\r\n0;\" \t") for _ in range(rng.choice([1, 2, 5, 16, 17, rng.randint(1, 300), rng.randint(4096, 20000)])))
        chunks += _hex(rng, len(data)) + _extensions(rng) + b"\r\n" + data + b"\r\n"
    trailers = b"".join(rng.choice([b"X-T: 1\r\n", b"Foo: bar baz\r\n"]) for _ in range(rng.choice([0, 0, 1, 2])))
    te = rng.choice([b"chunked", b"Chunked", b"gzip, chunked", b"CHUNKED"])
    return (b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: " + te + b"\r\n\r\n"
            + chunks + _hex(rng, 0) + _extensions(rng) + b"\r\n" + trailers + b"\r\n")


def _request(rng, path):
    kind = rng.random()
    if kind < .4:
        return b"GET " + path + b" HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"p" * rng.randint(0, 300) + b"\r\n\r\n"
    if kind < .7:
        body = bytes(rng.choice(b"ab\r\n0") for _ in range(rng.randint(0, 40)))
        return b"POST " + path + b" HTTP/1.1\r\nHost: t\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    return _chunked(rng, path)


def _mutated(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i, op = rng.randrange(len(data)), rng.random()
        if op < 1 / 3:
            data[i:i + 1] = rng.choice(_MUTATIONS)
        elif op < 2 / 3:
            data[i:i] = rng.choice(_MUTATIONS)
        else:
            del data[i]
    return bytes(data)


def _reads(rng, data):
    if rng.random() < .2:
        return [data]
    if rng.random() < .1 and len(data) < 3000:  # a read a byte: every offset of every size line
        return [data[i:i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.choice([8, 40]))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)], strict=True)]


def _llhttp(stream):
    """llhttp alone, fed a byte at a time: each message's (method, path, body, complete, head size)
    up to its first error (head size: the request line's first byte to the CRLF CRLF's last)."""
    messages, at = [], [0]

    class Callbacks:
        def on_message_begin(self):
            messages.append([None, "", b"", False, at[0]])

        def on_url(self, url):
            messages[-1][1] += url.decode("latin-1")

        def on_headers_complete(self):
            messages[-1][0] = parser.get_method().decode()
            messages[-1][4] = at[0] - messages[-1][4] + 1

        def on_body(self, body):
            messages[-1][2] += bytes(body)

        def on_message_complete(self):
            messages[-1][3] = True

    parser = httptools.HttpRequestParser(Callbacks())
    parser.set_dangerous_leniencies(lenient_data_after_close=True)
    for at[0] in range(len(stream)):
        try:
            parser.feed_data(stream[at[0]:at[0] + 1])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            break
    return [m for m in messages if m[0] is not None]


def _served(reads, limit):
    """What the listener serves of these reads: (method, path, body) per request ('partial'
    and the body so far for one cut off), and whether it closed the connection."""
    served, loop = [], asyncio.new_event_loop()

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                served.append((scope["method"], scope["path"], body, "partial"))
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        served.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    protocol, transport = _open_protocol(app, limit, loop)

    def settle():
        for _ in range(30):
            loop.run_until_complete(asyncio.sleep(0))

    for read in reads:
        if transport.closed:
            break
        protocol.data_received(read)
        settle()
        assert _clock_agrees(protocol, transport), read[:80]     # the head's clock (--header-timeout) too
    closed = transport.closed
    protocol.connection_lost(None)
    settle()
    loop.close()
    return served, closed


@pytest.mark.parametrize("seed", range(4))
def test_the_listener_serves_only_what_llhttp_parses_with_its_bodies(seed):
    rng = random.Random(seed)
    for case in range(150):
        valid = rng.random() < .4
        stream = _chunked(rng, b"/r0") + b"".join(_request(rng, b"/r%d" % i) for i in range(1, rng.randint(2, 5)))
        if not valid:
            stream = _mutated(rng, stream)
        reads, limit = _reads(rng, stream), rng.choice([1 << 20, rng.randint(60, 400)])
        messages = _llhttp(stream)
        served, closed = _served(reads, limit)
        where = f"seed {seed} case {case}: {stream!r} in reads of {[len(r) for r in reads]}, bound {limit}"
        assert len(served) <= len(messages), where
        for request, message in zip(served, messages, strict=False):
            assert request[:2] == tuple(message[:2]), where
            assert message[4] <= limit, where       # no head past the bound is served
            if len(request) == 3:
                assert message[3] and request[2] == message[2], where
            else:
                assert message[2].startswith(request[2]), where
        if valid and limit == 1 << 20:              # nothing to refuse: every request served
            assert not closed and [r[:3] for r in served] == [tuple(m[:3]) for m in messages], where
        elif not closed:                            # open: nothing of llhttp's left unserved
            assert len([r for r in served if len(r) == 3]) == len([m for m in messages if m[3]]), where
