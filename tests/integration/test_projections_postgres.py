"""Projections on a real PostgreSQL: the log in eventsourcing's PostgreSQL recorder, the read
models in ``PostgresDatabase``, both in a schema of the test's own.

Rebuild equals incremental row for row (through both write paths: per-row upserts for small
pages, ``COPY`` for large ones), a crash mid-page resumes without doubling, positions and lag are
reported correctly (also across gaps in the notification ids), and a second projector does no
work while the first holds the lock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from domain.base import LedgerEvent
from domain.ledger import Ledger
from infra.database import PostgresDatabase
from projections import sessions
from projections.base import Rows, fold_events
from projections.catalog import NAMES, PROJECTIONS
from projections.runner import Projector
from projections.schema import INT64_MAX, TABLES
from projections.views import Views
from tests.unit.test_projections import (
    COUNTING,
    TRACE_1,
    Writer,
    check_idle_while_another_holds_the_lock,
    dump_tables,
    log_events,
    positions,
    span,
    with_sessions_fold,
    write_many,
    write_realistic,
)

pytestmark = pytest.mark.integration


def ledger_env(url: str, schema: str) -> dict[str, str]:
    info = conninfo_to_dict(url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(info.get("dbname") or "postgres"),
        "POSTGRES_HOST": str(info.get("host") or "127.0.0.1"),
        "POSTGRES_PORT": str(info.get("port") or "5432"),
        "POSTGRES_USER": str(info.get("user") or "postgres"),
        "POSTGRES_PASSWORD": str(info.get("password") or ""),
        "POSTGRES_SCHEMA": schema,
        "CREATE_TABLE": "y",
    }


@pytest.fixture()
def pg_ledger(postgres_url: str, pg_schema: str) -> Iterator[Ledger]:
    ledger = Ledger(ledger_env(postgres_url, pg_schema))
    yield ledger
    ledger.close()


@pytest.fixture()
def pg_db(postgres_url: str, pg_schema: str) -> Iterator[PostgresDatabase]:
    db = PostgresDatabase(postgres_url, schema=pg_schema)
    yield db
    db.close()


def write_bulk(writer: Writer, sessions_count: int = 6, calls: int = 30) -> None:
    """Enough rows per table in one page for the COPY write path (>= 64 rows)."""
    for s in range(sessions_count):
        sid = f"bulk-{s}"
        trace_id = f"{s + 1:032x}"
        writer.add("session", sid, "start", agent="claude-code", cwd=f"/w/{s}")
        for i in range(calls):
            writer.add("session", sid, "start_tool_call", tool_use_id=f"tu-{i}", tool_name="Bash",
                       tool_input={"i": i}, tool_input_sha256=f"{i:064x}")  # fmt: skip
            writer.add("session", sid, "end_tool_call", tool_use_id=f"tu-{i}", tool_name="Bash",
                       success=i % 4 != 0, error=None if i % 4 else "exit 1")  # fmt: skip
            writer.add("trace", trace_id, "record_span", span=span(
                f"{i + 1:016x}", None if i == 0 else f"{1:016x}", f"op {i}",
                1_700_000_000_000_000_000 + i * 1_000, 1_700_000_000_000_000_000 + i * 1_000 + 777,
                status_code="STATUS_CODE_ERROR" if i % 7 == 0 else "STATUS_CODE_OK",
                attributes={"session.id": sid, "gen_ai.usage.input_tokens": 10 + i,
                            "gen_ai.usage.cost_usd": 0.001 * i, "nested": {"list": [1, 2.5, None]}}))  # fmt: skip
            writer.add("session", sid, "record_evidence",
                       entry={"id": f"e{i}", "type": "criterion", "criterion_id": f"ac{i % 5}",
                              "status": "pass" if i % 2 else "fail",
                              "recorded_at": f"2026-05-01T12:{i:02d}:00Z"})  # fmt: skip
        writer.flush()


def test_incremental_projection_equals_a_rebuild_row_for_row_on_postgres(
    pg_ledger: Ledger, pg_db: PostgresDatabase
) -> None:
    small_pages = Projector(pg_ledger, pg_db, page_size=4)
    small_pages.create_tables()
    small_pages.create_tables()  # idempotent
    writer = Writer(pg_ledger)
    write_realistic(writer, lambda: small_pages.run_once() and None)
    big_pages = Projector(pg_ledger, pg_db, page_size=1000)
    write_bulk(writer)
    assert big_pages.run_once() > 500
    head = pg_ledger.recorder.max_notification_id()
    incremental = dump_tables(pg_db)
    assert all(incremental[name] for name in TABLES), "the scenario fills every table"

    assert big_pages.rebuild() == head
    assert dump_tables(pg_db) == incremental
    assert small_pages.rebuild(["sessions", "chain_summaries", "spans"]) == head
    assert dump_tables(pg_db) == incremental
    # and equal to the folds run in memory, with no database in between
    assert incremental == fold_events(PROJECTIONS, log_events(pg_ledger))

    # spot checks against the log itself
    views = Views(pg_db)
    s1 = views.get_session("default", "s1")
    assert s1 is not None
    assert s1["event_count"] == len(pg_ledger.history("session", "s1"))
    assert (s1["tool_call_count"], s1["tool_error_count"], s1["input_tokens"]) == (4, 1, 120)
    bulk = views.get_session("default", "bulk-2")
    assert bulk is not None
    # start + 30 x (tool start, tool end, evidence); spans count for usage, not as events
    assert (bulk["event_count"], bulk["tool_call_count"], bulk["tool_error_count"]) == (91, 30, 8)
    assert bulk["input_tokens"] == sum(10 + i for i in range(30))
    assert bulk["cost_usd"] == pytest.approx(sum(0.001 * i for i in range(30)))
    trace = views.get_trace("default", f"{3:032x}")
    assert trace is not None and trace["span_count"] == 30 and trace["error_count"] == 5
    assert len(trace["spans"]) == 1 and len(trace["spans"][0]["children"]) == 29
    chain = views.get_chain("default", "ch-1")
    assert chain is not None
    assert chain["agent_flow"] == "design-doc-creator -> sprint-planner -> sprint-executor"
    assert [s["stage_number"] for s in chain["stages"]] == [1, 2, 3]
    assert views.get_criteria("default", "bulk-0") == {
        "criterion_states": pg_ledger.load("session", "bulk-0").state()["criterion_states"],
        "phase_blocks": {},
    }
    page = views.list_tool_calls("default", "bulk-1", limit=7)
    assert [c["tool_use_id"] for c in page["items"]] == [f"tu-{i}" for i in range(7)]
    second = views.list_tool_calls("default", "bulk-1", limit=7, cursor=page["next_cursor"])
    assert [c["tool_use_id"] for c in second["items"]] == [f"tu-{i}" for i in range(7, 14)]
    assert positions(pg_db) == dict.fromkeys(NAMES, head)


@pytest.mark.parametrize("pages_per_write", [1, 2, 1000])
def test_a_crash_mid_page_resumes_from_the_write_boundary_without_doubling(
    pg_ledger: Ledger, pg_db: PostgresDatabase, pages_per_write: int
) -> None:
    write_realistic(Writer(pg_ledger), lambda: None)
    events = log_events(pg_ledger)
    head = pg_ledger.recorder.max_notification_id()
    page_size = 6
    fail_at = events[4 * page_size + 3][0]  # the 4th event of the fifth page
    # the last write committed before the crash: 4 pages (1 or 2 pages per write), or none
    committed = 0 if pages_per_write > 4 else 4 * page_size
    boundary = events[committed - 1][0] if committed else 0

    def exploding(event: LedgerEvent, position: int, rows: Rows) -> None:
        if position == fail_at:
            raise RuntimeError("projector killed mid-page")
        sessions.fold(event, position, rows)

    crashing = Projector(
        pg_ledger,
        pg_db,
        projections=[
            dataclasses.replace(p, fold=exploding, consumes=(LedgerEvent,))
            if p.name == "sessions"
            else p
            for p in PROJECTIONS
        ],
        page_size=page_size,
        batch_size=page_size * pages_per_write,
    )
    crashing.create_tables()
    with pytest.raises(RuntimeError, match="killed mid-page"):
        crashing.run_once()
    assert positions(pg_db) == dict.fromkeys(NAMES, boundary)
    expected = fold_events(PROJECTIONS, events[:committed])
    assert dump_tables(pg_db) == {name: expected.get(name, []) for name in TABLES}

    restarted = Projector(
        pg_ledger, pg_db, page_size=page_size, batch_size=page_size * pages_per_write
    )
    assert restarted.run_once() == len(events) - committed
    resumed = dump_tables(pg_db)
    assert positions(pg_db) == dict.fromkeys(NAMES, head)
    assert resumed == fold_events(PROJECTIONS, events)
    restarted.rebuild()
    assert dump_tables(pg_db) == resumed
    s1 = next(
        r for r in resumed["sessions"] if (r["project"], r["session_id"]) == ("default", "s1")
    )
    assert s1["event_count"] == len(pg_ledger.history("session", "s1"))
    summary = next(
        r
        for r in resumed["trace_summaries"]
        if r["project"] == "default" and r["trace_id"] == TRACE_1
    )
    assert summary["span_count"] == 2


def burn_notification_ids(ledger: Ledger, schema: str, url: str, count: int) -> None:
    """Leave a gap in the notification ids, as rolled-back inserts do."""
    table = ledger.recorder.events_table_name  # type: ignore[attr-defined]
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_get_serial_sequence(%s, 'notification_id')", (f'"{schema}"."{table}"',)
        ).fetchone()
        assert row is not None and row[0]
        for _ in range(count):
            conn.execute(sql.SQL("SELECT nextval({})").format(sql.Literal(row[0])))


def test_status_reports_position_head_and_lag_also_across_id_gaps(
    pg_ledger: Ledger, pg_db: PostgresDatabase, postgres_url: str, pg_schema: str
) -> None:
    projector = Projector(pg_ledger, pg_db, page_size=5)
    projector.create_tables()
    assert projector.status() == [
        {"name": name, "position": 0, "head": 0, "lag": 0, "updated_at": status["updated_at"]}
        for name, status in zip(NAMES, projector.status(), strict=True)
    ]
    writer = Writer(pg_ledger)
    write_realistic(writer, lambda: None)
    head = pg_ledger.recorder.max_notification_id()
    assert [(s["position"], s["head"], s["lag"]) for s in projector.status()] == [
        (0, head, head)
    ] * 10

    assert projector.run_once(max_pages=1) == 5
    fifth = log_events(pg_ledger)[4][0]
    assert [(s["position"], s["lag"]) for s in projector.status()] == [(fifth, head - fifth)] * 10

    projector.run_once()
    burn_notification_ids(pg_ledger, pg_schema, postgres_url, 3)
    writer.add("session", "after-gap", "start", agent="claude-code")
    writer.add(
        "session", "after-gap", "record_message", role="user", message_kind="prompt", content="x"
    )
    writer.flush()
    new_head = pg_ledger.recorder.max_notification_id()
    assert new_head == head + 3 + 2  # the gap is real
    assert {s["lag"] for s in projector.status()} == {5}
    assert projector.run_once() == 2
    status = projector.status()
    assert [(s["position"], s["head"], s["lag"]) for s in status] == [(new_head, new_head, 0)] * 10
    assert all(s["updated_at"] and s["updated_at"].endswith("+00:00") for s in status)
    after_gap = Views(pg_db).get_session("default", "after-gap")
    assert after_gap is not None and (after_gap["event_count"], after_gap["message_count"]) == (
        2,
        1,
    )
    assert dump_tables(pg_db) == fold_events(PROJECTIONS, log_events(pg_ledger))


def test_a_second_projector_does_no_work_while_the_first_holds_the_lock(
    pg_ledger: Ledger, pg_db: PostgresDatabase, postgres_url: str, pg_schema: str, caplog: Any
) -> None:
    projector = Projector(pg_ledger, pg_db, lock_wait_s=0.3)
    projector.create_tables()
    write_realistic(Writer(pg_ledger), lambda: None)
    other_process = PostgresDatabase(postgres_url, schema=pg_schema)
    other_schema = PostgresDatabase(postgres_url, schema=None)
    try:
        with other_process.advisory_lock(projector.lock_name) as held:
            assert held
            with other_schema.advisory_lock(projector.lock_name) as held_elsewhere:
                assert held_elsewhere  # another schema's projector is not excluded
        check_idle_while_another_holds_the_lock(projector, other_process, caplog)
    finally:
        other_process.close()
        other_schema.close()


def test_values_postgres_refuses_are_stored_cleaned_and_rebuild_the_same(
    pg_ledger: Ledger, pg_db: PostgresDatabase
) -> None:
    projector = Projector(pg_ledger, pg_db)
    projector.create_tables()
    writer = Writer(pg_ledger)
    writer.add("trace", TRACE_1, "record_span", span=span(
        "1" * 16, None, "nul\x00name", 5, 2**64 - 1,
        attributes={"text": "a\x00b", "nan": float("nan"), "inf": float("-inf"), "big": 2**64,
                    "session.id": "s-odd", "gen_ai.usage.input_tokens": 2**70}))  # fmt: skip
    writer.flush()
    assert projector.run_once() == 1
    (row,) = dump_tables(pg_db)["spans"]
    assert row["name"] == "nul\ufffdname"
    assert row["attributes"]["text"] == "a\ufffdb"
    assert (row["attributes"]["nan"], row["attributes"]["inf"]) == ("NaN", "-Infinity")
    assert row["attributes"]["big"] == 2**64
    assert row["end_time_unix_nano"] == INT64_MAX
    assert row["input_tokens"] == INT64_MAX
    before = dump_tables(pg_db)
    projector.rebuild()
    assert dump_tables(pg_db) == before


def test_reads_by_an_id_holding_nul_find_the_row_as_it_was_stored(
    pg_ledger: Ledger, pg_db: PostgresDatabase
) -> None:
    # PostgreSQL refuses NUL in a text parameter: the lookup used to fail (HTTP 500); the row
    # itself is stored with U+FFFD in its place.
    projector = Projector(pg_ledger, pg_db)
    projector.create_tables()
    writer = Writer(pg_ledger)
    writer.add("session", "s\x00nul", "start", agent="claude-code")
    writer.add("session", "s\x00nul", "start_tool_call", tool_use_id="toolu_1", tool_name="Bash",
               tool_input={"command": "ls"}, tool_input_sha256="0" * 64)  # fmt: skip
    writer.flush()
    assert projector.run_once() == 2  # the position it folded to: the start, the call
    views = Views(pg_db)
    session = views.get_session("default", "s\x00nul")
    assert session is not None
    assert session["session_id"] == "s\ufffdnul"
    calls = views.list_tool_calls("default", "s\x00nul")["items"]
    assert [c["tool_use_id"] for c in calls] == ["toolu_1"]
    assert views.list_approvals("default", session_id="s\x00nul")["items"] == []


@pytest.mark.parametrize(
    ("page_size", "batch_size", "cache_rows"),
    [
        (5, 10, 3),  # writes on their own thread, pages read ahead, the cache trimmed
        (7, 7, 200_000),  # one page per write
        (1000, 20_000, 200_000),  # the defaults
    ],
)
def test_batches_written_while_the_next_is_folded_project_the_rows_an_in_memory_fold_gives(
    pg_ledger: Ledger, pg_db: PostgresDatabase, page_size: int, batch_size: int, cache_rows: int
) -> None:
    projector = Projector(
        pg_ledger, pg_db, page_size=page_size, batch_size=batch_size, cache_rows=cache_rows
    )
    projector.create_tables()
    writer = Writer(pg_ledger)
    write_realistic(writer, lambda: projector.run_once() and None)
    write_many(writer)
    write_bulk(writer, sessions_count=2, calls=40)  # COPY-sized writes
    projector.run_once()
    expected = fold_events(PROJECTIONS, log_events(pg_ledger))
    assert dump_tables(pg_db) == expected
    head = pg_ledger.recorder.max_notification_id()
    seen: list[int] = []
    assert projector.rebuild(progress=lambda done, total: seen.append(done)) == head
    assert dump_tables(pg_db) == expected
    assert seen == sorted(seen) and seen[-1] == head
    assert positions(pg_db) == dict.fromkeys(NAMES, head)


def test_a_fold_reading_a_table_it_does_not_announce_reads_its_latest_rows_on_postgres(
    pg_ledger: Ledger, pg_db: PostgresDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import runner

    # encoded two at a time: gets find rows put, encoded, being written, or written
    monkeypatch.setattr(runner._RowCache, "ENCODE_CHUNK", 2)
    Projector(pg_ledger, pg_db).create_tables()
    write_many(Writer(pg_ledger), sessions_count=2, calls=9)
    expected = fold_events([COUNTING], log_events(pg_ledger))["criterion_states"]
    projector = Projector(pg_ledger, pg_db, projections=[COUNTING], page_size=3, batch_size=6)
    projector.run_once()
    assert dump_tables(pg_db)["criterion_states"] == expected
    projector.rebuild()
    assert dump_tables(pg_db)["criterion_states"] == expected


def test_values_postgres_refuses_are_cleaned_on_the_copy_path_too(
    pg_ledger: Ledger, pg_db: PostgresDatabase
) -> None:
    projector = Projector(pg_ledger, pg_db)
    projector.create_tables()
    writer = Writer(pg_ledger)
    for i in range(70):  # one write of more than _COPY_THRESHOLD rows
        writer.add("trace", TRACE_1, "record_span", span=span(
            f"{i + 1:016x}", None, f"nul\x00name {i}", 5, 2**64 - 1,
            attributes={"text": "a\x00b", "nan": float("nan"), "inf": float("-inf"),
                        "big": 2**64, "none": None, "session.id": f"s-odd-{i % 3}",
                        "gen_ai.usage.input_tokens": 2**70, "gen_ai.usage.cost_usd": 0.5}))  # fmt: skip
    writer.flush()
    assert projector.run_once() == 70
    spans = dump_tables(pg_db)["spans"]
    assert len(spans) == 70
    for row in spans:
        assert row["name"].startswith("nul\ufffdname")
        assert row["attributes"]["text"] == "a\ufffdb"
        assert (row["attributes"]["nan"], row["attributes"]["inf"]) == ("NaN", "-Infinity")
        assert row["attributes"]["big"] == 2**64 and row["attributes"]["none"] is None
        assert (row["end_time_unix_nano"], row["input_tokens"]) == (INT64_MAX, INT64_MAX)
    sessions_rows = dump_tables(pg_db)["sessions"]
    assert sorted(r["input_tokens"] for r in sessions_rows) == [INT64_MAX] * 3
    before = dump_tables(pg_db)
    projector.rebuild()
    assert dump_tables(pg_db) == before


def test_a_batch_written_on_its_own_thread_that_another_projector_overtook_is_folded_again(
    pg_ledger: Ledger, pg_db: PostgresDatabase, postgres_url: str, pg_schema: str, caplog: Any
) -> None:
    writer = Writer(pg_ledger)
    write_realistic(writer, lambda: None)
    write_many(writer)
    events = log_events(pg_ledger)
    other_db = PostgresDatabase(postgres_url, schema=pg_schema)
    # another lock name: as if the lock were not there, only the tracking check stands
    other = Projector(pg_ledger, other_db, page_size=5, batch_size=5, lock_name="elsewhere")
    interfered: list[int] = []

    def interfering(event: LedgerEvent, position: int, rows: Rows) -> None:
        if position >= events[22][0] and not interfered:
            # this projector's first write (10 events) may be committed or on its way; the
            # other one goes past the second batch before that batch is written
            interfered.append(other.run_once(max_pages=6))
        sessions.fold(event, position, rows)

    first = Projector(
        pg_ledger,
        pg_db,
        projections=with_sessions_fold(interfering),
        page_size=5,
        batch_size=10,
    )
    try:
        first.create_tables()
        with caplog.at_level(logging.INFO, logger="runledger.projections"):
            first.run_once()
        assert interfered and interfered[0] > 0
        assert "reading again from the last committed position" in caplog.text
        assert dump_tables(pg_db) == fold_events(PROJECTIONS, events)
        assert positions(pg_db) == dict.fromkeys(NAMES, events[-1][0])
    finally:
        other_db.close()


def test_a_projector_on_postgresql_is_woken_by_another_processs_commit(
    postgres_url: str, pg_schema: str
) -> None:
    from infra.runtime import build_runtime
    from infra.settings import Settings
    from tests.projection_lag import (
        assert_closes_promptly,
        assert_each_commit_reaches_the_read_model_at_once,
    )

    settings = Settings(
        database_url=postgres_url, database_schema=pg_schema, projector_poll_interval_s=30
    )
    projecting = build_runtime(settings, create_tables=True)
    writing = build_runtime(settings, create_tables=False)  # another process: its own writer
    writing.writer.start()
    projecting.start_projector()
    try:
        assert_each_commit_reaches_the_read_model_at_once(writing, projecting)
    finally:
        writing.close()
        assert_closes_promptly(projecting)


@pytest.mark.parametrize("bulk_rate", [100, 0])
def test_a_projector_on_postgresql_folds_a_bulk_load_once_it_pauses_unless_bulk_rate_is_zero(
    postgres_url: str, pg_schema: str, bulk_rate: int
) -> None:
    from infra.runtime import build_runtime
    from infra.settings import Settings
    from tests.projection_lag import (
        assert_a_bulk_load_is_folded_once_it_pauses,
        assert_a_load_is_folded_alongside,
        assert_closes_promptly,
    )

    settings = Settings(
        database_url=postgres_url,
        database_schema=pg_schema,
        projector_poll_interval_s=30,
        projector_bulk_rate=bulk_rate,
        projector_bulk_max_delay_s=3.0,
    )
    projecting = build_runtime(settings, create_tables=True)
    writing = build_runtime(settings, create_tables=False)  # another process: its own writer
    writing.writer.start()
    projecting.start_projector()
    try:
        if bulk_rate:
            assert_a_bulk_load_is_folded_once_it_pauses(writing, projecting, max_delay_s=3.0)
        else:
            assert_a_load_is_folded_alongside(writing, projecting)
    finally:
        writing.close()
        assert_closes_promptly(projecting)


def test_the_listener_reconnects_after_losing_its_connection(postgres_url: str) -> None:
    import threading
    import time
    import uuid

    import psycopg
    from psycopg.sql import SQL, Identifier

    from infra.wake import PostgresListener

    channel = f"rl_test_{uuid.uuid4().hex[:8]}"
    listener = PostgresListener(postgres_url, channel)

    def notify_later(delay_s: float) -> None:
        def send() -> None:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                conn.execute(SQL("NOTIFY {}").format(Identifier(channel)))

        threading.Timer(delay_s, send).start()

    try:
        assert listener.wait(0.05) is False  # connects and listens
        notify_later(0.3)
        started = time.monotonic()
        assert listener.wait(10) is True
        assert 0.2 < time.monotonic() - started < 3
        pid = listener._conn.info.backend_pid  # type: ignore[union-attr]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        started = time.monotonic()
        assert listener.wait(0.5) is False  # fails, logs, waits out its timeout
        assert time.monotonic() - started < 3
        listener.wait(0.05)  # listens again on a new connection
        notify_later(0.3)
        started = time.monotonic()
        assert listener.wait(10) is True
        assert 0.2 < time.monotonic() - started < 3
    finally:
        listener.close()


def test_the_listeners_wait_says_whether_a_notification_ended_it(postgres_url: str) -> None:
    import threading
    import time
    import uuid

    import psycopg
    from psycopg.sql import SQL, Identifier

    from infra.wake import PostgresListener

    channel = f"rl_test_{uuid.uuid4().hex[:8]}"
    listener = PostgresListener(postgres_url, channel)
    try:
        started = time.monotonic()
        assert listener.wait(0.3) is False  # connects and listens; nobody notifies
        assert time.monotonic() - started >= 0.29
        with psycopg.connect(postgres_url, autocommit=True) as other:
            for _ in range(5):  # a burst from another connection, consumed by one wait
                other.execute(SQL("NOTIFY {}").format(Identifier(channel)))
        assert listener.wait(10) is True
        assert listener.wait(0.3) is False
        threading.Timer(0.3, listener.interrupt).start()
        started = time.monotonic()
        assert listener.wait(30) is False  # interrupted: no commit woke it
        assert time.monotonic() - started < 5
    finally:
        listener.close()


def test_a_rebuild_in_spawned_parts_equals_a_rebuild_in_this_process_on_postgres(
    postgres_url: str, pg_schema: str, tmp_path: Any
) -> None:
    from infra.runtime import build_runtime, process_parts
    from infra.settings import Settings

    settings = Settings(database_url=postgres_url, database_schema=pg_schema, data_dir=tmp_path)
    runtime = build_runtime(settings, create_tables=True)
    try:
        writer = Writer(runtime.ledger)
        write_realistic(writer, lambda: None)
        write_bulk(writer, sessions_count=3)
        head = runtime.ledger.recorder.max_notification_id()
        assert runtime.projector.rebuild() == head
        serial = dump_tables(runtime.db)
        assert all(serial.values()), "the scenario fills every table"

        # the parts fold in spawned processes while this one holds the projector lock: a
        # projector of another process finds it taken
        rival = Projector(runtime.ledger, runtime.db)
        run = process_parts(settings)
        busy: list[int] = []

        def parts_while_a_rival_tries(parts: list[list[str]], tick: Any) -> list[int]:
            busy.append(rival.run_once())
            return run(parts, tick)

        assert runtime.projector.rebuild(jobs=2, run_parts=parts_while_a_rival_tries) == head
        assert busy == [0]
        assert dump_tables(runtime.db) == serial
        assert positions(runtime.db) == dict.fromkeys(NAMES, head)
    finally:
        runtime.close()


def test_a_read_only_transaction_is_one_repeatable_read_snapshot_and_leaves_its_connection_as_it_was(
    postgres_url: str, pg_schema: str
) -> None:
    db = PostgresDatabase(postgres_url, schema=pg_schema, min_size=1, max_size=1)  # one connection
    try:
        with db.transaction() as conn:
            conn.execute("CREATE TABLE ro_probe (n int)")
            conn.execute("INSERT INTO ro_probe VALUES (1)")
        with db.transaction(readonly=True) as conn:
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
            first = conn.execute("SELECT count(*) FROM ro_probe").fetchone()
            with psycopg.connect(postgres_url, autocommit=True) as other:
                other.execute(
                    sql.SQL("INSERT INTO {}.ro_probe VALUES (2)").format(sql.Identifier(pg_schema))
                )
            assert conn.execute("SELECT count(*) FROM ro_probe").fetchone() == first == (1,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("INSERT INTO ro_probe VALUES (3)")
        with db.transaction() as conn:  # the same pooled connection, read-write again
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
            conn.execute("INSERT INTO ro_probe VALUES (4)")
            assert conn.execute("SELECT count(*) FROM ro_probe").fetchone() == (3,)
    finally:
        db.close()
