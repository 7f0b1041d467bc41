"""Read models: sessions, tool calls, criteria, approvals, chains, traces and spans.

Lists are cursor-paginated: ``{"items": [...], "next_cursor": str | null}``; pass ``cursor`` back
to get the next page. Read models are eventually consistent with the log (see ``/readyz`` for lag).

An id in a path may hold ``/`` (sent raw or as ``%2F``, which Starlette decodes before routing):
the routes take it with the ``id`` convertor (``api.convertors``), and a session's routes with a fixed suffix
(``/tool-calls``, ``/criteria``) are registered before the bare ``/sessions/{session_id}``, so
they win for a path ending in one; the id before the suffix is taken whole. The one ambiguity:
``/v1/sessions/{session_id}`` cannot name a session whose id ends in ``/tool-calls`` or
``/criteria`` (that path is the shorter id's listing); ``/v1/streams/session/{id}/state`` can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool

from api.convertors import IdPath  # importing it registers {name:id} before the routes below
from api.deps import ProjectDep, RuntimeDep
from api.problems import BadRequestError, problem_responses
from api.schemas import enum_of, member_of
from domain.errors import NotFoundError
from projections import chains, sessions
from projections.views import InvalidCursorError

# 400: a bad project or cursor; 422: a query parameter of the wrong type or range.
router = APIRouter(prefix="/v1", tags=["read"], responses=problem_responses(400, 422))
#: Routes of one row answer 404 when the read model has no such row (yet).
NOT_FOUND = problem_responses(404)

P = ParamSpec("P")
T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
Cursor = Annotated[
    str | None,
    Query(description="next_cursor of the previous page; absent or empty: the first page"),
]

#: ``status`` filters: exactly the values the read model's ``status`` column can hold (derived
#: from the domain's status machines by ``projections.sessions``/``projections.chains``), so a
#: typo is a 422 naming them, not an empty page.
SessionStatusFilter = Annotated[
    Annotated[str, member_of(sessions.STATUSES), enum_of(sessions.STATUSES)] | None,
    Query(description="only sessions in this status (HumanLayer's statuses)"),
]
ChainStatusFilter = Annotated[
    Annotated[str, member_of(chains.STATUSES), enum_of(chains.STATUSES)] | None,
    Query(description="only chains in this status (AILANG's chain statuses)"),
]


class ReadModelNotFoundError(NotFoundError):
    """Nothing in the read model under that id (yet: read models lag the log slightly)."""


async def _call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on the thread pool; an invalid cursor is a 400."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except InvalidCursorError as error:
        raise BadRequestError(f"invalid cursor: {error}") from None


def _found(value: T | None, what: str, ident: str) -> T:
    """``value``; a 404 problem when it is None."""
    if value is None:
        raise ReadModelNotFoundError(f"no {what} {ident!r}", id=ident)
    return value


@router.get("/sessions", summary="Sessions, newest first")
async def list_sessions(
    runtime: RuntimeDep,
    project: ProjectDep,
    status: SessionStatusFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Sessions (status, agent, model, workspace, started/ended, counts, cost, tokens).
    ``status`` outside its enum is a 422 naming the allowed values."""
    return await _call(
        runtime.views.list_sessions, project, status=status, limit=limit, cursor=cursor
    )


@router.get(
    "/sessions/{session_id:id}/tool-calls", summary="A session's tool calls, in start order"
)
async def list_tool_calls(
    runtime: RuntimeDep,
    project: ProjectDep,
    session_id: IdPath,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Tool calls with ``tool_use_id``, timing (``duration_ms``), success and ``pairing``."""
    return await _call(
        runtime.views.list_tool_calls, project, session_id, limit=limit, cursor=cursor
    )


@router.get(
    "/sessions/{session_id:id}/criteria", summary="scafld criterion states and phase blocks"
)
async def get_criteria(
    runtime: RuntimeDep, project: ProjectDep, session_id: IdPath
) -> dict[str, Any]:
    """``{"criterion_states": {criterion_id: StateRecord}, "phase_blocks": {phase_id: StateRecord}}``."""
    return await _call(runtime.views.get_criteria, project, session_id)


@router.get("/sessions/{session_id:id}", summary="One session", responses=NOT_FOUND)
async def get_session(
    runtime: RuntimeDep, project: ProjectDep, session_id: IdPath
) -> dict[str, Any]:
    """One session's row. 404 problem+json when unknown."""
    return _found(
        await _call(runtime.views.get_session, project, session_id), "session", session_id
    )


@router.get("/approvals", summary="Approvals; ?status=pending is the queue")
async def list_approvals(
    runtime: RuntimeDep,
    project: ProjectDep,
    status: Literal["pending", "approved", "denied"] | None = None,
    session_id: str | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Approvals with decision, who decided, and latency."""
    return await _call(
        runtime.views.list_approvals,
        project,
        status=status,
        session_id=session_id,
        limit=limit,
        cursor=cursor,
    )


@router.get("/chains", summary="Execution chains")
async def list_chains(
    runtime: RuntimeDep,
    project: ProjectDep,
    status: ChainStatusFilter = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Chain summaries (status, current stage, totals, ``agent_flow``). ``status`` outside its
    enum is a 422 naming the allowed values."""
    return await _call(
        runtime.views.list_chains, project, status=status, limit=limit, cursor=cursor
    )


@router.get("/chains/{chain_id:id}", summary="One chain with its stages", responses=NOT_FOUND)
async def get_chain(runtime: RuntimeDep, project: ProjectDep, chain_id: IdPath) -> dict[str, Any]:
    """The chain summary plus ``stages`` in stage-number order."""
    return _found(await _call(runtime.views.get_chain, project, chain_id), "chain", chain_id)


@router.get("/traces", summary="Trace summaries")
async def list_traces(
    runtime: RuntimeDep,
    project: ProjectDep,
    session_id: str | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Traces (root span, span count, error count, duration, service name)."""
    return await _call(
        runtime.views.list_traces, project, session_id=session_id, limit=limit, cursor=cursor
    )


@router.get("/traces/{trace_id}", summary="One trace as a span tree", responses=NOT_FOUND)
async def get_trace(runtime: RuntimeDep, project: ProjectDep, trace_id: str) -> dict[str, Any]:
    """The trace summary plus ``spans``: roots with nested ``children``, by start time."""
    return _found(
        await _call(runtime.views.get_trace, project, trace_id.lower()), "trace", trace_id
    )


@router.get("/spans", summary="Spans, filtered by trace or session")
async def list_spans(
    runtime: RuntimeDep,
    project: ProjectDep,
    trace_id: str | None = None,
    session_id: str | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Spans with OTel columns and session/chain/stage links, tokens, cost, model."""
    return await _call(
        runtime.views.list_spans,
        project,
        trace_id=trace_id,
        session_id=session_id,
        limit=limit,
        cursor=cursor,
    )
