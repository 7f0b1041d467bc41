"""The read side's database: a small protocol over SQLite (stdlib ``sqlite3``) and PostgreSQL.

The projections and views speak plain SQL through DB-API connections. The two dialects differ in
their parameter markers (``?`` for sqlite3, ``%s`` for psycopg), in their column types (see
``projections.schema``) and in locking: PostgreSQL has session-level advisory locks, SQLite one
writer per file, so its named locks (the projector's) are ``flock(2)`` locks on sidecar files
next to the database file, with the advisory locks' semantics. Everything else the read side
needs is common SQL (``INSERT ... ON CONFLICT ... DO UPDATE``, row-value comparisons,
``CREATE TABLE IF NOT EXISTS``).

This module consumes no events; the PostgreSQL implementation lives in ``infra.database``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sqlite3
import threading
import time
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
            True when the lock is held, False when another holder has it (a try also fails
            while another caller waits for it). Released when the block exits, or when the
            holding process dies.
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


#: How often ``SQLiteDatabase.advisory_lock`` tries again while it waits, seconds.
LOCK_POLL_S = 0.01
#: Lock names used in a sidecar file's name as they are.
_LOCK_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


def _flock(fd: int, operation: int) -> bool:
    """``flock(fd, operation | LOCK_NB)``: whether it was granted."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _waiting_path(path: Path) -> Path:
    return path.with_name(f"{path.name}-waiting")


def _try_flock_if_none_waits(fd: int, path: Path) -> bool:
    """Take the lock on ``fd`` unless it is held or another caller waits for it."""
    waiting = os.open(_waiting_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _flock(waiting, fcntl.LOCK_EX):  # someone waits: it goes first
            return False
    finally:
        os.close(waiting)
    return _flock(fd, fcntl.LOCK_EX)


def _wait_flock(fd: int, path: Path, wait_s: float) -> bool:
    """Take the lock on ``fd``, trying every ``LOCK_POLL_S`` for up to ``wait_s`` seconds,
    announced as a waiter meanwhile."""
    deadline = time.monotonic() + wait_s
    waiting = os.open(_waiting_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while True:
            # shared: waiters do not exclude each other; a try holds it exclusively for an
            # instant only
            announced = announced or _flock(waiting, fcntl.LOCK_SH)
            if _flock(fd, fcntl.LOCK_EX):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(LOCK_POLL_S, left))
    finally:
        os.close(waiting)


class SQLiteDatabase:
    """The read models in an SQLite file (may be the event store's own file).

    One connection per thread (sqlite3 connections are not shared between threads), WAL journal
    (readers never block the writer), ``busy_timeout`` so that writers queue instead of failing
    with ``database is locked``. Named locks (``advisory_lock``) are sidecar files next to the
    database file (``lock_path``), made on first use and left in place.

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

    def lock_path(self, name: str) -> Path:
        """The sidecar file of the lock ``name`` next to the database file:
        ``<database file>.<name>.lock`` (a name of other characters than letters, digits and
        ``_.:-`` is replaced by its sha256, 16 hex)."""
        if not _LOCK_NAME_RE.fullmatch(name):
            name = hashlib.sha256(name.encode()).hexdigest()[:16]
        return self.path.with_name(f"{self.path.name}.{name}.lock")

    @contextmanager
    def advisory_lock(self, name: str, *, wait_s: float | None = None) -> Iterator[bool]:
        """Hold the exclusive lock ``name`` of this database file while the block runs, as
        ``infra.database.PostgresDatabase.advisory_lock`` does on PostgreSQL: ``flock(2)`` on
        the sidecar file ``lock_path(name)``, opened for this call, so that any two holders
        exclude each other (two processes, or two ``SQLiteDatabase`` objects, or two threads
        of one process, as two PostgreSQL sessions do). The lock is released when the block
        exits, and by the kernel when the process dies (its file descriptor is closed).

        As on PostgreSQL a waiter goes first: while a caller waits (``wait_s``), a try
        (``wait_s`` None) fails, so a projector that takes the lock again right after letting
        go of it does not starve a waiting ``rebuild``. A waiter announces itself with a shared
        lock on ``<lock file>-waiting``, which a try checks for with an exclusive one.

        Args:
            name: the lock's name (one sidecar file per name: names do not exclude each other).
            wait_s: None or <= 0: try once; otherwise wait up to that many seconds, trying
                every ``LOCK_POLL_S``.

        Yields:
            True when held, False when another holder has it (or, for a try, waits for it).

        Raises:
            OSError: the sidecar file cannot be opened or created (e.g. a read-only directory).
        """
        path = self.lock_path(name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if wait_s is None or wait_s <= 0:
                held = _try_flock_if_none_waits(fd, path)
            else:
                held = _wait_flock(fd, path, wait_s)
            yield held
        finally:
            os.close(fd)  # releases the lock, if held

    def ensure_schema(self) -> None:
        """Nothing to do: an SQLite file has one namespace."""

    def close(self) -> None:
        """Close the connections of every thread."""
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
