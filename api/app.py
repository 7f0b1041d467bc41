"""The FastAPI application (OpenAPI at ``/docs``). Built by ``create_app(settings)``; everything it
needs is built in the lifespan, nothing at import time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import problems
from api.deps import require_token
from api.routes import audit, ingest, ops, reads
from infra.runtime import build_runtime
from infra.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The runledger HTTP API for ``settings`` (default: from the environment)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = build_runtime(settings)
        app.state.runtime = runtime
        if settings.projector == "inprocess":
            runtime.start_projector()
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(
        title="runledger",
        summary="Event-sourced audit ledger for AI agent runs",
        version="0.1.0",
        lifespan=lifespan,
    )
    problems.install(app)
    guarded = [Depends(require_token)]
    app.include_router(ingest.router, dependencies=guarded)
    app.include_router(reads.router, dependencies=guarded)
    app.include_router(audit.router, dependencies=guarded)
    app.include_router(ops.router)
    return app


def app_factory() -> FastAPI:
    """Entry point for ``uvicorn --factory api.app:app_factory``."""
    return create_app()
