"""Audit: a stream's history, its state at a version or time, the global log, and blobs.

- ``GET /v1/streams/{kind}/{external_id}/events``: every event with version, position,
  ``recorded_at``, ``occurred_at``, type and payload.
- ``GET /v1/streams/{kind}/{external_id}/state?version=N`` or ``?as_of=<RFC 3339>``: the stream's
  state then (``as_of`` is the ledger's clock: what the ledger knew at that time).
- ``GET /v1/log?after=<position>&limit=``: the request's project's events in the application
  log, in position order (``log_page``: ``limit`` counts the project's events; at most
  ``LOG_SCAN_MAX_POSITIONS`` positions read per request).
- ``GET /v1/log/tail``: the same as a live tail (Server-Sent Events, resumable with
  ``Last-Event-ID``).
- ``GET /v1/blobs/{sha256}``: a large value an event references.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.convertors import IdPath  # importing it registers {name:id} before the routes below
from api.deps import ProjectDep, RuntimeDep
from api.problems import BadRequestError, problem_responses
from api.render import jsonable, render_event
from api.schemas import Timestamp
from api.tail import LogHeadWatch
from domain.base import canonical_json, stream_id
from infra.runtime import Runtime
from projections.schema import INT64_MAX

# 400: a bad project (or query combination); 422: a query parameter of the wrong type or range.
router = APIRouter(prefix="/v1", tags=["audit"], responses=problem_responses(400, 422))

Kind = Literal["session", "trace", "approval", "chain"]
# A stream's upstream id may hold ``/`` (``{external_id:id}``, ``api.convertors``): the fixed
# suffix after it, ``/events`` or ``/state``, is the path's last segment, so any id reads back.

# Positions and versions are 64-bit signed in both stores (BIGINT; SQLite INTEGER), which refuse
# a larger parameter: query values are bounded by INT64_MAX, so that one is a 422.


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
    positions = (  # an empty page reads none (and after_version may be the largest BIGINT)
        runtime.log.positions(sid, from_version=after_version + 1, to_version=last) if page else {}
    )
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


@router.get(
    "/streams/{kind}/{external_id:id}/events",
    summary="A stream's history",
    responses=problem_responses(404),
)
async def get_stream_events(
    runtime: RuntimeDep,
    project: ProjectDep,
    kind: Kind,
    external_id: IdPath,
    after_version: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Events in version order: ``{"stream_id", "version", "items": [...], "next_after_version"}``."""
    return await run_in_threadpool(
        stream_history, runtime, kind, external_id, project, after_version, limit
    )


@router.get(
    "/streams/{kind}/{external_id:id}/state",
    summary="A stream's state at a version or time",
    responses=problem_responses(404),
)
async def get_stream_state(
    runtime: RuntimeDep,
    project: ProjectDep,
    kind: Kind,
    external_id: IdPath,
    version: Annotated[int | None, Query(ge=1, le=INT64_MAX)] = None,
    as_of: Annotated[Timestamp | None, Query(description="RFC 3339 date-time with offset")] = None,
) -> dict[str, Any]:
    """``{"version", "as_of", "state"}``; a session's state holds its criterion states and phase blocks."""
    return await run_in_threadpool(
        stream_state, runtime, kind, external_id, project, version, as_of
    )


#: Most log positions one ``log_page`` reads (events of every project, one per position), however
#: few of them are the request's project's: a read on a sparse project stays bounded.
LOG_SCAN_MAX_POSITIONS = 10_000


def log_page(
    runtime: Runtime, after: int, limit: int, project: str | None
) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` events of ``project`` after position ``after``, in position order.

    Reads the log in growing pages until ``limit`` events of ``project`` are found, the log's
    head is reached, or ``LOG_SCAN_MAX_POSITIONS`` positions were read.

    Args:
        after: the position (``notification_id``) to read after.
        limit: most events to return (1 or more).
        project: the tenant whose events are returned; None: every project's. Positions stay
            global.

    Returns:
        ``(rendered events, last position scanned)``: the position of the ``limit``-th event
        when that many were found, else the last position read (``after`` when none). Reading
        on after it misses nothing; fewer than ``limit`` events (even none) with a last
        position below the head only means the scan bound was met.
    """
    items: list[dict[str, Any]] = []
    last = after
    scanned = 0
    size = limit  # the first read: enough when every event is the project's
    while len(items) < limit and scanned < LOG_SCAN_MAX_POSITIONS:
        wanted = min(size, LOG_SCAN_MAX_POSITIONS - scanned)
        notifications = runtime.ledger.recorder.select_notifications(
            start=last, limit=wanted, inclusive_of_start=False
        )
        for notification in notifications:
            scanned += 1
            last = notification.id
            event = runtime.ledger.mapper.to_domain_event(notification)
            if project is None or getattr(event, "project", None) == project:
                items.append(render_event(event, notification.id))  # type: ignore[arg-type]
                if len(items) == limit:
                    break
        if len(notifications) < wanted:  # the head: nothing more to read now
            break
        size = min(size * 2, LOG_SCAN_MAX_POSITIONS)  # a sparse project: read more at a time
    return items, last


def read_log(runtime: Runtime, after: int, limit: int, project: str | None) -> dict[str, Any]:
    """``GET /v1/log``'s answer: ``log_page`` with the log's head."""
    items, last = log_page(runtime, after, limit, project)
    return {"items": items, "next_after": last, "head": runtime.log.head()}


@router.get(
    "/log",
    summary="The project's events in the global log after a position",
    description=(
        '`{"items": [...], "next_after": position, "head": position}`: the first `limit` '
        "events of the request's project after position `after`, in position order (positions "
        "are the global log's). One request reads at most "
        f"{LOG_SCAN_MAX_POSITIONS:,} positions of the log (events of every project), so a page "
        "may hold fewer than `limit` events, even none, while more follow. `next_after` is the "
        "last position read: pass it as `after` for the next page. The log is read to its end "
        "when `next_after` reaches `head`."
    ),
)
async def get_log(
    runtime: RuntimeDep,
    project: ProjectDep,
    after: Annotated[
        int, Query(ge=0, le=INT64_MAX, description="position (notification_id) to read after")
    ] = 0,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="most events of the project to return")
    ] = 100,
) -> dict[str, Any]:
    """The request's project's events after ``after``: see ``log_page`` (and the description)."""
    return await run_in_threadpool(read_log, runtime, after, limit, project)


#: An idle tail waits for the log to grow (``api.tail.LogHeadWatch``: a commit wakes it) at most
#: this long (seconds) before it looks whether its client is still there; it sends a comment line
#: when it has sent nothing for ``TAIL_KEEPALIVE_S`` (proxies close silent connections);
#: positions per read.
TAIL_IDLE_S = 1.0
TAIL_KEEPALIVE_S = 15.0
TAIL_PAGE = 500


@router.get(
    "/log/tail",
    summary="Live tail of the global log (Server-Sent Events, resumable with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={
        **problem_responses(400),
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "one message per event: `id` its position, `event` its type, "
            "`data` the event as `GET /v1/log` renders it",
        },
    },
)
async def tail_log(
    request: Request,
    runtime: RuntimeDep,
    project: ProjectDep,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=INT64_MAX,
            description="position to start after (default: the head: new events only)",
        ),
    ] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            description="position of the last event received; wins over `after` "
            "(EventSource sends it when it reconnects)"
        ),
    ] = None,
) -> StreamingResponse:
    """The request's project's events as they are committed, as ``text/event-stream``
    (HTML's Server-Sent Events): ``id: <position>``, ``event: <type>``, ``data: <event JSON>``.
    An event shows as soon as its commit wakes the process's ``LogHeadWatch`` (milliseconds),
    else within ``tail_poll_interval_s``. 400 problem+json when ``Last-Event-ID`` is not a
    position."""
    if last_event_id:
        # ASCII digits only ("²".isdigit() holds, and int() refuses it), within BIGINT (19
        # digits at most, checked before int() reads them).
        digits = last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= 19
        if not digits or int(last_event_id) > INT64_MAX:
            raise BadRequestError(
                f"Last-Event-ID must be a log position (a non-negative integer), got {last_event_id!r}"
            )
        start = int(last_event_id)
    elif after is not None:
        start = after
    else:
        start = await run_in_threadpool(runtime.log.head)
    return StreamingResponse(
        _tail(request, runtime, request.app.state.log_head, project, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _tail(
    request: Request, runtime: Runtime, watch: LogHeadWatch, project: str, position: int
) -> AsyncIterator[bytes]:
    """SSE messages of the events after ``position`` until the client goes away (Starlette
    cancels the generator then; checked here too while idle, for servers that do not). The log
    is read again only once ``watch`` saw its head move past ``position``."""
    yield b"retry: 1000\n\n"  # EventSource reconnects after 1 s, sending Last-Event-ID
    quiet_since = time.monotonic()
    woken = False
    while True:
        items, last = await run_in_threadpool(log_page, runtime, position, TAIL_PAGE, project)
        for item in items:
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                item["position"],
                item["type"].encode(),
                canonical_json(item),  # orjson, or the stdlib for what it cannot write
            )
        if items:
            quiet_since = time.monotonic()
        if last > position:
            position, woken = last, False
            continue
        if woken:  # the head was past ``position``, yet the read found nothing: never spin
            await asyncio.sleep(TAIL_IDLE_S)
        while not (woken := await watch.wait_past(position, TAIL_IDLE_S)):
            if time.monotonic() - quiet_since >= TAIL_KEEPALIVE_S:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
            if await request.is_disconnected():
                return


@router.get(
    "/blobs/{sha256}",
    summary="A large value referenced by an event",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "the blob's bytes",
        },
        **problem_responses(404, 503),
    },
)
async def get_blob(
    runtime: RuntimeDep,
    sha256: Annotated[
        str,
        Path(
            description="sha256 hex of the blob (as an event's blob reference gives it)",
            json_schema_extra={"pattern": "^[0-9A-Fa-f]{64}$"},
        ),
    ],
) -> Response:
    """The blob's bytes (``application/octet-stream``). 404 problem+json when unknown."""
    if len(sha256) != 64:
        raise BadRequestError("sha256 must be 64 hex characters")
    data = await run_in_threadpool(runtime.blobs.get, sha256.lower())
    return Response(data, media_type="application/octet-stream")
