"""Operations: ``/healthz`` (the process answers), ``/readyz`` (event store and blob store
reachable, projections' lag), both open to anyone (probes carry no token);
``GET /v1/projections`` (each projection's position and lag), which needs the bearer token like
every ``/v1`` route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import RuntimeDep, require_token
from api.problems import blank_problem, problem_response, problem_responses

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    """Always ``{"status": "ok"}`` while the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: stores reachable, projections' lag",
    responses=problem_responses(503),
)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """200 when the event store and the blob store (S3: the bucket; local: the directory)
    answer: ``{"status": "ready", "head": position, "projections": [{"name", "position",
    "head", "lag"}], "writer": {"pending", "max_pending", "refused"}}``, ``writer`` being this
    process's group-commit writer (events waiting to be committed, the most it takes, requests
    it refused as overloaded since start); 503 problem+json otherwise."""
    try:
        status = await run_in_threadpool(runtime.projector.status)
        head = await run_in_threadpool(runtime.log.head)
        await run_in_threadpool(runtime.blobs.check)
    except Exception as error:
        return problem_response(503, blank_problem(503, "Not ready", str(error)))
    writer = runtime.writer
    return JSONResponse(
        {
            "status": "ready",
            "head": head,
            "projections": status,
            "writer": {
                "pending": writer.pending,
                "max_pending": writer.max_pending_commands,
                "refused": writer.refused,
            },
        }
    )


@router.get(
    "/v1/projections",
    summary="Projection positions and lag",
    dependencies=[Depends(require_token)],
    responses=problem_responses(401),
)
async def projections_status(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """``[{"name", "position", "head", "lag"}]``, positions being notification ids of the log.

    Raises:
        UnauthorizedError: ``RUNLEDGER_API_TOKEN`` is set and the request lacks it (401).
    """
    return await run_in_threadpool(runtime.projector.status)
