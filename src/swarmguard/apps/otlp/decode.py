"""OTLP/HTTP trace requests: bodies to ``ExportTraceServiceRequest`` and answers back to bytes.

What the OTLP specification (``docs/specification.md``, "OTLP/HTTP") asks of a receiver,
and how this module does it:

- ``Content-Type: application/x-protobuf`` is the binary protobuf encoding of
  ``ExportTraceServiceRequest``; ``application/json`` is its proto3 JSON mapping with the
  OTLP quirks: ``traceId`` / ``spanId`` / ``parentSpanId`` (and those of links) are
  **hex** strings, not the base64 proto3 JSON uses for bytes; enums may be integers;
  64-bit integers may be strings or numbers; field names are lowerCamelCase (the
  original snake_case names are accepted as well); unknown fields are ignored. The ids
  are rewritten from hex to base64 before ``google.protobuf.json_format`` parses the
  rest.
- ``Content-Encoding: gzip`` bodies are inflated with a limit on the *decompressed*
  size, so a small gzip bomb is refused (:class:`~swarmguard.errors.BodyTooLargeError`)
  after producing at most ``max_bytes + 1`` bytes.
- The answer uses the request's encoding: an ``ExportTraceServiceResponse``, whose
  ``partial_success`` (``rejected_spans`` and a message) is set only when some spans
  were refused, or a ``google.rpc.Status`` for an error.

Decoding uses ``opentelemetry-proto``'s generated messages (the ``serve`` extra); they
are imported when this module is, which the command line does only inside ``serve``.

Examples
--------
>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
>>> body = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60c",'
>>> body += b' "spanId": "eee19b7ec3c1b174", "name": "chat", "kind": 3, "startTimeUnixNano": "1"}]}]}]}'
>>> decoded = decode_export_request(body, "application/json")
>>> span = decoded.request.resource_spans[0].scope_spans[0].spans[0]
>>> span.trace_id.hex(), span.span_id.hex(), span.kind, span.start_time_unix_nano
('5b8efff798038103d269b633813fc60c', 'eee19b7ec3c1b174', 3, 1)
>>> decoded.encoding, decoded.span_count
('json', 1)
>>> encode_export_response(decoded.encoding, rejected_spans=1, message="1 span without an agent id")
b'{"partialSuccess": {"rejectedSpans": "1", "errorMessage": "1 span without an agent id"}}'
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ...errors import BodyTooLargeError, MalformedBodyError, UnsupportedMediaTypeError

__all__ = [
    "PROTOBUF", "JSON", "DEFAULT_MAX_BODY_BYTES", "Encoding", "DecodedRequest", "encoding_of",
    "inflate", "decode_export_request", "encode_export_response", "encode_status",
    "status_code_for_http", "count_spans", "decode_status", "decode_export_response", "encode_otlp_json",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
DEFAULT_MAX_BODY_BYTES = 64 << 20      # the node's --max-body-bytes default (issue 13)
Encoding = Literal["protobuf", "json"]

# hex-encoded id fields of a span and of its links, in both spellings json_format accepts
_SPAN_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_LINK_ID_FIELDS = ("traceId", "spanId", "trace_id", "span_id")


@dataclass(frozen=True)
class DecodedRequest:
    """A decoded OTLP trace export.

    ``request`` is the ``ExportTraceServiceRequest``; ``encoding`` ("protobuf" or "json")
    is how to answer; ``body_bytes`` the size after decompression.
    """

    request: Any
    encoding: Encoding
    body_bytes: int

    @property
    def span_count(self) -> int:
        """Spans in the request, over every resource and scope."""
        return count_spans(self.request)


def count_spans(request: Any) -> int:
    """The number of spans in an ``ExportTraceServiceRequest``."""
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def encoding_of(content_type: str | None) -> Encoding:
    """``"protobuf"`` or ``"json"`` for a ``Content-Type`` header (parameters such as
    ``charset`` are ignored, case too); anything else is
    :class:`~swarmguard.errors.UnsupportedMediaTypeError` (HTTP 415).

    >>> encoding_of("application/json; charset=utf-8"), encoding_of("Application/X-Protobuf")
    ('json', 'protobuf')
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return "protobuf"
    if media == JSON:
        return "json"
    raise UnsupportedMediaTypeError(
        f"content type {media or 'missing'!r} is not read here: send {PROTOBUF} or {JSON}")


def inflate(body: bytes, content_encoding: str | None, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> bytes:
    """``body`` decompressed as its ``Content-Encoding`` says (``gzip`` or none/``identity``).

    The result is at most ``max_bytes`` long: a longer body, compressed or not, is
    :class:`~swarmguard.errors.BodyTooLargeError`, found having inflated no more than
    ``max_bytes + 1`` bytes. A broken gzip stream is
    :class:`~swarmguard.errors.MalformedBodyError`; another encoding
    :class:`~swarmguard.errors.UnsupportedMediaTypeError`.

    >>> import gzip
    >>> inflate(gzip.compress(b"x" * 10), "gzip")
    b'xxxxxxxxxx'
    >>> inflate(gzip.compress(b"x" * 10_000), "gzip", max_bytes=1000)
    Traceback (most recent call last):
    ...
    swarmguard.errors.BodyTooLargeError: the request body inflates to more than 1000 bytes
    """
    coding = (content_encoding or "identity").strip().lower()
    if coding == "identity":
        if len(body) > max_bytes:
            raise BodyTooLargeError(f"the request body is {len(body)} bytes, over the limit of {max_bytes}",
                                    max_bytes)
        return body
    if coding not in ("gzip", "x-gzip"):
        raise UnsupportedMediaTypeError(f"content encoding {coding!r} is not read here: send gzip or none")
    out: list[bytes] = []
    size = 0
    data = body
    while True:       # a gzip file may hold several members, one after another
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while data:
            try:
                chunk = inflater.decompress(data, max_bytes + 1 - size)
            except zlib.error as exc:
                raise MalformedBodyError(f"the gzip body is broken: {exc}") from None
            size += len(chunk)
            out.append(chunk)
            if size > max_bytes:
                raise BodyTooLargeError(f"the request body inflates to more than {max_bytes} bytes", max_bytes)
            data = inflater.unconsumed_tail
            if inflater.eof:
                break
        if not inflater.eof:
            raise MalformedBodyError("the gzip body ends before its stream does")
        data = inflater.unused_data
        if not data:
            return b"".join(out)


_ID_BYTES = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8, "parentSpanId": 8, "parent_span_id": 8}
_HEX = frozenset("0123456789abcdefABCDEF")


def _hex_to_base64(value: Any, field: str) -> Any:
    """A hex id as json_format's base64. Empty is an id not set; otherwise exactly the id's
    size in hex digits (as the OpenTelemetry Collector reads OTLP/JSON: another length is a
    malformed body), no spaces (``bytes.fromhex`` alone would take "5b 8e")."""
    if not isinstance(value, str):
        return value          # json_format refuses it with its own message
    name = field.rsplit(".", 1)[-1]
    size = _ID_BYTES[name]
    if value and (len(value) != 2 * size or not _HEX.issuperset(value)):
        raise MalformedBodyError(f"{field} must be a hex string of {2 * size} digits (or empty), got {value[:40]!r}")
    return base64.b64encode(bytes.fromhex(value)).decode("ascii")


def _list(value: Any) -> Any:
    """``value`` if it is a JSON array, else no items (json_format then refuses the value itself)."""
    return value if isinstance(value, list) else ()


def _rewrite_hex_ids(document: Any) -> None:
    """Turn the hex ids of every span and link of an OTLP JSON document into base64, in place."""
    if not isinstance(document, dict):
        raise MalformedBodyError("an OTLP JSON body is an object with resourceSpans")
    for rs in _list(document.get("resourceSpans", document.get("resource_spans"))):
        if not isinstance(rs, dict):
            continue          # json_format names the offending value
        for ss in _list(rs.get("scopeSpans", rs.get("scope_spans"))):
            if not isinstance(ss, dict):
                continue
            for span in _list(ss.get("spans")):
                if not isinstance(span, dict):
                    continue
                for field in _SPAN_ID_FIELDS:
                    if field in span:
                        span[field] = _hex_to_base64(span[field], field)
                for link in _list(span.get("links")):
                    if isinstance(link, dict):
                        for field in _LINK_ID_FIELDS:
                            if field in link:
                                link[field] = _hex_to_base64(link[field], f"links.{field}")


def _rewrite_base64_ids(document: Any) -> None:
    """The inverse of :func:`_rewrite_hex_ids` (a document json_format wrote)."""
    for rs in _list(document.get("resourceSpans")):
        for ss in _list(rs.get("scopeSpans")):
            for span in _list(ss.get("spans")):
                for field in ("traceId", "spanId", "parentSpanId"):
                    if field in span:
                        span[field] = base64.b64decode(span[field]).hex()
                for link in _list(span.get("links")):
                    for field in ("traceId", "spanId"):
                        if field in link:
                            link[field] = base64.b64decode(link[field]).hex()


def encode_otlp_json(request: Any) -> bytes:
    """An ``ExportTraceServiceRequest`` in the OTLP JSON encoding (hex ids), one line.

    >>> req = ExportTraceServiceRequest()
    >>> _ = req.resource_spans.add().scope_spans.add().spans.add(span_id=bytes.fromhex("eee19b7ec3c1b174"))
    >>> encode_otlp_json(req)
    b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"eee19b7ec3c1b174"}]}]}]}'
    """
    document = json_format.MessageToDict(request)
    _rewrite_base64_ids(document)
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def decode_export_request(body: bytes, content_type: str | None, content_encoding: str | None = None,
                          max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> DecodedRequest:
    """Decode an OTLP/HTTP trace export body into a :class:`DecodedRequest`.

    Raises :class:`~swarmguard.errors.UnsupportedMediaTypeError` (415) for another
    content type or encoding, :class:`~swarmguard.errors.BodyTooLargeError` (413) over
    ``max_bytes`` (after decompression too), :class:`~swarmguard.errors.MalformedBodyError`
    (400) for a body that does not decode.

    >>> decode_export_request(b"\\x0a\\x05junk", "application/x-protobuf")
    Traceback (most recent call last):
    ...
    swarmguard.errors.MalformedBodyError: the protobuf body is not an ExportTraceServiceRequest: Error parsing message...
    """
    encoding = encoding_of(content_type)
    raw = inflate(body, content_encoding, max_bytes)
    if encoding == "protobuf":
        try:
            request = ExportTraceServiceRequest.FromString(raw)
        except DecodeError as exc:
            raise MalformedBodyError(f"the protobuf body is not an ExportTraceServiceRequest: {exc}") from None
        return DecodedRequest(request, encoding, len(raw))
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:   # UnicodeDecodeError is a ValueError
        raise MalformedBodyError(f"the JSON body does not parse: {str(exc).splitlines()[0]}") from None
    _rewrite_hex_ids(document)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise MalformedBodyError(f"the JSON body is not an ExportTraceServiceRequest: {message}") from None
    return DecodedRequest(request, encoding, len(raw))


def _serialize(message: Any, encoding: Encoding) -> bytes:
    if encoding == "protobuf":
        return message.SerializeToString()
    # compact, camelCase, int64 as strings: the proto3 JSON mapping OTLP/JSON uses
    return json_format.MessageToJson(message, indent=None).encode("utf-8")


def encode_export_response(encoding: Encoding, rejected_spans: int = 0, message: str = "") -> bytes:
    """The body of a successful export's answer (HTTP 200) in ``encoding``.

    ``partial_success`` is set only when ``rejected_spans`` > 0 or there is a ``message``
    (the specification: a fully accepted request leaves it unset).

    >>> encode_export_response("protobuf")
    b''
    >>> encode_export_response("json")
    b'{}'
    """
    response = ExportTraceServiceResponse()
    if rejected_spans or message:
        response.partial_success.rejected_spans = int(rejected_spans)
        response.partial_success.error_message = message
    return _serialize(response, encoding)


# HTTP status -> the google.rpc code an OTLP error answer carries. A request too large, in its
# body (413) or its head (431), is one the node never takes as sent: INVALID_ARGUMENT (never
# retried), not RESOURCE_EXHAUSTED, the code of 429 (retried after a wait)
_RPC_CODES = {
    400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND, 405: code_pb2.UNIMPLEMENTED, 408: code_pb2.DEADLINE_EXCEEDED,
    413: code_pb2.INVALID_ARGUMENT, 431: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT, 429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,            # code.proto's mapping: 499 Client Closed Request
    500: code_pb2.INTERNAL,
    502: code_pb2.UNAVAILABLE, 503: code_pb2.UNAVAILABLE, 504: code_pb2.DEADLINE_EXCEEDED,
}


def status_code_for_http(http_status: int) -> int:
    """The ``google.rpc.Code`` of an error answered with ``http_status``.

    >>> status_code_for_http(400), status_code_for_http(429), status_code_for_http(503)
    (3, 8, 14)
    """
    return _RPC_CODES.get(http_status, code_pb2.UNKNOWN)


def encode_status(encoding: Encoding, http_status: int, message: str) -> bytes:
    """The body of an error answer: a ``google.rpc.Status`` with the code matching
    ``http_status`` and a one-line ``message``, in ``encoding``.

    >>> encode_status("json", 400, "the JSON body does not parse")
    b'{"code": 3, "message": "the JSON body does not parse"}'
    """
    status = status_pb2.Status(code=status_code_for_http(http_status), message=" ".join(message.split()))
    return _serialize(status, encoding)


def decode_status(body: bytes, encoding: Encoding) -> Any:
    """A ``google.rpc.Status`` read back from an error answer (clients and tests)."""
    status = status_pb2.Status()
    if encoding == "protobuf":
        status.ParseFromString(body)
    else:
        json_format.Parse(body, status)
    return status


def decode_export_response(body: bytes, encoding: Encoding) -> Any:
    """An ``ExportTraceServiceResponse`` read back from a success answer (clients and tests)."""
    response = ExportTraceServiceResponse()
    if encoding == "protobuf":
        response.ParseFromString(body)
    else:
        json_format.Parse(body or b"{}", response)
    return response

