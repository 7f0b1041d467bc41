"""The OpenAPI document tells the truth about every answer, to generated garbage too.

schemathesis (its own CLI, over real HTTP) reads ``/openapi.json`` from the real server and sends
requests made from it: valid ones, and ones that break the document's types, patterns and
bounds. Every answer must be documented (status, content type, headers, body schema: a problem is
``application/problem+json`` with the ``Problem`` schema), no answer may be a 5xx, and a 405
names every method of the resource in ``Allow``. On SQLite and on PostgreSQL, whose text type
refuses what SQLite keeps (NUL).

Left out: ``GET /v1/log/tail`` (an endless Server-Sent Events stream), and the two checks that
want every schema-valid request accepted and every invalid one refused: a cursor is opaque, the
header project wins over the query one, and ``version`` with ``as_of`` is a 400, none of which
the document's schemas can say.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import pytest

from api.problems import MEDIA_TYPE
from tests.servers import Server

pytestmark = pytest.mark.e2e

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
]


def run_schemathesis(server: Server, examples: int) -> str:
    """``schemathesis run`` against ``server``; its report. Fails the test on any finding."""
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
            "--checks", ",".join(CHECKS),
            "--max-examples", str(examples),
            "--exclude-path", "/v1/log/tail",
            "--request-timeout", "30",
            "--seed", "20261122",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-30_000:]
    return report


def test_every_answer_to_generated_requests_is_documented_and_none_is_a_server_error(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    server = make_server(**store_env)
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    operations = sum(len(methods) for methods in paths.values()) - 1  # all but the tail
    report = run_schemathesis(server, examples=40)
    tested = re.search(r"Tested:\s+(\d+)", report)
    assert tested is not None and int(tested.group(1)) == operations >= 20, report[-5000:]
    generated = re.search(r"(\d+) generated", report)
    assert generated is not None and int(generated.group(1)) >= 500, report[-5000:]


def test_a_405_names_every_method_of_the_resource_in_allow(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url) as client:
        # /v1/traces: GET (trace summaries) and POST (OTLP), two routes of two routers.
        refused = client.request("DELETE", "/v1/traces")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD, POST"
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["status"] == 405
        assert client.put("/v1/events").headers["allow"] == "POST"
        assert client.post("/v1/sessions/s1").headers["allow"] == "GET, HEAD"
        # the live tail never ends: no HEAD there
        assert client.delete("/v1/log/tail").headers["allow"] == "GET"


def test_head_answers_the_status_and_headers_of_get_without_the_content(
    sqlite_server: Server,
) -> None:
    # One keep-alive connection: a body sent after a HEAD's headers would be read as the next
    # answer and break it.
    with httpx.Client(base_url=sqlite_server.url, timeout=10) as client:
        client.post(
            "/v1/events",
            json={"type": "session.started", "session_id": "head-1", "agent": "claude-code"},
        ).raise_for_status()
        for path in ("/healthz", "/v1/log", "/v1/streams/session/head-1/events", "/openapi.json"):
            got, head = client.get(path), client.head(path)
            assert (head.status_code, got.status_code) == (200, 200), path
            assert head.content == b"" and len(got.content) > 0, path
            for name in ("content-type", "content-length"):
                assert head.headers[name] == got.headers[name], (path, name)
        missing = client.head("/v1/streams/session/no-such-session/events")
        assert missing.status_code == 404 and missing.content == b""
        assert missing.headers["content-type"] == "application/problem+json"
        assert client.head("/v1/events").status_code == 405  # POST only
        tail = client.head("/v1/log/tail")
        assert tail.status_code == 405 and tail.headers["allow"] == "GET"
        assert client.get("/v1/log").json()["items"][0]["type"] == "SessionStarted"


def assert_documented(document: dict[str, Any], method: str, answer: httpx.Response) -> None:
    """``answer`` is what the document declares for its route, method and status: the status,
    the content type, and a body valid against the declared schema (JSON Schema 2020-12, as
    OpenAPI 3.1's), not just "some response"."""
    path = answer.request.url.path
    declared = document["paths"][path][method]["responses"]
    assert str(answer.status_code) in declared, (path, answer.status_code, sorted(declared))
    content = declared[str(answer.status_code)].get("content")
    assert content, f"{method.upper()} {path} {answer.status_code}: no body declared"
    media_type = answer.headers["content-type"].split(";")[0]
    assert media_type in content, (path, answer.status_code, media_type, sorted(content))
    schema = {**content[media_type]["schema"], "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(answer.json())


def test_post_events_answers_what_its_openapi_declares_for_each_status(
    sqlite_server: Server,
) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        document = client.get("/openapi.json").raise_for_status().json()
        event = {"type": "session.started", "session_id": "contract-1", "agent": "claude-code"}
        created = client.post("/v1/events", json=event)
        duplicate = client.post("/v1/events", json=event)
        batch = client.post(
            "/v1/events",
            json={"events": [event, {"type": "chain.created", "chain_id": "contract-1"}]},
        )
        refused = client.post("/v1/events", json={"type": "session.started"})
    assert [a.status_code for a in (created, duplicate, batch, refused)] == [201, 200, 200, 422]
    assert created.json()["results"][0]["status"] == "created"
    assert duplicate.json()["duplicates"] == 1
    for answer in (created, duplicate, batch, refused):
        assert_documented(document, "post", answer)


def test_post_traces_answers_its_errors_as_its_openapi_declares(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        document = client.get("/openapi.json").raise_for_status().json()
        json_body = {"content-type": "application/json"}
        status = client.post("/v1/traces", content=b"{not json", headers=json_body)
        asked = client.post(
            "/v1/traces",
            content=b"{not json",
            headers={**json_body, "accept": "application/problem+json"},
        )
        plain = client.post("/v1/traces", content=b"x", headers={"content-type": "text/plain"})
        protobuf = client.post(
            "/v1/traces", content=b"\xff", headers={"content-type": "application/x-protobuf"}
        )
    assert [a.status_code for a in (status, asked, plain, protobuf)] == [400, 400, 415, 400]
    assert status.headers["content-type"] == "application/json"  # a google.rpc.Status
    assert asked.headers["content-type"] == plain.headers["content-type"] == MEDIA_TYPE
    for answer in (status, asked, plain):
        assert_documented(document, "post", answer)
    declared = document["paths"]["/v1/traces"]["post"]["responses"]["400"]["content"]
    assert protobuf.headers["content-type"] in declared
