"""The catch-up projector: folds the application log into the read models, page by page.

Reads the notification log (``recorder.select_notifications``, positions = ``notification_id``,
1-based, possibly with gaps on PostgreSQL) in pages of ``page_size``, decodes each notification
into its domain event, folds the page into every projection that has not seen it yet (rows are
fetched in bulk before the folds, and fetched on demand for keys a projection did not announce),
then writes, in ONE transaction, every changed row (``executemany`` of
``INSERT ... ON CONFLICT (key) DO UPDATE``) and each advanced projection's tracking position.

Exactly once: a crash (or an exception in a fold) before that commit leaves rows and positions at
the previous page boundary, and the next run replays the page. Each tracking update is
conditional (``UPDATE ... WHERE name = ? AND position = <the position the page started from>``):
if another projector moved a position in between (or a rebuild reset it), the transaction is
rolled back and the page is read again, so a page is never doubled even without a lock. On
PostgreSQL a session-level advisory lock (``pg_try_advisory_lock``) also keeps a second
projector from doing the work twice: it returns without work and logs that it did so.

Consumes every event the projections of ``projections.catalog`` consume (see their modules).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from eventsourcing.application import Application
from eventsourcing.persistence import Notification

from domain.base import LedgerEvent
from projections.base import Key, Projection, Row
from projections.catalog import PROJECTIONS, UnknownProjectionError
from projections.db import Database, render
from projections.schema import (
    TRACKING_TABLE,
    Table,
    ddl,
    decoders,
    encoders,
    iso,
    to_utc,
    upsert_sql,
)

log = logging.getLogger("runledger.projections")

Progress = Callable[[int, int], None]

#: Keys per bulk ``SELECT ... WHERE (key) IN (VALUES ...)``.
_PREFETCH_CHUNK = 500
#: From this many rows of one table in a page, PostgreSQL writes go through ``COPY``.
_COPY_THRESHOLD = 64


class ProjectorBusyError(RuntimeError):
    """Another projector held the projector lock for longer than the wait allowed."""


class _TrackingMovedError(Exception):
    """A tracking position changed under a page being written (another projector, a rebuild)."""


class _PageRows:
    """The ``Rows`` of one page: fetched from the database in bulk or on demand, written in bulk.

    Args:
        conn: an open DB-API connection (inside a transaction) for reads.
        dialect: ``sqlite`` | ``postgresql``.
        tables: the tables the page's projections own.
    """

    def __init__(self, conn: Any, dialect: str, tables: dict[str, Table]) -> None:
        self._conn = conn
        self._dialect = dialect
        self._tables = tables
        self._cache: dict[str, dict[Key, Row | None]] = {name: {} for name in tables}
        self.dirty: dict[str, dict[Key, Row]] = {name: {} for name in tables}

    def get(self, table: str, key: Key) -> Row | None:
        """The row under ``key`` (fetched from the database if not cached), or None."""
        cache = self._cache[table]
        if key in cache:
            return cache[key]
        self._fetch(table, [key])
        return cache.get(key)

    def put(self, table: str, key: Key, row: Row) -> None:
        """Cache ``row`` and mark it to be written."""
        self._cache[table][key] = row
        self.dirty[table][key] = row

    def prefetch(self, wanted: dict[str, set[Key]]) -> None:
        """Fetch, in bulk, every wanted row that is not cached yet."""
        for table, keys in wanted.items():
            cache = self._cache[table]
            missing = [k for k in keys if k not in cache]
            for start in range(0, len(missing), _PREFETCH_CHUNK):
                self._fetch(table, missing[start : start + _PREFETCH_CHUNK])

    def _fetch(self, table_name: str, keys: list[Key]) -> None:
        table = self._tables[table_name]
        width = len(table.key)
        row_marker = "(" + ", ".join("?" * width) + ")"
        sql = (
            f"SELECT {', '.join(table.column_names)} FROM {table.name} "
            f"WHERE ({', '.join(table.key)}) IN (VALUES {', '.join([row_marker] * len(keys))})"
        )
        params = [value for key in keys for value in key]
        cursor = self._conn.cursor()
        cursor.execute(render(sql, self._dialect), params)
        decode = decoders(table, self._dialect)
        names = table.column_names
        cache = self._cache[table_name]
        for record in cursor.fetchall():
            row = {name: fn(value) for name, fn, value in zip(names, decode, record, strict=True)}
            cache[table.key_of(row)] = row
        for key in keys:
            cache.setdefault(key, None)

    def write(self, conn: Any) -> int:
        """Upsert every dirty row (sorted by key, so that writers take row locks in one order).

        Returns:
            The number of rows written.
        """
        written = 0
        for table_name, dirty in self.dirty.items():
            if not dirty:
                continue
            table = self._tables[table_name]
            encode = encoders(table, self._dialect)
            names = table.column_names
            params = [
                [fn(dirty[key][name]) for name, fn in zip(names, encode, strict=True)]
                for key in sorted(dirty)
            ]
            if self._dialect == "postgresql" and len(params) >= _COPY_THRESHOLD:
                _copy_upsert(conn, table, params)
            else:
                conn.cursor().executemany(upsert_sql(table, self._dialect), params)
            written += len(params)
        return written


def _copy_upsert(conn: Any, table: Table, params: list[list[Any]]) -> None:
    """PostgreSQL: ``COPY`` the rows into a temporary table, then one ``INSERT ... SELECT ...
    ON CONFLICT DO UPDATE`` (several times faster than per-row upserts for large pages)."""
    staging = f"_rl_staging_{table.name}"
    columns = ", ".join(table.column_names)
    cursor = conn.cursor()
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} "
        f"(LIKE {table.name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
        for record in params:
            copy.write_row(record)
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.column_names if c not in table.key)
    cursor.execute(
        f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {staging} "
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"
    )


class Projector:
    """Keeps the read models of ``projections.catalog`` up to date with one application's log.

    Args:
        application: the eventsourcing application whose log is read (its ``recorder`` and
            ``mapper``): the ``domain.ledger.Ledger``.
        db: where the read models are (``SQLiteDatabase``, ``infra.database.PostgresDatabase``).
        projections: the projections to run (default: all of ``catalog.PROJECTIONS``).
        page_size: notifications per page (= per write transaction).
        lock_name: name of the advisory lock two projectors of the same database share.
        lock_wait_s: how long ``rebuild`` waits for that lock, seconds.
    """

    def __init__(
        self,
        application: Application[Any],
        db: Database,
        *,
        projections: Sequence[Projection] | None = None,
        page_size: int = 1000,
        lock_name: str = "runledger-projector",
        lock_wait_s: float = 60.0,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.application = application
        self.db = db
        self.projections: tuple[Projection, ...] = tuple(projections or PROJECTIONS)
        names = [p.name for p in self.projections]
        if len(set(names)) != len(names):
            raise ValueError(f"projection names must be unique: {names}")
        self.page_size = page_size
        self.lock_name = lock_name
        self.lock_wait_s = lock_wait_s
        #: The last error ``run_forever`` met (None after a successful run).
        self.last_error: str | None = None
        self._tracking_ready = False
        self._busy = False

    # -- public API ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The names of the projections this projector runs."""
        return [p.name for p in self.projections]

    def create_tables(self) -> None:
        """Create the read-model tables, their indexes and the tracking rows (idempotent).

        Runs under the projector lock on PostgreSQL (concurrent ``CREATE TABLE IF NOT EXISTS``
        can fail there).

        Raises:
            ProjectorBusyError: the lock stayed held by another process for ``lock_wait_s``.
        """
        self.db.ensure_schema()
        with self.db.advisory_lock(f"{self.lock_name}:ddl", wait_s=self.lock_wait_s) as held:
            if not held:
                raise ProjectorBusyError("another process is creating the projection tables")
            with self.db.transaction() as conn:
                cursor = conn.cursor()
                for statement in ddl(self.db.dialect, [p.table for p in self.projections]):
                    cursor.execute(statement)
        self._ensure_tracking()

    def run_once(self, *, max_pages: int | None = None) -> int:
        """Catch every projection up to the head of the log (or for ``max_pages`` pages).

        Returns:
            The number of notifications read and folded (0 when up to date, or when another
            projector holds the lock: that is logged).
        """
        processed = self._run_locked(self.projections, max_pages=max_pages)
        return processed or 0

    def run_forever(self, stop: threading.Event, poll_interval_s: float = 0.5) -> None:
        """Catch up, then poll every ``poll_interval_s`` seconds until ``stop`` is set.

        The lock is released every few pages so that a ``rebuild`` elsewhere can take it. An
        error is logged (``last_error``) and the same page retried after a growing pause
        (at most 30 s): a page is never skipped.
        """
        failures = 0
        while not stop.is_set():
            try:
                processed = self._run_locked(self.projections, max_pages=20)
            except Exception as error:
                failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                pause = min(poll_interval_s * 2**failures, 30.0)
                log.exception("projector failed (attempt %d); retrying in %.1f s", failures, pause)
                stop.wait(pause)
                continue
            failures = 0
            self.last_error = None
            if not processed:
                stop.wait(poll_interval_s)

    def rebuild(self, names: list[str] | None = None, progress: Progress | None = None) -> int:
        """Rebuild projections from position 0; the others keep their rows and positions.

        Deletes every row of the named projections' tables (all projects) and resets their
        tracking to 0 in one transaction, then folds the whole log into them.

        Args:
            names: projection names (default: all of this projector's).
            progress: called after each page with ``(position reached, head)``.

        Returns:
            The number of notifications folded.

        Raises:
            UnknownProjectionError: a name is not a projection's.
            ProjectorBusyError: another projector kept the lock for ``lock_wait_s``.
        """
        chosen = self._select(names)
        self._ensure_tracking()
        with self.db.advisory_lock(self.lock_name, wait_s=self.lock_wait_s) as held:
            if not held:
                raise ProjectorBusyError(
                    f"another projector held {self.lock_name!r} for {self.lock_wait_s} s"
                )
            with self.db.transaction() as conn:
                cursor = conn.cursor()
                for projection in chosen:
                    table = projection.table.name
                    truncate = (
                        "TRUNCATE TABLE" if self.db.dialect == "postgresql" else "DELETE FROM"
                    )
                    cursor.execute(f"{truncate} {table}")
                    cursor.execute(
                        render(
                            f"UPDATE {TRACKING_TABLE} SET position = 0, updated_at = ? WHERE name = ?",
                            self.db.dialect,
                        ),
                        [self._now(), projection.name],
                    )
            log.info("rebuilding %s from position 0", ", ".join(p.name for p in chosen))
            head = self._head()
            if progress is not None:
                progress(0, head)
            return self._catch_up(chosen, max_pages=None, progress=progress, head=head)

    def status(self) -> list[dict[str, Any]]:
        """Each projection's position against the head of the log.

        Returns:
            ``[{"name", "position", "head", "lag", "updated_at"}]`` in projection order:
            ``position`` the last notification id folded, ``head`` the highest notification id
            in the log, ``lag = head - position`` (in positions; gaps in the ids make it an
            upper bound of the events still to fold), ``updated_at`` ISO 8601 or None.
        """
        tracking = self._read_tracking()
        head = self._head()  # after the positions: a position can never exceed it
        result = []
        for projection in self.projections:
            position, updated_at = tracking.get(projection.name, (0, None))
            result.append(
                {
                    "name": projection.name,
                    "position": position,
                    "head": head,
                    "lag": max(head - position, 0),
                    "updated_at": iso(updated_at),
                }
            )
        return result

    def _select(self, names: list[str] | None) -> list[Projection]:
        if names is None:
            return list(self.projections)
        for name in names:
            if name not in self.names:
                raise UnknownProjectionError(name, self.names)
        return [p for p in self.projections if p.name in names]

    # -- the loop ------------------------------------------------------------------------------

    def _run_locked(self, chosen: Sequence[Projection], *, max_pages: int | None) -> int | None:
        self._ensure_tracking()
        with self.db.advisory_lock(self.lock_name) as held:
            if not held:
                # Said once per streak: run_forever asks again every poll interval.
                level = logging.DEBUG if self._busy else logging.INFO
                log.log(
                    level,
                    "another projector holds the lock %r; this one did no work",
                    self.lock_name,
                )
                self._busy = True
                return None
            self._busy = False
            return self._catch_up(chosen, max_pages=max_pages)

    def _catch_up(
        self,
        chosen: Sequence[Projection],
        *,
        max_pages: int | None,
        progress: Progress | None = None,
        head: int = 0,
    ) -> int:
        processed = 0
        pages = 0
        while max_pages is None or pages < max_pages:
            positions = {name: position for name, (position, _) in self._read_tracking().items()}
            start = min(positions.get(p.name, 0) for p in chosen)
            notifications = self.application.recorder.select_notifications(
                start=start + 1, limit=self.page_size
            )
            if not notifications:
                break
            try:
                self._project_page(chosen, positions, notifications)
            except _TrackingMovedError as moved:
                log.info("%s; reading the page again", moved)
                continue
            processed += len(notifications)
            pages += 1
            if progress is not None:
                last = notifications[-1].id
                progress(last, max(head, last))
        return processed

    def _project_page(
        self,
        chosen: Sequence[Projection],
        positions: dict[str, int],
        notifications: Sequence[Notification],
    ) -> None:
        last = notifications[-1].id
        active = [p for p in chosen if positions.get(p.name, 0) < last]
        mapper = self.application.mapper
        events: list[tuple[int, LedgerEvent]] = []
        for notification in notifications:
            event = mapper.to_domain_event(notification)
            if isinstance(event, LedgerEvent):
                events.append((notification.id, event))
        plan = [(positions.get(p.name, 0), p) for p in active]
        tables = {p.table.name: p.table for p in active}
        # Which projections fold which event class, worked out once per class.
        dispatch: dict[type, list[tuple[int, Projection]]] = {}
        work: list[tuple[int, LedgerEvent, list[tuple[int, Projection]]]] = []
        for position, event in events:
            cls = type(event)
            targets = dispatch.get(cls)
            if targets is None:
                targets = dispatch[cls] = [
                    (since, p) for since, p in plan if issubclass(cls, p.consumes)
                ]
            if targets:
                work.append((position, event, targets))
        with self.db.transaction(readonly=True) as conn:
            rows = _PageRows(conn, self.db.dialect, tables)
            wanted: dict[str, set[Key]] = {}
            for position, event, targets in work:
                for since, projection in targets:
                    if position > since:
                        keys = projection.reads(event)
                        if keys:
                            wanted.setdefault(projection.table.name, set()).update(keys)
            rows.prefetch(wanted)
            for position, event, targets in work:
                for since, projection in targets:
                    if position > since:
                        projection.fold(event, position, rows)
        now = self._now()
        update = render(
            f"UPDATE {TRACKING_TABLE} SET position = ?, updated_at = ? WHERE name = ? AND position = ?",
            self.db.dialect,
        )
        with self.db.transaction() as conn:
            written = rows.write(conn)
            cursor = conn.cursor()
            for since, projection in plan:
                cursor.execute(update, [last, now, projection.name, since])
                if cursor.rowcount != 1:
                    raise _TrackingMovedError(
                        f"tracking of {projection.name!r} moved from {since} under the page ending at {last}"
                    )
        log.debug("folded positions up to %d into %d rows (%s)", last, written, ", ".join(tables))

    # -- tracking ------------------------------------------------------------------------------

    def _ensure_tracking(self) -> None:
        if self._tracking_ready:
            return
        insert = render(
            f"INSERT INTO {TRACKING_TABLE} (name, position, updated_at) VALUES (?, 0, ?) "
            "ON CONFLICT (name) DO NOTHING",
            self.db.dialect,
        )
        now = self._now()
        with self.db.transaction() as conn:
            conn.cursor().executemany(insert, [[p.name, now] for p in self.projections])
        self._tracking_ready = True

    def _read_tracking(self) -> dict[str, tuple[int, datetime | None]]:
        with self.db.transaction(readonly=True) as conn:
            cursor = conn.cursor()
            cursor.execute(f"SELECT name, position, updated_at FROM {TRACKING_TABLE}")
            found = cursor.fetchall()
        result: dict[str, tuple[int, datetime | None]] = {}
        for name, position, updated_at in found:
            if isinstance(updated_at, str):
                updated_at = datetime.fromisoformat(updated_at)
            result[name] = (int(position), to_utc(updated_at) if updated_at is not None else None)
        return result

    def _head(self) -> int:
        return int(self.application.recorder.max_notification_id() or 0)

    def _now(self) -> Any:
        now = datetime.now(UTC)
        return iso(now) if self.db.dialect == "sqlite" else now


#: Same class under the name the task brief used.
ProjectionRunner = Projector
