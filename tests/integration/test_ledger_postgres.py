"""Idempotency and concurrency on a real PostgreSQL, through two real server processes."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.commands import message
from tests.recorders import assert_same_notifications
from tests.servers import Server
from tests.spies import Calls

pytestmark = pytest.mark.integration

RAW = (
    Path(__file__).resolve().parents[1]
    / "fixtures/claude-code-hooks/agentic-framework-2026-02/raw-all-sessions"
)


@pytest.fixture()
def two_servers(make_server: Any, postgres_url: str, pg_schema: str) -> tuple[Server, Server]:
    env = {"RUNLEDGER_DATABASE_URL": postgres_url, "RUNLEDGER_DATABASE_SCHEMA": pg_schema}
    first = make_server(**env)
    second = make_server(**env, RUNLEDGER_CREATE_TABLES="false", RUNLEDGER_PROJECTOR="off")
    return first, second


def full_log(server: Server) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        while True:
            page = (
                client.get("/v1/log", params={"after": after, "limit": 10_000})
                .raise_for_status()
                .json()
            )
            items.extend(page["items"])
            if not page["items"]:
                return items
            after = page["next_after"]


def test_the_same_events_posted_to_two_processes_at_once_are_recorded_once(
    two_servers: tuple[Server, Server],
) -> None:
    pre = json.loads((RAW / "pre_tool_use.json").read_text())
    post = json.loads((RAW / "post_tool_use.matching-pre.small.json").read_text())
    payloads = pre + post
    targets = [(server, payload) for payload in payloads for server in two_servers]

    def send(target: tuple[Server, dict[str, Any]]) -> int:
        server, payload = target
        return httpx.post(
            f"{server.url}/v1/hooks/claude-code", json=payload, timeout=60
        ).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, targets))
    assert Counter(statuses) == {200: len(targets)}

    log = full_log(two_servers[0])
    event_ids = Counter(item["event_id"] for item in log)
    assert all(count == 1 for count in event_ids.values())
    tool_events = [item for item in log if item["type"] in ("ToolCallStarted", "ToolCallEnded")]
    assert len(tool_events) == len(payloads)
    assert {i["payload"]["tool_use_id"] for i in tool_events if i["type"] == "ToolCallEnded"} == {
        p["tool_use_id"] for p in post
    }
    # Every PostToolUse was paired by tool_use_id even when its start landed through the other process.
    assert {i["payload"]["pairing"] for i in tool_events if i["type"] == "ToolCallEnded"} <= {
        "tool_use_id",
        "orphan",
    }


def test_a_race_on_one_stream_neither_loses_nor_duplicates_an_event(
    two_servers: tuple[Server, Server],
) -> None:
    count = 240

    def send(i: int, shift: int = 0) -> int:
        server = two_servers[(i + shift) % 2]
        body = {
            "type": "session.message_recorded",
            "session_id": "race",
            "event_id": f"m{i}",
            "role": "assistant",
            "content": f"message {i}",
        }
        return httpx.post(f"{server.url}/v1/events", json=body, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(count)))
    assert Counter(statuses) == {201: count}

    with httpx.Client(base_url=two_servers[1].url, timeout=30) as client:
        history = (
            client.get("/v1/streams/session/race/events", params={"limit": 10_000})
            .raise_for_status()
            .json()
        )
    messages = [i for i in history["items"] if i["type"] == "MessageRecorded"]
    assert sorted(i["event_id"] for i in messages) == sorted(f"m{i}" for i in range(count))
    versions = [i["version"] for i in history["items"]]
    assert versions == list(range(1, len(versions) + 1))
    positions = [i["position"] for i in history["items"]]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)

    # and a resend of all of them, through the other process, appends nothing
    with ThreadPoolExecutor(max_workers=16) as pool:
        again = list(pool.map(lambda i: send(i, shift=1), range(count)))
    assert Counter(again) == {200: count}
    assert len(full_log(two_servers[0])) == len(history["items"])


def test_a_fresh_writer_preloads_many_streams_in_one_query_and_sees_every_event(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domain.ledger import Command
    from infra.settings import Settings
    from infra.store import build_ledger

    settings = Settings(database_url=postgres_url, database_schema=pg_schema)
    first, _ = build_ledger(settings, create_table=True)

    def batch(tag: str) -> list[Command]:
        return [message(f"{tag}{i}", f"s{i % 40}", i) for i in range(400)]

    created = first.handle(batch("a"))
    second, second_log = build_ledger(settings, create_table=False)
    assert hasattr(second.recorder, "select_events_many")
    lookups = Calls(monkeypatch, second_log, "positions_of")
    resent = second.handle(batch("a"))
    assert [o.status for o in resent] == ["duplicate"] * 400
    assert lookups.count == 1  # the duplicates' positions in one query
    assert [(o.version, o.position) for o in resent] == [(o.version, o.position) for o in created]
    more = second.handle(batch("b"))
    assert all(o.status == "created" for o in more)
    for i in range(40):
        versions = [e.originator_version for e in first.history("session", f"s{i}")]
        assert versions == list(range(1, len(versions) + 1))
        assert len(versions) == 20  # 10 messages of each batch per stream


def test_state_as_of_a_time_on_postgresql_is_one_round_trip_and_agrees_with_the_event_reads(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    from domain.base import stream_id
    from domain.errors import StreamNotFoundError, VersionNotFoundError
    from infra.settings import Settings
    from infra.store import build_ledger

    settings = Settings(database_url=postgres_url, database_schema=pg_schema)
    ledger, _ = build_ledger(settings, create_table=True)
    for batch in range(60):  # 1,200 events; 20 per batch share close recorded_at instants
        outcomes = ledger.handle([message(f"m{batch}-{i}", "long", i) for i in range(20)])
        assert all(o.status == "created" for o in outcomes)
    events = ledger.history("session", "long")
    assert len(events) == 1200
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    sid = stream_id("default", "session", "long")
    searches = Calls(monkeypatch, ledger.recorder, "select_version_recorded_by")
    reads = Calls(monkeypatch, ledger.recorder, "select_events")
    decoded = Calls(monkeypatch, ledger.mapper, "to_domain_event")
    for version in [1, 2, 19, 20, 21, 599, 600, 601, 1199, 1200, *range(3, 1200, 97)]:
        for as_of in (
            stamps[version - 1] - timedelta(microseconds=1),
            stamps[version - 1],
            stamps[version - 1] + timedelta(microseconds=1),
        ):
            expected = max(
                (e.originator_version for e in events if e.timestamp <= as_of), default=0
            )
            searches.count = reads.count = decoded.count = 0
            if expected == 0:
                with pytest.raises(VersionNotFoundError):
                    ledger.version_as_of("session", "long", as_of)
            else:
                assert ledger.version_as_of("session", "long", as_of) == expected
            # the database searched: one round trip, no event read or decoded here
            assert (searches.count, reads.count, decoded.count) == (1, 0, 0)
            # the search over decoded events (SQLite's, and any store's with a compressor)
            assert ledger._search_recorded_at(sid, as_of) == (1200, expected)
    with pytest.raises(StreamNotFoundError):
        ledger.version_as_of("session", "nope", stamps[-1])
    assert ledger._search_recorded_at(stream_id("default", "session", "nope"), stamps[-1]) == (0, 0)


def test_a_stream_at_any_version_loads_in_one_round_trip_as_the_librarys_repository_loads_it(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from domain.errors import StreamNotFoundError
    from domain.ledger import _replay
    from infra.settings import Settings
    from infra.store import build_ledger

    settings = Settings(database_url=postgres_url, database_schema=pg_schema, snapshot_interval=7)
    ledger, _ = build_ledger(settings, create_table=True)
    for batch in range(5):  # 50 events: snapshots at 7, 14, ..., 49
        ledger.handle([message(f"m{batch}-{i}", "s", {"n": i}) for i in range(10)])
    sid = ledger.load("session", "s").id
    assert [s.originator_version for s in ledger.snapshots.get(sid)] == list(range(7, 50, 7))
    selects = Calls(monkeypatch, ledger.recorder, "select_events_after_snapshot")
    event_reads = Calls(monkeypatch, ledger.recorder, "select_events")
    snapshot_reads = Calls(monkeypatch, ledger.snapshots.recorder, "select_events")
    for version in [*range(1, 51), 51, 1000, None]:
        selects.count = event_reads.count = snapshot_reads.count = 0
        loaded = ledger.load("session", "s", version=version)
        assert selects.count == 1
        assert (event_reads.count, snapshot_reads.count) == (0, 0)
        # the library's repository: the snapshot, then the events after it, two queries
        expected = ledger.repository.get(sid, version=version, projector_func=_replay)
        assert loaded.version == expected.version == min(version or 50, 50)
        assert vars(loaded) == vars(expected)
    with pytest.raises(StreamNotFoundError):
        ledger.load("session", "nope")
    with pytest.raises(StreamNotFoundError):
        ledger.load("session", "nope", version=3)


def test_runledgers_recorders_read_in_binary_exactly_what_the_librarys_read_as_text(
    postgres_url: str, pg_schema: str
) -> None:
    from datetime import UTC, datetime

    from eventsourcing.application import project_aggregate
    from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder

    from domain.base import EventMeta, content_sha256, stream_id
    from domain.ledger import Command
    from infra.codec import FastPostgresAggregateRecorder, FastPostgresApplicationRecorder
    from infra.settings import Settings
    from infra.store import build_ledger

    settings = Settings(database_url=postgres_url, database_schema=pg_schema, snapshot_interval=7)
    ledger, _ = build_ledger(settings, create_table=True)
    commands = []
    for i in range(90):  # two sessions (tool inputs beyond ASCII) and 30 approvals
        meta = EventMeta(f"e{i}", content_sha256(i), datetime.now(UTC), "api")
        if i % 3 == 2:
            commands.append(Command("approval", f"a{i}", "request", meta, {"tool_name": "Bash"}))
        else:
            tool_input = {"command": f"printf 'é\\x00{i}'", "blob": "\u2603" * i}
            commands.append(
                Command(
                    "session",
                    f"s{i % 3}",
                    "start_tool_call",
                    meta,
                    {
                        "tool_name": "Bash",
                        "tool_input": tool_input,
                        "tool_input_sha256": content_sha256(tool_input),
                        "tool_use_id": f"toolu_{i}",
                    },
                )
            )
    assert all(o.status == "created" for o in ledger.handle(commands))

    fast = ledger.recorder
    snapshots = ledger.snapshots.recorder  # type: ignore[union-attr]
    assert type(fast) is FastPostgresApplicationRecorder
    assert type(snapshots) is FastPostgresAggregateRecorder
    library = PostgresApplicationRecorder(fast.datastore, events_table_name=fast.events_table_name)
    library_snapshots = PostgresAggregateRecorder(
        snapshots.datastore, events_table_name=snapshots.events_table_name
    )
    shapes: list[dict[str, Any]] = [
        {},
        {"gt": 3},
        {"lte": 9},
        {"gt": 2, "lte": 20},
        {"desc": True},
        {"limit": 4},
        {"desc": True, "limit": 1},
        {"desc": True, "lte": 14, "limit": 1},
        {"gt": 5, "desc": True, "limit": 3},
    ]
    for sid in (stream_id("default", "session", "s0"), stream_id("default", "session", "s1")):
        for shape in shapes:
            expected = library.select_events(sid, **shape)
            assert expected, shape
            assert fast.select_events(sid, **shape) == expected, shape
            assert snapshots.select_events(sid, **shape) == (
                library_snapshots.select_events(sid, **shape)
            ), shape
    assert library_snapshots.select_events(stream_id("default", "session", "s0"))  # taken

    assert_same_notifications(fast, library)

    # Loads fold without the library's per-event Protocol check, to the same states.
    for version in (1, 6, 7, 8, 20, 30):
        folded = ledger.repository.get(
            stream_id("default", "session", "s1"), version=version, projector_func=project_aggregate
        )
        loaded = ledger.load("session", "s1", version=version)
        assert loaded.version == folded.version == version
        assert loaded.state() == folded.state()


def test_an_append_is_one_call_that_takes_the_librarys_table_lock_and_is_all_or_nothing(
    postgres_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    import psycopg
    from eventsourcing.persistence import IntegrityError, StoredEvent

    from infra.settings import Settings
    from infra.store import build_ledger

    ledger, _ = build_ledger(
        Settings(database_url=postgres_url, database_schema=pg_schema), create_table=True
    )
    recorder: Any = ledger.recorder
    library_path = Calls(monkeypatch, recorder, "_library_insert_events")
    table = f'"{pg_schema}"."{recorder.events_table_name}"'

    outcomes = ledger.handle([message(f"m{i}", f"s{i % 3}") for i in range(30)])
    assert [o.status for o in outcomes] == ["created"] * 30
    positions = sorted(o.position for o in outcomes)
    assert positions == list(range(1, 31))  # one call, no gaps
    for stream in {o.stream_id for o in outcomes}:
        mine = [(o.version, o.position) for o in outcomes if o.stream_id == stream]
        assert mine == sorted(mine) and [v for v, _ in mine] == list(range(1, 11))
    assert library_path.count == 0

    # A transaction holding ROW EXCLUSIVE (what a plain INSERT takes) must hold the append back:
    # only the EXCLUSIVE lock conflicts with it, so an append that skipped the lock would pass.
    with psycopg.connect(postgres_url) as holder, psycopg.connect(postgres_url) as observer:
        holder.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
        done: list[Any] = []
        writer = threading.Thread(target=lambda: done.append(ledger.handle([message("late", "s")])))
        writer.start()
        waiting = False
        for _ in range(100):  # up to 5 s
            waiting = observer.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'ExclusiveLock' "
                "AND relation = %s::regclass",
                (table,),
            ).fetchone() == (1,)
            if waiting:
                break
            time.sleep(0.05)
        assert waiting and not done
        holder.commit()
        writer.join(timeout=10)
    assert done and done[0][0].status == "created"
    assert done[0][0].position == positions[-1] + 1

    # One conflicting event fails the whole call: nothing of it is appended.
    head = recorder.max_notification_id()
    existing = recorder.select_events(outcomes[0].stream_id, limit=1)[0]
    fresh = recorder.select_events(outcomes[1].stream_id, desc=True, limit=1)[0]
    batch = [
        StoredEvent(fresh.originator_id, fresh.originator_version + 1, fresh.topic, fresh.state),
        existing,
    ]
    with pytest.raises(IntegrityError):
        recorder.insert_events(batch)
    assert recorder.max_notification_id() == head
    assert recorder.select_events(fresh.originator_id, gt=fresh.originator_version) == []
    assert library_path.count == 0


def test_a_database_without_the_append_function_appends_through_the_librarys_transaction(
    postgres_url: str, pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from infra.settings import Settings
    from infra.store import build_ledger

    settings = Settings(database_url=postgres_url, database_schema=pg_schema)
    first, _ = build_ledger(settings, create_table=True)
    function = first.recorder.insert_function.as_string(None)  # type: ignore[attr-defined]
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # as an older migrate left it
        conn.execute(f"DROP FUNCTION {function}")
    older, _ = build_ledger(settings, create_table=False)
    with caplog.at_level("WARNING", logger="runledger.codec"):
        created = older.handle([message("a", "s"), message("b", "s")])
        more = older.handle([message("c", "s")])
    assert [o.status for o in created + more] == ["created"] * 3
    assert [o.version for o in created + more] == [1, 2, 3]
    assert [o.position for o in created + more] == [1, 2, 3]
    warnings = [r for r in caplog.records if "runledger migrate" in r.getMessage()]
    assert len(warnings) == 1  # once, not per append
    migrated, _ = build_ledger(settings, create_table=True)  # `runledger migrate` installs it
    assert migrated.recorder._insert_function_missing is False  # type: ignore[attr-defined]
    assert [o.position for o in migrated.handle([message("d", "s")])] == [4]
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_proc WHERE oid = %s::regprocedure",
            (f"{function}(uuid[], int8[], text[], bytea[])",),
        ).fetchone() == (1,)


def test_hook_idempotency_holds_for_a_writer_that_restores_the_session_from_a_snapshot(
    postgres_url: str, pg_schema: str
) -> None:
    # A fresh writer (another process, a restart) restores a long session from its newest
    # snapshot, which leaves out the event ids and the ended tool calls: it must fetch them from
    # the key index to tell a retry, a resumed subagent and Claude Code's next Stop apart.
    from datetime import UTC, datetime

    from api.hooks import map_hook
    from domain.session import HookEventRecorded, ToolCallStarted
    from infra.settings import Settings
    from infra.store import build_ledger

    settings = Settings(database_url=postgres_url, database_schema=pg_schema, snapshot_interval=5)
    now = datetime(2026, 2, 11, 19, 0, tzinfo=UTC)
    base = {"session_id": "s-snap", "transcript_path": "/t.jsonl", "cwd": "/repo"}
    start = {**base, "hook_event_name": "SessionStart", "source": "startup"}
    subagent = {**base, "hook_event_name": "SubagentStart", "agent_id": "a1", "agent_type": "x"}
    subagent_stop = {**subagent, "hook_event_name": "SubagentStop", "stop_hook_active": False}
    tool = {**base, "hook_event_name": "PreToolUse", "tool_name": "Bash",
            "tool_input": {"command": "ls"}, "tool_use_id": "t1"}  # fmt: skip
    tool_end = {**tool, "hook_event_name": "PostToolUse", "tool_response": {"stdout": ""}}
    stop = {**base, "hook_event_name": "Stop", "stop_hook_active": False}

    def send(ledger: Any, payload: dict[str, Any]) -> str:
        (outcome,) = ledger.handle(map_hook(payload, project="default", received_at=now))
        return outcome.status if outcome.status != "rejected" else type(outcome.error).__name__

    first, _ = build_ledger(settings, create_table=True)
    prompts = [
        {**base, "hook_event_name": "UserPromptSubmit", "prompt": f"p{i}"} for i in range(12)
    ]
    for payload in [start, subagent, tool, tool_end, subagent_stop, stop, *prompts]:
        assert send(first, payload) == "created", payload
    sid = first.load("session", "s-snap").id
    newest = max(s.originator_version for s in first.snapshots.get(sid))
    assert newest > 8, "the calls ended before the newest snapshot"

    second, _ = build_ledger(settings, create_table=False)  # a cold writer
    assert send(second, tool) == "duplicate"  # a late retry of an ended call's start
    assert send(second, {**tool, "tool_input": {"command": "rm"}}) == "IdempotencyConflictError"
    assert send(second, subagent) == "created"  # the subagent resumed
    assert send(second, subagent) == "duplicate"  # ... and that start retried at once
    assert send(second, subagent_stop) == "created"
    assert send(second, stop) == "created"  # the next turn's identical Stop
    assert send(second, stop) == "duplicate"

    history = second.history("session", "s-snap")
    assert [e.tool_use_id for e in history if isinstance(e, ToolCallStarted)] == ["a1", "t1"]
    kept = [e.hook_event_name for e in history if isinstance(e, HookEventRecorded)]
    assert kept == ["SubagentStart", "SubagentStop"]
    stop_ids = [e.event_id for e in history if e.event_id.startswith("cc:s-snap:Stop:")]
    assert len(stop_ids) == 2 and stop_ids[1].startswith(stop_ids[0] + "@")
