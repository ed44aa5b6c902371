"""Reading a request body within the node's limit, compressed and decompressed.

A ``Content-Length`` over the limit is refused before reading; a chunked body
is counted as it streams and refused (413) the moment it passes the limit; a
``gzip`` / ``deflate`` body is inflated at most ``limit + 1`` bytes at a time,
so a gzip bomb is refused (413) without being expanded.
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from .http_errors import ApiError

__all__ = ["read_body", "body_chunks", "media_type", "inflate"]


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _too_large(limit: int, what: str) -> ApiError:
    return ApiError(413, f"the {what} passes the limit of {limit} bytes", code="too_large")


def _left() -> ApiError:
    # counted as the client's doing, not as an internal error (nobody reads the answer)
    return ApiError(499, "the client closed the connection before its body arrived", code="client_disconnected")


async def body_chunks(request, timeout: float | None):
    """The body's chunks as they arrive, all of them within ``timeout`` seconds (None: no bound):
    a client that trickles its body would otherwise hold one of the node's write slots forever.
    A client that leaves before its body ends is :class:`ApiError` 499 (``client_disconnected``)."""
    if timeout is None:
        try:
            async for chunk in request.stream():
                yield chunk
        except ClientDisconnect:
            raise _left() from None
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    stream = request.stream().__aiter__()
    while True:
        try:
            # a timeout around the read only, never around the yield (its cancel would then land
            # in the caller's code); asyncio.wait_for made a task per chunk, ~50 us each here
            async with asyncio.timeout_at(deadline):
                chunk = await stream.__anext__()
            late = loop.time() > deadline     # a read that held the loop itself past the deadline
        except StopAsyncIteration:
            return
        except ClientDisconnect:
            raise _left() from None
        except TimeoutError:
            late = True
        if late:
            # "close" (RFC 9110 15.5.9): kept open, the connection would take the rest of the body
            raise ApiError(408, f"the body did not arrive within {timeout:g} s", code="body_timeout",
                           headers={"Connection": "close"}) from None
        yield chunk


async def read_body(request, limit: int, timeout: float | None = None) -> bytes:
    """The body of ``request`` (a Starlette request), decoded from its ``Content-Encoding``
    (identity, gzip, deflate), at most ``limit`` bytes before and after decoding, read within
    ``timeout`` seconds (None: the app's ``body_timeout_seconds``, 408 past it)."""
    if timeout is None:
        settings = getattr(getattr(getattr(request, "app", None), "state", None), "settings", None)
        timeout = getattr(settings, "body_timeout_seconds", None)
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        # digits only (RFC 9110 8.6), as POST /v1/traces reads it: int() also takes "-1", "+4", "4_5"
        if not (declared.isascii() and declared.isdigit()):
            raise ApiError(400, "Content-Length is not a number", code="bad_header")
        if int(declared) > limit:
            raise _too_large(limit, "body")
    chunks, size = [], 0
    async for chunk in body_chunks(request, timeout):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    encoding = request.headers.get("content-encoding")
    if (encoding or "identity").strip().lower() in ("identity", ""):
        return inflate(raw, encoding, limit)
    # in the thread pool, as POST /v1/traces does: up to ``limit`` inflated is ~0.1 s of CPU at
    # 64 MiB, which on the event loop would stall every other request (and its body deadline)
    return await run_in_threadpool(inflate, raw, encoding, limit)


def inflate(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``raw`` decoded from its ``Content-Encoding`` (identity, gzip, deflate), at most ``limit``
    bytes after decoding (413 past it, inflated at most ``limit + 1`` bytes at a time; 400 for a
    body that does not decode, 415 for another encoding). Used for request bodies and for the
    deltas a node pulls from its peers (whose answers are bounded the same way)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        if len(raw) > limit:
            raise _too_large(limit, "body")
        return raw
    if encoding not in ("gzip", "deflate", "x-gzip"):
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or identity",
                       code="bad_encoding")
    gzip = encoding in ("gzip", "x-gzip")
    wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
    parts, size, rest = [], 0, raw
    while True:            # a gzip body may hold several members one after another (RFC 1952 2.2)
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(rest, limit - size + 1)
            if size + len(out) > limit or inflater.unconsumed_tail:
                raise _too_large(limit, "decompressed body")
            out += inflater.flush()
        except zlib.error as exc:
            raise ApiError(400, f"the {encoding} body cannot be decoded: {exc}", code="malformed_body") from None
        size += len(out)
        if size > limit:
            raise _too_large(limit, "decompressed body")
        if not inflater.eof:
            raise ApiError(400, f"the {encoding} body is truncated", code="malformed_body")
        parts.append(out)
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if not gzip:
            raise ApiError(400, f"the {encoding} body has {len(rest)} bytes after its end", code="malformed_body")
