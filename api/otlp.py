"""OTLP/HTTP trace export: request bodies to plain span records, and the response back.

Pure functions: no web framework and no I/O besides decompressing the body. The route turns
the errors raised here into HTTP statuses (`UnsupportedMediaTypeError` -> 415,
`PayloadTooLargeError` -> 413, any other `OTLPDecodeError` -> 400) and answers 200 with
`encode_export_response` otherwise, listing the spans rejected one by one (OTLP partial
success). A failed export is answered with `encode_status`: a ``google.rpc.Status`` in the
request's encoding, as OTLP/HTTP "Failures" requires of every 4xx and 5xx.

Sources:
    - OTLP specification, "OTLP/HTTP" and "JSON Protobuf Encoding":
      https://opentelemetry.io/docs/specs/otlp/
    - opentelemetry-proto: ``opentelemetry/proto/trace/v1/trace.proto``,
      ``opentelemetry/proto/common/v1/common.proto`` and
      ``opentelemetry/proto/collector/trace/v1/trace_service.proto``.
    - googleapis: ``google/rpc/status.proto``, ``code.proto`` and ``error_details.proto``
      (googleapis-common-protos).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from api.coding import (
    ContentCodingError,
    DecodedBodyTooLargeError,
    UnsupportedContentCodingError,
    decode_content,
    media_type_of,
)

__all__ = [
    "JSON_MEDIA_TYPE",
    "PROTOBUF_MEDIA_TYPE",
    "DecodedTraces",
    "OTLPDecodeError",
    "PayloadTooLargeError",
    "RejectedSpan",
    "UnsupportedMediaTypeError",
    "decode_export_request",
    "encode_export_response",
    "encode_status",
    "otlp_media_type",
]

PROTOBUF_MEDIA_TYPE: Final = "application/x-protobuf"
"""Media type of binary protobuf OTLP/HTTP bodies."""

JSON_MEDIA_TYPE: Final = "application/json"
"""Media type of OTLP/JSON bodies."""

_DEFAULT_MAX_DECOMPRESSED_BYTES: Final = 64 * 1024 * 1024

_TRACE_ID_HEX_LENGTH: Final = 32
_SPAN_ID_HEX_LENGTH: Final = 16

_UINT32_MAX: Final = 2**32 - 1
_UINT64_MAX: Final = 2**64 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# Bounds our own recursion over arrayValue/kvlistValue in JSON; orjson allows 1024 levels of
# containers, which would come too close to Python's recursion limit. The protobuf parser
# already stops at 100 nested messages.
_MAX_ANY_VALUE_DEPTH: Final = 64

_HEX_RE: Final = re.compile(r"[0-9a-fA-F]*")
# ASCII digits only and a bounded length: int() would also take "1_000", " 7" and Unicode
# digits, and very long digit strings cost quadratic time.
_DECIMAL_RE: Final = re.compile(r"-?[0-9]{1,20}")
_JSON_DOUBLE_NAMES: Final = {
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
}

_SPAN_KIND_NAMES: Final[dict[int, str]] = {
    number: name for name, number in trace_pb2.Span.SpanKind.items()
}
_STATUS_CODE_NAMES: Final[dict[int, str]] = {
    number: name for name, number in trace_pb2.Status.StatusCode.items()
}


class OTLPDecodeError(ValueError):
    """The whole body could not be decoded (HTTP 400).

    Raised for bodies that are not valid protobuf, not valid JSON, not a JSON object, or whose
    ``resourceSpans`` is not an array, and for corrupt or truncated compressed bodies.
    """


class UnsupportedMediaTypeError(OTLPDecodeError):
    """The content type or content encoding is not one OTLP/HTTP defines (HTTP 415).

    OTLP/HTTP bodies are ``application/x-protobuf`` or ``application/json``, optionally
    ``gzip`` (or ``deflate``) encoded; RFC 9110 section 15.5.16 answers 415 to an unsupported
    content coding as well.
    """


class PayloadTooLargeError(OTLPDecodeError):
    """The (decompressed) body is larger than the allowed size (HTTP 413)."""


@dataclass(frozen=True)
class RejectedSpan:
    """One span that was not accepted, while the rest of the request may have been.

    Attributes:
        trace_id: The trace id as received (JSON string in any case, or the hex of the protobuf
            bytes), or None when absent or not a string.
        span_id: The span id as received, in the same way as ``trace_id``.
        reason: Human-readable cause, naming the OpenTelemetry field, e.g.
            ``"trace_id must be 32 hex characters, got 48"``.
    """

    trace_id: str | None
    span_id: str | None
    reason: str


@dataclass(frozen=True)
class DecodedTraces:
    """The result of decoding one ExportTraceServiceRequest.

    Attributes:
        spans: One dict per accepted span, in request order, with OpenTelemetry field names:

            - ``trace_id``: 32 lowercase hex characters, never all zeros.
            - ``span_id``: 16 lowercase hex characters, never all zeros.
            - ``parent_span_id``: 16 lowercase hex characters, or None for a root span (absent,
              empty or all-zero id).
            - ``trace_state``: W3C tracestate header value, ``""`` when absent.
            - ``flags``: W3C trace flags and OTLP context flags (fixed32).
            - ``name``: span name, possibly ``""``.
            - ``kind``: ``SpanKind`` name, ``"SPAN_KIND_UNSPECIFIED"`` ... ``"SPAN_KIND_CONSUMER"``.
            - ``start_time_unix_nano``, ``end_time_unix_nano``: int nanoseconds since the Unix
              epoch, end not before start.
            - ``status_code``: ``"STATUS_CODE_UNSET"``, ``"STATUS_CODE_OK"`` or
              ``"STATUS_CODE_ERROR"``; ``status_message``: str.
            - ``attributes``, ``resource_attributes``: dict of attribute key to plain value
              (str, bool, int, float, list, dict, None; bytes as standard base64 str).
            - ``events``: list of ``{"name": str, "time_unix_nano": int, "attributes": dict}``.
            - ``links``: list of ``{"trace_id": str, "span_id": str, "trace_state": str,
              "attributes": dict}``.
            - ``scope``: ``{"name": str, "version": str, "attributes": dict}`` of the
              instrumentation scope.
            - ``dropped_attributes_count``, ``dropped_events_count``, ``dropped_links_count``: int.
            - ``resource_schema_url``, ``scope_schema_url``: str, ``""`` when absent.

            Each span owns its dicts; nothing is shared between two spans.
        rejected: The spans not accepted, in request order. An entry of the JSON structure that
            is not an object (so its spans cannot be counted) is reported as one rejected span
            with ``trace_id`` and ``span_id`` None.
    """

    spans: list[dict[str, Any]]
    rejected: list[RejectedSpan]


class _InvalidSpanError(ValueError):
    """A span (or the resource/scope it belongs to) breaks the OTLP rules; rejects the span."""


def decode_export_request(
    body: bytes,
    content_type: str,
    content_encoding: str | None = None,
    *,
    max_decompressed_bytes: int = _DEFAULT_MAX_DECOMPRESSED_BYTES,
) -> DecodedTraces:
    """Decode an OTLP/HTTP ``ExportTraceServiceRequest`` body into span records.

    Binary protobuf is parsed with the opentelemetry-proto classes. JSON is walked by hand
    because OTLP/JSON departs from the proto3 JSON mapping: trace and span ids are hex strings,
    not base64 (a protojson decoder turns a 32-hex trace id into 48 hex characters of garbage).
    JSON receivers accept both the lowerCamelCase and the original snake_case field names,
    64-bit integers as numbers or decimal strings, enums as integers or names, and the
    deprecated ``instrumentationLibrarySpans``/``instrumentationLibrary`` aliases of
    ``scopeSpans``/``scope``. Unknown JSON fields are ignored, as the OTLP spec requires.

    A span that breaks a rule (ids of the wrong length, all-zero ids, end before start, a
    value of the wrong type, ...) is listed in ``rejected``; the other spans are still decoded.

    Args:
        body: The HTTP request body as received.
        content_type: The ``Content-Type`` header; ``application/x-protobuf`` or
            ``application/json``, parameters such as ``; charset=utf-8`` and case ignored.
        content_encoding: The ``Content-Encoding`` header: None, ``"identity"``, ``"gzip"`` or
            ``"deflate"`` (zlib-wrapped or raw).
        max_decompressed_bytes: Largest body accepted after decompression, in bytes; also
            applies to an uncompressed body.

    Returns:
        The accepted spans and the rejected ones; see `DecodedTraces` for the span shape.

    Raises:
        UnsupportedMediaTypeError: Content type or content encoding not supported.
        PayloadTooLargeError: The decoded body would exceed ``max_decompressed_bytes``.
        OTLPDecodeError: Corrupt compression, unparseable protobuf, invalid JSON, a JSON body
            that is not an object, or ``resourceSpans`` that is not an array.
    """
    media_type = _media_type(content_type)
    payload = _decompress(body, content_encoding, max_decompressed_bytes)
    if media_type == PROTOBUF_MEDIA_TYPE:
        return _decode_protobuf(payload)
    return _decode_json(payload)


def encode_export_response(
    rejected_spans: int, error_message: str, content_type: str
) -> tuple[bytes, str]:
    """Encode the ``ExportTraceServiceResponse`` answering an export request.

    Per the OTLP spec, ``partial_success`` is left unset when every span was accepted, and set
    with ``rejected_spans`` and ``error_message`` when some were rejected. An
    ``error_message`` with zero rejected spans is sent as a warning, which the spec allows.

    Args:
        rejected_spans: Number of spans not accepted (int64, not negative).
        error_message: Human-readable explanation for the client, ``""`` for none.
        content_type: The request's ``Content-Type``; the response uses the same encoding.

    Returns:
        ``(body, media_type)``: protobuf bytes and ``"application/x-protobuf"``, or JSON bytes
        and ``"application/json"`` (lowerCamelCase, ``rejectedSpans`` as a decimal string as
        proto3 JSON renders int64; ``{}`` when nothing is to be reported).

    Raises:
        UnsupportedMediaTypeError: ``content_type`` is neither protobuf nor JSON.
        ValueError: ``rejected_spans`` is negative.
    """
    media_type = _media_type(content_type)
    if rejected_spans < 0:
        raise ValueError(f"rejected_spans must not be negative, got {rejected_spans}")
    response = trace_service_pb2.ExportTraceServiceResponse()
    if rejected_spans > 0 or error_message:
        response.partial_success.rejected_spans = rejected_spans
        response.partial_success.error_message = error_message
    if media_type == PROTOBUF_MEDIA_TYPE:
        return response.SerializeToString(), PROTOBUF_MEDIA_TYPE
    # No ids in the response, so the proto3 JSON mapping is the OTLP/JSON one here.
    return orjson.dumps(json_format.MessageToDict(response)), JSON_MEDIA_TYPE


#: HTTP status -> ``google.rpc.Code`` of a failed export's ``Status``, as the OpenTelemetry
#: Collector's OTLP/HTTP receiver maps them (``NewStatusFromMsgAndHTTPCode``, after gRPC's
#: doc/http-grpc-status-mapping.md, 400 and 429 excepted); any other status is ``UNKNOWN``. The
#: OTLP spec leaves ``Status.code`` to the server: clients act on the HTTP status alone.
_RPC_CODES: Final[dict[int, int]] = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.UNIMPLEMENTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    502: code_pb2.UNAVAILABLE,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.UNAVAILABLE,
}


def encode_status(http_status: int, message: str, content_type: str) -> tuple[bytes, str]:
    """Encode the ``google.rpc.Status`` answering a failed export (OTLP/HTTP "Failures": the
    body of every 4xx and 5xx, in the request's encoding).

    Args:
        http_status: The HTTP status of the answer; gives ``Status.code`` (``_RPC_CODES``). A
            400 ("Bad Data") also carries a ``google.rpc.BadRequest`` in ``details``, its one
            field violation described by ``message``, as the spec recommends.
        message: Developer-facing English explanation (``Status.message``).
        content_type: The request's ``Content-Type``; the answer uses the same encoding.

    Returns:
        ``(body, media_type)``: protobuf bytes and ``"application/x-protobuf"``, or the proto3
        JSON mapping (``{"code": 3, "message": ..., "details": [{"@type": ...}]}``) and
        ``"application/json"``.

    Raises:
        UnsupportedMediaTypeError: ``content_type`` is neither protobuf nor JSON.
    """
    media_type = _media_type(content_type)
    status = status_pb2.Status(code=_RPC_CODES.get(http_status, code_pb2.UNKNOWN), message=message)
    if http_status == 400:
        violation = error_details_pb2.BadRequest.FieldViolation(description=message)
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if media_type == PROTOBUF_MEDIA_TYPE:
        return status.SerializeToString(), PROTOBUF_MEDIA_TYPE
    return orjson.dumps(json_format.MessageToDict(status)), JSON_MEDIA_TYPE


def otlp_media_type(content_type: str) -> str | None:
    """``application/x-protobuf`` or ``application/json`` when ``content_type`` is one of
    them (parameters and case ignored), else None."""
    try:
        return _media_type(content_type)
    except UnsupportedMediaTypeError:
        return None


def _media_type(content_type: str) -> str:
    named = media_type_of(content_type)
    if named not in (PROTOBUF_MEDIA_TYPE, JSON_MEDIA_TYPE):
        raise UnsupportedMediaTypeError(
            f"unsupported content type {content_type!r}; "
            f"expected {PROTOBUF_MEDIA_TYPE} or {JSON_MEDIA_TYPE}"
        )
    return named


def _decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """``api.coding.decode_content``, its errors as OTLP's."""
    try:
        return decode_content(body, content_encoding, max_bytes)
    except UnsupportedContentCodingError as error:
        raise UnsupportedMediaTypeError(str(error)) from None
    except DecodedBodyTooLargeError as error:
        raise PayloadTooLargeError(str(error)) from None
    except ContentCodingError as error:
        raise OTLPDecodeError(str(error)) from error.__cause__


# --- protobuf ------------------------------------------------------------------------------


def _decode_protobuf(payload: bytes) -> DecodedTraces:
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(payload)
    except DecodeError as error:
        raise OTLPDecodeError(f"invalid protobuf ExportTraceServiceRequest: {error}") from error
    spans: list[dict[str, Any]] = []
    rejected: list[RejectedSpan] = []
    for resource_spans in request.resource_spans:
        resource_error: str | None = None
        resource_attributes: dict[str, Any] = {}
        try:
            resource_attributes = _pb_attributes(resource_spans.resource.attributes)
        except _InvalidSpanError as error:
            resource_error = f"resource.{error}"
        for scope_spans in resource_spans.scope_spans:
            scope_error = resource_error
            scope: dict[str, Any] = {}
            if scope_error is None:
                try:
                    scope = {
                        "name": scope_spans.scope.name,
                        "version": scope_spans.scope.version,
                        "attributes": _pb_attributes(scope_spans.scope.attributes),
                    }
                except _InvalidSpanError as error:
                    scope_error = f"scope.{error}"
            for span in scope_spans.spans:
                try:
                    if scope_error is not None:
                        raise _InvalidSpanError(scope_error)
                    record = _pb_span(span)
                except _InvalidSpanError as error:
                    rejected.append(
                        RejectedSpan(
                            trace_id=span.trace_id.hex() or None,
                            span_id=span.span_id.hex() or None,
                            reason=str(error),
                        )
                    )
                    continue
                # Shared, not copied: spans of one resource/scope are read, never mutated.
                record["resource_attributes"] = resource_attributes
                record["scope"] = scope
                record["resource_schema_url"] = resource_spans.schema_url
                record["scope_schema_url"] = scope_spans.schema_url
                spans.append(record)
    return DecodedTraces(spans=spans, rejected=rejected)


def _pb_span(span: trace_pb2.Span) -> dict[str, Any]:
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    _check_times(start, end)
    return {
        "trace_id": _pb_id(span.trace_id, "trace_id", _TRACE_ID_HEX_LENGTH),
        "span_id": _pb_id(span.span_id, "span_id", _SPAN_ID_HEX_LENGTH),
        "parent_span_id": _parent_span_id(span.parent_span_id.hex()),
        "trace_state": span.trace_state,
        "flags": span.flags,
        "name": span.name,
        "kind": _enum_name(span.kind, _SPAN_KIND_NAMES, "kind"),
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status_code": _enum_name(span.status.code, _STATUS_CODE_NAMES, "status.code"),
        "status_message": span.status.message,
        "attributes": _pb_attributes(span.attributes, "attributes"),
        "events": [
            {
                "name": event.name,
                "time_unix_nano": event.time_unix_nano,
                "attributes": _pb_attributes(event.attributes, f"events[{index}].attributes"),
            }
            for index, event in enumerate(span.events)
        ],
        "links": [
            {
                "trace_id": _checked_id(
                    link.trace_id.hex(),
                    f"links[{index}].trace_id",
                    _TRACE_ID_HEX_LENGTH,
                ),
                "span_id": _checked_id(
                    link.span_id.hex(), f"links[{index}].span_id", _SPAN_ID_HEX_LENGTH
                ),
                "trace_state": link.trace_state,
                "attributes": _pb_attributes(link.attributes, f"links[{index}].attributes"),
            }
            for index, link in enumerate(span.links)
        ],
        "dropped_attributes_count": span.dropped_attributes_count,
        "dropped_events_count": span.dropped_events_count,
        "dropped_links_count": span.dropped_links_count,
    }


def _pb_attributes(
    key_values: Iterable[common_pb2.KeyValue], field: str = "attributes"
) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for index, key_value in enumerate(key_values):
        try:
            attributes[key_value.key] = _pb_any_value(key_value.value)
        except _InvalidSpanError as error:  # the path is built only for an error
            raise _InvalidSpanError(f"{field}[{index}].value{error}") from None
    return attributes


def _pb_any_value(value: common_pb2.AnyValue) -> Any:
    """A protobuf ``AnyValue`` as JSON. Raises ``_InvalidSpanError`` whose message starts with
    the path below ``value`` (e.g. ``.array_value[2]: ...``)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "bool_value":
        return value.bool_value
    if which == "double_value":
        return value.double_value
    if which is None:
        return None
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    if which == "array_value":
        items = []
        for index, item in enumerate(value.array_value.values):
            try:
                items.append(_pb_any_value(item))
            except _InvalidSpanError as error:
                raise _InvalidSpanError(f".array_value[{index}]{error}") from None
        return items
    if which == "kvlist_value":
        return _pb_attributes(value.kvlist_value.values, ".kvlist_value")
    # string_value_strindex points into a profiles dictionary that trace exports do not have.
    raise _InvalidSpanError(f": {which} is not valid in a trace export")


# --- JSON ----------------------------------------------------------------------------------


def _decode_json(payload: bytes) -> DecodedTraces:
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise OTLPDecodeError(f"invalid JSON: {error}") from error
    if not isinstance(document, dict):
        raise OTLPDecodeError(
            f"ExportTraceServiceRequest must be a JSON object, got {_json_type(document)}"
        )
    resource_spans_list = _get(document, "resourceSpans", "resource_spans")
    if resource_spans_list is None:
        resource_spans_list = []
    if not isinstance(resource_spans_list, list):
        raise OTLPDecodeError(
            f"resourceSpans must be an array, got {_json_type(resource_spans_list)}"
        )

    spans: list[dict[str, Any]] = []
    rejected: list[RejectedSpan] = []
    for resource_index, resource_spans in enumerate(resource_spans_list):
        resource_path = f"resourceSpans[{resource_index}]"
        if not isinstance(resource_spans, dict):
            rejected.append(_unlocalised(f"{resource_path} must be an object"))
            continue
        resource_error: str | None = None
        resource_attributes: dict[str, Any] = {}
        resource_schema_url = ""
        try:
            resource = _json_object(resource_spans.get("resource"), "resource")
            resource_attributes = _json_attributes(
                resource.get("attributes"), "resource.attributes"
            )
            resource_schema_url = _json_str(
                _get(resource_spans, "schemaUrl", "schema_url"), "resource_schema_url"
            )
        except _InvalidSpanError as error:
            resource_error = str(error)

        scope_spans_list = _get(resource_spans, "scopeSpans", "scope_spans")
        if scope_spans_list is None:
            scope_spans_list = _get(
                resource_spans,
                "instrumentationLibrarySpans",
                "instrumentation_library_spans",
            )
        if scope_spans_list is None:
            scope_spans_list = []
        if not isinstance(scope_spans_list, list):
            rejected.append(_unlocalised(f"{resource_path}.scopeSpans must be an array"))
            continue

        for scope_index, scope_spans in enumerate(scope_spans_list):
            scope_path = f"{resource_path}.scopeSpans[{scope_index}]"
            if not isinstance(scope_spans, dict):
                rejected.append(_unlocalised(f"{scope_path} must be an object"))
                continue
            scope_error = resource_error
            scope: dict[str, Any] = {}
            scope_schema_url = ""
            if scope_error is None:
                try:
                    scope = _json_scope(scope_spans)
                    scope_schema_url = _json_str(
                        _get(scope_spans, "schemaUrl", "schema_url"), "scope_schema_url"
                    )
                except _InvalidSpanError as error:
                    scope_error = str(error)

            span_list = scope_spans.get("spans")
            if span_list is None:
                span_list = []
            if not isinstance(span_list, list):
                rejected.append(_unlocalised(f"{scope_path}.spans must be an array"))
                continue

            for span_index, span in enumerate(span_list):
                if not isinstance(span, dict):
                    rejected.append(
                        _unlocalised(f"{scope_path}.spans[{span_index}] must be an object")
                    )
                    continue
                try:
                    if scope_error is not None:
                        raise _InvalidSpanError(scope_error)
                    record = _json_span(span)
                except _InvalidSpanError as error:
                    rejected.append(_rejected_json_span(span, str(error)))
                    continue
                # Shared, not copied: spans of one resource/scope are read, never mutated.
                record["resource_attributes"] = resource_attributes
                record["scope"] = scope
                record["resource_schema_url"] = resource_schema_url
                record["scope_schema_url"] = scope_schema_url
                spans.append(record)
    return DecodedTraces(spans=spans, rejected=rejected)


def _json_scope(scope_spans: Mapping[str, Any]) -> dict[str, Any]:
    raw_scope = scope_spans.get("scope")
    if raw_scope is None:
        raw_scope = _get(scope_spans, "instrumentationLibrary", "instrumentation_library")
    scope = _json_object(raw_scope, "scope")
    return {
        "name": _json_str(scope.get("name"), "scope.name"),
        "version": _json_str(scope.get("version"), "scope.version"),
        "attributes": _json_attributes(scope.get("attributes"), "scope.attributes"),
    }


def _json_span(span: Mapping[str, Any]) -> dict[str, Any]:
    start = _json_int(
        _get(span, "startTimeUnixNano", "start_time_unix_nano"),
        "start_time_unix_nano",
        0,
        _UINT64_MAX,
    )
    end = _json_int(
        _get(span, "endTimeUnixNano", "end_time_unix_nano"),
        "end_time_unix_nano",
        0,
        _UINT64_MAX,
    )
    _check_times(start, end)
    status = _json_object(span.get("status"), "status")
    return {
        "trace_id": _json_id(_get(span, "traceId", "trace_id"), "trace_id", _TRACE_ID_HEX_LENGTH),
        "span_id": _json_id(_get(span, "spanId", "span_id"), "span_id", _SPAN_ID_HEX_LENGTH),
        "parent_span_id": _parent_span_id(
            _json_str(_get(span, "parentSpanId", "parent_span_id"), "parent_span_id")
        ),
        "trace_state": _json_str(_get(span, "traceState", "trace_state"), "trace_state"),
        "flags": _json_int(span.get("flags"), "flags", 0, _UINT32_MAX),
        "name": _json_str(span.get("name"), "name"),
        "kind": _json_enum(span.get("kind"), _SPAN_KIND_NAMES, "kind"),
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "status_code": _json_enum(status.get("code"), _STATUS_CODE_NAMES, "status.code"),
        "status_message": _json_str(status.get("message"), "status.message"),
        "attributes": _json_attributes(span.get("attributes"), "attributes"),
        "events": [
            _json_event(event, f"events[{index}]")
            for index, event in enumerate(_json_list(span.get("events"), "events"))
        ],
        "links": [
            _json_link(link, f"links[{index}]")
            for index, link in enumerate(_json_list(span.get("links"), "links"))
        ],
        "dropped_attributes_count": _json_count(span, "droppedAttributesCount", "attributes"),
        "dropped_events_count": _json_count(span, "droppedEventsCount", "events"),
        "dropped_links_count": _json_count(span, "droppedLinksCount", "links"),
    }


def _json_event(value: Any, field: str) -> dict[str, Any]:
    event = _json_object(value, field)
    return {
        "name": _json_str(event.get("name"), f"{field}.name"),
        "time_unix_nano": _json_int(
            _get(event, "timeUnixNano", "time_unix_nano"),
            f"{field}.time_unix_nano",
            0,
            _UINT64_MAX,
        ),
        "attributes": _json_attributes(event.get("attributes"), f"{field}.attributes"),
    }


def _json_link(value: Any, field: str) -> dict[str, Any]:
    link = _json_object(value, field)
    return {
        "trace_id": _json_id(
            _get(link, "traceId", "trace_id"), f"{field}.trace_id", _TRACE_ID_HEX_LENGTH
        ),
        "span_id": _json_id(
            _get(link, "spanId", "span_id"), f"{field}.span_id", _SPAN_ID_HEX_LENGTH
        ),
        "trace_state": _json_str(_get(link, "traceState", "trace_state"), f"{field}.trace_state"),
        "attributes": _json_attributes(link.get("attributes"), f"{field}.attributes"),
    }


def _json_count(span: Mapping[str, Any], camel: str, what: str) -> int:
    field = f"dropped_{what}_count"
    return _json_int(_get(span, camel, field), field, 0, _UINT32_MAX)


def _json_attributes(value: Any, field: str, depth: int = 0) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for index, item in enumerate(_json_list(value, field)):
        key_value = _json_object(item, f"{field}[{index}]")
        key = key_value.get("key")
        if not isinstance(key, str):
            raise _InvalidSpanError(f"{field}[{index}].key must be a string, got {_json_type(key)}")
        attributes[key] = _json_any_value(key_value.get("value"), f"{field}[{index}].value", depth)
    return attributes


def _json_any_value(value: Any, field: str, depth: int) -> Any:
    if depth > _MAX_ANY_VALUE_DEPTH:
        raise _InvalidSpanError(f"{field} is nested more than {_MAX_ANY_VALUE_DEPTH} levels deep")
    any_value = _json_object(value, field)
    if (string := _get(any_value, "stringValue", "string_value")) is not None:
        return _json_str(string, f"{field}.string_value")
    if (boolean := _get(any_value, "boolValue", "bool_value")) is not None:
        if not isinstance(boolean, bool):
            raise _InvalidSpanError(
                f"{field}.bool_value must be a boolean, got {_json_type(boolean)}"
            )
        return boolean
    if (integer := _get(any_value, "intValue", "int_value")) is not None:
        return _json_int(integer, f"{field}.int_value", _INT64_MIN, _INT64_MAX)
    if (double := _get(any_value, "doubleValue", "double_value")) is not None:
        return _json_double(double, f"{field}.double_value")
    if (array := _get(any_value, "arrayValue", "array_value")) is not None:
        items = _json_list(
            _json_object(array, f"{field}.array_value").get("values"),
            f"{field}.array_value.values",
        )
        return [
            _json_any_value(item, f"{field}.array_value.values[{index}]", depth + 1)
            for index, item in enumerate(items)
        ]
    if (kvlist := _get(any_value, "kvlistValue", "kvlist_value")) is not None:
        return _json_attributes(
            _json_object(kvlist, f"{field}.kvlist_value").get("values"),
            f"{field}.kvlist_value.values",
            depth + 1,
        )
    if (raw_bytes := _get(any_value, "bytesValue", "bytes_value")) is not None:
        # Already base64 in OTLP/JSON (ids are the only bytes fields written as hex).
        return _json_str(raw_bytes, f"{field}.bytes_value")
    if _get(any_value, "stringValueStrindex", "string_value_strindex") is not None:
        raise _InvalidSpanError(f"{field}: string_value_strindex is not valid in a trace export")
    return None


def _json_double(value: Any, field: str) -> float:
    # proto3 JSON writes non-finite doubles as these strings and accepts numbers as strings.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if value in _JSON_DOUBLE_NAMES:
            return _JSON_DOUBLE_NAMES[value]
        try:
            return float(value)
        except ValueError:
            pass
    raise _InvalidSpanError(f"{field} must be a number, got {value!r:.80}")


def _json_id(value: Any, field: str, hex_length: int) -> str:
    return _checked_id(_json_str(value, field), field, hex_length)


def _json_str(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _InvalidSpanError(f"{field} must be a string, got {_json_type(value)}")
    return value


def _json_int(value: Any, field: str, minimum: int, maximum: int) -> int:
    # Floats are refused: orjson returns integers beyond 64 bits as floats, and a rounded
    # nanosecond timestamp would pass silently.
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DECIMAL_RE.fullmatch(value):
        number = int(value)
    else:
        raise _InvalidSpanError(
            f"{field} must be an integer or a decimal string, got {value!r:.80}"
        )
    if not minimum <= number <= maximum:
        raise _InvalidSpanError(f"{field} must be between {minimum} and {maximum}, got {number}")
    return number


def _json_enum(value: Any, names: Mapping[int, str], field: str) -> str:
    if isinstance(value, str) and value in names.values():
        return value
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return _enum_name(value or 0, names, field)
    raise _InvalidSpanError(
        f"{field} must be one of {sorted(names)} or its name, got {value!r:.80}"
    )


def _json_object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _InvalidSpanError(f"{field} must be an object, got {_json_type(value)}")
    return value


def _json_list(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _InvalidSpanError(f"{field} must be an array, got {_json_type(value)}")
    return value


def _get(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    # proto3 JSON parsers accept the original field name as well as the lowerCamelCase one;
    # null means "default", like an absent field.
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _rejected_json_span(span: Mapping[str, Any], reason: str) -> RejectedSpan:
    trace_id = _get(span, "traceId", "trace_id")
    span_id = _get(span, "spanId", "span_id")
    return RejectedSpan(
        trace_id=trace_id if isinstance(trace_id, str) else None,
        span_id=span_id if isinstance(span_id, str) else None,
        reason=reason,
    )


def _unlocalised(reason: str) -> RejectedSpan:
    return RejectedSpan(trace_id=None, span_id=None, reason=reason)


# --- rules shared by both encodings ----------------------------------------------------------


def _checked_id(value: str, field: str, hex_length: int) -> str:
    if len(value) != hex_length:
        raise _InvalidSpanError(f"{field} must be {hex_length} hex characters, got {len(value)}")
    if not _HEX_RE.fullmatch(value):
        raise _InvalidSpanError(
            f"{field} must be {hex_length} hex characters, got non-hex {value!r}"
        )
    if value.strip("0") == "":
        raise _InvalidSpanError(f"{field} must not be all zeros")
    return value.lower()


def _pb_id(value: bytes, field: str, hex_length: int) -> str:
    """``_checked_id`` for a protobuf id: ``bytes.hex()`` is lowercase hex already."""
    text = value.hex()
    if len(text) != hex_length:
        raise _InvalidSpanError(f"{field} must be {hex_length} hex characters, got {len(text)}")
    if not any(value):
        raise _InvalidSpanError(f"{field} must not be all zeros")
    return text


def _parent_span_id(value: str) -> str | None:
    # An all-zero parent is how some SDKs spell "no parent" (the invalid span id in W3C
    # trace context), so it is a root span rather than a broken reference.
    if value == "" or (len(value) == _SPAN_ID_HEX_LENGTH and value.strip("0") == ""):
        return None
    return _checked_id(value, "parent_span_id", _SPAN_ID_HEX_LENGTH)


def _check_times(start: int, end: int) -> None:
    if end < start:
        raise _InvalidSpanError(f"end_time_unix_nano before start_time_unix_nano ({end} < {start})")


def _enum_name(number: int, names: Mapping[int, str], field: str) -> str:
    try:
        return names[number]
    except KeyError:
        raise _InvalidSpanError(
            f"{field} must be one of {sorted(names)} or its name, got {number}"
        ) from None
