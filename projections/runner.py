"""The catch-up projector: folds the application log into the read models, batch by batch.

Reads the notification log (``recorder.select_notifications``, positions = ``notification_id``,
1-based, possibly with gaps on PostgreSQL) in pages of ``page_size``, decodes each notification
a projection consumes into its domain event and folds it into every projection that has not seen
it yet, against an in-memory row cache (``_RowCache``) that lives for one run: rows are read from
the database once per run (in bulk before a page's folds, on demand for keys a projection did
not announce; never for a table that was empty when the run started, such as every table of a
rebuild) and kept across pages. While full pages come back (the log has more), pages are folded
into one batch of up to ``batch_size`` notifications; a batch is written when it is full, when a
page comes back short (the head of the log: so live tailing still writes every page at once) and
at the end of a run, in ONE transaction: each advanced projection's tracking position, then
every changed row (PostgreSQL: binary ``COPY`` into a temporary table and one ``INSERT ... ON
CONFLICT (key) DO UPDATE`` per table from 64 rows on; otherwise ``executemany`` of that upsert).

Exactly once: a crash (or an exception in a fold) before that commit leaves rows and positions at
the previous batch boundary, and the next run replays from there. Each tracking update is
conditional (``UPDATE ... WHERE name = ? AND position = <the position the batch started from>``):
if another projector moved a position in between (or a rebuild reset it), the transaction is
rolled back, the run's cache is dropped and it reads again from the positions then committed, so
a batch is never doubled even without a lock. A lock (``Database.advisory_lock``: on PostgreSQL
a session-level advisory lock, ``pg_try_advisory_lock``; on SQLite ``flock`` on a sidecar file)
also keeps a second projector from doing the work twice: it returns without work and logs that
it did so, and a ``rebuild`` waits for it and holds it throughout. The cache holds what the
database holds at the positions this run committed (plus the rows not written yet): this run is
the only writer of its tables (the lock, and the tracking check above), and it starts empty at
every run.

On PostgreSQL a batch is written on a thread of its own while the next one is folded, and the
next page is read while one is folded; a write starts only once the previous one committed, and
a run waits for its writes (also when a fold raises), so the boundaries above hold.

Consumes every event the projections of ``projections.catalog`` consume (see their modules).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from eventsourcing.utils import resolve_topic

from domain.base import LedgerEvent
from projections.base import Key, Projection, Row, no_reads
from projections.catalog import PROJECTIONS, UnknownProjectionError, split
from projections.db import Database, render
from projections.schema import (
    BIGINT,
    BOOL,
    DOUBLE,
    JSON,
    TEXT,
    TIMESTAMP,
    TRACKING_TABLE,
    Table,
    ddl,
    decoders,
    iso,
    param_decoder,
    row_encoder,
    to_utc,
    upsert_sql,
)

log = logging.getLogger("runledger.projections")

Progress = Callable[[int, int], None]

#: Keys per bulk ``SELECT ... WHERE (key) IN (VALUES ...)``.
_PREFETCH_CHUNK = 500
#: From this many rows of one table in a write, PostgreSQL writes go through ``COPY``.
_COPY_THRESHOLD = 64

_MISSING: Any = object()


class Wake(Protocol):
    """What ``Projector.run_forever`` waits on between runs (``infra.wake``)."""

    def wait(self, timeout_s: float) -> bool:
        """Return soon after the log grew (since the last return): True; or after ``timeout_s``
        (or an interrupt): False."""


_Targets = list[tuple[int, Projection]]
_Work = tuple[int, LedgerEvent, _Targets]


def _decode(
    mapper: Any, notifications: Sequence[Notification], active: _Targets
) -> Iterator[_Work]:
    """``(position, event, [(since, projection)])`` for each notification whose event some of
    ``active`` consume (worked out once per topic; others are not even decoded).

    A list of notifications is emptied on the way (each one dropped once its event is taken),
    so that a page's notifications die young.
    """
    to_domain_event = mapper.to_domain_event
    dispatch: dict[str, _Targets] = {}
    slots: list[Any] | None = notifications if isinstance(notifications, list) else None
    for index, notification in enumerate(notifications):
        if slots is not None:
            slots[index] = None
        topic = notification.topic
        targets = dispatch.get(topic)
        if targets is None:
            cls = resolve_topic(topic)
            targets = dispatch[topic] = (
                [(since, p) for since, p in active if issubclass(cls, p.consumes)]
                if isinstance(cls, type) and issubclass(cls, LedgerEvent)
                else []
            )
        if targets:
            yield notification.id, to_domain_event(notification), targets


class RunParts(Protocol):
    """Folds the parts of a rebuild at once (``Projector.rebuild(jobs=...)``)."""

    def __call__(self, parts: list[list[str]], tick: Callable[[], None]) -> list[int]:
        """Run ``Projector.catch_up(part)`` for every part, each on a projector of its own,
        calling ``tick`` every ``PART_POLL_S`` seconds or so until all have ended.

        Returns:
            Each part's count of notifications folded, in ``parts`` order.

        Raises:
            BaseException: what a part raised, once every part has ended.
        """
        ...


#: How often a rebuild in parts reports progress, seconds.
PART_POLL_S = 0.5

#: How long the log must go without a commit for ``run_forever`` to take a bulk load as
#: over, seconds: longer than the pauses between one client's batches, shorter than a person
#: waits for a read model.
BULK_QUIET_S = 0.25

#: The shortest span over which ``run_forever`` measures how fast the log grows, seconds: long
#: enough to hold several commits of a steady load (an OpenTelemetry SDK exports every few tens
#: of milliseconds), so that one commit just after a look does not pass for a burst.
BULK_WINDOW_S = 0.5

#: Pages ``run_forever`` folds per run, at most, before it lets go of its lock.
RUN_PAGES = 20


def _bulk(grown: int, since_s: float | None, bulk_rate: float) -> bool:
    """Whether the log, having gained ``grown`` events (its head moved by that many positions)
    in the ``since_s`` seconds since the projector last looked (None: it never did), grew faster
    than ``bulk_rate`` events per second (0: never): a bulk load is under way."""
    return bool(bulk_rate) and since_s is not None and grown > bulk_rate * since_s


def _await_quiet(stop: threading.Event, wake: Wake, max_delay_s: float) -> None:
    """Return once no commit has woken ``wake`` for ``BULK_QUIET_S`` seconds, after
    ``max_delay_s`` seconds, or when ``stop`` is set."""
    deadline = time.monotonic() + max_delay_s
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not wake.wait(min(BULK_QUIET_S, remaining)):
            return


class ProjectorBusyError(RuntimeError):
    """Another projector held the projector lock for longer than the wait allowed."""


class _TrackingMovedError(Exception):
    """A tracking position changed under a batch being written (another projector, a rebuild)."""


class _RowCache:
    """The ``Rows`` the folds of a run see: rows held in memory across pages and batches, and
    into the projector's next run while nothing else wrote its tables (``Projector.keep_rows``).

    Tables whose folds read rows (``Projection.reads``: sessions, tool calls, summaries, ...)
    are *retained*: a row is read from the database once (in bulk before a page's folds, or on
    demand for a key a projection did not announce) and then kept, least recently
    used first out beyond ``max_rows``; the folds' ``put`` replaces it and marks it dirty until
    its batch is taken for writing (``take``). What the cache holds is what the database holds
    at the positions the run last committed, plus the dirty rows: the run's projector is the
    only writer of its tables while it runs (the advisory lock on PostgreSQL; on SQLite the
    conditional tracking update fails, and the run drops its cache, when another projector wrote
    in between).

    Rows of the other tables (spans, criterion states, ...: only ever overwritten) are encoded
    to their parameter tuples a few dozen at a time as they come, and dropped once written:
    they hold the events' attribute dicts, and letting those die young keeps the garbage
    collector's full collections rare. ``get`` still finds them (decoded as the database would
    give them back) until their write committed, then in the database.

    A table is *complete* when the cache knows every one of its rows: it was empty when the
    cache's first run started (a rebuild truncates its tables). A key missing from a complete table has no row, so
    the database is not asked, unless its row was dropped from the cache (the hashes of dropped
    keys are kept: up to ``4 * max_rows`` of them, beyond which the table is no longer complete).
    Rows of an incomplete table that the folds will read are read in bulk before a page's folds
    (``needs_reads``, ``fetch``); those of a complete table are, only while the folds of the last
    page wanted more than ``BULK_AFTER_WANTED`` dropped rows (read one by one in ``get`` until
    then): dropped rows are the least recently used, rarely wanted again, and announcing every
    page's reads once the first rows were dropped slowed the second half of a million-event
    rebuild by a third (SQLite, ``bench.rebuild``'s log: 38,000-44,000 events/s, now 45,000-52,000).

    Args:
        db: the database (on-demand reads, and a page's bulk reads, each in one read-only
            transaction).
        tables: the tables of the run's projections, by name.
        complete: tables that were empty when the run started.
        retain: the tables whose folds read rows.
        max_rows: retained rows kept after a write, at most; beyond it, the least recently used
            rows of the largest tables are dropped.
    """

    #: Rows of a table that is not retained are encoded this many at a time.
    ENCODE_CHUNK = 64
    #: Dropped rows of a complete table wanted by a page beyond which the next page's are read
    #: in bulk.
    BULK_AFTER_WANTED = 8

    def __init__(
        self,
        db: Database,
        tables: dict[str, Table],
        *,
        complete: set[str],
        retain: set[str],
        max_rows: int,
    ) -> None:
        self._db = db
        self._dialect = db.dialect
        self.tables = tables
        self._max_rows = max_rows
        self.complete = set(complete) & set(tables)
        retained = [name for name in tables if name in retain]
        others = [name for name in tables if name not in retain]
        # retained tables: LRU order (least recently used first); None: known to have no row
        self._rows: dict[str, dict[Key, Row | None]] = {name: {} for name in retained}
        self._dirty: dict[str, dict[Key, Row]] = {name: {} for name in retained}
        # the other tables: rows put, not encoded yet; encoded, not taken; taken, not committed
        self._fresh: dict[str, dict[Key, Row]] = {name: {} for name in others}
        self._encoded: dict[str, dict[Key, tuple[Any, ...]]] = {name: {} for name in others}
        self._inflight: dict[str, dict[Key, tuple[Any, ...]]] = {name: {} for name in others}
        # complete retained tables: hashes of the keys of the rows dropped from the cache
        self._evicted: dict[str, set[int]] = {}
        # complete retained tables: dropped rows the current / the last page wanted
        self._wanted_dropped: Counter[str] = Counter()
        self._wanted_dropped_last: Counter[str] = Counter()
        self._max_evicted = 4 * max_rows

    def get(self, table: str, key: Key) -> Row | None:
        """The row under ``key`` (read from the database when not known here), or None."""
        rows = self._rows.get(table)
        if rows is not None:
            row = rows.pop(key, _MISSING)
            if row is not _MISSING:
                rows[key] = row  # most recently used: last in the dict's order
                return row  # type: ignore[no-any-return]
            if table in self.complete:
                evicted = self._evicted.get(table)
                if evicted is None or hash(key) not in evicted:
                    return None
                self._wanted_dropped[table] += 1
            self._read([(table, [key], rows)])
            return rows.get(key)
        fresh = self._fresh[table].get(key)
        if fresh is not None:
            return fresh
        params = self._encoded[table].get(key) or self._inflight[table].get(key)
        if params is not None:
            return param_decoder(self.tables[table], self._dialect)(params)
        if table in self.complete:
            return None
        found: dict[Key, Row | None] = {}
        self._read([(table, [key], found)])
        return found.get(key)

    def put(self, table: str, key: Key, row: Row) -> None:
        """Keep ``row`` and mark it to be written."""
        rows = self._rows.get(table)
        if rows is not None:
            rows[key] = row
            self._dirty[table][key] = row
            return
        fresh = self._fresh[table]
        fresh[key] = row
        self._encoded[table].pop(key, None)
        if len(fresh) >= self.ENCODE_CHUNK:
            self._encode(table)

    def _encode(self, table: str) -> None:
        fresh = self._fresh[table]
        if fresh:
            encode = row_encoder(self.tables[table], self._dialect)
            self._encoded[table].update(zip(fresh, encode(list(fresh.values())), strict=True))
            fresh.clear()

    def needs_reads(self, table: str) -> bool:
        """Whether the rows of ``table`` that a page's folds will read are to be read in bulk
        first: for an incomplete table, always; for a complete one, when the last page wanted
        more than ``BULK_AFTER_WANTED`` of its dropped rows."""
        if table not in self.complete:
            return True
        return self._wanted_dropped_last[table] > self.BULK_AFTER_WANTED

    def start_page(self) -> None:
        """A new page is folded: what the last one wanted is what ``needs_reads`` looks at."""
        self._wanted_dropped_last, self._wanted_dropped = self._wanted_dropped, Counter()

    def fetch(self, wanted: dict[str, Iterable[Key]]) -> None:
        """Read, in bulk, every wanted row of a retained table that may be in the database only
        (not cached; in a complete table, only the keys of rows dropped from the cache), all
        tables in one read-only transaction."""
        reads: list[tuple[str, list[Key], dict[Key, Row | None]]] = []
        for table, keys in wanted.items():
            rows = self._rows.get(table)
            if rows is None:
                continue
            missing = [key for key in set(keys) if key not in rows]
            if table in self.complete:
                evicted = self._evicted.get(table)
                missing = [k for k in missing if evicted is not None and hash(k) in evicted]
                self._wanted_dropped[table] += len(missing)
            if missing:
                reads.append((table, missing, rows))
        if reads:
            self._read(reads)

    def _read(self, reads: list[tuple[str, list[Key], dict[Key, Row | None]]]) -> None:
        """Read the rows of ``(table name, keys, into)`` triples in one read-only transaction:
        each key's row (None when it has none) goes into its ``into``."""
        with self._db.transaction(readonly=True) as conn:
            cursor = conn.cursor()
            for table_name, keys, into in reads:
                self._read_table(cursor, table_name, keys, into)

    def _read_table(
        self, cursor: Any, table_name: str, keys: list[Key], into: dict[Key, Row | None]
    ) -> None:
        table = self.tables[table_name]
        dialect = self._dialect
        decode = decoders(table, dialect)
        names = table.column_names
        select = f"SELECT {', '.join(names)} FROM {table.name} WHERE ({', '.join(table.key)}) IN "
        # PostgreSQL: one statement per table whatever the count (a text array per key column),
        # parsed once by psycopg and prepared by the server.
        arrays = ", ".join(["%s::text[]"] * len(table.key))
        postgres_sql = f"{select}(SELECT * FROM unnest({arrays}))"
        row_marker = "(" + ", ".join("?" * len(table.key)) + ")"  # SQLite: a VALUES row
        for start in range(0, len(keys), _PREFETCH_CHUNK):
            chunk = keys[start : start + _PREFETCH_CHUNK]
            if dialect == "postgresql":
                columns = [list(column) for column in zip(*chunk, strict=True)]
                cursor.execute(postgres_sql, columns, prepare=True)
            else:
                sql = f"{select}(VALUES {', '.join([row_marker] * len(chunk))})"
                cursor.execute(sql, [v for key in chunk for v in key])
            for record in cursor.fetchall():
                row = {
                    name: fn(value) for name, fn, value in zip(names, decode, record, strict=True)
                }
                into[table.key_of(row)] = row
            for key in chunk:
                into.setdefault(key, None)

    def take(self) -> dict[str, list[tuple[Any, ...]]]:
        """The rows to write, encoded and sorted by key (so that writers take row locks in one
        order), by table; a new batch of dirty rows starts. Call ``written`` once they are
        committed."""
        taken: dict[str, list[tuple[Any, ...]]] = {}
        for name, dirty in self._dirty.items():
            if dirty:
                encode = row_encoder(self.tables[name], self._dialect)
                taken[name] = encode([dirty[key] for key in sorted(dirty)])
                self._dirty[name] = {}
        for name, encoded in self._encoded.items():
            self._encode(name)
            if encoded:
                taken[name] = [encoded[key] for key in sorted(encoded)]
                self._inflight[name] = encoded
                self._encoded[name] = {}
                self.complete.discard(name)  # its rows are in the database only, once written
        return taken

    def written(self) -> None:
        """The rows last taken are committed. Trim the retained rows to ``max_rows`` (never
        dropping a dirty one)."""
        for name in self._inflight:
            self._inflight[name] = {}
        if sum(map(len, self._rows.values())) > self._max_rows:
            self.trim(self._max_rows * 3 // 4)

    def trim(self, target: int) -> None:
        """Drop the least recently used retained rows of the largest tables (never a dirty one)
        until at most ``target`` rows are left."""
        total = sum(map(len, self._rows.values()))
        for name in sorted(self._rows, key=lambda n: len(self._rows[n]), reverse=True):
            if total <= target:
                break
            cached, dirty = self._rows[name], self._dirty[name]
            victims: list[Key] = []
            for key in cached:  # least recently used first
                if len(victims) >= total - target:
                    break
                if key not in dirty:
                    victims.append(key)
            if name in self.complete:
                # remember which rows went (by hash): a key that is neither cached nor among
                # them still has no row, and needs no read
                evicted = self._evicted.setdefault(name, set())
                evicted.update(hash(key) for key in victims if cached[key] is not None)
                if len(evicted) > self._max_evicted:
                    self.complete.discard(name)
                    del self._evicted[name]
            for key in victims:
                del cached[key]
            total -= len(victims)
        log.debug("row cache trimmed to %d rows", total)


def _write_rows(
    conn: Any, dialect: str, tables: dict[str, Table], rows: dict[str, list[tuple[Any, ...]]]
) -> int:
    """Upsert encoded rows (parameter tuples in column order), by table.

    Returns:
        The number of rows written.
    """
    written = 0
    for table_name, params in rows.items():
        table = tables[table_name]
        if dialect == "postgresql" and len(params) >= _COPY_THRESHOLD:
            _copy_upsert(conn, table, params)
        else:
            conn.cursor().executemany(upsert_sql(table, dialect), params)
        written += len(params)
    return written


class _Write:
    """One batch's write transaction: its rows and tracking moves, run on the caller's thread
    (``run``) or on a pool's thread (``start``, then ``wait``)."""

    def __init__(
        self,
        projector: Projector,
        tables: dict[str, Table],
        rows: dict[str, list[tuple[Any, ...]]],
        advanced: list[tuple[int, Projection]],
        last: int,
        events: int,
        pages: int,
    ) -> None:
        self.tables = tables
        self.rows = rows
        self.advanced = advanced
        self.last = last
        self.events = events
        self.pages = pages
        self._projector = projector
        self._task: Future[None] | None = None

    def run(self) -> None:
        """Write now, on this thread.

        Raises:
            _TrackingMovedError: a position was no longer the one expected (nothing written).
        """
        self._projector._write(self.tables, self.rows, self.advanced, self.last)

    def start(self, pool: ThreadPoolExecutor) -> None:
        """Write on a thread of ``pool``; ``wait`` for the outcome."""
        self._task = pool.submit(self.run)

    def wait(self) -> None:
        """Wait for a started write to end.

        Raises:
            BaseException: whatever the write raised.
        """
        task, self._task = self._task, None
        if task is not None:
            task.result()


#: PostgreSQL type names of the staging columns (JSON travels as text, cast in the INSERT).
_STAGING_TYPES = {
    TEXT: "text",
    BIGINT: "int8",
    DOUBLE: "float8",
    BOOL: "bool",
    TIMESTAMP: "timestamptz",
    JSON: "text",
}


def _copy_upsert(conn: Any, table: Table, params: list[tuple[Any, ...]]) -> None:
    """PostgreSQL: binary ``COPY`` of the rows into a temporary table, then one ``INSERT ...
    SELECT ... ON CONFLICT DO UPDATE`` (several times faster than per-row upserts)."""
    staging = f"_rl_copy_{table.name}"
    columns = ", ".join(table.column_names)
    types = [_STAGING_TYPES[c.type] for c in table.columns]
    cursor = conn.cursor()
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} ("
        + ", ".join(f"{c.name} {t}" for c, t in zip(table.columns, types, strict=True))
        + ") ON COMMIT DELETE ROWS"
    )
    with cursor.copy(f"COPY {staging} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for record in params:
            copy.write_row(record)
    selected = ", ".join(f"{c.name}::jsonb" if c.type is JSON else c.name for c in table.columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.column_names if c not in table.key)
    cursor.execute(
        f"INSERT INTO {table.name} ({columns}) SELECT {selected} FROM {staging} "
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"
    )


class Projector:
    """Keeps the read models of ``projections.catalog`` up to date with one application's log.

    Args:
        application: the eventsourcing application whose log is read (its ``recorder`` and
            ``mapper``): the ``domain.ledger.Ledger``.
        db: where the read models are (``SQLiteDatabase``, ``infra.database.PostgresDatabase``).
        projections: the projections to run (default: all of ``catalog.PROJECTIONS``).
        page_size: notifications per read of the log; near the head of the log (a page comes
            back short), also per write transaction. (Larger pages do not read faster, and with
            many objects in the process they make the garbage collector's work grow.)
        batch_size: while the log has more (full pages), pages are folded in memory and
            written together, one transaction per this many notifications (at least one page;
            ``batch_size <= page_size``: one transaction per page).
        cache_rows: rows a run keeps in memory between batches, at most (see ``_RowCache``).
        keep_rows: rows kept in memory from one run to the next, at most (0: none). The next
            run uses them only when every tracking position is still where this projector's
            last run committed it (so nothing else wrote the tables since: folds are
            deterministic); any other run starts with an empty cache.
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
        batch_size: int = 20_000,
        cache_rows: int = 200_000,
        keep_rows: int = 50_000,
        lock_name: str = "runledger-projector",
        lock_wait_s: float = 60.0,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if batch_size < 1 or cache_rows < 0 or keep_rows < 0:
            raise ValueError(
                "need batch_size >= 1, cache_rows >= 0 and keep_rows >= 0, got "
                f"{batch_size}, {cache_rows}, {keep_rows}"
            )
        self.application = application
        self.db = db
        self.projections: tuple[Projection, ...] = tuple(projections or PROJECTIONS)
        names = [p.name for p in self.projections]
        if len(set(names)) != len(names):
            raise ValueError(f"projection names must be unique: {names}")
        self.page_size = page_size
        self.batch_size = batch_size
        self.cache_rows = cache_rows
        self.keep_rows = keep_rows
        self.lock_name = lock_name
        self.lock_wait_s = lock_wait_s
        #: The last error ``run_forever`` met (None after a successful run).
        self.last_error: str | None = None
        self._tracking_ready = False
        self._busy = False
        #: The last run's row cache and the tracking positions that run committed.
        self._kept: tuple[dict[str, int], _RowCache] | None = None
        # A run's read-ahead and background write (PostgreSQL); threads start on first use.
        self._background = ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="runledger-projector"
        )

    # -- public API ------------------------------------------------------------------------------

    def close(self) -> None:
        """Let the pooled background threads end (after what they run); no run may follow."""
        self._background.shutdown(wait=False)

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

    def run_forever(
        self,
        stop: threading.Event,
        poll_interval_s: float = 0.5,
        wake: Wake | None = None,
        *,
        min_interval_s: float = 0.0,
        bulk_rate: float = 0.0,
        bulk_max_delay_s: float = 5.0,
    ) -> None:
        """Catch up, then wait for ``wake`` (the log grew) or ``poll_interval_s`` seconds, until
        ``stop`` is set (seen within ``poll_interval_s``).

        The lock is released every ``RUN_PAGES`` pages so that a ``rebuild`` elsewhere can take
        it; while another projector holds it, this one only polls. An error is logged
        (``last_error``) and the same page retried after a growing pause (at most 30 s): a page
        is never skipped.

        Args:
            stop: set to end the loop.
            poll_interval_s: the longest wait for new events, seconds.
            wake: what the log's writers signal after a commit.
            min_interval_s: after a run that reached the head of the log, the next run starts
                at least this long (seconds) after it started. Under a steady load of small
                commits (single-event requests) each run then folds what several commits
                appended, in one read, one write transaction and one commit, instead of one
                run per commit. ``bench.single_event``'s load (64 connections, PostgreSQL),
                0 -> 0.05 s: projector + database CPU 180-200 -> 70-100 us per request;
                requests/s +14 % and +47 % with 2 API workers, +0 % and +11 % with one (two A/B
                runs each, servers interleaved). An event after an idle spell is folded at once;
                under load the read models trail by up to this much more.
            bulk_rate: events per second (0: none) above which a bulk load is taken to be under
                way: after a run that folded something, the head of the log (its highest
                position, one indexed query) had moved by more than this many events per second
                since the projector last looked, at least ``BULK_WINDOW_S`` before (``_bulk``),
                whether or not the run reached it.
                The projector then waits (``_await_quiet``) until no commit has come for
                ``BULK_QUIET_S`` or ``bulk_max_delay_s`` has passed, and folds what the load
                appended at once, in full pages, until it reaches the head again (only then
                does it look for a bulk load again): the write path has the CPU and the database
                to itself while the load lasts, and folding once, in larger transactions, costs
                less than folding alongside it. A backlog folded while no commit comes (a
                restart, a rebuild's aftermath) never waits: the head does not move. Needs
                ``wake`` (without one, commits cannot be told apart from silence).
            bulk_max_delay_s: the longest such a wait lasts, seconds: under a bulk load the read
                models trail the log by at most this much more than the time the fold takes.
        """
        failures = 0
        looked: tuple[float, int] | None = None  # (when, the head of the log) last looked at
        deferred = False  # folding what a bulk load appended while this projector waited
        while not stop.is_set():
            started = time.monotonic()
            try:
                processed = self._run_locked(self.projections, max_pages=RUN_PAGES)
                at_head = processed is not None and processed < RUN_PAGES * self.page_size
                # what the log gained, in how many seconds, since the last look; it looks after
                # a run that folded something, BULK_WINDOW_S after the last look, or, folding a
                # deferred load, once it reached the head (measured from the look that saw
                # the load: a load still going on is deferred again at once)
                grown: tuple[int, float] | None = None
                if processed and wake is not None and bulk_rate:
                    now = time.monotonic()
                    due = looked is None or now - looked[0] >= BULK_WINDOW_S
                    if at_head if deferred else due:
                        head = self._head()
                        if looked is not None:
                            grown = (head - looked[1], now - looked[0])
                        looked = (now, head)
            except Exception as error:
                failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                pause = min(poll_interval_s * 2**failures, 30.0)
                log.exception("projector failed (attempt %d); retrying in %.1f s", failures, pause)
                stop.wait(pause)
                continue
            failures = 0
            self.last_error = None
            if processed:
                deferred = deferred and not at_head  # a deferred load is folded up to the head
                bulk = grown is not None and _bulk(*grown, bulk_rate)
                if not deferred and bulk and wake is not None:
                    _await_quiet(stop, wake, bulk_max_delay_s)  # fold the load once it pauses
                    deferred = True
                    continue
                if at_head:  # let commits gather
                    settle = started + min_interval_s - time.monotonic()
                    if settle > 0:
                        stop.wait(settle)
                if wake is not None:
                    wake.wait(0)  # consume the wake-ups of what this run folded
                continue
            deferred = False  # nothing left to fold (or another projector folds it)
            if processed == 0 and wake is not None:
                wake.wait(poll_interval_s)
            else:  # another projector holds the lock (None), or nothing wakes this one
                stop.wait(poll_interval_s)

    def rebuild(
        self,
        names: list[str] | None = None,
        progress: Progress | None = None,
        *,
        jobs: int = 1,
        run_parts: RunParts | None = None,
    ) -> int:
        """Rebuild projections from position 0; the others keep their rows and positions.

        Deletes every row of the named projections' tables (all projects) and resets their
        tracking to 0 in one transaction, then folds the whole log into them: here, or, with
        ``jobs > 1`` and ``run_parts``, in up to ``jobs`` parts at once (``catalog.split``),
        each part catching its projections up elsewhere (``infra.runtime.process_parts``: a
        process each) while this projector holds the lock.

        Args:
            names: projection names (default: all of this projector's).
            progress: called with ``(position reached, head)`` after each write (in parts: the
                lowest position of the rebuilt projections, every ``PART_POLL_S`` seconds).
            jobs: parts folded at once, at most (1: all here, in this thread).
            run_parts: what folds the parts (required for ``jobs > 1``).

        Returns:
            The number of notifications folded (in parts: by the part that folded most).

        Raises:
            UnknownProjectionError: a name is not a projection's.
            ProjectorBusyError: another projector kept the lock for ``lock_wait_s``.
            ValueError: ``jobs < 1``, or ``jobs > 1`` without ``run_parts``.
            BaseException: what a part raised (the other parts finish first; each projection
                keeps the position it committed, and the next run goes on from there).
        """
        if jobs < 1 or (jobs > 1 and run_parts is None):
            raise ValueError(f"jobs must be >= 1, and > 1 only with run_parts; got {jobs}")
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
            parts = split(chosen, jobs)
            if len(parts) <= 1 or run_parts is None:
                return self._catch_up(chosen, max_pages=None, progress=progress, head=head)

            def tick() -> None:
                if progress is not None:
                    reached = self._read_tracking()
                    progress(min(reached[p.name][0] for p in chosen), head)

            counts = run_parts([[p.name for p in part] for part in parts], tick)
            tick()
            return max(counts)

    def catch_up(self, names: list[str] | None = None) -> int:
        """Fold the named projections up to the head of the log, without taking the lock: a
        part of a rebuild (``RunParts``) whose caller holds it.

        Returns:
            The number of notifications folded.

        Raises:
            UnknownProjectionError: a name is not a projection's.
        """
        chosen = self._select(names)
        self._ensure_tracking()
        return self._catch_up(chosen, max_pages=None)

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
        """Fold pages of the log into ``chosen`` until the head (or ``max_pages`` pages).

        Pages are folded into a ``_RowCache`` and written in batches: one write transaction per
        ``batch_size`` notifications while full pages come back (the log has more), and at once
        when a page comes back short (the head is reached), after the last page and before
        returning. A batch's rows and its tracking positions commit together.

        On PostgreSQL (``background``) a batch is written on one of two pooled threads while
        the next one is folded, and the next page is read on the other while one is folded (the
        server works while this process folds); a batch's write starts only after the previous
        one committed, and the run waits for the last one, and for a read it started (also when
        a fold raises). On SQLite, whose calls hand the interpreter lock back and forth for each
        row, that would be slower: everything happens in turn.
        """
        limit = self.page_size
        tables = {p.table.name: p.table for p in chosen}
        retain = {p.table.name for p in chosen if p.reads is not no_reads}
        background = self.db.dialect == "postgresql"
        select = self.application.recorder.select_notifications
        processed = pages = committed_pages = 0
        pool = self._background
        while True:
            # A run (and a retry after another projector moved a position) starts from one
            # snapshot of the positions and of which tables are empty, with the last run's cache
            # when nothing moved since, else an empty one.
            positions, empty = self._snapshot(chosen)
            cache = self._kept_cache(tables, positions) or _RowCache(
                self.db, tables, complete=empty, retain=retain, max_rows=self.cache_rows
            )
            reached = min(positions[p.name] for p in chosen)
            batch_events = batch_pages = 0
            pending: _Write | None = None
            ahead: Future[Sequence[Notification]] | None = None  # the next page, being read
            try:
                done = False
                while not done:
                    if max_pages is not None and pages >= max_pages:
                        done = True
                        notifications: Sequence[Notification] = ()
                    else:
                        if ahead is not None:
                            reading, ahead = ahead, None
                            notifications = reading.result()
                        else:
                            notifications = select(start=reached + 1, limit=limit)
                        done = len(notifications) < limit
                        if background and not done and (max_pages is None or pages + 1 < max_pages):
                            ahead = pool.submit(select, start=notifications[-1].id + 1, limit=limit)
                    if notifications:
                        count, reached = len(notifications), notifications[-1].id
                        self._fold_page(chosen, positions, notifications, cache)
                        batch_events += count
                        batch_pages += 1
                        pages += 1
                    if not batch_events or not (done or batch_events >= self.batch_size):
                        continue
                    if pending is not None:
                        previous, pending = pending, None
                        processed += self._finished(previous, cache, progress, head)
                        committed_pages += previous.pages
                    # positions: where the tracking rows will be once this write commits
                    advanced = [
                        (positions[p.name], p) for p in chosen if positions[p.name] < reached
                    ]
                    write = _Write(
                        self,
                        cache.tables,
                        cache.take(),
                        advanced,
                        reached,
                        batch_events,
                        batch_pages,
                    )
                    for _, projection in advanced:
                        positions[projection.name] = reached
                    batch_events = batch_pages = 0
                    if background and not done:
                        write.start(pool)
                        pending = write
                    else:
                        write.run()
                        processed += self._finished(write, cache, progress, head)
                        committed_pages += write.pages
                if pending is not None:
                    previous, pending = pending, None
                    processed += self._finished(previous, cache, progress, head)
                self._keep(positions, cache)
                return processed
            except _TrackingMovedError as moved:
                log.info("%s; reading again from the last committed position", moved)
                pages = committed_pages
            finally:
                if ahead is not None:  # not needed any more
                    try:
                        ahead.result()
                    except Exception:
                        log.debug("reading ahead failed", exc_info=True)
                if pending is not None:  # a fold raised while the previous batch was written
                    try:
                        pending.wait()
                    except Exception:
                        log.exception("writing the batch before the failed one failed too")

    def _kept_cache(self, tables: dict[str, Table], positions: dict[str, int]) -> _RowCache | None:
        """The last run's cache, if it was of these tables and every position is still the one
        it committed; it is given out once (a run that fails keeps nothing)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        committed, cache = kept
        if cache.tables.keys() != tables.keys() or committed != positions:
            log.debug("the last run's row cache is dropped: other tables, or positions moved")
            return None
        return cache

    def _keep(self, positions: dict[str, int], cache: _RowCache) -> None:
        """Keep a finished run's cache (at most ``keep_rows`` rows) with the positions it
        committed, for the next run."""
        if self.keep_rows > 0:
            cache.trim(self.keep_rows)
            self._kept = (positions, cache)

    def _fold_page(
        self,
        chosen: Sequence[Projection],
        positions: dict[str, int],
        notifications: Sequence[Notification],
        cache: _RowCache,
    ) -> None:
        """Decode a page and fold it into ``cache``: each event into each projection that
        consumes it and has not folded its position yet (``positions``: committed ones).
        Empties ``notifications`` when it is a list."""
        first, last = notifications[0].id, notifications[-1].id
        active = [(positions[p.name], p) for p in chosen if positions[p.name] < last]
        if not active:
            return
        # Skip the per-event position check when every active projection is behind the page.
        check = any(since >= first for since, _ in active)
        work: Iterable[_Work] = _decode(self.application.mapper, notifications, active)
        # Rows the folds will read that may be in the database only: read them in bulk first.
        # Otherwise each event is decoded, folded and dropped in turn (events that die young
        # keep the garbage collector's full collections rare).
        lookups = {
            p.name for _, p in active if p.reads is not no_reads and cache.needs_reads(p.table.name)
        }
        cache.start_page()
        if lookups:
            work = list(work)
            wanted: dict[str, set[Key]] = {}
            for position, event, targets in work:
                for since, projection in targets:
                    if projection.name in lookups and position > since:
                        keys = projection.reads(event)
                        if keys:
                            wanted.setdefault(projection.table.name, set()).update(keys)
            cache.fetch(wanted)  # type: ignore[arg-type]
        if check:
            for position, event, targets in work:
                for since, projection in targets:
                    if position > since:
                        projection.fold(event, position, cache)
        else:
            for position, event, targets in work:
                for _, projection in targets:
                    projection.fold(event, position, cache)

    def _finished(
        self, write: _Write, cache: _RowCache, progress: Progress | None, head: int
    ) -> int:
        """Wait for ``write`` (started or run), then let the cache know; returns its events."""
        write.wait()
        cache.written()
        if progress is not None:
            progress(write.last, max(head, write.last))
        return write.events

    def _write(
        self,
        tables: dict[str, Table],
        rows: dict[str, list[tuple[Any, ...]]],
        advanced: list[tuple[int, Projection]],
        last: int,
    ) -> None:
        """Write ``rows`` and move each advanced projection's position from ``since`` to
        ``last``, in one transaction.

        Raises:
            _TrackingMovedError: a position was no longer ``since`` (nothing was written).
        """
        update = render(
            f"UPDATE {TRACKING_TABLE} SET position = ?, updated_at = ? WHERE name = ? AND position = ?",
            self.db.dialect,
        )
        now = self._now()
        with self.db.transaction() as conn:
            cursor = conn.cursor()
            # Tracking first: a second projector (without the lock) waits on, or fails at,
            # these rows before writing any of its own.
            for since, projection in advanced:
                cursor.execute(update, [last, now, projection.name, since])
                if cursor.rowcount != 1:
                    raise _TrackingMovedError(
                        f"tracking of {projection.name!r} moved from {since} "
                        f"under the batch ending at {last}"
                    )
            written = _write_rows(conn, self.db.dialect, tables, rows)
        log.debug("folded positions up to %d into %d rows", last, written)

    def _snapshot(self, chosen: Sequence[Projection]) -> tuple[dict[str, int], set[str]]:
        """The positions of ``chosen`` and which of their tables are empty, in one snapshot."""
        names = [p.table.name for p in chosen]
        with self.db.transaction(readonly=True) as conn:
            cursor = conn.cursor()
            cursor.execute(f"SELECT name, position FROM {TRACKING_TABLE}")
            tracked = {name: int(position) for name, position in cursor.fetchall()}
            cursor.execute(
                "SELECT " + ", ".join(f"EXISTS (SELECT 1 FROM {name})" for name in names)
            )
            found = cursor.fetchone()
        positions = {p.name: tracked.get(p.name, 0) for p in chosen}
        return positions, {name for name, exists in zip(names, found, strict=True) if not exists}

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
