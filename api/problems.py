"""RFC 9457 problem+json: the one table from error class to HTTP status and problem type.

Every error the API answers with is rendered here; routes never catch ``Exception`` and never
raise ``HTTPException`` for domain conditions. Problem types are URIs under
``https://runledger.dev/problems/`` (documentation anchors, not fetched). One exception to the
rendering: a failed OTLP/HTTP export is answered the ``google.rpc.Status`` its protocol requires
(``error_response``), from the same table.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from api.coding import (
    ContentCodingError,
    DecodedBodyTooLargeError,
    UnsupportedContentCodingError,
    media_type_of,
)
from api.head import answers_head
from api.hooks import HookPayloadError
from api.otlp import (
    OTLPDecodeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    encode_status,
    otlp_media_type,
)
from domain import errors as e
from infra.blobs import BlobNotFoundError, BlobStoreUnavailableError
from infra.writer import WriterOverloadedError

log = logging.getLogger("runledger.api")

PROBLEM_BASE = "https://runledger.dev/problems/"
MEDIA_TYPE = "application/problem+json"


class BadRequestError(ValueError):
    """A request the API cannot read (400): bad cursor, bad timestamp, bad query combination."""


class BodyTooLargeError(ValueError):
    """The request body is larger than ``max_body_bytes`` (413)."""


class UnauthorizedError(PermissionError):
    """Missing or wrong bearer token (401)."""


class NotJSONContentTypeError(ValueError):
    """A JSON route's body declared (``Content-Type``) as something other than JSON, or not
    declared at all (415)."""


#: error class -> (HTTP status, problem type slug, title). First match in MRO order wins.
PROBLEMS: dict[type[Exception], tuple[int, str, str]] = {
    e.IdempotencyConflictError: (409, "idempotency-conflict", "Same event_id, different content"),
    e.ApprovalAlreadyDecidedError: (409, "approval-already-decided", "Approval already decided"),
    e.ApprovalAlreadyRequestedError: (
        409,
        "approval-already-requested",
        "Approval already requested",
    ),
    e.ToolCallAlreadyEndedError: (409, "tool-call-already-ended", "Tool call already ended"),
    e.ToolCallAlreadyStartedError: (409, "tool-call-already-started", "Tool call already started"),
    e.InvalidTransitionError: (409, "invalid-transition", "Invalid status transition"),
    e.StageAlreadyExistsError: (409, "stage-already-exists", "Stage already exists"),
    e.ChainAlreadyCreatedError: (409, "chain-already-created", "Chain already created"),
    e.SpanConflictError: (409, "span-conflict", "Span recorded with different content"),
    e.SessionEndedError: (409, "session-ended", "Session already ended"),
    e.ConflictError: (409, "conflict", "Conflict"),
    e.ApprovalNotFoundError: (404, "approval-not-found", "Approval not found"),
    e.ChainNotFoundError: (404, "chain-not-found", "Chain not found"),
    e.StageNotFoundError: (404, "stage-not-found", "Stage not found"),
    e.StreamNotFoundError: (404, "stream-not-found", "Stream not found"),
    e.VersionNotFoundError: (404, "version-not-found", "No such version"),
    e.NotFoundError: (404, "not-found", "Not found"),
    e.RuleViolationError: (422, "rule-violation", "Domain rule violated"),
    e.LedgerError: (422, "ledger-error", "Refused by the ledger"),
    HookPayloadError: (422, "invalid-hook-payload", "Not a Claude Code hook payload"),
    UnsupportedMediaTypeError: (415, "unsupported-media-type", "Unsupported media type"),
    UnsupportedContentCodingError: (415, "unsupported-media-type", "Unsupported media type"),
    NotJSONContentTypeError: (415, "unsupported-media-type", "Unsupported media type"),
    DecodedBodyTooLargeError: (413, "payload-too-large", "Payload too large"),
    ContentCodingError: (400, "undecodable-body", "Body cannot be decoded"),
    PayloadTooLargeError: (413, "payload-too-large", "Payload too large"),
    BodyTooLargeError: (413, "payload-too-large", "Payload too large"),
    OTLPDecodeError: (400, "invalid-otlp", "Malformed OTLP request"),
    BadRequestError: (400, "bad-request", "Bad request"),
    UnauthorizedError: (401, "unauthorized", "Unauthorized"),
    BlobNotFoundError: (404, "blob-not-found", "Blob not found"),
    BlobStoreUnavailableError: (503, "blob-store-unavailable", "Blob store unavailable"),
    WriterOverloadedError: (503, "overloaded", "Ledger overloaded, retry later"),
    IntegrityError: (503, "write-contention", "Write contention, retry"),
    OperationalError: (503, "store-unavailable", "Event store unavailable"),
    InterfaceError: (503, "store-unavailable", "Event store unavailable"),  # connection closed
}


class Problem(BaseModel):
    """An RFC 9457 problem details object, as every error answer carries it
    (``application/problem+json``). Members beyond these are extensions: a domain error's own
    fields (``external_id``, ``expected``, ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="URI of the problem type: https://runledger.dev/problems/<slug>, or about:blank"
    )
    title: str = Field(description="Short summary of the problem type")
    status: int = Field(description="The HTTP status code of this answer")
    detail: str = Field(description="What went wrong with this request")
    instance: str | None = Field(default=None, description="The request's path")
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="Validation errors (422, malformed-json 400): each {loc, msg, type}",
    )


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` declaring that a route may answer ``statuses`` with a ``Problem``
    (``application/problem+json``; the problem's ``type`` tells which, see ``PROBLEMS``). The
    ``Problem`` schema itself is put into the document's components by ``api.app``."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description = f"{HTTPStatus(status).phrase} (RFC 9457 problem details)"
        if status == 401:
            description += "; only when `RUNLEDGER_API_TOKEN` is set"
        responses[status] = {
            "description": description,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        if status == 503:
            responses[status]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying (RFC 9110 §10.2.3)",
                    "schema": {"type": "integer", "minimum": 0},
                    "required": True,
                }
            }
    return responses


def lookup(error: BaseException) -> tuple[int, str, str]:
    """(status, type URI, title) for an error, by the most specific class in ``PROBLEMS``."""
    for cls in type(error).__mro__:
        if cls in PROBLEMS:
            status, slug, title = PROBLEMS[cls]
            return status, PROBLEM_BASE + slug, title
    return 500, "about:blank", "Internal Server Error"


def problem_body(error: BaseException, *, instance: str | None = None) -> dict[str, Any]:
    """The problem+json object for ``error`` (domain errors' keyword fields become extensions)."""
    status, type_uri, title = lookup(error)
    detail = getattr(error, "message", None) or str(error) or title
    body: dict[str, Any] = {"type": type_uri, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    fields = getattr(error, "fields", None)
    if isinstance(fields, dict):
        body.update({k: v for k, v in fields.items() if k not in body})
    errors = getattr(error, "errors", None)
    if isinstance(errors, list):
        body["errors"] = errors
    return body


#: Seconds a 503 asks the client to wait before retrying (``Retry-After``, RFC 9110 §10.2.3).
RETRY_AFTER_S = 1


def blank_problem(
    status: int, title: str, detail: str, instance: str | None = None
) -> dict[str, Any]:
    """A problem body of no particular type (``about:blank``, RFC 9457 §4.2.1): ``{"type",
    "title", "status", "detail"}``, and ``instance`` when given (the request's path)."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    return body


def _with_retry_after(status: int, headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers``, plus ``Retry-After: RETRY_AFTER_S`` on a 503 (unless they name one)."""
    if status == 503:
        return {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return headers


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSONResponse with the problem+json media type; a 503 carries ``Retry-After``
    (``RETRY_AFTER_S``), as ``problem_responses`` documents it."""
    headers = _with_retry_after(status, headers)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


#: ASGI scope key under which an OTLP/HTTP export records its request's ``Content-Type``
#: (``answer_errors_in_otlp``), for ``error_response``.
_OTLP_CONTENT_TYPE = "runledger.otlp_content_type"


def answer_errors_in_otlp(request: Request) -> None:
    """Have the errors answering ``request``, an OTLP/HTTP export, rendered as OTLP/HTTP
    requires ("Failures": a ``google.rpc.Status``, encoded as the request), when its
    ``Content-Type`` is one of OTLP's; a body of another media type has no encoding to be
    answered in, and gets problem+json (a 415)."""
    content_type = request.headers.get("content-type", "")
    if otlp_media_type(content_type) is not None:
        request.scope[_OTLP_CONTENT_TYPE] = content_type


def asks_for_problem(request: Request) -> bool:
    """Whether the request's ``Accept`` names ``application/problem+json`` (with a ``q``
    above 0): such a client of an OTLP route is answered RFC 9457 problem details."""
    for item in request.headers.get("accept", "").split(","):
        if media_type_of(item) != MEDIA_TYPE:
            continue
        for param in item.split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def error_response(
    request: Request, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """The answer to a failed request: ``problem_response``, or, to an OTLP/HTTP export
    (``answer_errors_in_otlp``) that does not ask for a problem (``asks_for_problem``), a
    ``google.rpc.Status`` with the problem's ``detail`` as its message, in the request's
    encoding (``api.otlp.encode_status``), with the same status and headers (``Retry-After``
    on a 503: OTLP's throttling)."""
    content_type = request.scope.get(_OTLP_CONTENT_TYPE)
    if content_type is None or asks_for_problem(request):
        return problem_response(status, body, headers)
    data, media_type = encode_status(status, body["detail"], content_type)
    headers = _with_retry_after(status, headers)
    return Response(data, status_code=status, media_type=media_type, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that render every error as problem+json (an OTLP/HTTP export's as
    a ``google.rpc.Status``: ``error_response``); a client that disconnects before its request
    body is complete (``ClientDisconnect``, from any route reading a body) is logged as one
    warning line, without a traceback."""

    async def known(request: Request, error: Exception) -> Response:
        body = problem_body(error, instance=request.url.path)
        headers = {"WWW-Authenticate": "Bearer"} if body["status"] == 401 else None
        return error_response(request, body["status"], body, headers)

    for cls in PROBLEMS:
        app.add_exception_handler(cls, known)

    async def validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        errs = [
            {
                "loc": list(err.get("loc", ())),
                "msg": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in error.errors()
        ]
        # A body that is not JSON at all is a 400; JSON of the wrong shape is a 422.
        status = 400 if any(err["type"] == "json_invalid" for err in errs) else 422
        body = {
            "type": PROBLEM_BASE + ("malformed-json" if status == 400 else "validation-error"),
            "title": "Malformed JSON" if status == 400 else "Request validation failed",
            "status": status,
            "detail": "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in errs[:10]),
            "instance": request.url.path,
            "errors": errs[:100],
        }
        return problem_response(status, body)

    app.add_exception_handler(RequestValidationError, validation)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        text = str(error.detail)
        body = blank_problem(error.status_code, text, text, request.url.path)
        headers = dict(error.headers or {})
        if error.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem_response(error.status_code, body, headers)

    app.add_exception_handler(StarletteHTTPException, http_error)

    async def disconnected(request: Request, error: Exception) -> Response:
        # The client closed the connection before its body was complete (Starlette raises
        # ClientDisconnect from request.stream()): the client's doing, not a server error, and
        # nothing was appended. One line, no traceback; the answer reaches no one.
        log.warning(
            "client disconnected before sending the whole body of %s %s",
            request.method,
            request.url.path,
        )
        detail = "the client disconnected before the request body was complete"
        body = blank_problem(400, "Incomplete request body", detail, request.url.path)
        return error_response(request, 400, body)

    app.add_exception_handler(ClientDisconnect, disconnected)

    async def unexpected(request: Request, error: Exception) -> Response:
        # Starlette's ServerErrorMiddleware calls this, then re-raises for the server to log.
        detail = "the server failed to answer; the error is in its log"
        body = blank_problem(500, "Internal Server Error", detail, request.url.path)
        return error_response(request, 500, body)

    app.add_exception_handler(Exception, unexpected)


#: The methods ``allowed_methods`` tries (RFC 9110 §9 and PATCH), in the order ``Allow`` lists them.
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route serves at the request's path: a 405's ``Allow`` (RFC 9110
    §15.5.6 lists all of the resource's methods; Starlette names only the first matching
    route's, and ``/v1/traces`` has a ``GET`` and a ``POST`` route). Each method is tried
    against the routes' own ``matches``."""
    routes = request.app.router.routes
    allowed = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    }
    if "GET" in allowed and answers_head(request.scope["path"]):
        allowed.add("HEAD")  # api.head.HeadAsGet
    return [method for method in _METHODS if method in allowed]
