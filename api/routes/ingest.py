"""Ingest: ``POST /v1/events`` (typed events), ``POST /v1/hooks/claude-code``, ``POST /v1/traces`` (OTLP/HTTP).

Every route validates the whole request before anything is appended (a malformed body appends
nothing), maps it to domain commands, executes them in one ``Ledger.handle`` call (one transaction)
and answers only after the commit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError

from api.coding import ACCEPTED_CODINGS, decode_content, media_type_of
from api.deps import PROJECT_PARAMETERS, ingest_context
from api.fast_events import event_commands
from api.hooks import map_hook
from api.offload import Offload, make_offload
from api.otlp import decode_export_request, encode_export_response
from api.problems import (
    BadRequestError,
    BodyTooLargeError,
    NotJSONContentTypeError,
    answer_errors_in_otlp,
    problem_body,
    problem_response,
    problem_responses,
)
from api.schemas import (
    MAX_JSON_DEPTH,
    EventBatch,
    EventResults,
    TypedEvent,
    nests_too_deep,
    to_commands,
)
from domain.base import EventMeta, content_sha256, may_hold_big_int
from domain.ledger import Command, Outcome
from infra.runtime import Runtime


class DirectRoute(APIRoute):
    """An ``APIRoute`` whose request handler is the endpoint itself, ``endpoint(request) -> Response``
    (FastAPI's documented custom route class hook): no dependency solving, body reading or response
    serialisation by FastAPI, which cost more than the rest of a small ingest request. The
    endpoints read and validate their bodies themselves; OpenAPI still comes from the
    declarations (``response_model``, ``openapi_extra``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The endpoint, called with the ``Request``."""
        return self.endpoint


# Auth and project are resolved by ``ingest_context`` inside each route (not dependencies).
router = APIRouter(prefix="/v1", tags=["ingest"], route_class=DirectRoute)

# One event, or {"events": [...]}; validated from the parsed document (``_parse_json``).
_events_body: TypeAdapter[Any] = TypeAdapter(TypedEvent | EventBatch)


async def read_body(request: Request, runtime: Runtime) -> bytes:
    """The request body, refusing more than ``max_body_bytes``.

    Raises:
        BodyTooLargeError: the body (as sent, before decompression) is too large.
    """
    limit = runtime.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body of {declared} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_decoded_body(request: Request, runtime: Runtime) -> bytes:
    """``read_body``, its ``Content-Encoding`` (gzip, deflate) removed: at most
    ``max_body_bytes`` decoded too.

    Raises:
        BodyTooLargeError: as ``read_body``.
        UnsupportedContentCodingError, DecodedBodyTooLargeError, ContentCodingError: as
            ``api.coding.decode_content`` (415, 413, 400).
    """
    body = await read_body(request, runtime)
    encoding = request.headers.get("content-encoding")
    return decode_content(body, encoding, runtime.settings.max_body_bytes)


#: A JSON media type, parameters removed and lowercased (``fullmatch``): ``application/json``
#: (RFC 8259) or a structured syntax suffix ``application/<name>+json`` (RFC 6839; a name as
#: RFC 6838 section 4.2 spells it).
_JSON_MEDIA_TYPE = re.compile(r"application/(?:[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\+)?json")

#: How the JSON routes' OpenAPI request bodies say what they take.
JSON_BODY = (
    "Content-Type: application/json or application/<name>+json, parameters such as charset "
    f"ignored (another, or none, is a 415); {ACCEPTED_CODINGS}"
)


def require_json(request: Request) -> None:
    """Refuse a body that is not declared JSON, before reading it.

    A browser sends a cross-origin ``text/plain``, form or multipart body without a CORS
    preflight, and a ``fetch()`` of a ``Blob`` without any ``Content-Type``: parsed as JSON
    regardless, any web page a user opens could write events to a server without a token
    (FastAPI refuses such bodies for its own JSON parameters, ``strict_content_type``).
    Every known client declares its JSON: Claude Code's HTTP hooks, ``runledger demo``,
    ``curl -H 'content-type: application/json'`` (``curl -d`` alone says form-urlencoded).

    Raises:
        NotJSONContentTypeError: no ``Content-Type``, or one that is not JSON (415).
    """
    content_type = request.headers.get("content-type")
    if _JSON_MEDIA_TYPE.fullmatch(media_type_of(content_type)):
        return
    said = "no Content-Type" if content_type is None else f"Content-Type {content_type!r}"
    raise NotJSONContentTypeError(
        f"{said}: the body must be declared JSON (application/json or application/<name>+json)"
    )


def json_route_problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``problem_responses`` of a JSON route, its 415 saying what it refuses."""
    responses = problem_responses(*statuses)
    responses[415]["description"] = (
        "Unsupported Media Type (RFC 9457 problem details): a Content-Type that is not JSON, "
        "or none, or a Content-Encoding other than gzip or deflate"
    )
    return responses


def _parse_json(body: bytes) -> Any:
    """The JSON body (RFC 8259; no ``NaN``/``Infinity``), integers of any size kept exact.

    Raises:
        BadRequestError: not valid JSON, a string holding an unpaired surrogate escape
            (``"\\ud800"``), or objects and arrays nested more than ``MAX_JSON_DEPTH`` levels.
    """
    exact = may_hold_big_int(body)  # orjson would round such an integer into a float
    try:
        if exact:
            document = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        else:  # orjson refuses NaN, Infinity, numbers beyond a double and unpaired surrogates
            document = orjson.loads(body)
    except RecursionError:  # the standard library's parser, on thousands of levels
        raise BadRequestError(_too_deep()) from None
    except ValueError as error:  # orjson's and json's decode errors, bad UTF-8, NaN
        if "depth limit exceeded" in str(error):  # orjson's own limit, 1,024 levels
            raise BadRequestError(_too_deep()) from None
        raise BadRequestError(f"body is not valid JSON: {error}") from None
    if exact:  # the standard library's parser lets unpaired surrogates through
        _check_strings(document)
    # Fewer opening brackets than the limit cannot nest deeper: most single events and hooks.
    if body.count(b"{") + body.count(b"[") > MAX_JSON_DEPTH and nests_too_deep(document):
        raise BadRequestError(_too_deep())  # orjson allows 1,024 levels
    return document


def _check_strings(document: Any) -> None:
    """Refuse a parsed body holding a surrogate code point in a string or a key (what the
    standard library's parser lets through and orjson refuses). Iterative.

    Raises:
        BadRequestError: as ``_parse_json``.
    """
    stack = [document]
    pop = stack.pop
    while stack:
        value = pop()
        if type(value) is dict:
            for key in value:
                _check_string(key)
            stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
        elif type(value) is str:
            _check_string(value)


def _check_string(value: str) -> None:
    """Refuse a string UTF-8 cannot encode: one holding a surrogate code point, which an
    unpaired ``\\ud800``-``\\udfff`` escape decodes to (RFC 8259 section 8.2); the log and
    PostgreSQL hold UTF-8 only."""
    try:
        value.encode()
    except UnicodeEncodeError as error:
        raise BadRequestError(
            f"body is not valid JSON: a string holds the unpaired surrogate "
            f"\\u{ord(value[error.start]):04x}, which is not a Unicode character "
            "(RFC 8259 section 8.2)"
        ) from None


def _too_deep() -> str:
    return f"body nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # e.g. 1e400, which a double cannot hold
        raise ValueError(f"number {text[:40]} is beyond a double's range")
    return value


def event_results(outcomes: list[Outcome]) -> bytes:
    """The ``EventResults`` JSON of a ``POST /v1/events`` answer (``results`` in request order,
    and the counts of created, duplicate and rejected events).

    Built as plain dicts in one loop, the ``stream`` object shared by the results of one stream
    (a batch names each of its ~100 streams ~10 times): 16.7 -> 14.7 thousand instructions per
    event of the batched-ingest benchmark's mix (callgrind).
    """
    streams: dict[UUID, dict[str, str]] = {}
    results = []
    counts = {"created": 0, "duplicate": 0, "rejected": 0}
    for index, outcome in enumerate(outcomes):
        command = outcome.command
        stream = streams.get(outcome.stream_id)
        if stream is None:
            stream = streams[outcome.stream_id] = {
                "kind": command.kind,
                "external_id": command.external_id,
                "stream_id": str(outcome.stream_id),
            }
        counts[outcome.status] += 1
        results.append(
            {
                "index": index,
                "event_id": command.meta.event_id,
                "status": outcome.status,
                "stream": stream,
                "version": outcome.version,
                "position": outcome.position,
                "error": problem_body(outcome.error) if outcome.error is not None else None,
            }
        )
    answer = {
        "results": results,
        "created": counts["created"],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
    }
    try:
        return orjson.dumps(answer)
    except TypeError:  # an integer beyond 64 bits in a rejection's fields: the events are
        # committed by now, so the answer must not fail (a 500 would say they were not)
        return json.dumps(answer, separators=(",", ":"), default=str).encode()


def _commands(
    body: bytes, project: str, offload: Offload, max_events: int
) -> tuple[list[Command], bool]:
    """The commands of a ``POST /v1/events`` body (one typed event, or ``{"events": [...]}``)
    through orjson and pydantic, and whether it was a single event.

    Raises:
        BadRequestError: not JSON, nested too deep, or more than ``max_events`` events (400).
        RequestValidationError: not a typed event or a batch of them (422).
    """
    document = _parse_json(body)
    try:
        parsed = _events_body.validate_python(document)
    except ValidationError as error:
        raise RequestValidationError(error.errors(include_url=False)) from None
    single = not isinstance(parsed, EventBatch)
    events = [parsed] if single else parsed.events
    if len(events) > max_events:
        raise BadRequestError(f"a batch holds at most {max_events} events, got {len(events)}")
    return to_commands(events, project, offload), single


@router.post(
    "/events",
    openapi_extra={"parameters": PROJECT_PARAMETERS},
    response_model=EventResults,
    summary='Append one typed event, or a batch {"events": [...]}',
    responses={
        201: {"description": "single event created", "model": EventResults},
        200: {"description": "batch, or a duplicate"},
        **json_route_problems(400, 401, 404, 409, 413, 415, 422, 503),
    },
)
async def post_events(request: Request) -> Response:
    """Append typed events (discriminated by ``type``; see the ``TypedEvent`` schemas).

    A single event answers 201 (created), 200 (duplicate: nothing appended, the original's version
    and position) or the problem+json of its rejection (404/409/422). A batch answers 200 with a
    result per event, in order; schema errors anywhere in a batch reject the whole batch (422).
    """
    runtime, project = ingest_context(request)
    require_json(request)
    body = await read_decoded_body(request, runtime)
    offload = make_offload(runtime.blobs, runtime.settings.blob_threshold_bytes)
    max_events = runtime.settings.max_batch_events
    # A well-formed body: straight into commands (api.fast_events); anything else, or a body
    # that path leaves alone, is parsed and validated here, and its errors answered.
    fast = event_commands(body, project, offload, max_events)
    commands, single = fast or _commands(body, project, offload, max_events)
    del body  # not held while the commands wait for the writer
    outcomes = await runtime.writer.submit(commands)
    content = event_results(outcomes)
    status = 200
    if single:
        outcome = outcomes[0]
        if outcome.error is not None:
            problem = problem_body(outcome.error, instance=request.url.path)
            return problem_response(problem["status"], problem)
        status = 201 if outcome.status == "created" else 200
    return Response(content, status_code=status, media_type="application/json")


#: ``Idempotency-Key`` (IETF draft-ietf-httpapi-idempotency-key-header): 1-255 visible ASCII.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # fullmatch
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": f"^{_IDEMPOTENCY_KEY.pattern}$"},
    "description": "A relay's name for this hook occurrence (IETF draft "
    "httpapi-idempotency-key-header): the payload is then a duplicate of the one sent under the "
    "same key whenever it is resent, and never of another; without it, a payload that has no "
    "tool_use_id, agent_id or prompt_id is a duplicate only while it is its session's last event",
}


def _idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, if any.

    Raises:
        RequestValidationError: not 1-255 visible ASCII characters (422).
    """
    key = request.headers.get("idempotency-key")
    if key is None or _IDEMPOTENCY_KEY.fullmatch(key):
        return key
    raise RequestValidationError(
        [
            {
                "loc": ("header", "Idempotency-Key"),
                "msg": "must be 1-255 visible ASCII characters",
                "type": "value_error",
                "input": key,
            }
        ]
    )


@router.post(
    "/hooks/claude-code",
    openapi_extra={
        "parameters": [*PROJECT_PARAMETERS, IDEMPOTENCY_KEY_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["session_id", "hook_event_name"],
                        "description": "A Claude Code hook's input as its HTTP hooks post it "
                        "(session_id, hook_event_name, ...; SOURCES.md)",
                    }
                }
            },
            "description": JSON_BODY,
        },
    },
    summary="Any Claude Code hook payload, as Claude Code's HTTP hooks post it",
    responses={
        200: {
            "description": "recorded (or a duplicate): `{}`, no decision",
            "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
        },
        **json_route_problems(400, 401, 409, 413, 415, 422, 503),
    },
)
async def post_claude_code_hook(request: Request) -> Response:
    """Record one Claude Code hook event (SessionStart, PreToolUse, PostToolUse, ... and unknown ones).

    Answers 200 with ``{}`` (Claude Code reads a 2xx with an empty JSON object as "no decision",
    so the hook never changes what the agent does). Malformed payloads answer 400/422 and a domain
    refusal (e.g. the same ``tool_use_id`` with different content) its problem+json; Claude Code
    treats a non-2xx as a non-blocking error.
    """
    runtime, project = ingest_context(request)
    require_json(request)
    payload = _parse_json(await read_decoded_body(request, runtime))
    offload = make_offload(runtime.blobs, runtime.settings.blob_threshold_bytes)
    commands = map_hook(
        payload,
        project=project,
        received_at=datetime.now(UTC),
        offload=offload,
        idempotency_key=_idempotency_key(request),
    )
    outcomes = await runtime.writer.submit(commands)
    for outcome in outcomes:
        if outcome.error is not None:
            problem = problem_body(outcome.error, instance=request.url.path)
            return problem_response(problem["status"], problem)
    return Response(b"{}", status_code=200, media_type="application/json")


def span_command(span: dict[str, Any], project: str) -> Command:
    """The ``record_span`` command for one decoded OTLP span (``event_id`` = ``trace_id/span_id``)."""
    trace_id = span["trace_id"]
    occurred_at = datetime.fromtimestamp(span["start_time_unix_nano"] / 1e9, UTC)
    meta = EventMeta(
        event_id=f"{trace_id}/{span['span_id']}",
        content_sha256=content_sha256(span),
        occurred_at=occurred_at,
        source="otlp",
    )
    return Command("trace", trace_id, "record_span", meta, {"span": span}, project)


#: OTLP/HTTP bodies, both ways: binary protobuf or its JSON mapping.
_OTLP_CONTENT = {
    "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
    "application/json": {"schema": {"type": "object"}},
}

#: OpenAPI schema of a ``google.rpc.Status`` (googleapis ``google/rpc/status.proto``) in the
#: proto3 JSON mapping: the JSON body of a failed OTLP/HTTP export (``api.otlp.encode_status``).
#: Registered as the ``RpcStatus`` component by ``api.app``.
RPC_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "google.rpc.Status (googleapis google/rpc/status.proto), proto3 JSON mapping",
    "properties": {
        "code": {"type": "integer", "description": "google.rpc.Code, e.g. 3 INVALID_ARGUMENT"},
        "message": {"type": "string", "description": "What went wrong, for a developer"},
        "details": {
            "type": "array",
            "description": "A 400 holds one google.rpc.BadRequest",
            "items": {
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "required": ["@type"],
            },
        },
    },
}


def otlp_problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``problem_responses`` of an OTLP/HTTP route: each error a ``google.rpc.Status`` in the
    request's encoding (OTLP/HTTP "Failures"), or problem+json when the request's ``Accept``
    names it or its body is of no OTLP media type (``api.problems.error_response``)."""
    responses = problem_responses(*statuses)
    for response in responses.values():
        response["description"] += (
            "; to an application/x-protobuf or application/json request, a google.rpc.Status "
            "in its encoding instead (OTLP/HTTP), unless its Accept names "
            "application/problem+json"
        )
        response["content"] = {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/RpcStatus"}},
            **response["content"],
        }
    return responses


@router.post(
    "/traces",
    openapi_extra={
        "parameters": PROJECT_PARAMETERS,
        "requestBody": {
            "required": True,
            "content": _OTLP_CONTENT,
            "description": f"opentelemetry-proto ExportTraceServiceRequest; {ACCEPTED_CODINGS}",
        },
    },
    summary="OTLP/HTTP ExportTraceServiceRequest (application/x-protobuf or application/json, gzip)",
    responses={
        200: {
            "description": "ExportTraceServiceResponse (opentelemetry-proto "
            "collector/trace/v1), in the request's encoding",
            "content": _OTLP_CONTENT,
        },
        **otlp_problems(400, 401, 413, 415, 503),
    },
)
async def post_traces(request: Request) -> Response:
    """Record spans (OTLP/HTTP, https://opentelemetry.io/docs/specs/otlp/#otlphttp).

    Answers an ``ExportTraceServiceResponse`` in the request's encoding; spans that are malformed
    or conflict with an earlier span of the same ``span_id`` are counted in ``partial_success``.
    A repeated span is a duplicate and is neither appended nor rejected. A failed export (400,
    401, 413, 415, 503 with ``Retry-After``, 500) is answered a ``google.rpc.Status`` in the
    request's encoding (``api.problems.answer_errors_in_otlp``).
    """
    answer_errors_in_otlp(request)
    runtime, project = ingest_context(request)
    content_type = request.headers.get("content-type", "")
    body = await read_body(request, runtime)
    decoded = decode_export_request(
        body,
        content_type,
        request.headers.get("content-encoding"),
        max_decompressed_bytes=runtime.settings.max_body_bytes * 4,
    )
    del body  # not held while the commands wait for the writer
    commands = [span_command(span, project) for span in decoded.spans]
    outcomes = await runtime.writer.submit(commands)
    reasons = [f"span {r.span_id}: {r.reason}" for r in decoded.rejected]
    reasons += [
        f"span {o.command.args['span']['span_id']}: {o.error.message}"
        for o in outcomes
        if o.error is not None
    ]
    data, media_type = encode_export_response(len(reasons), "; ".join(reasons[:20]), content_type)
    return Response(data, status_code=200, media_type=media_type)
