"""The ``{name:id}`` route convertor: any non-empty id, ``/`` and line breaks included."""

from __future__ import annotations

import pytest
from starlette.routing import compile_path

import api.convertors  # noqa: F401  # registers {name:id}

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "ident", ["s1", "a/b", "/lead", "trail/", "a//b", "line\nbreak", "\r", "x\x00y"]
)
def test_an_id_route_takes_any_non_empty_id_whole(ident: str) -> None:
    bare, _, _ = compile_path("/v1/sessions/{session_id:id}")
    suffixed, _, _ = compile_path("/v1/sessions/{session_id:id}/tool-calls")
    match = bare.match(f"/v1/sessions/{ident}")
    assert match is not None and match["session_id"] == ident
    match = suffixed.match(f"/v1/sessions/{ident}/tool-calls")
    assert match is not None and match["session_id"] == ident


def test_an_id_route_takes_no_empty_id() -> None:
    bare, _, _ = compile_path("/v1/sessions/{session_id:id}")
    assert bare.match("/v1/sessions/") is None  # the router redirects it to /v1/sessions
