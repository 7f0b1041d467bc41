"""Audit: a stream's history, its state at a version or time, the global log, and blobs.

- ``GET /v1/streams/{kind}/{external_id}/events``: every event with version, position,
  ``recorded_at``, ``occurred_at``, type and payload.
- ``GET /v1/streams/{kind}/{external_id}/state?version=N`` or ``?as_of=<RFC 3339>``: the stream's
  state then (``as_of`` is the ledger's clock: what the ledger knew at that time).
- ``GET /v1/log?after=<position>&limit=``: the application log in position order.
- ``GET /v1/blobs/{sha256}``: a large value an event references.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime

from api.deps import ProjectDep, RuntimeDep
from api.problems import BadRequestError
from api.render import jsonable, render_event
from domain.base import stream_id
from infra.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["audit"])

Kind = Literal["session", "trace", "approval", "chain"]


def stream_history(
    runtime: Runtime,
    kind: str,
    external_id: str,
    project: str,
    after_version: int = 0,
    limit: int = 1000,
) -> dict[str, Any]:
    """Rendered events of one stream after ``after_version`` (see ``api.render``).

    Raises:
        StreamNotFoundError: no such stream.
    """
    page = runtime.ledger.history(
        kind, external_id, project=project, after_version=after_version, limit=limit
    )
    sid = stream_id(project, kind, external_id)
    version = runtime.ledger.current_version(sid)
    last = page[-1].originator_version if page else after_version
    positions = runtime.log.positions(sid, from_version=after_version + 1, to_version=last)
    items = [render_event(e, positions.get(e.originator_version)) for e in page]
    more = last < version
    return {
        "stream_id": str(sid),
        "version": version,
        "items": items,
        "next_after_version": last if more else None,
    }


def stream_state(
    runtime: Runtime,
    kind: str,
    external_id: str,
    project: str,
    version: int | None,
    as_of: datetime | None,
) -> dict[str, Any]:
    """The state of one stream now, at ``version``, or as of ``as_of``.

    Raises:
        BadRequestError: both ``version`` and ``as_of`` given.
        StreamNotFoundError, VersionNotFoundError: nothing there.
    """
    if version is not None and as_of is not None:
        raise BadRequestError("give version or as_of, not both")
    if as_of is not None:
        version = runtime.ledger.version_as_of(kind, external_id, as_of, project=project)
    aggregate = runtime.ledger.load(kind, external_id, project=project, version=version)
    if version is not None and aggregate.version < version:
        from domain.errors import VersionNotFoundError

        raise VersionNotFoundError(
            kind=kind,
            external_id=external_id,
            detail=f"stream has {aggregate.version} events, not {version}",
        )
    return {
        "version": aggregate.version,
        "as_of": as_of.isoformat() if as_of else None,
        "state": jsonable(aggregate.state()),
    }


@router.get("/streams/{kind}/{external_id}/events", summary="A stream's history")
async def get_stream_events(
    runtime: RuntimeDep,
    project: ProjectDep,
    kind: Kind,
    external_id: str,
    after_version: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Events in version order: ``{"stream_id", "version", "items": [...], "next_after_version"}``."""
    return await run_in_threadpool(
        stream_history, runtime, kind, external_id, project, after_version, limit
    )


@router.get("/streams/{kind}/{external_id}/state", summary="A stream's state at a version or time")
async def get_stream_state(
    runtime: RuntimeDep,
    project: ProjectDep,
    kind: Kind,
    external_id: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    as_of: Annotated[AwareDatetime | None, Query(description="RFC 3339 with offset")] = None,
) -> dict[str, Any]:
    """``{"version", "as_of", "state"}``; a session's state holds its criterion states and phase blocks."""
    return await run_in_threadpool(
        stream_state, runtime, kind, external_id, project, version, as_of
    )


def read_log(runtime: Runtime, after: int, limit: int, project: str | None) -> dict[str, Any]:
    """Rendered events with position > ``after``; ``project`` filters (positions stay global)."""
    notifications = runtime.ledger.recorder.select_notifications(start=after + 1, limit=limit)
    items = []
    for notification in notifications:
        event = runtime.ledger.mapper.to_domain_event(notification)
        if project is None or getattr(event, "project", None) == project:
            items.append(render_event(event, notification.id))  # type: ignore[arg-type]
    last = notifications[-1].id if notifications else after
    return {"items": items, "next_after": last, "head": runtime.log.head()}


@router.get("/log", summary="The global log after a position")
async def get_log(
    runtime: RuntimeDep,
    project: ProjectDep,
    after: Annotated[int, Query(ge=0, description="position (notification_id) to read after")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> dict[str, Any]:
    """``{"items": [...], "next_after": position, "head": position}`` for the request's project."""
    return await run_in_threadpool(read_log, runtime, after, limit, project)


@router.get("/blobs/{sha256}", summary="A large value referenced by an event")
async def get_blob(runtime: RuntimeDep, sha256: str) -> Response:
    """The blob's bytes (``application/octet-stream``). 404 problem+json when unknown."""
    if len(sha256) != 64:
        raise BadRequestError("sha256 must be 64 hex characters")
    data = await run_in_threadpool(runtime.blobs.get, sha256.lower())
    return Response(data, media_type="application/octet-stream")
