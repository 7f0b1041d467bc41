"""The OpenAPI document at /docs describes every ingest body and every error answer."""

from __future__ import annotations

import asyncio
import json
import re
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema
import pytest
from fastapi import FastAPI, Request
from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from api import problems
from api.app import create_app
from api.deps import resolve_project
from api.head import UNENDING
from api.otlp import encode_status
from api.problems import MEDIA_TYPE, BadRequestError
from api.routes import audit, ingest, ops, reads
from api.schemas import (
    DECISION_WORDS,
    ApprovalDecidedBody,
    ChainStatusChangedBody,
    SessionStatusChangedBody,
    StageTransitionedBody,
    WorkspaceBaselineCapturedBody,
)
from domain.chain import CHAIN_TRANSITIONS, STAGE_TRANSITIONS
from domain.session import STATUSES
from infra.settings import Settings

pytestmark = pytest.mark.unit


def test_typed_event_bodies_are_documented_for_post_events() -> None:
    document = create_app(Settings()).openapi()
    body = document["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    single, batch = body["anyOf"]
    assert batch["$ref"] == "#/components/schemas/EventBatch"
    mapping = single["discriminator"]["mapping"]
    assert mapping["approval.decided"] == "#/components/schemas/ApprovalDecidedBody"
    assert len(mapping) == 21
    schemas = document["components"]["schemas"]
    for name in (
        "ApprovalDecidedBody",
        "StageTransitionedBody",
        "EvidenceRecordedBody",
        "WorkspaceBaselineCapturedBody",
    ):
        assert name in schemas
    assert set(schemas["StageTransitionedBody"]["required"]) >= {
        "type",
        "chain_id",
        "stage_id",
        "to_status",
    }
    for path in (
        "/v1/traces",
        "/v1/hooks/claude-code",
        "/v1/streams/{kind}/{external_id}/state",
        "/v1/log",
        "/v1/log/tail",
    ):
        assert path in document["paths"]


def test_status_fields_list_the_domains_states_and_refuse_others() -> None:
    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    for model, field, states in (
        (StageTransitionedBody, "to_status", STAGE_TRANSITIONS),
        (ChainStatusChangedBody, "status", CHAIN_TRANSITIONS),
        (SessionStatusChangedBody, "status", STATUSES),
    ):
        assert schemas[model.__name__]["properties"][field]["enum"] == list(states)
        with pytest.raises(ValidationError, match="must be one of"):
            model.model_validate({field: "no-such-state"})


def _spellings(word: str) -> list[str]:
    """``word`` as sources may case it: lower, upper, capitalised, alternating."""
    alternating = "".join(c.upper() if i % 2 else c for i, c in enumerate(word))
    return [word, word.upper(), word.capitalize(), alternating, alternating.swapcase()]


def test_the_published_decision_schema_takes_what_the_server_takes_in_any_case() -> None:
    # An OpenAPI client or validator (schemathesis, jsonschema) holds bodies to the published
    # schema: an enum of lowercase words refused "Approve", which the server takes.
    document = create_app(Settings()).openapi()
    schema = {
        **document["components"]["schemas"]["ApprovalDecidedBody"],
        "components": document["components"],
    }
    validator = jsonschema.Draft202012Validator(schema)
    body = {"type": "approval.decided", "approval_id": "a"}
    assert {"approve", "deny", "allow", "approved", "rejected", "accept", "reject"} <= set(
        DECISION_WORDS
    )
    for word in DECISION_WORDS:
        for spelled in _spellings(word):
            decided = ApprovalDecidedBody.model_validate({**body, "decision": spelled})
            assert decided.args(lambda value, media_type: value)["decision"] in (
                "approved",
                "denied",
            )
            assert validator.is_valid({**body, "decision": spelled}), spelled
    for refused in ("maybe", "", "approve ", " deny", "approvedd", "appro", "yes", "Den!ed"):
        with pytest.raises(ValidationError, match="decision must be one of"):
            ApprovalDecidedBody.model_validate({**body, "decision": refused})
        assert not validator.is_valid({**body, "decision": refused}), refused
    # The server compares str.lower(): no character but an ASCII letter lowercases into a
    # letter of a decision word (the Kelvin sign lowercases to "k", in none of them), so a
    # pattern of ASCII letters in either case is the whole language.
    letters = set("".join(DECISION_WORDS))
    assert {c for c in map(chr, range(0x110000)) if c.lower() in letters and not c.isascii()} <= {
        "\u212a"
    }
    assert "k" not in letters


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_every_error_answer_is_documented_as_a_problem() -> None:
    document = create_app(Settings()).openapi()
    schemas = document["components"]["schemas"]
    # FastAPI's own 422 body ({"detail": [...]}) is not what the API answers.
    assert "HTTPValidationError" not in schemas
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail"}
    problem = {"$ref": "#/components/schemas/Problem"}
    # OTLP/HTTP answers a failed export a google.rpc.Status in the request's encoding
    otlp = {
        "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {"schema": {"$ref": "#/components/schemas/RpcStatus"}},
    }
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                expected = {MEDIA_TYPE: {"schema": problem}}
                if (path, method) == ("/v1/traces", "post"):
                    expected |= otlp
                assert response["content"] == expected, (path, status)
    declared = {
        (path, method): {int(s) for s in op["responses"] if int(s) >= 400}
        for path, method, op in _operations(document)
    }
    assert declared[("/v1/events", "post")] == {400, 401, 404, 409, 413, 415, 422, 503}
    assert declared[("/v1/hooks/claude-code", "post")] == {400, 401, 409, 413, 415, 422, 503}
    assert declared[("/v1/traces", "post")] == {400, 401, 413, 415, 503}
    assert declared[("/v1/sessions", "get")] == {400, 401, 422}
    assert declared[("/v1/sessions/{session_id}", "get")] == {400, 401, 404, 422}
    assert declared[("/v1/blobs/{sha256}", "get")] == {400, 401, 404, 422, 503}
    assert declared[("/v1/projections", "get")] == {401}
    assert document["paths"]["/v1/projections"]["get"]["security"] == [{"bearerToken": []}, {}]
    assert declared[("/readyz", "get")] == {503}
    assert declared[("/healthz", "get")] == set()
    # every 503 (overloaded, write contention, a store down, not ready) says when to retry
    retry_after = {
        (path, method): op["responses"]["503"]["headers"]["Retry-After"]["schema"]
        for path, method, op in _operations(document)
        if "503" in op["responses"]
    }
    assert set(retry_after) == {k for k, v in declared.items() if 503 in v}
    assert all(schema == {"type": "integer", "minimum": 0} for schema in retry_after.values())


def test_the_json_routes_document_that_a_body_not_declared_json_is_a_415() -> None:
    document = create_app(Settings()).openapi()
    for path in ("/v1/events", "/v1/hooks/claude-code"):
        operation = document["paths"][path]["post"]
        body = operation["requestBody"]
        assert list(body["content"]) == ["application/json"]
        assert "application/json or application/<name>+json" in body["description"], path
        assert "415" in body["description"] and "gzip" in body["description"], path
        refused = operation["responses"]["415"]["description"]
        assert "Content-Type that is not JSON, or none" in refused, path


def test_the_documented_rpc_status_is_what_a_failed_json_otlp_export_gets() -> None:
    document = create_app(Settings()).openapi()
    declared = document["paths"]["/v1/traces"]["post"]["responses"]
    schema = {"$ref": "#/components/schemas/RpcStatus", "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    for status in (400, 401, 413, 415, 503):
        assert "google.rpc.Status" in declared[str(status)]["description"]
        body, _ = encode_status(status, "what went wrong", "application/json")
        validator.validate(json.loads(body))
    assert not validator.is_valid({"code": "3"})


@pytest.mark.parametrize(
    ("accept", "asks"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/x-protobuf, */*;q=0.1", False),
        ("application/problem+json", True),
        ("Application/Problem+JSON", True),
        ("application/x-protobuf, application/problem+json;q=0.5", True),
        ("application/problem+json; q=0", False),
        ("application/problem+json;q=bad", False),
    ],
)
def test_an_otlp_client_asks_for_problem_details_by_naming_them_in_accept(
    accept: str | None, asks: bool
) -> None:
    headers = [] if accept is None else [(b"accept", accept.encode())]
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers})
    assert problems.asks_for_problem(request) is asks


def test_every_v1_route_of_a_project_documents_the_header_and_the_query() -> None:
    document = create_app(Settings()).openapi()
    for path, _, op in _operations(document):
        if path.startswith("/v1/") and path not in ("/v1/blobs/{sha256}", "/v1/projections"):
            names = {p["name"].lower() for p in op.get("parameters", [])}
            assert {"project", "x-runledger-project"} <= names, path


@pytest.mark.parametrize(
    "value",
    ["", "a", "default", "team-a.prod_1", "a" * 64, "a" * 65, "-a", "a b", "abc\n", "ü", "a/b"],
)
def test_the_documented_project_pattern_is_what_the_api_accepts(value: str) -> None:
    document = create_app(Settings()).openapi()
    params = [
        p
        for _, _, op in _operations(document)
        for p in op.get("parameters", [])
        if p["name"].lower() in ("project", "x-runledger-project")
    ]
    runtime = SimpleNamespace(settings=SimpleNamespace(default_project="fallback"))
    try:
        resolved = resolve_project(runtime, None, value)  # type: ignore[arg-type]
    except BadRequestError:
        accepted = False
    else:
        accepted = True
        assert resolved == (value or "fallback")  # empty: not given
    for param in params:
        schema = param["schema"]
        documented = (
            re.fullmatch(schema["pattern"], value) is not None and len(value) <= schema["maxLength"]
        )
        assert documented == accepted, (param["name"], value)


def test_a_baseline_line_with_a_trailing_newline_is_refused() -> None:
    line = "M  " + "d" * 64 + " a.py"
    body = {"type": "session.workspace_baseline_captured", "session_id": "s1"}
    assert WorkspaceBaselineCapturedBody.model_validate({**body, "files": [line]}).lines() == [line]
    with pytest.raises(ValidationError, match="not a baseline line"):
        WorkspaceBaselineCapturedBody.model_validate({**body, "files": [line + "\n"]})


def test_an_unexpected_error_is_answered_as_a_problem_too() -> None:
    app = FastAPI()
    problems.install(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom")

    answer = asyncio.run(call())
    assert answer.status_code == 500
    assert answer.headers["content-type"] == MEDIA_TYPE
    assert answer.json()["status"] == 500
    assert "a bug" not in answer.text  # the error goes to the log, not to the client


def test_an_otlp_exports_unexpected_error_is_a_google_rpc_status_too() -> None:
    from google.rpc import code_pb2, status_pb2

    app = FastAPI()
    problems.install(app)

    @app.post("/export")
    async def export(request: Request) -> None:
        problems.answer_errors_in_otlp(request)
        raise RuntimeError("a bug")

    async def call(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/export", content=b"", headers=headers)

    answer = asyncio.run(call({"content-type": "application/x-protobuf"}))
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/x-protobuf"
    status = status_pb2.Status.FromString(answer.content)
    assert status.code == code_pb2.UNKNOWN and "a bug" not in status.message
    for headers in (
        {"content-type": "text/plain"},
        {"content-type": "application/json", "accept": MEDIA_TYPE},
    ):
        answer = asyncio.run(call(headers))
        assert answer.status_code == 500 and answer.headers["content-type"] == MEDIA_TYPE


def test_head_is_left_out_exactly_where_get_streams_without_end() -> None:
    streaming = set()
    for router in (ingest.router, reads.router, audit.router, ops.router):
        for route in router.routes:
            assert isinstance(route, APIRoute)
            response_class = route.response_class
            if isinstance(response_class, DefaultPlaceholder):
                response_class = response_class.value
            if "GET" in route.methods and issubclass(response_class, StreamingResponse):
                streaming.add(route.path)
    assert streaming == UNENDING == {"/v1/log/tail"}
