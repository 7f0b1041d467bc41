"""FastAPI dependencies, as ``Annotated`` aliases: the runtime, the project, auth.

All ``async``: they do no I/O, and FastAPI runs a plain ``def`` dependency in its threadpool
(three thread hops per request cost more than the rest of a small ingest request).
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from api.problems import BadRequestError, UnauthorizedError
from domain.base import PROJECT_NAME
from infra.runtime import Runtime

#: A project name (``fullmatch``).
PROJECT_PATTERN = re.compile(PROJECT_NAME)
#: How OpenAPI shows a project header or query parameter: what ``resolve_project`` accepts,
#: empty included (it counts as not given).
PROJECT_SCHEMA = {"type": "string", "pattern": f"^(?:{PROJECT_NAME})?$", "maxLength": 64}

#: OpenAPI description of ``?project=``.
QUERY_PROJECT_DESCRIPTION = (
    "Project (tenant). With the X-Runledger-Project header as well, both must name the same "
    "project (else 400)."
)

#: OpenAPI description of the project header and query parameter, for routes that resolve them
#: with ``ingest_context`` instead of dependencies.
PROJECT_PARAMETERS = [
    {"name": "X-Runledger-Project", "in": "header", "required": False,
     "description": "Project (tenant).", "schema": PROJECT_SCHEMA},
    {"name": "project", "in": "query", "required": False,
     "description": QUERY_PROJECT_DESCRIPTION, "schema": PROJECT_SCHEMA},
]  # fmt: skip


async def get_runtime(request: Request) -> Runtime:
    """The runtime built by the app's lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def resolve_project(runtime: Runtime, header: str | None, query: str | None) -> str:
    """The project of a request: the ``X-Runledger-Project`` header, ``?project=``, or the
    default (an empty header or query value counts as not given). A request may give both only
    when they are the same project: events filed under a tenant other than the one a URL names
    would be an audit trail in the wrong place.

    Raises:
        BadRequestError: a given value is not 1-64 of ``[A-Za-z0-9_.-]`` starting alphanumeric,
            or the header and the query name different projects.
    """
    for value in (header, query):
        if value and not PROJECT_PATTERN.fullmatch(value):
            raise BadRequestError(
                f"invalid project {value!r}: 1-64 of [A-Za-z0-9_.-], starting alphanumeric"
            )
    if header and query and header != query:
        raise BadRequestError(
            f"the X-Runledger-Project header ({header!r}) and ?project= ({query!r}) name "
            "different projects: give one, or the same in both"
        )
    return header or query or runtime.settings.default_project


def check_token(runtime: Runtime, authorization: str | None) -> None:
    """When ``api_token`` is set, require ``Authorization: Bearer <token>``.

    Raises:
        UnauthorizedError: missing or wrong token.
    """
    expected = runtime.settings.api_token
    if not expected:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        raise UnauthorizedError("a valid bearer token is required")


#: Documented, not enforced by FastAPI: ``resolve_project`` refuses with a 400 problem, as the
#: ingest routes do.
_PROJECT_EXTRA = {key: PROJECT_SCHEMA[key] for key in ("pattern", "maxLength")}


async def get_project(
    runtime: RuntimeDep,
    x_runledger_project: Annotated[
        str | None, Header(description="Project (tenant).", json_schema_extra=_PROJECT_EXTRA)
    ] = None,
    project: Annotated[
        str | None,
        Query(description=QUERY_PROJECT_DESCRIPTION, json_schema_extra=_PROJECT_EXTRA),
    ] = None,
) -> str:
    """``resolve_project`` as a dependency (documents the header and the query parameter)."""
    return resolve_project(runtime, x_runledger_project, project)


ProjectDep = Annotated[str, Depends(get_project)]


async def require_token(request: Request) -> None:
    """``check_token`` as a dependency, on the request's ``Authorization`` header, read here
    rather than declared as a parameter: OpenAPI names the token by its security scheme
    (``api.app``), and a declared header would be a second, unscoped description of it.

    Raises:
        UnauthorizedError: ``RUNLEDGER_API_TOKEN`` is set and the request lacks it (401).
    """
    check_token(request.app.state.runtime, request.headers.get("authorization"))


def ingest_context(request: Request) -> tuple[Runtime, str]:
    """Runtime and project of an ingest request, with the token checked, without FastAPI's
    dependency machinery: the hot ingest routes resolve these per request themselves (the
    dependency solver cost ~20% of a small request's CPU).

    A process whose writer is saturated refuses the request here, before its body is read
    (``GroupCommitWriter.check_admission``; the writer's ``submit`` decides for certain).

    Raises:
        UnauthorizedError, BadRequestError: as ``check_token`` / ``resolve_project``.
        WriterOverloadedError: ``max_pending_events`` commands wait for the writer already (503).
    """
    runtime: Runtime = request.app.state.runtime
    headers = request.headers
    check_token(runtime, headers.get("authorization"))
    query = request.query_params.get("project") if request.scope.get("query_string") else None
    project = resolve_project(runtime, headers.get("x-runledger-project"), query)
    runtime.writer.check_admission()
    return runtime, project
