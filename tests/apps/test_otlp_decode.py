"""OTLP/HTTP trace bodies: protobuf and the OTLP JSON mapping, gzip with a limit, answers."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

pytest.importorskip("opentelemetry.proto")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from swarmguard.apps.otlp.decode import (  # noqa: E402
    decode_export_request,
    decode_export_response,
    decode_status,
    encode_export_response,
    encode_status,
    inflate,
)
from swarmguard.errors import (  # noqa: E402
    BodyTooLargeError,
    MalformedBodyError,
    SwarmGuardError,
    UnsupportedMediaTypeError,
)

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
PARENT = "eee19b7ec3c1b173"


def _request() -> ExportTraceServiceRequest:
    """The request every JSON form below spells: ids, an int enum, int64s, every value kind."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "support-bot"
    ss = rs.scope_spans.add()
    ss.scope.name = "fleet"
    span = ss.spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN),
                        parent_span_id=bytes.fromhex(PARENT), name="chat gpt-4o", kind=3,
                        start_time_unix_nano=1_700_000_000_000_000_001,
                        end_time_unix_nano=1_700_000_000_900_000_000)
    span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 9_007_199_254_740_993  # > 2**53
    span.attributes.add(key="score").value.double_value = 0.25
    span.attributes.add(key="cached").value.bool_value = True
    span.attributes.add(key="gen_ai.response.finish_reasons").value.array_value.values.add().string_value = "stop"
    span.status.code = 2
    span.status.message = "boom"
    link = span.links.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(PARENT))
    link.attributes.add(key="why").value.string_value = "retry"
    return req


def _json_document(camel: bool = True) -> dict:
    def k(camel_name: str, snake_name: str) -> str:
        return camel_name if camel else snake_name
    span = {
        k("traceId", "trace_id"): TRACE, k("spanId", "span_id"): SPAN, k("parentSpanId", "parent_span_id"): PARENT,
        "name": "chat gpt-4o", "kind": 3,                                   # an enum as an integer
        k("startTimeUnixNano", "start_time_unix_nano"): "1700000000000000001",  # int64 as a string
        k("endTimeUnixNano", "end_time_unix_nano"): 1700000000900000000,        # ... or a number
        "attributes": [
            {"key": "gen_ai.usage.input_tokens", "value": {k("intValue", "int_value"): "9007199254740993"}},
            {"key": "score", "value": {k("doubleValue", "double_value"): 0.25}},
            {"key": "cached", "value": {k("boolValue", "bool_value"): True}},
            {"key": "gen_ai.response.finish_reasons",
             "value": {k("arrayValue", "array_value"): {"values": [{k("stringValue", "string_value"): "stop"}]}}},
        ],
        "status": {"code": 2, "message": "boom"},
        "links": [{k("traceId", "trace_id"): TRACE, k("spanId", "span_id"): PARENT,
                   "attributes": [{"key": "why", "value": {k("stringValue", "string_value"): "retry"}}]}],
        "someFutureField": {"ignored": True},                               # unknown fields are ignored
    }
    return {k("resourceSpans", "resource_spans"): [{
        "resource": {"attributes": [{"key": "service.name", "value": {k("stringValue", "string_value"): "support-bot"}}]},
        k("scopeSpans", "scope_spans"): [{"scope": {"name": "fleet"}, "spans": [span]}],
    }]}


def test_protobuf_body_decodes_to_the_same_message():
    req = _request()
    decoded = decode_export_request(req.SerializeToString(), "application/x-protobuf")
    assert decoded.request == req and decoded.encoding == "protobuf" and decoded.span_count == 1


@pytest.mark.parametrize("camel", [True, False], ids=["lowerCamelCase", "snake_case"])
def test_otlp_json_mapping_hex_ids_int_enums_int64_strings(camel):
    body = json.dumps(_json_document(camel)).encode()
    decoded = decode_export_request(body, "application/json; charset=utf-8")
    assert decoded.encoding == "json"
    assert decoded.request == _request()
    span = decoded.request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id.hex() == TRACE and span.links[0].span_id.hex() == PARENT
    assert span.attributes[0].value.int_value == 9_007_199_254_740_993      # no float rounding


def test_base64_ids_are_not_what_otlp_json_means():
    # proto3's own JSON mapping writes bytes as base64; OTLP/JSON does not: a base64 id is refused
    doc = _json_document()
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = base64.b64encode(bytes.fromhex(TRACE)).decode()
    with pytest.raises(MalformedBodyError, match="traceId must be a hex string"):
        decode_export_request(json.dumps(doc).encode(), "application/json")


def test_gzip_bodies_of_both_encodings():
    req = _request()
    assert decode_export_request(gzip.compress(req.SerializeToString()), "application/x-protobuf", "gzip").request == req
    body = gzip.compress(json.dumps(_json_document()).encode())
    assert decode_export_request(body, "application/json", "GZIP").request == req
    # several gzip members, one after another, are one body
    raw = req.SerializeToString()
    two = gzip.compress(raw[:10]) + gzip.compress(raw[10:])
    assert decode_export_request(two, "application/x-protobuf", "gzip").request == req


def test_a_gzip_bomb_is_refused_having_inflated_no_more_than_the_limit(monkeypatch):
    import zlib

    produced = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *a, **k):
            self._d = real(*a, **k)

        def decompress(self, data, max_length=0):
            out = self._d.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._d, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    bomb = gzip.compress(b"\0" * (50 << 20))          # 50 MiB of zeros in ~50 KiB
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLargeError) as info:
        decode_export_request(bomb, "application/x-protobuf", "gzip", max_bytes=1 << 20)
    assert info.value.limit == 1 << 20
    assert sum(produced) <= (1 << 20) + 1


def test_an_uncompressed_body_over_the_limit_is_413():
    with pytest.raises(BodyTooLargeError):
        decode_export_request(b"\0" * 101, "application/x-protobuf", max_bytes=100)
    assert inflate(b"\0" * 100, None, max_bytes=100) == b"\0" * 100


@pytest.mark.parametrize(("body", "ctype", "coding", "error"), [
    (b"\x0a\x05ab", "application/x-protobuf", None, MalformedBodyError),          # truncated field
    (b"{not json", "application/json", None, MalformedBodyError),
    (b"[1, 2]", "application/json", None, MalformedBodyError),
    (b'{"resourceSpans": 5}', "application/json", None, MalformedBodyError),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}', "application/json", None,
     MalformedBodyError),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', "application/json", None,
     MalformedBodyError),
    (b"\xff\xfe", "application/json", None, MalformedBodyError),                  # not UTF-8
    (gzip.compress(b"abc", mtime=0)[:-6], "application/x-protobuf", "gzip", MalformedBodyError),  # cut short
    (b"plain", "application/x-protobuf", "gzip", MalformedBodyError),             # not gzip at all
    (b"", "text/plain", None, UnsupportedMediaTypeError),
    (b"", None, None, UnsupportedMediaTypeError),
    (b"", "application/x-protobuf", "br", UnsupportedMediaTypeError),
])
def test_bad_bodies_are_typed_errors(body, ctype, coding, error):
    with pytest.raises(error) as info:
        decode_export_request(body, ctype, coding)
    assert isinstance(info.value, SwarmGuardError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_answers_round_trip_in_both_encodings(encoding):
    full = decode_export_response(encode_export_response(encoding), encoding)
    assert not full.HasField("partial_success")
    partial = decode_export_response(encode_export_response(encoding, 3, "3 spans name no agent"), encoding)
    assert partial.partial_success.rejected_spans == 3
    assert partial.partial_success.error_message == "3 spans name no agent"
    status = decode_status(encode_status(encoding, 400, "bad\nbody"), encoding)
    assert (status.code, status.message) == (3, "bad body")     # INVALID_ARGUMENT, one line
    assert decode_status(encode_status(encoding, 503, "draining"), encoding).code == 14   # UNAVAILABLE


def test_json_answer_uses_the_otlp_json_field_names():
    doc = json.loads(encode_export_response("json", 2, "x"))
    assert doc == {"partialSuccess": {"rejectedSpans": "2", "errorMessage": "x"}}


def test_the_otlp_json_encoder_round_trips():
    from swarmguard.apps.otlp.decode import encode_otlp_json

    body = encode_otlp_json(_request())
    assert TRACE.encode() in body and base64.b64encode(bytes.fromhex(TRACE)) not in body
    assert decode_export_request(body, "application/json").request == _request()


@pytest.mark.parametrize(("field", "value"), [
    ("traceId", "5b8e ff f798038103d269b633813fc60c"),      # spaces (bytes.fromhex takes them)
    ("traceId", "5b8efff798038103d269b633813fc6"),          # 15 bytes
    ("spanId", "eee19b7ec3c1b17400"),                       # 9 bytes
    ("parentSpanId", "ee"),
])
def test_a_json_id_of_the_wrong_length_is_a_malformed_body(field, value):
    # as the OpenTelemetry Collector reads OTLP/JSON: empty or exactly the id's size
    doc = _json_document()
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0][field] = value
    with pytest.raises(MalformedBodyError, match=f"{field} must be a hex string of"):
        decode_export_request(json.dumps(doc).encode(), "application/json")
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0][field] = ""      # empty: not set
    span = decode_export_request(json.dumps(doc).encode(), "application/json").request.resource_spans[0].scope_spans[0].spans[0]
    assert getattr(span, {"traceId": "trace_id", "spanId": "span_id", "parentSpanId": "parent_span_id"}[field]) == b""
