"""Event-store wiring: the eventsourcing environment for SQLite / PostgreSQL / in-memory, the
few log queries eventsourcing's recorders do not offer (the position of a stream's event), and the
write side's key index (``StreamKeys``).

Tables are created once: by ``runledger migrate``, or by the first process under a lock
(PostgreSQL advisory lock; concurrent ``CREATE TABLE`` otherwise fails with "tuple concurrently
updated"), the configured PostgreSQL schema before them (``prepare_schema``).
``POSTGRES_ENABLE_DB_FUNCTIONS`` is never set: it drops the table lock that keeps
notification ids gap-safe for tailing readers (DESIGN.md §3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import orjson
import psycopg
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.conninfo import conninfo_to_dict

from domain.ledger import Ledger
from infra.database import SchemaMissingError, create_schema, schema_exists
from infra.settings import Settings

#: Advisory lock key serialising table creation across processes (arbitrary, fixed).
MIGRATION_LOCK_KEY = 0x72756E6C  # "runl"


def ledger_env(settings: Settings, *, create_table: bool) -> dict[str, str]:
    """The eventsourcing environment for ``settings``.

    Returns:
        ``PERSISTENCE_MODULE`` plus the SQLite or PostgreSQL keys.
    """
    env = {
        "CREATE_TABLE": "y" if create_table else "n",
        "TRANSCODER_TOPIC": "infra.codec:OrjsonTranscoder",
        "MAPPER_TOPIC": "infra.codec:OrjsonMapper",
    }
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        env.update(
            PERSISTENCE_MODULE="infra.codec:SQLiteFactory",
            SQLITE_DBNAME=str(settings.sqlite_path),
            SQLITE_LOCK_TIMEOUT="30",
        )
        return env
    info = conninfo_to_dict(settings.database_url)
    env.update(
        PERSISTENCE_MODULE="infra.codec:PostgresFactory",
        POSTGRES_DBNAME=str(info.get("dbname") or "postgres"),
        POSTGRES_HOST=str(info.get("host") or "127.0.0.1"),
        POSTGRES_PORT=str(info.get("port") or "5432"),
        POSTGRES_USER=str(info.get("user") or "postgres"),
        POSTGRES_PASSWORD=str(info.get("password") or ""),
        POSTGRES_CONNECT_TIMEOUT="10",
        POSTGRES_POOL_SIZE="5",
        POSTGRES_MAX_OVERFLOW="10",
    )
    if settings.database_schema:
        env["POSTGRES_SCHEMA"] = settings.database_schema
    return env


@contextmanager
def migration_lock(settings: Settings) -> Iterator[None]:
    """Hold the cluster-wide migration lock (PostgreSQL); a no-op on SQLite (one file, one writer)."""
    if settings.database_url is None:
        yield
        return
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


def prepare_schema(settings: Settings, *, create: bool) -> None:
    """Make sure the configured PostgreSQL schema (``settings.database_schema``) is there before
    any table goes into it: created when missing and ``create`` (``create_schema``: safe when
    several processes start at once), else checked. A no-op on SQLite and without a schema
    setting (``public``).

    Raises:
        SchemaMissingError: the schema does not exist and ``create`` is false.
        psycopg.Error: PostgreSQL unreachable, or the schema may not be created.
    """
    if settings.database_url is None or not settings.database_schema:
        return
    with psycopg.connect(settings.database_url, autocommit=True, connect_timeout=10) as conn:
        if create:
            create_schema(conn, settings.database_schema)
        elif not schema_exists(conn, settings.database_schema):
            raise SchemaMissingError(settings.database_schema)


class EventLog:
    """Positions of stream events in the application log, read straight from the recorder's table.

    Args:
        ledger: the application whose recorder is queried (SQLite, PostgreSQL or in-memory).
    """

    def __init__(self, ledger: Ledger) -> None:
        self._recorder: Any = ledger.recorder
        if isinstance(self._recorder, PostgresApplicationRecorder):
            self._kind = "postgres"
        elif isinstance(self._recorder, SQLiteApplicationRecorder):
            self._kind = "sqlite"
        else:
            self._kind = "popo"

    def positions(
        self, sid: UUID, *, from_version: int = 1, to_version: int | None = None
    ) -> dict[int, int]:
        """``{version: notification_id}`` for a stream's events in ``[from_version, to_version]``."""
        upper = to_version if to_version is not None else 2**62
        if self._kind == "popo":
            index = self._recorder._stored_events_index.get(str(sid), {})
            return {v: i + 1 for v, i in index.items() if from_version <= v <= upper}
        table = self._recorder.events_table_name
        if self._kind == "sqlite":
            sql = (
                f"SELECT originator_version, rowid FROM {table} "
                "WHERE originator_id = ? AND originator_version BETWEEN ? AND ?"
            )
            params: tuple[Any, ...] = (sid.hex, from_version, upper)
        else:
            schema = self._recorder.datastore.schema
            sql = (
                f'SELECT originator_version, notification_id FROM "{schema}"."{table}" '
                "WHERE originator_id = %s AND originator_version BETWEEN %s AND %s"
            )
            params = (sid, from_version, upper)
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return {int(_col(r, 0)): int(_col(r, 1)) for r in rows}

    def positions_of(self, keys: Sequence[tuple[UUID, int]]) -> dict[tuple[UUID, int], int]:
        """``{(stream_id, version): notification_id}`` of the stored events among ``keys``, read
        in one query (SQLite: one per 400 keys); keys with no event are left out.

        The writer answers a batch of duplicates with it: a retried 1,000-event batch is one
        query, not 1,000 on the writer thread that every other request waits behind.
        """
        if not keys:
            return {}
        if self._kind == "popo":
            index = self._recorder._stored_events_index
            found = ((k, index.get(str(k[0]), {}).get(k[1])) for k in keys)
            return {k: i + 1 for k, i in found if i is not None}
        table = self._recorder.events_table_name
        if self._kind == "sqlite":
            with self._recorder.datastore.transaction(commit=False) as cursor:
                found_rows = _sqlite_rows_of_pairs(
                    cursor,
                    f"SELECT originator_id, originator_version, rowid FROM {table} "
                    "WHERE (originator_id, originator_version) IN",
                    keys,
                )
            return {(sid, int(version)): int(rowid) for sid, version, rowid in found_rows}
        schema = self._recorder.datastore.schema
        sql = (
            "SELECT originator_id, originator_version, notification_id "
            f'FROM "{schema}"."{table}" JOIN unnest(%s::uuid[], %s::int8[]) AS k(id, version) '
            "ON originator_id = k.id AND originator_version = k.version"
        )
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(sql, ([sid for sid, _ in keys], [version for _, version in keys]))
            rows = cursor.fetchall()
        return {(_col(r, 0), int(_col(r, 1))): int(_col(r, 2)) for r in rows}

    def head(self) -> int:
        """The highest ``notification_id`` (0 for an empty log)."""
        return int(self._recorder.max_notification_id() or 0)


#: Keys per query of ``EventLog.positions_of`` and ``StreamKeys.get_keys`` on SQLite (two
#: parameters each; SQLite before 3.32 allows 999 parameters in a statement).
_SQLITE_KEYS_PER_QUERY = 400


def _sqlite_rows_of_pairs(
    cursor: Any, select: str, pairs: Sequence[tuple[UUID, Any]]
) -> list[tuple[Any, ...]]:
    """The rows ``select`` finds for ``(stream_id, value)`` pairs on SQLite, where ``select``
    ends in ``WHERE (originator_id, <column>) IN`` and its first column is ``originator_id``:
    ``_SQLITE_KEYS_PER_QUERY`` pairs per query, each row's first column given back as the
    stream's ``UUID`` (SQLite stores it as hex text)."""
    by_hex = {sid.hex: sid for sid, _ in pairs}
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(pairs), _SQLITE_KEYS_PER_QUERY):
        chunk = pairs[start : start + _SQLITE_KEYS_PER_QUERY]
        cursor.execute(
            f"{select} (VALUES {', '.join(['(?, ?)'] * len(chunk))})",
            [p for sid, value in chunk for p in (sid.hex, value)],
        )
        rows.extend((by_hex[r[0]], *r[1:]) for r in cursor.fetchall())
    return rows


def _col(row: Any, index: int) -> Any:
    """Column ``index`` of a row from sqlite3 (tuple-like) or psycopg (dict rows)."""
    if isinstance(row, dict):
        return list(row.values())[index]
    return row[index]


class StreamKeys:
    """The key index of the write side (``domain.ledger.KeyIndex``): a table beside the log,
    ``<events table>_keys`` (``originator_id``, ``key``, ``value`` as JSON bytes; primary key
    ``(originator_id, key)``), in the log's database. Bound to the log's recorder once the
    ``Ledger`` is built (``bind``); the table is created then when tables are.

    Keys are ``"event:<event_id>"`` (value ``[version, content_sha256]``) and
    ``"tool_call:<tool_use_id>"`` (an ended call's entry); see ``LedgerAggregate.unstored_keys``.
    PostgreSQL's ``text`` cannot hold NUL, which an id may: such a key is stored as
    ``"hex:"`` and its UTF-8 in hex (``stored_key``; no domain key starts so), on SQLite as is.
    """

    def __init__(self) -> None:
        self._recorder: Any = None
        self._table = ""

    def bind(self, recorder: Any, *, create_table: bool) -> None:
        """Use ``recorder``'s database (PostgreSQL or SQLite); create the table if asked.

        Raises:
            TypeError: an in-memory recorder (it has no key index; don't give one to the Ledger).
        """
        if isinstance(recorder, PostgresApplicationRecorder):
            schema = recorder.datastore.schema
            self._table = f'"{schema}"."{recorder.events_table_name}_keys"'
            ddl = (
                f"CREATE TABLE IF NOT EXISTS {self._table} (originator_id uuid NOT NULL, "
                "key text NOT NULL, value bytea NOT NULL, PRIMARY KEY (originator_id, key))"
            )
        elif isinstance(recorder, SQLiteApplicationRecorder):
            self._table = f"{recorder.events_table_name}_keys"
            ddl = (
                f"CREATE TABLE IF NOT EXISTS {self._table} (originator_id TEXT NOT NULL, "
                "key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (originator_id, key)) "
                "WITHOUT ROWID"
            )
        else:
            raise TypeError(f"no key index on {type(recorder).__name__}")
        self._recorder = recorder
        if create_table:
            with recorder.datastore.transaction(commit=True) as cursor:
                cursor.execute(ddl)

    @property
    def _postgres(self) -> bool:
        return isinstance(self._recorder, PostgresApplicationRecorder)

    def put_keys(self, rows: Sequence[tuple[UUID, str, Any]]) -> None:
        """Store ``(stream_id, key, value)`` rows in one transaction; a stored key's value is
        replaced (an orphan tool call end's entry changes when its late start arrives)."""
        latest = {(sid, key): orjson.dumps(value) for sid, key, value in rows}
        if not latest:
            return
        with self._recorder.datastore.transaction(commit=True) as cursor:
            if self._postgres:
                latest = {(sid, stored_key(key)): value for (sid, key), value in latest.items()}
                cursor.execute(
                    f"INSERT INTO {self._table} (originator_id, key, value) "
                    "SELECT * FROM unnest(%s::uuid[], %s::text[], %s::bytea[]) "
                    "ON CONFLICT (originator_id, key) DO UPDATE SET value = excluded.value",
                    (
                        [sid for sid, _ in latest],
                        [key for _, key in latest],
                        list(latest.values()),
                    ),
                )
            else:
                cursor.executemany(
                    f"INSERT OR REPLACE INTO {self._table} (originator_id, key, value) "
                    "VALUES (?, ?, ?)",
                    [(sid.hex, key, value) for (sid, key), value in latest.items()],
                )

    def get_keys(self, keys: Sequence[tuple[UUID, str]]) -> dict[tuple[UUID, str], Any]:
        """``{(stream_id, key): value}`` of the stored ones among ``keys``: one query
        (SQLite: one per 400 keys)."""
        if not keys:
            return {}
        found: list[tuple[Any, ...]]
        domain_key: dict[str, str] = {}  # stored form -> the key asked for, where they differ
        with self._recorder.datastore.transaction(commit=False) as cursor:
            if self._postgres:
                if any("\x00" in key for _, key in keys):
                    domain_key = {stored_key(key): key for _, key in keys}
                    keys = [(sid, stored_key(key)) for sid, key in keys]
                sids = list({sid for sid, _ in keys})
                if len(sids) == 1:
                    # One stream: its keys by the primary key's prefix and ``= ANY``.
                    cursor.execute(
                        f"SELECT originator_id, key, value FROM {self._table} "
                        "WHERE originator_id = %s AND key = ANY(%s::text[])",
                        (sids[0], list({key for _, key in keys})),
                    )
                else:
                    # The asked pairs joined to the table, planned for each call (not
                    # prepared): the plan then sees how many pairs and how large the table
                    # is (probes of the primary key), where a generic plan made while the
                    # table was small would scan it whole. ``= ANY`` on both columns would
                    # probe every stream for every key: 80 streams x 12 keys, 149 ms vs
                    # 11 ms this way (200,000 keys stored).
                    cursor.execute(
                        f"SELECT k.originator_id, k.key, k.value "
                        "FROM unnest(%s::uuid[], %s::text[]) AS w(originator_id, key) "
                        f"JOIN {self._table} AS k "
                        "ON k.originator_id = w.originator_id AND k.key = w.key",
                        ([sid for sid, _ in keys], [key for _, key in keys]),
                        prepare=False,
                    )
                found = [(_col(r, 0), _col(r, 1), _col(r, 2)) for r in cursor.fetchall()]
            else:
                found = _sqlite_rows_of_pairs(
                    cursor,
                    f"SELECT originator_id, key, value FROM {self._table} "
                    "WHERE (originator_id, key) IN",
                    keys,
                )
        return {
            (sid, domain_key.get(key, key)): orjson.loads(bytes(value)) for sid, key, value in found
        }


def stored_key(key: str) -> str:
    """``key`` as PostgreSQL's key index stores it: as is, or with a NUL (which ``text`` cannot
    hold) ``"hex:"`` and the hex of its UTF-8."""
    return "hex:" + key.encode().hex() if "\x00" in key else key


def build_ledger(settings: Settings, *, create_table: bool) -> tuple[Ledger, EventLog]:
    """Construct the Ledger on the configured store, with position lookups and the key index
    (``StreamKeys``) wired in. With ``create_table``, the log's tables (and the PostgreSQL schema
    they go into, ``prepare_schema``) are created when missing.

    Raises:
        SchemaMissingError: not ``create_table``, and the configured PostgreSQL schema is missing.
    """
    prepare_schema(settings, create=create_table)
    holder: dict[str, EventLog] = {}
    key_index = StreamKeys()
    ledger = Ledger(
        ledger_env(settings, create_table=create_table),
        position_lookup=lambda keys: holder["log"].positions_of(keys),
        snapshot_interval=settings.snapshot_interval or None,
        cache_size=settings.write_cache_streams,
        cache_events=settings.write_cache_events,
        key_index=key_index,
        replay_events=settings.writer_replay_events,
    )
    key_index.bind(ledger.recorder, create_table=create_table)
    holder["log"] = EventLog(ledger)
    return ledger, holder["log"]
