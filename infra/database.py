"""The read models' PostgreSQL database: ``projections.db.Database`` on psycopg 3 and a small
``psycopg_pool.ConnectionPool``.

Connections run in UTC (``TimeZone=UTC``) with ``search_path`` set to the configured schema, so the
read side's SQL stays unqualified and identical to SQLite's. Session-level advisory locks
(``pg_try_advisory_lock`` / ``pg_advisory_lock`` under ``lock_timeout``) keep two projectors of one
database and schema from working at once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

log = logging.getLogger("runledger.database")

_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def advisory_lock_key(scope: str, name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` within ``scope`` (the schema)."""
    digest = hashlib.sha256(f"runledger:{scope}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SchemaMissingError(RuntimeError):
    """The configured PostgreSQL schema does not exist, and tables are not to be created."""

    def __init__(self, schema: str) -> None:
        super().__init__(
            f"PostgreSQL schema {schema!r} (RUNLEDGER_DATABASE_SCHEMA) does not exist: run "
            "`runledger migrate`, or start with RUNLEDGER_CREATE_TABLES=true, to create it"
        )
        self.schema = schema


def schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    """Whether ``schema`` exists in ``conn``'s database (``pg_namespace``; case kept)."""
    found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return found is not None


def create_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    """Create ``schema`` when it does not exist yet; idempotent, and safe when several
    processes do it at once.

    Args:
        conn: an autocommit connection (a failed statement must not abort a transaction).
        schema: the schema's name, case kept (quoted as an identifier).

    Raises:
        psycopg.Error: anything but another session creating the same schema at the same
            time (e.g. ``InsufficientPrivilege`` without ``CREATE`` on the database).
    """
    if schema_exists(conn, schema):
        return
    try:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
        # IF NOT EXISTS looks before it inserts into pg_namespace: a session whose CREATE
        # commits in between makes this one fail on the catalog's unique index
        # (pg_namespace_nspname_index). The schema is there all the same.
        if not schema_exists(conn, schema):
            raise


class PostgresDatabase:
    """``projections.db.Database`` on PostgreSQL.

    Args:
        url: a libpq connection URL (``postgresql://user:pass@host:port/db``).
        schema: the schema holding the read models (``search_path``); None: the server default
            (``public``). Letters, digits, ``_`` and ``$`` only; case is kept.
        min_size: connections kept open.
        max_size: most connections open at once (the projector uses two while it runs: one
            holding its lock, one for its transactions).
        timeout_s: how long a caller waits for a free connection, seconds.

    Raises:
        ValueError: a schema name that is not a plain identifier.
    """

    dialect: Literal["postgresql"] = "postgresql"

    def __init__(
        self,
        url: str,
        schema: str | None = None,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout_s: float = 30.0,
    ) -> None:
        if schema is not None and not _SCHEMA_RE.fullmatch(schema):
            raise ValueError(f"schema must be a plain SQL identifier, got {schema!r}")
        self.url = url
        self.schema = schema
        options = [str(conninfo_to_dict(url).get("options") or ""), "-c TimeZone=UTC"]
        if schema is not None:
            options.append(f'-c search_path="{schema}"')
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            kwargs={"autocommit": True, "options": " ".join(o for o in options if o)},
            check=ConnectionPool.check_connection,
            name="runledger-views",
            open=True,
        )

    @contextmanager
    def transaction(self, *, readonly: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection inside ``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` when the block raises).

        Args:
            readonly: run ``REPEATABLE READ, READ ONLY`` (several queries, one snapshot), set
                by the ``BEGIN`` itself rather than by a statement of its own.
        """
        with self._pool.connection() as conn:
            if readonly:
                conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
            try:
                with conn.transaction():
                    yield conn
            finally:
                if readonly:  # handed back as it was; a broken one is closed (the pool drops it)
                    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                        conn.isolation_level, conn.read_only = None, None
                    else:
                        conn.close()

    @contextmanager
    def advisory_lock(self, name: str, *, wait_s: float | None = None) -> Iterator[bool]:
        """Hold a session-level advisory lock on a pooled connection while the block runs.

        Args:
            name: lock name; the key is derived from it and the schema, so projectors of
                different schemas in one database do not exclude each other.
            wait_s: None or <= 0: ``pg_try_advisory_lock`` once; otherwise ``pg_advisory_lock``
                waiting up to that many seconds (``lock_timeout``).

        Yields:
            True when held, False when another session holds it.
        """
        key = advisory_lock_key(self.schema or "public", name)
        with self._pool.connection() as conn:
            if wait_s is None or wait_s <= 0:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
                held = bool(row and row[0])
            else:
                conn.execute(
                    sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(wait_s * 1000)}ms"))
                )
                try:
                    conn.execute("SELECT pg_advisory_lock(%s)", (key,))
                    held = True
                except psycopg.errors.LockNotAvailable:
                    held = False
                finally:
                    conn.execute("RESET lock_timeout")
            try:
                yield held
            finally:
                if held:
                    try:
                        conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                    except psycopg.Error:  # the session is gone, and its locks with it
                        log.warning("could not release advisory lock %r", name, exc_info=True)

    def ensure_schema(self) -> None:
        """Create the configured schema when it does not exist yet (``create_schema``)."""
        if self.schema is None:
            return
        with self._pool.connection() as conn:
            create_schema(conn, self.schema)

    def close(self) -> None:
        """Close the pool and its connections."""
        self._pool.close()
