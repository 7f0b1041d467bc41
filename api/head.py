"""``HEAD`` wherever ``GET`` is answered (RFC 9110 §9.3.2), as Starlette's own routes do and
FastAPI's ``APIRoute`` does not: monitors and caches ask ``HEAD /healthz`` or ``HEAD`` of a blob
and got a 405.

``HeadAsGet`` hands the application a ``GET`` instead; the server keeps the request's own
``HEAD`` scope and so sends the status and headers a ``GET`` answers without its content (uvicorn
checks its scope's method before it writes a body). The OpenAPI document describes ``GET`` only;
``HEAD`` is implied.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

#: Paths whose ``GET`` streams without end (the live tail): a ``HEAD`` there would hold the
#: connection open, so it stays a 405 (``Allow: GET``).
UNENDING = frozenset({"/v1/log/tail"})


def answers_head(path: str) -> bool:
    """Whether ``HEAD`` is served at ``path`` where ``GET`` is."""
    return path not in UNENDING


class HeadAsGet:
    """ASGI middleware: an HTTP ``HEAD`` reaches the application as a ``GET`` (a copy of the
    scope), except at the ``UNENDING`` paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD" and answers_head(scope["path"]):
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)
