"""End to end, the read routes: a real ``runledger serve`` on SQLite and on PostgreSQL, read over
HTTP with httpx. Hand-made cursors, status filters, the per-project log, ids holding ``/``, and a
tool call whose end arrives before its start."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.servers import Server

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


def cursor_of(document: Any) -> str:
    """A cursor as ``projections.views.encode_cursor`` makes one (URL-safe base64 of JSON, no
    padding), holding ``document``; ``bytes`` are taken as the JSON text itself."""
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Every cursor-paginated list route: (path, listing name, sort key types).
LISTS: list[tuple[str, str, tuple[type, ...]]] = [
    ("/v1/sessions", "sessions", (int, str)),
    ("/v1/sessions/s1/tool-calls", "tool_calls", (int, str)),
    ("/v1/approvals", "approvals", (int, str)),
    ("/v1/chains", "chains", (int, str)),
    ("/v1/traces", "traces", (int, str)),
    ("/v1/spans", "spans", (int,)),
]


def test_hand_made_cursors_no_store_can_bind_are_a_400_on_every_list_route(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    server = make_server(**store_env)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.post(
            "/v1/events", json={"type": "session.started", "session_id": "s1"}
        ).raise_for_status()
        server.wait_projected()
        for path, listing, types in LISTS:
            key = ["x" if t is str else 1 for t in types]
            bad = {
                "int above 64 bits": cursor_of({"k": listing, "v": [10**30, *key[1:]]}),
                "int below 64 bits": cursor_of({"k": listing, "v": [-(2**63) - 1, *key[1:]]}),
                "nested 5000 deep": cursor_of(b"[" * 5000 + b"]" * 5000),
            }
            if str in types:  # json.dumps writes a lone surrogate as the escape "\ud800"
                bad["lone surrogate"] = cursor_of({"k": listing, "v": [1, "\ud800"]})
            for case, cursor in bad.items():
                answer = client.get(path, params={"cursor": cursor})
                assert answer.status_code == 400, (path, case, answer.text)
                assert answer.headers["content-type"] == PROBLEM, (path, case)
                problem = answer.json()
                assert problem["type"] == "https://runledger.dev/problems/bad-request"
                assert problem["detail"].startswith("invalid cursor: "), (path, case, problem)
            # the bounds themselves are keys a store can bind
            edge = cursor_of({"k": listing, "v": [2**63 - 1, *key[1:]]})
            answer = client.get(path, params={"cursor": edge})
            assert answer.status_code == 200, (path, answer.text)
