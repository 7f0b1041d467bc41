"""A ``RUNLEDGER_DATABASE_SCHEMA`` that does not exist yet, on a real PostgreSQL: what creates
tables creates the schema first (``infra.store.prepare_schema``), also when two sessions do it at
once; with ``RUNLEDGER_CREATE_TABLES=false`` nothing is created and the missing schema is named.
A server started with ``RUNLEDGER_CREATE_TABLES=false`` before ``runledger migrate`` made the
tables takes snapshots once they are there."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from infra.database import create_schema, schema_exists
from tests.servers import Server, base_env

pytestmark = pytest.mark.integration

RUNLEDGER = str(Path(sys.executable).with_name("runledger"))


def runledger(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``runledger <command>`` in ``env``, its output captured."""
    return subprocess.run(
        [RUNLEDGER, command], env=env, capture_output=True, text=True, timeout=120
    )


def tables_in(postgres_url: str, schema: str) -> set[str]:
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {row[0] for row in rows}


def test_migrate_creates_the_configured_schema_when_it_does_not_exist_yet(
    tmp_path: Path, postgres_url: str, new_pg_schema: str
) -> None:
    env = base_env(
        tmp_path, RUNLEDGER_DATABASE_URL=postgres_url, RUNLEDGER_DATABASE_SCHEMA=new_pg_schema
    )
    for _ in range(2):  # and again: idempotent
        done = runledger("migrate", env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "tables ready" in done.stdout
    # the log, its key index and the read models, all in the new schema
    assert {"runledger_events", "runledger_events_keys", "sessions", "projection_tracking"} <= (
        tables_in(postgres_url, new_pg_schema)
    )


def test_without_create_tables_a_missing_schema_is_named_and_nothing_is_created(
    tmp_path: Path, postgres_url: str, new_pg_schema: str
) -> None:
    env = base_env(
        tmp_path,
        RUNLEDGER_DATABASE_URL=postgres_url,
        RUNLEDGER_DATABASE_SCHEMA=new_pg_schema,
        RUNLEDGER_CREATE_TABLES="false",
        COLUMNS="200",
    )
    done = runledger("status", env)
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert "SchemaMissingError" in said and repr(new_pg_schema) in said, said
    assert "runledger migrate" in said
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert not schema_exists(conn, new_pg_schema)


def test_a_server_started_before_migrate_snapshots_streams_once_the_tables_exist(
    tmp_path: Path, postgres_url: str, pg_schema: str
) -> None:
    # eventsourcing registers the snapshot insert's composite type (stored_event_uuid) when
    # its recorder is made; in a process started before `runledger migrate` the type was not
    # there yet, and every snapshot insert failed ("Composite type ... not found").
    env = base_env(
        tmp_path,
        RUNLEDGER_DATABASE_URL=postgres_url,
        RUNLEDGER_DATABASE_SCHEMA=pg_schema,
        RUNLEDGER_SNAPSHOT_INTERVAL="5",
    )
    server = Server(
        env={**env, "RUNLEDGER_CREATE_TABLES": "false", "RUNLEDGER_PROJECTOR": "off"},
        ready_path="/healthz",  # /readyz is a 503 until the tables are there
        log_path=tmp_path / "server.log",
    )
    server.start()
    try:
        assert tables_in(postgres_url, pg_schema) == set()  # started before the tables
        done = runledger("migrate", env)
        assert done.returncode == 0, done.stdout + done.stderr
        with httpx.Client(base_url=server.url, timeout=30) as client:
            statuses = [
                client.post(
                    "/v1/events",
                    json={
                        "type": "session.message_recorded",
                        "session_id": "s",
                        "event_id": f"m{i}",
                        "role": "assistant",
                        "content": f"message {i}",
                    },
                ).status_code
                for i in range(11)
            ]
    finally:
        server.stop()
    assert statuses == [201] * 11  # acknowledged
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            f'SELECT originator_version FROM "{pg_schema}".runledger_snapshots '
            "ORDER BY originator_version"
        ).fetchall()
    assert [row[0] for row in rows] == [5, 10]
    assert "failed" not in server.log_path.read_text()  # type: ignore[union-attr]


def test_a_session_creating_the_schema_while_another_commits_it_succeeds(
    postgres_url: str, new_pg_schema: str
) -> None:
    # The first session creates the schema in an open transaction; the second, through
    # create_schema, passes the existence check (the row is not committed), and its CREATE SCHEMA
    # IF NOT EXISTS waits on pg_namespace's unique index: once the first commits, PostgreSQL
    # fails it with a unique violation, which create_schema must take as "there".
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with psycopg.connect(postgres_url, autocommit=True) as conn:
                create_schema(conn, new_pg_schema)
        except BaseException as error:
            errors.append(error)

    with (
        psycopg.connect(postgres_url) as first,
        psycopg.connect(postgres_url, autocommit=True) as watch,
    ):
        first.execute(f'CREATE SCHEMA "{new_pg_schema}"')
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 20
        while not watch.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'CREATE SCHEMA IF NOT EXISTS%%' AND query LIKE %s",
            (f"%{new_pg_schema}%",),
        ).fetchone():
            assert time.monotonic() < deadline, "the second CREATE SCHEMA never waited"
            time.sleep(0.02)
        first.commit()
        thread.join(20)
    assert not thread.is_alive()
    assert errors == []
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert schema_exists(conn, new_pg_schema)
