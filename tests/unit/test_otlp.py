"""Unit tests for api/otlp.py: OTLP/HTTP trace request decoding and response encoding.

Expected values are read off the input by hand (the OTLP example in
tests/fixtures/otlp/trace.json is opentelemetry-proto's examples/trace.json, byte for byte)
or taken from the OpenTelemetry SDK's own span objects, never from the decoder's output.
"""

from __future__ import annotations

import base64
import gzip
import math
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from api.otlp import (
    DecodedTraces,
    OTLPDecodeError,
    PayloadTooLargeError,
    RejectedSpan,
    UnsupportedMediaTypeError,
    decode_export_request,
    encode_export_response,
    encode_status,
)

EXAMPLE_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "otlp" / "trace.json"

JSON = "application/json"
PROTOBUF = "application/x-protobuf"

# Read off tests/fixtures/otlp/trace.json (upper-case hex there).
EXAMPLE_TRACE_ID = "5b8efff798038103d269b633813fc60c"
EXAMPLE_SPAN_ID = "eee19b7ec3c1b174"
EXAMPLE_PARENT_SPAN_ID = "eee19b7ec3c1b173"
EXAMPLE_SPAN = {
    "trace_id": EXAMPLE_TRACE_ID,
    "span_id": EXAMPLE_SPAN_ID,
    "parent_span_id": EXAMPLE_PARENT_SPAN_ID,
    "trace_state": "",
    "flags": 0,
    "name": "I'm a server span",
    "kind": "SPAN_KIND_SERVER",
    "start_time_unix_nano": 1544712660000000000,
    "end_time_unix_nano": 1544712661000000000,
    "status_code": "STATUS_CODE_UNSET",
    "status_message": "",
    "attributes": {"my.span.attr": "some value"},
    "resource_attributes": {"service.name": "my.service"},
    "events": [],
    "links": [],
    "scope": {
        "name": "my.library",
        "version": "1.0.0",
        "attributes": {"my.scope.attribute": "some scope attribute"},
    },
    "dropped_attributes_count": 0,
    "dropped_events_count": 0,
    "dropped_links_count": 0,
    "resource_schema_url": "",
    "scope_schema_url": "",
}

OTHER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
OTHER_SPAN_ID = "b7ad6b7169203331"


def example_body() -> bytes:
    return EXAMPLE_PATH.read_bytes()


def json_span(**fields: Any) -> dict[str, Any]:
    """A valid OTLP/JSON span; keyword arguments replace or add fields (None removes one)."""
    span: dict[str, Any] = {
        "traceId": OTHER_TRACE_ID,
        "spanId": OTHER_SPAN_ID,
        "name": "work",
        "kind": 1,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000000500000000",
    }
    for key, value in fields.items():
        if value is None:
            span.pop(key, None)
        else:
            span[key] = value
    return span


def json_request(*spans: Any, resource: Any = None) -> bytes:
    resource_spans: dict[str, Any] = {
        "resource": resource
        if resource is not None
        else {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"scope": {"name": "scope"}, "spans": list(spans)}],
    }
    return orjson.dumps({"resourceSpans": [resource_spans]})


def decode_json(body: bytes) -> DecodedTraces:
    return decode_export_request(body, JSON)


def only_span(decoded: DecodedTraces) -> dict[str, Any]:
    assert decoded.rejected == []
    assert len(decoded.spans) == 1
    return decoded.spans[0]


def attr(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "value": value}


def pb_attr(key: str, value: common_pb2.AnyValue) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=value)


def pb_request(*spans: trace_pb2.Span) -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(
                    attributes=[pb_attr("service.name", common_pb2.AnyValue(string_value="svc"))]
                ),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(name="scope"), spans=list(spans)
                    )
                ],
            )
        ]
    )
    body: bytes = request.SerializeToString()
    return body


def pb_span(**fields: Any) -> trace_pb2.Span:
    values: dict[str, Any] = {
        "trace_id": bytes.fromhex(OTHER_TRACE_ID),
        "span_id": bytes.fromhex(OTHER_SPAN_ID),
        "name": "work",
        "kind": trace_pb2.Span.SPAN_KIND_INTERNAL,
        "start_time_unix_nano": 1700000000000000000,
        "end_time_unix_nano": 1700000000500000000,
    }
    values.update(fields)
    return trace_pb2.Span(**values)


# --- the official OTLP/JSON example ----------------------------------------------------------


@pytest.mark.unit
def test_official_json_example_decodes_to_one_span_with_every_field() -> None:
    decoded = decode_json(example_body())

    assert decoded.rejected == []
    assert decoded.spans == [EXAMPLE_SPAN]


@pytest.mark.unit
def test_json_hex_ids_are_kept_as_hex_not_base64() -> None:
    span = only_span(decode_json(example_body()))

    # A proto3 JSON (base64) decoder would give 24 bytes, i.e. 48 hex characters.
    assert span["trace_id"] == "5b8efff798038103d269b633813fc60c"
    assert span["span_id"] == "eee19b7ec3c1b174"
    assert span["parent_span_id"] == "eee19b7ec3c1b173"


@pytest.mark.unit
def test_json_decimal_string_times_become_integer_nanoseconds() -> None:
    span = only_span(decode_json(example_body()))

    assert type(span["start_time_unix_nano"]) is int
    assert span["end_time_unix_nano"] - span["start_time_unix_nano"] == 1_000_000_000


@pytest.mark.unit
def test_official_example_encoded_as_protobuf_decodes_to_the_same_span() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(
                    attributes=[
                        pb_attr("service.name", common_pb2.AnyValue(string_value="my.service"))
                    ]
                ),
                scope_spans=[
                    trace_pb2.ScopeSpans(
                        scope=common_pb2.InstrumentationScope(
                            name="my.library",
                            version="1.0.0",
                            attributes=[
                                pb_attr(
                                    "my.scope.attribute",
                                    common_pb2.AnyValue(string_value="some scope attribute"),
                                )
                            ],
                        ),
                        spans=[
                            trace_pb2.Span(
                                trace_id=bytes.fromhex("5B8EFFF798038103D269B633813FC60C"),
                                span_id=bytes.fromhex("EEE19B7EC3C1B174"),
                                parent_span_id=bytes.fromhex("EEE19B7EC3C1B173"),
                                name="I'm a server span",
                                start_time_unix_nano=1544712660000000000,
                                end_time_unix_nano=1544712661000000000,
                                kind=trace_pb2.Span.SPAN_KIND_SERVER,
                                attributes=[
                                    pb_attr(
                                        "my.span.attr",
                                        common_pb2.AnyValue(string_value="some value"),
                                    )
                                ],
                            )
                        ],
                    )
                ],
            )
        ]
    )

    from_protobuf = decode_export_request(request.SerializeToString(), PROTOBUF)

    assert from_protobuf.rejected == []
    assert from_protobuf.spans == [EXAMPLE_SPAN]
    assert from_protobuf.spans == decode_json(example_body()).spans


@pytest.mark.unit
def test_a_rich_span_decodes_identically_from_json_and_protobuf() -> None:
    link_trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    link_span_id = "00f067aa0ba902b7"
    json_body = json_request(
        json_span(
            parentSpanId=EXAMPLE_SPAN_ID.upper(),
            traceState="congo=t61rcWkgMzE",
            flags=257,
            kind=3,
            status={"code": 2, "message": "boom"},
            attributes=[
                attr("s", {"stringValue": "x"}),
                attr("b", {"boolValue": True}),
                attr("i", {"intValue": "-42"}),
                attr("d", {"doubleValue": 2.5}),
                attr("raw", {"bytesValue": "aGVsbG8="}),
                attr("list", {"arrayValue": {"values": [{"intValue": 1}, {"stringValue": "y"}]}}),
                attr("map", {"kvlistValue": {"values": [attr("k", {"boolValue": False})]}}),
                attr("empty", {}),
            ],
            events=[
                {
                    "name": "exception",
                    "timeUnixNano": "1700000000100000000",
                    "attributes": [attr("exception.type", {"stringValue": "ValueError"})],
                }
            ],
            links=[
                {
                    "traceId": link_trace_id,
                    "spanId": link_span_id,
                    "traceState": "a=b",
                    "attributes": [attr("why", {"stringValue": "batch"})],
                }
            ],
            droppedAttributesCount=1,
            droppedEventsCount="2",
            droppedLinksCount=3,
        )
    )
    any_value = common_pb2.AnyValue
    protobuf_body = pb_request(
        pb_span(
            parent_span_id=bytes.fromhex(EXAMPLE_SPAN_ID),
            trace_state="congo=t61rcWkgMzE",
            flags=257,
            kind=trace_pb2.Span.SPAN_KIND_CLIENT,
            status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="boom"),
            attributes=[
                pb_attr("s", any_value(string_value="x")),
                pb_attr("b", any_value(bool_value=True)),
                pb_attr("i", any_value(int_value=-42)),
                pb_attr("d", any_value(double_value=2.5)),
                pb_attr("raw", any_value(bytes_value=b"hello")),
                pb_attr(
                    "list",
                    any_value(
                        array_value=common_pb2.ArrayValue(
                            values=[any_value(int_value=1), any_value(string_value="y")]
                        )
                    ),
                ),
                pb_attr(
                    "map",
                    any_value(
                        kvlist_value=common_pb2.KeyValueList(
                            values=[pb_attr("k", any_value(bool_value=False))]
                        )
                    ),
                ),
                pb_attr("empty", any_value()),
            ],
            events=[
                trace_pb2.Span.Event(
                    name="exception",
                    time_unix_nano=1700000000100000000,
                    attributes=[pb_attr("exception.type", any_value(string_value="ValueError"))],
                )
            ],
            links=[
                trace_pb2.Span.Link(
                    trace_id=bytes.fromhex(link_trace_id),
                    span_id=bytes.fromhex(link_span_id),
                    trace_state="a=b",
                    attributes=[pb_attr("why", any_value(string_value="batch"))],
                )
            ],
            dropped_attributes_count=1,
            dropped_events_count=2,
            dropped_links_count=3,
        )
    )

    from_json = only_span(decode_json(json_body))
    from_protobuf = only_span(decode_export_request(protobuf_body, PROTOBUF))

    assert from_json == from_protobuf
    assert from_json["parent_span_id"] == EXAMPLE_SPAN_ID
    assert from_json["kind"] == "SPAN_KIND_CLIENT"
    assert from_json["status_code"] == "STATUS_CODE_ERROR"
    assert from_json["status_message"] == "boom"
    assert from_json["flags"] == 257
    assert from_json["attributes"] == {
        "s": "x",
        "b": True,
        "i": -42,
        "d": 2.5,
        "raw": "aGVsbG8=",
        "list": [1, "y"],
        "map": {"k": False},
        "empty": None,
    }
    assert from_json["events"] == [
        {
            "name": "exception",
            "time_unix_nano": 1700000000100000000,
            "attributes": {"exception.type": "ValueError"},
        }
    ]
    assert from_json["links"] == [
        {
            "trace_id": link_trace_id,
            "span_id": link_span_id,
            "trace_state": "a=b",
            "attributes": {"why": "batch"},
        }
    ]
    assert (
        from_json["dropped_attributes_count"],
        from_json["dropped_events_count"],
        from_json["dropped_links_count"],
    ) == (1, 2, 3)


@pytest.mark.unit
def test_spans_exported_by_the_opentelemetry_sdk_encoder_are_decoded_faithfully() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "runledger-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.otlp", "1.2.3")
    with tracer.start_as_current_span("parent", kind=SpanKind.SERVER):
        with tracer.start_as_current_span(
            "child",
            kind=SpanKind.CLIENT,
            attributes={"tool": "Bash", "ok": True, "count": 3, "ratio": 0.5, "tags": ("a", "b")},
        ) as child:
            child.add_event("retry", {"attempt": 2})
            child.set_status(Status(StatusCode.ERROR, "exit 1"))
    provider.shutdown()
    sdk_child, sdk_parent = exporter.get_finished_spans()
    body = encode_spans([sdk_child, sdk_parent]).SerializeToString()

    decoded = decode_export_request(gzip.compress(body), PROTOBUF, "gzip")

    assert decoded.rejected == []
    child_record, parent_record = decoded.spans
    trace_id = format(sdk_parent.context.trace_id, "032x")
    assert child_record["trace_id"] == parent_record["trace_id"] == trace_id
    assert parent_record["span_id"] == format(sdk_parent.context.span_id, "016x")
    assert parent_record["parent_span_id"] is None
    assert child_record["span_id"] == format(sdk_child.context.span_id, "016x")
    assert child_record["parent_span_id"] == parent_record["span_id"]
    assert (parent_record["name"], parent_record["kind"]) == ("parent", "SPAN_KIND_SERVER")
    assert (child_record["name"], child_record["kind"]) == ("child", "SPAN_KIND_CLIENT")
    assert child_record["start_time_unix_nano"] == sdk_child.start_time
    assert child_record["end_time_unix_nano"] == sdk_child.end_time
    # The SDK encoder says "the parent is known to be local" and sets no trace flags.
    assert child_record["flags"] == trace_pb2.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
    assert child_record["attributes"] == {
        "tool": "Bash",
        "ok": True,
        "count": 3,
        "ratio": 0.5,
        "tags": ["a", "b"],
    }
    assert child_record["events"] == [
        {
            "name": "retry",
            "time_unix_nano": sdk_child.events[0].timestamp,
            "attributes": {"attempt": 2},
        }
    ]
    assert (child_record["status_code"], child_record["status_message"]) == (
        "STATUS_CODE_ERROR",
        "exit 1",
    )
    assert child_record["resource_attributes"]["service.name"] == "runledger-test"
    assert child_record["scope"]["name"] == "tests.otlp"
    assert child_record["scope"]["version"] == "1.2.3"


# --- content type and content encoding -------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_content_type_parameters_and_case_are_ignored(content_type: str) -> None:
    decoded = decode_export_request(example_body(), content_type)

    assert [span["span_id"] for span in decoded.spans] == [EXAMPLE_SPAN_ID]


@pytest.mark.unit
def test_protobuf_content_type_case_is_ignored() -> None:
    decoded = decode_export_request(pb_request(pb_span()), "Application/X-Protobuf")

    assert [span["span_id"] for span in decoded.spans] == [OTHER_SPAN_ID]


@pytest.mark.unit
@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "", "application/jsonx"])
def test_other_content_types_are_unsupported_media(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        decode_export_request(example_body(), content_type)


@pytest.mark.unit
def test_unsupported_media_type_is_a_decode_error() -> None:
    assert issubclass(UnsupportedMediaTypeError, OTLPDecodeError)
    assert issubclass(PayloadTooLargeError, OTLPDecodeError)
    assert issubclass(OTLPDecodeError, ValueError)


@pytest.mark.unit
def test_unknown_content_encoding_is_unsupported_media() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="br"):
        decode_export_request(example_body(), JSON, "br")


@pytest.mark.unit
@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "x-gzip"])
def test_gzip_json_body_is_decompressed(encoding: str) -> None:
    decoded = decode_export_request(gzip.compress(example_body()), JSON, encoding)

    assert decoded.spans == [EXAMPLE_SPAN]


@pytest.mark.unit
def test_gzip_protobuf_body_is_decompressed() -> None:
    decoded = decode_export_request(gzip.compress(pb_request(pb_span())), PROTOBUF, "gzip")

    assert [span["trace_id"] for span in decoded.spans] == [OTHER_TRACE_ID]


@pytest.mark.unit
def test_identity_encoding_is_the_body_as_is() -> None:
    decoded = decode_export_request(example_body(), JSON, "identity")

    assert decoded.spans == [EXAMPLE_SPAN]


@pytest.mark.unit
def test_concatenated_gzip_members_are_one_body() -> None:
    body = example_body()
    middle = len(body) // 2

    decoded = decode_export_request(
        gzip.compress(body[:middle]) + gzip.compress(body[middle:]), JSON, "gzip"
    )

    assert decoded.spans == [EXAMPLE_SPAN]


@pytest.mark.unit
def test_deflate_body_is_accepted_zlib_wrapped_or_raw() -> None:
    raw_compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_deflate = raw_compressor.compress(example_body()) + raw_compressor.flush()

    zlib_wrapped = decode_export_request(zlib.compress(example_body()), JSON, "deflate")
    raw = decode_export_request(raw_deflate, JSON, "deflate")

    assert zlib_wrapped.spans == raw.spans == [EXAMPLE_SPAN]


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        b"this is not gzip",
        gzip.compress(b'{"resourceSpans": []}')[:-6],  # trailer cut off
        gzip.compress(b'{"resourceSpans": []}')[:12],  # cut inside the deflate stream
        b"",
        gzip.compress(b"{}") + b"trailing garbage",
    ],
    ids=["not-gzip", "no-trailer", "truncated", "empty", "trailing-garbage"],
)
def test_corrupt_gzip_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(OTLPDecodeError) as raised:
        decode_export_request(body, JSON, "gzip")

    assert not isinstance(raised.value, (PayloadTooLargeError, UnsupportedMediaTypeError))


@pytest.mark.unit
def test_gzip_with_wrong_checksum_is_a_decode_error() -> None:
    compressed = bytearray(gzip.compress(b'{"resourceSpans": []}'))
    compressed[-8] ^= 0xFF  # first byte of the CRC-32 trailer

    with pytest.raises(OTLPDecodeError, match="gzip"):
        decode_export_request(bytes(compressed), JSON, "gzip")


@pytest.mark.unit
def test_zip_bomb_is_stopped_at_the_decompressed_size_limit() -> None:
    limit = 1024 * 1024
    bomb = gzip.compress(b"\0" * (8 * limit))
    assert len(bomb) < limit // 32  # the compressed body itself is small

    with pytest.raises(PayloadTooLargeError):
        decode_export_request(bomb, JSON, "gzip", max_decompressed_bytes=limit)


@pytest.mark.unit
def test_default_decompressed_size_limit_is_64_mib() -> None:
    too_big = gzip.compress(b" " * (64 * 1024 * 1024 + 1), compresslevel=1)

    with pytest.raises(PayloadTooLargeError):
        decode_export_request(too_big, JSON, "gzip")


@pytest.mark.unit
def test_body_exactly_at_the_size_limit_is_accepted() -> None:
    body = example_body()

    decoded = decode_export_request(
        gzip.compress(body), JSON, "gzip", max_decompressed_bytes=len(body)
    )

    assert decoded.spans == [EXAMPLE_SPAN]
    with pytest.raises(PayloadTooLargeError):
        decode_export_request(
            gzip.compress(body), JSON, "gzip", max_decompressed_bytes=len(body) - 1
        )


@pytest.mark.unit
def test_uncompressed_body_over_the_size_limit_is_too_large() -> None:
    body = example_body()

    with pytest.raises(PayloadTooLargeError):
        decode_export_request(body, JSON, max_decompressed_bytes=len(body) - 1)


# --- whole-body errors -----------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b'{"resourceSpans": [}', b"\xff\xfe{}"],
    ids=["broken", "empty", "unbalanced", "not-utf8"],
)
def test_invalid_json_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(OTLPDecodeError):
        decode_json(body)


@pytest.mark.unit
@pytest.mark.parametrize("body", [b"[]", b'"resourceSpans"', b"42", b"null"])
def test_json_that_is_not_an_object_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(OTLPDecodeError, match="object"):
        decode_json(body)


@pytest.mark.unit
def test_resource_spans_that_is_not_an_array_is_a_decode_error() -> None:
    with pytest.raises(OTLPDecodeError, match="resourceSpans"):
        decode_json(b'{"resourceSpans": {"scopeSpans": []}}')


@pytest.mark.unit
def test_garbage_protobuf_is_a_decode_error() -> None:
    with pytest.raises(OTLPDecodeError, match="protobuf"):
        decode_export_request(b"\xff\xff\xff", PROTOBUF)


@pytest.mark.unit
def test_json_sent_as_protobuf_is_a_decode_error() -> None:
    with pytest.raises(OTLPDecodeError):
        decode_export_request(example_body(), PROTOBUF)


@pytest.mark.unit
@pytest.mark.parametrize("body", [b"{}", b'{"resourceSpans": []}', b'{"resourceSpans": null}'])
def test_empty_json_request_has_no_spans_and_no_rejections(body: bytes) -> None:
    assert decode_json(body) == DecodedTraces(spans=[], rejected=[])


@pytest.mark.unit
def test_empty_protobuf_request_has_no_spans_and_no_rejections() -> None:
    assert decode_export_request(b"", PROTOBUF) == DecodedTraces(spans=[], rejected=[])


# --- per-span rejection (partial success) ----------------------------------------------------


@pytest.mark.unit
def test_trace_id_mangled_to_48_hex_is_rejected_while_the_good_span_is_accepted() -> None:
    # What a base64 (proto3 JSON) decoder makes of the example's hex trace id.
    mangled = base64.b64decode("5B8EFFF798038103D269B633813FC60C").hex()
    assert len(mangled) == 48

    decoded = decode_json(
        json_request(json_span(traceId=mangled, spanId="1111111111111111"), json_span())
    )

    assert [span["span_id"] for span in decoded.spans] == [OTHER_SPAN_ID]
    assert decoded.rejected == [
        RejectedSpan(
            trace_id=mangled,
            span_id="1111111111111111",
            reason="trace_id must be 32 hex characters, got 48",
        )
    ]


@pytest.mark.unit
def test_base64_trace_id_in_json_is_rejected() -> None:
    as_base64 = base64.b64encode(bytes.fromhex(EXAMPLE_TRACE_ID)).decode()

    decoded = decode_json(json_request(json_span(traceId=as_base64), json_span()))

    assert len(decoded.spans) == 1
    assert [rejected.trace_id for rejected in decoded.rejected] == [as_base64]
    assert "trace_id must be 32 hex characters" in decoded.rejected[0].reason


@pytest.mark.unit
def test_non_hex_trace_id_of_the_right_length_is_rejected() -> None:
    decoded = decode_json(json_request(json_span(traceId="g" * 32)))

    assert decoded.spans == []
    assert "non-hex" in decoded.rejected[0].reason


@pytest.mark.unit
def test_24_byte_trace_id_in_protobuf_is_rejected_while_the_good_span_is_accepted() -> None:
    decoded = decode_export_request(pb_request(pb_span(trace_id=b"\x01" * 24), pb_span()), PROTOBUF)

    assert [span["trace_id"] for span in decoded.spans] == [OTHER_TRACE_ID]
    assert decoded.rejected == [
        RejectedSpan(
            trace_id="01" * 24,
            span_id=OTHER_SPAN_ID,
            reason="trace_id must be 32 hex characters, got 48",
        )
    ]


@pytest.mark.unit
def test_all_zero_span_id_is_rejected() -> None:
    json_decoded = decode_json(json_request(json_span(spanId="0" * 16), json_span()))
    pb_decoded = decode_export_request(pb_request(pb_span(span_id=bytes(8)), pb_span()), PROTOBUF)

    for decoded in (json_decoded, pb_decoded):
        assert len(decoded.spans) == 1
        assert [rejected.reason for rejected in decoded.rejected] == [
            "span_id must not be all zeros"
        ]


@pytest.mark.unit
def test_all_zero_trace_id_is_rejected() -> None:
    decoded = decode_json(json_request(json_span(traceId="0" * 32)))

    assert decoded.spans == []
    assert decoded.rejected[0].reason == "trace_id must not be all zeros"


@pytest.mark.unit
def test_missing_ids_are_rejected() -> None:
    decoded = decode_json(json_request(json_span(traceId=None), json_span(spanId=None)))

    assert decoded.spans == []
    assert [(r.trace_id, r.span_id) for r in decoded.rejected] == [
        (None, OTHER_SPAN_ID),
        (OTHER_TRACE_ID, None),
    ]


@pytest.mark.unit
def test_span_id_of_wrong_length_is_rejected() -> None:
    decoded = decode_json(json_request(json_span(spanId="abc")))

    assert decoded.rejected[0].reason == "span_id must be 16 hex characters, got 3"


@pytest.mark.unit
def test_end_before_start_is_rejected() -> None:
    json_decoded = decode_json(
        json_request(json_span(startTimeUnixNano="20", endTimeUnixNano="10"), json_span())
    )
    pb_decoded = decode_export_request(
        pb_request(pb_span(start_time_unix_nano=20, end_time_unix_nano=10), pb_span()), PROTOBUF
    )

    for decoded in (json_decoded, pb_decoded):
        assert len(decoded.spans) == 1
        assert len(decoded.rejected) == 1
        assert decoded.rejected[0].reason.startswith(
            "end_time_unix_nano before start_time_unix_nano"
        )


@pytest.mark.unit
def test_zero_length_span_is_accepted() -> None:
    span = only_span(decode_json(json_request(json_span(startTimeUnixNano="7", endTimeUnixNano=7))))

    assert (span["start_time_unix_nano"], span["end_time_unix_nano"]) == (7, 7)


@pytest.mark.unit
@pytest.mark.parametrize("start", ["-1", -1, 1.5e18, "1e18", "12abc", True, "18446744073709551616"])
def test_start_time_that_is_not_a_uint64_is_rejected(start: Any) -> None:
    decoded = decode_json(json_request(json_span(startTimeUnixNano=start, endTimeUnixNano=None)))

    assert decoded.spans == []
    assert "start_time_unix_nano" in decoded.rejected[0].reason


@pytest.mark.unit
def test_empty_span_name_is_accepted() -> None:
    span = only_span(decode_json(json_request(json_span(name=None))))

    assert span["name"] == ""


@pytest.mark.unit
@pytest.mark.parametrize("parent", ["", "0000000000000000", None])
def test_empty_or_all_zero_parent_span_id_means_a_root_span(parent: str | None) -> None:
    span = only_span(decode_json(json_request(json_span(parentSpanId=parent))))

    assert span["parent_span_id"] is None


@pytest.mark.unit
def test_all_zero_parent_span_id_in_protobuf_means_a_root_span() -> None:
    span = only_span(decode_export_request(pb_request(pb_span(parent_span_id=bytes(8))), PROTOBUF))

    assert span["parent_span_id"] is None


@pytest.mark.unit
def test_parent_span_id_of_wrong_length_is_rejected() -> None:
    decoded = decode_json(json_request(json_span(parentSpanId="abcd")))

    assert decoded.rejected[0].reason == "parent_span_id must be 16 hex characters, got 4"


@pytest.mark.unit
def test_link_with_bad_trace_id_rejects_its_span() -> None:
    decoded = decode_json(
        json_request(json_span(links=[{"traceId": "abc", "spanId": OTHER_SPAN_ID}]))
    )

    assert decoded.spans == []
    assert decoded.rejected[0].reason == "links[0].trace_id must be 32 hex characters, got 3"


@pytest.mark.unit
def test_span_that_is_not_an_object_is_rejected_without_ids() -> None:
    decoded = decode_json(json_request("not a span", json_span()))

    assert len(decoded.spans) == 1
    assert decoded.rejected == [
        RejectedSpan(
            trace_id=None,
            span_id=None,
            reason="resourceSpans[0].scopeSpans[0].spans[0] must be an object",
        )
    ]


@pytest.mark.unit
def test_bad_resource_rejects_every_span_under_it() -> None:
    body = orjson.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": "service.name=svc"},
                    "scopeSpans": [{"spans": [json_span(spanId="1111111111111111"), json_span()]}],
                },
                {"scopeSpans": [{"spans": [json_span(spanId="2222222222222222")]}]},
            ]
        }
    )

    decoded = decode_json(body)

    assert [span["span_id"] for span in decoded.spans] == ["2222222222222222"]
    assert [(r.span_id, r.reason) for r in decoded.rejected] == [
        ("1111111111111111", "resource.attributes must be an array, got string"),
        (OTHER_SPAN_ID, "resource.attributes must be an array, got string"),
    ]


@pytest.mark.unit
def test_bad_scope_rejects_only_the_spans_of_that_scope() -> None:
    body = orjson.dumps(
        {
            "resourceSpans": [
                {
                    "scopeSpans": [
                        {"scope": ["not", "an", "object"], "spans": [json_span()]},
                        {"scope": {"name": "ok"}, "spans": [json_span(spanId="3333333333333333")]},
                    ]
                }
            ]
        }
    )

    decoded = decode_json(body)

    assert [span["scope"]["name"] for span in decoded.spans] == ["ok"]
    assert [r.reason for r in decoded.rejected] == ["scope must be an object, got array"]


@pytest.mark.unit
def test_scope_spans_entry_that_is_not_an_object_counts_as_one_rejection() -> None:
    body = orjson.dumps({"resourceSpans": [{"scopeSpans": [42, {"spans": [json_span()]}]}, "nope"]})

    decoded = decode_json(body)

    assert len(decoded.spans) == 1
    assert [r.reason for r in decoded.rejected] == [
        "resourceSpans[0].scopeSpans[0] must be an object",
        "resourceSpans[1] must be an object",
    ]


@pytest.mark.unit
def test_unknown_span_kind_is_rejected() -> None:
    json_decoded = decode_json(json_request(json_span(kind=9)))
    pb_decoded = decode_export_request(pb_request(pb_span(kind=9)), PROTOBUF)

    for decoded in (json_decoded, pb_decoded):
        assert decoded.spans == []
        assert decoded.rejected[0].reason.startswith("kind must be one of")


# --- JSON value encodings ----------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("encoded", ["10", 10])
def test_int_value_is_accepted_as_string_or_number(encoded: Any) -> None:
    span = only_span(
        decode_json(json_request(json_span(attributes=[attr("n", {"intValue": encoded})])))
    )

    assert span["attributes"] == {"n": 10}
    assert type(span["attributes"]["n"]) is int


@pytest.mark.unit
def test_int_value_keeps_full_int64_precision() -> None:
    span = only_span(
        decode_json(
            json_request(
                json_span(
                    attributes=[
                        attr("max", {"intValue": "9223372036854775807"}),
                        attr("min", {"intValue": -9223372036854775808}),
                    ]
                )
            )
        )
    )

    assert span["attributes"] == {"max": 2**63 - 1, "min": -(2**63)}


@pytest.mark.unit
@pytest.mark.parametrize("encoded", ["9223372036854775808", 1.5, "ten", False])
def test_int_value_that_is_not_an_int64_rejects_the_span(encoded: Any) -> None:
    decoded = decode_json(json_request(json_span(attributes=[attr("n", {"intValue": encoded})])))

    assert decoded.spans == []
    assert "attributes[0].value.int_value" in decoded.rejected[0].reason


@pytest.mark.unit
def test_64_bit_times_are_accepted_as_numbers() -> None:
    span = only_span(
        decode_json(
            json_request(
                json_span(
                    startTimeUnixNano=1544712660000000000, endTimeUnixNano=1544712661000000000
                )
            )
        )
    )

    assert span["start_time_unix_nano"] == 1544712660000000000
    assert span["end_time_unix_nano"] == 1544712661000000000


@pytest.mark.unit
def test_json_bytes_value_is_kept_as_the_base64_sent() -> None:
    span = only_span(
        decode_json(json_request(json_span(attributes=[attr("blob", {"bytesValue": "AP8Q"})])))
    )

    assert span["attributes"] == {"blob": "AP8Q"}


@pytest.mark.unit
def test_protobuf_bytes_value_becomes_standard_base64() -> None:
    value = common_pb2.AnyValue(bytes_value=b"\x00\xff\x10\xfb\xff")
    span = only_span(
        decode_export_request(pb_request(pb_span(attributes=[pb_attr("blob", value)])), PROTOBUF)
    )

    # Standard alphabet ("+/"), not URL-safe ("-_").
    assert span["attributes"] == {"blob": "AP8Q+/8="}


@pytest.mark.unit
def test_array_and_kvlist_values_nest() -> None:
    value = {
        "kvlistValue": {
            "values": [
                attr(
                    "list",
                    {
                        "arrayValue": {
                            "values": [
                                {"kvlistValue": {"values": [attr("deep", {"doubleValue": 1})]}},
                                {"arrayValue": {"values": []}},
                                {"arrayValue": {}},
                                {},
                            ]
                        }
                    },
                ),
                attr("empty", {"kvlistValue": {}}),
            ]
        }
    }

    span = only_span(decode_json(json_request(json_span(attributes=[attr("tree", value)]))))

    assert span["attributes"] == {"tree": {"list": [{"deep": 1.0}, [], [], None], "empty": {}}}
    assert type(span["attributes"]["tree"]["list"][0]["deep"]) is float


@pytest.mark.unit
def test_absurdly_deep_value_nesting_rejects_the_span() -> None:
    # Written by hand: orjson refuses to serialise this deep, but parses up to 1024 levels.
    depth = 200
    value = '{"arrayValue": {"values": [' * depth + '{"stringValue": "bottom"}' + "]}}" * depth
    span = json_span()
    span_json = (
        orjson.dumps(span).decode()[:-1]
        + f', "attributes": [{{"key": "deep", "value": {value}}}]}}'
    )
    body = f'{{"resourceSpans": [{{"scopeSpans": [{{"spans": [{span_json}]}}]}}]}}'.encode()

    decoded = decode_json(body)

    assert decoded.spans == []
    assert "nested more than" in decoded.rejected[0].reason


@pytest.mark.unit
def test_non_finite_doubles_are_accepted_by_their_proto3_json_names() -> None:
    span = only_span(
        decode_json(
            json_request(
                json_span(
                    attributes=[
                        attr("inf", {"doubleValue": "Infinity"}),
                        attr("nan", {"doubleValue": "NaN"}),
                        attr("text", {"doubleValue": "0.25"}),
                    ]
                )
            )
        )
    )

    assert span["attributes"]["inf"] == math.inf
    assert math.isnan(span["attributes"]["nan"])
    assert span["attributes"]["text"] == 0.25


@pytest.mark.unit
def test_later_duplicate_attribute_key_wins() -> None:
    span = only_span(
        decode_json(
            json_request(
                json_span(
                    attributes=[
                        attr("k", {"stringValue": "first"}),
                        attr("k", {"stringValue": "second"}),
                    ]
                )
            )
        )
    )

    assert span["attributes"] == {"k": "second"}


@pytest.mark.unit
def test_attribute_without_a_value_is_none() -> None:
    span = only_span(decode_json(json_request(json_span(attributes=[{"key": "k"}]))))

    assert span["attributes"] == {"k": None}


@pytest.mark.unit
def test_attribute_with_a_non_string_key_rejects_the_span() -> None:
    decoded = decode_json(
        json_request(json_span(attributes=[{"key": 1, "value": {"stringValue": "x"}}]))
    )

    assert decoded.rejected[0].reason == "attributes[0].key must be a string, got number"


@pytest.mark.unit
def test_string_value_of_the_wrong_type_rejects_the_span() -> None:
    decoded = decode_json(json_request(json_span(attributes=[attr("s", {"stringValue": 5})])))

    assert decoded.rejected[0].reason == (
        "attributes[0].value.string_value must be a string, got number"
    )


@pytest.mark.unit
def test_snake_case_field_names_are_accepted() -> None:
    snake = {
        "resource_spans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"string_value": "my.service"}}]
                },
                "schema_url": "https://opentelemetry.io/schemas/1.21.0",
                "scope_spans": [
                    {
                        "scope": {"name": "my.library", "version": "1.0.0"},
                        "schema_url": "https://example.com/scope",
                        "spans": [
                            {
                                "trace_id": "5B8EFFF798038103D269B633813FC60C",
                                "span_id": "EEE19B7EC3C1B174",
                                "parent_span_id": "EEE19B7EC3C1B173",
                                "trace_state": "k=v",
                                "name": "snake",
                                "kind": 2,
                                "start_time_unix_nano": "1544712660000000000",
                                "end_time_unix_nano": "1544712661000000000",
                                "attributes": [
                                    {"key": "i", "value": {"int_value": "3"}},
                                    {"key": "b", "value": {"bool_value": False}},
                                    {"key": "d", "value": {"double_value": 0.5}},
                                    {"key": "raw", "value": {"bytes_value": "AA=="}},
                                    {
                                        "key": "a",
                                        "value": {"array_value": {"values": [{"int_value": 1}]}},
                                    },
                                    {
                                        "key": "m",
                                        "value": {
                                            "kvlist_value": {
                                                "values": [
                                                    {"key": "x", "value": {"string_value": "y"}}
                                                ]
                                            }
                                        },
                                    },
                                ],
                                "events": [{"name": "e", "time_unix_nano": "1544712660500000000"}],
                                "links": [
                                    {
                                        "trace_id": OTHER_TRACE_ID,
                                        "span_id": OTHER_SPAN_ID,
                                        "trace_state": "l=1",
                                    }
                                ],
                                "dropped_attributes_count": 4,
                                "dropped_events_count": 5,
                                "dropped_links_count": 6,
                                "status": {"code": 1, "message": "fine"},
                            }
                        ],
                    }
                ],
            }
        ]
    }

    span = only_span(decode_json(orjson.dumps(snake)))

    assert span == {
        "trace_id": EXAMPLE_TRACE_ID,
        "span_id": EXAMPLE_SPAN_ID,
        "parent_span_id": EXAMPLE_PARENT_SPAN_ID,
        "trace_state": "k=v",
        "flags": 0,
        "name": "snake",
        "kind": "SPAN_KIND_SERVER",
        "start_time_unix_nano": 1544712660000000000,
        "end_time_unix_nano": 1544712661000000000,
        "status_code": "STATUS_CODE_OK",
        "status_message": "fine",
        "attributes": {"i": 3, "b": False, "d": 0.5, "raw": "AA==", "a": [1], "m": {"x": "y"}},
        "resource_attributes": {"service.name": "my.service"},
        "events": [{"name": "e", "time_unix_nano": 1544712660500000000, "attributes": {}}],
        "links": [
            {
                "trace_id": OTHER_TRACE_ID,
                "span_id": OTHER_SPAN_ID,
                "trace_state": "l=1",
                "attributes": {},
            }
        ],
        "scope": {"name": "my.library", "version": "1.0.0", "attributes": {}},
        "dropped_attributes_count": 4,
        "dropped_events_count": 5,
        "dropped_links_count": 6,
        "resource_schema_url": "https://opentelemetry.io/schemas/1.21.0",
        "scope_schema_url": "https://example.com/scope",
    }


@pytest.mark.unit
def test_deprecated_instrumentation_library_spans_alias_is_accepted() -> None:
    body = orjson.dumps(
        {
            "resourceSpans": [
                {
                    "instrumentationLibrarySpans": [
                        {
                            "instrumentationLibrary": {"name": "old.lib", "version": "0.9"},
                            "spans": [json_span()],
                        }
                    ]
                }
            ]
        }
    )

    span = only_span(decode_json(body))

    assert span["scope"] == {"name": "old.lib", "version": "0.9", "attributes": {}}
    assert span["span_id"] == OTHER_SPAN_ID


@pytest.mark.unit
def test_enum_names_are_accepted_for_kind_and_status_code() -> None:
    span = only_span(
        decode_json(
            json_request(json_span(kind="SPAN_KIND_CONSUMER", status={"code": "STATUS_CODE_ERROR"}))
        )
    )

    assert (span["kind"], span["status_code"]) == ("SPAN_KIND_CONSUMER", "STATUS_CODE_ERROR")


@pytest.mark.unit
def test_missing_kind_and_status_are_the_proto_defaults() -> None:
    span = only_span(decode_json(json_request(json_span(kind=None))))

    assert (span["kind"], span["status_code"], span["status_message"]) == (
        "SPAN_KIND_UNSPECIFIED",
        "STATUS_CODE_UNSET",
        "",
    )


@pytest.mark.unit
def test_unknown_json_fields_are_ignored() -> None:
    span = only_span(decode_json(json_request(json_span(futureField={"x": 1}))))

    assert span["span_id"] == OTHER_SPAN_ID


@pytest.mark.unit
def test_every_span_of_a_resource_and_scope_carries_their_attributes() -> None:
    # Spans of one resource/scope share those (read-only) dicts instead of deep copies: the
    # ingest path only reads them, and copying cost more than decoding on big batches.
    decoded = decode_json(json_request(json_span(), json_span(spanId="4444444444444444")))
    first, second = decoded.spans
    for span in (first, second):
        assert span["resource_attributes"] == {"service.name": "svc"}
        assert span["scope"]["name"] == "scope"


# --- response --------------------------------------------------------------------------------


@pytest.mark.unit
def test_protobuf_response_with_rejections_carries_partial_success() -> None:
    body, media_type = encode_export_response(2, "2 spans rejected", PROTOBUF)

    response = trace_service_pb2.ExportTraceServiceResponse()
    response.ParseFromString(body)
    assert media_type == "application/x-protobuf"
    assert response.HasField("partial_success")
    assert response.partial_success.rejected_spans == 2
    assert response.partial_success.error_message == "2 spans rejected"


@pytest.mark.unit
def test_protobuf_response_without_rejections_is_empty() -> None:
    body, media_type = encode_export_response(0, "", "application/x-protobuf")

    response = trace_service_pb2.ExportTraceServiceResponse()
    response.ParseFromString(body)
    assert (body, media_type) == (b"", "application/x-protobuf")
    assert not response.HasField("partial_success")


@pytest.mark.unit
def test_json_response_with_rejections_uses_camel_case_and_string_int64() -> None:
    body, media_type = encode_export_response(3, "bad ids", "application/json; charset=utf-8")

    assert media_type == "application/json"
    assert orjson.loads(body) == {
        "partialSuccess": {"rejectedSpans": "3", "errorMessage": "bad ids"}
    }


@pytest.mark.unit
def test_json_response_without_rejections_is_an_empty_object() -> None:
    body, media_type = encode_export_response(0, "", JSON)

    assert (body, media_type) == (b"{}", "application/json")


@pytest.mark.unit
def test_message_without_rejections_is_sent_as_a_warning() -> None:
    body, _ = encode_export_response(0, "attribute limit reached", JSON)

    assert orjson.loads(body) == {"partialSuccess": {"errorMessage": "attribute limit reached"}}


@pytest.mark.unit
def test_response_for_an_unsupported_content_type_is_refused() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        encode_export_response(0, "", "text/plain")


@pytest.mark.unit
def test_negative_rejected_count_is_refused() -> None:
    with pytest.raises(ValueError, match="rejected_spans"):
        encode_export_response(-1, "", JSON)


# --- failures: google.rpc.Status -----------------------------------------------------------


@pytest.mark.unit
def test_a_bad_data_status_in_protobuf_carries_a_bad_request_detail() -> None:
    body, media_type = encode_status(400, "invalid protobuf: truncated", PROTOBUF)

    status = status_pb2.Status.FromString(body)
    assert media_type == "application/x-protobuf"
    assert (status.code, status.message) == (
        code_pb2.INVALID_ARGUMENT,
        "invalid protobuf: truncated",
    )
    (detail,) = status.details
    bad_request = error_details_pb2.BadRequest()
    assert detail.Unpack(bad_request)
    assert [v.description for v in bad_request.field_violations] == ["invalid protobuf: truncated"]


@pytest.mark.unit
def test_a_status_in_json_is_the_proto3_json_mapping() -> None:
    body, media_type = encode_status(400, "invalid JSON", "Application/JSON; charset=utf-8")

    assert media_type == "application/json"
    assert orjson.loads(body) == {
        "code": 3,
        "message": "invalid JSON",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"description": "invalid JSON"}],
            }
        ],
    }
    busy, _ = encode_status(503, "overloaded", JSON)
    assert orjson.loads(busy) == {"code": 14, "message": "overloaded"}


@pytest.mark.parametrize(
    ("http_status", "code"),
    [
        (400, code_pb2.INVALID_ARGUMENT),
        (401, code_pb2.UNAUTHENTICATED),
        (403, code_pb2.PERMISSION_DENIED),
        (404, code_pb2.UNIMPLEMENTED),
        (413, code_pb2.UNKNOWN),
        (415, code_pb2.UNKNOWN),
        (429, code_pb2.RESOURCE_EXHAUSTED),
        (500, code_pb2.UNKNOWN),
        (502, code_pb2.UNAVAILABLE),
        (503, code_pb2.UNAVAILABLE),
        (504, code_pb2.UNAVAILABLE),
    ],
)
@pytest.mark.unit
def test_status_codes_follow_the_collectors_http_mapping(http_status: int, code: int) -> None:
    body, _ = encode_status(http_status, "m", PROTOBUF)

    status = status_pb2.Status.FromString(body)
    assert status.code == code
    assert len(status.details) == (1 if http_status == 400 else 0)


@pytest.mark.unit
def test_a_status_for_an_unsupported_content_type_is_refused() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        encode_status(400, "m", "text/plain")


@pytest.mark.unit
def test_a_protobuf_value_trace_exports_cannot_hold_is_rejected_with_its_path() -> None:
    strindex = common_pb2.AnyValue(string_value_strindex=3)
    good = common_pb2.AnyValue(string_value="ok")
    cases = {
        "attributes[1].value": [pb_attr("a", good), pb_attr("b", strindex)],
        "attributes[0].value.array_value[1]": [
            pb_attr(
                "a", common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[good, strindex]))
            )
        ],
        "attributes[0].value.kvlist_value[1].value": [
            pb_attr(
                "a",
                common_pb2.AnyValue(
                    kvlist_value=common_pb2.KeyValueList(
                        values=[pb_attr("x", good), pb_attr("y", strindex)]
                    )
                ),
            )
        ],
    }
    for path, attributes in cases.items():
        decoded = decode_export_request(
            pb_request(
                pb_span(span_id=bytes.fromhex("2222222222222222"), attributes=attributes), pb_span()
            ),
            PROTOBUF,
        )
        assert [span["span_id"] for span in decoded.spans] == [OTHER_SPAN_ID]
        assert [r.reason for r in decoded.rejected] == [
            f"{path}: string_value_strindex is not valid in a trace export"
        ]
