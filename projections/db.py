"""The read side's database: a small protocol over SQLite (stdlib ``sqlite3``) and PostgreSQL.

The projections and views speak plain SQL through DB-API connections. The two dialects differ in
their parameter markers (``?`` for sqlite3, ``%s`` for psycopg), in their column types (see
``projections.schema``) and in locking: PostgreSQL has session-level advisory locks, SQLite has one
writer per file. Everything else the read side needs is common SQL (``INSERT ... ON CONFLICT ...
DO UPDATE``, row-value comparisons, ``CREATE TABLE IF NOT EXISTS``).

This module consumes no events; the PostgreSQL implementation lives in ``infra.database``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]

#: Dialect names, as ``Database.dialect`` reports them.
DIALECTS: tuple[Dialect, ...] = ("sqlite", "postgresql")


class Database(Protocol):
    """Where the read models live.

    Implementations: ``SQLiteDatabase`` (this module) and ``infra.database.PostgresDatabase``.
    """

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        ...

    def transaction(self, *, readonly: bool = False) -> AbstractContextManager[Any]:
        """A DB-API connection inside one transaction.

        Commits when the block ends normally, rolls back when it raises (and re-raises).

        Args:
            readonly: the block only reads. SQLite then takes no write lock up front
                (``BEGIN`` instead of ``BEGIN IMMEDIATE``); PostgreSQL runs it ``REPEATABLE READ,
                READ ONLY`` so that several queries see one snapshot.
        """
        ...

    def advisory_lock(
        self, name: str, *, wait_s: float | None = None
    ) -> AbstractContextManager[bool]:
        """Hold a named lock shared by every process using this database, while the block runs.

        Args:
            name: the lock's name (scoped to the database and schema by the implementation).
            wait_s: None: try once; otherwise wait up to this many seconds.

        Yields:
            True when the lock is held, False when another holder has it.
        """
        ...

    def ensure_schema(self) -> None:
        """Create the namespace the tables go into when it is missing (a no-op on SQLite)."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...


def placeholder(dialect: str) -> str:
    """The DB-API parameter marker of a dialect: ``?`` (sqlite3, qmark) or ``%s`` (psycopg, format).

    Raises:
        ValueError: unknown dialect.
    """
    if dialect == "sqlite":
        return "?"
    if dialect == "postgresql":
        return "%s"
    raise ValueError(f"unknown SQL dialect {dialect!r}; one of {', '.join(DIALECTS)}")


def render(sql: str, dialect: str) -> str:
    """``sql`` written with ``?`` markers, in the dialect's parameter style.

    Only for SQL of our own that holds no ``?`` or ``%`` other than parameter markers (no string
    literals with those characters); user values always travel as parameters.

    Raises:
        ValueError: unknown dialect.
    """
    marker = placeholder(dialect)
    return sql if marker == "?" else sql.replace("?", marker)


class SQLiteDatabase:
    """The read models in an SQLite file (may be the event store's own file).

    One connection per thread (sqlite3 connections are not shared between threads), WAL journal
    (readers never block the writer), ``busy_timeout`` so that writers queue instead of failing
    with ``database is locked``.

    Args:
        path: the database file (created when missing).
        busy_timeout_ms: how long a statement waits for another writer's lock, milliseconds.
    """

    dialect: Literal["sqlite"] = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 30_000) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,  # we issue BEGIN / COMMIT ourselves
                check_same_thread=False,  # only so that close() may run on another thread
                timeout=self.busy_timeout_ms / 1000,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection inside ``BEGIN`` (readonly) or ``BEGIN IMMEDIATE`` ... ``COMMIT``.

        ``BEGIN IMMEDIATE`` takes the write lock up front: a deferred transaction that reads and
        then writes can fail with ``SQLITE_BUSY`` without waiting when another writer committed
        in between.

        Raises:
            sqlite3.Error: from the statements run in the block (after rolling back).
        """
        conn = self._connection()
        conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()

    @contextmanager
    def advisory_lock(self, name: str, *, wait_s: float | None = None) -> Iterator[bool]:
        """Always held: SQLite serialises writers itself, and the projector's tracking check
        (``UPDATE ... WHERE position = <old>``) keeps two projectors from doubling a page."""
        yield True

    def ensure_schema(self) -> None:
        """Nothing to do: an SQLite file has one namespace."""

    def close(self) -> None:
        """Close the connections of every thread."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
