"""The FastAPI application (OpenAPI at ``/docs``). Built by ``create_app(settings)``; everything it
needs is built in the lifespan, nothing at import time."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.telemetry import TelemetryConfig

from api import problems
from api.deps import require_token
from api.head import HeadAsGet
from api.routes import audit, ingest, ops, reads
from api.tail import build_log_head_watch
from infra.runtime import build_runtime
from infra.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The runledger HTTP API for ``settings`` (default: from the environment)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings)
        app.state.runtime = runtime
        # Long-lived objects built at start-up make full collections slow: keep them out of
        # every collection (build_runtime set the thresholds from settings.gc_young_threshold).
        gc.freeze()
        if settings.projector == "inprocess":
            runtime.start_projector()
        app.state.log_head = build_log_head_watch(runtime)  # what live tails wait on
        try:
            yield
        finally:
            app.state.log_head.close()
            runtime.close()

    app = FastAPI(
        title="runledger",
        summary="Event-sourced audit ledger for AI agent runs",
        version="0.1.0",
        lifespan=lifespan,
        telemetry=TelemetryConfig(
            tracing=settings.http_telemetry,
            metrics=settings.http_telemetry,
            logs=settings.http_telemetry,
        ),
    )
    problems.install(app)
    app.add_middleware(HeadAsGet)
    guarded = [Depends(require_token)]
    app.include_router(ingest.router)  # checks the token itself (api.deps.ingest_context)
    unauthorized = problems.problem_responses(401)
    app.include_router(reads.router, dependencies=guarded, responses=unauthorized)
    app.include_router(audit.router, dependencies=guarded, responses=unauthorized)
    app.include_router(ops.router)
    _document_event_bodies(app)
    return app


def _document_event_bodies(app: FastAPI) -> None:
    """Put the typed event schemas into OpenAPI: ``POST /v1/events`` reads its body itself (to
    enforce the size limit before parsing), so FastAPI cannot infer it."""
    from fastapi.openapi.utils import get_openapi
    from pydantic import TypeAdapter

    from api.schemas import EventBatch, TypedEvent

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        template = "#/components/schemas/{model}"
        body = TypeAdapter(TypedEvent | EventBatch).json_schema(ref_template=template)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(body.pop("$defs", {}))
        components["Problem"] = problems.Problem.model_json_schema(ref_template=template)
        components["RpcStatus"] = ingest.RPC_STATUS_SCHEMA
        operation = schema["paths"]["/v1/events"]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
            "description": ingest.JSON_BODY,
        }
        _document_bearer_token(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


#: The security scheme of the routes that check ``RUNLEDGER_API_TOKEN`` (``api.deps.check_token``).
BEARER = "bearerToken"


def _document_bearer_token(schema: dict[str, Any]) -> None:
    """Declare the bearer token (OpenAPI ``securitySchemes``, HTTP ``bearer``, RFC 6750) on every
    operation that can answer 401: required there when the server sets ``RUNLEDGER_API_TOKEN``,
    not asked for otherwise, hence the empty alternative (``{}``)."""
    schema["components"]["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "`Authorization: Bearer <RUNLEDGER_API_TOKEN>`; required only when "
            "the server sets `RUNLEDGER_API_TOKEN` (else a 401 problem).",
        }
    }
    for path_item in schema["paths"].values():
        for operation in path_item.values():
            if "401" in operation.get("responses", {}):
                operation["security"] = [{BEARER: []}, {}]


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory api.app:app_factory``."""
    return create_app()
