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
from infra.runtime import Runtime

PROJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


async def get_runtime(request: Request) -> Runtime:
    """The runtime built by the app's lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_project(
    runtime: RuntimeDep,
    x_runledger_project: Annotated[str | None, Header(description="Project (tenant).")] = None,
    project: Annotated[str | None, Query(description="Project (tenant); the header wins.")] = None,
) -> str:
    """The project of this request: ``X-Runledger-Project`` header, ``?project=``, or the default.

    Raises:
        BadRequestError: not 1-64 of ``[A-Za-z0-9_.-]`` starting alphanumeric.
    """
    value = x_runledger_project or project or runtime.settings.default_project
    if not PROJECT_PATTERN.match(value):
        raise BadRequestError(
            f"invalid project {value!r}: 1-64 of [A-Za-z0-9_.-], starting alphanumeric"
        )
    return value


ProjectDep = Annotated[str, Depends(get_project)]


async def require_token(
    runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> None:
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
