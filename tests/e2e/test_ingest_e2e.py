"""End to end on the embedded default: a real ``runledger serve`` on a port, real HTTP clients,
real Claude Code hook captures and the OpenTelemetry SDK's own OTLP/HTTP exporter."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import random
import re
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Server, read_sse

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RAW = FIXTURES / "claude-code-hooks/agentic-framework-2026-02/raw-all-sessions"


def one_real_session() -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The captured PreToolUse and PostToolUse payloads of session 94692e6b, in capture order."""
    pre = json.loads((RAW / "pre_tool_use.json").read_text())
    post = json.loads((RAW / "post_tool_use.matching-pre.small.json").read_text())
    session_ids = {p["session_id"] for p in pre} | {p["session_id"] for p in post}
    assert len(session_ids) == 1
    return session_ids.pop(), pre, post


def in_capture_order(pre: list[dict[str, Any]], post: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each PreToolUse followed by its PostToolUse (when captured), as Claude Code sends them."""
    post_by_id = {p["tool_use_id"]: p for p in post}
    ordered: list[dict[str, Any]] = []
    for p in pre:
        ordered.append(p)
        if p["tool_use_id"] in post_by_id:
            ordered.append(post_by_id[p["tool_use_id"]])
    return ordered


def all_pages(client: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (
            client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
            .raise_for_status()
            .json()
        )
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def test_real_hook_captures_posted_in_order_pair_every_tool_call_and_a_resend_changes_nothing(
    sqlite_server: Server,
) -> None:
    session_id, pre, post = one_real_session()
    payloads = in_capture_order(pre, post)
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        for payload in payloads:
            response = client.post("/v1/hooks/claude-code", json=payload)
            assert response.status_code == 200, response.text
            assert response.json() == {}
        head = client.get("/readyz").json()["head"]
        sqlite_server.wait_projected()
        calls = all_pages(client, f"/v1/sessions/{session_id}/tool-calls", limit=17)

        assert len(calls) == len(pre)
        ended = {c["tool_use_id"]: c for c in calls if c["ended_at"] is not None}
        assert set(ended) == {p["tool_use_id"] for p in post}
        assert all(c["pairing"] == "tool_use_id" and c["success"] is True for c in ended.values())
        assert [c["tool_use_id"] for c in calls] == [p["tool_use_id"] for p in pre]
        names = {p["tool_use_id"]: p["tool_name"] for p in pre}
        assert all(c["tool_name"] == names[c["tool_use_id"]] for c in calls)

        for payload in payloads:  # the whole session again, as a retrying sender would
            assert client.post("/v1/hooks/claude-code", json=payload).status_code == 200
        assert client.get("/readyz").json()["head"] == head
        sqlite_server.wait_projected()
        assert all_pages(client, f"/v1/sessions/{session_id}/tool-calls", limit=17) == calls


def test_real_hook_captures_resent_and_reordered_by_concurrent_senders_end_as_sent_in_order(
    sqlite_server: Server,
) -> None:
    # Senders retry, duplicate and reorder: every PostToolUse may come before its PreToolUse.
    # The tool calls must come out as they do from the captures sent once, in order.
    session_id, pre, post = one_real_session()
    in_order = in_capture_order(pre, post)
    rng = random.Random(20261122)
    mixed_up = [{**p, "session_id": f"{session_id}-mixed"} for p in in_order]
    mixed_up += rng.sample(mixed_up, len(mixed_up) // 2)  # half of them sent twice
    rng.shuffle(mixed_up)
    first_seen: dict[tuple[str, str], int] = {}
    for index, p in enumerate(mixed_up):
        first_seen.setdefault((p["hook_event_name"], p["tool_use_id"]), index)
    assert any(
        first_seen[("PostToolUse", p["tool_use_id"])] < first_seen[("PreToolUse", p["tool_use_id"])]
        for p in post
    )

    def send(payloads: list[dict[str, Any]]) -> list[int]:
        with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
            return [client.post("/v1/hooks/claude-code", json=p).status_code for p in payloads]

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for part in pool.map(send, [mixed_up[i::4] for i in range(4)]) for s in part]
    assert set(statuses) == {200}, statuses
    assert set(send(in_order)) == {200}
    sqlite_server.wait_projected()

    def tool_calls(session: str) -> dict[str, tuple[Any, ...]]:
        with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
            calls = all_pages(client, f"/v1/sessions/{session}/tool-calls", limit=50)
        fields = ("tool_name", "tool_input_sha256", "success", "pairing", "ended_at")
        return {
            c["tool_use_id"]: tuple(c[f] is not None if f == "ended_at" else c[f] for f in fields)
            for c in calls
        }

    expected = tool_calls(session_id)
    assert len(expected) == len(pre)
    assert sum(ended for *_, ended in expected.values()) == len(post)
    assert tool_calls(f"{session_id}-mixed") == expected
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        versions = [
            client.get(f"/v1/streams/session/{s}/state").json()["version"]
            for s in (session_id, f"{session_id}-mixed")
        ]
    # one event per payload (and the session's implied start), none for the resends
    assert versions[0] == versions[1] == 1 + len(in_order), versions


def test_otlp_sdk_exporter_sends_a_nested_trace_and_the_span_tree_reads_back(
    sqlite_server: Server,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    # session.id on the resource links every span of this process to the session (Claude Code's key)
    provider = TracerProvider(
        resource=Resource.create({"service.name": "agent-e2e", "session.id": "otel-s1"})
    )
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{sqlite_server.url}/v1/traces"))
    )
    tracer = provider.get_tracer("runledger-e2e", "1.0")
    with tracer.start_as_current_span("agent.run") as root:
        with tracer.start_as_current_span(
            "llm.call",
            attributes={"gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 30},
        ):
            with tracer.start_as_current_span("tool.bash"):
                pass
        with tracer.start_as_current_span("tool.read"):
            pass
    provider.shutdown()
    trace_id = format(root.get_span_context().trace_id, "032x")

    sqlite_server.wait_projected()
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        trace = client.get(f"/v1/traces/{trace_id}").raise_for_status().json()
        assert trace["span_count"] == 4 and trace["service_name"] == "agent-e2e"
        [tree] = trace["spans"]
        assert tree["name"] == "agent.run"
        assert sorted(c["name"] for c in tree["children"]) == ["llm.call", "tool.read"]
        llm = next(c for c in tree["children"] if c["name"] == "llm.call")
        assert [c["name"] for c in llm["children"]] == ["tool.bash"]
        session = client.get("/v1/sessions/otel-s1").raise_for_status().json()
        assert (session["input_tokens"], session["output_tokens"]) == (120, 30)


def test_otlp_json_and_gzip_bodies_answer_partial_success_for_bad_spans(
    sqlite_server: Server,
) -> None:
    example = json.loads((FIXTURES / "otlp/trace.json").read_text())
    bad = json.loads(json.dumps(example))
    bad_span = bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    bad_span["traceId"] = (
        "5b8efff798038103d269b633813fc60c5b8efff798038103"  # 48 hex: the protojson bug
    )
    bad_span["spanId"] = "1111111111111111"
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        ok = client.post(
            "/v1/traces",
            content=gzip.compress(json.dumps(example).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert ok.status_code == 200 and ok.json() == {}
        mixed = client.post("/v1/traces", json=bad)
        assert mixed.status_code == 200
        assert mixed.json()["partialSuccess"]["rejectedSpans"] == "1"
        assert "48" in mixed.json()["partialSuccess"]["errorMessage"]
        garbage = client.post(
            "/v1/traces",
            content=b"\xff\xff\xff",
            headers={"content-type": "application/x-protobuf"},
        )
        assert garbage.status_code == 400
        assert garbage.headers["content-type"] == "application/x-protobuf"  # a google.rpc.Status
        unsupported = client.post(
            "/v1/traces", content=b"x", headers={"content-type": "text/plain"}
        )
        assert unsupported.status_code == 415


def sdk_spans(*children: str) -> tuple[Any, str]:
    """Spans the OpenTelemetry SDK finished, kept in memory for an exporter to send: a root
    ``agent.run`` with one child span per name in ``children``.

    Returns:
        ``(the finished ReadableSpans, their trace id as 32 lowercase hex)``.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("runledger-e2e")
    with tracer.start_as_current_span("agent.run") as root:
        for name in children:
            with tracer.start_as_current_span(name):
                pass
    return spans.get_finished_spans(), format(root.get_span_context().trace_id, "032x")


def otlp_status(answer: httpx.Response) -> Any:
    """The ``google.rpc.Status`` of a failed OTLP/HTTP export, decoded as its Content-Type says
    (binary protobuf or its JSON mapping)."""
    from google.protobuf import json_format
    from google.rpc import status_pb2

    media_type = answer.headers["content-type"]
    if media_type == "application/x-protobuf":
        return status_pb2.Status.FromString(answer.content)
    assert media_type == "application/json", media_type
    return json_format.Parse(answer.content, status_pb2.Status())


def test_a_failed_otlp_export_answers_a_google_rpc_status_encoded_as_its_request(
    make_server: Any,
) -> None:
    from google.rpc import code_pb2, error_details_pb2

    server = make_server(RUNLEDGER_MAX_BODY_BYTES=str(64 * 1024))
    protobuf = {"content-type": "application/x-protobuf"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        head = client.get("/readyz").json()["head"]
        cases = [
            # (body, headers, status, encoding, code, words in the message)
            (b"\xff\xff\xff", protobuf, 400, "application/x-protobuf",
             code_pb2.INVALID_ARGUMENT, "invalid protobuf"),
            (b"{not json", {"content-type": "application/json"}, 400, "application/json",
             code_pb2.INVALID_ARGUMENT, "invalid JSON"),
            (b"[]", {"content-type": "application/json; charset=utf-8"}, 400, "application/json",
             code_pb2.INVALID_ARGUMENT, "must be a JSON object"),
            (b"\x1f\x8b junk", {**protobuf, "content-encoding": "gzip"}, 400,
             "application/x-protobuf", code_pb2.INVALID_ARGUMENT, "gzip"),
            (b"", {**protobuf, "content-encoding": "br"}, 415, "application/x-protobuf",
             code_pb2.UNKNOWN, "content encoding"),
            (b"\x00" * (65 * 1024), protobuf, 413, "application/x-protobuf",
             code_pb2.UNKNOWN, "exceeds"),
        ]  # fmt: skip
        for body, headers, status, encoding, code, words in cases:
            answer = client.post("/v1/traces", content=body, headers=headers)
            assert answer.status_code == status, (headers, answer.content)
            assert answer.headers["content-type"] == encoding
            decoded = otlp_status(answer)
            assert decoded.code == code and words in decoded.message, decoded
            if status == 400:  # OTLP "Bad Data": the details hold a google.rpc.BadRequest
                (detail,) = decoded.details
                bad_request = error_details_pb2.BadRequest()
                assert detail.Unpack(bad_request)
                assert bad_request.field_violations[0].description == decoded.message
            else:
                assert not decoded.details

        # A client that asks for RFC 9457 problem details gets them.
        asked = client.post(
            "/v1/traces",
            content=b"\xff\xff\xff",
            headers={**protobuf, "accept": "application/problem+json"},
        )
        assert asked.status_code == 400
        assert asked.headers["content-type"] == "application/problem+json"
        assert asked.json()["type"].endswith("/invalid-otlp")
        # A body of no OTLP encoding cannot be answered in its encoding: a problem.
        for headers in ({"content-type": "text/plain"}, {}):
            unsupported = client.post("/v1/traces", content=b"x", headers=headers)
            assert unsupported.status_code == 415
            assert unsupported.headers["content-type"] == "application/problem+json"
        assert client.get("/readyz").json()["head"] == head


def test_the_otlp_sdk_exporter_takes_a_refused_export_as_a_failure_without_an_error(
    make_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from google.rpc import code_pb2
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    server = make_server(RUNLEDGER_API_TOKEN="sdk-secret")
    finished, trace_id = sdk_spans()
    endpoint = f"{server.url}/v1/traces"

    # What the SDK sends, answered without the token: a 401 protobuf Status.
    body = encode_spans(finished).SerializeToString()
    refused = httpx.post(endpoint, content=body, headers={"content-type": "application/x-protobuf"})
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"
    assert otlp_status(refused).code == code_pb2.UNAUTHENTICATED

    with caplog.at_level("ERROR"):
        assert OTLPSpanExporter(endpoint=endpoint).export(finished) is SpanExportResult.FAILURE
    assert "401" in caplog.text  # logged as a failed export, not raised
    token = {"authorization": "Bearer sdk-secret"}
    exported = OTLPSpanExporter(endpoint=endpoint, headers=token).export(finished)
    assert exported is SpanExportResult.SUCCESS
    server.wait_projected()
    got = httpx.get(f"{server.url}/v1/traces/{trace_id}", headers=token, timeout=10)
    assert got.raise_for_status().json()["span_count"] == 1


def test_bad_input_gets_problem_json_and_appends_nothing(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        head = client.get("/readyz").json()["head"]
        cases = [
            ("/v1/events", b"{not json", 400),
            ("/v1/events", json.dumps({"type": "chain.created"}).encode(), 422),
            ("/v1/events", json.dumps({"type": "no.such.type", "chain_id": "x"}).encode(), 422),
            (
                "/v1/events",
                json.dumps(
                    {
                        "events": [
                            {"type": "chain.created", "chain_id": "ok"},
                            {"type": "chain.created"},
                        ]
                    }
                ).encode(),
                422,
            ),
            (
                "/v1/events",
                json.dumps({"type": "chain.created", "chain_id": "x", "surprise": 1}).encode(),
                422,
            ),
            (
                "/v1/events",
                json.dumps(
                    {
                        "type": "session.workspace_baseline_captured",
                        "session_id": "s",
                        "files": ["nonsense"],
                    }
                ).encode(),
                422,
            ),
            *(
                (
                    "/v1/events",
                    json.dumps(
                        {"type": "chain.created", "chain_id": "x", "occurred_at": t}
                    ).encode(),
                    422,
                )
                # epoch seconds and milliseconds, as a number or digits; no offset; no seconds
                for t in (
                    1767225600,
                    1767225600000,
                    "1767225600",
                    "2026-01-01T00:00:00",
                    "2026-01-01T00:00Z",
                    # well-formed, but no such instant in UTC
                    "0001-01-01T00:00:00+14:00",
                    "9999-12-31T23:59:59-14:00",
                )
            ),
            (
                "/v1/events",
                json.dumps(
                    {
                        "type": "session.evidence_recorded",
                        "session_id": "s",
                        "entry": {"type": "criterion", "recorded_at": "2026-01-01"},
                    }
                ).encode(),
                422,
            ),
            # RFC 8259 has no NaN or Infinity, and a double cannot hold 1e400: stored, they
            # became null (and three bodies of one content); also through the exact-integer
            # parser a 20-digit number sends the body to
            *(
                ("/v1/events", body, 400)
                for value in (b"NaN", b"Infinity", b"-Infinity", b"1e400", b"[1e400, 1e20]")
                for body in (
                    b'{"type": "approval.requested", "approval_id": "nan", "tool_input": %s}'
                    % value,
                    b'{"events": [{"type": "chain.created", "chain_id": "nan", '
                    b'"attributes": {"n": 12345678901234567890123, "x": %s}}]}' % value,
                )
            ),
            # integers the read models hold (64-bit signed), not clamped there
            *(
                (
                    "/v1/events",
                    json.dumps({"type": "chain.created", "chain_id": "i", **f}).encode(),
                    422,
                )
                for f in ({"github_issue_number": 2**70 + 1}, {"github_issue_number": -(2**63) - 1})
            ),
            (
                "/v1/events",
                json.dumps(
                    {
                        "type": "chain.stage_added",
                        "chain_id": "i",
                        "stage_id": "a",
                        "agent_id": "x",
                        "stage_number": 2**64 + 5,
                    }
                ).encode(),
                422,
            ),
            ("/v1/hooks/claude-code", json.dumps({"hook_event_name": "PreToolUse"}).encode(), 422),
            (
                "/v1/hooks/claude-code",
                b'{"session_id": "s", "hook_event_name": "Notification", "message": "m", '
                b'"n": 12345678901234567890123, "x": 1e400}',
                400,
            ),
            ("/v1/hooks/claude-code", json.dumps([1, 2]).encode(), 422),
            ("/v1/hooks/claude-code", b"\x00\x01", 400),
            # An unpaired surrogate escape is no Unicode character; through the exact-integer
            # parser (a 20-digit number) it reached the content hash and answered 500.
            *(
                (path, body, 400)
                for text in (b'"\\ud800"', b'"x\\udfff"')
                for path, body in (
                    (
                        "/v1/events",
                        b'{"type": "chain.created", "chain_id": "s", '
                        b'"attributes": {"n": 12345678901234567890123, "x": %s}}' % text,
                    ),
                    (
                        "/v1/events",
                        b'{"type": "chain.created", "chain_id": "s", '
                        b'"attributes": {"n": 12345678901234567890123, %s: 1}}' % text,
                    ),
                    ("/v1/events", b'{"type": "chain.created", "chain_id": %s}' % text),
                    (
                        "/v1/hooks/claude-code",
                        b'{"session_id": "s", "hook_event_name": "Notification", '
                        b'"message": %s, "n": 12345678901234567890123}' % text,
                    ),
                )
            ),
            # Nested past MAX_JSON_DEPTH (64): 300 levels answered 500 (pydantic's serializer
            # gave up), thousands through the exact-integer parser too (its recursion).
            *(
                (path, prefix + b"[" * levels + b"]" * levels + b"}}", 400)
                for levels in (63, 300, 5000)
                for path, prefix in (
                    (
                        "/v1/events",
                        b'{"type": "chain.created", "chain_id": "d", "attributes": {"x": ',
                    ),
                    (
                        "/v1/events",
                        b'{"type": "chain.created", "chain_id": "d", '
                        b'"attributes": {"n": 12345678901234567890123, "x": ',
                    ),
                    (
                        "/v1/hooks/claude-code",
                        b'{"session_id": "s", "hook_event_name": "PreToolUse", "tool_name": "t", '
                        b'"tool_use_id": "d", "tool_input": {"x": ',
                    ),
                )
            ),
        ]
        for path, body, status in cases:
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (body, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["status"] == status and problem["title"] and problem["type"]
        big = client.post(
            "/v1/events",
            content=b"x" * (17 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413
        assert client.get("/readyz").json()["head"] == head
        assert client.get("/v1/sessions/nope").status_code == 404
        assert client.get("/v1/streams/session/nope/events").status_code == 404
        assert client.get("/v1/sessions", params={"cursor": "%%%"}).status_code == 400
        for as_of in ("1767225600", "2026-01-01T00:00:00", "0001-01-01T00:00:00+14:00"):
            at = client.get("/v1/streams/session/nope/state", params={"as_of": as_of})
            assert at.status_code == 422 and "RFC 3339" in at.text, at.text


def test_json_routes_take_only_a_body_declared_json_and_refuse_others_with_415(
    sqlite_server: Server,
) -> None:
    # A browser sends text/plain, a form or multipart cross-origin without a CORS preflight,
    # and a fetch() of a Blob without any Content-Type: none of them may write events.
    bodies = {
        "/v1/events": lambda n: {"type": "chain.created", "chain_id": f"media-{n}"},
        "/v1/hooks/claude-code": lambda n: {
            "session_id": f"media-{n}",
            "hook_event_name": "Notification",
            "message": "m",
        },
    }
    refused_types = [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/jsonx",
        "application/json-seq",
        "application/+json",
        "json",
        "",
        None,  # no Content-Type at all
    ]
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        head = client.get("/readyz").json()["head"]
        for path, body in bodies.items():
            for content_type in refused_types:
                headers = {} if content_type is None else {"content-type": content_type}
                refused = client.post(path, content=json.dumps(body(0)).encode(), headers=headers)
                if content_type is None:
                    assert "content-type" not in refused.request.headers
                assert refused.status_code == 415, (path, content_type, refused.text)
                assert refused.headers["content-type"] == "application/problem+json"
                problem = refused.json()
                assert problem["status"] == 415
                assert problem["type"].endswith("/unsupported-media-type")
                assert "application/json" in problem["detail"]
        assert client.get("/readyz").json()["head"] == head

        accepted_types = [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON ; Charset=UTF-8",
            "application/vnd.runledger.events+json",
            "APPLICATION/MERGE-PATCH+JSON",
        ]
        for path, body in bodies.items():
            for n, content_type in enumerate(accepted_types, start=1):
                sent = client.post(
                    path,
                    content=json.dumps(body(n)).encode(),
                    headers={"content-type": content_type},
                )
                assert sent.status_code in (200, 201), (path, content_type, sent.text)
        assert client.get("/readyz").json()["head"] == head + 2 * len(accepted_types)


def test_a_hook_sent_with_an_idempotency_key_is_a_duplicate_whenever_it_is_resent(
    sqlite_server: Server,
) -> None:
    stop = {"session_id": "s-key", "hook_event_name": "Stop", "stop_hook_active": False}
    prompt = {"session_id": "s-key", "hook_event_name": "UserPromptSubmit", "prompt": "go"}
    url = "/v1/hooks/claude-code"
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:

        def events() -> list[dict[str, Any]]:
            return client.get("/v1/streams/session/s-key/events").json()["items"]

        for turn in range(2):  # the same payloads, two occurrences each: two keys
            for kind, body in (("p", prompt), ("s", stop)):
                sent = client.post(url, json=body, headers={"Idempotency-Key": f"{kind}{turn}"})
                assert sent.status_code == 200, sent.text
        recorded = events()
        # resent later, after the session moved on: still duplicates, by their keys
        for turn in range(2):
            for kind, body in (("p", prompt), ("s", stop)):
                again = client.post(url, json=body, headers={"Idempotency-Key": f"{kind}{turn}"})
                assert again.status_code == 200, again.text
        assert events() == recorded
        assert sum(e["payload"].get("reason") == "Stop" for e in recorded) == 2
        assert {e["event_id"] for e in recorded} >= {"cc:s-key:Stop:key:s0", "cc:s-key:Stop:key:s1"}
        for bad in ("two words", "x" * 256, "caf\u00e9".encode("latin-1")):
            refused = client.post(url, json=stop, headers={"Idempotency-Key": bad})
            assert refused.status_code == 422, (bad, refused.text)
        assert events() == recorded


def test_integers_of_any_size_in_free_values_are_kept_exact(sqlite_server: Server) -> None:
    huge = 2**70 + 1  # a float would come back as 1180591620717411303424
    body = {"type": "chain.created", "chain_id": "exact", "attributes": {"n": huge, "m": -huge}}
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        created = client.post("/v1/events", json=body)
        assert created.status_code == 201, created.text
        again = client.post("/v1/events", json=body)
        assert again.status_code == 200 and again.json()["duplicates"] == 1
        (event,) = client.get("/v1/streams/chain/exact/events").json()["items"]
    assert event["payload"]["attributes"] == {"n": huge, "m": -huge}


def test_values_nested_to_the_depth_limit_are_kept_whole_and_projected(
    sqlite_server: Server,
) -> None:
    # MAX_JSON_DEPTH (64) counts the body as level 1: the deepest value a body may carry must
    # pass the content hash, the stored event, the log's reads and the projector.
    deepest: Any = "bottom"
    for _ in range(62):  # the hook body 1, its tool_input 2, then 62 levels of arrays
        deepest = [deepest]
    hook = {
        "session_id": "deep",
        "hook_event_name": "PreToolUse",
        "tool_name": "mcp__x__y",
        "tool_use_id": "toolu_deep",
        "tool_input": {"x": deepest},
    }
    attributes = {"x": deepest[0][0]}  # a batch 1, its events 2, the event 3, attributes 4
    batch = {"events": [{"type": "chain.created", "chain_id": "deep", "attributes": attributes}]}
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        refused = client.post(
            "/v1/hooks/claude-code", json={**hook, "tool_input": {"x": [deepest]}}
        )
        assert refused.status_code == 400 and "64 levels" in refused.json()["detail"]
        assert client.post("/v1/hooks/claude-code", json=hook).status_code == 200
        created = client.post("/v1/events", json=batch)
        assert created.status_code == 200 and created.json()["created"] == 1, created.text
        sqlite_server.wait_projected()
        (call,) = client.get("/v1/sessions/deep/tool-calls").json()["items"]
        history = client.get("/v1/streams/session/deep/events").json()["items"]
        (chain,) = client.get("/v1/streams/chain/deep/events").json()["items"]
        assert client.get("/v1/chains/deep").status_code == 200
    assert call["tool_use_id"] == "toolu_deep"
    inputs = [e["payload"]["tool_input"] for e in history if "tool_input" in e["payload"]]
    assert inputs == [{"x": deepest}], history
    assert chain["payload"]["attributes"] == attributes


def test_json_ingest_bodies_may_be_gzip_or_deflate_encoded(sqlite_server: Server) -> None:
    batch = json.dumps(
        {"events": [{"type": "chain.created", "chain_id": f"coded-{i}"} for i in range(200)]}
    ).encode()
    session_id, pre, _ = one_real_session()
    hook = json.dumps(pre[0]).encode()
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:

        def post(path: str, body: bytes, encoding: str) -> httpx.Response:
            headers = {"content-type": "application/json", "content-encoding": encoding}
            return client.post(path, content=body, headers=headers)

        created = post("/v1/events", gzip.compress(batch), "gzip")
        assert created.status_code == 200, created.text
        assert created.json()["created"] == 200
        # the same batch as a zlib stream (HTTP's deflate), then as raw deflate: duplicates
        for body in (zlib.compress(batch), zlib.compress(batch)[2:-4]):
            again = post("/v1/events", body, "Deflate")
            assert again.status_code == 200 and again.json()["duplicates"] == 200, again.text
        assert post("/v1/hooks/claude-code", gzip.compress(hook), "gzip").json() == {}
        history = client.get(f"/v1/streams/session/{session_id}/events").json()["items"]
        assert [i["payload"]["tool_use_id"] for i in history if "tool_use_id" in i["payload"]] == [
            pre[0]["tool_use_id"]
        ]

        head = client.get("/readyz").json()["head"]
        bomb = gzip.compress(b" " * (17 * 1024 * 1024))  # 17 MiB decoded, ~17 kB sent
        for path, body in (("/v1/events", batch), ("/v1/hooks/claude-code", hook)):
            for sent, encoding, status in (
                (body, "br", 415),
                (gzip.compress(body), "gzip, br", 415),
                (gzip.compress(body)[:-12], "gzip", 400),  # truncated
                (body, "gzip", 400),  # not gzip at all
                (gzip.compress(body) + b"junk", "gzip", 400),
                (bomb, "gzip", 413),
            ):
                refused = post(path, sent, encoding)
                assert refused.status_code == status, (path, encoding, refused.text)
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["status"] == status
        assert client.get("/readyz").json()["head"] == head


def test_typed_events_answer_per_event_results_and_domain_refusals(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        created = client.post(
            "/v1/events", json={"type": "chain.created", "chain_id": "c-e2e", "event_id": "k1"}
        )
        assert created.status_code == 201
        [result] = created.json()["results"]
        again = client.post(
            "/v1/events", json={"type": "chain.created", "chain_id": "c-e2e", "event_id": "k1"}
        )
        assert again.status_code == 200
        assert again.json()["results"][0]["status"] == "duplicate"
        assert again.json()["results"][0]["position"] == result["position"]
        conflict = client.post(
            "/v1/events",
            json={"type": "chain.created", "chain_id": "c-e2e", "event_id": "k1", "title": "other"},
        )
        assert conflict.status_code == 409 and conflict.json()["type"].endswith(
            "idempotency-conflict"
        )
        batch = (
            client.post(
                "/v1/events",
                json={
                    "events": [
                        {
                            "type": "chain.stage_added",
                            "chain_id": "c-e2e",
                            "stage_id": "s1",
                            "agent_id": "planner",
                        },
                        {
                            "type": "chain.stage_transitioned",
                            "chain_id": "c-e2e",
                            "stage_id": "s1",
                            "to_status": "completed",
                        },
                        {"type": "approval.decided", "approval_id": "never", "decision": "deny"},
                    ]
                },
            )
            .raise_for_status()
            .json()
        )
        from api.schemas import EventResults

        EventResults.model_validate(batch)  # the documented response schema is what is sent
        assert [r["status"] for r in batch["results"]] == ["created", "rejected", "rejected"]
        assert (batch["created"], batch["duplicates"], batch["rejected"]) == (1, 0, 2)
        assert batch["results"][1]["error"]["status"] == 409
        assert batch["results"][1]["error"]["allowed"] == ["running"]
        assert batch["results"][2]["error"]["status"] == 404
        single = client.post(
            "/v1/events",
            json={
                "type": "chain.stage_transitioned",
                "chain_id": "c-e2e",
                "stage_id": "s1",
                "to_status": "failed",
            },
        )
        assert single.status_code == 409 and single.json()["allowed"] == ["running"]


def test_a_typed_event_without_an_id_is_keyed_by_the_documented_sha256_of_its_body(
    sqlite_server: Server,
) -> None:
    """The derived ``event_id`` is a client's idempotency key across retries and upgrades: it is
    pinned here by computing it independently (the standard library's sorted-key compact JSON
    of the body with its defaults filled in and its nulls dropped, as the README documents)."""
    body = {
        "type": "session.message_recorded",
        "session_id": "s-hash",
        "role": "user",
        "content": {"zeta": [1, 2.5, "é"], "alpha": None},
        "occurred_at": "2026-03-01T10:00:00+02:00",
        "attributes": {"b": 1, "a": {"y": True, "x": None}},
    }
    # what the README says is hashed: defaults (source, message_kind) in, top-level nulls out,
    # nested values verbatim (a null inside content or attributes stays)
    hashed = {**body, "source": "api", "message_kind": "message"}
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = "api:sha256:" + hashlib.sha256(text.encode()).hexdigest()
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        first = client.post("/v1/events", json=body)
        assert first.status_code == 201, first.text
        assert first.json()["results"][0]["event_id"] == expected
        # the same content with its keys in another order and an explicit null: the same key
        reordered = {"event_id": None, **dict(reversed(list(body.items())))}
        again = client.post("/v1/events", json=reordered)
        assert again.status_code == 200
        assert again.json()["results"][0] == {**first.json()["results"][0], "status": "duplicate"}
        # occurred_at is hashed in its normal form: Z for UTC, 6 fraction digits when it has any
        utc = {
            "type": "chain.created",
            "chain_id": "c-hash",
            "occurred_at": "2026-03-01T08:00:00.5+00:00",
        }
        normal = {
            **utc,
            "occurred_at": "2026-03-01T08:00:00.500000Z",
            "source": "api",
            "attributes": {},
        }
        text = json.dumps(normal, sort_keys=True, separators=(",", ":"))
        created = client.post("/v1/events", json=utc).raise_for_status().json()["results"][0]
        assert created["event_id"] == "api:sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_approval_requested_and_decided_once_shows_in_the_queue(sqlite_server: Server) -> None:
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        client.post(
            "/v1/events",
            json={
                "type": "approval.requested",
                "approval_id": "ap-e2e",
                "session_id": "s-ap",
                "tool_name": "Bash",
                "tool_input": {"command": "rm -rf /tmp/x"},
            },
        ).raise_for_status()
        sqlite_server.wait_projected()
        pending = client.get("/v1/approvals", params={"status": "pending"}).json()["items"]
        assert [a["approval_id"] for a in pending] == ["ap-e2e"]
        decided = client.post(
            "/v1/events",
            json={
                "type": "approval.decided",
                "approval_id": "ap-e2e",
                "decision": "deny",
                "decided_by": "alice",
                "comment": "no",
            },
        )
        assert decided.status_code == 201
        second = client.post(
            "/v1/events",
            json={"type": "approval.decided", "approval_id": "ap-e2e", "decision": "approve"},
        )
        assert second.status_code == 409 and second.json()["decision"] == "denied"
        sqlite_server.wait_projected()
        assert client.get("/v1/approvals", params={"status": "pending"}).json()["items"] == []
        [row] = client.get("/v1/approvals", params={"status": "denied"}).json()["items"]
        assert (row["decision"], row["source_decision"], row["decided_by"]) == (
            "denied",
            "deny",
            "alice",
        )


def test_a_server_restart_loses_nothing(make_server: Any) -> None:
    server = make_server()
    session_id, pre, post = one_real_session()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for payload in in_capture_order(pre, post)[:40]:
            client.post("/v1/hooks/claude-code", json=payload).raise_for_status()
        server.wait_projected()
        history = client.get(f"/v1/streams/session/{session_id}/events").json()
        log = client.get("/v1/log", params={"limit": 10000}).json()
        calls = client.get(f"/v1/sessions/{session_id}/tool-calls", params={"limit": 1000}).json()
    server.restart()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get(f"/v1/streams/session/{session_id}/events").json() == history
        assert client.get("/v1/log", params={"limit": 10000}).json() == log
        server.wait_projected()
        assert (
            client.get(f"/v1/sessions/{session_id}/tool-calls", params={"limit": 1000}).json()
            == calls
        )
        # and the idempotency index survived: a resend is a duplicate with the original position
        first = in_capture_order(pre, post)[0]
        client.post("/v1/hooks/claude-code", json=first).raise_for_status()
        assert client.get("/v1/log", params={"limit": 10000}).json()["head"] == log["head"]


def test_stream_state_at_a_version_and_as_of_a_time(sqlite_server: Server) -> None:
    entries = [("ac1", "fail"), ("ac1", "pass"), ("ac2", "pass"), ("ac1", "fail")]
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        stamps = []
        for i, (criterion, status) in enumerate(entries):
            client.post(
                "/v1/events",
                json={
                    "type": "session.evidence_recorded",
                    "session_id": "s-state",
                    "entry": {
                        "id": f"e{i}",
                        "type": "criterion",
                        "criterion_id": criterion,
                        "status": status,
                        "recorded_at": f"2026-01-01T00:00:0{i}Z",
                    },
                },
            ).raise_for_status()
            time.sleep(0.02)
        history = client.get("/v1/streams/session/s-state/events").json()["items"]
        paged = client.get(
            "/v1/streams/session/s-state/events", params={"after_version": 1, "limit": 2}
        ).json()
        assert [i["version"] for i in paged["items"]] == [2, 3]
        assert (paged["version"], paged["next_after_version"]) == (4, 3)
        assert [i["position"] for i in paged["items"]] == [i["position"] for i in history[1:3]]
        stamps = [item["recorded_at"] for item in history]
        at2 = client.get("/v1/streams/session/s-state/state", params={"version": 2}).json()
        assert at2["state"]["criterion_states"] == {
            "ac1": {"status": "pass", "updated_at": "2026-01-01T00:00:01Z", "source_id": "e1"}
        }
        as_of = client.get("/v1/streams/session/s-state/state", params={"as_of": stamps[2]}).json()
        assert as_of["version"] == 3
        assert set(as_of["state"]["criterion_states"]) == {"ac1", "ac2"}
        now = client.get("/v1/streams/session/s-state/state").json()
        assert now["state"]["criterion_states"]["ac1"]["status"] == "fail"
        assert (
            client.get("/v1/streams/session/s-state/state", params={"version": 9}).status_code
            == 404
        )
        assert (
            client.get(
                "/v1/streams/session/s-state/state", params={"as_of": "2000-01-01T00:00:00Z"}
            ).status_code
            == 404
        )
        sqlite_server.wait_projected()
        criteria = client.get("/v1/sessions/s-state/criteria").json()
        assert criteria["criterion_states"]["ac1"]["status"] == "fail"
        assert criteria["criterion_states"]["ac2"]["source_id"] == "e2"


def test_demo_posts_a_real_run_and_reports_chain_and_criteria(sqlite_server: Server) -> None:
    from api.demo import run_demo

    first = run_demo(sqlite_server.url)
    chain = first["chain"]
    assert chain["agent_flow"] == "design-doc-creator -> sprint-planner -> sprint-executor"
    assert (chain["status"], chain["stage_count"], chain["stages_completed"]) == ("completed", 3, 3)
    assert chain["cost_usd"] == pytest.approx(0.42 + 0.18 + 1.25)
    states = first["criteria"]["criterion_states"]
    assert states["ac1"]["status"] == "pass" and states["ac2"]["status"] == "manual_evidence"
    assert first["criteria"]["phase_blocks"]["phase1"]["status"] == "completed"
    assert first["events_written"] > 200
    second = run_demo(sqlite_server.url)
    assert second["events_written"] == 0


def test_a_token_guards_every_v1_route_and_projects_keep_tenants_apart(make_server: Any) -> None:
    server = make_server(RUNLEDGER_API_TOKEN="s3cret")
    event = {"type": "chain.created", "chain_id": "tenant-chain"}
    hook = {"session_id": "tenant-s", "hook_event_name": "Stop"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path, body in (("/v1/events", event), ("/v1/hooks/claude-code", hook)):
            denied = client.post(path, json=body)
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
            assert (
                client.post(path, json=body, headers={"Authorization": "Bearer wrong"}).status_code
                == 401
            )
        assert client.get("/v1/chains").status_code == 401
        assert client.get("/v1/log/tail").status_code == 401
        projections = client.get("/v1/projections")
        assert (
            projections.status_code == 401 and projections.headers["www-authenticate"] == "Bearer"
        )
        assert projections.headers["content-type"] == "application/problem+json"
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        # the document names the token on exactly the operations that ask for it
        document = client.get("/openapi.json").json()
        assert document["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"
        for path, item in document["paths"].items():
            for method, operation in item.items():
                answer = client.request(method, re.sub(r"\{[^}]+\}", "x", path))
                declared = operation.get("security") == [{"bearerToken": []}, {}]
                assert (answer.status_code == 401) == declared, (method, path, answer.status_code)
        auth = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/projections", headers=auth).json()[0]["lag"] >= 0
        assert (
            client.post(
                "/v1/events", json=event, headers={**auth, "X-Runledger-Project": "acme"}
            ).status_code
            == 201
        )
        assert (
            client.post(
                "/v1/events", json=event, headers=auth, params={"project": "other"}
            ).status_code
            == 201
        )
        assert (
            client.post(
                "/v1/events", json=event, headers={**auth, "X-Runledger-Project": "bad project!"}
            ).status_code
            == 400
        )
        # header and query together: the same project, or a 400 naming both
        same = client.post(
            "/v1/events",
            json=event,
            headers={**auth, "X-Runledger-Project": "acme"},
            params={"project": "acme"},
        )
        assert same.status_code == 200  # a duplicate of the event filed under acme above
        assert same.json()["results"][0]["status"] == "duplicate"
        for query in ("other", "bad project!"):
            clash = client.post(
                "/v1/events",
                json=event,
                headers={**auth, "X-Runledger-Project": "acme"},
                params={"project": query},
            )
            assert clash.status_code == 400, clash.text
            assert clash.headers["content-type"] == "application/problem+json"
            assert query in clash.json()["detail"]
        clash = client.get(
            "/v1/chains", headers={**auth, "X-Runledger-Project": "acme"}, params={"project": "x"}
        )
        assert clash.status_code == 400 and "'acme'" in clash.json()["detail"]
        server.wait_projected()
        acme = client.get("/v1/chains", headers={**auth, "X-Runledger-Project": "acme"}).json()[
            "items"
        ]
        default = client.get("/v1/chains", headers=auth).json()["items"]
        assert [c["chain_id"] for c in acme] == ["tenant-chain"] and default == []
        log = client.get("/v1/log", headers={**auth, "X-Runledger-Project": "other"}).json()[
            "items"
        ]
        assert [(i["stream"]["project"], i["type"]) for i in log] == [("other", "ChainCreated")]


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_large_tool_input_goes_to_the_blob_store_and_reads_back_whole(
    store: str, make_server: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    import hashlib

    if store == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        server = make_server(**s3.settings_env(bucket))
    else:
        server = make_server()

    session_id, pre, _ = one_real_session()
    payload = dict(pre[0])
    # A Write call whose content is beyond the 16 KiB default threshold.
    content = "".join(f"line {i}: {'é' * (i % 7)}\n" for i in range(4000))
    payload["tool_name"] = "Write"
    payload["tool_input"] = {"file_path": "/tmp/big.txt", "content": content}
    payload["tool_use_id"] = "toolu_large_input"
    expected = json.dumps(
        payload["tool_input"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert len(expected) > 16 * 1024
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.post("/v1/hooks/claude-code", json=payload).status_code == 200
        events = client.get(f"/v1/streams/session/{session_id}/events").json()["items"]
        started = [e for e in events if e["payload"].get("tool_use_id") == "toolu_large_input"]
        assert len(started) == 1
        ref = started[0]["payload"]["tool_input"]
        digest = hashlib.sha256(expected).hexdigest()
        assert ref == {
            "sha256": digest,
            "size_bytes": len(expected),
            "media_type": "application/json",
        }
        assert started[0]["payload"]["tool_input_sha256"] == digest
        blob = client.get(f"/v1/blobs/{digest}")
        assert blob.status_code == 200
        assert blob.content == expected
        assert json.loads(blob.content) == payload["tool_input"]
        assert client.get(f"/v1/blobs/{'0' * 64}").status_code == 404
        # Resent (a retry): the same reference, still one stored copy.
        assert client.post("/v1/hooks/claude-code", json=payload).status_code == 200
    local = sorted(p.name for p in (tmp_path / "var" / "blobs").rglob("*") if p.is_file())
    if store == "s3":  # in the bucket, read with a client of our own; nothing on local disk
        stored = s3.client().get_object(Bucket=bucket, Key=f"blobs/{digest}")
        assert stored["Body"].read() == expected
        assert stored["ContentType"] == "application/json"
        listed = s3.client().list_objects_v2(Bucket=bucket)["Contents"]
        assert [o["Key"] for o in listed] == [f"blobs/{digest}"]
        assert local == []
    else:
        assert local == [digest]


def test_when_s3_refuses_a_blob_the_request_is_503_and_appends_nothing(
    make_server: Any, s3_server: Any, s3_bucket: str
) -> None:
    server = make_server(**s3_server.settings_env(s3_bucket))
    s3_server.client().delete_bucket(Bucket=s3_bucket)  # empty: the server created it
    event = {
        "type": "session.tool_call_started",
        "session_id": "s3-down",
        "tool_name": "Write",
        "tool_use_id": "toolu_s3_down",
        "tool_input": {"content": "x" * 40_000},
    }
    with httpx.Client(base_url=server.url, timeout=60) as client:
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert s3_bucket in not_ready.json()["detail"]
        assert not_ready.headers["retry-after"] == "1"
        refused = client.post("/v1/events", json=event)
        assert refused.status_code == 503
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("/blob-store-unavailable")
        assert refused.headers["retry-after"] == "1"
        assert client.get("/v1/streams/session/s3-down/events").status_code == 404
        # Values below the threshold never touch S3: the same call with a small input lands.
        event["tool_input"] = {"content": "small"}
        assert client.post("/v1/events", json=event).status_code == 201
        items = client.get("/v1/streams/session/s3-down/events").json()["items"]
        # Only the landed call: its implied status change, then the call with the small input.
        assert [(i["version"], i["type"]) for i in items] == [
            (1, "SessionStatusChanged"),
            (2, "ToolCallStarted"),
        ]
        assert items[1]["payload"]["tool_input"] == {"content": "small"}


def test_the_log_tail_streams_commits_as_server_sent_events_and_resumes(
    sqlite_server: Server,
) -> None:
    def message(n: int) -> dict[str, Any]:
        return {
            "type": "session.message_recorded",
            "session_id": "tailed",
            "role": "user",
            "content": f"m{n}",
            "event_id": f"tail-{n}",
        }

    with (
        httpx.Client(base_url=sqlite_server.url, timeout=10) as client,
        httpx.Client(base_url=sqlite_server.url, timeout=10) as poster,
    ):
        before = poster.post("/v1/events", json=message(0)).json()["results"][0]["position"]
        with client.stream("GET", "/v1/log/tail") as tail:  # from the head: new events only
            assert tail.status_code == 200
            assert tail.headers["content-type"].startswith("text/event-stream")
            lines = tail.iter_lines()
            posted = [
                poster.post("/v1/events", json=message(n)).json()["results"][0] for n in (1, 2, 3)
            ]
            live = read_sse(lines, 3)
        assert [int(m["id"]) for m in live] == [r["position"] for r in posted]
        assert all(int(m["id"]) > before for m in live)
        assert {m["event"] for m in live} == {"MessageRecorded"}
        assert [m["data"]["event_id"] for m in live] == ["tail-1", "tail-2", "tail-3"]
        assert [m["data"]["payload"]["content"] for m in live] == ["m1", "m2", "m3"]
        log = client.get("/v1/log", params={"after": before}).json()["items"]
        assert [m["data"] for m in live] == log  # the same rendering as GET /v1/log

        # EventSource reconnecting after the first event sends its id back: the rest follows
        resume = {"Last-Event-ID": live[0]["id"]}
        with client.stream("GET", "/v1/log/tail", headers=resume, params={"after": 0}) as tail:
            assert [m["id"] for m in read_sse(tail.iter_lines(), 2)] == [
                live[1]["id"],
                live[2]["id"],
            ]
        with client.stream("GET", "/v1/log/tail", params={"after": 0}) as tail:
            replayed = read_sse(tail.iter_lines(), 5)  # the session's start, then m0 .. m3
        assert [m["data"]["event_id"] for m in replayed[1:]] == [f"tail-{n}" for n in range(4)]

        # Not a position: letters, a superscript digit (str.isdigit() holds for it), beyond
        # BIGINT, more digits than int() reads. Each used to be a 500 but the first.
        for value in (b"abc", b"\xb2", str(2**63).encode(), b"1" * 5000):
            bad = client.get("/v1/log/tail", headers={"Last-Event-ID": value})
            assert bad.status_code == 400, value
            assert bad.headers["content-type"] == "application/problem+json"
            assert "Last-Event-ID" in bad.json()["detail"]
        # Positions and versions beyond BIGINT are refused before the stores see them.
        for path, param in (
            ("/v1/log", "after"),
            ("/v1/log/tail", "after"),
            ("/v1/streams/session/tailed/events", "after_version"),
            ("/v1/streams/session/tailed/state", "version"),
        ):
            beyond = client.get(path, params={param: 2**63})
            assert beyond.status_code == 422, (path, beyond.text)
            assert beyond.json()["errors"][0]["loc"] == ["query", param]
        # The largest position or version: nothing after it (each was a 500: after + 1).
        last = client.get("/v1/log", params={"after": 2**63 - 1})
        assert last.status_code == 200
        assert last.json()["items"] == []
        events = "/v1/streams/session/tailed/events"
        last = client.get(events, params={"after_version": 2**63 - 1})
        assert last.status_code == 200
        assert last.json()["items"] == [] and last.json()["next_after_version"] is None


def test_a_commit_reaches_a_waiting_tail_at_once_from_any_worker(
    store_env: dict[str, str], make_server: Any
) -> None:
    # Tails poll the log's head only every 60 s here: each event arrives because its commit
    # woke the tail (SQLite: the writer of the one worker; PostgreSQL: NOTIFY, from whichever
    # of the two workers took the POST).
    env = {"RUNLEDGER_TAIL_POLL_INTERVAL_S": "60", **store_env}
    if store_env:
        env["RUNLEDGER_WORKERS"] = "2"
    server = make_server(**env)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        with client.stream("GET", "/v1/log/tail") as tail:
            lines = tail.iter_lines()
            assert next(lines) == "retry: 1000"
            for n in range(6):
                time.sleep(0.3)  # the tail is waiting again
                started = time.monotonic()
                # a connection of its own each: the kernel spreads them over the workers
                posted = httpx.post(
                    f"{server.url}/v1/events",
                    json={"type": "chain.created", "chain_id": f"woken-{n}"},
                    timeout=10,
                )
                assert posted.status_code == 201, posted.text
                [message] = read_sse(lines, 1)  # times out after 10 s: the poll is 60 s
                assert int(message["id"]) == posted.json()["results"][0]["position"]
                assert time.monotonic() - started < 10


def test_a_closed_tail_stops_reading_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import threading

    import uvicorn

    from api.app import create_app
    from api.routes import audit
    from infra.settings import Settings
    from tests.spies import Calls

    reads = Calls(monkeypatch, audit, "log_page")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Settings(data_dir=tmp_path, tail_poll_interval_s=0.1))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        watch = app.state.log_head
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
            client.stream("GET", "/v1/log/tail") as tail,
        ):
            lines = tail.iter_lines()  # kept: dropping the iterator closes the connection
            assert next(lines) == "retry: 1000"
            time.sleep(1.0)
            assert watch.running and watch.reads >= 3  # the head is watched while it listens
            assert reads.count == 1  # the first page; an idle tail reads no more of the log
        deadline = time.monotonic() + 10
        while watch.running:  # the server notices the disconnect; nobody waits: the watch stops
            assert time.monotonic() < deadline, "the log's head is still watched"
            time.sleep(0.05)
        head_reads = watch.reads
        time.sleep(0.5)
        assert (watch.reads, reads.count) == (head_reads, 1)
    finally:
        server.should_exit = True
        thread.join(10)


def test_integers_beyond_64_bits_are_kept_exact_from_hook_to_history(sqlite_server: Server) -> None:
    # orjson reads such integers as floats (rounded); the ledger must give back what was sent
    session_id, pre, _ = one_real_session()
    payload = dict(pre[0], tool_use_id="toolu_big_numbers")
    big = {
        "factorial_25": 15511210043330985984000000,
        "below_int64": -(2**63) - 1,
        "u64": 2**64 - 1,
    }
    payload["tool_input"] = {"command": "python -c 'print(25!)'", **big}
    typed = {
        "type": "session.tool_call_started",
        "session_id": session_id,
        "tool_use_id": "toolu_typed_big",
        "tool_name": "Bash",
        "tool_input": big,
    }
    with httpx.Client(base_url=sqlite_server.url, timeout=30) as client:
        assert client.post("/v1/hooks/claude-code", json=payload).status_code == 200
        assert client.post("/v1/events", json=typed).status_code == 201
        response = client.get(f"/v1/streams/session/{session_id}/events")
        assert response.status_code == 200, response.text
        events = json.loads(response.content)["items"]  # the stdlib keeps big integers exact
        # the log and its live tail render them too (the log holds only this session's events)
        log = json.loads(client.get("/v1/log").content)["items"]
        with client.stream("GET", "/v1/log/tail", params={"after": 0}) as tail:
            tailed = [m["data"] for m in read_sse(tail.iter_lines(), len(log))]
    assert log == tailed == events
    inputs = {
        e["payload"]["tool_use_id"]: e["payload"]["tool_input"]
        for e in events
        if e["payload"].get("tool_use_id") in ("toolu_big_numbers", "toolu_typed_big")
    }
    assert inputs["toolu_big_numbers"] == payload["tool_input"]
    assert inputs["toolu_typed_big"] == big
    assert all(type(v) is int for v in inputs["toolu_typed_big"].values())


def hold_the_log(store_env: dict[str, str], tmp_path: Path) -> Callable[[], None]:
    """Take the log's write lock from outside the server, as a long transaction of another
    process would (PostgreSQL: ``LOCK TABLE ... IN EXCLUSIVE MODE``, which lets reads through;
    SQLite: ``BEGIN IMMEDIATE``); returns what releases it."""
    if store_env:
        import psycopg

        conn = psycopg.connect(store_env["RUNLEDGER_DATABASE_URL"])
        schema = store_env["RUNLEDGER_DATABASE_SCHEMA"]
        conn.execute(f'LOCK TABLE "{schema}"."runledger_events" IN EXCLUSIVE MODE')

        def release() -> None:
            conn.commit()
            conn.close()

        return release
    import sqlite3

    db = sqlite3.connect(tmp_path / "var" / "runledger.sqlite", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")

    def release_sqlite() -> None:
        db.execute("COMMIT")
        db.close()

    return release_sqlite


def test_an_overloaded_writer_answers_503_and_appends_nothing_it_refused(
    store_env: dict[str, str], make_server: Any, tmp_path: Path
) -> None:
    server = make_server(RUNLEDGER_MAX_PENDING_EVENTS="4", **store_env)

    def chain(name: str) -> dict[str, str]:
        return {"type": "chain.created", "chain_id": name}

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/events", json=body, timeout=60)

    def writer() -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"{server.url}/readyz", timeout=10).json()["writer"]
        return state

    def wait_pending(count: int) -> None:
        deadline = time.monotonic() + 20
        while writer()["pending"] != count:
            assert time.monotonic() < deadline, writer()
            time.sleep(0.02)

    release = hold_the_log(store_env, tmp_path)
    with ThreadPoolExecutor(4) as pool, httpx.Client(base_url=server.url, timeout=60) as client:
        try:
            held = [pool.submit(post, chain(f"held-{n}")) for n in range(3)]
            wait_pending(3)  # one in the writer's transaction, blocked on the lock; two queued
            # 3 < 4 wait: let in, whatever its size
            held.append(pool.submit(post, {"events": [chain("held-3"), chain("held-4")]}))
            wait_pending(5)
            # saturated: every ingest route refuses, before reading the body
            batch = client.post("/v1/events", json={"events": [chain("late-a"), chain("late-b")]})
            single = client.post("/v1/events", json=chain("late-c"))
            hook = client.post(
                "/v1/hooks/claude-code",
                json={"session_id": "late-hook", "hook_event_name": "Notification", "message": "x"},
            )
            otlp = client.post(
                "/v1/traces", content=b"", headers={"content-type": "application/x-protobuf"}
            )
            assert not any(f.done() for f in held)  # nothing answered before its commit
            assert writer() == {"pending": 5, "max_pending": 4, "refused": 4}
        finally:
            release()
        assert [f.result().status_code for f in held] == [201, 201, 201, 200]  # 200: the batch
        for refused in (batch, single, hook, otlp):
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            if refused is otlp:  # OTLP/HTTP throttling: a google.rpc.Status, as sent
                from google.rpc import code_pb2

                assert otlp_status(refused).code == code_pb2.UNAVAILABLE
                continue
            assert refused.headers["content-type"].startswith("application/problem+json")
            problem = refused.json()
            assert problem["type"].endswith("/overloaded")
            assert (problem["pending"], problem["limit"]) == (5, 4)
        # What was refused left no trace; what was acknowledged is there.
        for name in ("late-a", "late-b", "late-c"):
            assert client.get(f"/v1/streams/chain/{name}/events").status_code == 404
        assert client.get("/v1/streams/session/late-hook/events").status_code == 404
        for n in range(5):
            assert client.get(f"/v1/streams/chain/held-{n}/events").status_code == 200
        assert len(client.get("/v1/log", params={"limit": 100}).json()["items"]) == 5
        # Drained, it takes requests again: the client's retry lands.
        assert writer()["pending"] == 0
        again = client.post("/v1/events", json={"events": [chain("late-a"), chain("late-b")]})
        assert again.status_code == 200 and again.json()["created"] == 2


def test_the_otlp_sdk_exporter_rides_out_an_overload_by_retrying_the_503(
    make_server: Any, tmp_path: Path
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    server = make_server(RUNLEDGER_MAX_PENDING_EVENTS="1")
    finished, trace_id = sdk_spans("tool.bash")
    exporter = OTLPSpanExporter(endpoint=f"{server.url}/v1/traces", timeout=30)

    def refused() -> int:
        count: int = httpx.get(f"{server.url}/readyz", timeout=10).json()["writer"]["refused"]
        return count

    release = hold_the_log({}, tmp_path)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(
                httpx.post,
                f"{server.url}/v1/events",
                json={"type": "chain.created", "chain_id": "holds-the-writer"},
                timeout=60,
            )
            deadline = time.monotonic() + 20
            while httpx.get(f"{server.url}/readyz", timeout=10).json()["writer"]["pending"] != 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            exported = pool.submit(exporter.export, finished)
            while refused() == 0:  # the SDK's first attempt was a 503
                assert time.monotonic() < deadline and not exported.done()
                time.sleep(0.02)
        finally:
            release()
        assert held.result().status_code == 201
        assert exported.result() is SpanExportResult.SUCCESS  # its retry landed
    assert refused() == 1
    server.wait_projected()
    trace = httpx.get(f"{server.url}/v1/traces/{trace_id}", timeout=10).raise_for_status().json()
    assert trace["span_count"] == 2


def test_a_client_gone_before_its_body_is_complete_is_one_log_line_and_appends_nothing(
    sqlite_server: Server,
) -> None:
    import socket

    assert sqlite_server.log_path is not None
    head = httpx.get(f"{sqlite_server.url}/readyz", timeout=10).json()["head"]
    routes = ("/v1/events", "/v1/hooks/claude-code", "/v1/traces")
    for path in routes:
        # Content-Length promises 100 bytes; 2 come, then the connection closes.
        with socket.create_connection(("127.0.0.1", sqlite_server.port), timeout=10) as raw:
            raw.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 100\r\n\r\n".encode()
                + b'{"'
            )
            time.sleep(0.2)  # the body read has begun
    deadline = time.monotonic() + 20
    while True:
        log = sqlite_server.log_path.read_text()
        said = [line for line in log.splitlines() if "client disconnected" in line]
        if len(said) == len(routes) or "Traceback" in log:
            break
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.05)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]
    assert "ClientDisconnect" not in log
    assert len(said) == len(routes)  # one line each
    assert [any(path in line for line in said) for path in routes] == [True] * len(routes)
    # the server still answers, and nothing was appended
    assert httpx.get(f"{sqlite_server.url}/readyz", timeout=10).json()["head"] == head


def test_the_server_rides_out_postgresql_ending_its_sessions(
    postgres_url: str, pg_schema: str, make_server: Any
) -> None:
    # A PostgreSQL restart, a failover or pg_terminate_backend leaves every pooled connection
    # dead: each one failed one request in turn (six 503s in a row), until the pool was swept.
    import psycopg

    name = f"runledger-{pg_schema}"  # libpq's PGAPPNAME tags the server's sessions (and only its)
    server = make_server(
        RUNLEDGER_DATABASE_URL=postgres_url, RUNLEDGER_DATABASE_SCHEMA=pg_schema, PGAPPNAME=name
    )

    def chain(n: int) -> httpx.Response:
        return httpx.post(
            f"{server.url}/v1/events",
            json={"type": "chain.created", "chain_id": f"c{n}"},
            timeout=30,
        )

    assert [chain(n).status_code for n in range(3)] == [201] * 3
    assert httpx.get(f"{server.url}/v1/streams/chain/c0/state", timeout=30).status_code == 200
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchall()
    assert len(ended) >= 3, ended  # the ledger's pool, the read models' pool, the projector...
    answers = [chain(n) for n in range(3, 13)]
    assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
    for n in range(13):
        state = httpx.get(f"{server.url}/v1/streams/chain/c{n}/state", timeout=30)
        assert state.status_code == 200, state.text
    server.wait_projected()
    chains = httpx.get(f"{server.url}/v1/chains", params={"limit": 100}, timeout=30).json()
    assert sorted(c["chain_id"] for c in chains["items"]) == sorted(f"c{n}" for n in range(13))


def test_a_killed_server_loses_nothing_it_acknowledged(
    store_env: dict[str, str], make_server: Any
) -> None:
    # "Acknowledged = committed": SIGKILL the server (no shutdown of any kind) while four
    # senders post batches; every event answered before the kill must be in the log after a
    # restart, once, and resending everything then completes the log without doubling any.
    server = make_server(**store_env)
    stop = threading.Event()
    acknowledged: set[str] = set()
    sent: list[dict[str, Any]] = []

    def batch(sender: int, n: int) -> list[dict[str, Any]]:
        return [
            {
                "type": "session.message_recorded",
                "event_id": f"crash-{sender}-{n}-{i}",
                "session_id": f"crash-{sender}-{i % 3}",
                "role": "assistant",
                "content": f"batch {n} event {i}",
            }
            for i in range(25)
        ]

    def send(sender: int) -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for n in itertools.count():
                if stop.is_set():
                    return
                events = batch(sender, n)
                sent.extend(events)
                try:
                    answer = client.post("/v1/events", json={"events": events})
                except httpx.TransportError:
                    return  # the server is gone: this batch stays unacknowledged
                assert answer.status_code == 200, answer.text
                results = answer.json()["results"]
                assert {r["status"] for r in results} == {"created"}
                acknowledged.update(r["event_id"] for r in results)

    with ThreadPoolExecutor(4) as pool:
        senders = [pool.submit(send, sender) for sender in range(4)]
        deadline = time.monotonic() + 30
        while len(acknowledged) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.process is not None
        server.process.kill()  # SIGKILL, mid-stream
        server.process.wait()
        stop.set()
        for sender in senders:
            sender.result()
    assert len(acknowledged) >= 500
    server.process = None
    server.start()

    def logged() -> list[str]:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return [e["event_id"] for e in all_log(client)]

    after_kill = logged()
    assert len(after_kill) == len(set(after_kill))
    assert acknowledged <= set(after_kill), len(acknowledged - set(after_kill))
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for start in range(0, len(sent), 100):
            answer = client.post("/v1/events", json={"events": sent[start : start + 100]})
            assert answer.status_code == 200, answer.text
            statuses = {r["status"] for r in answer.json()["results"]}
            assert statuses <= {"created", "duplicate"}, statuses
    final = logged()
    assert len(final) == len(set(final))
    assert {e["event_id"] for e in sent} <= set(final)
    server.wait_projected()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        sessions = all_pages(client, "/v1/sessions", limit=200)
    counts = {s["session_id"]: s["message_count"] for s in sessions}
    expected: dict[str, int] = {}
    for event in {e["event_id"]: e for e in sent}.values():
        expected[event["session_id"]] = expected.get(event["session_id"], 0) + 1
    assert counts == expected


def all_log(client: httpx.Client) -> list[dict[str, Any]]:
    """Every event of the default project's log, in position order (``GET /v1/log`` pages)."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get("/v1/log", params={"after": after, "limit": 1000}).raise_for_status()
        body = page.json()
        items.extend(body["items"])
        if body["next_after"] >= body["head"]:
            return items
        after = body["next_after"]
