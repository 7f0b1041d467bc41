"""End to end, the read routes: a real ``runledger serve`` on SQLite and on PostgreSQL, read over
HTTP with httpx. Hand-made cursors, status filters, the per-project log, ids holding ``/``, and a
tool call whose end arrives before its start."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import Server, read_sse

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


def paths_to_every_status(
    transitions: dict[Any, tuple[str, ...]], start: Any
) -> dict[str, list[str]]:
    """For each status reachable from ``start`` along ``transitions``, the shortest list of
    moves reaching it (breadth first)."""
    paths: dict[Any, list[str]] = {start: []}
    queue = [start]
    while queue:
        current = queue.pop(0)
        for target in transitions.get(current, ()):
            if target not in paths:
                paths[target] = [*paths[current], target]
                queue.append(target)
    return {status: moves for status, moves in paths.items() if status is not None}


def test_status_filters_accept_every_status_the_read_models_hold_and_refuse_others_with_a_422(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    from domain.chain import CHAIN_TRANSITIONS
    from domain.session import STATUS_TRANSITIONS
    from projections import chains, sessions

    # one session per status the domain's machine reaches from a new stream (None), one more
    # started and one ended; one chain per status reached from a created (active) one
    events: list[dict[str, Any]] = []
    expected_sessions: dict[str, set[str]] = {}
    for status, moves in paths_to_every_status(STATUS_TRANSITIONS, None).items():
        session_id = f"s-{status}"
        expected_sessions.setdefault(status, set()).add(session_id)
        events += [
            {"type": "session.status_changed", "session_id": session_id, "status": move}
            for move in moves
        ]
    events += [
        {"type": "session.started", "session_id": "s-started"},
        {"type": "session.started", "session_id": "s-ended"},
        {"type": "session.ended", "session_id": "s-ended"},
    ]
    expected_sessions["running"].add("s-started")
    expected_sessions["completed"].add("s-ended")
    expected_chains: dict[str, set[str]] = {}
    for status, moves in paths_to_every_status(CHAIN_TRANSITIONS, "active").items():
        chain_id = f"c-{status}"
        expected_chains[status] = {chain_id}
        events.append({"type": "chain.created", "chain_id": chain_id})
        events += [
            {"type": "chain.status_changed", "chain_id": chain_id, "status": move} for move in moves
        ]
    # exactly the statuses the projections declare, none left out, none they cannot hold
    assert set(expected_sessions) == set(sessions.STATUSES)
    assert set(expected_chains) == set(chains.STATUSES)

    server = make_server(**store_env)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v1/events", json={"events": events}).raise_for_status().json()
        assert answer["created"] == len(events), answer
        server.wait_projected()
        for path, expected, key in (
            ("/v1/sessions", expected_sessions, "session_id"),
            ("/v1/chains", expected_chains, "chain_id"),
        ):
            for status, ids in expected.items():
                page = client.get(path, params={"status": status}).raise_for_status().json()
                assert {item[key] for item in page["items"]} == ids, (path, status)
                assert {item["status"] for item in page["items"]} == {status}
            refused = client.get(path, params={"status": "weird"})
            assert refused.status_code == 422, (path, refused.text)
            assert refused.headers["content-type"] == PROBLEM
            problem = refused.json()
            assert problem["type"] == "https://runledger.dev/problems/validation-error"
            assert problem["errors"][0]["loc"] == ["query", "status"]
            assert all(status in problem["detail"] for status in expected), problem["detail"]
        # the enum is the OpenAPI document's too
        document = client.get("/openapi.json").json()
        for path, statuses in (
            ("/v1/sessions", sessions.STATUSES),
            ("/v1/chains", chains.STATUSES),
        ):
            (parameter,) = [
                p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "status"
            ]
            assert parameter["schema"]["anyOf"][0]["enum"] == list(statuses), path


def started(n: int, prefix: str) -> dict[str, Any]:
    """A session start: one event (a message would add its session's implied status change)."""
    return {"type": "session.started", "session_id": f"{prefix}-{n}", "event_id": f"{prefix}-{n}"}


def post_to(client: httpx.Client, project: str, events: list[dict[str, Any]]) -> list[int]:
    """Post ``events`` to ``project`` in batches of 5,000; their positions."""
    positions: list[int] = []
    for start in range(0, len(events), 5000):
        answer = client.post(
            "/v1/events",
            json={"events": events[start : start + 5000]},
            headers={"X-Runledger-Project": project},
            timeout=120,
        ).raise_for_status()
        positions += [r["position"] for r in answer.json()["results"]]
    return positions


def walk_log(
    client: httpx.Client, project: str, limit: int
) -> tuple[list[list[int]], dict[str, Any]]:
    """Every page of ``/v1/log`` for ``project`` from the start, until ``next_after`` reaches
    ``head``: the positions of each page's items, and the last page."""
    pages: list[list[int]] = []
    after = 0
    while True:
        page = (
            client.get("/v1/log", params={"project": project, "after": after, "limit": limit})
            .raise_for_status()
            .json()
        )
        pages.append([item["position"] for item in page["items"]])
        assert page["next_after"] > after or page["next_after"] == page["head"]
        after = page["next_after"]
        if after == page["head"]:
            return pages, page


def test_a_log_page_counts_the_projects_events_and_reads_on_past_other_projects(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    server = make_server(**store_env)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # otel's events among default's: 2, then 7 of default, 1, 12 of default, 3, 5 of default
        mine: list[int] = []
        n = 0
        for own, others in ((2, 7), (1, 12), (3, 5)):
            mine += post_to(client, "otel", [started(n + i, "o") for i in range(own)])
            post_to(client, "default", [started(n + i, "d") for i in range(others)])
            n += own + others
        pages, last = walk_log(client, "otel", limit=3)
        # every page but the one reaching the head holds `limit` of otel's events (the first
        # page used to hold 2 and the second none, with more to come)
        assert pages == [mine[0:3], mine[3:6], []]
        assert last["next_after"] == last["head"] == mine[-1] + 5
        pages, last = walk_log(client, "default", limit=5)
        read = [position for page in pages for position in page]
        assert read == sorted(set(range(1, last["head"] + 1)) - set(mine))
        assert all(len(page) == 5 for page in pages[:-1])


def test_a_log_page_reads_at_most_ten_thousand_positions_and_the_tail_reads_on_past_them(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    from api.routes.audit import LOG_SCAN_MAX_POSITIONS

    assert LOG_SCAN_MAX_POSITIONS == 10_000  # as README.md and the OpenAPI description say
    server = make_server(**store_env)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        (first,) = post_to(client, "sparse", [started(0, "s")])
        post_to(client, "default", [started(i, "d") for i in range(LOG_SCAN_MAX_POSITIONS + 10)])
        (second,) = post_to(client, "sparse", [started(1, "s")])
        page = client.get("/v1/log", params={"project": "sparse", "limit": 5}).json()
        assert [item["position"] for item in page["items"]] == [first]
        assert page["next_after"] == 0 + LOG_SCAN_MAX_POSITIONS < page["head"]  # after=0
        page = client.get(
            "/v1/log", params={"project": "sparse", "limit": 5, "after": page["next_after"]}
        ).json()
        assert [item["position"] for item in page["items"]] == [second]
        assert page["next_after"] == page["head"] == second

        # the live tail reads the log with the same pages, and skips the gap without a stall
        with client.stream("GET", "/v1/log/tail", params={"project": "sparse", "after": 0}) as tail:
            assert tail.status_code == 200
            received = read_sse(tail.iter_lines(), 2)
        assert [int(m["id"]) for m in received] == [first, second]
        assert [m["data"]["event_id"] for m in received] == ["s-0", "s-1"]


def test_ids_holding_a_slash_read_back_on_every_by_id_route_encoded_or_raw(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    events = [
        {"type": "session.started", "session_id": "a/b"},
        {"type": "session.tool_call_started", "session_id": "a/b", "tool_name": "Bash",
         "tool_use_id": "tu/1", "tool_input": {"command": "ls"}},
        # an id whose last segment is a suffix of a session route
        {"type": "session.started", "session_id": "c/tool-calls"},
        {"type": "session.tool_call_started", "session_id": "c/tool-calls", "tool_name": "Read",
         "tool_use_id": "tu-2", "tool_input": {}},
        {"type": "session.started", "session_id": "c"},
        {"type": "session.started", "session_id": "line\nbreak/x"},
        {"type": "chain.created", "chain_id": "c/d", "title": "slashed"},
        {"type": "approval.requested", "approval_id": "e/f", "session_id": "a/b",
         "tool_name": "Bash", "tool_input": {"command": "ls"}},
    ]  # fmt: skip
    server = make_server(**store_env)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/v1/events", json={"events": events}).raise_for_status().json()
        assert answer["created"] == len(events), answer
        server.wait_projected()

        for slash in ("%2F", "/"):  # the ids percent-encoded, then raw

            def get(template: str, *ids: str, slash: str = slash) -> dict[str, Any]:
                url = template.format(*(i.replace("/", slash) for i in ids))
                got = client.get(url)
                assert got.status_code == 200, (url, got.text)
                return got.json()

            assert get("/v1/sessions/{}", "a/b")["session_id"] == "a/b"
            calls = get("/v1/sessions/{}/tool-calls", "a/b")["items"]
            assert [c["tool_use_id"] for c in calls] == ["tu/1"]
            assert get("/v1/sessions/{}/criteria", "a/b") == {
                "criterion_states": {},
                "phase_blocks": {},
            }
            history = get("/v1/streams/session/{}/events", "a/b")
            assert [e["type"] for e in history["items"]] == ["SessionStarted", "ToolCallStarted"]
            state = get("/v1/streams/session/{}/state", "a/b")["state"]
            assert state["open_tool_calls"] == [{"tool_use_id": "tu/1", "tool_name": "Bash"}]
            assert get("/v1/chains/{}", "c/d")["title"] == "slashed"
            assert get("/v1/streams/chain/{}/state", "c/d")["state"]["status"] == "active"
            approval = get("/v1/streams/approval/{}/state", "e/f")["state"]
            assert (approval["status"], approval["request"]["session_id"]) == ("pending", "a/b")
            assert len(get("/v1/streams/approval/{}/events", "e/f")["items"]) == 1

            # "c/tool-calls": the suffix routes and the stream routes take it whole (a fixed
            # suffix is the path's last segment) ...
            calls = get("/v1/sessions/{}/tool-calls", "c/tool-calls")["items"]
            assert [c["tool_use_id"] for c in calls] == ["tu-2"]
            state = get("/v1/streams/session/{}/state", "c/tool-calls")["state"]
            assert state["open_tool_calls"] == [{"tool_use_id": "tu-2", "tool_name": "Read"}]
            # ... and /v1/sessions/c%2Ftool-calls is session c's tool calls (README.md)
            assert get("/v1/sessions/{}", "c/tool-calls") == {"items": [], "next_cursor": None}

        # line breaks too (Starlette's own path convertor stops at one)
        session = client.get("/v1/sessions/line%0Abreak%2Fx").raise_for_status().json()
        assert session["session_id"] == "line\nbreak/x"
        state = client.get("/v1/streams/session/line%0Abreak%2Fx/state").raise_for_status()
        assert state.json()["state"]["status"] == "running"
        # unknown ids holding a slash: 404 problems from the routes, not "Not Found" (no route)
        for path in ("/v1/sessions/x%2Fy", "/v1/chains/x%2Fy", "/v1/streams/session/x%2Fy/state"):
            missing = client.get(path)
            assert missing.status_code == 404, path
            assert missing.headers["content-type"] == PROBLEM
            assert missing.json()["type"] != "about:blank", (path, missing.json())
        # HEAD and a 405's Allow at such paths
        head = client.head("/v1/sessions/a%2Fb")
        assert head.status_code == 200 and head.content == b""
        assert (
            head.headers["content-length"]
            == client.get("/v1/sessions/a%2Fb").headers["content-length"]
        )
        for path in (
            "/v1/sessions/a/b",
            "/v1/sessions/a%2Fb/tool-calls",
            "/v1/streams/chain/c/d/state",
        ):
            refused = client.post(path)
            assert refused.status_code == 405, path
            assert refused.headers["allow"] == "GET, HEAD", path


RAW_HOOKS = Path(__file__).resolve().parents[1] / (
    "fixtures/claude-code-hooks/agentic-framework-2026-02/raw-all-sessions"
)


def test_a_pre_tool_use_arriving_after_its_post_tool_use_pairs_the_call_live_and_rebuilt(
    store_env: dict[str, str], make_server: Callable[..., Server]
) -> None:
    pre = json.loads((RAW_HOOKS / "pre_tool_use.json").read_text())
    post = {p["tool_use_id"]: p for p in json.loads(
        (RAW_HOOKS / "post_tool_use.matching-pre.small.json").read_text()
    )}  # fmt: skip
    start = next(p for p in pre if p["tool_use_id"] in post)
    end = post[start["tool_use_id"]]
    session_id, tool_use_id = start["session_id"], start["tool_use_id"]
    server = make_server(**store_env)
    with httpx.Client(base_url=server.url, timeout=30) as client:

        def the_call() -> dict[str, Any]:
            server.wait_projected()
            calls = client.get(f"/v1/sessions/{session_id}/tool-calls").raise_for_status()
            [call] = calls.json()["items"]
            return dict(call)

        client.post("/v1/hooks/claude-code", json=end).raise_for_status()
        assert the_call()["pairing"] == "orphan"  # its start has not arrived (yet)
        client.post("/v1/hooks/claude-code", json=start).raise_for_status()
        live = the_call()
        assert live["tool_use_id"] == tool_use_id
        assert live["pairing"] == "tool_use_id"
        assert live["start_position"] > live["end_position"] is not None
        assert live["tool_name"] == start["tool_name"] and live["success"] is True
        session = client.get(f"/v1/sessions/{session_id}").raise_for_status().json()
        assert session["tool_call_count"] == 1

        rebuild = subprocess.run(
            [str(Path(sys.executable).with_name("runledger")), "rebuild", "--all"],
            env=server.env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert rebuild.returncode == 0, rebuild.stderr
        assert the_call() == live
        assert client.get(f"/v1/sessions/{session_id}").json()["tool_call_count"] == 1
